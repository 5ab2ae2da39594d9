"""One fit loop for every objective and every model.

``fit`` trains with Adam, warms the KL/MIM weight up, stops early on a
validation loss (per model, for the batched 2-D models), checkpoints every
epoch (atomically) and resumes from the last checkpoint, refuses to go on past
a non-finite loss, and returns the history as a DataFrame. A run folder whose
training has finished is loaded instead of trained again.

One process at a time trains a run folder: it holds an exclusive lock on ``<run folder>/.lock``
(:func:`mimlib.atomic.file_lock`, released by the kernel when the process ends, even by kill -9); a
second process started on the same folder waits, saying which process it waits for, and then
loads the finished run. Under the lock, the temporary files of a killed writer (``*.tmp``) and a
checkpoint left beside ``final.pt`` are removed. A full disk stops training with
:class:`mimlib.atomic.DiskFullError` naming the file; the last checkpoint stays intact and the
run resumes from it once space is freed. Messages count epochs and steps from 1 (the history's
``epoch`` column counts from 0).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch
from tqdm import tqdm  # text bars: tqdm.auto would need ipywidgets in notebooks and warns without it

from . import configs as C
from .allocator import keep_freed_memory
from .atomic import check_writable, file_lock, remove_orphans, replace_atomic
from .objectives import Loss
from .optim import LR_SCHEDULES, OPTIMIZERS, lr_factor, make_optimizer

__all__ = ["FitConfig", "FitResult", "fit", "beta_schedule", "atomic_save", "config_hash", "run_lock", "LOCK_NAME"]

#: The lock file of a run folder (``*.lock`` is git-ignored).
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings (paper appendix D; defaults are the 2-D study's)."""

    lr: float = 1e-3
    max_epochs: int = 200
    patience: int = 10           # epochs without a better validation loss before stopping
    warmup_epochs: int = 0       # KL/MIM weight beta = min(1, (epoch + 1) / warmup_epochs)
    seed: int = 0                # seeds the sampling noise of the objectives
    min_delta: float = 0.0       # an improvement must beat the best loss by more than this
    optimizer: str = "adam"      # "adam" or "adam-normgrad" (the reference code's images; mimlib.optim)
    lr_schedule: str = "constant"  # "constant" or "noam" (the reference code's 2-D schedule; mimlib.optim)
    selection: str = "best"      # "best": early stopping, best validation epoch kept; "last": every epoch, last kept

    def __post_init__(self):
        C.check_types(self)   # lr a finite number, max_epochs an integer, ...
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.selection not in ("best", "last"):
            raise ValueError(f"selection must be 'best' or 'last', got {self.selection!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")


