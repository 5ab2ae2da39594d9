"""PixelHVAE (appendix E.2): masks, causality, autoregressive sampling, log_prob, gradients, size."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import distributions as td

from mimlib import objectives
from mimlib.nets.pixelhvae import MaskedConv2d, PixelCNNBernoulli, PixelCNNDecoder, PixelHVAE

torch.set_num_threads(1)
B = 3


def images(n: int = B, seed: int = 0, shape=(1, 28, 28)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) < 0.3).double()


def randomise_batch_norm(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so eval mode is a real test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))


@pytest.fixture(scope="module")
def net64() -> PixelCNNDecoder:
    """The paper-size PixelCNN decoder network, float64, eval mode."""
    torch.manual_seed(0)
    net = PixelCNNDecoder().double()
    randomise_batch_norm(net)
    return net.eval()


@pytest.fixture(scope="module")
def model64() -> PixelHVAE:
    torch.manual_seed(1)
    model = PixelHVAE("standard").double()
    randomise_batch_norm(model)
    return model.eval()


# ----------------------------------------------------------------------------- masks and causality


def test_mask_patterns():
    a, b = MaskedConv2d("A", 3, 4, 3), MaskedConv2d("B", 4, 4, 3)
    assert torch.equal(a.mask[0, 0], torch.tensor([[1., 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(b.mask[0, 0], torch.tensor([[1., 1, 1], [1, 1, 0], [0, 0, 0]]))
    assert (a.mask == a.mask[:1, :1]).all() and (b.mask == b.mask[:1, :1]).all()   # every channel pair
    assert "mask" in dict(a.named_buffers()) and "mask" not in dict(a.named_parameters())
    assert torch.equal(a.weight * (1 - a.mask), torch.zeros_like(a.weight))          # stored zeros
    a5 = MaskedConv2d("A", 1, 1, 5).mask[0, 0]
    assert a5[:2].all() and a5[2, :2].all() and not a5[2, 2:].any() and not a5[3:].any()
    with pytest.raises(ValueError):
        MaskedConv2d("C", 1, 1, 3)


def causality_report(net: PixelCNNDecoder, positions, seed: int = 0) -> list[tuple[int, float, float]]:
    """For each pixel i: flip x_i; (i, max |change| of the logits at pixels <= i, ... at pixels > i)."""
    H, W = net.image_size
    x = images(2, seed, (1, H, W))
    g = torch.Generator().manual_seed(seed + 1)
    maps = torch.randn(2, 2, H, W, generator=g, dtype=torch.float64)
    with torch.no_grad():
        base = net.logits(x, maps).flatten(1)
        out = []
        for i in positions:
            x2 = x.clone().flatten(1)
            x2[:, i] = 1 - x2[:, i]
            new = net.logits(x2.view_as(x), maps).flatten(1)
            d = (new - base).abs()
            out.append((i, float(d[:, :i + 1].max()), float(d[:, i + 1:].max())))
    return out


def test_causality_of_the_decoder_network(net64):
    """Changing pixel i never changes the logits of pixels <= i (raster order), and changes later ones."""
    g = torch.Generator().manual_seed(3)
    positions = [0, 27, 28, 405, 782] + torch.randint(1, 782, (5,), generator=g).tolist()
    for i, before, after in causality_report(net64, positions):
        assert before <= 1e-12, (i, before)
        assert after > 1e-9, (i, after)   # the pixel does influence the future: the test can fail


def test_causality_check_catches_a_wrong_mask():
    """A type-B first layer lets pixel i see itself: the same check must report it."""
    torch.manual_seed(0)
    net = PixelCNNDecoder(image_size=(6, 6), channels=8, n_type_b=2).double().eval()
    first = net.masked[0]
    first.mask.copy_(MaskedConv2d("B", 3, 8, 3).mask.double())
    with torch.no_grad():
        first.weight.normal_()
    report = causality_report(net, [7, 20])
    assert max(before for _, before, _ in report) > 1e-6


# ----------------------------------------------------------------------------- sampling


def test_sample_matches_the_network_given_the_sampled_prefix(model64):
    """Each sampled pixel is u_i < sigmoid(logit_i), logit_i = the network's logit given the final
    image (causality: it equals the logit given the prefix, the one used while sampling)."""
    z = torch.randn(B, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = model64.decoder(z)
    x, used = d.sample_with_logits(generator=torch.Generator().manual_seed(5))
    u = torch.rand(B, 28, 28, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x.shape == used.shape == (B, 1, 28, 28)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and 0 < x.mean() < 1
    with torch.no_grad():
        teacher = d.logits_given(x)
    assert torch.allclose(used, teacher, rtol=0, atol=1e-10)
    assert torch.equal(x[:, 0], (u < torch.sigmoid(teacher[:, 0])).double())
    x2 = d.sample(generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, x2)                                # reproducible


def test_incremental_sampler_equals_full_passes():
    """The cached one-pixel-per-layer sampler and one full network pass per pixel agree exactly."""
    torch.manual_seed(0)
    for k in (3, 5):
        net = PixelCNNDecoder(z1_dim=3, z2_dim=2, image_size=(5, 6), channels=8, n_type_b=3,
                              kernel_size=k).double()
        randomise_batch_norm(net)
        d = PixelCNNBernoulli(net, net.cond_maps(torch.randn(4, 3).double(), torch.randn(4, 2).double()))
        xi, li = d.sample_with_logits(generator=torch.Generator().manual_seed(1))
        xf, lf = d.sample_with_logits(generator=torch.Generator().manual_seed(1), method="full")
        assert torch.equal(xi, xf)
        assert torch.allclose(li, lf, rtol=0, atol=1e-12)


def tiny_decoder(image_size, kernel_size=3, seed=0) -> PixelCNNBernoulli:
    torch.manual_seed(seed)
    net = PixelCNNDecoder(z1_dim=3, z2_dim=2, image_size=image_size, channels=8, n_type_b=2,
                          kernel_size=kernel_size).double()
    randomise_batch_norm(net, seed)
    with torch.no_grad():
        net.out.weight.mul_(20)         # a peaked distribution, far from uniform
    net.eval()
    maps = net.cond_maps(torch.randn(3).double(), torch.randn(2).double()).detach()
    return PixelCNNBernoulli(net, maps)


def all_images(h: int, w: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=h * w)), dtype=torch.float64).reshape(-1, 1, h, w)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_eval_decoder_is_normalised(kernel_size):
    """In eval mode p(x|z) sums to one over all 2^9 images of size 3x3 (exact autoregression)."""
    d = tiny_decoder((3, 3), kernel_size)
    with torch.no_grad():
        total = d.log_prob(all_images(3, 3)).exp().sum()
    assert abs(float(total) - 1.0) < 1e-12


def test_sample_frequencies_match_the_enumerated_distribution():
    """2x2 images: the 16 exact probabilities against the frequencies of 40,000 samples."""
    d = tiny_decoder((2, 2), seed=2)
    xs = all_images(2, 2)
    with torch.no_grad():
        p = d.log_prob(xs).exp()
    assert abs(float(p.sum()) - 1) < 1e-12 and float(p.max()) > 0.3   # far from uniform (1/16)
    n = 40_000
    s = d.sample((n,), generator=torch.Generator().manual_seed(0))
    assert s.shape == (n, 1, 2, 2)
    code = (s.flatten(1) * torch.tensor([8.0, 4, 2, 1], dtype=torch.float64)).sum(1).long()
    freq = torch.bincount(code, minlength=16).double() / n    # itertools.product order: same codes
    z = (freq - p) / (p * (1 - p) / n).sqrt().clamp_min(1e-12)
    assert float(z.abs().max()) < 4.5, (freq, p)


def test_sampling_uses_eval_statistics_and_leaves_the_module_alone():
    """sample() in train mode = sample() in eval mode; mode and running statistics untouched."""
    torch.manual_seed(0)
    model = PixelHVAE("standard").double()
    randomise_batch_norm(model)
    z = torch.randn(2, 80, dtype=torch.float64)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.train()
    x_train = model.decoder(z).sample(generator=torch.Generator().manual_seed(0))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    model.eval()
    x_eval = model.decoder(z).sample(generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_train, x_eval)
    assert not any(m.training for m in model.modules())


def test_sample_shapes(model64):
    d = model64.decoder(torch.randn(2, 80, dtype=torch.float64))
    assert d.batch_shape == (2,) and d.event_shape == (1, 28, 28)
    assert d.sample((2,)).shape == (2, 2, 1, 28, 28)
    assert d.expand((3, 2)).batch_shape == (3, 2)


# ----------------------------------------------------------------------------- log_prob and the interface


def test_log_prob_is_the_sum_of_teacher_forced_bernoullis(model64):
    z = torch.randn(B, 80, dtype=torch.float64)
    x = images(B)
    d = model64.decoder(z)
    with torch.no_grad():
        lp = d.log_prob(x)
        logits = d.logits_given(x)
        direct = model64.pixelcnn.logits(x, model64.decoder_maps(z))
        assert lp.shape == (B,)
        assert torch.allclose(logits, direct, rtol=0, atol=1e-12)
        ref = td.Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
        assert torch.allclose(lp, ref, rtol=1e-12, atol=1e-10)
        assert torch.allclose(d.probs_given(x), torch.sigmoid(logits))
        assert torch.allclose(d.log_prob(x.flatten(1)), lp)                 # flat images accepted
        # a sample dimension of z against a batch of images
        zs = torch.randn(2, B, 80, dtype=torch.float64)
        lps = model64.decoder(zs).log_prob(x)
        assert lps.shape == (2, B)
        assert torch.allclose(lps[1], model64.decoder(zs[1]).log_prob(x), rtol=1e-12, atol=1e-10)


def test_decoder_interface(model64):
    d = model64.decoder(torch.zeros(2, 80, dtype=torch.float64))
    assert not d.has_rsample
    with pytest.raises(NotImplementedError, match="probs_given"):
        d.mean
    with pytest.raises(NotImplementedError):
        d.rsample()
    with pytest.raises(NotImplementedError, match="depend on x"):
        model64.decoder_logits(torch.zeros(2, 40), torch.zeros(2, 40))
    with pytest.raises(ValueError):
        model64.decoder(torch.zeros(2, 79, dtype=torch.float64))
    assert not any(n.startswith("p_x_") for n, _ in model64.named_children())   # no convHVAE decoder left


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["vae", "amim"])
def test_gradients_reach_every_part(name):
    torch.manual_seed(0)
    model = PixelHVAE("vampprior", n_pseudo=4)
    x = images(B).float()
    loss = objectives.get_objective(name)(model, x).value
    assert loss.shape == (B,) and torch.isfinite(loss).all()
    loss.mean().backward()
    groups = {"q(z2|x)": model.q_z2_convs, "q(z1|x,z2)": model.q_z1_convs, "p(z1|z2)": model.p_z1_layers,
              "z maps": model.pixelcnn.z1_map, "z2 map": model.pixelcnn.z2_map,
              "masked convs": model.pixelcnn.masked, "output conv": model.pixelcnn.out}
    for label, module in groups.items():
        for p in module.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), label
            assert p.grad.abs().sum() > 0, (label, p.shape)
    assert model.pseudo_weights.grad is not None and model.pseudo_weights.grad.abs().sum() > 0
    for m in model.pixelcnn.modules():                          # masked weights get no gradient
        if isinstance(m, MaskedConv2d):
            assert torch.equal(m.weight.grad * (1 - m.mask), torch.zeros_like(m.weight))


def test_symmetric_mim_runs_with_the_score_function():
    """MIM's decoder-sampled half samples the PixelCNN (no rsample): it runs and trains the decoder."""
    torch.manual_seed(0)
    model = PixelHVAE("standard")
    loss = objectives.mim(model, images(2).float())
    assert loss.value.shape == (2,) and torch.isfinite(loss.value).all()
    assert "dec/log p(x|z)" in loss.terms
    loss.value.mean().backward()
    assert model.pixelcnn.out.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- size


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def dense(n_in, n_out):
    return n_in * n_out + n_out


