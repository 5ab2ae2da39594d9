"""The configuration of one image run (paper section 5, appendix D.2; appendix E.2) and its identity.

:class:`ImageStudyConfig` holds every setting of one run: one model (:data:`MODELS`: the convHVAE of
section 5 or the PixelHVAE of appendix E.2) trained on one dataset (MNIST or Fashion-MNIST) with one
prior (standard ``S`` or VampPrior ``VP``, :data:`PRIOR_SHORT`) and one objective (``mim``, ``vae``
or ``amim``) from one seed; every setting is checked when the config is made. Its fields are tagged
by what they govern (:mod:`mimlib.configs`), so the identities are derived, not listed:

* :meth:`ImageStudyConfig.run_key`: what the trained model depends on; :func:`run_name` names the
  run's folder and record from its hash;
* :meth:`ImageStudyConfig.eval_key`: what an evaluation row depends on besides the model.

Runs named under the hash used until 2026-12 keep loading: ``_legacy_run_names`` and
``_legacy_eval_names`` give their old names, ``_migrate_run_config`` their stored config in
today's form. The named presets are in :mod:`mimlib.presets`; training and evaluation in
:mod:`mimlib.image_study`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from . import configs as C
from . import images as I
from .nets.hvae import ConvHVAE
from .nets.pixelhvae import PixelHVAE
from .objectives import MIMOptions, get_objective
from .precision import REQUESTS, torch_device
from .train import FitConfig, config_hash

__all__ = ["ImageStudyConfig", "MODELS", "PRIOR_SHORT", "run_name"]

PRIOR_SHORT = {"standard": "S", "vampprior": "VP"}

#: The VampPrior's settings: not part of a run's identity under the standard prior (they change nothing there).
PSEUDO_INPUT_FIELDS = ("n_pseudo", "pseudo_init")

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

        Derived from the field tags (:mod:`mimlib.configs`): the ``grid`` and ``train`` fields, with
        :data:`PSEUDO_INPUT_FIELDS` at their defaults under the standard prior.
        Evaluation settings, the preset label, threads, device, precision and memory layout are
        left out, so changing them never retrains (a run trained in bf16 loads and resumes on a
        float32 machine; its history records the precision of every epoch).
        """
        key = {"study": "images", **C.key(self, "grid", "train")}
        if self.prior == "standard":
            # no pseudo-inputs under N(0, I): their settings cannot change what is trained, so the run
            # is named as with the defaults (a book-preset run of the standard prior is the same run
            # before and after the presets adopted pseudo_init="data")
            key.update({f.name: f.default for f in dataclasses.fields(self) if f.name in PSEUDO_INPUT_FIELDS})
        return key

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
