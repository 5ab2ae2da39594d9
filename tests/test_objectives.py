"""Monte-Carlo objectives against closed forms on a linear-Gaussian model."""

import math

import pytest
import torch

from mimlib import metrics, objectives
from mimlib.distributions import bernoulli, diagonal_gaussian, draw, standard_normal
from linear_gaussian import LinearGaussian

N_MC = 200_000


def _mc(values: torch.Tensor):
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


@pytest.fixture
def lg():
    return LinearGaussian(dx=3, dz=2, seed=1)


@pytest.fixture
def x_point(lg):
    return torch.tensor([[0.5, -1.0, 0.3]], dtype=torch.float64)


def test_gaussian_log_prob_has_normalising_constant():
    d = diagonal_gaussian(torch.zeros(3), torch.ones(3) * 2.0)
    expected = -0.5 * 3 * math.log(2 * math.pi) - 3 * math.log(2.0)
    assert d.log_prob(torch.zeros(3)).item() == pytest.approx(expected, rel=1e-6)


def test_diagonal_gaussian_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        diagonal_gaussian(torch.zeros(3), torch.ones(2))


def test_standard_normal_rejects_bad_dim():
    with pytest.raises(ValueError):
        standard_normal(0)


def test_rsample_is_reparameterised():
    mean = torch.zeros(4, requires_grad=True)
    std = torch.ones(4, requires_grad=True)
    draw(diagonal_gaussian(mean, std)).sum().backward()
    assert mean.grad is not None and torch.allclose(mean.grad, torch.ones(4))
    assert std.grad is not None and std.grad.abs().sum() > 0


def test_bernoulli_draw_is_a_plain_sample():
    d = bernoulli(torch.zeros(2, 5, requires_grad=True))
    x = draw(d)
    assert not x.requires_grad and set(x.unique().tolist()) <= {0.0, 1.0}
    assert d.log_prob(x).shape == (2,)
    assert d.log_prob(x)[0].item() == pytest.approx(5 * math.log(0.5))


def test_vae_loss_is_negative_elbo(lg, x_point):
    x = x_point.expand(N_MC, -1)
    mean, se = _mc(objectives.vae(lg, x).value.detach())
    exact = -lg.elbo(x_point).item()
    assert abs(mean - exact) < 4 * se + 1e-9, (mean, exact, se)


def test_vae_kl_term_matches_closed_form(lg, x_point):
    x = x_point.expand(N_MC, -1)
    kl = objectives.vae(lg, x).terms["kl"]
    mean, se = _mc(kl)
    assert abs(mean - lg.kl_to_prior(x_point).item()) < 4 * se


def test_vae_beta_zero_is_reconstruction_only(lg, x_point):
    torch.manual_seed(3)
    loss = objectives.vae(lg, x_point.expand(10, -1), beta=0.0)
    assert torch.allclose(loss.value, -loss.terms["log p(x|z)"])


def test_mim_encoder_term_closed_form(lg, x_point):
    """Algorithm 1 line 6: E_q[-(log p(x|z) + log p(z))]."""
    x = x_point.expand(N_MC, -1)
    value = objectives.amim(lg, x).value.detach()
    mean, se = _mc(value)
    exact = -(lg.expected_log_px_given_z(x_point) + lg.expected_log_pz(x_point)).item()
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_amim_is_the_vae_plus_the_encoder_entropy(lg, x_point):
    """Chapter 07's proposition: per sample (same z), l_A-MIM = l_VAE - log q(z|x) exactly; in expectation
    L_A-MIM - L_VAE = H(q(z|x)), the encoder's entropy (closed form)."""
    x = x_point.expand(N_MC, -1)
    torch.manual_seed(7)
    a = objectives.amim(lg, x)
    torch.manual_seed(7)
    v = objectives.vae(lg, x)
    assert torch.equal(a.terms["enc/log q(z|x)"], v.terms["log q(z|x)"])      # the same codes
    assert torch.allclose(a.value, v.value - v.terms["log q(z|x)"], rtol=0, atol=1e-12)
    mean, se = _mc((a.value - v.value).detach())
    assert abs(mean - lg.encoder_entropy().item()) < 4 * se, (mean, lg.encoder_entropy().item(), se)


def test_mim_is_average_of_encoder_and_decoder_terms(lg, x_point):
    """E[mim] = 1/2 (encoder term at x + decoder term, line 11), closed form for both."""
    x = x_point.expand(N_MC, -1)
    mean, se = _mc(objectives.mim(lg, x).value.detach())
    enc = -(lg.expected_log_px_given_z(x_point) + lg.expected_log_pz(x_point)).item()
    exact = 0.5 * (enc + lg.expected_mim_decoder_term().item())
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_mim_with_exact_marginal(lg, x_point):
    """With log q(x) given exactly, the encoder term is -1/2 E_q[log p(x|z) + log p(z) + log q(z|x) + log q(x)]."""
    x = x_point.expand(N_MC, -1)
    loss = objectives.amim(lg, x, log_qx=lambda xx: lg.marginal().log_prob(xx))
    mean, se = _mc(loss.value.detach())
    exact = -0.5 * (lg.expected_log_px_given_z(x_point) + lg.expected_log_pz(x_point)
                    - lg.encoder_entropy() + lg.marginal().log_prob(x_point)).item()
    assert abs(mean - exact) < 4 * se


@pytest.mark.parametrize("name", ["vae", "mim", "amim"])
def test_gradients_reach_encoder_and_decoder(lg, name):
    x = lg.marginal().sample((64,))
    objectives.get_objective(name)(lg, x).value.mean().backward()
    for p in ("A", "c", "log_t", "W", "b", "log_s"):
        g = getattr(lg, p).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, p


def test_mim_decoder_term_gradient_reaches_encoder_through_sampled_x(lg):
    """The decoder-sampled x is reparameterised, so log q(z|x) sends gradient to the decoder too."""
    torch.manual_seed(0)
    value, _ = objectives._mim_decoder_term(lg, torch.Size([256]), 1.0, None)
    (g_W,) = torch.autograd.grad(value.mean(), lg.W, retain_graph=True)
    assert g_W.abs().sum() > 0


def test_unknown_objective_has_clear_error():
    with pytest.raises(ValueError, match="unknown objective 'elbo'"):
        objectives.get_objective("elbo")


def test_importance_sampled_nll_converges_to_closed_form(lg, x_point):
    exact = -lg.marginal().log_prob(x_point).item()
    nll_1, se_1 = _mc(metrics.nll_importance(lg, x_point.expand(20_000, -1), n_samples=1))
    nll_1000 = metrics.nll_importance(lg, x_point.expand(200, -1), n_samples=1000).mean().item()
    # One sample is the negative ELBO, a loose upper bound; many samples close the gap.
    assert abs(nll_1 - (-lg.elbo(x_point).item())) < 4 * se_1
    assert nll_1 - exact > 0.05
    assert abs(nll_1000 - exact) < 0.01


def test_nll_single_sample_is_negative_elbo(lg, x_point):
    x = x_point.expand(100_000, -1)
    assert metrics.nll_single_sample(lg, x).mean().item() == pytest.approx(-lg.elbo(x_point).item(), abs=0.03)
