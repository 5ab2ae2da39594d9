"""The three training objectives, written once against the model interface.

A *model* is anything with four methods returning distributions
(:mod:`mimlib.distributions`):

* ``model.encoder(x)``  -> q(z|x)
* ``model.decoder(z)``  -> p(x|z)
* ``model.prior()``     -> p(z), the model prior in log p(x, z) = log p(x|z) + log p(z)
* ``model.anchor()``    -> P(z), the latent anchor the decoder-sampled half of M_S
  draws from (N(0, I) everywhere in the paper; equal to ``prior()`` unless the
  model learns a prior, e.g. the VampPrior)

Each objective returns a :class:`Loss`: the per-example loss (its shape is the
batch shape of q(z|x), e.g. ``(batch,)`` or ``(seeds, batch)`` for the batched
2-D models) and the named per-example terms for logging. Nothing here looks
inside a network, so the same code trains the 2-D MLPs, the hierarchical
convolutional models and the PixelCNN decoder.

Warm-up. ``beta`` in [0, 1] is the KL/MIM weight. For the VAE it scales the KL
term. For MIM it scales the two terms that only MIM has, log q(z|x) + log q(x)
(as the reference code does), and the decoder-sampled half of the objective;
at ``beta = 1`` every objective is exactly the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import distributions as td

from .distributions import draw

__all__ = ["Loss", "LatentVariableModel", "vae", "mim", "amim", "mim_pathwise", "OBJECTIVES", "get_objective",
           "leave_one_out_baseline", "score_function_surrogate"]


class LatentVariableModel(Protocol):
    """The only interface the objectives and metrics rely on."""

    def encoder(self, x: torch.Tensor) -> td.Distribution: ...

    def decoder(self, z: torch.Tensor) -> td.Distribution: ...

    def prior(self) -> td.Distribution: ...

    def anchor(self) -> td.Distribution: ...


@dataclass
class Loss:
    """Per-example loss (differentiable) and named per-example terms (detached)."""

    value: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


LogMarginal = Callable[[torch.Tensor], torch.Tensor]


def _encoder_pass(model: LatentVariableModel, x: torch.Tensor):
    """x ~ P(x) (given), z ~ q(z|x) reparameterised; the three log-densities at (x, z)."""
    q_zx = model.encoder(x)
    z = draw(q_zx)
    log_qzx = q_zx.log_prob(z)
    log_pxz = model.decoder(z).log_prob(x)
    log_pz = model.prior().log_prob(z)
    return q_zx, z, log_pxz, log_pz, log_qzx


def vae(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0) -> Loss:
    r"""Negative ELBO, paper Eq. (1): -log p(x|z) + beta [log q(z|x) - log p(z)], z ~ q(z|x).

    Single-sample Monte-Carlo estimate with the KL term estimated too (not in
    closed form), so the estimator is the same for every prior.
    """
    _, _, log_pxz, log_pz, log_qzx = _encoder_pass(model, x)
    kl = log_qzx - log_pz
    value = -log_pxz + beta * kl
    return Loss(value, {"log p(x|z)": log_pxz.detach(), "log p(z)": log_pz.detach(),
                        "log q(z|x)": log_qzx.detach(), "kl": kl.detach()})


def _mim_encoder_term(model: LatentVariableModel, x: torch.Tensor, beta: float,
                      log_qx: LogMarginal | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Encoder-sampled MIM term, Algorithm 1 lines 3-6.

    -1/2 [log p(x|z) + log p(z) + beta (log q(z|x) + log q(x))] with (x, z) ~ q(z|x) P(x).
    Without an exact ``log_qx``, log q(x) is the one-sample importance estimate
    of Eq. (15) / line 5, log p(x|z) + log p(z) - log q(z|x), and at beta = 1 the
    term reduces to line 6: -(log p(x|z) + log p(z)).
    """
    _, z, log_pxz, log_pz, log_qzx = _encoder_pass(model, x)
    lqx = log_qx(x) if log_qx is not None else log_pxz + log_pz - log_qzx
    value = -0.5 * (log_pxz + log_pz + beta * (log_qzx + lqx))
    return value, {"enc/log p(x|z)": log_pxz.detach(), "enc/log p(z)": log_pz.detach(),
                   "enc/log q(z|x)": log_qzx.detach(), "enc/log q(x)": lqx.detach()}


def leave_one_out_baseline(f: torch.Tensor) -> torch.Tensor:
    """b_i = mean of f_j over j != i along the last (batch) dimension; 0 for a batch of one."""
    n = f.shape[-1]
    if n < 2:
        return torch.zeros_like(f)
    return (f.sum(-1, keepdim=True) - f) / (n - 1)


