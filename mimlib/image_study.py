"""The image studies (paper section 5, appendix D.2, Table 1, Fig. 2; appendix E.2, Figs. 4-5), end to end.

One run = one model trained on one dataset (MNIST or Fashion-MNIST) with one
prior (standard ``S`` or VampPrior ``VP``) and one objective (``mim``, ``vae``
or ``amim``) from one seed. The model (``ImageStudyConfig.model``) is the
convHVAE (:class:`mimlib.nets.hvae.ConvHVAE`, the default; section 5) or the
PixelHVAE (:class:`mimlib.nets.pixelhvae.PixelHVAE`, the same encoders with an
autoregressive PixelCNN decoder; appendix E.2, trained with A-MIM and the VAE).
This module runs the study:

* :func:`load_data` and :func:`epoch_batches`: the images of a run and its training batches;
  :func:`build_model`: its model;
* :func:`train_model` trains it with :func:`mimlib.train.fit` in a run folder
  named from the configuration's hash (checkpoint after every epoch, exact
  resume, a finished run is loaded from ``final.pt``);
* :func:`evaluate_model` computes the row of ``results/images.csv``: k-NN
  accuracy (k = 1, 3, 5, 10) of the 80-D latent, sampled (the paper's) and at
  the mean, fit on the training images and scored on the test images; the
  importance-sampled test NLL; the reconstruction term -log p(x|z); the number
  of active units. The row is cached in the run folder;
* :func:`run_study` loops over datasets, priors, objectives and seeds (and, with
  ``records_dir``, writes and reads the runs' records, :mod:`mimlib.records`).

The other parts of the image studies, one job each:

* :mod:`mimlib.image_config`: :class:`ImageStudyConfig` (every setting, checked), the run's
  identity and :func:`run_name`; named presets in :mod:`mimlib.presets`;
* :mod:`mimlib.image_codes`: codes and draws of a trained model (:func:`embed`,
  :func:`posterior_means`, :func:`reconstructions` and :func:`samples` of the paper's Figs. 4-5,
  :func:`figure_arrays`);
* :mod:`mimlib.metrics`: :func:`knn_accuracies`, :func:`active_units` (and the NLL);
* :mod:`mimlib.image_tables`: the chapters' tables (:func:`time_per_epoch`, :func:`training_curves`);
* :mod:`mimlib.image_cli`: the command line ``python -m mimlib.image_study`` (one run, in the
  background; re-running resumes from the checkpoint, a finished run is only evaluated)::

    python -m mimlib.image_study --preset book --dataset mnist --prior standard \\
        --objective mim --threads 1 [--seed 0] [--runs-dir runs]

Nothing in the evaluation uses the decoder's mean image (a PixelCNN decoder
has none): the reconstruction term and the NLL only need ``log_prob``.

An *epoch* is ``steps_per_epoch`` optimiser steps when that is set (the batches
continue through successive shuffled, dynamically binarised passes over the
training images, so nothing is skipped or repeated within a pass), else one
full pass. Warm-up, early stopping and the learning curves count in these
epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from . import images as I
from . import metrics
from .atomic import check_writable, write_atomic
from .image_codes import _batches, embed, figure_arrays, posterior_means, reconstructions, samples
from .image_config import (MODELS, PRIOR_SHORT, ImageStudyConfig, _legacy_eval_names, _legacy_run_names,
                           _migrate_run_config, run_name)
from .image_config import _legacy_key  # noqa: F401  (the tests of the legacy names read it from here)
from .image_tables import time_per_epoch, training_curves
from .metrics import active_units, knn_accuracies
from .nets.hvae import ConvHVAE
from .objectives import get_objective
from .precision import machine_label, torch_device
from .records import RunRecord, read_evaluation, read_record, write_evaluation, write_record
from .train import FitResult, config_hash, fit, run_lock

__all__ = ["StudyResult", "STUDY", "load_data", "build_model", "epoch_batches", "train_model", "evaluate_model",
           "run_dir_of", "run_study",
           # defined elsewhere, imported here because the chapters (05, 06, 07) and ablations use them as
           # image_study.<name>: the config and run names (image_config), codes and draws (image_codes),
           # k-NN and active units (metrics), the chapters' tables (image_tables)
           "ImageStudyConfig", "MODELS", "PRIOR_SHORT", "run_name", "embed", "posterior_means", "reconstructions",
           "samples", "figure_arrays", "active_units", "knn_accuracies", "time_per_epoch", "training_curves"]

#: The study's name in the run records (:mod:`mimlib.records`).
STUDY = "images"


def run_dir_of(cfg: ImageStudyConfig, runs_dir: str | os.PathLike) -> Path:
    """The run folder of ``cfg`` under ``runs_dir``. A folder written under a legacy name (see
    :func:`mimlib.image_config._legacy_run_names`) is renamed to the current name, so old runs keep loading."""
    new = Path(runs_dir) / run_name(cfg)
    if not new.exists():
        for old in _legacy_run_names(cfg):
            if (Path(runs_dir) / old).is_dir():
                os.replace(Path(runs_dir) / old, new)
                print(f"renamed run folder {old} -> {new.name} (precision is no longer part of a run's name)")
                break
    return new


# ----------------------------------------------------------------------------- data and model


def load_data(cfg: ImageStudyConfig, root: str | os.PathLike | None = None) -> I.BinarizedImages:
    """The 50k / 10k / 10k split of ``cfg.dataset`` (search path: :mod:`mimlib.images`), seeded
    with ``cfg.seed`` for the dynamic binarisation, cut to ``n_train_subset`` training images."""
    data = I.load_binarized(cfg.dataset, root, seed=cfg.seed, eval_seed=cfg.eval_seed,
                            batch_size=cfg.batch_size)
    return _subset(data, cfg)


def _subset(data: I.BinarizedImages, cfg: ImageStudyConfig) -> I.BinarizedImages:
    data = dataclasses.replace(data, seed=cfg.seed, batch_size=cfg.batch_size)
    if cfg.n_train_subset is not None and cfg.n_train_subset < data.n_train:
        n = cfg.n_train_subset
        data = dataclasses.replace(data, train_u8=data.train_u8[:n], train_labels=data.train_labels[:n])
    return data


def fixed_train_images(data: I.BinarizedImages, n: int | None, eval_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images binarised once (seed independent of the run's), and their labels."""
    n = data.n_train if n is None else min(n, data.n_train)
    return I.fixed_binarization(data.train_u8[:n], 1_000_003 + eval_seed), data.train_labels[:n]


