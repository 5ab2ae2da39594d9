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
term. For MIM and A-MIM, where the paper is silent, :class:`MIMOptions` names
the choices (each tested, chapter 04 and 05 say which the presets use):

* ``warmup="rescale"`` (ours): beta scales the two terms that only MIM has,
  log q(z|x) + log q(x); with the one-sample log q(x) of Algorithm 1 the
  encoder-sampled term is then -(1+beta)/2 [log p(x|z) + log p(z)], a pure
  rescaling. ``warmup="reference"`` (the reference code's image models): beta
  also multiplies the prior of the top latent inside log p(z) = log p(z1|z2) +
  log p(z2), giving -(1+beta)/2 [log p(x|z) + log p(z1|z2) + beta log p(z2)]
  (one-level latents: beta log p(z); the reference's 2-D code uses "rescale");
* ``decoder_start="always"`` (ours): the decoder-sampled half from the first
  step, weighted by beta; ``"after_warmup"`` (reference): only once beta = 1;
* ``decoder_z="anchor"`` (ours, the paper's section 2): that half draws z from
  the anchor P(z) = N(0, I); ``"prior"`` (reference): from the model prior p(z)
  (the VampPrior, where the model learns one);
* ``score_cost="full"`` (ours until now): the score-function term of a
  non-reparameterisable decoder sample weighs grad log p(x|z) by the whole
  per-example cost f; ``"x_dependent"``: by the part of f that depends on x
  given z (dropping log p(z) and every other x-independent term, which only
  adds variance: the gradient stays unbiased).

At ``beta = 1`` every combination is exactly the paper's objective.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import distributions as td

from .distributions import draw

__all__ = ["Loss", "LatentVariableModel", "MIMOptions", "vae", "mim", "amim", "mim_pathwise", "OBJECTIVES",
           "get_objective", "leave_one_out_baseline", "score_function_surrogate"]


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


@dataclass(frozen=True)
class MIMOptions:
    """How MIM / A-MIM are warmed up and how the decoder-sampled half is drawn (module docstring).

    The defaults are this book's choices; :meth:`reference` is the reference code's configuration.
    """

    warmup: str = "rescale"          # "rescale" | "reference"
    decoder_start: str = "always"    # "always" | "after_warmup"
    decoder_z: str = "anchor"        # "anchor" | "prior"
    score_cost: str = "full"         # "full" | "x_dependent"

    CHOICES = {"warmup": ("rescale", "reference"), "decoder_start": ("always", "after_warmup"),
               "decoder_z": ("anchor", "prior"), "score_cost": ("full", "x_dependent")}

    def __post_init__(self):
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MIMOptions.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")

    @classmethod
    def reference(cls) -> "MIMOptions":
        """The reference code's image configuration (its score cost is the full loss)."""
        return cls(warmup="reference", decoder_start="after_warmup", decoder_z="prior", score_cost="full")


def _annealed_log_prior(model: LatentVariableModel, z: torch.Tensor, beta: float, warmup: str
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(z), the log p(z) the MIM terms use): equal for ``warmup="rescale"``; for ``"reference"``
    the top latent's prior weighted by beta: log p(z1|z2) + beta log p(z2) (one level: beta log p(z))."""
    prior = model.prior()
    log_pz = prior.log_prob(z)
    if warmup == "rescale" or beta == 1.0:
        return log_pz, log_pz
    top = getattr(prior, "top", None)
    log_top = top.log_prob(prior.split(z)[1]) if top is not None else log_pz
    return log_pz, log_pz - (1.0 - beta) * log_top


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
                      log_qx: LogMarginal | None, warmup: str = "rescale"
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Encoder-sampled MIM term, Algorithm 1 lines 3-6.

    -1/2 [log p(x|z) + log p(z) + beta (log q(z|x) + log q(x))] with (x, z) ~ q(z|x) P(x).
    Without an exact ``log_qx``, log q(x) is the one-sample importance estimate
    of Eq. (15) / line 5, log p(x|z) + log p(z) - log q(z|x), and at beta = 1 the
    term reduces to line 6: -(log p(x|z) + log p(z)). With ``warmup="reference"``,
    log p(z) in both places is :func:`_annealed_log_prior`'s.
    """
    q_zx = model.encoder(x)
    z = draw(q_zx)
    log_qzx = q_zx.log_prob(z)
    log_pxz = model.decoder(z).log_prob(x)
    log_pz, log_pz_w = _annealed_log_prior(model, z, beta, warmup)
    lqx = log_qx(x) if log_qx is not None else log_pxz + log_pz_w - log_qzx
    value = -0.5 * (log_pxz + log_pz_w + beta * (log_qzx + lqx))
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
                      log_qx: LogMarginal | None, score_function: bool = True,
                      options: MIMOptions = MIMOptions()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
    (an ablation; objective name ``"mim-pathwise"``). ``options.score_cost="x_dependent"``
    weighs the score by the x-dependent part of f only, -1/2 [log p(x|z) + beta (log q(z|x) +
    log q(x))]: the rest of f does not depend on x given z, so its product with grad log p(x|z)
    has expectation zero and only adds variance. ``options.decoder_z="prior"`` draws z from the
    model prior p(z) instead of the anchor; ``options.warmup`` as for the encoder term.
    """
    source = model.anchor() if options.decoder_z == "anchor" else model.prior()
    z = draw(source.expand(batch_shape)) if source.batch_shape != batch_shape else draw(source)
    p_xz = model.decoder(z)
    x = draw(p_xz)
    log_pxz = p_xz.log_prob(x)
    log_pz, log_pz_w = _annealed_log_prior(model, z, beta, options.warmup)
    log_qzx = model.encoder(x).log_prob(z)
    lqx = log_qx(x) if log_qx is not None else log_pxz
    value = -0.5 * (log_pxz + log_pz_w + beta * (log_qzx + lqx))
    if score_function and not p_xz.has_rsample and torch.is_grad_enabled() and log_pxz.requires_grad:
        cost = value if options.score_cost == "full" else -0.5 * (log_pxz + beta * (log_qzx + lqx))
        value = value + score_function_surrogate(cost, log_pxz)
    return value, {"dec/log p(x|z)": log_pxz.detach(), "dec/log p(z)": log_pz.detach(),
                   "dec/log q(z|x)": log_qzx.detach(), "dec/log q(x)": lqx.detach()}


def mim(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0,
        log_qx: LogMarginal | None = None, score_function: bool = True,
        options: MIMOptions = MIMOptions()) -> Loss:
    r"""MIM loss, paper Eq. (7) estimated as in Algorithm 1.

    L_MIM = E_{M_S}[-1/2 (log q(x, z) + log p(x, z))] with the sample mixture
    M_S = 1/2 (q(z|x) P(x) + p(x|z) P(z)); the estimate is the average of the
    encoder-sampled and the decoder-sampled terms (Algorithm 1 line 13 sums
    them, a factor of 2 that Adam does not see). ``log_qx``: an exact log q(x)
    if one is known (the theory chapters use it); by default the one-sample
    approximations of Eqs. (14)-(15). ``score_function``: whether a
    non-reparameterisable decoder sample gets its score-function gradient
    (see :func:`_mim_decoder_term`). ``options``: :class:`MIMOptions` (warm-up placement,
    when the decoder-sampled half starts and with which weight, its z, its score cost).
    """
    enc, t_enc = _mim_encoder_term(model, x, beta, log_qx, options.warmup)
    terms = {**t_enc}
    weight = beta if options.decoder_start == "always" else float(beta >= 1.0)
    if weight > 0:
        dec, t_dec = _mim_decoder_term(model, enc.shape, beta, log_qx, score_function, options)
        terms.update(t_dec)
        value = 0.5 * (enc + weight * dec)
    else:
        value = 0.5 * enc
    return Loss(value, terms)


def amim(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0,
         log_qx: LogMarginal | None = None, options: MIMOptions = MIMOptions()) -> Loss:
    r"""A-MIM (paper appendix E.2): the encoder-sampled MIM term only, M_S = q(z|x) P(x)
    (``options.warmup`` applies; the decoder-sampled options have nothing to act on)."""
    value, terms = _mim_encoder_term(model, x, beta, log_qx, options.warmup)
    return Loss(value, terms)


def mim_pathwise(model: LatentVariableModel, x: torch.Tensor, beta: float = 1.0,
                 log_qx: LogMarginal | None = None, options: MIMOptions = MIMOptions()) -> Loss:
    """MIM without the score-function gradient of non-reparameterisable decoder samples (an ablation:
    the gradient is biased; identical to :func:`mim` for reparameterisable decoders)."""
    return mim(model, x, beta, log_qx, score_function=False, options=options)


OBJECTIVES: dict[str, Callable[..., Loss]] = {"vae": vae, "mim": mim, "amim": amim,
                                              "mim-pathwise": mim_pathwise}


def get_objective(name: str, options: MIMOptions | None = None) -> Callable[..., Loss]:
    """Look an objective up by name ('vae', 'mim', 'amim', 'mim-pathwise'); ``options`` (MIM / A-MIM
    only, :class:`MIMOptions`) are bound to it. Default options give the plain function."""
    try:
        fn = OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}") from None
    if options is None or options == MIMOptions() or name == "vae":
        return fn
    return functools.partial(fn, options=options)
