"""Sweeps at any scale: one grid of runs, one task per run, on Dask (``distributed``).

A *sweep* is a preset of one study (:mod:`mimlib.presets`), a few fixed overrides and a grid of
values; every point of the grid is one run, found by the hash of its config
(:func:`mimlib.image_study.run_name`). Each run is one task, :func:`run_one`, which trains it
(resuming from its checkpoint), or loads it, evaluates it and records it through
:func:`mimlib.image_study.run_study`, the code every chapter and the one-run command line use. So
a sweep is *idempotent*: a finished run is loaded (or read from its record), never trained again,
and an interrupted sweep, re-run, continues each unfinished run from its last epoch.

Command line::

    python -m mimlib.sweep --study images --preset book \\
        --grid "dataset=[mnist,fashion-mnist] prior=[standard,vampprior] objective=[mim,vae] seed=[0,1,2]" \\
        [--set NAME=VALUE ...] [--workers 2] [--scheduler tcp://host:8786] [--retries 2] \\
        [--runs-dir runs] [--records-dir book/results/records] [--results sweep.csv] [--dry-run]

``--grid``: space-separated ``name=[v1,v2,...]`` (or ``name=v`` for one value); each value is
parsed as JSON when it can be (``0``, ``1e-3``, ``null``, ``[5,20]``), else taken as a string
(``mnist``). Every name (of ``--grid`` and ``--set``) must be a field of the study's config
(:class:`mimlib.image_study.ImageStudyConfig`, :class:`mimlib.mixture2d.Mixture2DConfig`); an
unknown one stops the sweep before anything runs, naming it and the valid ones. A grid point
whose config is invalid (``prior=[standard,bogus]``) is reported at once and the others run.
``--dry-run`` prints the runs in the order they would start, with their state, and exits.

Python::

    from mimlib.sweep import run_grid
    table = run_grid("images", "book", {"objective": ["mim", "vae"], "seed": [0, 1, 2]},
                     overrides={"dataset": "mnist"}, workers=2, runs_dir="runs")

Where it runs
-------------

* **Laptop / one CPU box** (the default): a ``distributed.LocalCluster`` of ``--workers N``
  processes with one thread each; every task sets ``torch.set_num_threads(1)`` (``--set
  threads=K`` gives each run K threads instead). On a small CPU, N single-thread runs side by side
  finish sooner than one run at a time with N threads; N = the number of cores is the usual choice.
* **One GPU box**: ``--set device=cuda`` and ``--workers`` = how many runs share the GPU at once
  (each is a separate process with its own CUDA context; 2-4 image runs fit on one GPU); the
  precision ``auto`` takes bf16 where the GPU has it. ``device`` is a runtime setting, not part of a
  run's identity: a run started on a CPU resumes on the GPU and vice versa.
* **A cluster**: start a scheduler and workers (``dask scheduler``, ``dask worker tcp://host:8786
  --nthreads 1 --nworkers K`` on each machine, in this repository's environment) and pass
  ``--scheduler tcp://host:8786``. On SLURM or PBS, ``dask-jobqueue`` (an optional extra, ``pip
  install dask-jobqueue``) starts the workers as batch jobs, e.g.::

      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=1, processes=1, memory="8GB", walltime="04:00:00")
      cluster.scale(jobs=16)
      run_grid("images", "book", grid, scheduler=cluster.scheduler_address, runs_dir="/shared/runs")

  Several machines need a **shared file system** for ``--runs-dir`` and ``--records-dir`` (and
  ``--results`` is written by the submitting process): a run's checkpoints are what lets another
  machine resume it. The folders are made absolute on the submitting machine and must exist at
  that same path on every worker; each worker also needs the image data (``MIMLIB_DATA``, see
  :mod:`mimlib.images`) and this mimlib.

Order, faults, results
----------------------

* **Longest runs first** (:func:`cost`: a rough relative cost, only its order matters): training
  images seen x model factor (PixelHVAE 4, convHVAE 1) x prior factor (VampPrior 1.3, standard 1) x
  objective factor (MIM 2: two halves per step; A-MIM, VAE 1), plus the importance samples of the
  evaluation; so PixelHVAE runs start first, then convHVAE VampPrior MIM, ..., convHVAE standard VAE.
  2-D groups: width x seeds x epochs x points (x 2 for MIM). Ties keep the grid's order.
* **A worker that dies** (killed, out of memory, its machine lost: ``KilledWorker``) costs its run
  nothing but the epoch in progress: the run is submitted again, up to ``--retries`` times, and
  resumes from its last checkpoint (:func:`mimlib.train.fit` resumes exactly: the weights equal
  those of an uninterrupted run). On the local cluster the scheduler is told not to retry by
  itself (``allowed-failures`` 0), so every retry is counted here; an external scheduler first
  retries a lost task by its own ``distributed.scheduler.allowed-failures`` (3 by default).
* **An exception raised by the run itself** is not retried (training is deterministic: a retry
  from the same checkpoint would raise it again). A configuration error (``ValueError``,
  ``TypeError``, ``KeyError``; e.g. ``pseudo_init=data`` with fewer training images than
  pseudo-inputs, or a run folder written with another config) is reported as ``config error``
  with the run's name and the message, any other exception as ``error``; the other runs go on.
  The command exits with status 1 if any run failed (after writing the results).
* **Results**: one row per run (per seed for the 2-D study), in the grid's order, collected as the
  runs finish, with the columns ``name``, ``status`` (``done``, ``config error``, ``error``,
  ``lost``), ``source`` (``recorded``: read from its record; ``loaded``: from ``final.pt``;
  ``resumed``: from a checkpoint; ``trained``: from scratch), ``attempts``, ``error`` and the run's
  results row. ``--results`` is rewritten atomically after every finished run. Runs that already
  have a record in ``--records-dir`` are read by the submitting process and need no worker (a sweep
  whose runs are all recorded starts no cluster).
* **Progress**: a bar of runs done / running / failed (tqdm; silenced by ``MIMLIB_PROGRESS=0``)
  and one line per finished run.
* **Two runs of one name** in a grid (the grid varies only runtime or evaluation settings) never
  train side by side: the second waits for the first and then loads its weights.

Study ``mixture2d``: one task per (objective, hidden width) group, all the group's seeds batched
(:func:`mimlib.mixture2d.run_sweep` with the config cut to that objective and width; the group's
name and hash are those of the full sweep). A grid over ``hidden`` or ``objectives`` with plain
values means one width / objective per point (``hidden=[5,20]``: ``(5,)`` and ``(20,)``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import socket
import sys
import time
import traceback
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["STUDIES", "parse_grid", "parse_sets", "expand", "cost", "run_one", "run_grid", "SweepError",
           "CONFIG_ERRORS", "commands", "main"]

#: The studies a sweep runs (those of :mod:`mimlib.presets`).
STUDIES = ("images", "pixelhvae", "mixture2d")

#: Exceptions of a run that are configuration errors (reported as such, never retried).
CONFIG_ERRORS = (ValueError, TypeError, KeyError)

#: Relative step cost of each model / prior / objective (see :func:`cost`; only the order matters).
MODEL_COST = {"convhvae": 1.0, "pixelhvae": 4.0}
PRIOR_COST = {"standard": 1.0, "vampprior": 1.3}
OBJECTIVE_COST = {"mim": 2.0, "amim": 1.0, "vae": 1.0}


class SweepError(ValueError):
    """A sweep that cannot start (an unknown name, a malformed grid); nothing has run."""


# ----------------------------------------------------------------------------- grid


def _value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_top(text: str, sep: str | None) -> list[str]:
    """``text`` split at ``sep`` (None: whitespace) outside brackets and quotes."""
    out, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth < 0:
                raise SweepError(f"unbalanced brackets in {text!r}")
        is_sep = ch.isspace() if sep is None else ch == sep
        if is_sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0 or quote:
        raise SweepError(f"unbalanced brackets or quotes in {text!r}")
    out.append("".join(cur))
    return [s for s in out if s.strip()] if sep is None else out


def parse_grid(text: str | list[str]) -> dict[str, list[Any]]:
    """``"dataset=[mnist,fashion-mnist] seed=[0,1,2]"`` -> ``{"dataset": ["mnist", "fashion-mnist"],
    "seed": [0, 1, 2]}``; ``name=v`` is one value. Values: JSON if they parse, else strings."""
    if isinstance(text, (list, tuple)):
        text = " ".join(text)
    grid: dict[str, list[Any]] = {}
    for item in _split_top(text, None):
        name, eq, rhs = item.partition("=")
        name, rhs = name.strip(), rhs.strip()
        if not eq or not name or not rhs:
            raise SweepError(f"--grid expects name=[v1,v2,...], got {item!r}")
        if name in grid:
            raise SweepError(f"--grid names {name!r} twice")
        if rhs.startswith("[") and rhs.endswith("]"):
            inner = rhs[1:-1]
            values = [_value(v) for v in _split_top(inner, ",")] if inner.strip() else []
            if any(isinstance(v, str) and not v for v in values):
                raise SweepError(f"--grid {name}: an empty value in {rhs!r}")
        else:
            values = [_value(rhs)]
        if not values:
            raise SweepError(f"--grid {name} has no values")
        grid[name] = values
    if not grid:
        raise SweepError("the grid is empty; give at least one name=[v1,...]")
    return grid


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["max_epochs=2", "device=cuda"]`` -> ``{"max_epochs": 2, "device": "cuda"}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SweepError(f"--set expects NAME=VALUE, got {item!r}")
        if name in out:
            raise SweepError(f"--set {name} is given twice ({out[name]!r} and {value!r})")
        out[name] = _value(value)
    return out


def _config_class(study: str, preset: str):
    from . import presets

    if study not in STUDIES:
        raise SweepError(f"unknown study {study!r}; choose one of {list(STUDIES)}")
    if preset not in presets.PRESETS[study]:
        raise SweepError(f"unknown preset {preset!r} for {study}; choose one of {sorted(presets.PRESETS[study])}")
    return type(presets.resolve(study, preset))


def _check_names(cls, study: str, grid: dict[str, list], overrides: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for what, given in (("--grid", grid), ("--set", overrides)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise SweepError(f"{what} names {unknown}, not settings of study {study!r} ({cls.__name__}); "
                             f"valid: {sorted(names)}")
    both = sorted(set(grid) & set(overrides))
    if both:
        raise SweepError(f"{both} given both in the grid and as --set; give each once")


def _coerce(cls, name: str, value: Any) -> Any:
    """A plain grid value of a tuple field means a one-element tuple (``hidden=5`` -> ``(5,)``)."""
    hint = typing.get_type_hints(cls).get(name)
    if typing.get_origin(hint) is tuple and not isinstance(value, (list, tuple)):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Run:
    """One task of a sweep: a config (image run) or one (objective, width) group of a 2-D config."""

    index: int                       # position in the grid (the results' order)
    point: dict[str, Any]            # the grid values of this run
    name: str = ""
    config: Any = None               # the resolved config (None: it failed to resolve)
    error: str = ""                  # why it failed to resolve
    cost: float = 0.0
    attempts: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def expand(study: str, preset: str, grid: dict[str, list], overrides: dict[str, Any] | None = None) -> list[Run]:
    """One :class:`Run` per grid point (in the grid's order, last name fastest), configs resolved
    with :func:`mimlib.presets.resolve`; a point whose config is invalid carries its error. For
    ``mixture2d``, one run per (objective, width) group of each point's config."""
    from . import presets

    overrides = dict(overrides or {})
    cls = _config_class(study, preset)
    _check_names(cls, study, grid, overrides)
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise SweepError(f"grid {name!r} needs a non-empty list of values, got {values!r}")
    base = {k: _coerce(cls, k, v) for k, v in overrides.items()}
    runs: list[Run] = []
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        values = {**base, **{k: _coerce(cls, k, v) for k, v in point.items()}}
        try:
            cfg = presets.resolve(study, preset, **values)
        except CONFIG_ERRORS as e:
            label = " ".join(f"{k}={v}" for k, v in point.items())
            runs.append(Run(len(runs), point, name=f"{study}[{label}]", error=f"{type(e).__name__}: {e}"))
            continue
        if study == "mixture2d":
            from .mixture2d import group_name
            for o in cfg.objectives:
                for h in cfg.hidden:
                    one = dataclasses.replace(cfg, objectives=(o,), hidden=(h,))
                    runs.append(Run(len(runs), point, name=group_name(o, h, cfg), config=one, cost=cost(one)))
        else:
            from .image_study import run_name
            runs.append(Run(len(runs), point, name=run_name(cfg), config=cfg, cost=cost(cfg)))
    return runs


def cost(cfg) -> float:
    """A rough relative cost of one run (orders a sweep, longest first; the module docstring lists the factors).

    Image run: training images seen (``max_epochs`` x ``steps_per_epoch`` x ``batch_size``, or
    ``max_epochs`` passes) x model x prior x objective factors, plus the evaluation's importance
    samples (``nll_samples`` x NLL test points / 3, one forward pass each against ~3 per training image)
    x the model factor. 2-D group: width x seeds x epochs x points per epoch (x 2 for MIM)."""
    from .mixture2d import Mixture2DConfig

    if isinstance(cfg, Mixture2DConfig):
        obj = 2.0 if "mim" in cfg.objectives else 1.0
        return float(sum(cfg.hidden) * len(cfg.seeds) * cfg.max_epochs * cfg.n_train * obj)
    n_train = cfg.n_train_subset or 50_000
    per_epoch = cfg.steps_per_epoch * cfg.batch_size if cfg.steps_per_epoch else n_train
    train = cfg.max_epochs * per_epoch * PRIOR_COST.get(cfg.prior, 1.0) * OBJECTIVE_COST.get(cfg.objective, 1.0)
    n_nll = cfg.n_nll_points or cfg.n_eval_test or 10_000
    return float(MODEL_COST.get(cfg.model, 1.0) * (train + cfg.nll_samples * n_nll / 3))


# ----------------------------------------------------------------------------- one task


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _config_dict(cfg) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _build(study: str, config: dict[str, Any] | Any):
    from . import presets

    if not isinstance(config, dict):
        return config
    cls = type(presets.resolve(study, next(iter(presets.PRESETS[study]))))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _state(run_dir: Path) -> str:
    if (run_dir / "final.pt").exists():
        return "loaded"
    if (run_dir / "checkpoint.pt").exists():
        return "resumed"
    return "trained"


def run_one(study: str, config: dict[str, Any], runs_dir: str | os.PathLike | None = "runs",
            records_dir: str | os.PathLike | None = None, n_tsne: int = 1_000) -> dict[str, Any] | list[dict[str, Any]]:
    """One task of a sweep: train (resuming from its checkpoint) or load, evaluate and record exactly
    one run, through :func:`mimlib.image_study.run_study`; idempotent (a finished run is loaded, a
    recorded one read). ``config``: the run's config (a dict of its fields, or the config itself).
    Returns the run's results row with ``name``, ``source`` (recorded / loaded / resumed / trained),
    ``host``, ``pid`` and ``task_seconds``; for ``mixture2d`` (one (objective, width) group) a list of
    such rows, one per seed. A newly recorded image run stores a t-SNE of ``n_tsne`` test codes
    (:func:`mimlib.image_study.figure_arrays`, the values of ``python -m mimlib.image_study``)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = _build(study, config)
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    if study == "mixture2d":
        from . import mixture2d as M

        (o,), (h,) = cfg.objectives, cfg.hidden
        name = M.group_name(o, h, cfg)
        source = ("recorded" if records_dir is not None and M._from_record(o, h, cfg, records_dir)[1] is not None
                  else _state(Path(runs_dir) / name) if runs_dir is not None else "trained")
        res = M.run_sweep(cfg, runs_dir=runs_dir, progress=False, workers=1, records_dir=records_dir)
        dt = time.perf_counter() - t0
        return [{**{k: _plain(v) for k, v in r.items()}, "name": name, "source": source, **info, "task_seconds": dt}
                for r in res.results.to_dict("records")]
    from . import image_study as S

    name = S.run_name(cfg)
    if records_dir is not None and S._from_record(cfg, records_dir)[1] is not None:
        source = "recorded"
    else:
        source = _state(S.run_dir_of(cfg, runs_dir)) if runs_dir is not None else "trained"
    res = S.run_study(cfg, runs_dir=runs_dir, records_dir=records_dir, progress=False,
                      arrays=functools.partial(S.figure_arrays, n_tsne=n_tsne, n_images=16))
    row = {k: _plain(v) for k, v in res.results.iloc[0].to_dict().items()}
    return {**row, "name": name, "source": source, **info, "task_seconds": time.perf_counter() - t0}


def _recorded(study: str, cfg, records_dir) -> list[dict[str, Any]] | None:
    """The rows of a run that its record already holds (read here, no worker needed), else None."""
    if records_dir is None:
        return None
    if study == "mixture2d":
        from . import mixture2d as M
        (o,), (h,) = cfg.objectives, cfg.hidden
        out = M._from_record(o, h, cfg, records_dir)[1]
        return None if out is None else [{k: _plain(v) for k, v in r.items()} for r in out["rows"].to_dict("records")]
    from . import image_study as S
    out = S._from_record(cfg, records_dir)[1]
    return None if out is None else [{k: _plain(v) for k, v in out["row"].items()}]


# ----------------------------------------------------------------------------- the sweep


def _show(progress: bool | None) -> bool:
    return progress if progress is not None else os.environ.get("MIMLIB_PROGRESS", "1") != "0"


def _is_lost(exc: BaseException | None) -> bool:
    """Whether a task failed because its worker was lost (not because the run raised)."""
    from distributed import KilledWorker

    try:
        from distributed.comm.core import CommClosedError
    except ImportError:   # pragma: no cover
        CommClosedError = ()  # noqa: N806
    return isinstance(exc, (KilledWorker, CommClosedError))


def _running(client, in_flight: int) -> int:
    """Tasks being computed now (the scheduler's count; ``in_flight`` if it cannot be asked)."""
    try:
        return min(in_flight, sum(len(v) for v in client.processing().values()))
    except Exception:
        return in_flight


def _abs(p):
    return None if p is None else str(Path(p).expanduser().resolve())


@contextlib.contextmanager
def _client(workers: int, scheduler: str | None):
    """A client of ``scheduler``, or of a new local cluster of ``workers`` one-thread processes whose
    scheduler does not reschedule a lost task by itself (the sweep counts its retries)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if workers < 1:
        raise SweepError(f"workers must be >= 1, got {workers}")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _fail_row(run: Run, status: str, error: str) -> dict[str, Any]:
    return {**{k: v for k, v in run.point.items()}, "name": run.name, "status": status, "error": error,
            "attempts": run.attempts}


def _table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for r in sorted(runs, key=lambda r: r.index):
        for row in r.rows:
            rows.append({**{k: v for k, v in r.point.items() if k not in row}, **row})
    if not rows:
        return pd.DataFrame(columns=["name", "status", "source", "attempts", "error"])
    df = pd.DataFrame(rows)
    first = ["name", "status", "source", "attempts", "error"]
    for c in first:
        if c not in df:
            df[c] = "" if c in ("error", "source") else np.nan
    df["error"] = df["error"].fillna("")
    return df[first + [c for c in df.columns if c not in first]]


def run_grid(study: str, preset: str, grid: dict[str, list], overrides: dict[str, Any] | None = None,
             workers: int = 2, scheduler: str | None = None, retries: int = 2,
             runs_dir: str | os.PathLike | None = "runs", records_dir: str | os.PathLike | None = None,
             progress: bool | None = None, results: str | os.PathLike | None = None, n_tsne: int = 1_000,
             log: bool = False, poll_seconds: float = 1.0) -> pd.DataFrame:
    """Run every point of ``grid`` (``{name: [values]}``) of ``study`` under ``preset`` with
    ``overrides``, one Dask task per run (:func:`run_one`), longest first, and return the table of
    results (one row per run; see the module docstring for its columns, the retries and the order).

    ``scheduler``: the address of a running Dask scheduler (else a ``LocalCluster`` of ``workers``
    processes of one thread). ``retries``: how often a run whose worker died is submitted again.
    ``results``: a CSV rewritten atomically after every finished run. ``progress``: the bar (None:
    unless ``MIMLIB_PROGRESS=0``); ``log``: a line per finished run even without the bar.
    Raises :class:`SweepError` before anything runs if a name is not a setting of the study.
    """
    from tqdm import tqdm

    from .atomic import write_atomic

    if retries < 0:
        raise SweepError(f"retries must be >= 0, got {retries}")
    runs = expand(study, preset, grid, overrides)
    runs_dir, records_dir = _abs(runs_dir), _abs(records_dir)
    show = _show(progress)
    bar = tqdm(total=len(runs), desc=f"sweep {study}/{preset}", disable=not show, unit="run")
    counts = {"done": 0, "failed": 0}

    def say(msg: str) -> None:
        if show:
            bar.write(msg)
        elif log:
            print(msg, flush=True)

    def save() -> None:
        if results is not None:
            write_atomic(results, _table(runs).to_csv(index=False))

    def finish(run: Run, rows: list[dict[str, Any]], running: int = 0) -> None:
        run.rows = rows
        ok = all(r.get("status") == "done" for r in rows)
        counts["done" if ok else "failed"] += 1
        bar.update(1)
        bar.set_postfix(done=counts["done"], running=running, failed=counts["failed"])
        n = counts["done"] + counts["failed"]
        if ok:
            r0 = rows[0]
            say(f"[{n}/{len(runs)}] done   {run.name} ({r0.get('source')}, attempt {run.attempts}, "
                f"{r0.get('task_seconds', 0.0):.0f} s)")
        else:
            say(f"[{n}/{len(runs)}] FAILED {run.name}: {rows[0]['status']}: {rows[0]['error']}")
        save()

    todo: list[Run] = []
    for run in runs:
        if run.config is None:
            finish(run, [_fail_row(run, "config error", run.error)])
            continue
        rows = _recorded(study, run.config, records_dir)
        if rows is not None:
            finish(run, [{**r, "name": run.name, "status": "done", "source": "recorded", "attempts": 0}
                         for r in rows])
        else:
            todo.append(run)
    todo.sort(key=lambda r: -r.cost)   # stable: ties keep the grid's order
    try:
        if todo:
            _run_tasks(study, todo, workers, scheduler, retries, runs_dir, records_dir, n_tsne, finish, say,
                       poll_seconds)
    finally:   # also on Ctrl-C: the finished runs' rows are kept (the others resume on the next call)
        bar.close()
        save()
    return _table(runs)


def _run_tasks(study, todo: list[Run], workers, scheduler, retries, runs_dir, records_dir, n_tsne,
               finish, say, poll_seconds) -> None:
    """Submit ``todo`` (in that order, highest priority first) and collect the runs as they finish."""
    from distributed import wait

    with _client(workers, scheduler) as client:
        waiting = list(todo)                    # not submitted yet (a run of the same name is in flight)
        in_flight: dict[Any, Run] = {}
        prio = {id(r): len(todo) - i for i, r in enumerate(todo)}

        def submit_ready() -> None:
            busy = {r.name for r in in_flight.values()}
            for run in list(waiting):
                if run.name in busy:
                    continue
                waiting.remove(run)
                busy.add(run.name)
                run.attempts += 1
                key = f"run-{run.name}-{uuid.uuid4().hex[:8]}"
                fut = client.submit(run_one, study, _config_dict(run.config), runs_dir, records_dir, n_tsne,
                                    key=key, priority=prio[id(run)], pure=False)
                in_flight[fut] = run

        submit_ready()
        while in_flight:
            try:
                done, _ = wait(list(in_flight), timeout=poll_seconds, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            except Exception as e:  # distributed's TimeoutError on some versions
                if "Timeout" in type(e).__name__:
                    continue
                raise
            for fut in done:
                run = in_flight.pop(fut)
                running = _running(client, len(in_flight))
                exc: BaseException | None = None
                if fut.status == "finished":
                    try:
                        out = fut.result()
                    except Exception as e:   # its result was lost with its worker before it came back
                        exc = e
                    else:
                        rows = out if isinstance(out, list) else [out]
                        finish(run, [{**r, "status": "done", "attempts": run.attempts} for r in rows], running)
                        continue
                elif fut.status == "error":
                    exc = fut.exception()
                if exc is None or _is_lost(exc) or fut.status not in ("finished", "error"):
                    why = f"{type(exc).__name__}: {exc}" if exc is not None else f"task {fut.status}"
                    if run.attempts <= retries:
                        say(f"retrying {run.name} (attempt {run.attempts + 1} of {retries + 1}): its worker was "
                            f"lost ({why}); it resumes from its last checkpoint")
                        waiting.insert(0, run)
                    else:
                        finish(run, [_fail_row(run, "lost", f"worker lost {run.attempts} times; last: {why}")],
                               running)
                    continue
                status = "config error" if isinstance(exc, CONFIG_ERRORS) else "error"
                finish(run, [_fail_row(run, status, f"{type(exc).__name__}: {exc}")], running)
                if status == "error":
                    say("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:]).rstrip())
            submit_ready()


def commands(study: str, preset: str, grid: dict[str, list], overrides: dict[str, Any] | None = None, *,
             runs_dir: str | os.PathLike = "runs", records_dir: str | os.PathLike | None = None,
             python: str = "python") -> list[str]:
    """One shell command per run of an image study that is not yet recorded, longest first: the
    ``python -m mimlib.image_study`` line that trains, evaluates and records exactly that run (so a
    grid runs without Dask: ``xargs -P``, GNU parallel, a batch system's job array). Every setting
    that differs from the preset is passed with ``--set`` (checked: each line resolves to its run's name)."""
    import shlex

    from .image_cli import parse_command_line

    if study == "mixture2d":
        raise SweepError("commands are for the image studies (images, pixelhvae); a 2-D sweep runs with run_grid")
    runs = expand(study, preset, grid, overrides)
    bad = [f"{r.name}: {r.error}" for r in runs if r.config is None]
    if bad:
        raise SweepError("invalid runs: " + "; ".join(bad))
    from . import presets

    out = []
    for r in sorted(runs, key=lambda r: -r.cost):
        if _recorded(study, r.config, _abs(records_dir)) is not None:
            continue
        cfg, base = r.config, presets.resolve(study, preset, dataset=r.config.dataset, objective=r.config.objective)
        named = {"dataset", "objective", "seed", "prior", "model", "preset"}
        sets = [f"{f.name}={json.dumps(_plain(getattr(cfg, f.name)))}" for f in dataclasses.fields(cfg)
                if f.name not in named and getattr(cfg, f.name) != getattr(base, f.name)]
        argv = ["--preset", preset, "--dataset", cfg.dataset, "--objective", cfg.objective, "--seed", str(cfg.seed),
                "--runs-dir", str(runs_dir)]
        argv += ["--model", cfg.model] if study == "pixelhvae" else ["--prior", cfg.prior]
        if records_dir is not None:
            argv += ["--records-dir", str(records_dir)]
        if sets:
            argv += ["--set", *sets]
        again, _ = parse_command_line(argv)
        from .image_study import run_name
        if run_name(again) != r.name:      # the line must make exactly this run
            raise AssertionError(f"command for {r.name} makes {run_name(again)}")
        out.append(shlex.join([python, "-m", "mimlib.image_study", *argv]))
    return out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run a grid of runs of one study on Dask (see the module docstring); prints a line per finished run."""
    ap = argparse.ArgumentParser(prog="python -m mimlib.sweep", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, choices=list(STUDIES))
    ap.add_argument("--preset", default="book")
    ap.add_argument("--grid", required=True, nargs="+",
                    help='"name=[v1,v2,...] name=[...]" (values as JSON where they parse, else strings)')
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    help="fixed overrides of the preset for every run (VALUE as JSON where it parses)")
    ap.add_argument("--workers", type=int, default=2, help="processes of the local cluster (one thread each)")
    ap.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    ap.add_argument("--retries", type=int, default=2, help="re-submissions of a run whose worker died")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--records-dir", default=None, help="also record every run there (e.g. book/results/records)")
    ap.add_argument("--results", default=None, help="CSV of the results table, rewritten as runs finish")
    ap.add_argument("--dry-run", action="store_true", help="print the runs in the order they would start, and exit")
    ap.add_argument("--commands", action="store_true",
                    help="print one 'python -m mimlib.image_study' line per run not yet recorded (longest first), "
                         "to run without Dask (xargs -P, a job array), and exit")
    args = ap.parse_args(argv)
    try:
        grid, overrides = parse_grid(args.grid), parse_sets(args.set)
        if args.commands:
            print("\n".join(commands(args.study, args.preset, grid, overrides, runs_dir=args.runs_dir,
                                      records_dir=args.records_dir, python=os.environ.get("MIMLIB_PYTHON", "python"))))
            return 0
        if args.dry_run:
            runs = expand(args.study, args.preset, grid, overrides)
            records = _abs(args.records_dir)
            order = sorted(runs, key=lambda r: (r.config is not None, -r.cost))
            for r in order:
                if r.config is None:
                    state = f"config error: {r.error}"
                elif _recorded(args.study, r.config, records) is not None:
                    state = "recorded"
                else:
                    state = {"loaded": "finished (loads)", "resumed": "resumes", "trained": "new"}[
                        _state(Path(args.runs_dir) / r.name)]
                print(f"{r.cost:14.4g}  {r.name}  {state}")
            return 0
        table = run_grid(args.study, args.preset, grid, overrides, workers=args.workers, scheduler=args.scheduler,
                         retries=args.retries, runs_dir=args.runs_dir, records_dir=args.records_dir,
                         results=args.results, log=True)
    except SweepError as e:
        ap.error(str(e))
    failed = table[table.status != "done"]
    print(f"{len(table) - len(failed)} of {len(table)} rows done"
          + (f"; failed: {', '.join(dict.fromkeys(failed.name))}" if len(failed) else ""), flush=True)
    if args.results:
        print(f"results: {args.results}", flush=True)
    return 1 if len(failed) else 0


if __name__ == "__main__":
    from mimlib.sweep import main as _main  # one copy of the module (spawned workers import it by name)

    sys.exit(_main())
