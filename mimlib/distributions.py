"""Distributions used by every model: the conditional Gaussian and Bernoulli
likelihoods and the N(0, I) anchor.

All of them are thin constructors around :mod:`torch.distributions`, so each
object offers ``rsample()`` (where reparameterisable), ``sample()`` and a
``log_prob()`` that sums over the event dimensions and includes the
normalising constant. The objectives (:mod:`mimlib.objectives`) see nothing
else of a model.
"""

from __future__ import annotations

import torch
from torch import distributions as td

__all__ = ["diagonal_gaussian", "bernoulli", "standard_normal", "draw"]

# Argument validation costs more than the 2-D networks themselves; the
# constructors below check their inputs once, explicitly, instead.
td.Distribution.set_default_validate_args(False)


def diagonal_gaussian(mean: torch.Tensor, std: torch.Tensor) -> td.Independent:
    """N(mean, diag(std^2)) over the last dimension.

    ``log_prob(x) = -1/2 sum_d [((x_d - mean_d)/std_d)^2 + 2 log std_d + log 2 pi]``,
    the conditional densities q(z|x) and p(x|z) of the paper's section 2
    (appendix D.1 for the 2-D models). ``rsample`` is the reparameterisation
    ``mean + std * eps``.
    """
    if mean.shape != std.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
    return td.Independent(td.Normal(mean, std), 1)


def bernoulli(logits: torch.Tensor, event_dims: int = 1) -> td.Independent:
    """Product of Bernoullis over the last ``event_dims`` dimensions (the image decoders).

    Not reparameterisable: ``rsample`` does not exist, see :func:`draw`.
    """
    return td.Independent(td.Bernoulli(logits=logits), event_dims)


def standard_normal(dim: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> td.Independent:
    """The latent anchor P(z) = N(0, I_dim) (paper section 2; p(z) = P(z) by appendix C)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    zeros = torch.zeros(dim, device=device, dtype=dtype)
    return td.Independent(td.Normal(zeros, torch.ones_like(zeros)), 1)


def draw(dist: td.Distribution, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
    """A sample that carries gradients where it can: ``rsample`` if the family
    has one, else a plain ``sample`` (Bernoulli, categorical)."""
    if dist.has_rsample:
        return dist.rsample(sample_shape)
    return dist.sample(sample_shape)
