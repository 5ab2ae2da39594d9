"""Several hidden widths of the 2-D study trained as one batched model: a *bucket*.

:func:`fit_bucket` trains the groups of one objective (each a width H with all its seeds, as
:class:`mimlib.nets.mlp.MixtureModel2D` holds them) together. Every model of every group sits in one
stack of weights whose hidden layer is zero-padded to the widest model still training: padded units
have zero input weights, bias and output weights, so they output tanh(0) = 0, contribute exactly 0 and
get exactly 0 gradient, and Adam keeps them at 0 (0 gradient -> 0 moments -> 0 update). Each model
therefore trains as it does alone (:func:`mimlib.train.fit` on its group), up to float rounding (the
order of the products' sums; tanh as 2 sigmoid(2u) - 1 or as ``torch.tanh`` by the size of the stack,
as :func:`mimlib.nets.mlp.fast_tanh` chooses, which agree to 2e-7):

* the same initial weights (each group is built as a ``MixtureModel2D``, from its seeds' generators);
* the same data and the same noise: the groups of a bucket share the seeds, hence the data, and one
  run draws the same reparameterisation noise for every width (shape (seeds, batch, 2), from one
  generator seeded like ``fit``'s), so the bucket draws it once and gives every model its seed's;
* the loss of :mod:`mimlib.objectives` (vae, mim, mim-pathwise, amim) for Gaussian encoders and
  decoders (:func:`bucket_loss`);
* Adam as :class:`torch.optim.Adam` computes it, elementwise;
* early stopping per model as ``fit`` does it (validation at beta = 1 under fixed noise, patience,
  best parameters kept). A stopped model leaves the stack (its best parameters kept aside); a group
  whose models have all stopped is finished and leaves the bucket, the others train on; the padding
  shrinks to the widest model left.

A training step is torch operations only: :func:`bucket_loss`, autograd and :func:`_adam`. The networks
run as :func:`gaussian_block`, an autograd function whose backward is autograd's derivative of each
operation of :class:`~mimlib.nets.mlp.GaussianMLP`, with its hidden activations computed in place in
buffers reused from step to step; MIM's encoders and decoders share each pass (one batched product per
layer); the flat parameters, gradient and Adam moments of the stack are each one tensor.

Each group keeps its own run folder (:class:`BucketMember`): its checkpoint (``checkpoint.pt``) and
its result (``final.pt``) have ``fit``'s format, so a group trained in a bucket loads, and resumes,
like one trained alone, and the other way round. A bucket writes the checkpoints of all its open groups
together, at the end of the first epoch that ends ``checkpoint_seconds`` after the last ones and of
every epoch at which a group finishes, and a finished group's ``final.pt`` right after. A run killed
at any point resumes every group from its checkpoint; since the checkpoints of one bucket share their
epoch, the resumed bucket computes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from .allocator import keep_freed_memory
from .atomic import check_writable
from .nets.mlp import _LARGE, MixtureModel2D
from .objectives import MIMOptions
from .optim import lr_factor
from .train import (FitConfig, FitResult, _check_config, _load_final, _remove_orphans, _resume_note,
                    _tidy_finished, _trim_history, atomic_save, beta_schedule, run_lock)

__all__ = ["BucketMember", "fit_bucket", "bucket_loss", "OBJECTIVES", "CHECKPOINT_SECONDS"]

#: The objectives a bucket computes (those of :mod:`mimlib.objectives` for Gaussian decoders).
OBJECTIVES = ("vae", "mim", "mim-pathwise", "amim")

#: A bucket checkpoints its groups once this many seconds have passed since the last time (at the end
#: of an epoch), and whenever a group finishes. (Every epoch, as ``fit`` does, would cost a fifth of the
#: training time of the narrow widths.)
CHECKPOINT_SECONDS = 20.0

_PARAMS = ("hidden_layer.weight", "hidden_layer.bias", "heads.weight", "heads.bias")
_HIDDEN_DIM = (1, 2, 2, None)   # the hidden-unit dimension of W1 (M, H, 2), b1 (M, 1, H), W2 (M, 4, H), b2
_KEYS = tuple(f"{net}.{p}" for net in ("enc", "dec") for p in _PARAMS)   # MixtureModel2D's parameters, in order
_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))
_BETAS, _EPS = (0.9, 0.999), 1e-8
#: The param group of ``torch.optim.Adam(params, lr).state_dict()`` (built here: constructing an Adam
#: imports torch's compiler, seconds per process).
_ADAM_GROUP = {"lr": 1e-3, "betas": _BETAS, "eps": _EPS, "weight_decay": 0, "amsgrad": False, "maximize": False,
               "foreach": None, "capturable": False, "differentiable": False, "fused": None,
               "decoupled_weight_decay": False}


@dataclass
class BucketMember:
    """One group of a bucket: its width, its run folder (or None) and its stored run configuration."""

    hidden: int
    run_dir: Path | None = None
    run_config: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- the loss


def _log_prob(v, mean, std):
    """log N(v; mean, diag(std^2)) as torch.distributions computes it (also for the anchor N(0, I): mean
    0 and std 1 give its values exactly)."""
    return (-((v - mean) ** 2) / (2 * std ** 2) - std.log() - _HALF_LOG_2PI).sum(-1)


class _Workspace:
    """Buffers reused from step to step (a training step would otherwise allocate, and page in, a few MiB per
    hidden activation), and constant tensors: ``get(slot, shape, like)`` is a view of slot's flat buffer,
    grown when too small."""

    def __init__(self):
        self._flat: dict[str, torch.Tensor] = {}
        self._const: dict[tuple, torch.Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer of ``shape`` with ``like``'s dtype and device."""
        n = math.prod(shape)
        buf = self._flat.get(slot)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._flat[slot] = like.new_empty(n)
        return buf[:n].view(shape)

    def full(self, shape: tuple[int, ...], value: float, like: torch.Tensor) -> torch.Tensor:
        """A constant tensor (not to be written to)."""
        key = (tuple(shape), value, like.dtype, like.device)
        t = self._const.get(key)
        if t is None:
            t = self._const[key] = like.new_full(shape, value)
        return t