@dataclass
class FitResult:
    """What ``fit`` returns: the history (one row per epoch and model) and where each model stopped."""

    history: pd.DataFrame
    best_epoch: list[int]
    stop_epoch: list[int]
    best_val_loss: list[float]
    seconds: float
    resumed_from: int | None = None
    loaded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def beta_schedule(epoch: int, warmup_epochs: int) -> float:
    """KL/MIM weight of epoch ``epoch`` (0-based): min(1, (epoch + 1) / warmup_epochs)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration (names run folders)."""
    import hashlib
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def atomic_save(obj: Any, path: Path, then: str = "") -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file.

    A full disk (``OSError`` ENOSPC, or torch's "unexpected pos" of a short write) raises
    :class:`mimlib.atomic.DiskFullError` naming ``path`` (which keeps its previous content);
    ``then`` says what a re-run does once space is freed."""
    replace_atomic(path, lambda tmp: torch.save(obj, tmp), prefix=Path(path).name, then=then)


def run_lock(run_dir: str | Path, wait: bool = True):
    """The lock of a run folder (created if missing), as :func:`mimlib.atomic.file_lock`: one process
    at a time trains, evaluates into or tidies the folder. Re-entrant within a thread."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return file_lock(run_dir / LOCK_NAME, what=f"run folder {run_dir}", wait=wait)


#: A temporary file in a run folder older than this (seconds) is a killed writer's. Under the run lock no
#: writer is at work anyway; the age spares the files of a process that does not lock (an older mimlib).
ORPHAN_SECONDS = 60


def _remove_orphans(run_dir: Path) -> None:
    """Under the run lock: temporary files of killed writers, and a checkpoint beside ``final.pt``."""
    if (run_dir / "final.pt").exists():
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    remove_orphans(run_dir, ("*.tmp",), older_than=ORPHAN_SECONDS)


def _tidy_finished(run_dir: Path) -> None:
    """Orphans of a finished run folder, removed if the folder is free and writable (else left)."""
    try:
        if not ((run_dir / "checkpoint.pt").exists()
                or any(time.time() - p.stat().st_mtime > ORPHAN_SECONDS for p in run_dir.glob("*.tmp"))):
            return
        with run_lock(run_dir, wait=False) as held:
            if held:
                _remove_orphans(run_dir)
    except OSError:
        pass   # a read-only runs folder: the finished run still loads


def _batched_dim(model: torch.nn.Module) -> int | None:
    """Number of stacked models if every parameter carries them in dim 0, else None."""
    n = getattr(model, "n_models", None)
    if n is None:
        return None
    if not all(p.shape[0] == n for p in model.parameters()):
        raise ValueError("model.n_models is set but not every parameter has it as its first dimension")
    return n


def _nonfinite_message(epoch: int, step: int, loss: Loss, per_model: torch.Tensor) -> str:
    bad = (~torch.isfinite(per_model)).nonzero().flatten().tolist() if per_model.dim() else []
    terms = {}
    for name, t in loss.terms.items():
        t = t.float()
        terms[name] = t.mean(-1).tolist() if t.dim() > 1 else float(t.mean())
    where = f" (models {bad})" if bad else ""
    return (f"non-finite training loss at epoch {epoch + 1}, step {step + 1}{where}: "
            f"loss per model = {per_model.tolist()}; mean loss terms = {terms}. "
            "Lower the learning rate, raise the std floor, or check the data.")


@torch.no_grad()
def _validate(model, objective, val_batches: Callable[[], Iterable[torch.Tensor]], seed: int) -> torch.Tensor:
    """Mean validation loss per model at beta = 1, under a fixed noise seed (so epochs compare fairly)."""
    total, count = None, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for xb in val_batches():
            v = objective(model, xb, beta=1.0).value
            n = v.shape[-1]
            s = v.sum(-1)
            total = s if total is None else total + s
            count += n
    return total / count


def fit(model: torch.nn.Module,
        objective: Callable[..., Loss],
        train_batches: Callable[[int], Iterable[torch.Tensor]],
        val_batches: Callable[[], Iterable[torch.Tensor]],
        config: FitConfig = FitConfig(),
        run_dir: str | Path | None = None,
        run_config: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, torch.nn.Module], dict[str, Any] | None] | None = None,
        progress: bool | None = None,
        desc: str = "fit",
        migrate_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> FitResult:
    """Train ``model`` on ``objective`` until every model's validation loss stalls.

    ``train_batches(epoch)`` yields the mini-batches of an epoch (a function of
    the epoch, so a resumed run sees the same data); ``val_batches()`` yields
    the fixed validation batches. Per model (models stacked in dim 0 of every
    parameter when ``model.n_models`` is set), the best validation loss after
    the warm-up is tracked; a model stops counting after ``patience`` epochs
    without improvement and its best parameters are restored at the end.
    Training ends when every model has stopped or at ``max_epochs``.

    With ``run_dir``, a checkpoint is written atomically after every epoch and
    a later call resumes from it; a finished run (``final.pt``) is loaded
    instead of retrained. ``run_config`` (JSON-able) is stored and must match on
    resume; ``migrate_config(stored_run_config)`` may first bring a run config stored
    by an older version into today's form (e.g. fields that left or joined a run's identity). ``on_epoch_end(epoch, model)`` may return extra history columns.
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"fit: config expects a FitConfig, got {type(config).__name__}")
    n_models = _batched_dim(model)
    keep_freed_memory()   # freed activations stay in the heap: no page faults every step (mimlib.allocator)
    run_dir = Path(run_dir) if run_dir is not None else None
    stored_config = {"fit": asdict(config), "run": run_config or {}}
    stored_json = json.loads(json.dumps(stored_config, default=str))
    args = (model, objective, train_batches, val_batches, config, run_dir, stored_json, migrate_config,
            on_epoch_end, progress, desc, n_models)
    if run_dir is None:
        return _train(*args)
    final = run_dir / "final.pt"
    if final.exists():   # finished: loaded (a read-only runs folder will do)
        _tidy_finished(run_dir)
        return _load_final(model, final, stored_json, migrate_config)
    check_writable(run_dir, "run folder")   # before any training: checkpoints go there
    with run_lock(run_dir):
        if final.exists():   # another process trained it while this one waited
            return _load_final(model, final, stored_json, migrate_config)
        _remove_orphans(run_dir)
        return _train(*args)


def _load_final(model: torch.nn.Module, final: Path, stored_json: dict, migrate_config) -> FitResult:
    state = torch.load(final, weights_only=False)
    _check_config(state["config"], stored_json, final, migrate_config)
    model.load_state_dict(state["model"])
    res = state["result"]
    return FitResult(_trim_history(res["history"], res["stop_epoch"]), res["best_epoch"], res["stop_epoch"],
                     res["best_val_loss"], res["seconds"], res.get("resumed_from"), loaded=True)


def _train(model, objective, train_batches, val_batches, config: FitConfig, run_dir: Path | None,
           stored_json: dict, migrate_config, on_epoch_end, progress, desc: str, n_models: int | None
           ) -> FitResult:
    """The body of :func:`fit` (under the run folder's lock when there is one)."""
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr)
    shape = (n_models,) if n_models else ()
    best_loss = torch.full(shape, math.inf)
    best_epoch = torch.full(shape, -1, dtype=torch.long)
    bad_epochs = torch.zeros(shape, dtype=torch.long)
    stop_epoch = torch.full(shape, -1, dtype=torch.long)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows: list[dict[str, Any]] = []
    start_epoch, seconds, resumed_from = 0, 0.0, None
    torch.manual_seed(config.seed)

    ckpt_path = run_dir / "checkpoint.pt" if run_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        _check_config(ck["config"], stored_json, ckpt_path, migrate_config)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        best_state, rows = ck["best_state"], ck["history"]
        best_loss, best_epoch, bad_epochs, stop_epoch = (ck["best_loss"], ck["best_epoch"],
                                                         ck["bad_epochs"], ck["stop_epoch"])
        start_epoch, seconds = ck["epoch"] + 1, ck["seconds"]
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        resumed_from = ck["epoch"]
    saved = resumed_from   # epoch (0-based) of the last checkpoint on disk

    show = progress if progress is not None else os.environ.get("MIMLIB_PROGRESS", "1") != "0"
    bar = tqdm(range(start_epoch, config.max_epochs), desc=desc, disable=not show,
               initial=start_epoch, total=config.max_epochs, leave=False)
    for epoch in bar:
        if bool((stop_epoch >= 0).all()):
            break
        t0 = time.perf_counter()
        beta = beta_schedule(epoch, config.warmup_epochs)
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(config.lr_schedule, epoch, config.warmup_epochs)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        n_seen = 0
        # Models that have stopped keep their best parameters aside; only running ones must stay finite.
        active = stop_epoch < 0
        for step, xb in enumerate(train_batches(epoch)):
            loss = objective(model, xb, beta=beta)
            per_model = loss.value.mean(-1)
            if not bool(torch.isfinite(per_model[active]).all()):
                raise FloatingPointError(_nonfinite_message(epoch, step, loss, per_model.detach()))
            opt.zero_grad(set_to_none=True)
            per_model[active].sum().backward()
            opt.step()
            if n_models and not bool(active.all()):
                _restore(model, best_state, ~active)  # stopped models stay at their best parameters
            n = loss.value.shape[-1]
            n_seen += n
            for name, t in [("train_loss", loss.value.detach()), *loss.terms.items()]:
                sums[name] = sums.get(name, 0) + t.sum(-1)
        model.eval()
        val = _validate(model, objective, val_batches, seed=config.seed + 7919)
        if not bool(torch.isfinite(val[active]).all()):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch + 1}: {val.tolist()}")

        # Early stopping, per model, once the warm-up is over ("last": no stopping, every epoch counts).
        if config.selection == "last":
            best_loss, best_epoch = val.detach().clone(), torch.full_like(best_epoch, epoch)
            _update_best(best_state, model, torch.ones_like(active), n_models)
        elif beta >= 1.0:
            improved = active & (val < best_loss - config.min_delta)
            best_loss = torch.where(improved, val, best_loss)
            best_epoch = torch.where(improved, torch.tensor(epoch), best_epoch)
            bad_epochs = torch.where(improved, torch.zeros_like(bad_epochs), bad_epochs + active.long())
            stop_epoch = torch.where(active & (bad_epochs >= config.patience), torch.tensor(epoch), stop_epoch)
            _update_best(best_state, model, improved, n_models)
        seconds += time.perf_counter() - t0

        extra = on_epoch_end(epoch, model) if on_epoch_end is not None else None
        for i in range(n_models or 1):
            if n_models and not bool(active[i]):
                continue  # stopped before this epoch: no more history
            pick = (lambda t: float(t[i])) if n_models else (lambda t: float(t))
            row = {"epoch": epoch, "model": i, "beta": beta, "examples": (epoch + 1) * n_seen,
                   "val_loss": pick(val), "seconds": seconds}
            row.update({k: pick(v) / n_seen for k, v in sums.items()})
            if extra:
                row.update({k: (v[i] if n_models and hasattr(v, "__len__") else v) for k, v in extra.items()})
            rows.append(row)
        bar.set_postfix(beta=f"{beta:.2f}", val=f"{float(val.float().mean()):.3f}",
                        running=int((stop_epoch < 0).sum()))
        if ckpt_path is not None:
            atomic_save({"config": stored_json, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "best_state": best_state, "history": rows, "best_loss": best_loss,
                         "best_epoch": best_epoch, "bad_epochs": bad_epochs, "stop_epoch": stop_epoch,
                         "epoch": epoch, "seconds": seconds, "rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                        ckpt_path, then=_resume_note(saved, ckpt_path))
            saved = epoch
    bar.close()

    last_epoch = rows[-1]["epoch"] if rows else -1
    never = best_epoch < 0  # warm-up longer than the run: keep the last parameters
    if bool(never.any()):
        _update_best(best_state, model, never, n_models)
    model.load_state_dict(best_state)
    stop = torch.where(stop_epoch >= 0, stop_epoch, torch.tensor(last_epoch))
    result = FitResult(_trim_history(rows, _tolist(stop)), _tolist(best_epoch), _tolist(stop), _tolist(best_loss),
                       seconds, resumed_from)
    if run_dir is not None:
        atomic_save({"config": stored_json, "model": model.state_dict(),
                     "result": {"history": rows, "best_epoch": result.best_epoch, "stop_epoch": result.stop_epoch,
                                "best_val_loss": result.best_val_loss, "seconds": seconds,
                                "resumed_from": resumed_from}}, run_dir / "final.pt",
                    then=_resume_note(saved, ckpt_path))
        ckpt_path.unlink(missing_ok=True)
    return result


def _resume_note(saved: int | None, ckpt_path: Path) -> str:
    """What a re-run does after a failed write, for the message of a full disk."""
    if saved is None:
        return "run the same command again: the run starts from the beginning (no checkpoint was written yet)"
    return f"run the same command again: the run resumes after epoch {saved + 1} from {ckpt_path}"


def _tolist(t: torch.Tensor) -> list:
    return t.tolist() if t.dim() else [t.item()]


def _trim_history(rows: list[dict[str, Any]], stop_epoch: list[int]) -> pd.DataFrame:
    """History rows up to each model's stopping epoch (runs saved before models were frozen
    after stopping logged a few epochs more)."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    stop = pd.Series(stop_epoch).reindex(df["model"]).to_numpy()
    return df[df["epoch"].to_numpy() <= stop].reset_index(drop=True)


@torch.no_grad()
def _restore(model: torch.nn.Module, best_state: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
    for k, v in model.state_dict().items():
        v[mask] = best_state[k][mask]


def _update_best(best_state: dict[str, torch.Tensor], model: torch.nn.Module,
                 mask: torch.Tensor, n_models: int | None) -> None:
    if not bool(mask.any()):
        return
    for k, v in model.state_dict().items():
        if n_models:
            best_state[k][mask] = v.detach()[mask]
        else:
            best_state[k] = v.detach().clone()


#: FitConfig fields added after runs were stored, with the value those runs had.
_FIT_JOINED = {"optimizer": "adam", "lr_schedule": "constant", "selection": "best"}


def _check_config(stored: dict, current: dict, path: Path, migrate=None) -> None:
    if isinstance(stored.get("fit"), dict):
        stored = {**stored, "fit": {**_FIT_JOINED, **stored["fit"]}}
    if migrate is not None and isinstance(stored.get("run"), dict):
        stored = {**stored, "run": migrate(stored["run"])}
    if stored != current:
        raise ValueError(f"{path} was written with a different configuration:\n  stored:  {stored}\n"
                         f"  current: {current}\nUse another run folder or delete this one.")
