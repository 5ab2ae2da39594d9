"""Exact information quantities of MIM for discrete x and z (the theory chapters).

With x in {0, ..., n_x - 1} and z in {0, ..., n_z - 1} every distribution of the
paper's section 2 and appendices A-B is a small table, so every entropy, cross
entropy and KL divergence is a finite sum. The chapters and the tests use these
sums to check each statement of the paper exactly (to rounding), and
:class:`DiscreteModel` exposes the same tables through the model interface of
:mod:`mimlib.objectives`, so the Monte-Carlo training loss can be compared with
its exact value.

Conventions. A joint distribution over (x, z) is an array ``J`` of shape
``(n_x, n_z)`` with ``J[x, z]``; the encoder is ``q_z_given_x[x, z] = q(z|x)``
(rows sum to 1) and the decoder ``p_x_given_z[z, x] = p(x|z)`` (rows sum to 1).
Logarithms are natural (nats). ``0 log 0 = 0``; a KL divergence or cross
entropy is ``inf`` when the first argument puts mass where the second has none.

Names (paper notation):

* A_q = q(z|x) P(x), A_p = p(x|z) P(z): the anchored encoding / decoding joints
* M_S = (A_q + A_p) / 2: the sample mixture
* q(x, z) = q(z|x) q(x), p(x, z) = p(x|z) p(z): the model joints
* M_theta = (q(x, z) + p(x, z)) / 2: the model mixture
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.special import entr, rel_entr, xlogy
from torch import distributions as td

__all__ = [
    "DiscreteMIM", "DiscreteModel", "random_instance", "random_instances", "from_model_joint", "with_anchor_priors",
    "with_marginal_qx",
    "entropy", "cross_entropy", "kl", "mutual_information", "marginals",
    "anchored_encoding", "anchored_decoding", "sample_mixture",
    "model_encoding", "model_decoding", "model_mixture",
    "decoder_marginal", "elbo", "vae_loss", "jsd", "r_h", "skl",
    "l_ce", "l_mim", "r_mim", "prior_matching_kl", "consistency_kl", "l_mim_algorithm1",
    "TABLE_INSTANCES", "table_instances", "sweep_instances", "agree",
]

Array = NDArray[np.float64]
SUM_TOL = 1e-9


# ----------------------------------------------------------------------------- the instance

def _probabilities(name: str, value: ArrayLike, shape: tuple[int, ...]) -> Array:
    """A read-only float64 copy of ``value``, checked to hold distributions along its last axis."""
    a = np.array(value, dtype=np.float64, copy=True)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    if np.any(a < 0):
        raise ValueError(f"{name} has negative entries (min {a.min():.3g})")
    sums = a.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > SUM_TOL):
        worst = float(np.max(np.abs(sums - 1.0)))
        raise ValueError(f"{name} must sum to 1 along its last axis within {SUM_TOL:g} "
                         f"(worst deviation {worst:.3g})")
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class DiscreteMIM:
    """The six tables of a discrete MIM problem (paper section 2).

    anchor_x:    P(x), shape (n_x,)        -- data anchor
    anchor_z:    P(z), shape (n_z,)        -- latent anchor
    q_z_given_x: q(z|x), shape (n_x, n_z)  -- encoder, rows sum to 1
    p_x_given_z: p(x|z), shape (n_z, n_x)  -- decoder, rows sum to 1
    q_x:         q(x), shape (n_x,)        -- model data prior of q(x, z) = q(z|x) q(x)
    p_z:         p(z), shape (n_z,)        -- model latent prior of p(x, z) = p(x|z) p(z)

    Arrays are copied to read-only float64; a ValueError names the first table
    with a wrong shape, a negative or non-finite entry, or a row whose sum is
    not 1 within 1e-9.
    """

    anchor_x: Array
    anchor_z: Array
    q_z_given_x: Array
    p_x_given_z: Array
    q_x: Array
    p_z: Array

    def __post_init__(self) -> None:
        ax = np.asarray(self.anchor_x)
        az = np.asarray(self.anchor_z)
        if ax.ndim != 1 or ax.size < 1:
            raise ValueError(f"anchor_x must be a non-empty 1-D array, got shape {ax.shape}")
        if az.ndim != 1 or az.size < 1:
            raise ValueError(f"anchor_z must be a non-empty 1-D array, got shape {az.shape}")
        n_x, n_z = ax.size, az.size
        shapes = {"anchor_x": (n_x,), "anchor_z": (n_z,), "q_z_given_x": (n_x, n_z),
                  "p_x_given_z": (n_z, n_x), "q_x": (n_x,), "p_z": (n_z,)}
        for name, shape in shapes.items():
            object.__setattr__(self, name, _probabilities(name, getattr(self, name), shape))

    @property
    def n_x(self) -> int:
        return self.anchor_x.size

    @property
    def n_z(self) -> int:
        return self.anchor_z.size


def random_instance(rng: np.random.Generator, n_x: int, n_z: int,
                    concentration: float = 1.0) -> DiscreteMIM:
    """Six independent Dirichlet(concentration) tables: a generic, full-support instance.

    Small ``concentration`` (e.g. 0.1) gives near-degenerate tables (entries
    down to ~1e-30); 1.0 is uniform on each simplex.
    """
    def simplex(*shape: int) -> Array:
        return rng.dirichlet(np.full(shape[-1], concentration), size=shape[:-1] or None)

    return DiscreteMIM(anchor_x=simplex(n_x), anchor_z=simplex(n_z),
                       q_z_given_x=simplex(n_x, n_z), p_x_given_z=simplex(n_z, n_x),
                       q_x=simplex(n_x), p_z=simplex(n_z))


def random_instances(rng: np.random.Generator, count: int, max_n: int = 6,
                     concentrations: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)) -> list[DiscreteMIM]:
    """``count`` random instances of random sizes 1..max_n and random concentrations (the sweeps)."""
    out = []
    for _ in range(count):
        n_x, n_z = rng.integers(1, max_n + 1, size=2)
        out.append(random_instance(rng, int(n_x), int(n_z), float(rng.choice(concentrations))))
    return out


def from_model_joint(joint: ArrayLike, anchor_x: ArrayLike, anchor_z: ArrayLike) -> DiscreteMIM:
    """A consistent model: both factorisations of one joint, q(x, z) = p(x, z) = ``joint``.

    q(z|x) q(x) and p(x|z) p(z) are the two chain-rule factorisations of
    ``joint`` (which must have no all-zero row or column), so R_MIM = 0.
    """
    j = np.asarray(joint, dtype=np.float64)
    jx, jz = j.sum(axis=1), j.sum(axis=0)
    if np.any(jx <= 0) or np.any(jz <= 0):
        raise ValueError("joint must have no all-zero row or column")
    return DiscreteMIM(anchor_x=anchor_x, anchor_z=anchor_z,
                       q_z_given_x=j / jx[:, None], p_x_given_z=(j / jz[None, :]).T,
                       q_x=jx, p_z=jz)


def with_anchor_priors(m: DiscreteMIM) -> DiscreteMIM:
    """The same encoder and decoder with q(x) = P(x) and p(z) = P(z) (appendix B's special case)."""
    return dataclasses.replace(m, q_x=m.anchor_x, p_z=m.anchor_z)


def with_marginal_qx(m: DiscreteMIM) -> DiscreteMIM:
    """Algorithm 1's model: p(z) = P(z) and q(x) = sum_z p(x|z) P(z) (Eq. 14, appendix C)."""
    return dataclasses.replace(m, p_z=m.anchor_z, q_x=decoder_marginal(m))


# ----------------------------------------------------------------------------- basic quantities

def entropy(p: ArrayLike) -> float:
    """H(p) = -sum p log p over all entries of ``p`` (0 log 0 = 0); R_H and Eq. 12 are made of it."""
    return float(np.sum(entr(np.asarray(p, dtype=np.float64))))


def cross_entropy(p: ArrayLike, q: ArrayLike) -> float:
    """H(p, q) = -sum p log q (inf if q = 0 where p > 0); H(p, q) = H(p) + KL(p || q) (Eqs. 4-7)."""
    return float(-np.sum(xlogy(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))))