def score_function_surrogate(f: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    r"""A term whose value is 0 and whose gradient is (f - b) grad log_prob (REINFORCE).

    ``f`` is the per-example cost whose expectation over the non-reparameterised
    sample is wanted, ``log_prob`` the log-density of that sample (differentiable),
    b the :func:`leave_one_out_baseline` of f. Returns s - stop_grad(s) with
    s = stop_grad(f - b) * log_prob, which is exactly zero for finite s.
    """
    f = f.detach()
    s = (f - leave_one_out_baseline(f)) * log_prob
    return s - s.detach()


def _mim_decoder_term(model: LatentVariableModel, batch_shape: torch.Size, beta: float,
                      log_qx: LogMarginal | None, score_function: bool = True
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Decoder-sampled MIM term, Algorithm 1 lines 7-11.

    z ~ P(z) (the anchor), x ~ p(x|z) (reparameterised where the decoder allows it);
    -1/2 [log p(x|z) + log p(z) + beta (log q(z|x) + log q(x))]. Without an
    exact ``log_qx``, log q(x) ~= log p(x|z) (Eq. (14) with one sample, line 10),
    which gives line 11 at beta = 1.

    Decoders without ``rsample`` (the Bernoulli image decoders). Here x is a
    plain sample, so the pathwise gradient misses the dependence of the
    sampling distribution p(x|z) on the parameters (and on z). Our choice: keep
    the *sampled binary* x (not the decoder mean, which is not a draw of the
    model) and add the score-function (REINFORCE) part of the gradient,

        grad E_{p(x|z)}[f(x, z)] = E[grad f(x, z)] + E[(f(x, z) - b) grad log p(x|z)],

    with f the per-example value of this term and b a leave-one-out baseline,
    b_i = mean of f over the *other* examples of the batch (last dimension).
    b_i does not depend on x_i, so it leaves the gradient unbiased while
    removing most of the variance of f's large common offset. The surrogate
    s - stop_grad(s), s = stop_grad(f - b) log p(x|z), is added to the value:
    it is exactly 0 in the forward pass, so the returned loss *value* is
    unchanged, and its gradient is the score-function term. The reparameterised
    path (decoders with ``rsample``) is left exactly as it was.
    ``score_function=False`` drops that term: the biased, pathwise-only gradient
    (an ablation; objective name ``"mim-pathwise"``).
    """
    anchor = model.anchor()
    z = draw(anchor.expand(batch_shape)) if anchor.batch_shape != batch_shape else draw(anchor)
    p_xz = model.decoder(z)
    x = draw(p_xz)
    log_pxz = p_xz.log_prob(x)
    log_pz = model.prior().log_prob(z)
    log_qzx = model.encoder(x).log_prob(z)
    lqx = log_qx(x) if log_qx is not None else log_pxz
    value = -0.5 * (log_pxz + log_pz + beta * (log_qzx + lqx))
    if score_function and not p_xz.has_rsample and torch.is_grad_enabled() and log_pxz.requires_grad:
        value = value + score_function_surrogate(value, log_pxz)
    return value, {"dec/log p(x|z)": log_pxz.detach(), "dec/log p(z)": log_pz.detach(),
                   "dec/log q(z|x)": log_qzx.detach(), "dec/log q(x)": lqx.detach()}


def mim(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0,
        log_qx: LogMarginal | None = None, score_function: bool = True) -> Loss:
    r"""MIM loss, paper Eq. (7) estimated as in Algorithm 1.

    L_MIM = E_{M_S}[-1/2 (log q(x, z) + log p(x, z))] with the sample mixture
    M_S = 1/2 (q(z|x) P(x) + p(x|z) P(z)); the estimate is the average of the
    encoder-sampled and the decoder-sampled terms (Algorithm 1 line 13 sums
    them, a factor of 2 that Adam does not see). ``log_qx``: an exact log q(x)
    if one is known (the theory chapters use it); by default the one-sample
    approximations of Eqs. (14)-(15). ``score_function``: whether a
    non-reparameterisable decoder sample gets its score-function gradient
    (see :func:`_mim_decoder_term`).
    """
    enc, t_enc = _mim_encoder_term(model, x, beta, log_qx)
    terms = {**t_enc}
    if beta > 0:
        dec, t_dec = _mim_decoder_term(model, enc.shape, beta, log_qx, score_function)
        terms.update(t_dec)
        value = 0.5 * (enc + beta * dec)
    else:
        value = 0.5 * enc
    return Loss(value, terms)


def amim(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0,
         log_qx: LogMarginal | None = None) -> Loss:
    r"""A-MIM (paper appendix E.2): the encoder-sampled MIM term only, M_S = q(z|x) P(x)."""
    value, terms = _mim_encoder_term(model, x, beta, log_qx)
    return Loss(value, terms)


def mim_pathwise(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0,
                 log_qx: LogMarginal | None = None) -> Loss:
    """MIM without the score-function gradient of non-reparameterisable decoder samples (an ablation:
    the gradient is biased; identical to :func:`mim` for reparameterisable decoders)."""
    return mim(model, x, beta, log_qx, score_function=False)


OBJECTIVES: dict[str, Callable[..., Loss]] = {"vae": vae, "mim": mim, "amim": amim,
                                              "mim-pathwise": mim_pathwise}


def get_objective(name: str) -> Callable[..., Loss]:
    """Look an objective up by name ('vae', 'mim' or 'amim')."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}") from None