def expected_decoder_parameters(channels=64, n_type_b=7) -> int:
    """The PixelCNN decoder of anchor-facts.md, layer by layer (masked convs without bias, each
    followed by a batch norm with scale and shift; a gated dense layer is two dense layers)."""
    maps = 2 * (2 * dense(40, 784))
    masked = conv(3, channels, 3, bias=False) + n_type_b * conv(channels, channels, 3, bias=False)
    batch_norms = (1 + n_type_b) * 2 * channels
    return maps + masked + batch_norms + conv(channels, 1, 1)


def expected_parameters(prior: str, K: int = 500) -> int:
    gconv = lambda cin, cout, k: 2 * conv(cin, cout, k)  # noqa: E731
    gdense = lambda n_in, n_out: 2 * dense(n_in, n_out)  # noqa: E731
    heads = lambda n_in, z: 2 * dense(n_in, z)  # noqa: E731
    q_z2 = (gconv(1, 32, 7) + gconv(32, 32, 3) + gconv(32, 64, 5) + gconv(64, 64, 3)
            + gconv(64, 6, 3) + heads(294, 40))
    q_z1 = (gconv(1, 32, 3) + gconv(32, 32, 3) + gconv(32, 64, 3) + gconv(64, 64, 3)
            + gconv(64, 6, 3) + gdense(40, 294) + gdense(588, 300) + heads(300, 40))
    p_z1 = gdense(40, 300) + gdense(300, 300) + heads(300, 40)
    return q_z2 + q_z1 + p_z1 + expected_decoder_parameters() + (K * 784 if prior == "vampprior" else 0)


def test_parameter_count():
    assert expected_decoder_parameters() == 389_441
    net = PixelCNNDecoder()
    assert sum(p.numel() for p in net.parameters()) == expected_decoder_parameters()
    # the masks leave 4 (type A) and 5 (type B) of the 9 taps free
    free = sum(int(m.mask.sum()) for m in net.modules() if isinstance(m, MaskedConv2d))
    assert free == 3 * 64 * 4 + 7 * 64 * 64 * 5
    for prior in ("standard", "vampprior"):
        n = sum(p.numel() for p in PixelHVAE(prior).parameters())
        print(f"PixelHVAE ({prior}): {n:,} parameters")
        assert n == expected_parameters(prior)
