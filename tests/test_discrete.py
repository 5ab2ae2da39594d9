"""Exact checks of the paper's section 2 and appendices A-B on discrete models.

Every quantity is a finite sum (mimlib.discrete), so identities must hold to
rounding (1e-10 relative) and inequalities with a 1e-12 slack, for generic and
near-degenerate instances (entries down to ~1e-12). The last tests tie the
exact L_MIM to the Monte-Carlo loss of mimlib.objectives.mim.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mimlib import discrete as d
from mimlib.objectives import mim

TINY = 1e-12
LOG2 = float(np.log(2.0))
EXAMPLES = settings(max_examples=200, deadline=None, database=None)


def close(lhs: float, rhs: float, rtol: float = 1e-10) -> bool:
    return abs(lhs - rhs) <= rtol * max(1.0, abs(lhs))


# ----------------------------------------------------------------------------- strategies

@st.composite
def simplex_rows(draw: st.DrawFn, shape: tuple[int, ...]) -> np.ndarray:
    """Non-negative weights, some forced to 1e-12, normalised along the last axis."""
    weights = draw(arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
    tiny = draw(arrays(np.bool_, shape))
    weights = np.where(tiny | (weights < TINY), TINY, weights)
    return weights / weights.sum(axis=-1, keepdims=True)


@st.composite
def instances(draw: st.DrawFn, max_n: int = 4) -> d.DiscreteMIM:
    n_x = draw(st.integers(1, max_n))
    n_z = draw(st.integers(1, max_n))
    return d.DiscreteMIM(anchor_x=draw(simplex_rows((n_x,))), anchor_z=draw(simplex_rows((n_z,))),
                         q_z_given_x=draw(simplex_rows((n_x, n_z))),
                         p_x_given_z=draw(simplex_rows((n_z, n_x))),
                         q_x=draw(simplex_rows((n_x,))), p_z=draw(simplex_rows((n_z,))))


@st.composite
def consistent_instances(draw: st.DrawFn, max_n: int = 4) -> d.DiscreteMIM:
    """q(x, z) = p(x, z): both model joints are the same (random, near-degenerate) table."""
    m = draw(instances(max_n))
    joint = draw(simplex_rows((m.n_x * m.n_z,))).reshape(m.n_x, m.n_z)
    return d.from_model_joint(joint, m.anchor_x, m.anchor_z)


# ----------------------------------------------------------------------------- section 2, Eq. 2-3

@EXAMPLES
@given(instances())
def test_vae_loss_is_joint_kl_plus_data_entropy(m: d.DiscreteMIM) -> None:
    """Eq. 2: L_VAE = KL(q(z|x)P(x) || p(x|z)P(z)) + H(P(x)); hence E_P ELBO <= -H(P) = E_P log P."""
    a_q, a_p = d.anchored_encoding(m), d.anchored_decoding(m)
    assert close(d.vae_loss(m), d.kl(a_q, a_p) + d.entropy(m.anchor_x))
    assert d.vae_loss(m) >= d.entropy(m.anchor_x) - 1e-12
    # Eq. 1 holds for the model marginal sum_z p(x|z) P(z), pointwise in x
    assert np.all(d.elbo(m) <= np.log(d.decoder_marginal(m)) + 1e-12)
    # the rate term: E_P KL(q(z|x) || P(z)) = I_{A_q}(x; z) + KL(q(z) || P(z))
    rate = d.kl(a_q, np.outer(m.anchor_x, m.anchor_z))
    assert close(rate, d.mutual_information(a_q) + d.kl(a_q.sum(axis=0), m.anchor_z))


@EXAMPLES
@given(instances())
def test_mixture_entropy_is_jsd_plus_r_h(m: d.DiscreteMIM) -> None:
    """Section 2: H_{M_S}(x, z) = JSD + R_H, with 0 <= JSD <= log 2."""
    h_ms = d.entropy(d.sample_mixture(m))
    assert close(h_ms, d.jsd(m) + d.r_h(m))
    assert -1e-12 <= d.jsd(m) <= LOG2 + 1e-12
    assert d.r_h(m) <= h_ms + 1e-12


# ----------------------------------------------------------------------------- appendix A, Eq. 4-12

@EXAMPLES
@given(instances())
def test_mim_bound_chain(m: d.DiscreteMIM) -> None:
    """Eq. 4, 5, 8, 12: H(M_S) <= L_CE = H(M_S) + KL(M_S || M_theta) <= L_MIM = L_CE + R_MIM."""
    ms, mt = d.sample_mixture(m), d.model_mixture(m)
    h_ms, lce, lmim, rmim = d.entropy(ms), d.l_ce(m), d.l_mim(m), d.r_mim(m)
    assert close(lce, h_ms + d.kl(ms, mt))
    assert h_ms <= lce + 1e-12
    assert lce <= lmim + 1e-12
    assert rmim >= 0.0
    assert close(lmim, lce + rmim)
    # Eq. 10, second form: R_MIM = 1/2 [KL(M_S || p) + KL(M_S || q)] - KL(M_S || M_theta)
    kl_form = 0.5 * (d.kl(ms, d.model_decoding(m)) + d.kl(ms, d.model_encoding(m))) - d.kl(ms, mt)
    assert close(rmim, kl_form, rtol=1e-9)


@EXAMPLES
@given(instances())
def test_mim_decomposition_eq11(m: d.DiscreteMIM) -> None:
    """Eq. 11: L_MIM = R_H + 1/4 [KL(P(z)||p(z)) + KL(P(x)||q(x))] + 1/4 [KL(A_q||p) + KL(A_p||q)]."""
    assert close(d.l_mim(m), d.r_h(m) + d.prior_matching_kl(m) + d.consistency_kl(m))
    assert d.l_mim(m) >= d.r_h(m) - 1e-12


@EXAMPLES
@given(instances())
def test_mixture_entropy_marginals_eq12(m: d.DiscreteMIM) -> None:
    """Eq. 12, last line: H(M_S) = H_{M_S}(x) + H_{M_S}(z) - I_{M_S}(x; z), I >= 0."""
    ms = d.sample_mixture(m)
    mx, mz = d.marginals(ms)
    mi = d.mutual_information(ms)
    assert mi >= -1e-15
    assert close(d.entropy(ms), d.entropy(mx) + d.entropy(mz) - mi)


@EXAMPLES
@given(consistent_instances())
def test_consistent_model_has_zero_r_mim(m: d.DiscreteMIM) -> None:
    """R_MIM = 0 and L_MIM = L_CE when q(x, z) = p(x, z)."""
    assert d.r_mim(m) < 1e-12
    assert close(d.l_mim(m), d.l_ce(m))


# ----------------------------------------------------------------------------- appendix B, Eq. 13

@EXAMPLES
@given(instances())
def test_skl_relations(m: d.DiscreteMIM) -> None:
    """Appendix B: JSD <= SKL/2; SKL/2 + R_H = mean of H(M_S, A_q), H(M_S, A_p);
    SKL/2 = 1/2 [KL(M_S||A_q) + KL(M_S||A_p)] + JSD."""
    a_q, a_p, ms = d.anchored_encoding(m), d.anchored_decoding(m), d.sample_mixture(m)
    half_skl = 0.5 * d.skl(m)
    assert d.jsd(m) <= half_skl + 1e-12
    # Eq. 13 line by line (each right-hand side from its own formula)
    line1 = 0.25 * (d.entropy(a_p) + d.cross_entropy(a_p, a_q)
                    + d.entropy(a_q) + d.cross_entropy(a_q, a_p)) - d.r_h(m)
    line2 = 0.25 * (d.cross_entropy(a_p, a_q) + d.cross_entropy(a_q, a_p) + 2 * d.r_h(m)) - d.r_h(m)
    line3 = 0.25 * (d.kl(a_p, a_q) + d.kl(a_q, a_p) + 4 * d.r_h(m)) - d.r_h(m)
    assert d.jsd(m) <= line1 + 1e-12
    for line in (line2, line3):
        assert close(line, line1, rtol=1e-9)
    assert close(line3, half_skl, rtol=1e-9)
    assert close(half_skl + d.r_h(m), 0.5 * (d.cross_entropy(ms, a_q) + d.cross_entropy(ms, a_p)))
    assert close(half_skl, 0.5 * (d.kl(ms, a_q) + d.kl(ms, a_p)) + d.jsd(m), rtol=1e-9)


@EXAMPLES
@given(instances())
def test_mim_equals_regularised_skl_with_anchor_priors(m: d.DiscreteMIM) -> None:
    """Appendix B: with q(x) = P(x), p(z) = P(z), L_MIM = SKL/2 + R_H (not SKL + R_H);
    otherwise the difference is 1/2 E_{M_S}[log P(x)/q(x) + log P(z)/p(z)], of either sign."""
    a = d.with_anchor_priors(m)
    reg = 0.5 * d.skl(a) + d.r_h(a)
    assert close(d.l_mim(a), reg)
    assert d.prior_matching_kl(a) == 0.0
    # general priors: L_MIM - reg = 1/2 E_{M_S}[log P(x)/q(x) + log P(z)/p(z)]
    ms = d.sample_mixture(m)
    gap = 0.5 * float(np.sum(ms * (np.log(m.anchor_x / m.q_x)[:, None] + np.log(m.anchor_z / m.p_z)[None, :])))
    assert close(d.l_mim(m) - reg, gap, rtol=1e-9)
    # the marginals of M_S are the best model priors, and they go below the regularised SKL
    mx, mz = d.marginals(ms)
    best = dataclasses.replace(m, q_x=mx, p_z=mz)
    assert d.l_mim(best) <= min(d.l_mim(m), d.l_mim(a)) + 1e-12
    assert close(d.l_mim(best) - reg, -0.5 * (d.kl(mx, m.anchor_x) + d.kl(mz, m.anchor_z)), rtol=1e-9)


# ----------------------------------------------------------------------------- deterministic cases

def test_equality_and_counterexample_cases() -> None:
    rng = np.random.default_rng(0)
    m = d.random_instance(rng, 3, 4)
    # A_q = A_p: JSD = SKL = 0 and H(M_S) = R_H
    joint = d.sample_mixture(m)
    same = d.from_model_joint(joint, joint.sum(1), joint.sum(0))
    assert d.jsd(same) < 1e-15 and d.skl(same) < 1e-15
    # L_MIM is no bound on SKL/2 + R_H in general: both signs occur
    signs = set()
    for _ in range(50):
        r = d.random_instance(rng, 3, 3)
        signs.add(bool(d.l_mim(r) > 0.5 * d.skl(r) + d.r_h(r)))
    assert signs == {True, False}
    # Eq. 1 read with the data anchor P(x) fails pointwise for some x
    assert any(np.any(d.elbo(r) > np.log(r.anchor_x))
               for r in (d.random_instance(rng, 4, 2) for _ in range(20)))


def test_l_ce_tight_while_model_inconsistent() -> None:
    """L_CE = H(M_S) does not force q(x, z) = p(x, z): identity coder, priors swapped."""
    px, pz = np.array([0.7, 0.3]), np.array([0.2, 0.8])
    eye = np.eye(2)
    m = d.DiscreteMIM(anchor_x=px, anchor_z=pz, q_z_given_x=eye, p_x_given_z=eye, q_x=pz, p_z=px)
    assert close(d.l_ce(m), d.entropy(d.sample_mixture(m)))
    assert d.r_mim(m) > 0.1


def test_zero_probabilities() -> None:
    assert d.entropy([0.0, 1.0]) == 0.0
    assert d.kl([0.0, 1.0], [0.5, 0.5]) == pytest.approx(np.log(2.0))
    assert d.kl([0.5, 0.5], [0.0, 1.0]) == np.inf
    assert d.cross_entropy([0.5, 0.5], [1.0, 0.0]) == np.inf
    # a model joint that misses part of supp(M_S): L_MIM and R_MIM are infinite
    m = d.DiscreteMIM(anchor_x=[0.5, 0.5], anchor_z=[0.5, 0.5], q_z_given_x=np.eye(2),
                      p_x_given_z=np.eye(2), q_x=[1.0, 0.0], p_z=[0.5, 0.5])
    assert d.l_mim(m) == np.inf and d.r_mim(m) == np.inf
    assert np.isfinite(d.l_ce(m))


@pytest.mark.parametrize("field, value, match", [
    ("anchor_x", [0.5, 0.6], "sum to 1"),
    ("anchor_x", [1.2, -0.2], "negative"),
    ("anchor_x", [np.nan, 1.0], "non-finite"),
    ("q_z_given_x", np.full((2, 2), 0.5).T[:, :1], "shape"),
    ("p_x_given_z", np.full((3, 2), 0.5), "shape"),
    ("q_x", [1.0, 0.0, 0.0], "shape"),
    ("anchor_z", [[0.5, 0.5]], "1-D"),
])
def test_validation(field: str, value: object, match: str) -> None:
    good = dict(anchor_x=[0.5, 0.5], anchor_z=[0.25, 0.75], q_z_given_x=np.full((2, 2), 0.5),
                p_x_given_z=np.full((2, 2), 0.5), q_x=[0.5, 0.5], p_z=[0.5, 0.5])
    d.DiscreteMIM(**good)
    with pytest.raises(ValueError, match=match):
        d.DiscreteMIM(**{**good, field: value})


def test_instance_is_read_only() -> None:
    m = d.random_instance(np.random.default_rng(1), 2, 3)
    with pytest.raises(ValueError):
        m.anchor_x[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.q_x = m.anchor_x  # type: ignore[misc]


# ----------------------------------------------------------------------------- Monte Carlo

N_MC = 200_000


def _mc(model: d.DiscreteModel, exact_qx: bool, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    x = model.data().sample((N_MC,))
    loss = mim(model, x, beta=1.0, log_qx=model.log_qx if exact_qx else None).value
    return loss.mean().item(), loss.std().item() / N_MC ** 0.5


def test_mim_objective_estimates_l_mim() -> None:
    """mim() with the exact log q(x) is an unbiased estimate of L_MIM (200,000 samples, 3 SE),
    and it is sharp enough to tell L_MIM from L_CE."""
    m = d.random_instance(np.random.default_rng(3), 3, 4)
    mean, se = _mc(d.DiscreteModel(m), exact_qx=True, seed=0)
    assert abs(mean - d.l_mim(m)) <= 3 * se
    assert abs(mean - d.l_ce(m)) > 3 * se


def test_algorithm1_estimator_bias() -> None:
    """With the one-sample log q(x) of Eqs. 14-15 (Algorithm 1), mim() estimates
    L_MIM + 1/4 E_P KL(q(z|x) || p(z|x)) - 1/4 I_{A_p}(x; z), not L_MIM."""
    m = d.with_marginal_qx(d.random_instance(np.random.default_rng(4), 3, 4))
    qbar = d.decoder_marginal(m)
    posterior_gap = float(np.sum(m.anchor_x * (np.log(qbar) - d.elbo(m))))
    bias = 0.25 * posterior_gap - 0.25 * d.mutual_information(d.anchored_decoding(m))
    assert close(d.l_mim_algorithm1(m), d.l_mim(m) + bias)
    mean, se = _mc(d.DiscreteModel(m), exact_qx=False, seed=1)
    assert abs(mean - d.l_mim_algorithm1(m)) <= 3 * se
    assert abs(mean - d.l_mim(m)) > 3 * se