def build_model(cfg: ImageStudyConfig, data: I.BinarizedImages | None = None) -> ConvHVAE:
    """The model of ``cfg`` (convHVAE or PixelHVAE), initialised from ``torch.manual_seed(cfg.seed)``."""
    torch.manual_seed(cfg.seed)
    pseudo: str | torch.Tensor = "normal"
    if cfg.prior == "vampprior" and cfg.pseudo_init == "data":
        if data is None:
            raise ValueError("pseudo_init='data' needs the training images")
        if data.n_train < cfg.n_pseudo:
            raise ValueError(f"pseudo_init='data' starts the {cfg.n_pseudo} pseudo-inputs from as many distinct "
                             f"training images, but only {data.n_train} are in use (n_train_subset): lower "
                             f"n_pseudo or raise n_train_subset")
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(data.n_train, generator=g)[:cfg.n_pseudo]
        pseudo = I.to_intensity(data.train_u8[idx])
    model = MODELS[cfg.model](cfg.prior, n_pseudo=cfg.n_pseudo, pseudo_init=pseudo)
    return model.to(cfg.torch_device()).set_compute(cfg.precision, cfg.channels_last)  # "auto" resolved here


def epoch_batches(data: I.BinarizedImages, epoch: int, steps_per_epoch: int | None,
                  device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """The training batches x of epoch ``epoch`` (a pure function of (seed, epoch)).

    Without ``steps_per_epoch`` an epoch is the pass :meth:`BinarizedImages.train_batches`
    (epoch). With it, epoch e holds global steps e*S .. (e+1)*S - 1 of the sequence of
    passes 0, 1, 2, ... (each pass shuffled and binarised afresh, last partial batch dropped).
    """
    if steps_per_epoch is None:
        for x, _ in data.train_batches(epoch, device=device):
            yield x
        return
    per_pass = data.num_batches(drop_last=True)
    if per_pass < 1:
        raise ValueError(f"{data.n_train} training images make no batch of {data.batch_size}")
    p, skip = divmod(epoch * steps_per_epoch, per_pass)
    left = steps_per_epoch
    while left > 0:
        for i, (x, _) in enumerate(data.train_batches(p, drop_last=True)):
            if i < skip:
                continue   # drawn and dropped: the pass's bits are a sequence from one generator
            yield x.to(device) if device is not None else x
            left -= 1
            if left == 0:
                return
        p, skip = p + 1, 0


# ----------------------------------------------------------------------------- training


class _Curves:
    """``on_epoch_end`` of :func:`fit`: a cheap k-NN accuracy per epoch (history column ``curve_knn``)."""

    def __init__(self, cfg: ImageStudyConfig, data: I.BinarizedImages, extra: Callable | None = None,
                 log: bool = False):
        self.cfg, self.extra, self.log = cfg, extra, log
        self.t0 = time.perf_counter()
        self.on = cfg.curve_knn_train > 0 and cfg.curve_knn_val > 0
        if self.on:
            self.x_tr, self.y_tr = fixed_train_images(data, cfg.curve_knn_train, cfg.eval_seed)
            self.x_va, self.y_va = data.val[:cfg.curve_knn_val], data.val_labels[:cfg.curve_knn_val]

    def __call__(self, epoch: int, model: ConvHVAE) -> dict[str, Any]:
        row: dict[str, Any] = {"precision": model.precision}   # what this epoch trained in
        if self.on:
            t0 = time.perf_counter()
            prec = model.precision
            model.set_compute(self.cfg.eval_precision, model.channels_last)
            try:
                _, m_tr = embed(model, self.x_tr, self.cfg.eval_batch)
                _, m_va = embed(model, self.x_va, self.cfg.eval_batch)
            finally:
                model.set_compute(prec, model.channels_last)
            k = min(self.cfg.curve_k, len(m_tr))
            row["curve_knn"] = knn_accuracies(m_tr, self.y_tr.numpy(), m_va, self.y_va.numpy(), (k,))[k]
            row["curve_seconds"] = time.perf_counter() - t0
        if self.extra is not None:
            row.update(self.extra(epoch, model) or {})
        if self.log:
            knn = f", curve 5-NN {row['curve_knn']:.3f}" if "curve_knn" in row else ""
            print(f"{time.strftime('%H:%M:%S')} {run_name(self.cfg)}: epoch {epoch + 1}/{self.cfg.max_epochs} "
                  f"done{knn}, {time.perf_counter() - self.t0:.0f} s since start of this process", flush=True)
        return row


def train_model(cfg: ImageStudyConfig, runs_dir: str | os.PathLike | None = None,
                data: I.BinarizedImages | None = None, progress: bool | None = None,
                on_epoch_end: Callable[[int, torch.nn.Module], dict | None] | None = None,
                log: bool = False) -> tuple[ConvHVAE, FitResult, I.BinarizedImages]:
    """Train (or resume, or load) the run of ``cfg``; returns the model at its best epoch.

    The run folder is ``runs_dir / run_name(cfg)``; without ``runs_dir`` nothing
    is written. ``data`` may be passed to share one loaded dataset between runs
    (it is re-seeded and cut to ``cfg``). ``on_epoch_end`` is called after the
    learning-curve callback, and its columns join the history. ``log`` prints a
    line per epoch (for background runs).
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg) if data is None else _subset(data, cfg)
    knn_train = data.n_train if cfg.n_knn_train is None else min(cfg.n_knn_train, data.n_train)
    if max(cfg.knn_ks) > knn_train:   # said before training, not as NaN columns after it
        raise ValueError(f"knn_ks {cfg.knn_ks}: k = {max(cfg.knn_ks)} exceeds the {knn_train} training images "
                         f"the k-NN classifier is fit on; lower knn_ks or use more training images")
    device = cfg.torch_device()
    model = build_model(cfg, data)
    val = data.val if cfg.n_val_subset is None else data.val[:cfg.n_val_subset]
    run_dir = run_dir_of(cfg, runs_dir) if runs_dir is not None else None
    result = fit(model, get_objective(cfg.objective, cfg.mim_options()),
                 train_batches=lambda e: epoch_batches(data, e, cfg.steps_per_epoch, device),
                 val_batches=lambda: _batches(val, cfg.eval_batch, device),
                 config=cfg.fit_config(), run_dir=run_dir, run_config=cfg.run_key(),
                 migrate_config=_migrate_run_config,
                 on_epoch_end=_Curves(cfg, data, on_epoch_end, log), progress=progress,
                 desc=("" if cfg.model == "convhvae" else f"{cfg.model} ")
                 + f"{cfg.dataset} {PRIOR_SHORT[cfg.prior]} {cfg.objective}")
    model.eval()
    return model, result, data


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(model: ConvHVAE, data: I.BinarizedImages, cfg: ImageStudyConfig,
                   result: FitResult | None = None, run_dir: str | os.PathLike | None = None
                   ) -> dict[str, Any]:
    """The results row of one trained model.

    * ``knn{k}``: k-NN test accuracy on sampled z ~ q(z|x) (the paper's),
      ``knn{k}_mean`` on the top-down means; fit on ``n_knn_train`` training
      images (fixed binarisation), scored on ``n_eval_test`` test images;
    * ``nll_is``: -log q(x) by importance sampling with ``nll_samples`` samples
      from q(z|x) (Burda et al. 2016), mean over the first ``n_nll_points`` test images (nats);
    * ``recon``: mean -log p(x|z), z ~ q(z|x), over the test images (nats);
    * ``active_units``: units with Cov_x(E_q[z_d]) > ``au_threshold`` on the
      test images (of 80; ``active_z1`` / ``active_z2`` split by level).

    With ``run_dir``, the row is cached there (``eval-<hash>.json``, keyed on
    :meth:`ImageStudyConfig.eval_key`) and read back on the next call, unless
    ``result`` shows a different training (its ``seconds`` differ from the cached row's).
    """
    cache = Path(run_dir) / f"eval-{config_hash(cfg.eval_key())}.json" if run_dir is not None else None
    if cache is not None and not cache.exists():   # rows cached under the legacy evaluation key
        for old in _legacy_eval_names(cfg):
            if (Path(run_dir) / old).exists():
                cache = Path(run_dir) / old
                break
    if cache is not None and cache.exists():
        row = json.loads(cache.read_text())
        if result is None or row.get("seconds") == float(result.seconds):
            row["preset"] = cfg.preset
            return row
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    train_prec = model.precision
    model.eval()
    model.set_compute(cfg.eval_precision, model.channels_last)
    eval_prec = model.precision
    try:
        n_test = len(data.test) if cfg.n_eval_test is None else min(cfg.n_eval_test, len(data.test))
        x_te, y_te = data.test[:n_test], data.test_labels[:n_test].numpy()
        x_tr, y_tr = fixed_train_images(data, cfg.n_knn_train, cfg.eval_seed)
        zs_tr, zm_tr = embed(model, x_tr, cfg.eval_batch, generator_seed=cfg.eval_seed + 1)
        zs_te, zm_te = embed(model, x_te, cfg.eval_batch, generator_seed=cfg.eval_seed + 2)
        ks = tuple(k for k in cfg.knn_ks if k <= len(zs_tr))
        acc_s = knn_accuracies(zs_tr, y_tr.numpy(), zs_te, y_te, ks)
        acc_m = knn_accuracies(zm_tr, y_tr.numpy(), zm_te, y_te, ks)

        n_nll = n_test if cfg.n_nll_points is None else min(cfg.n_nll_points, n_test)
        nll, rec = [], []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(cfg.eval_seed + 3)
            for xb in _batches(x_te[:n_nll], max(1, cfg.eval_batch // cfg.nll_chunk), device):
                nll.append(metrics.nll_importance(model, xb, cfg.nll_samples, chunk=cfg.nll_chunk).float().cpu())
            torch.manual_seed(cfg.eval_seed + 4)
            for xb in _batches(x_te, cfg.eval_batch, device):
                z = model.encoder(xb).sample()
                rec.append(-model.decoder(z).log_prob(xb).float().cpu())
        au = active_units(posterior_means(model, x_te, cfg.au_samples, cfg.eval_batch, cfg.eval_seed + 5),
                          cfg.au_threshold)
    finally:
        model.set_compute(train_prec, model.channels_last)

    row: dict[str, Any] = {"dataset": cfg.dataset, "prior": cfg.prior, "objective": cfg.objective,
                           "model": cfg.model, "seed": cfg.seed, "preset": cfg.preset}
    if result is not None:
        hist = result.history
        row.update({"epochs": int(result.stop_epoch[0]) + 1, "best_epoch": int(result.best_epoch[0]) + 1,
                    "examples": int(hist["examples"].iloc[-1]) if len(hist) else 0,
                    "best_val_loss": float(result.best_val_loss[0])})
    for k in cfg.knn_ks:
        row[f"knn{k}"] = acc_s.get(k, math.nan)
    for k in cfg.knn_ks:
        row[f"knn{k}_mean"] = acc_m.get(k, math.nan)
    row.update({
        "nll_is": float(torch.cat(nll).mean()), "nll_samples": cfg.nll_samples, "nll_points": n_nll,
        "recon": float(torch.cat(rec).mean()),
        "active_units": int(au.sum()), "active_z1": int(au[:model.z1_dim].sum()),
        "active_z2": int(au[model.z1_dim:].sum()),
        "knn_train": len(zs_tr), "eval_test": n_test,
        "seconds": float(result.seconds) if result is not None else math.nan,
        "eval_seconds": time.perf_counter() - t0,
        "precision": _trained_precision(result, train_prec), "eval_precision": eval_prec,
        "machine": machine_label(device),
        "steps_per_epoch": cfg.steps_per_epoch if cfg.steps_per_epoch is not None else data.num_batches(),
        "warmup_epochs": cfg.warmup_epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "run": run_name(cfg),
    })
    if cache is not None:
        try:
            with run_lock(run_dir):
                write_atomic(cache, json.dumps(row, indent=1))
        except OSError as e:   # a read-only runs folder, a full disk: the row is kept, only not cached
            warnings.warn(f"could not cache the evaluation row in {cache} ({e}); the row is returned, and the "
                          f"next run evaluates again", stacklevel=2)
    return row


def _trained_precision(result: FitResult | None, current: str) -> str:
    """The precision(s) a run trained in, from its history ("bf16", "fp32", or "bf16+fp32" for a run
    resumed on another machine); ``current`` for runs without that record."""
    if result is None or "precision" not in result.history:
        return current
    return "+".join(dict.fromkeys(result.history["precision"].dropna().astype(str))) or current


# ----------------------------------------------------------------------------- the study


@dataclass
class StudyResult:
    """Results of a study: one row per trained model, the training histories and the models."""

    results: pd.DataFrame
    history: pd.DataFrame
    models: dict[tuple[str, str, str, int], ConvHVAE] = field(repr=False)
    data: dict[str, I.BinarizedImages] = field(repr=False)
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    arrays: dict[tuple[str, str, str, int], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)


def _from_record(run: ImageStudyConfig, records_dir) -> tuple[RunRecord | None, dict[str, Any] | None]:
    """A run's record (or None) and, if it also holds an evaluation for ``run``'s settings, the run's
    row, history, figure arrays and seconds as :func:`_record_run` returns them."""
    name = run_name(run)
    rec = read_record(records_dir, STUDY, name, run.run_key())
    rows = read_evaluation(records_dir, STUDY, name, run.eval_key()) if rec is not None else None
    if rows is None:
        return rec, None
    row = rows.to_dict("records")[0]
    row["preset"] = run.preset
    return rec, {"row": row, "history": rec.history, "arrays": rec.arrays, "model": None,
                 "seconds": float(rec.info["train_seconds"])}


@contextlib.contextmanager
def _held(run: ImageStudyConfig, runs_dir) -> Iterator[None]:
    """The run folder's lock (:func:`mimlib.train.run_lock`) across training and evaluation, so a second
    process on the same run waits and then finds it trained and evaluated; a folder that cannot be
    locked (read-only: only a finished run loads from it) is used without."""
    if runs_dir is None:
        yield
        return
    try:
        lock = run_lock(run_dir_of(run, runs_dir))
        lock.__enter__()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _finished(run: ImageStudyConfig, runs_dir) -> bool:
    """Whether ``run`` has a finished run folder under ``runs_dir`` (its name or a legacy one)."""
    return any((Path(runs_dir) / n / "final.pt").exists() for n in [run_name(run), *_legacy_run_names(run)])


def _preflight(runs: list[ImageStudyConfig], runs_dir, records_dir) -> None:
    """Before the first training step of ``runs`` (those to train or evaluate): the device exists and the
    folders that will be written are writable (errors name the folder; nothing is trained or written)."""
    if not runs:
        return
    for device in dict.fromkeys(r.device for r in runs):
        torch_device(device)
    for r in runs:   # what train_model / build_model would refuse, said before the first run trains
        knn_train = min(n for n in (r.n_knn_train, r.n_train_subset, math.inf) if n is not None)
        if max(r.knn_ks) > knn_train:
            raise ValueError(f"knn_ks {r.knn_ks}: k = {max(r.knn_ks)} exceeds the {knn_train} training images the "
                             f"k-NN classifier is fit on (n_knn_train = {r.n_knn_train}, n_train_subset = "
                             f"{r.n_train_subset}); lower knn_ks or raise those")
        if r.prior == "vampprior" and r.pseudo_init == "data" and (r.n_train_subset or math.inf) < r.n_pseudo:
            raise ValueError(f"{run_name(r)}: pseudo_init='data' starts the {r.n_pseudo} pseudo-inputs from as "
                             f"many distinct training images, but n_train_subset = {r.n_train_subset}: lower "
                             f"n_pseudo or raise n_train_subset")
    if records_dir is not None:
        check_writable(Path(records_dir) / STUDY, "records folder")
    if runs_dir is not None and not all(_finished(r, runs_dir) for r in runs):
        check_writable(runs_dir, "runs folder")


def _grid_values(name: str, values, default) -> list:
    """A ``run_study`` list argument as a list (None or empty: ``[default]``; seeds: None only); a bare
    string or number is refused, naming the argument."""
    if values is None or (name != "seeds" and isinstance(values, (list, tuple)) and len(values) == 0):
        return [default]
    if isinstance(values, (str, bytes, int, float)) or not hasattr(values, "__iter__"):
        raise TypeError(f"run_study: {name} expects a list, got {values!r} ({type(values).__name__}); "
                        f"write [{values!r}] for one")
    values = list(values)
    if not values:
        raise ValueError(f"run_study: {name} is empty")
    dup = sorted({repr(v) for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"run_study: {name} lists {', '.join(dup)} more than once")
    return values


def _record_run(run: ImageStudyConfig, runs_dir, records_dir, data: I.BinarizedImages, progress,
                arrays: Callable | None, rec: RunRecord | None, log: bool = False) -> dict[str, Any]:
    """One run of :func:`run_study` that its records do not cover: trained (or loaded from its run
    folder), evaluated and, with ``records_dir``, recorded (``rec``: its record without this
    evaluation, if any) and read back."""
    name = run_name(run)
    with _held(run, runs_dir):
        model, res, run_data = train_model(run, runs_dir, data, progress, log=log)
        run_dir = run_dir_of(run, runs_dir) if runs_dir is not None else None
        row = evaluate_model(model, run_data, run, res, run_dir)
    h = res.history.copy()
    for col, v in (("seed", run.seed), ("objective", run.objective), ("prior", run.prior), ("dataset", run.dataset)):
        h.insert(0, col, v)
    out = {"row": row, "history": h, "arrays": {}, "model": model, "seconds": res.seconds}
    if records_dir is not None:
        if rec is None:
            figs = arrays(model, run_data, run) if arrays is not None else {}
            write_record(records_dir, RunRecord(STUDY, name, run.run_key(), h, {
                "train_seconds": res.seconds, "epochs": int(res.stop_epoch[0]) + 1,
                "best_epoch": int(res.best_epoch[0]) + 1, "precision": row["precision"]}, figs))
        write_evaluation(records_dir, STUDY, name, run.eval_key(), pd.DataFrame([row]))
        back = read_record(records_dir, STUDY, name, run.run_key())
        row = read_evaluation(records_dir, STUDY, name, run.eval_key()).to_dict("records")[0]
        row["preset"] = run.preset
        out.update(row=row, history=back.history, arrays=back.arrays)
    return out


def run_study(cfg: ImageStudyConfig, datasets=None, priors=None, objectives=None, seeds=None,
              runs_dir: str | os.PathLike | None = None, progress: bool | None = None,
              data: dict[str, I.BinarizedImages] | None = None, records_dir: str | os.PathLike | None = None,
              arrays: Callable[[ConvHVAE, I.BinarizedImages, ImageStudyConfig], dict] | None = figure_arrays,
              log: bool = False) -> StudyResult:
    """Train (or load) and evaluate every (dataset, prior, objective, seed); ``None`` keeps ``cfg``'s value.

    Each dataset is loaded once (or taken from ``data``, keyed by name). Evaluation rows are cached
    in the run folders. With ``records_dir`` every finished run leaves a run record there
    (:mod:`mimlib.records`: config, history, evaluation rows and the ``arrays(model, data, cfg)`` of its
    figures, by default :func:`figure_arrays`), and a run that has one is read from it, without weights
    or training (``StudyResult.models`` then lacks it; ``StudyResult.arrays`` has its figure arrays).
    ``log`` prints a line per epoch (background runs).
    """
    t0 = time.perf_counter()
    if not isinstance(cfg, ImageStudyConfig):
        raise TypeError(f"run_study: cfg expects an ImageStudyConfig, got {type(cfg).__name__}")
    grid = {"datasets": ("dataset", datasets), "priors": ("prior", priors), "objectives": ("objective", objectives),
            "seeds": ("seed", seeds)}
    lists = {}
    for name, (fname, values) in grid.items():   # every element checked before anything runs
        lists[name] = _grid_values(name, values, getattr(cfg, fname))
        for i, v in enumerate(lists[name]):
            try:
                dataclasses.replace(cfg, **{fname: v})
            except (TypeError, ValueError) as e:
                chars = all(isinstance(x, str) and len(x) == 1 for x in lists[name])
                hint = (f" ({name} is a list of single characters: was the string {''.join(lists[name])!r} "
                        f"turned into a list? pass [{''.join(lists[name])!r}])" if chars else "")
                raise type(e)(f"run_study: {name}[{i}] = {v!r}: {e}{hint}") from None
    plan = []
    for dataset in lists["datasets"]:
        for prior in lists["priors"]:
            for objective in lists["objectives"]:
                for seed in lists["seeds"]:
                    run = dataclasses.replace(cfg, dataset=dataset, prior=prior, objective=objective, seed=seed)
                    plan.append(((dataset, prior, objective, seed), run, *_from_record(run, records_dir)))
    _preflight([run for _, run, _, out in plan if out is None], runs_dir, records_dir)
    rows, hists, models, loaded, figs = [], [], {}, {}, {}
    train_seconds = 0.0
    for key, run, rec, out in plan:
        dataset = key[0]
        if out is None:
            if dataset not in loaded:   # loaded once, lazily: runs read from records need no data
                base = dataclasses.replace(cfg, dataset=dataset)
                loaded[dataset] = (_subset(data[dataset], base) if data and dataset in data else load_data(base))
            out = _record_run(run, runs_dir, records_dir, loaded[dataset], progress, arrays, rec, log)
        rows.append(out["row"])
        hists.append(out["history"])
        figs[key] = out["arrays"]
        if out["model"] is not None:
            models[key] = out["model"]
        train_seconds += out["seconds"]
    return StudyResult(pd.DataFrame(rows), pd.concat(hists, ignore_index=True), models, loaded,
                       time.perf_counter() - t0, train_seconds, figs)


if __name__ == "__main__":   # python -m mimlib.image_study: the command line of mimlib.image_cli
    from mimlib.image_cli import main

    main()