def kl(p: ArrayLike, q: ArrayLike) -> float:
    """KL(p || q) = sum p log(p / q) (0 where p = 0, inf where p > 0 = q); Eqs. 2, 3, 5, 10-13."""
    return float(np.sum(rel_entr(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))))


def marginals(joint: ArrayLike) -> tuple[Array, Array]:
    """The x- and z-marginals of a joint table J[x, z] (H_{M_S}(x), H_{M_S}(z) of Eq. 12)."""
    j = np.asarray(joint, dtype=np.float64)
    return j.sum(axis=1), j.sum(axis=0)


def mutual_information(joint: ArrayLike) -> float:
    """I(x; z) = KL(J || J(x) J(z)) of a joint table; equals H(x) + H(z) - H(x, z) (Eq. 12)."""
    jx, jz = marginals(joint)
    return kl(joint, np.outer(jx, jz))


# ----------------------------------------------------------------------------- the four joints

def anchored_encoding(m: DiscreteMIM) -> Array:
    """A_q(x, z) = q(z|x) P(x), the anchored encoding joint (Eq. 2, 3)."""
    return m.q_z_given_x * m.anchor_x[:, None]


def anchored_decoding(m: DiscreteMIM) -> Array:
    """A_p(x, z) = p(x|z) P(z), the anchored decoding joint (Eq. 2, 3), indexed [x, z]."""
    return (m.p_x_given_z * m.anchor_z[:, None]).T


