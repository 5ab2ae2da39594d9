"""convHVAE (L = 2): gated layers, distribution shapes, densities by hand, VampPrior, gradients."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import distributions as td

from mimlib import objectives
from mimlib.nets.hvae import (LOGVAR_MAX, LOGVAR_MIN, ConvHVAE, GatedConv2d, GatedLinear,
                              TwoLevelLatent)

torch.set_num_threads(1)
LOG2PI = math.log(2 * math.pi)
B = 3  # batch size of every forward test: the conv decoder is the expensive part


def images(n: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


def gauss_logpdf(z, mean, logvar):
    """log N(z; mean, diag(exp(logvar))) summed over the last dimension, by hand."""
    return -0.5 * (LOG2PI + logvar + (z - mean) ** 2 / logvar.exp()).sum(-1)


@pytest.fixture(scope="module")
def standard():
    torch.manual_seed(0)
    return ConvHVAE("standard")


@pytest.fixture(scope="module")
def vamp():
    torch.manual_seed(1)
    return ConvHVAE("vampprior", n_pseudo=6)


# ----------------------------------------------------------------------------- size


def conv(cin, cout, k):  # one convolution with bias
    return cin * cout * k * k + cout


def dense(n_in, n_out):  # one linear layer with bias
    return n_in * n_out + n_out


def expected_parameters(prior: str, K: int = 500) -> int:
    """The convHVAE of anchor-facts.md, layer by layer; a gated layer is two layers (h and g)."""
    gconv = lambda cin, cout, k: 2 * conv(cin, cout, k)  # noqa: E731
    gdense = lambda n_in, n_out: 2 * dense(n_in, n_out)  # noqa: E731
    heads = lambda n_in, z: 2 * dense(n_in, z)  # noqa: E731  (mean and log-variance)
    q_z2 = (gconv(1, 32, 7) + gconv(32, 32, 3) + gconv(32, 64, 5) + gconv(64, 64, 3)
            + gconv(64, 6, 3) + heads(6 * 7 * 7, 40))
    q_z1 = (gconv(1, 32, 3) + gconv(32, 32, 3) + gconv(32, 64, 3) + gconv(64, 64, 3)
            + gconv(64, 6, 3) + gdense(40, 294) + gdense(588, 300) + heads(300, 40))
    p_z1 = gdense(40, 300) + gdense(300, 300) + heads(300, 40)
    p_x = (gdense(40, 300) + gdense(40, 300) + gdense(600, 784) + gconv(1, 64, 3)
           + 3 * gconv(64, 64, 3) + conv(64, 1, 1))
    pseudo = K * 784 if prior == "vampprior" else 0
    return q_z2 + q_z1 + p_z1 + p_x + pseudo


def test_parameter_count():
    for prior in ("standard", "vampprior"):
        n = sum(p.numel() for p in ConvHVAE(prior).parameters())
        print(f"convHVAE ({prior}): {n:,} parameters")
        assert n == expected_parameters(prior)
    assert expected_parameters("standard") == 2_210_861
    assert expected_parameters("vampprior") == 2_210_861 + 392_000


def test_gated_layers_are_h_times_sigmoid_g():
    torch.manual_seed(0)
    lin = GatedLinear(5, 4)
    x = torch.randn(7, 5)
    w_h, w_g = lin.linear.weight[:4], lin.linear.weight[4:]
    b_h, b_g = lin.linear.bias[:4], lin.linear.bias[4:]
    torch.testing.assert_close(lin(x), (x @ w_h.T + b_h) * torch.sigmoid(x @ w_g.T + b_g))
    cv = GatedConv2d(2, 3, 3, 2, 1)
    x = torch.randn(2, 2, 9, 9)
    w, b = cv.conv.weight, cv.conv.bias
    h = torch.nn.functional.conv2d(x, w[:3], b[:3], 2, 1)
    g = torch.nn.functional.conv2d(x, w[3:], b[3:], 2, 1)
    torch.testing.assert_close(cv(x), h * torch.sigmoid(g))
    assert cv(x).shape == (2, 3, 5, 5)


# ----------------------------------------------------------------------------- shapes


def test_shapes(standard, vamp):
    x = images()
    for m in (standard, vamp):
        q = m.encoder(x)
        assert isinstance(q, TwoLevelLatent) and isinstance(q, td.Distribution) and q.has_rsample
        assert q.batch_shape == (B,) and q.event_shape == (80,)
        assert q.top.batch_shape == (B,) and q.top.event_shape == (40,)
        z = q.rsample()
        assert z.shape == (B, 80) and q.log_prob(z).shape == (B,)
        zs = q.rsample((4,))
        assert zs.shape == (4, B, 80) and q.log_prob(zs).shape == (4, B)
        assert q.sample((2,)).shape == (2, B, 80) and not q.sample().requires_grad
        qe = q.expand((5, B))
        assert qe.batch_shape == (5, B) and qe.rsample().shape == (5, B, 80)
        assert qe.log_prob(z).shape == (5, B)

        p = m.prior()
        assert p.batch_shape == () and p.event_shape == (80,)
        assert p.log_prob(z).shape == (B,) and p.log_prob(zs).shape == (4, B)
        assert p.sample((5,)).shape == (5, 80) and p.rsample((2, 3)).shape == (2, 3, 80)
        assert p.expand((B,)).batch_shape == (B,) and p.expand((B,)).sample().shape == (B, 80)

        d = m.decoder(z)
        assert d.batch_shape == (B,) and d.event_shape == (1, 28, 28)
        assert d.log_prob(x).shape == (B,) and d.sample().shape == (B, 1, 28, 28)
        assert m.decoder(zs).batch_shape == (4, B)

        a = m.anchor()
        assert a.batch_shape == () and a.event_shape == (80,)
        torch.testing.assert_close(a.log_prob(torch.zeros(80)), torch.tensor(-40 * LOG2PI))
        # flattened images are accepted and mean the same thing
        assert m.encoder(x.view(B, 784)).batch_shape == (B,)
    with pytest.raises(ValueError):
        standard.encoder(torch.zeros(B, 28, 27))
    with pytest.raises(ValueError):
        standard.decoder(torch.zeros(B, 79))


def test_logvariance_clipping():
    m = ConvHVAE("standard")
    x = images()
    for sign, bound in ((1.0, LOGVAR_MAX), (-1.0, LOGVAR_MIN)):
        with torch.no_grad():
            for head in (m.q_z2_head, m.q_z1_head, m.p_z1_head):
                head.linear.bias[40:] = sign * 1e3  # the log-variance half
        q = m.encoder(x)
        z2 = q.top.rsample()
        expected = torch.full((B, 40), math.exp(0.5 * bound))
        torch.testing.assert_close(q.top.base_dist.scale, expected)
        torch.testing.assert_close(q.conditional(z2).base_dist.scale, expected)
        torch.testing.assert_close(m.prior().conditional(z2).base_dist.scale, expected)
        for params in (m.q_z2_params(x), m.p_z1_params(z2)):
            assert params[1].min() >= LOGVAR_MIN and params[1].max() <= LOGVAR_MAX


# ----------------------------------------------------------------------------- densities by hand


def test_encoder_log_prob_by_hand(standard):
    m, x = standard, images()
    q = m.encoder(x)
    z = q.rsample((2,))
    z1, z2 = z[..., :40], z[..., 40:]
    mean2, logvar2 = m.q_z2_params(x)
    mean1, logvar1 = m.q_z1_params(m.q_z1_features(x), z2)
    by_hand = gauss_logpdf(z2, mean2, logvar2) + gauss_logpdf(z1, mean1, logvar1)
    torch.testing.assert_close(q.log_prob(z), by_hand)
    # ancestral: the z1 half is drawn from q(z1|x, z2) at the z2 half, so it depends
    # on the mean of q(z2|x) (which q(z1|x, z2) sees only through z2)
    (g,) = torch.autograd.grad(z1.sum(), q.top.base_dist.loc, retain_graph=True)
    assert g.abs().sum() > 0


def test_standard_prior_log_prob_by_hand(standard):
    m = standard
    z = torch.randn(4, 80)
    mean1, logvar1 = m.p_z1_params(z[:, 40:])
    by_hand = gauss_logpdf(z[:, 40:], torch.zeros(40), torch.zeros(40)) + gauss_logpdf(z[:, :40], mean1, logvar1)
    torch.testing.assert_close(m.prior().log_prob(z), by_hand)


def test_vampprior_log_prob_brute_force(vamp):
    m = vamp
    z = torch.randn(4, 80) * 0.5
    u = m.pseudo_inputs()
    assert u.shape == (6, 1, 28, 28) and u.min() >= 0 and u.max() <= 1
    log_p_z2 = []
    for i in range(4):  # one point and one component at a time
        terms = [gauss_logpdf(z[i, 40:], *[t[0] for t in m.q_z2_params(u[k:k + 1])]) for k in range(6)]
        log_p_z2.append(torch.logsumexp(torch.stack(terms), 0) - math.log(6))
    mean1, logvar1 = m.p_z1_params(z[:, 40:])
    expected = torch.stack(log_p_z2) + gauss_logpdf(z[:, :40], mean1, logvar1)
    torch.testing.assert_close(m.prior().log_prob(z), expected, rtol=1e-5, atol=1e-4)


def test_decoder_log_prob_by_hand(standard):
    x = images()
    z = torch.randn(B, 80)
    logits = standard.decoder_logits(z[:, :40], z[:, 40:])
    by_hand = (x * torch.nn.functional.logsigmoid(logits)
               + (1 - x) * torch.nn.functional.logsigmoid(-logits)).sum((1, 2, 3))
    torch.testing.assert_close(standard.decoder(z).log_prob(x), by_hand)


def test_pseudo_input_init():
    m = ConvHVAE("vampprior", n_pseudo=50)
    w = m.pseudo_weights.detach()
    assert abs(w.mean().item() - 0.05) < 2e-3 and abs(w.std().item() - 0.01) < 2e-3
    imgs = images(50)
    m.init_pseudo_inputs(imgs, noise_std=0.01, generator=torch.Generator().manual_seed(0))
    assert (m.pseudo_inputs() - imgs).abs().max() < 0.06
    m2 = ConvHVAE("vampprior", n_pseudo=50, pseudo_init=imgs)
    assert (m2.pseudo_inputs() - imgs).abs().max() < 0.06
    with pytest.raises(RuntimeError):
        ConvHVAE("standard").pseudo_inputs()
    with pytest.raises(ValueError):
        ConvHVAE("gaussian")


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("objective", ["vae", "mim"])
@pytest.mark.parametrize("prior", ["standard", "vampprior"])
def test_gradients_reach_every_parameter(objective, prior):
    torch.manual_seed(2)
    m = ConvHVAE(prior, n_pseudo=4)
    loss = objectives.get_objective(objective)(m, images(2))
    assert loss.value.shape == (2,) and torch.isfinite(loss.value).all()
    loss.value.mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert m._vamp_cache is None  # the backward pass dropped the cached components


def test_vampprior_rsample_is_pathwise(vamp):
    vamp.zero_grad()
    vamp.prior().rsample((5,)).pow(2).sum().backward()
    assert vamp.pseudo_weights.grad.abs().sum() > 0
    assert vamp.p_z1_head.linear.weight.grad.abs().sum() > 0


def test_vampprior_components_cached_once_per_step():
    torch.manual_seed(3)
    m = ConvHVAE("vampprior", n_pseudo=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    calls = []
    m.q_z2_convs.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    x = images(2)
    objectives.mim(m, x).value.mean().backward()  # prior() twice, components once
    assert calls.count(4) == 1
    objectives.mim(m, x).value.mean().backward()  # after backward: recomputed (gradient accumulation)
    assert calls.count(4) == 2
    opt.step()
    with torch.no_grad():
        a = m.vamp_components()
        b = m.vamp_components()
    assert a[0] is b[0] and calls.count(4) == 3  # shared between evaluation batches
    opt.zero_grad()
    objectives.vae(m, x).value.mean().backward()
    opt.step()
    with torch.no_grad():
        c = m.vamp_components()  # parameters changed: recomputed
    assert c[0] is not a[0] and not torch.equal(c[0], a[0])
    m.prior()  # cache holds non-leaf tensors now: copying the model must still work
    clone = copy.deepcopy(m)
    assert clone._vamp_cache is None and m._vamp_cache is not None
    torch.testing.assert_close(clone.prior().log_prob(torch.zeros(80)), m.prior().log_prob(torch.zeros(80)))
