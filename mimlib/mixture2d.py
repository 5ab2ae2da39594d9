"""The 2-D mixture study (paper section 4, appendix D.1, Figs. 1 and 3), end to end.

``run_sweep(config)`` trains, for every objective and hidden width, all seeds
as one batched model (:class:`mimlib.nets.mlp.MixtureModel2D`), evaluates each
seed on its own test set and returns one row per trained model. Finished
groups are loaded from their run folders instead of retrained.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import metrics
from .data import MixtureStream, split_batches
from .nets.mlp import MixtureModel2D
from .objectives import get_objective
from .train import FitConfig, FitResult, config_hash, fit

__all__ = ["Mixture2DConfig", "train_group", "evaluate_group", "run_sweep", "SweepResult"]


@dataclass(frozen=True)
class Mixture2DConfig:
    """Every setting of the 2-D study; :mod:`mimlib.presets` holds the named presets."""

    hidden: tuple[int, ...] = (5, 20, 50, 100, 200, 300, 400, 500)
    seeds: tuple[int, ...] = tuple(range(10))
    objectives: tuple[str, ...] = ("mim", "vae")
    batch_size: int = 128
    n_train: int = 10_000          # fresh points per epoch
    n_val: int = 5_000
    n_test: int = 10_000
    n_nll_points: int = 2_000      # test points per seed for the importance-sampled NLL (it costs S passes)
    n_knn_train: int = 10_000      # labelled training points the k-NN classifier is fit on
    lr: float = 1e-3
    patience: int = 10
    max_epochs: int = 200
    warmup_epochs: int = 3
    min_std: float = 1e-6
    nll_samples: int = 100         # importance samples per test point for nll_is
    ksg_k: int = 5
    knn_k: int = 5
    device: str = "cpu"

    def __post_init__(self):
        for name in ("hidden", "seeds", "objectives"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{name} must not be empty")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for o in self.objectives:
            get_objective(o)  # raises on unknown names

    def fit_config(self) -> FitConfig:
        return FitConfig(lr=self.lr, max_epochs=self.max_epochs, patience=self.patience,
                         warmup_epochs=self.warmup_epochs, seed=min(self.seeds))

    def group_key(self, objective: str, hidden: int) -> dict[str, Any]:
        """What a trained group depends on (names its run folder)."""
        keep = ("seeds", "batch_size", "n_train", "n_val", "lr", "patience", "max_epochs",
                "warmup_epochs", "min_std")
        d = {k: v for k, v in asdict(self).items() if k in keep}
        d["seeds"] = list(d["seeds"])
        return {"study": "mixture2d", "objective": objective, "hidden": hidden, **d}


def train_group(objective: str, hidden: int, cfg: Mixture2DConfig, runs_dir: str | Path | None = None,
                progress: bool | None = None) -> tuple[MixtureModel2D, FitResult]:
    """Train every seed of one (objective, hidden width) as one batched model."""
    device = torch.device(cfg.device)
    model = MixtureModel2D(hidden, cfg.seeds, min_std=cfg.min_std).to(device)
    stream = MixtureStream(cfg.seeds, n_train=cfg.n_train)
    val = stream.validation(cfg.n_val).to(device)
    key = cfg.group_key(objective, hidden)
    run_dir = Path(runs_dir) / f"{objective}-H{hidden}-{config_hash(key)}" if runs_dir is not None else None
    result = fit(model, get_objective(objective),
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


@dataclass
class SweepResult:
    """Results of a sweep: one row per trained model, the training histories and the models."""

    results: pd.DataFrame
    history: pd.DataFrame
    models: dict[tuple[str, int], MixtureModel2D] = field(repr=False)
    wall_seconds: float = 0.0       # this call's wall time (small when every group was loaded)
    train_seconds: float = 0.0      # training time of all groups, as measured when they were trained


def run_sweep(cfg: Mixture2DConfig, runs_dir: str | Path | None = None,
              progress: bool | None = None) -> SweepResult:
    """Train (or load) and evaluate every (objective, hidden) group of ``cfg``."""
    t0 = time.perf_counter()
    rows, hists, models = [], [], {}
    train_seconds = 0.0
    for objective in cfg.objectives:
        for hidden in cfg.hidden:
            model, res = train_group(objective, hidden, cfg, runs_dir, progress)
            model.eval()
            ev = evaluate_group(model, cfg)
            ev.insert(0, "hidden", hidden)
            ev.insert(0, "objective", objective)
            ev["epochs"] = [e + 1 for e in res.stop_epoch]
            ev["best_epoch"] = [e + 1 for e in res.best_epoch]
            ev["seconds"] = res.seconds / len(cfg.seeds)   # the group's training time, shared by its seeds
            ev["group_seconds"] = res.seconds
            rows.append(ev)
            h = res.history.copy()
            h.insert(0, "hidden", hidden)
            h.insert(0, "objective", objective)
            h["seed"] = [cfg.seeds[i] for i in h["model"]]
            hists.append(h)
            models[(objective, hidden)] = model
            train_seconds += res.seconds
    return SweepResult(pd.concat(rows, ignore_index=True), pd.concat(hists, ignore_index=True), models,
                       time.perf_counter() - t0, train_seconds)
