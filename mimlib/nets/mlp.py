"""The 2-D models of the paper's section 4 (appendix D.1), batched over seeds.

Encoder q(z|x) and decoder p(x|z) are conditional diagonal Gaussians, each an
MLP ``Linear(in, H) -> tanh -> Linear(H, 2 * out)`` whose output is split into
the mean and the log-std heads; std = min_std + exp(log_std) (the reference
code floors the std at 1e-6). p(z) = P(z) = N(0, I) (appendix C).

``MixtureModel2D(hidden, seeds)`` holds ``len(seeds)`` independent models in
stacked weights, trained in one batched forward pass: a loss that is the sum of
the per-model losses has gradients that are the per-model gradients, and Adam
acts elementwise, so each model is trained exactly as it would be alone.
Without gradients (evaluation), a network's hidden activations are computed in
place and in pieces of the batch (:func:`_block_no_grad`), the same arithmetic.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..distributions import diagonal_gaussian, standard_normal

__all__ = ["BatchedLinear", "GaussianMLP", "MixtureModel2D", "fast_tanh"]


def _bmm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``bias + a @ b`` for 3-D tensors, computed as ``(bias^T + b^T a^T)^T`` when the result is narrow.

    MKL's batched product is several times slower for a narrow result (N of 2-4
    columns, the 2-D models' heads) than for the same product transposed; both
    give the same numbers up to rounding. The bias is added inside the product.
    """
    if b.shape[-1] < 16 and a.shape[-2] > b.shape[-1]:
        bt, at = b.transpose(1, 2), a.transpose(1, 2)
        out = torch.bmm(bt, at) if bias is None else torch.baddbmm(bias.transpose(1, 2), bt, at)
        return out.transpose(1, 2)
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)


class _BatchedAffine(torch.autograd.Function):
    """y = x W^T + b per model, x (n, batch, in), W (n, out, in), b (n, 1, out); the three products of
    forward and backward each in their fast layout (:func:`_bmm`)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _bmm(x, weight.transpose(1, 2), bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        gx = _bmm(g, weight) if ctx.needs_input_grad[0] else None
        gw = _bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1: the same function, 2.5x faster than ``torch.tanh`` on CPU for the
    hidden layers (agrees to about 2e-7); backward (1 - y^2) g."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x + x)
        y = y.add_(y).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(g, y)


#: Tensors at least this large take the custom kernels above; smaller ones are dominated by the
#: per-operation overhead, which the plain torch operations keep lower.
_LARGE = 1 << 15


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh of the hidden layer (:class:`_Tanh` for large CPU tensors, ``torch.tanh`` otherwise)."""
    return _Tanh.apply(x) if x.device.type == "cpu" and x.numel() >= _LARGE else torch.tanh(x)


class BatchedLinear(nn.Module):
    """``n_models`` independent affine maps applied to inputs of shape (n_models, batch, in).

    The weight is stored as ``nn.Linear`` stores it, (n_models, out, in): the layout in which the
    training step's batched products are fast. (Version 1 stored (n_models, in, out); such state
    dicts are transposed on load.)
    """

    _version = 2

    def __init__(self, n_models: int, d_in: int, d_out: int, generators: Sequence[torch.Generator]):
        super().__init__()
        if len(generators) != n_models:
            raise ValueError("need one generator per model")
        bound = 1.0 / math.sqrt(d_in)  # the default initialisation of nn.Linear
        # drawn in (in, out) order, as before the layout changed, so every seed starts where it did
        w = torch.stack([torch.empty(d_in, d_out).uniform_(-bound, bound, generator=g) for g in generators])
        b = torch.stack([torch.empty(1, d_out).uniform_(-bound, bound, generator=g) for g in generators])
        self.weight = nn.Parameter(w.transpose(1, 2).contiguous())
        self.bias = nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[0] == self.weight.shape[0]:
            if x.shape[0] * x.shape[1] * max(self.weight.shape[1:]) >= _LARGE:
                return _BatchedAffine.apply(x, self.weight, self.bias)
            return torch.baddbmm(self.bias, x, self.weight.transpose(1, 2))
        return torch.matmul(x, self.weight.transpose(-1, -2)) + self.bias  # (..., n_models, batch, in)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        key, version = prefix + "weight", local_metadata.get("version")
        w = state_dict.get(key)
        if w is not None and w.dim() == 3:
            old = version < 2 if version is not None else (  # no metadata (a plain dict): judge by shape
                w.shape != self.weight.shape and w.transpose(1, 2).shape == self.weight.shape)
            if old:
                state_dict[key] = w.transpose(1, 2).contiguous()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


#: Without gradients, the hidden activations of at most this many elements are computed at a time (in
#: place, in one buffer that stays in the CPU's caches; the NLL's importance samples of the widest models
#: would take 400 MB at once).
_PIECE = 1 << 20


def _block_no_grad(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
                   ) -> torch.Tensor:
    """``tanh(x W1^T + b1) W2^T + b2`` per model, x (n, batch, in), without gradients, over pieces of the
    batch: the arithmetic of :class:`BatchedLinear` and :func:`fast_tanh`, each chosen (and each product's
    layout, :func:`_bmm`) by the whole batch's size, so that the numbers do not depend on the pieces but
    for the order of the products' sums."""
    n, b, _ = x.shape
    h, d_out = w1.shape[1], w2.shape[1]
    large = n * b * h >= _LARGE
    narrow1, narrow2 = large and h < 16 and b > h, large and d_out < 16 and b > d_out

    def product(a, w, bias, narrow, out=None):   # bias + a W^T
        if narrow:
            r = torch.baddbmm(bias.transpose(1, 2), w, a.transpose(1, 2)).transpose(1, 2)
            return r if out is None else out.copy_(r)
        return torch.baddbmm(bias, a, w.transpose(1, 2), out=out)

    step = max(1, _PIECE // (n * h))
    out = x.new_empty(n, b, d_out)
    buf = x.new_empty(n * min(b, step) * h)
    for s in range(0, b, step):
        xs = x[:, s:s + step]
        y = product(xs, w1, b1, narrow1, out=buf[:n * xs.shape[1] * h].view(n, xs.shape[1], h))
        if large:   # fast_tanh's 2 sigmoid(2 u) - 1 (u + u = 2 u, y + y = 2 y exactly), in place
            torch.sigmoid(y.mul_(2.0), out=y)
            y.mul_(2.0).sub_(1.0)
        else:
            torch.tanh(y, out=y)
        out[:, s:s + step] = product(y, w2, b2, narrow2)
    return out


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
        n = self.hidden_layer.weight.shape[0]
        lead = None
        if x.dim() > 3 and x.shape[-3] == n:   # (..., n_models, batch, in): one 3-D product per layer
            lead = x.movedim(-3, 0).shape[1:-1]
            x = x.movedim(-3, 0).reshape(n, -1, x.shape[-1])
        if x.dim() == 3 and x.shape[0] == n and not torch.is_grad_enabled() and x.device.type == "cpu":
            out = _block_no_grad(x, self.hidden_layer.weight, self.hidden_layer.bias, self.heads.weight,
                                 self.heads.bias)
        else:
            out = self.heads(fast_tanh(self.hidden_layer(x)))
        if lead is not None:
            out = out.reshape(n, *lead, out.shape[-1]).movedim(0, -3)
        mean, log_std = out.chunk(2, dim=-1)
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
