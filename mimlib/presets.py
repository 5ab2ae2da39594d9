"""Named settings of each chapter: ``smoke`` (CI, seconds), ``book`` (the committed run)
and ``paper`` (the paper's appendix D as written), in one place.

``resolve(study, preset, **overrides)`` gives the chapter's config; an override
must name a field of that config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .mixture2d import Mixture2DConfig

__all__ = ["PRESETS", "resolve"]

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
    },
}

_CONFIGS = {"mixture2d": Mixture2DConfig}


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
