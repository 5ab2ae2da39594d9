"""The image studies (paper section 5, appendix D.2, Table 1, Fig. 2; appendix E.2, Figs. 4-5), end to end.

One run = one model trained on one dataset (MNIST or Fashion-MNIST) with one
prior (standard ``S`` or VampPrior ``VP``) and one objective (``mim``, ``vae``
or ``amim``) from one seed. The model (``ImageStudyConfig.model``) is the
convHVAE (:class:`mimlib.nets.hvae.ConvHVAE`, the default; section 5) or the
PixelHVAE (:class:`mimlib.nets.pixelhvae.PixelHVAE`, the same encoders with an
autoregressive PixelCNN decoder; appendix E.2, trained with A-MIM and the VAE):

* :func:`train_model` trains it with :func:`mimlib.train.fit` in a run folder
  named from the configuration's hash (checkpoint after every epoch, exact
  resume, a finished run is loaded from ``final.pt``);
* :func:`evaluate_model` computes the row of ``results/images.csv``: k-NN
  accuracy (k = 1, 3, 5, 10) of the 80-D latent, sampled (the paper's) and at
  the mean, fit on the training images and scored on the test images; the
  importance-sampled test NLL; the reconstruction term -log p(x|z); the number
  of active units. The row is cached in the run folder;
* :func:`run_study` loops over datasets, priors, objectives and seeds;
* :func:`reconstructions` and :func:`samples` draw the images of the paper's
  Figs. 4-5 (decoder samples; autoregressive for the PixelHVAE).

Nothing in the evaluation uses the decoder's mean image (a PixelCNN decoder
has none): the reconstruction term and the NLL only need ``log_prob``.

An *epoch* is ``steps_per_epoch`` optimiser steps when that is set (the batches
continue through successive shuffled, dynamically binarised passes over the
training images, so nothing is skipped or repeated within a pass), else one
full pass. Warm-up, early stopping and the learning curves count in these
epochs.

Command line, one run in the background (re-running resumes from the checkpoint,
a finished run is only evaluated)::

    python -m mimlib.image_study --preset book --dataset mnist --prior standard \\
        --objective mim --threads 1 [--seed 0] [--runs-dir runs]
    python -m mimlib.image_study --model pixelhvae --preset book --dataset mnist \\
        --objective amim --threads 1        # prior: the preset's (VampPrior)

With ``--model pixelhvae`` the presets are those of study ``"pixelhvae"`` in
:mod:`mimlib.presets`, else those of ``"images"``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from . import images as I
from . import configs as C
from . import metrics
from .nets.hvae import ConvHVAE
from .nets.pixelhvae import PixelHVAE
from .objectives import MIMOptions, get_objective
from .atomic import check_writable, write_atomic
from .precision import REQUESTS, machine_label, resolve_precision, torch_device
from .records import RunRecord, read_evaluation, read_record, write_evaluation, write_record
from .train import FitConfig, FitResult, config_hash, fit, run_lock

__all__ = ["ImageStudyConfig", "StudyResult", "load_data", "build_model", "train_model", "time_per_epoch",
           "evaluate_model", "run_study", "training_curves", "embed", "posterior_means", "active_units",
           "knn_accuracies", "run_name", "reconstructions", "samples", "figure_arrays", "MODELS", "STUDY", "main"]

PRIOR_SHORT = {"standard": "S", "vampprior": "VP"}

#: The models of the image studies: name -> class (same constructor and interface).
MODELS: dict[str, type[ConvHVAE]] = {"convhvae": ConvHVAE, "pixelhvae": PixelHVAE}


@dataclass(frozen=True)
class ImageStudyConfig:
    """Every setting of one image run; :mod:`mimlib.presets` holds the named presets.

    The defaults follow the paper / reference code (appendix D.2): Adam with lr
    5e-4, batches of 100, up to 2000 epochs of one pass each, early stopping
    after 50 epochs without a better validation loss, warm-up of the KL/MIM
    weight over 100 epochs, VampPrior with 500 pseudo-inputs, 5,000 importance
    samples per test point. Precision is ``"auto"`` (:mod:`mimlib.precision`:
    bfloat16 autocast only where the device is fast at it, else float32, the
    reference's); it is a runtime setting, not part of the run's identity.
    """

    # the grid: which run (part of its identity)
    model: str = C.grid("convhvae")      # "convhvae" (section 5) or "pixelhvae" (appendix E.2)
    dataset: str = C.grid("mnist")
    prior: str = C.grid("standard")
    objective: str = C.grid("mim")
    seed: int = C.grid(0)
    # what is trained and how (the run's identity)
    lr: float = C.train(5e-4)
    batch_size: int = C.train(100)
    max_epochs: int = C.train(2000)
    steps_per_epoch: int | None = C.train(None)  # None: an epoch is one pass over the training images
    warmup_epochs: int = C.train(100)
    patience: int = C.train(50)
    n_train_subset: int | None = C.train(None)   # train on the first n training images only (smoke)
    n_val_subset: int | None = C.train(None)     # early-stopping loss on the first n validation images
    n_pseudo: int = C.train(500)
    pseudo_init: str = C.train("normal")         # "normal": N(0.05, 0.01^2); "data": K training images + noise
    eval_batch: int = C.train(500)               # batch of every evaluation pass, the validation loss included
    eval_seed: int = C.train(0)                  # binarisation of the validation images (and evaluation noise)
    # learning curves: a cheap k-NN accuracy after every epoch (0 training images = off); in the history
    curve_knn_train: int = C.train(10_000)       # first n training images (fixed binarisation) it is fit on
    curve_knn_val: int = C.train(2_000)          # first n validation images it is scored on
    curve_k: int = C.train(5)
    # reference-code choices (mimlib.optim, mimlib.objectives.MIMOptions); defaults: this book's until 2026-12
    optimizer: str = C.train("adam", joined=True)              # "adam-normgrad": the reference's
    selection: str = C.train("best", joined=True)              # "last": no early stopping, last epoch kept
    mim_warmup: str = C.train("rescale", joined=True)          # "reference": beta on log p(z2) too
    mim_decoder_start: str = C.train("always", joined=True)    # "after_warmup": decoder half once beta = 1
    mim_decoder_z: str = C.train("anchor", joined=True)        # "prior": z of that half from p(z)
    mim_score_cost: str = C.train("full", joined=True)         # "x_dependent": lower-variance score term
    # evaluation (the identity of a results row, besides the run)
    knn_ks: tuple[int, ...] = C.evaluate((1, 3, 5, 10))
    n_knn_train: int | None = C.evaluate(None)   # None: all training images
    n_eval_test: int | None = C.evaluate(None)   # None: all 10,000 test images (k-NN, reconstruction, AU)
    nll_samples: int = C.evaluate(5_000)
    n_nll_points: int | None = C.evaluate(None)  # None: all test images used for evaluation
    nll_chunk: int = C.evaluate(10)              # importance samples per forward pass
    au_threshold: float = C.evaluate(0.01)
    au_samples: int = C.evaluate(10)             # samples of z2 for E_q[z1] in the active-unit statistic
    # runtime: where and how fast (the rounding, not the model), and labels; no identity
    precision: str = C.runtime("auto")           # "auto", "fp32" or "bf16" (autocast of convs and dense layers)
    eval_precision: str = C.runtime("auto")
    channels_last: bool = C.runtime(False)
    threads: int | None = C.runtime(None)        # torch intra-op threads (None: leave as is)
    device: str = C.runtime("cpu")               # "cpu", "cuda" or "auto" (cuda if available)
    preset: str = C.runtime("custom")            # a label only (written to the results)

    def __post_init__(self):
        """Every setting checked here, before anything is trained: types (:func:`mimlib.configs.check_types`),
        ranges, choices, and settings against each other (errors name the setting)."""
        C.check_groups(self)
        C.check_types(self)
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, got {self.model!r}")
        if self.dataset not in I.DATASETS:
            raise ValueError(f"dataset must be one of {list(I.DATASETS)}, got {self.dataset!r}")
        if self.prior not in PRIOR_SHORT:
            raise ValueError(f"prior must be one of {list(PRIOR_SHORT)}, got {self.prior!r}")
        get_objective(self.objective)
        self.mim_options()
        self.fit_config()
        for name in ("precision", "eval_precision"):
            if getattr(self, name) not in REQUESTS:
                raise ValueError(f"{name} must be one of {list(REQUESTS)}, got {getattr(self, name)!r}")
        if self.pseudo_init not in ("normal", "data"):
            raise ValueError(f"pseudo_init must be 'normal' or 'data', got {self.pseudo_init!r}")
        for name in ("batch_size", "max_epochs", "patience", "nll_samples", "nll_chunk", "eval_batch",
                     "au_samples", "curve_k", "n_pseudo"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("curve_knn_train", "curve_knn_val", "au_threshold"):
            C.check_range(self, name, 0)
        for name in ("steps_per_epoch", "n_train_subset", "n_val_subset", "n_knn_train", "n_eval_test",
                     "n_nll_points", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be None or >= 1, got {v}")
        if not self.knn_ks or any(k < 1 for k in self.knn_ks):
            raise ValueError(f"knn_ks must be positive, got {self.knn_ks}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda[:n]' or 'auto', got {self.device!r}")

    # -- derived ---------------------------------------------------------------

    def fit_config(self) -> FitConfig:
        return FitConfig(lr=self.lr, max_epochs=self.max_epochs, patience=self.patience,
                         warmup_epochs=self.warmup_epochs, seed=self.seed, optimizer=self.optimizer,
                         selection=self.selection)

    def mim_options(self) -> MIMOptions:
        return MIMOptions(warmup=self.mim_warmup, decoder_start=self.mim_decoder_start,
                          decoder_z=self.mim_decoder_z, score_cost=self.mim_score_cost)

    def torch_device(self) -> torch.device:
        return torch_device(self.device)

    def run_key(self) -> dict[str, Any]:
        """What a trained model (and its training history) depends on: names its run folder.

        Derived from the field tags (:mod:`mimlib.configs`): the ``grid`` and ``train`` fields.
        Evaluation settings, the preset label, threads, device, precision and memory layout are
        left out, so changing them never retrains (a run trained in bf16 loads and resumes on a
        float32 machine; its history records the precision of every epoch).
        """
        return {"study": "images", **C.key(self, "grid", "train")}

    def eval_key(self) -> dict[str, Any]:
        """What an evaluation row depends on besides the trained model (names its cache file; the
        evaluation precision is a runtime setting, recorded in the row)."""
        return C.key(self, "evaluate")


def run_name(cfg: ImageStudyConfig, key: dict[str, Any] | None = None) -> str:
    """Run folder name: readable fields and the hash of :meth:`ImageStudyConfig.run_key`
    (``images-<dataset>-...`` for the convHVAE, ``images-pixelhvae-<dataset>-...`` for the PixelHVAE)."""
    model = "" if cfg.model == "convhvae" else f"{cfg.model}-"
    return (f"images-{model}{cfg.dataset}-{PRIOR_SHORT[cfg.prior]}-{cfg.objective}-s{cfg.seed}-"
            f"{config_hash(cfg.run_key() if key is None else key)}")


#: Until 2026-12 a run's hash also held ``precision`` and ``channels_last`` and left out ``eval_batch``
#: and ``eval_seed`` (which every committed run had at 500 and 0).
LEGACY_EVAL_BATCH, LEGACY_EVAL_SEED = 500, 0


def _legacy_key(key: dict[str, Any], precision: str, channels_last: bool) -> dict[str, Any]:
    old = {k: v for k, v in key.items() if k not in ("eval_batch", "eval_seed")}
    return {**old, "precision": precision, "channels_last": channels_last}


def _legacy_run_names(cfg: ImageStudyConfig) -> list[str]:
    """The names this run's folder had under the legacy hash (every precision / layout combination,
    since the config no longer says which one trained it); none when ``eval_batch`` or ``eval_seed``
    differ from the values every legacy run had."""
    if (cfg.eval_batch, cfg.eval_seed) != (LEGACY_EVAL_BATCH, LEGACY_EVAL_SEED):
        return []
    return [run_name(cfg, _legacy_key(cfg.run_key(), p, c)) for p in ("bf16", "fp32") for c in (True, False)]


def _legacy_eval_names(cfg: ImageStudyConfig) -> list[str]:
    """Evaluation cache names under the legacy key (evaluation fields, eval_batch, eval_seed and eval_precision)."""
    base = cfg.eval_key()
    return [f"eval-{config_hash({**base, 'eval_batch': cfg.eval_batch, 'eval_seed': cfg.eval_seed, 'eval_precision': p})}.json"
            for p in ("bf16", "fp32")]


def _migrate_run_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A legacy run folder's stored run config in today's form (for :func:`mimlib.train.fit`'s check)."""
    if "precision" not in stored and "eval_batch" in stored:
        return stored
    new = {k: v for k, v in stored.items() if k not in ("precision", "channels_last")}
    new.setdefault("eval_batch", LEGACY_EVAL_BATCH)
    new.setdefault("eval_seed", LEGACY_EVAL_SEED)
    return new


