"""The 2-D mixture study (paper section 4, appendix D.1, Figs. 1 and 3), end to end.

``run_sweep(config)`` trains, for every objective and hidden width, all seeds
as one batched model (:class:`mimlib.nets.mlp.MixtureModel2D`), evaluates each
seed on its own test set and returns one row per trained model. Finished
groups are loaded from their run records (``records_dir``, :mod:`mimlib.records`:
committed, no weights needed) or their run folders (``runs_dir``, weights) instead of
retrained. With
``workers=N`` the groups are trained and evaluated by N processes of one torch
thread each (costliest first), which on a small CPU is faster than one process
with N threads: the 2-D networks are too small to split across threads.

Training runs in *buckets* (:func:`train_bucket`, :mod:`mimlib.bucket2d`): the narrow widths of an
objective (:func:`bucket_widths`) train as one batched model, zero-padded to the bucket's widest, each
group exactly as alone; every group keeps its name, run folder, checkpoint, ``final.pt`` and run record.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import configs as C
from . import metrics
from .data import MixtureStream, sample_mixture, split_batches
from .bucket2d import OBJECTIVES as BUCKET_OBJECTIVES
from .bucket2d import BucketMember, fit_bucket
from .nets.mlp import MixtureModel2D
from .objectives import MIMOptions, get_objective
from .precision import torch_device
from .atomic import check_writable
from .records import RunRecord, read_evaluation, read_record, write_evaluation, write_record
from .train import FitConfig, FitResult, config_hash, fit

__all__ = ["Mixture2DConfig", "group_name", "train_group", "train_bucket", "bucket_widths", "evaluate_group",
           "figure1_arrays", "run_sweep", "SweepResult", "STUDY"]

STUDY = "mixture2d"


@dataclass(frozen=True)
class Mixture2DConfig:
    """Every setting of the 2-D study; :mod:`mimlib.presets` holds the named presets.

    Each field is tagged with what it governs (:mod:`mimlib.configs`): the grid of runs, the
    training (a group's identity, :meth:`group_key`), the evaluation, or the runtime.
    """

    # the grid: every (objective, width) is one group, all its seeds trained as one batched model
    hidden: tuple[int, ...] = C.grid((5, 20, 50, 100, 200, 300, 400, 500))
    seeds: tuple[int, ...] = C.grid(tuple(range(10)))
    objectives: tuple[str, ...] = C.grid(("mim", "vae"))
    # what is trained and how
    batch_size: int = C.train(128)
    n_train: int = C.train(10_000)          # fresh points per epoch
    n_val: int = C.train(5_000)             # validation points per seed (early stopping)
    lr: float = C.train(1e-3)
    patience: int = C.train(10)
    max_epochs: int = C.train(200)
    warmup_epochs: int = C.train(3)
    min_std: float = C.train(1e-6)
    # reference-code choices (mimlib.optim, mimlib.objectives.MIMOptions); defaults: this book's
    lr_schedule: str = C.train("constant", joined=True)        # "noam": the reference's 2-D schedule
    mim_decoder_start: str = C.train("always", joined=True)    # "after_warmup": the reference's
    # evaluation
    n_test: int = C.evaluate(10_000)
    n_nll_points: int = C.evaluate(2_000)   # test points per seed for the importance-sampled NLL (S passes)
    n_knn_train: int = C.evaluate(10_000)   # labelled training points the k-NN classifier is fit on
    nll_samples: int = C.evaluate(100)      # importance samples per test point for nll_is
    ksg_k: int = C.evaluate(5)
    knn_k: int = C.evaluate(5)
    # where
    device: str = C.runtime("cpu")

    def __post_init__(self):
        """Every setting checked here, before anything is trained: types (:func:`mimlib.configs.check_types`),
        ranges, and the evaluation settings against each other (errors name the setting)."""
        C.check_groups(self)
        C.check_types(self)
        for name in ("hidden", "seeds", "objectives"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{name} must not be empty")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for i, o in enumerate(self.objectives):
            try:
                get_objective(o)
            except ValueError as e:
                raise ValueError(f"Mixture2DConfig: objectives[{i}] = {o!r}: {e}") from None
        for name in ("batch_size", "n_train", "n_val", "n_test", "n_nll_points", "n_knn_train", "nll_samples",
                     "ksg_k", "knn_k"):
            C.check_range(self, name, 1)
        C.check_range(self, "min_std", 0)
        if self.ksg_k >= self.n_test:
            raise ValueError(f"Mixture2DConfig: ksg_k = {self.ksg_k} must be smaller than n_test = {self.n_test} "
                             f"(the KSG estimator's neighbours are test points)")
        if self.knn_k > self.n_knn_train:
            raise ValueError(f"Mixture2DConfig: knn_k = {self.knn_k} exceeds n_knn_train = {self.n_knn_train}, "
                             f"the k-NN classifier's training points")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda[:n]' or 'auto', got {self.device!r}")
        self.mim_options()    # raises on unknown choices
        self.fit_config()

    def fit_config(self) -> FitConfig:
        return FitConfig(lr=self.lr, max_epochs=self.max_epochs, patience=self.patience,
                         warmup_epochs=self.warmup_epochs, seed=min(self.seeds), lr_schedule=self.lr_schedule)

    def mim_options(self) -> MIMOptions:
        return MIMOptions(decoder_start=self.mim_decoder_start)

    def group_key(self, objective: str, hidden: int) -> dict[str, Any]:
        """What a trained group depends on (names its run folder): the group's objective and width,
        the seeds batched in it, and every ``train`` field (derived from the field tags)."""
        return {"study": "mixture2d", "objective": objective, "hidden": hidden, "seeds": list(self.seeds),
                **C.key(self, "train")}


def group_name(objective: str, hidden: int, cfg: Mixture2DConfig) -> str:
    """The name of a group's run folder and run record: ``<objective>-H<hidden>-<hash of group_key>``."""
    return f"{objective}-H{hidden}-{config_hash(cfg.group_key(objective, hidden))}"


def train_group(objective: str, hidden: int, cfg: Mixture2DConfig, runs_dir: str | Path | None = None,
                progress: bool | None = None) -> tuple[MixtureModel2D, FitResult]:
    """Train every seed of one (objective, hidden width) as one batched model (a bucket of one width,
    :func:`train_bucket`)."""
    return train_bucket(objective, (hidden,), cfg, runs_dir, progress)[hidden]


def bucket_widths(hidden: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The buckets the widths ``hidden`` of one objective train in (:func:`train_bucket`): consecutive
    widths (sorted) share a bucket while the widest is at most :data:`BUCKET_RATIO` times the narrowest
    and :data:`BUCKET_MAX_WIDTH` wide. A function of the config's widths only, so a group's bucket does not
    depend on which other groups are recorded or finished."""
    out: list[list[int]] = []
    for h in sorted(set(hidden)):
        if out and h <= BUCKET_RATIO * out[-1][0] and h <= BUCKET_MAX_WIDTH:
            out[-1].append(h)
        else:
            out.append([h])
    return [tuple(b) for b in out]


#: Widths share a bucket while the widest is at most this many times the narrowest (1: one width each) ...
BUCKET_RATIO = 4.0
#: ... and at most this wide: past it the padded units cost more than the steps a bucket saves.
BUCKET_MAX_WIDTH = 20


def train_bucket(objective: str, hidden: tuple[int, ...] | list[int], cfg: Mixture2DConfig,
                 runs_dir: str | Path | None = None, progress: bool | None = None,
                 checkpoint_seconds: float | None = None, after_epoch=None
                 ) -> dict[int, tuple[MixtureModel2D, FitResult]]:
    """Train the groups (objective, h) for h in ``hidden``, all seeds of all widths, as one batched model
    (:func:`mimlib.bucket2d.fit_bucket`: each group trains exactly as it would alone, keeps its run
    folder ``runs_dir/<group_name>`` with its checkpoint and ``final.pt``, and is loaded from there once
    finished). Returns {h: (model, result)}. On a GPU each group trains alone with :func:`mimlib.train.fit`."""
    device = torch_device(cfg.device)
    if device.type != "cpu" or objective not in BUCKET_OBJECTIVES:
        return {h: _fit_group(objective, h, cfg, runs_dir, progress) for h in hidden}
    stream = MixtureStream(cfg.seeds, n_train=cfg.n_train)
    val = stream.validation(cfg.n_val)
    members = [BucketMember(h, Path(runs_dir) / group_name(objective, h, cfg) if runs_dir is not None else None,
                            cfg.group_key(objective, h)) for h in hidden]
    kw = {} if checkpoint_seconds is None else {"checkpoint_seconds": checkpoint_seconds}
    out = fit_bucket(objective, members, cfg.seeds,
                     train_batches=lambda e: split_batches(stream.epoch(e), cfg.batch_size),
                     val_batches=lambda: split_batches(val, 2_000), config=cfg.fit_config(),
                     options=cfg.mim_options(), min_std=cfg.min_std, progress=progress,
                     desc=f"{objective} H={','.join(map(str, hidden))}", after_epoch=after_epoch, **kw)
    return dict(zip(hidden, out))


def _fit_group(objective: str, hidden: int, cfg: Mixture2DConfig, runs_dir: str | Path | None = None,
               progress: bool | None = None) -> tuple[MixtureModel2D, FitResult]:
    """One group alone through :func:`mimlib.train.fit` and :mod:`mimlib.objectives` (GPU runs)."""
    device = torch_device(cfg.device)
    model = MixtureModel2D(hidden, cfg.seeds, min_std=cfg.min_std).to(device)
    stream = MixtureStream(cfg.seeds, n_train=cfg.n_train)
    val = stream.validation(cfg.n_val).to(device)
    key = cfg.group_key(objective, hidden)
    run_dir = Path(runs_dir) / group_name(objective, hidden, cfg) if runs_dir is not None else None
    result = fit(model, get_objective(objective, cfg.mim_options()),
                 train_batches=lambda e: split_batches(stream.epoch(e).to(device), cfg.batch_size),
                 val_batches=lambda: split_batches(val, 2_000),
                 config=cfg.fit_config(), run_dir=run_dir, run_config=key, progress=progress,
                 desc=f"{objective} H={hidden}")
    return model, result


@torch.no_grad()
def evaluate_group(model: MixtureModel2D, cfg: Mixture2DConfig) -> pd.DataFrame:
    """Test metrics of every seed of a batched model: one row per seed.

    Columns: ``mi_ksg`` (KSG estimator 1 of I(x; z), z ~ q(z|x), nats), ``nll_is``
    (importance-sampled -log q(x), ``nll_samples`` samples, on the first
    ``n_nll_points`` test points), ``nll_single`` (the
    one-sample negative ELBO the reference code reports as NLL), ``recon_mean``
    (||x - E[x'|z]||) and ``recon_sample`` (||x - x'||, x' ~ p(x|z)), with
    z ~ q(z|x); ``knn5`` (accuracy of the mixture component from z);
    ``enc_std`` (mean posterior std, a collapse indicator).
    """
    device = next(model.parameters()).device
    stream = MixtureStream(cfg.seeds)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        x_test, y_test = (t.to(device) for t in stream.test(cfg.n_test))
        x_tr, y_tr = (t.to(device) for t in stream.train_fixed(cfg.n_knn_train))
        q_test = model.encoder(x_test)
        z_test = q_test.sample()
        z_tr = model.encoder(x_tr).sample()
        nll_is = metrics.nll_importance(model, x_test[:, :cfg.n_nll_points], cfg.nll_samples).mean(-1)
        nll_single = metrics.nll_single_sample(model, x_test).mean(-1)
        rec_mean = metrics.reconstruction_error(model, x_test, use_mean=True).mean(-1)
        rec_sample = metrics.reconstruction_error(model, x_test, use_mean=False).mean(-1)
        enc_std = q_test.stddev.mean(dim=(-2, -1))
    rows = []
    for i, seed in enumerate(cfg.seeds):
        xt, zt, zr = x_test[i].cpu().numpy(), z_test[i].cpu().numpy(), z_tr[i].cpu().numpy()
        rows.append({
            "seed": seed,
            "mi_ksg": metrics.ksg_mi(xt, zt, k=cfg.ksg_k),
            "nll_is": float(nll_is[i]), "nll_is_samples": cfg.nll_samples,
            "nll_single": float(nll_single[i]),
            "recon_mean": float(rec_mean[i]), "recon_sample": float(rec_sample[i]),
            "knn5": metrics.knn_accuracy(zr, y_tr[i].cpu().numpy(), zt, y_test[i].cpu().numpy(), k=cfg.knn_k),
            "enc_std": float(enc_std[i]),
        })
    return pd.DataFrame(rows)


@torch.no_grad()
def figure1_arrays(model: MixtureModel2D, seed_index: int = 0, n_points: int = 400,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """What the paper's Fig. 1 shows of one model (:func:`mimlib.plots.plot_mixture_panels`), as arrays:
    for ``n_points`` fresh points x0 ~ P(x) (``labels``: their components), the mean and std of
    q(z|x0) and reconstructions x' ~ p(x|z'), z' ~ q(z|x0), of model ``seed_index`` of the batch."""
    one = model.select(seed_index)
    x0, labels = sample_mixture(n_points, torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = one.encoder(x0)
        z = q.sample()
        x_rec = one.decoder(z).sample()[0]
    return {"labels": labels.numpy(), "q_mean": q.mean[0].numpy(), "q_std": q.stddev[0].numpy(),
            "x_rec": x_rec.numpy()}


@dataclass
class SweepResult:
    """Results of a sweep: one row per trained model, the training histories, the Fig. 1 arrays of
    every group (:func:`figure1_arrays`) and the models trained or loaded with weights in this call
    (groups read from their records have none)."""

    results: pd.DataFrame
    history: pd.DataFrame
    models: dict[tuple[str, int], MixtureModel2D] = field(repr=False)
    wall_seconds: float = 0.0       # this call's wall time (small when every group was loaded)
    train_seconds: float = 0.0      # training time of all groups, as measured when they were trained
    panels: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    trained: list[tuple[str, int]] = field(default_factory=list)   # groups whose weights were needed


def _from_record(objective: str, hidden: int, cfg: Mixture2DConfig, records_dir: str | Path | None
                 ) -> tuple[RunRecord | None, dict[str, Any] | None]:
    """A group's record (or None) and, if it also holds an evaluation for ``cfg``'s settings, the
    group's rows, history, Fig. 1 arrays and seconds as :func:`_evaluate` returns them."""
    name = group_name(objective, hidden, cfg)
    rec = read_record(records_dir, STUDY, name, cfg.group_key(objective, hidden))
    rows = read_evaluation(records_dir, STUDY, name, C.key(cfg, "evaluate")) if rec is not None else None
    if rows is None:
        return rec, None
    return rec, {"rows": rows, "history": rec.history, "panel": rec.arrays, "model": None,
                 "seconds": float(rec.info["train_seconds"])}


def _evaluate(objective: str, hidden: int, cfg: Mixture2DConfig, model: MixtureModel2D, res: FitResult,
              records_dir: str | Path | None) -> dict[str, Any]:
    """A trained (or loaded) group evaluated and, with ``records_dir``, recorded, then read back from the
    record (so a first execution and a re-execution from the records print the same). Returns rows,
    history, Fig. 1 arrays, seconds and the model."""
    name, key, ev_key = group_name(objective, hidden, cfg), cfg.group_key(objective, hidden), C.key(cfg, "evaluate")
    rec = read_record(records_dir, STUDY, name, key)
    model.eval()
    ev = evaluate_group(model, cfg)
    ev.insert(0, "hidden", hidden)
    ev.insert(0, "objective", objective)
    ev["epochs"] = [e + 1 for e in res.stop_epoch]
    ev["best_epoch"] = [e + 1 for e in res.best_epoch]
    ev["seconds"] = res.seconds / len(cfg.seeds)   # the group's training time, shared by its seeds
    ev["group_seconds"] = res.seconds
    h = res.history.copy()
    h.insert(0, "hidden", hidden)
    h.insert(0, "objective", objective)
    h["seed"] = [cfg.seeds[i] for i in h["model"]]
    panel = figure1_arrays(model)
    out = {"rows": ev, "history": h, "panel": panel, "model": model, "seconds": res.seconds}
    if records_dir is not None:
        if rec is None:
            write_record(records_dir, RunRecord(STUDY, name, key, h, {
                "train_seconds": res.seconds, "epochs": [e + 1 for e in res.stop_epoch],
                "device": cfg.device}, panel))
        write_evaluation(records_dir, STUDY, name, ev_key, ev)
        back = read_record(records_dir, STUDY, name, key)
        out.update(rows=read_evaluation(records_dir, STUDY, name, ev_key), history=back.history, panel=back.arrays)
    return out


def _train_in_worker(objective: str, hidden: tuple[int, ...], cfg: Mixture2DConfig,
                     runs_dir: str | Path | None) -> dict[int, tuple[dict, FitResult]]:
    """:func:`train_bucket` in a worker process (one torch thread); models travel back as state dicts."""
    torch.set_num_threads(1)
    trained = train_bucket(objective, hidden, cfg, runs_dir, progress=False)
    return {h: (m.state_dict(), r) for h, (m, r) in trained.items()}


def _evaluate_in_worker(objective: str, hidden: int, cfg: Mixture2DConfig, state: dict, res: FitResult,
                        records_dir: str | Path | None) -> dict[str, Any]:
    """:func:`_evaluate` in a worker process (one torch thread)."""
    torch.set_num_threads(1)
    out = _evaluate(objective, hidden, cfg, _model_from(state, hidden, cfg), res, records_dir)
    out["model"] = out["model"].state_dict()
    return out


def _model_from(state: dict, hidden: int, cfg: Mixture2DConfig) -> MixtureModel2D:
    model = MixtureModel2D(hidden, cfg.seeds, min_std=cfg.min_std).to(cfg.device)
    model.load_state_dict(state)
    return model.eval()


def _buckets(todo: list[tuple[str, int]], cfg: Mixture2DConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The groups to train, in buckets (:func:`bucket_widths` of the config's widths, cut to ``todo``),
    costliest first."""
    out = []
    for o in cfg.objectives:
        for widths in bucket_widths(cfg.hidden):
            mine = tuple(h for h in widths if (o, h) in todo)
            if mine:
                out.append((o, mine))
    return sorted(out, key=lambda b: -(sum(h + 25 for h in b[1]) * (2 if b[0] != "vae" else 1)))


def run_sweep(cfg: Mixture2DConfig, runs_dir: str | Path | None = None,
              progress: bool | None = None, workers: int = 1,
              records_dir: str | Path | None = None) -> SweepResult:
    """Train (or load) and evaluate every (objective, hidden) group of ``cfg``.

    ``records_dir``: run records are read from (and written to) ``records_dir/mixture2d/`` (see
    :func:`_evaluate`); a group with a record for these evaluation settings needs neither training
    nor weights.

    ``workers`` > 1: that many worker processes (spawned, one torch thread each) share the buckets,
    costliest first, then the groups' evaluations; the results are the same groups, in the same order,
    as with one process (up to the rounding of a different thread count). Spawned workers re-import a calling *script*, which
    therefore needs the ``if __name__ == "__main__":`` guard (notebooks and ``python -c`` do not).
    """
    if not isinstance(cfg, Mixture2DConfig):
        raise TypeError(f"run_sweep: cfg expects a Mixture2DConfig, got {type(cfg).__name__}")
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError(f"run_sweep: workers expects an integer, got {workers!r} ({type(workers).__name__})")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    groups = [(o, h) for o in cfg.objectives for h in cfg.hidden]
    done: dict[tuple[str, int], dict] = {}
    todo = []
    for o, h in groups:   # groups with a complete record are read here, in this process
        recorded = _from_record(o, h, cfg, records_dir)[1]
        if recorded is not None:
            done[(o, h)] = recorded
        else:
            todo.append((o, h))
    _preflight(todo, cfg, runs_dir, records_dir)
    buckets = _buckets(todo, cfg)
    if workers == 1 or len(todo) <= 1:
        for o, widths in buckets:
            for h, (model, res) in train_bucket(o, widths, cfg, runs_dir, progress).items():
                done[(o, h)] = _evaluate(o, h, cfg, model, res, records_dir)
    else:
        # training tasks first (costliest first), then, as each bucket finishes, one evaluation task per group
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as ex:
            pending = {ex.submit(_train_in_worker, o, widths, cfg, runs_dir): ("train", o, widths)
                       for o, widths in buckets}
            bar = _bar(len(todo), progress)
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    what = pending.pop(fut)
                    if what[0] == "train":
                        for h, (state, res) in fut.result().items():
                            pending[ex.submit(_evaluate_in_worker, what[1], h, cfg, state, res, records_dir)] = (
                                "evaluate", what[1], h)
                    else:
                        out = fut.result()
                        out["model"] = _model_from(out["model"], what[2], cfg)
                        done[(what[1], what[2])] = out
                        bar.update(1)
            bar.close()
    return SweepResult(pd.concat([done[g]["rows"] for g in groups], ignore_index=True),
                       pd.concat([done[g]["history"] for g in groups], ignore_index=True),
                       {g: done[g]["model"] for g in groups if done[g]["model"] is not None},
                       time.perf_counter() - t0, sum(done[g]["seconds"] for g in groups),
                       {g: done[g]["panel"] for g in groups}, [g for g in todo])


def _preflight(todo: list[tuple[str, int]], cfg: Mixture2DConfig, runs_dir, records_dir) -> None:
    """Before the first training step: the device exists and the folders that will be written are
    writable (each error names the folder; nothing is trained or written)."""
    if not todo:
        return
    torch_device(cfg.device)
    if records_dir is not None:
        check_writable(Path(records_dir) / STUDY, "records folder")
    if runs_dir is not None and any(not (Path(runs_dir) / group_name(o, h, cfg) / "final.pt").exists()
                                    for o, h in todo):
        check_writable(runs_dir, "runs folder")


def _bar(total: int, progress: bool | None):
    from tqdm import tqdm
    show = progress if progress is not None else os.environ.get("MIMLIB_PROGRESS", "1") != "0"
    return tqdm(total=total, desc="2-D groups", disable=not show, leave=False)