def sample_mixture(m: DiscreteMIM) -> Array:
    """M_S = (A_p + A_q) / 2, the sample distribution of MIM (section 2)."""
    return 0.5 * (anchored_encoding(m) + anchored_decoding(m))


def model_encoding(m: DiscreteMIM) -> Array:
    """q(x, z) = q(z|x) q(x), the model encoding joint (appendix A)."""
    return m.q_z_given_x * m.q_x[:, None]


def model_decoding(m: DiscreteMIM) -> Array:
    """p(x, z) = p(x|z) p(z), the model decoding joint (appendix A), indexed [x, z]."""
    return (m.p_x_given_z * m.p_z[:, None]).T


def model_mixture(m: DiscreteMIM) -> Array:
    """M_theta = (p(x, z) + q(x, z)) / 2 (Eq. 6)."""
    return 0.5 * (model_encoding(m) + model_decoding(m))


# ----------------------------------------------------------------------------- VAE

def decoder_marginal(m: DiscreteMIM) -> Array:
    """sum_z p(x|z) P(z): the VAE's model density (section 1) and Eq. 14's q(x)."""
    return anchored_decoding(m).sum(axis=1)


def elbo(m: DiscreteMIM) -> Array:
    """ELBO(x) = E_{q(z|x)}[log p(x|z) + log P(z) - log q(z|x)] for every x (Eq. 1)."""
    return -np.sum(rel_entr(m.q_z_given_x, anchored_decoding(m)), axis=1)


def vae_loss(m: DiscreteMIM) -> float:
    """L_VAE = -E_{P(x)} ELBO(x), the negative ELBO averaged over the data anchor (Eq. 1-2).

    Computed term by term as E_{A_q}[-log p(x|z) - log P(z) + log q(z|x)].
    """
    a_q = anchored_encoding(m)
    return float(np.sum(-xlogy(a_q, m.p_x_given_z.T) - xlogy(a_q, m.anchor_z[None, :])
                        + m.anchor_x[:, None] * xlogy(m.q_z_given_x, m.q_z_given_x)))


# ----------------------------------------------------------------------------- MIM

def jsd(m: DiscreteMIM) -> float:
    """JSD = 1/2 [KL(A_p || M_S) + KL(A_q || M_S)] (Eq. 3)."""
    ms = sample_mixture(m)
    return 0.5 * (kl(anchored_decoding(m), ms) + kl(anchored_encoding(m), ms))


def r_h(m: DiscreteMIM) -> float:
    """R_H = 1/2 [H_{A_q}(x, z) + H_{A_p}(x, z)], the joint-entropy regulariser (section 2)."""
    return 0.5 * (entropy(anchored_encoding(m)) + entropy(anchored_decoding(m)))


def skl(m: DiscreteMIM) -> float:
    """SKL = 1/2 [KL(A_p || A_q) + KL(A_q || A_p)] (appendix B; note the factor 1/2)."""
    a_q, a_p = anchored_encoding(m), anchored_decoding(m)
    return 0.5 * (kl(a_p, a_q) + kl(a_q, a_p))


def l_ce(m: DiscreteMIM) -> float:
    """L_CE = H(M_S, M_theta), the cross-entropy loss (Eq. 5)."""
    return cross_entropy(sample_mixture(m), model_mixture(m))


def l_mim(m: DiscreteMIM) -> float:
    """L_MIM = 1/2 [H(M_S, q(x, z)) + H(M_S, p(x, z))], the MIM loss (Eq. 4, 7)."""
    ms = sample_mixture(m)
    return 0.5 * (cross_entropy(ms, model_encoding(m)) + cross_entropy(ms, model_decoding(m)))


def r_mim(m: DiscreteMIM) -> float:
    """R_MIM = E_{M_S}[-log( sqrt(q p) / ((q + p)/2) )], the consistency regulariser (Eq. 9-10).

    Evaluated pointwise (not as L_MIM - L_CE): with a = log q(x, z), b = log p(x, z)
    the integrand is logaddexp(a, b) - log 2 - (a + b)/2 >= 0, zero iff a = b.
    Where M_S > 0 and exactly one of q, p vanishes the integrand is inf; where
    both vanish it is taken as 0 (q = p there), so L_MIM = L_CE + R_MIM still
    holds, as inf = inf.
    """
    ms, q, p = sample_mixture(m), model_encoding(m), model_decoding(m)
    both = (q > 0) & (p > 0)
    with np.errstate(divide="ignore"):
        a, b = np.log(np.where(both, q, 1.0)), np.log(np.where(both, p, 1.0))
    gap = np.where(both, np.logaddexp(a, b) - np.log(2.0) - 0.5 * (a + b),
                   np.where(q == p, 0.0, np.inf))
    gap = np.maximum(gap, 0.0)  # rounding can make a zero gap -1e-17
    support = ms > 0
    return float(np.sum(ms[support] * gap[support]))


