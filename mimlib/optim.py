"""Optimisers and learning-rate schedules of :func:`mimlib.train.fit` (named in ``FitConfig``).

* ``"adam"``: :class:`torch.optim.Adam` (this book's default);
* ``"adam-normgrad"``: :class:`AdamNormGrad`, the optimiser of the reference code's image runs
  (and of the VampPrior code it builds on): before every Adam update, each parameter tensor's
  gradient is divided by its L2 norm (plus 1e-7), so every tensor moves by a step whose size does
  not depend on the scale of its gradient.

Learning-rate schedules (per epoch, :func:`lr_factor`):

* ``"constant"``: the configured rate throughout (this book's default);
* ``"noam"``: the reference code's 2-D schedule (its ``NoamLRScheduler``, stepped once per epoch
  with W = the warm-up epochs): factor sqrt(W) min(e W^-1.5, max(e, 1)^-0.5) at 0-based epoch e,
  i.e. 0, 1/W, 2/W, ..., 1 over the warm-up (the first epoch at rate 0, as there), then sqrt(W / e).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

__all__ = ["OPTIMIZERS", "LR_SCHEDULES", "AdamNormGrad", "make_optimizer", "lr_factor"]

OPTIMIZERS = ("adam", "adam-normgrad")
LR_SCHEDULES = ("constant", "noam")


class AdamNormGrad(torch.optim.Adam):
    """Adam on gradients normalised per parameter tensor: g <- g / (||g||_2 + eps_norm) before each update.

    The update itself is :class:`torch.optim.Adam`'s. (The reference's own Adam adds eps to sqrt(v)
    before the bias correction, torch after it: the same update up to where eps = 1e-8 enters.)
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, eps_norm: float = 1e-7, **kwargs):
        super().__init__(params, lr=lr, **kwargs)
        self.eps_norm = eps_norm

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(torch.linalg.vector_norm(p.grad) + self.eps_norm)
        return super().step(closure)


def make_optimizer(name: str, params: Iterable, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (:data:`OPTIMIZERS`) over ``params`` at learning rate ``lr``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adam-normgrad":
        return AdamNormGrad(params, lr=lr)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


def lr_factor(schedule: str, epoch: int, warmup_epochs: int) -> float:
    """Multiplier of the learning rate in 0-based epoch ``epoch`` under ``schedule`` (module docstring)."""
    if schedule == "constant":
        return 1.0
    if schedule == "noam":
        w = max(1, warmup_epochs)
        return math.sqrt(w) * min(epoch * w ** -1.5, max(epoch, 1) ** -0.5)
    raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {schedule!r}")
