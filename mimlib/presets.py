"""Named settings of each chapter: ``smoke`` (CI, seconds), ``book`` (the committed run)
and ``paper`` (the paper's appendix D as written), in one place.

``resolve(study, preset, **overrides)`` gives the chapter's config; an override
must name a field of that config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .image_config import ImageStudyConfig
from .mixture2d import Mixture2DConfig

__all__ = ["PRESETS", "resolve"]

#: The reference code's image configuration where the paper is silent (seraphlabs-ca/MIM: its README's
#: commands pass --use_training_data_init; its optimiser is AdamNormGrad; convHVAE_2level.py anneals
#: log p(z2) with beta and adds the decoder-sampled half, z from the model prior, once beta >= 1).
REFERENCE_IMAGES: dict[str, Any] = dict(pseudo_init="data", optimizer="adam-normgrad", mim_warmup="reference",
                                        mim_decoder_start="after_warmup", mim_decoder_z="prior")

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mixture2d": {
        # Two widths, two seeds, a few short epochs: checks that the chapter runs end to end.
        "smoke": dict(hidden=(5, 20), seeds=(0, 1), n_train=2_000, n_val=1_000, n_test=1_000,
                      n_knn_train=1_000, n_nll_points=500, max_epochs=4, patience=2, warmup_epochs=1, nll_samples=10),
        # All 8 widths x 10 seeds x 2 objectives, as in Fig. 3; early stopping as in appendix D.1
        # (patience 10) with the reference code's 200-epoch cap and 3-epoch warm-up.
        "book": dict(),
        # Appendix D.1 as written: patience 10, no warm-up, no epoch cap short of 1000.
        "paper": dict(warmup_epochs=0, max_epochs=1000, nll_samples=1000),
        # The reference code's 2-D runs (seraphlabs-ca/MIM, vae-as-mim-dataset.py with its README's toy4
        # sweep): warm-up of beta and of the learning rate over 3 epochs, then lr 1e-3 sqrt(3 / epoch)
        # ("noam"), the decoder-sampled half only once beta = 1, at most 200 epochs, stopping after 3 epochs
        # without improvement (of its *test* loss; ours watches the validation loss).
        "reference": dict(lr_schedule="noam", mim_decoder_start="after_warmup", patience=3),
    },
    "images": {
        # CI: 500 training images, 2 epochs of 2 steps of 50, tiny evaluation subsets; every code path of
        # the book run (channels last, learning curves, VampPrior with K = 500) in the precision this machine
        # is fast at ("auto": bf16 only with native bf16, mimlib.precision; tests cover bf16 on a tiny model).
        # Sized so that chapter 05's eight smoke models take a few minutes on a 2-core float32-only CPU.
        "smoke": dict(preset="smoke", n_train_subset=500, n_val_subset=100, batch_size=50, steps_per_epoch=2,
                      max_epochs=2, warmup_epochs=1, patience=2, precision="auto", channels_last=True,
                      eval_precision="auto", curve_knn_train=300, curve_knn_val=100, n_knn_train=500,
                      n_eval_test=200, nll_samples=5, n_nll_points=40, au_samples=2, eval_batch=250),
        # The committed run, sized for a 2-core CPU (two single-thread jobs side by side, each dataset's
        # four runs within 2.5 h wall; arithmetic in book/05_images.py): 16 epochs of 250 steps (4,000
        # steps = 400,000 images = 8 passes over the 50k training images) for every model, KL/MIM weight
        # 1 from the 4th epoch on (after 750 steps), early stopping on 2,000 validation images with
        # patience 5, precision "auto" (bf16 autocast where native) + channels last; evaluation on all
        # 50k / 10k images, NLL with 100 importance samples on 1,000 test images.
        # VampPrior pseudo-inputs start from training images (the reference's choice), adopted after chapter
        # 07's screen (seeds 0-2: it wakes the top latent and improves the NLL of MIM and the VAE; the
        # runs committed before that used pseudo_init="normal"). The other reference options stay off:
        # the screen found the reference's decoder-sampled z harmful and the warm-up placement inert.
        "book": dict(preset="book", steps_per_epoch=250, max_epochs=16, warmup_epochs=4, patience=5,
                     n_val_subset=2_000, precision="auto", channels_last=True, eval_precision="auto",
                     nll_samples=100, n_nll_points=1_000, pseudo_init="data"),
        # Appendix D.2 / the reference code: lr 5e-4, batch 100, up to 2000 one-pass epochs, patience 50,
        # warm-up 100 epochs, 5,000 importance samples on all 10k test images. Meant for a GPU. The reference
        # computes in float32; precision "auto" (the default) takes bf16 on a bf16 GPU: set precision="fp32"
        # to match its rounding too.
        # The reference code's choices where the paper is silent (read from its code; chapter 05 lists them):
        # pseudo-inputs from training images, AdamNormGrad, beta also on log p(z2), the decoder-sampled half
        # only once beta = 1 and with z from the model prior.
        "paper": dict(preset="paper", device="auto", **REFERENCE_IMAGES),
        # Chapter 07's screening ablations: one equal, short budget for every factor, sized for a 2-core
        # float32-only CPU (two single-thread jobs side by side): 5 epochs of 40 steps of 100 (200 steps,
        # 20,000 images, 0.4 passes), weight beta = 1 from the 2nd epoch on, the last epoch kept (no
        # early stopping: every factor is compared at the same step), evaluation on subsets (10,000
        # training / 2,000 test images for the k-NN, NLL with 20 importance samples on 500 test images).
        "screen": dict(preset="screen", steps_per_epoch=40, max_epochs=5, warmup_epochs=2, patience=5,
                       selection="last", n_val_subset=500, precision="auto", channels_last=True,
                       eval_precision="auto", curve_knn_train=2_000, curve_knn_val=500, n_knn_train=10_000,
                       n_eval_test=2_000, nll_samples=20, n_nll_points=500, threads=1),
    },
    # Appendix E.2: PixelHVAE (VP), trained with the VAE objective and with A-MIM (chapter 06). The same
    # config class as "images" with model="pixelhvae" and the VampPrior.
    "pixelhvae": {
        # CI: 300 training images, 2 epochs of 2 steps of 50, tiny evaluation subsets; every code path of
        # the book run (PixelHVAE, VampPrior with K = 500, precision "auto", channels last, learning curves).
        # One torch thread, as the book jobs: on the 2-core machine with other jobs running, two threads made a step
        # 1.5x and an autoregressive sample up to 25x slower (thread synchronisation of tiny operations).
        "smoke": dict(preset="smoke", model="pixelhvae", prior="vampprior", n_train_subset=300, n_val_subset=100,
                      batch_size=50, steps_per_epoch=2, max_epochs=2, warmup_epochs=1, patience=2, precision="auto",
                      channels_last=True, eval_precision="auto", curve_knn_train=200, curve_knn_val=100,
                      n_knn_train=300, n_eval_test=100, nll_samples=5, n_nll_points=20, au_samples=2, eval_batch=250,
                      threads=1),
        # The committed run, sized for the 2-core CPU: per dataset two single-thread jobs side by side (VAE
        # and A-MIM), each within 2.5 h = 9,000 s of wall time. Measured (PixelHVAE (VP), batch 100, one
        # thread, bf16 autocast on the AMX machine the plan was made on + channels last; set_compute applies
        # to the masked convolutions): a training
        # step takes 1.22 s alone and 1.93 s (VAE) / 1.88 s (A-MIM) with the two jobs side by side (fp32:
        # 4.2 s alone). Per job: 14 epochs x 250 steps = 3,500 steps x 1.93 s = 6,755 s; after each epoch
        # the validation loss (2,000 images) and the learning-curve k-NN (10,000 + 2,000 encodings), 13-17 s
        # alone, ~26 s side by side: 14 x 26 = 364 s; final evaluation (k-NN on 50,000 + 10,000 encodings
        # ~57 s, NLL with 100 importance samples on 1,000 test images ~205 s, reconstruction on 10,000 ~25 s,
        # active units ~7 s: ~300 s alone, ~465 s side by side). Total ~7,580 s = 2.1 h, 16% under the
        # budget. 3,500 steps = 350,000 images = 7 passes; KL/MIM weight 1 from the 4th epoch (after 750
        # steps): 11 of 14 epochs (79%) at weight 1. Early stopping patience 5 on 2,000 validation images.
        # One torch thread per job (threads is not part of a run's hash). The book runs themselves measured
        # faster steps than the step times above (taken while other jobs shared the CPU), so each pair
        # finished well inside the budget; chapter 06 prints the plan beside what the runs measured.
        "book": dict(preset="book", model="pixelhvae", prior="vampprior", steps_per_epoch=250, max_epochs=14,
                     warmup_epochs=4, patience=5, n_val_subset=2_000, precision="auto", channels_last=True,
                     eval_precision="auto", nll_samples=100, n_nll_points=1_000, threads=1,
                     pseudo_init="data"),   # as images/book (chapter 07); committed runs used "normal"
        # Appendix D.2 (which E.2 follows) / the reference code: lr 5e-4, batch 100, up to 2000 one-pass
        # epochs, patience 50, warm-up 100 epochs, 5,000 importance samples on all 10k test images (reference:
        # float32; "auto" may take bf16 on a GPU). Meant for a GPU.
        "paper": dict(preset="paper", model="pixelhvae", prior="vampprior", device="auto", **REFERENCE_IMAGES),
        # Chapter 07's screening ablations of A-MIM: images/screen's settings, but 10 epochs of 50 steps (500
        # steps, 50,000 images, one pass): chapter 06's A-MIM run lost most of its rate between 25,000 and
        # 75,000 images, after 200 steps it had not started to.
        "screen": dict(preset="screen", model="pixelhvae", prior="vampprior", steps_per_epoch=50, max_epochs=10,
                       warmup_epochs=2, patience=5, selection="last", n_val_subset=500, precision="auto",
                       channels_last=True, eval_precision="auto", curve_knn_train=2_000, curve_knn_val=500,
                       n_knn_train=10_000, n_eval_test=2_000, nll_samples=20, n_nll_points=500, threads=1),
    },
}

_CONFIGS = {"mixture2d": Mixture2DConfig, "images": ImageStudyConfig, "pixelhvae": ImageStudyConfig}


def resolve(study: str, preset: str, **overrides: Any):
    """The config of ``study`` under ``preset``, with explicit ``overrides`` applied (None = keep)."""
    if study not in PRESETS:
        raise ValueError(f"unknown study {study!r}; choose one of {sorted(PRESETS)}")
    if preset not in PRESETS[study]:
        raise ValueError(f"unknown preset {preset!r} for {study}; choose one of {sorted(PRESETS[study])}")
    cls = _CONFIGS[study]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {study}; valid: {sorted(names)}")
    values = {**PRESETS[study][preset], **{k: v for k, v in overrides.items() if v is not None}}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)
