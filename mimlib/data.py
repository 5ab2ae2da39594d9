"""The 2-D mixture data of the paper's section 4 (appendix D.1).

Five equal-weight isotropic Gaussians with std 0.25: one at the origin, four
on the unit circle at 0, 72, 144 and 216 degrees. Training draws a fresh sample
every epoch; validation and test sets are drawn once from their own seeds.

The image data sets (MNIST, Fashion-MNIST) live in :mod:`mimlib.images`.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

__all__ = ["MIXTURE_STD", "mixture_means", "mixture_log_density", "component_posterior", "sample_mixture", "MixtureStream",
           "split_batches"]

MIXTURE_STD = 0.25
_ANGLES_DEG = (0.0, 72.0, 144.0, 216.0)


def mixture_means() -> torch.Tensor:
    """The five component means, shape (5, 2): the origin, then the unit circle at 0, 72, 144, 216 degrees."""
    ring = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in _ANGLES_DEG]
    return torch.tensor([(0.0, 0.0), *ring], dtype=torch.float32)


def _component_log_joint(x: torch.Tensor, std: float) -> torch.Tensor:
    d = x.unsqueeze(-2) - mixture_means().to(x)                      # (..., 5, 2)
    return -0.5 * (d ** 2).sum(-1) / std ** 2 - math.log(2 * math.pi * std ** 2) - math.log(5)


def mixture_log_density(x: torch.Tensor, std: float = MIXTURE_STD) -> torch.Tensor:
    """log P(x) of the mixture, in closed form (for the density contours of Fig. 1)."""
    return torch.logsumexp(_component_log_joint(x, std), dim=-1)


def component_posterior(x: torch.Tensor, std: float = MIXTURE_STD) -> torch.Tensor:
    """P(component | x), shape (..., 5): the Bayes classifier, the ceiling of any classifier of the component."""
    return torch.softmax(_component_log_joint(x, std), dim=-1)


def sample_mixture(n: int, generator: torch.Generator | None = None,
                   std: float = MIXTURE_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points x ~ P(x) and their component labels (0 = origin, 1-4 = the ring).

    Returns ``(x, labels)`` with shapes (n, 2) float32 and (n,) int64.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    labels = torch.randint(0, 5, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator)
    return mixture_means()[labels] + std * noise, labels


class MixtureStream:
    """Per-seed data for a batch of independently seeded models.

    Model ``i`` of a batched run gets its own generator (seeded by ``seeds[i]``),
    so its data do not depend on which other seeds share the batch.
    ``epoch(e)`` is a fresh training sample of shape (len(seeds), n, 2) and is a
    function of (seed, e) only, which makes resumed runs see the same data.
    """

    def __init__(self, seeds: Sequence[int], n_train: int = 10_000, std: float = MIXTURE_STD):
        if len(seeds) == 0:
            raise ValueError("need at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.n_train = n_train
        self.std = std

    def _draw(self, n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for s in self.seeds:
            g = torch.Generator().manual_seed(1_000_003 * s + stream)
            x, y = sample_mixture(n, g, self.std)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def epoch(self, e: int) -> torch.Tensor:
        """Training points of epoch ``e`` (e >= 0), shape (seeds, n_train, 2)."""
        return self._draw(self.n_train, 10 + e)[0]

    def validation(self, n: int = 10_000) -> torch.Tensor:
        """A fixed validation set per seed, shape (seeds, n, 2)."""
        return self._draw(n, 1)[0]

    def test(self, n: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed test set per seed with component labels: (seeds, n, 2), (seeds, n)."""
        return self._draw(n, 2)

    def train_fixed(self, n: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed labelled training sample (for fitting k-NN classifiers)."""
        return self._draw(n, 3)


def split_batches(x: torch.Tensor, batch_size: int, dim: int = -2) -> Iterator[torch.Tensor]:
    """Consecutive mini-batches of ``x`` along the example dimension (already random for fresh samples)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    yield from torch.split(x, batch_size, dim=dim)