def run_dir_of(cfg: ImageStudyConfig, runs_dir: str | os.PathLike) -> Path:
    """The run folder of ``cfg`` under ``runs_dir``. A folder written under a legacy name (see
    :func:`_legacy_run_names`) is renamed to the current name, so old runs keep loading."""
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


def _batches(x: torch.Tensor, size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), size):
        yield x[i:i + size].to(device)


# ----------------------------------------------------------------------------- embeddings and metrics


@torch.inference_mode()
def embed(model: ConvHVAE, x: torch.Tensor, batch: int = 500, generator_seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Sampled and mean 80-D embeddings [z1, z2] of images ``x`` (N, 1, 28, 28).

    Sampled: z ~ q(z|x) (ancestral: z2 ~ q(z2|x), z1 ~ q(z1|x, z2)), the paper's
    k-NN input. Mean: the means taken top-down, z2 = E[z2|x] and z1 = mean of
    q(z1|x, z2 = E[z2|x]). The sampling noise comes from a private seed, so the
    global random state is untouched.
    """
    device = next(model.parameters()).device
    zs, zm = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for xb in _batches(x, batch, device):
            q = model.encoder(xb)
            zs.append(q.sample().float().cpu())
            z2 = q.top.mean
            z1 = q.conditional(z2).mean
            zm.append(torch.cat([z1, z2], -1).float().cpu())
    return torch.cat(zs).numpy(), torch.cat(zm).numpy()


@torch.inference_mode()
def posterior_means(model: ConvHVAE, x: torch.Tensor, n_samples: int = 10, batch: int = 500,
                    generator_seed: int = 0) -> np.ndarray:
    """E_q[z|x] per image, (N, 80): exact for z2; for z1, E_{z2 ~ q(z2|x)}[mean of q(z1|x, z2)]
    averaged over ``n_samples`` draws of z2 (z1's mean depends on z2)."""
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for xb in _batches(x, batch, device):
            q = model.encoder(xb)
            z2 = q.top.sample((n_samples,))
            z1 = q.conditional(z2).mean.mean(0)
            out.append(torch.cat([z1, q.top.mean], -1).float().cpu())
    return torch.cat(out).numpy()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block, each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


@torch.inference_mode()
def reconstructions(model: ConvHVAE, x: torch.Tensor, batch: int = 100, generator_seed: int = 0
                    ) -> torch.Tensor:
    """Sampled reconstructions of images ``x`` (N, 1, 28, 28): z ~ q(z|x), then x' ~ p(x|z).

    Both steps are draws, as in the paper's Figs. 4-5: z is sampled ancestrally
    from the encoder (z2 ~ q(z2|x), z1 ~ q(z1|x, z2)) and x' is a binary sample
    of the decoder, for the PixelHVAE drawn pixel by pixel in raster order
    (each pixel given z and the pixels drawn before it; the autoregressive
    sampler of :mod:`mimlib.nets.pixelhvae`), for the convHVAE an independent
    Bernoulli per pixel. The model runs in eval mode (batch-norm running
    statistics) and its modes are restored afterwards; the noise comes from
    a private seed, so the global random state is untouched and a call is
    reproducible. Returns a float tensor of 0s and 1s, (N, 1, 28, 28), on the CPU.
    """
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for xb in _batches(x, batch, device):
            z = model.encoder(xb).sample()
            out.append(model.decoder(z).sample().float().cpu())
    return torch.cat(out) if out else torch.zeros(0, *x.shape[1:])


@torch.inference_mode()
def samples(model: ConvHVAE, n: int, batch: int = 100, generator_seed: int = 0) -> torch.Tensor:
    """``n`` samples of the model: z ~ p(z) (the model prior, p(z2) p(z1|z2): the VampPrior
    mixture or N(0, I) on z2), then x ~ p(x|z) (autoregressive for the PixelHVAE).

    Eval mode, a private seed and binary float images (n, 1, 28, 28) on the CPU, as
    :func:`reconstructions`. (The model prior, not the anchor N(0, I_80) that the
    decoder-sampled half of MIM draws from: these are the images the model generates.)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for start in range(0, n, batch):
            z = model.prior().sample((min(batch, n - start),))
            out.append(model.decoder(z).sample().float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1, 28, 28)


def active_units(means: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Burda et al. (2016): unit d is active if Cov_x(E_q[z_d|x]) > threshold.

    ``means``: (N, D) posterior means over N data points. Returns a boolean (D,) mask.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or len(means) < 2:
        raise ValueError(f"need an (N >= 2, D) array of posterior means, got shape {means.shape}")
    return means.var(axis=0, ddof=1) > threshold


def knn_accuracies(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                   ks: tuple[int, ...] = (1, 3, 5, 10)) -> dict[int, float]:
    """Test accuracy of k-NN classifiers (Euclidean, uniform votes) for every k, from one neighbour search.

    The same classifier as :func:`mimlib.metrics.knn_accuracy` (scikit-learn's
    ``KNeighborsClassifier``; a tied vote goes to the smallest label), computed
    once for the largest k.
    """
    from sklearn.neighbors import NearestNeighbors

    z_train, z_test = np.asarray(z_train, dtype=np.float32), np.asarray(z_test, dtype=np.float32)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    classes, y_idx = np.unique(y_train, return_inverse=True)
    kmax = max(ks)
    if kmax > len(z_train):
        raise ValueError(f"k = {kmax} exceeds the {len(z_train)} training points")
    nn = NearestNeighbors(n_neighbors=kmax).fit(z_train)
    idx = nn.kneighbors(z_test, return_distance=False)       # (n_test, kmax), nearest first
    labels = y_idx[idx]
    out = {}
    for k in ks:
        votes = np.zeros((len(z_test), len(classes)), dtype=np.int64)
        np.add.at(votes, (np.arange(len(z_test))[:, None], labels[:, :k]), 1)
        pred = classes[votes.argmax(1)]
        out[k] = float((pred == y_test).mean())
    return out


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


# ----------------------------------------------------------------------------- train / evaluate


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


def time_per_epoch(study: "StudyResult") -> pd.DataFrame:
    """Measured time of each model's training (chapters 05 and 06, "Time per epoch").

    One row per (dataset, prior, objective, seed): the median, min and max seconds of an epoch
    (training and validation; the learning-curve k-NN excluded), the median per optimiser step, the
    epochs run, the whole training and the final evaluation, as the runs measured them.
    """
    keys = ["dataset", "prior", "objective", "seed"]
    hist = study.history.sort_values("epoch")
    per_epoch = hist.groupby(keys, sort=False).seconds.transform(lambda s: s.diff().fillna(s.iloc[0]))
    stats = per_epoch.groupby([hist[k] for k in keys]).agg(["median", "min", "max"])
    res = study.results.set_index(keys)
    out = stats.join(res[["steps_per_epoch", "epochs", "seconds", "eval_seconds"]])
    out["median s/step"] = out["median"] / out.steps_per_epoch
    return out.drop(columns="steps_per_epoch").rename(columns={
        "median": "median s/epoch", "min": "min s/epoch", "max": "max s/epoch",
        "seconds": "training s", "eval_seconds": "evaluation s"})


def training_curves(history: pd.DataFrame) -> pd.DataFrame:
    """The learning-curve columns of chapters 05 and 06, added to a copy of a study's ``history``.

    ``recon_train``: -log p(x|z) on the training batches (encoder-sampled pairs for MIM / A-MIM);
    ``rate``: log q(z|x) - log p(z) on them (the VAE's KL term), whose mean over the data bounds the
    encoder's mutual information from above; ``dec_nll``: -log p(x|z) of MIM's decoder-sampled pairs
    (only when some run is symmetric MIM). VAE rows carry ``log p(x|z)`` / ``kl``, MIM rows ``enc/...``.
    """
    hist = history.copy()

    def col(name: str) -> pd.Series:
        return hist[name] if name in hist else pd.Series(np.nan, index=hist.index)

    hist["recon_train"] = -col("enc/log p(x|z)").fillna(col("log p(x|z)"))
    hist["rate"] = col("kl").fillna(col("enc/log q(z|x)") - col("enc/log p(z)"))
    if "dec/log p(x|z)" in hist:
        hist["dec_nll"] = -hist["dec/log p(x|z)"]
    return hist


STUDY = "images"


@torch.no_grad()
def figure_arrays(model: ConvHVAE, data: I.BinarizedImages, cfg: ImageStudyConfig, n_tsne: int = 2_000,
                  n_images: int = 16) -> dict[str, np.ndarray]:
    """The small arrays the image chapters' figures need of one trained run (stored in its record):

    * ``tsne`` (n_tsne, 2) and ``tsne_labels``: t-SNE (scikit-learn, PCA init, seed 0) of the sampled
      codes z ~ q(z|x) of the first ``n_tsne`` test images (Fig. 2);
    * ``images``, ``reconstructions`` (n_images, 28, 28; uint8 0/1): the first test images and their
      sampled reconstructions; ``samples``: ``n_images`` samples of the model (Figs. 4-5).
    """
    from sklearn.manifold import TSNE

    n = min(n_tsne, len(data.test))
    zs, _ = embed(model, data.test[:n], cfg.eval_batch, generator_seed=cfg.eval_seed + 6)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", learning_rate="auto",
                random_state=0).fit_transform(zs)
    x = data.test[:n_images]
    as_u8 = lambda t: t.reshape(-1, 28, 28).to(torch.uint8).numpy()  # noqa: E731
    return {"tsne": tsne.astype(np.float32), "tsne_labels": data.test_labels[:n].numpy(),
            "images": as_u8(x), "reconstructions": as_u8(reconstructions(model, x, generator_seed=cfg.eval_seed)),
            "samples": as_u8(samples(model, n_images, generator_seed=cfg.eval_seed))}


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


# ----------------------------------------------------------------------------- command line


def parse_command_line(argv: list[str] | None = None) -> tuple[ImageStudyConfig, argparse.Namespace]:
    """The run config and the parsed arguments of ``python -m mimlib.image_study`` (exits 2 on bad input)."""
    from . import presets

    ap = argparse.ArgumentParser(prog="python -m mimlib.image_study", description=main.__doc__)
    ap.add_argument("--model", default="convhvae", choices=list(MODELS),
                    help="convhvae (presets of study 'images') or pixelhvae (presets of study 'pixelhvae')")
    ap.add_argument("--preset", default="book", choices=sorted(presets.PRESETS["images"]))
    ap.add_argument("--dataset", required=True, choices=list(I.DATASETS))
    ap.add_argument("--prior", default=None, choices=list(PRIOR_SHORT),
                    help="required for convhvae; pixelhvae: the preset's (vampprior) by default")
    ap.add_argument("--objective", required=True, choices=["mim", "vae", "amim"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (e.g. 1)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--runs-dir", default="runs", help="folder of the run folders (the chapter uses ../runs "
                                                        "from book/, i.e. runs/ at the repository root)")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--records-dir", default=None,
                    help="also leave the run's record there (mimlib.records; e.g. book/results/records), with "
                         "the figure arrays of chapter 07 (t-SNE of 1,000 test codes, 16 reconstructions and "
                         "samples); a run already recorded there is read, not trained")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    help="further overrides of the preset, VALUE parsed as JSON (e.g. max_epochs=2); may be "
                         "repeated, every one counts")
    args = ap.parse_args(argv)
    if args.model == "convhvae" and args.prior is None:
        ap.error("the following arguments are required: --prior")
    explicit = {"dataset": args.dataset, "prior": args.prior, "objective": args.objective, "seed": args.seed,
                "threads": args.threads, "device": args.device}
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or not name:
            ap.error(f"--set expects NAME=VALUE, got {item!r}")
        if name in overrides:
            ap.error(f"--set {name} is given twice ({overrides[name]!r} and {value!r})")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    for name in set(overrides) & set(explicit):
        flag_default = ap.get_default(name)
        if explicit[name] is not None and explicit[name] != flag_default and explicit[name] != overrides[name]:
            ap.error(f"--{name} {explicit[name]} and --set {name}={overrides[name]} disagree; give one")
        explicit[name] = overrides.pop(name)
    study = "images" if args.model == "convhvae" else args.model
    try:
        cfg = presets.resolve(study, args.preset, **explicit, **overrides)
    except (TypeError, ValueError) as e:
        hint = (" (--set values are read as JSON: 5, 0.5, [1, 3], true; anything else is a string)"
                if isinstance(e, TypeError) and overrides else "")
        ap.error(f"{e}{hint}")
    if args.records_dir is not None and args.no_eval:
        ap.error("--records-dir records evaluated runs; drop --no-eval")
    return cfg, args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (resuming if interrupted) and evaluate one run; prints and returns its row."""
    cfg, args = parse_command_line(argv)
    print(f"{run_name(cfg)}: {json.dumps(asdict(cfg))}", flush=True)
    if args.records_dir is not None:
        out = run_study(cfg, runs_dir=args.runs_dir, records_dir=args.records_dir, log=True,
                        arrays=functools.partial(figure_arrays, n_tsne=1_000, n_images=16))
        row = out.results.iloc[0].to_dict()
        print(json.dumps(row, indent=1, default=str), flush=True)
        return row
    _preflight([cfg], args.runs_dir, None)
    with _held(cfg, args.runs_dir):
        return _train_and_evaluate(cfg, args)


def _train_and_evaluate(cfg: ImageStudyConfig, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`main` without ``--records-dir``."""
    model, res, data = train_model(cfg, args.runs_dir, log=True)
    state = "loaded (finished earlier)" if res.loaded else (
        f"resumed after epoch {res.resumed_from + 1}" if res.resumed_from is not None else "trained")
    print(f"{state}: {len(res.history)} epochs, best epoch {res.best_epoch[0] + 1}, "
          f"training time {res.seconds:.0f} s", flush=True)
    if args.no_eval:
        return {}
    row = evaluate_model(model, data, cfg, res, run_dir_of(cfg, args.runs_dir))
    print(json.dumps(row, indent=1), flush=True)
    return row


if __name__ == "__main__":
    from mimlib.image_study import main as _main  # one copy of the module (presets imports it too)

    _main()