_MINUS_ONE = torch.tensor(-1.0)


class _GaussianBlock(torch.autograd.Function):
    """The 2-D models' networks (:class:`mimlib.nets.mlp.GaussianMLP`), stacked: the mean and the std of
    N(mean, diag(std^2)), ``mean, log_std = tanh(x W1^T + b1) W2^T + b2``, ``std = min_std +
    exp(clamp(log_std, max=10))``, the same operations as the module's; its backward is autograd's
    derivative of each operation (tanh via :func:`mimlib.nets.mlp.fast_tanh`: backward (1 - y^2) g; exp:
    g exp; clamp: g where not clamped), each product in its fast layout (as
    :class:`mimlib.nets.mlp._BatchedAffine`). The hidden activations are computed in place in a reused
    buffer (``ws``, slot ``slot``: valid until the next call with that slot), their gradient in another."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, min_std: float, ws: _Workspace, slot: str):
        m, b, _ = x.shape
        y = ws.get(slot, (m, b, w1.shape[1]), x)
        if y.numel() >= _LARGE:   # as fast_tanh: tanh(u) = 2 sigmoid(2u) - 1, 2u = x (2 W1)^T + 2 b1 exactly
            torch.baddbmm(b1 * 2.0, x, (w1 * 2.0).transpose(1, 2), out=y)
            torch.sigmoid(y, out=y)
            torch.add(_MINUS_ONE, y, alpha=2.0, out=y)
        else:                     # ... or torch.tanh for small tensors
            torch.tanh(torch.baddbmm(b1, x, w1.transpose(1, 2), out=y), out=y)
        out = torch.baddbmm(b2.transpose(1, 2), w2, y.transpose(1, 2))   # (m, 4, b): mean, log_std, by rows
        log_std = out[:, 2:]
        e = torch.exp(log_std.clamp(max=10.0))
        ctx.save_for_backward(x, w1, w2, y, log_std, e)
        ctx.ws = ws
        return out[:, :2].transpose(1, 2), (min_std + e).transpose(1, 2)

    @staticmethod
    def backward(ctx, g_mean, g_std):
        x, w1, w2, y, log_std, e = ctx.saved_tensors
        m, b, _ = x.shape
        g = x.new_zeros(m, 4, b)   # the gradient of (mean, log_std), by rows
        if g_mean is not None:
            g[:, :2] = g_mean.transpose(1, 2)
        if g_std is not None:
            g[:, 2:] = torch.where(log_std <= 10.0, g_std.transpose(1, 2) * e, 0.0)
        gw2 = torch.bmm(g, y)
        gb2 = g.sum(2, keepdim=True).transpose(1, 2)
        gu = torch.bmm(g.transpose(1, 2), w2, out=ctx.ws.get("grad", y.shape, y))
        torch.ops.aten.tanh_backward.grad_input(gu, y, grad_input=gu)
        gw1 = torch.bmm(x.transpose(1, 2), gu).transpose(1, 2)
        gb1 = gu.sum(1, keepdim=True)
        gx = torch.bmm(w1.transpose(1, 2).contiguous(), gu.transpose(1, 2)).transpose(1, 2) \
            if ctx.needs_input_grad[0] else None
        return gx, gw1, gb1, gw2, gb2, None, None, None


def gaussian_block(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                   min_std: float, ws: _Workspace | None = None, slot: str = "block"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) (M, B, 2) of M stacked 2-D Gaussian networks, as :class:`~mimlib.nets.mlp.GaussianMLP`
    computes them: x (M, B, 2), W1 (M, H, 2), b1 (M, 1, H), W2 (M, 4, H), b2 (M, 1, 4). Differentiable in
    x and the weights; ``ws``: buffers to reuse (:class:`_GaussianBlock`)."""
    return _GaussianBlock.apply(x, w1, b1, w2, b2, min_std, ws if ws is not None else _Workspace(), slot)