def prior_matching_kl(m: DiscreteMIM) -> float:
    """1/4 [KL(P(z) || p(z)) + KL(P(x) || q(x))], the second term of Eq. 11."""
    return 0.25 * (kl(m.anchor_z, m.p_z) + kl(m.anchor_x, m.q_x))


def consistency_kl(m: DiscreteMIM) -> float:
    """1/4 [KL(q(z|x) P(x) || p(x, z)) + KL(p(x|z) P(z) || q(x, z))], the third term of Eq. 11."""
    return 0.25 * (kl(anchored_encoding(m), model_decoding(m))
                   + kl(anchored_decoding(m), model_encoding(m)))


def l_mim_algorithm1(m: DiscreteMIM) -> float:
    """The expectation of Algorithm 1's loss (halved, as ``objectives.mim`` does), by enumeration.

    Lines 3-6: E_{A_q}[-(log p(x|z) + log p(z))] (log q(x) replaced by the
    one-sample importance estimate of Eq. 15); lines 8-11:
    E_{A_p}[-1/2 (log q(z|x) + 2 log p(x|z) + log p(z))] (log q(x) replaced by
    log p(x|z), Eq. 14 with one sample). Returns the average of the two.
    """
    a_q, a_p = anchored_encoding(m), anchored_decoding(m)
    dec_xz = m.p_x_given_z.T  # p(x|z) indexed [x, z]
    enc = -np.sum(xlogy(a_q, dec_xz) + xlogy(a_q, m.p_z[None, :]))
    dec = -0.5 * np.sum(xlogy(a_p, m.q_z_given_x) + 2.0 * xlogy(a_p, dec_xz)
                        + xlogy(a_p, m.p_z[None, :]))
    return float(0.5 * (enc + dec))


# ----------------------------------------------------------------------------- torch model

class DiscreteModel:
    """The tables of a :class:`DiscreteMIM` behind the interface of :mod:`mimlib.objectives`.

    encoder(x) -> Categorical q(z|x); decoder(z) -> Categorical p(x|z);
    prior() -> Categorical p(z); anchor() -> Categorical P(z); log_qx(x) -> exact
    log q(x). x and z are integer tensors; the tables are float64 tensors.
    """

    def __init__(self, m: DiscreteMIM) -> None:
        self.tables = m
        self.q_z_given_x = torch.as_tensor(np.array(m.q_z_given_x))
        self.p_x_given_z = torch.as_tensor(np.array(m.p_x_given_z))
        self.p_z = torch.as_tensor(np.array(m.p_z))
        self.anchor_z = torch.as_tensor(np.array(m.anchor_z))
        self.anchor_x = torch.as_tensor(np.array(m.anchor_x))
        with np.errstate(divide="ignore"):
            self._log_q_x = torch.as_tensor(np.log(m.q_x))

    def encoder(self, x: torch.Tensor) -> td.Categorical:
        return td.Categorical(probs=self.q_z_given_x[x])

    def decoder(self, z: torch.Tensor) -> td.Categorical:
        return td.Categorical(probs=self.p_x_given_z[z])

    def prior(self) -> td.Categorical:
        return td.Categorical(probs=self.p_z)

    def anchor(self) -> td.Categorical:
        return td.Categorical(probs=self.anchor_z)

    def data(self) -> td.Categorical:
        """The data anchor P(x), to draw the x the objectives are given."""
        return td.Categorical(probs=self.anchor_x)

    def log_qx(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log q(x), the ``log_qx`` argument of :func:`mimlib.objectives.mim`."""
        return self._log_q_x[x]



# ----------------------------------------------------------------------------- the chapters' instances

#: The instances of the theory chapters' tables: (seed, n_x, n_z, Dirichlet concentration).
TABLE_INSTANCES = ((0, 2, 2, 1.0), (1, 3, 4, 1.0), (2, 5, 3, 0.3), (3, 4, 6, 3.0))


def table_instances() -> dict[int, DiscreteMIM]:
    """The four fixed random instances every theory chapter tabulates, keyed by seed."""
    return {seed: random_instance(np.random.default_rng(seed), n_x, n_z, conc)
            for seed, n_x, n_z, conc in TABLE_INSTANCES}


def sweep_instances(count: int) -> list[DiscreteMIM]:
    """``count`` further random instances (sizes 1-6, concentrations 0.1-5) each identity is swept over."""
    return random_instances(np.random.default_rng(1234), count)


def agree(a: float, b: float) -> bool:
    """Equal up to the floating-point rounding of sums of a few dozen terms (rtol 1e-10, atol 1e-12)."""
    return bool(np.isclose(a, b, rtol=1e-10, atol=1e-12))
