"""The 2-D models of the paper's section 4 (appendix D.1), batched over seeds.

Encoder q(z|x) and decoder p(x|z) are conditional diagonal Gaussians, each an
MLP ``Linear(in, H) -> tanh -> Linear(H, 2 * out)`` whose output is split into
the mean and the log-std heads; std = min_std + exp(log_std) (the reference
code floors the std at 1e-6). p(z) = P(z) = N(0, I) (appendix C).

``MixtureModel2D(hidden, seeds)`` holds ``len(seeds)`` independent models in
stacked weights, trained in one batched forward pass: a loss that is the sum of
the per-model losses has gradients that are the per-model gradients, and Adam
acts elementwise, so each model is trained exactly as it would be alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..distributions import diagonal_gaussian, standard_normal

__all__ = ["BatchedLinear", "GaussianMLP", "MixtureModel2D"]


class BatchedLinear(nn.Module):
    """``n_models`` independent affine maps applied to inputs of shape (n_models, batch, in)."""

    def __init__(self, n_models: int, d_in: int, d_out: int, generators: Sequence[torch.Generator]):
        super().__init__()
        if len(generators) != n_models:
            raise ValueError("need one generator per model")
        bound = 1.0 / math.sqrt(d_in)  # the default initialisation of nn.Linear
        w = torch.stack([torch.empty(d_in, d_out).uniform_(-bound, bound, generator=g) for g in generators])
        b = torch.stack([torch.empty(1, d_out).uniform_(-bound, bound, generator=g) for g in generators])
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.matmul(x, self.weight) + self.bias  # (..., n_models, batch, in): broadcast


class GaussianMLP(nn.Module):
    """x -> N(mean(x), diag(std(x)^2)) with one tanh hidden layer, batched over models."""

    def __init__(self, n_models: int, d_in: int, d_out: int, hidden: int,
                 generators: Sequence[torch.Generator], min_std: float = 1e-6):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden_layer = BatchedLinear(n_models, d_in, hidden, generators)
        self.heads = BatchedLinear(n_models, hidden, 2 * d_out, generators)
        self.min_std = min_std

    def forward(self, x: torch.Tensor):
        mean, log_std = self.heads(torch.tanh(self.hidden_layer(x))).chunk(2, dim=-1)
        std = self.min_std + torch.exp(log_std.clamp(max=10.0))
        return diagonal_gaussian(mean, std)


class MixtureModel2D(nn.Module):
    """A batch of 2-D encoder/decoder pairs, one per seed (x, z in R^2).

    The model interface of :mod:`mimlib.objectives`: ``encoder``, ``decoder``,
    ``prior``, ``anchor``. Inputs have shape (..., n_models, batch, 2); a
    (batch, 2) input is broadcast to every model.
    """

    def __init__(self, hidden: int, seeds: Sequence[int], x_dim: int = 2, z_dim: int = 2,
                 min_std: float = 1e-6):
        super().__init__()
        self.seeds = [int(s) for s in seeds]
        self.hidden = hidden
        self.z_dim = z_dim
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.enc = GaussianMLP(len(gens), x_dim, z_dim, hidden, gens, min_std)
        self.dec = GaussianMLP(len(gens), z_dim, x_dim, hidden, gens, min_std)

    @property
    def n_models(self) -> int:
        return len(self.seeds)

    def _batched(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 2:
            return t.unsqueeze(0).expand(self.n_models, -1, -1)
        if t.dim() < 3 or t.shape[-3] != self.n_models:
            raise ValueError(f"expected shape (..., {self.n_models}, batch, d) or (batch, d), got {tuple(t.shape)}")
        return t

    def encoder(self, x: torch.Tensor):
        """q(z|x)."""
        return self.enc(self._batched(x))

    def decoder(self, z: torch.Tensor):
        """p(x|z)."""
        return self.dec(self._batched(z))

    def prior(self):
        """p(z) = P(z) = N(0, I) (appendix C)."""
        p = self.enc.heads.weight
        return standard_normal(self.z_dim, device=p.device, dtype=p.dtype)

    anchor = prior

    def select(self, index: int) -> "MixtureModel2D":
        """A one-model copy holding model ``index`` of the batch (for plots of a single seed)."""
        one = MixtureModel2D(self.hidden, [self.seeds[index]], z_dim=self.z_dim,
                             min_std=self.enc.min_std)
        one.load_state_dict({k: v[index:index + 1].clone() for k, v in self.state_dict().items()})
        return one