def bucket_loss(objective: str, enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor], x: torch.Tensor,
                noise: Sequence[torch.Tensor], beta: float, min_std: float, options: MIMOptions = MIMOptions(),
                ws: _Workspace | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example loss (A, batch) of A stacked models and its named terms, as the objective of
    :mod:`mimlib.objectives` computes it for a :class:`~mimlib.nets.mlp.MixtureModel2D`.

    ``enc`` / ``dec``: the A encoders' and the A decoders' W1 (A, H, 2), b1 (A, 1, H), W2 (A, 4, H),
    b2 (A, 1, 4); ``x`` (A, batch, 2); ``noise``: the standard-normal draws in the objective's order
    (encoder sample; then, for MIM's decoder-sampled half, the anchor's z and the decoder sample), each
    (A, batch, 2). MIM's two halves share each network pass, encoders and decoders stacked ([x; z_a]
    first, then [x_d; z]), and one evaluation of the Gaussian log-density (the anchor's as N(0, I)).
    ``ws``: buffers reused between calls (:func:`gaussian_block`).
    """
    ws = ws if ws is not None else _Workspace()
    a = x.shape[0]
    if objective != "vae":
        if options.warmup != "rescale" and beta != 1.0:
            raise ValueError("a bucket computes MIMOptions(warmup='rescale') only")
        weight = 0.0 if objective == "amim" else (beta if options.decoder_start == "always" else float(beta >= 1.0))
    if objective == "vae" or weight == 0:   # the VAE, or MIM's encoder-sampled half only
        mq, sq = gaussian_block(x, *enc, min_std, ws, "enc")
        z = mq + noise[0] * sq
        mp, sp = gaussian_block(z, *dec, min_std, ws, "dec")
        zeros, ones = ws.full(z.shape, 0.0, z), ws.full(z.shape, 1.0, z)
        lp = _log_prob(torch.cat([z, x, z]), torch.cat([mq, mp, zeros]), torch.cat([sq, sp, ones]))
        log_qzx, log_pxz, log_pz = lp[:a], lp[a:2 * a], lp[2 * a:]
        if objective == "vae":
            kl = log_qzx - log_pz
            return -log_pxz + beta * kl, {"log p(x|z)": log_pxz, "log p(z)": log_pz, "log q(z|x)": log_qzx,
                                          "kl": kl}
    else:
        params = [torch.cat([e, d]) for e, d in zip(enc, dec)]
        z_a = noise[1]
        m1, s1 = gaussian_block(torch.cat([x, z_a]), *params, min_std, ws, "pass 1")   # q(z|x), p(x|z_a)
        drawn = m1 + torch.cat([noise[0], noise[2]]) * s1                               # [z; x_d]
        m2, s2 = gaussian_block(drawn.roll(a, 0), *params, min_std, ws, "pass 2")       # q(z|x_d), p(x|z)
        zeros, ones = ws.full(drawn.shape, 0.0, drawn), ws.full(drawn.shape, 1.0, drawn)
        # log q(z|x), log p(x_d|z_a); log q(z_a|x_d), log p(x|z); log p(z), log p(z_a)
        lp = _log_prob(torch.cat([drawn, z_a, x, drawn[:a], z_a]), torch.cat([m1, m2, zeros]),
                       torch.cat([s1, s2, ones]))
        log_qzx, log_pxz, log_pz = lp[:a], lp[3 * a:4 * a], lp[4 * a:5 * a]
    lqx = log_pxz + log_pz - log_qzx
    enc_value = -0.5 * (log_pxz + log_pz + beta * (log_qzx + lqx))
    terms = {"enc/log p(x|z)": log_pxz, "enc/log p(z)": log_pz, "enc/log q(z|x)": log_qzx, "enc/log q(x)": lqx}
    if objective == "amim":
        return enc_value, terms
    if weight == 0:
        return 0.5 * enc_value, terms
    d_pxz, d_qzx, d_pz = lp[a:2 * a], lp[2 * a:3 * a], lp[5 * a:]
    dec_value = -0.5 * (d_pxz + d_pz + beta * (d_qzx + d_pxz))
    terms.update({"dec/log p(x|z)": d_pxz, "dec/log p(z)": d_pz, "dec/log q(z|x)": d_qzx, "dec/log q(x)": d_pxz})
    return 0.5 * (enc_value + weight * dec_value), terms


# ----------------------------------------------------------------------------- the padded stack


def _pad(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    if dim is None or t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


def _trim(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    return t if dim is None else t.narrow(dim, 0, size)


def _stack_groups(states: Sequence[dict[str, torch.Tensor]], width: int) -> dict[str, torch.Tensor]:
    """The groups' tensors (``_KEYS``), padded to ``width`` hidden units and stacked: (models, ...)."""
    return {k: torch.cat([_pad(s[k].detach(), _HIDDEN_DIM[i % 4], width) for s in states]).contiguous()
            for i, k in enumerate(_KEYS)}


def _group_state(full: dict[str, torch.Tensor], rows: slice, hidden: int) -> dict[str, torch.Tensor]:
    """One group's rows of a stacked store, trimmed to its width: a MixtureModel2D state dict."""
    return {k: _trim(full[k][rows], _HIDDEN_DIM[i % 4], hidden).clone() for i, k in enumerate(_KEYS)}


def _active(full: dict[str, torch.Tensor], rows: torch.Tensor, width: int) -> list[torch.Tensor]:
    """The training layout of ``rows``: 4 tensors, encoders then decoders, ``width`` hidden units."""
    return [torch.cat([_trim(full[f"enc.{p}"], _HIDDEN_DIM[i], width)[rows],
                       _trim(full[f"dec.{p}"], _HIDDEN_DIM[i], width)[rows]]).contiguous()
            for i, p in enumerate(_PARAMS)]


def _scatter(full: dict[str, torch.Tensor], rows: torch.Tensor, tensors: Sequence[torch.Tensor],
             mask: torch.Tensor | None = None) -> None:
    """Write the training layout back into a stacked store (``mask``: only these of ``rows``)."""
    a = rows.numel()
    for i, p in enumerate(_PARAMS):
        t = tensors[i].detach()
        width = t.shape[_HIDDEN_DIM[i]] if _HIDDEN_DIM[i] is not None else None
        for half, net in ((slice(0, a), "enc"), (slice(a, 2 * a), "dec")):
            src, dst_rows = t[half], rows
            if mask is not None:
                src, dst_rows = src[mask], rows[mask]
            dst = full[f"{net}.{p}"]
            if width is not None:
                dst.narrow(_HIDDEN_DIM[i], 0, width)[dst_rows] = src
            else:
                dst[dst_rows] = src


# ----------------------------------------------------------------------------- training


@dataclass
class _Group:
    member: BucketMember
    rows: slice                     # its models' rows in the bucket's stacked stores
    stored_json: dict
    history: list
    seconds: float = 0.0
    resumed_from: int | None = None
    result: FitResult | None = None
    model: MixtureModel2D | None = None


def fit_bucket(objective: str, members: Sequence[BucketMember], seeds: Sequence[int],
               train_batches: Callable[[int], Iterable[torch.Tensor]],
               val_batches: Callable[[], Iterable[torch.Tensor]],
               config: FitConfig = FitConfig(), options: MIMOptions = MIMOptions(), min_std: float = 1e-6,
               progress: bool | None = None, desc: str = "bucket",
               checkpoint_seconds: float = CHECKPOINT_SECONDS,
               after_epoch: Callable[[int], None] | None = None) -> list[tuple[MixtureModel2D, FitResult]]:
    """Train the groups ``members`` (widths of one ``objective``, all ``seeds`` each) as one bucket;
    returns (model with its best parameters, result) per member, in order, as :func:`mimlib.train.fit`
    would for each group alone (module docstring).

    ``train_batches(epoch)`` / ``val_batches()`` yield (seeds, batch, 2) batches, shared by the groups.
    A member whose run folder holds ``final.pt`` is loaded; the others train, resuming from their
    checkpoints (members whose checkpoints are of different epochs train as separate buckets).
    ``after_epoch(epoch)`` is called after each epoch's checkpoints (tests interrupt there).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"a bucket trains one of {list(OBJECTIVES)}, got {objective!r}")
    if config.optimizer != "adam":
        raise ValueError(f"a bucket trains with Adam only, got optimizer={config.optimizer!r}")
    keep_freed_memory()
    seeds = [int(s) for s in seeds]
    fit_json = {"fit": asdict(config)}
    out: list[Any] = [None] * len(members)
    stored = []
    todo = []
    for i, m in enumerate(members):
        sj = json.loads(json.dumps({**fit_json, "run": m.run_config or {}}, default=str))
        stored.append(sj)
        final = m.run_dir / "final.pt" if m.run_dir is not None else None
        if final is not None and final.exists():
            _tidy_finished(m.run_dir)
            model = MixtureModel2D(m.hidden, seeds, min_std=min_std)
            out[i] = (model, _load_final(model, final, sj, None))
        else:
            todo.append(i)
    if not todo:
        return out
    for i in todo:
        if members[i].run_dir is not None:
            check_writable(members[i].run_dir, "run folder")
    with contextlib.ExitStack() as locks:
        for i in sorted((i for i in todo if members[i].run_dir is not None), key=lambda i: str(members[i].run_dir)):
            locks.enter_context(run_lock(members[i].run_dir))
        starts: dict[Any, list[tuple[int, dict | None]]] = {}
        for i in todo:
            m = members[i]
            if m.run_dir is not None and (m.run_dir / "final.pt").exists():   # trained while this one waited
                model = MixtureModel2D(m.hidden, seeds, min_std=min_std)
                out[i] = (model, _load_final(model, m.run_dir / "final.pt", stored[i], None))
                continue
            ck = None
            if m.run_dir is not None:
                _remove_orphans(m.run_dir)
                path = m.run_dir / "checkpoint.pt"
                if path.exists():
                    ck = torch.load(path, weights_only=False)
                    _check_config(ck["config"], stored[i], path)
            key = None if ck is None else (ck["epoch"], bytes(ck["rng"].numpy()))
            starts.setdefault(key, []).append((i, ck))
        for part in starts.values():
            results = _train(objective, [members[i] for i, _ in part], [stored[i] for i, _ in part],
                             [ck for _, ck in part], seeds, train_batches, val_batches, config, options, min_std,
                             progress, desc, checkpoint_seconds, after_epoch)
            for (i, _), r in zip(part, results):
                out[i] = r
    return out


def _adam_state(ck: dict | None, state: dict[str, torch.Tensor], which: str) -> dict[str, torch.Tensor]:
    """A group's Adam moments (``exp_avg`` / ``exp_avg_sq``) as a state dict; zeros when fresh."""
    if ck is None or not ck["optimizer"]["state"]:
        return {k: torch.zeros_like(v) for k, v in state.items()}
    st = ck["optimizer"]["state"]
    return {k: st[j][which].detach().clone() for j, k in enumerate(_KEYS)}


def _kind(objective: str, beta: float, options: MIMOptions) -> tuple[str, float]:
    """Which loss a step computes at ``beta``: ("vae" | "mim" | "mim-encoder-half" | "amim", the
    decoder-sampled half's weight)."""
    if objective in ("vae", "amim"):
        return objective, 0.0
    weight = beta if options.decoder_start == "always" else float(beta >= 1.0)
    return ("mim", weight) if weight > 0 else ("mim-encoder-half", 0.0)


#: The names of the loss terms of each kind, in :func:`bucket_loss`'s order (the history's columns).
_TERMS = {"vae": ("log p(x|z)", "log p(z)", "log q(z|x)", "kl"),
          "mim": ("enc/log p(x|z)", "enc/log p(z)", "enc/log q(z|x)", "enc/log q(x)",
                  "dec/log p(x|z)", "dec/log p(z)", "dec/log q(z|x)", "dec/log q(x)"),
          "mim-encoder-half": ("enc/log p(x|z)", "enc/log p(z)", "enc/log q(z|x)", "enc/log q(x)")}
_TERMS["amim"] = _TERMS["mim-encoder-half"]


class _Engine:
    """The stacked models being trained: parameters and Adam moments of ``rows`` (the active models) in
    flat buffers (W1 | b1 | W2 | b2, encoders then decoders, ``width`` hidden units), and the step:
    :func:`bucket_loss`, autograd and :func:`_adam`, with the buffers of the hidden activations reused."""

    def __init__(self, objective, options, n_seeds, seed_of, min_std):
        self.objective, self.options, self.n, self.seed_of_all, self.min_std = (objective, options, n_seeds,
                                                                                seed_of, min_std)
        self.ws = _Workspace()

    # layout ---------------------------------------------------------------------------------------
    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        r, h = 2 * self.rows.numel(), self.width
        sizes = (r * h * 2, r * h, r * 4 * h, r * 4)
        shapes = ((r, h, 2), (r, 1, h), (r, 4, h), (r, 1, 4))
        return [t.view(s) for t, s in zip(flat.split(sizes), shapes)]

    def _halves(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The encoders' and the decoders' 4 tensors (views of ``flat``)."""
        a = self.rows.numel()
        views = self.views(flat)
        return [v[:a] for v in views], [v[a:] for v in views]

    def set(self, rows: torch.Tensor, width: int, tensors: Sequence[Sequence[torch.Tensor]]) -> None:
        """New active rows: ``tensors`` = (parameters, first moments, second moments), each 4 tensors."""
        self.rows, self.width = rows, width
        self.pick = self.seed_of_all[rows].contiguous()
        # every model reads its own seed's data in order (one group, all its models training): no gather
        self.identity = bool(torch.equal(self.pick, torch.arange(self.n)))
        self.theta, self.m, self.v = (torch.cat([t.reshape(-1) for t in ts]).contiguous() for ts in tensors)
        self.grad = torch.zeros_like(self.theta)
        enc, dec = self._halves(self.theta)
        # autograd's leaves: views of theta, encoders and decoders apart (their gradients, concatenated in
        # this order, are the layout of the flat buffers)
        self.enc = [t.detach().requires_grad_() for t in enc]
        self.dec = [t.detach().requires_grad_() for t in dec]
        self.leaves = [t for pair in zip(self.enc, self.dec) for t in pair]

    def shrink(self, rows: torch.Tensor, width: int) -> None:
        """Keep only ``rows`` (a subset of the active ones) and ``width`` hidden units (zero beyond)."""
        a = self.rows.numel()
        keep = torch.isin(self.rows, rows).nonzero().flatten()
        idx = torch.cat([keep, keep + a])
        self.set(rows, width, [[_trim(t[idx], _HIDDEN_DIM[i], width) for i, t in enumerate(self.views(flat))]
                               for flat in (self.theta, self.m, self.v)])

    # the step -------------------------------------------------------------------------------------
    def noise(self, gen: torch.Generator, draws: int, b: int) -> torch.Tensor:
        buf = torch.empty(draws, self.n, b, 2)
        for i in range(draws):
            buf[i].normal_(generator=gen)
        return buf

    def _inputs(self, xb: torch.Tensor, noise: torch.Tensor):
        if self.identity:
            return xb, list(noise)
        return xb.index_select(0, self.pick), list(noise.index_select(1, self.pick))

    def _loss(self, kind, enc, dec, xb, noise, beta):
        objective = "amim" if kind == "amim" else ("vae" if kind == "vae" else "mim")
        options = self.options if kind != "mim-encoder-half" else MIMOptions(decoder_start="after_warmup")
        x, eps = self._inputs(xb, noise)
        return bucket_loss(objective, enc, dec, x, eps, beta, self.min_std, options, ws=self.ws)

    def loss_sums(self, xb: torch.Tensor, noise: torch.Tensor, beta: float, kind: str, weight: float,
                  grad: bool, sums: torch.Tensor) -> float:
        """Adds the per-model sums of the loss and its terms to ``sums`` ((1 + terms) x A); the
        gradient into ``self.grad`` if ``grad``; returns the summed batch-mean loss."""
        with torch.enable_grad() if grad else torch.no_grad():
            value, terms = self._loss(kind, self.enc, self.dec, xb, noise, beta)
            total = value.mean(-1).sum()
            out = total.item()
            if grad and math.isfinite(out):
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, self.leaves)], out=self.grad)
        with torch.no_grad():
            sums.add_(torch.stack([value, *terms.values()]).sum(-1))
        return out

    def adam(self, step: int, lr: float) -> None:
        _adam([self.theta], [self.grad], [[self.m], [self.v]], step, lr)

    def message(self, xb, noise, beta, kind, epoch, step, members, seeds) -> str:
        """The error of a non-finite training loss (recomputed, for its terms)."""
        with torch.no_grad():
            value, terms = self._loss(kind, *self._halves(self.theta), xb, noise, beta)
        return _nonfinite(epoch, step, value, terms, self.rows, members, seeds)


def _train(objective, members, stored, checkpoints, seeds, train_batches, val_batches, config: FitConfig,
           options, min_std, progress, desc, checkpoint_seconds, after_epoch):
    n = len(seeds)
    width_max = max(m.hidden for m in members)
    groups: list[_Group] = []
    current, best, m1, m2 = [], [], [], []
    per_model = {"best_loss": [], "best_epoch": [], "bad_epochs": [], "stop_epoch": []}
    step, start_epoch, rng = 0, 0, None
    for gi, (m, sj, ck) in enumerate(zip(members, stored, checkpoints)):
        g = _Group(m, slice(gi * n, (gi + 1) * n), sj, [])
        if ck is None:
            init = MixtureModel2D(m.hidden, seeds, min_std=min_std).state_dict()
            cur, bst = init, {k: v.clone() for k, v in init.items()}
            per_model["best_loss"].append(torch.full((n,), math.inf))
            per_model["best_epoch"].append(torch.full((n,), -1, dtype=torch.long))
            per_model["bad_epochs"].append(torch.zeros(n, dtype=torch.long))
            per_model["stop_epoch"].append(torch.full((n,), -1, dtype=torch.long))
        else:
            cur, bst = ck["model"], ck["best_state"]
            for k in per_model:
                per_model[k].append(ck[k].clone())
            g.history, g.seconds, g.resumed_from = list(ck["history"]), float(ck["seconds"]), ck["epoch"]
            start_epoch = ck["epoch"] + 1
            rng = ck["rng"]
            if ck["optimizer"]["state"]:
                step = int(ck["optimizer"]["state"][0]["step"])
        current.append(cur)
        best.append(bst)
        m1.append(_adam_state(ck, cur, "exp_avg"))
        m2.append(_adam_state(ck, cur, "exp_avg_sq"))
        groups.append(g)
    cur_full, best_full = _stack_groups(current, width_max), _stack_groups(best, width_max)
    m1_full, m2_full = _stack_groups(m1, width_max), _stack_groups(m2, width_max)
    best_loss, best_epoch, bad_epochs, stop_epoch = (torch.cat(per_model[k]) for k in
                                                     ("best_loss", "best_epoch", "bad_epochs", "stop_epoch"))
    widths = torch.tensor([m.hidden for m in members]).repeat_interleave(n)
    gen = torch.Generator().manual_seed(config.seed)
    if rng is not None:
        gen.set_state(rng)
    engine = _Engine(objective, options, n, torch.arange(len(members) * n) % n, min_std)

    def layout() -> tuple[torch.Tensor, int]:
        rows = (stop_epoch < 0).nonzero().flatten()
        return rows, (int(widths[rows].max()) if rows.numel() else 0)

    rows, width = layout()
    engine.set(rows, width, [_active(full, rows, width) for full in (cur_full, m1_full, m2_full)])

    def write_back():
        for full, flat in ((cur_full, engine.theta), (m1_full, engine.m), (m2_full, engine.v)):
            _scatter(full, engine.rows, engine.views(flat))

    def finish(g: _Group, last_epoch: int):
        """A group is done: its best parameters, its result, its final.pt."""
        r = g.rows
        never = best_epoch[r] < 0   # warm-up longer than the run: the last parameters
        if bool(never.any()):
            idx = torch.arange(r.start, r.stop)[never]
            for k in _KEYS:
                best_full[k][idx] = cur_full[k][idx]
        model = MixtureModel2D(g.member.hidden, seeds, min_std=min_std)
        model.load_state_dict(_group_state(best_full, r, g.member.hidden))
        stop = torch.where(stop_epoch[r] >= 0, stop_epoch[r], torch.tensor(last_epoch))
        g.result = FitResult(_trim_history(g.history, stop.tolist()), best_epoch[r].tolist(), stop.tolist(),
                             best_loss[r].tolist(), g.seconds, g.resumed_from)
        g.model = model
        if g.member.run_dir is not None:
            ck_path = g.member.run_dir / "checkpoint.pt"
            atomic_save({"config": g.stored_json, "model": model.state_dict(),
                         "result": {"history": g.history, "best_epoch": g.result.best_epoch,
                                    "stop_epoch": g.result.stop_epoch, "best_val_loss": g.result.best_val_loss,
                                    "seconds": g.seconds, "resumed_from": g.resumed_from}},
                        g.member.run_dir / "final.pt", then=_resume_note(saved, ck_path))
            ck_path.unlink(missing_ok=True)

    def checkpoint(epoch: int, lr: float, todo: list[_Group]):
        """The checkpoints of ``todo`` in fit's format (Adam's state dict included)."""
        param_groups = [{**_ADAM_GROUP, "lr": lr, "params": list(range(len(_KEYS)))}]
        for g in todo:
            if g.member.run_dir is None:
                continue
            r, h = g.rows, g.member.hidden
            model_state = _group_state(cur_full, r, h)
            stopped = (stop_epoch[r] >= 0).nonzero().flatten()
            for i, k in enumerate(_KEYS):   # stopped models sit at their best parameters, as in fit
                model_state[k][stopped] = _trim(best_full[k][stopped + r.start], _HIDDEN_DIM[i % 4], h)
            e1, e2 = _group_state(m1_full, r, h), _group_state(m2_full, r, h)
            opt = {"state": {j: {"step": torch.tensor(float(step)), "exp_avg": e1[k], "exp_avg_sq": e2[k]}
                             for j, k in enumerate(_KEYS)}, "param_groups": param_groups}
            path = g.member.run_dir / "checkpoint.pt"
            atomic_save({"config": g.stored_json, "model": model_state, "optimizer": opt,
                         "best_state": _group_state(best_full, r, h), "history": g.history,
                         "best_loss": best_loss[r].clone(), "best_epoch": best_epoch[r].clone(),
                         "bad_epochs": bad_epochs[r].clone(), "stop_epoch": stop_epoch[r].clone(),
                         "epoch": epoch, "seconds": g.seconds, "rng": gen.get_state(), "cuda_rng": None},
                        path, then=_resume_note(saved, path))

    saved = start_epoch - 1 if start_epoch > 0 else None
    last_saved_at = time.perf_counter()
    open_groups = list(groups)
    for g in list(open_groups):   # resumed with every model stopped (killed between checkpoint and final.pt)
        if bool((stop_epoch[g.rows] >= 0).all()):
            finish(g, g.history[-1]["epoch"] if g.history else -1)
            open_groups.remove(g)

    show = progress if progress is not None else os.environ.get("MIMLIB_PROGRESS", "1") != "0"
    bar = tqdm(range(start_epoch, config.max_epochs), desc=desc, disable=not show, initial=start_epoch,
               total=config.max_epochs, leave=False)
    epoch = start_epoch - 1
    for epoch in bar:
        if not open_groups:
            break
        t0 = time.perf_counter()
        beta = beta_schedule(epoch, config.warmup_epochs)
        lr = config.lr * lr_factor(config.lr_schedule, epoch, config.warmup_epochs)
        a = rows.numel()
        kind, weight = _kind(objective, beta, options)
        draws = 3 if kind == "mim" else 1
        names = ("train_loss", *_TERMS[kind])
        sums = torch.zeros(len(names), a)
        n_seen = 0
        for s, xb in enumerate(train_batches(epoch)):
            noise = engine.noise(gen, draws, xb.shape[1])
            total = engine.loss_sums(xb, noise, beta, kind, weight, True, sums)
            if not math.isfinite(total):
                raise FloatingPointError(engine.message(xb, noise, beta, kind, epoch, s, members, seeds))
            step += 1
            engine.adam(step, lr)
            n_seen += xb.shape[1]
        val = _validate(engine, val_batches, config.seed + 7919, objective, options)
        if not bool(torch.isfinite(val).all()):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch + 1}: {val.tolist()}")

        # early stopping, per model (fit's rules), on the bucket's full per-model tensors
        active = stop_epoch < 0
        full_val = torch.full_like(best_loss, math.nan)
        full_val[rows] = val
        if config.selection == "last":
            improved = active.clone()
            best_loss = torch.where(active, full_val, best_loss)
            best_epoch = torch.where(active, torch.tensor(epoch), best_epoch)
        elif beta >= 1.0:
            improved = active & (full_val < best_loss - config.min_delta)
            best_loss = torch.where(improved, full_val, best_loss)
            best_epoch = torch.where(improved, torch.tensor(epoch), best_epoch)
            bad_epochs = torch.where(improved, torch.zeros_like(bad_epochs), bad_epochs + active.long())
            stop_epoch = torch.where(active & (bad_epochs >= config.patience), torch.tensor(epoch), stop_epoch)
        else:
            improved = torch.zeros_like(active)
        if bool(improved.any()):
            _scatter(best_full, rows, engine.views(engine.theta), mask=improved[rows])
        dt = time.perf_counter() - t0

        # history (fit's rows); each group's share of the time is its share of the models that trained
        val_list = val.tolist()
        sums_list = [[v / n_seen for v in t] for t in sums.tolist()]
        rows_list = rows.tolist()
        counts: dict[int, int] = {}
        for row in rows_list:
            counts[row // n] = counts.get(row // n, 0) + 1
        for gi, c in counts.items():
            groups[gi].seconds += dt * c / a
        for pos, row in enumerate(rows_list):
            g = groups[row // n]
            rec = {"epoch": epoch, "model": row % n, "beta": beta, "examples": (epoch + 1) * n_seen,
                   "val_loss": val_list[pos], "seconds": g.seconds}
            rec.update({name: sums_list[t][pos] for t, name in enumerate(names)})
            g.history.append(rec)
        bar.set_postfix(beta=f"{beta:.2f}", val=f"{float(val.mean()):.3f}", running=int((stop_epoch < 0).sum()))

        # groups whose models have all stopped (all groups, after the last epoch) are done: the checkpoints
        # of all open groups first (so that a kill before the finals leaves every group at this epoch),
        # then the finals; stopped models leave the stack, the padding shrinks to the widest one left
        write_back()
        done = [g for g in open_groups if bool((stop_epoch[g.rows] >= 0).all())]
        if epoch == config.max_epochs - 1:
            done = list(open_groups)
        if done or time.perf_counter() - last_saved_at >= checkpoint_seconds:
            checkpoint(epoch, lr, open_groups)
            saved = epoch
            last_saved_at = time.perf_counter()
        for g in done:
            finish(g, epoch)
            open_groups.remove(g)
        new_rows, new_width = layout()
        if new_rows.numel() != rows.numel() or new_width != width:
            engine.shrink(new_rows, new_width)
            rows, width = new_rows, new_width
        if after_epoch is not None:
            after_epoch(epoch)
    bar.close()
    for g in open_groups:   # resumed after the last epoch's checkpoint
        finish(g, epoch)
    return [(g.model, g.result) for g in groups]


@torch.no_grad()
def _adam(params, grads, moments, step: int, lr: float) -> None:
    """One step of :class:`torch.optim.Adam` (its single-tensor arithmetic, on all tensors at once)."""
    beta1, beta2 = _BETAS
    exp_avg, exp_avg_sq = moments
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, bias_correction2 ** 0.5)
    torch._foreach_add_(denom, _EPS)
    torch._foreach_addcdiv_(params, exp_avg, denom, -step_size)


@torch.no_grad()
def _validate(engine: _Engine, val_batches, seed: int, objective: str, options: MIMOptions) -> torch.Tensor:
    """Mean validation loss per model at beta = 1 under fixed noise (``fit``'s ``_validate``)."""
    gen = torch.Generator().manual_seed(seed)
    kind, weight = _kind(objective, 1.0, options)
    draws = 3 if kind == "mim" else 1
    sums = torch.zeros(1 + len(_TERMS[kind]), engine.rows.numel())
    count = 0
    for xb in val_batches():
        engine.loss_sums(xb, engine.noise(gen, draws, xb.shape[1]), 1.0, kind, weight, False, sums)
        count += xb.shape[1]
    return sums[0] / count


def _nonfinite(epoch, step, value, terms, rows, members, seeds) -> str:
    n = len(seeds)
    per_model = value.detach().mean(-1)
    bad = [(members[int(r) // n].hidden, seeds[int(r) % n]) for r, v in zip(rows.tolist(), per_model.tolist())
           if not math.isfinite(v)]
    where = ", ".join(f"H={h} seed {s}" for h, s in bad)
    means = {k: t.detach().mean(-1).tolist() for k, t in terms.items()}
    return (f"non-finite training loss at epoch {epoch + 1}, step {step + 1} ({where}): "
            f"loss per model = {per_model.tolist()}; mean loss terms = {means}. "
            "Lower the learning rate, raise the std floor, or check the data.")
