"""The reference code's choices as named options: optimiser, lr schedule, warm-up placement, decoder half."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mimlib import objectives as O
from mimlib import presets
from mimlib.data import MixtureStream
from mimlib.mixture2d import group_name, train_group
from mimlib.nets.hvae import ConvHVAE
from mimlib.nets.mlp import MixtureModel2D
from mimlib.optim import AdamNormGrad, lr_factor, make_optimizer


def _adam_by_hand(grads, lr=0.1, b1=0.9, b2=0.999, eps=1e-8, start=(3.0, 4.0)):
    """Adam on per-tensor normalised gradients, written out with floats."""
    p, m, v = list(start), [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        norm = math.sqrt(sum(gi * gi for gi in g)) + 1e-7
        g = [gi / norm for gi in g]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        mh = [mi / (1 - b1 ** t) for mi in m]
        vh = [vi / (1 - b2 ** t) for vi in v]
        p = [pi - lr * a / (math.sqrt(b) + eps) for pi, a, b in zip(p, mh, vh)]
    return p


def test_adam_normgrad_against_a_hand_computation():
    grads = [(3.0, 4.0), (0.0, 10.0), (-1.0, 2.0)]
    w = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = AdamNormGrad([w], lr=0.1)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    assert w.tolist() == pytest.approx(_adam_by_hand(grads), rel=1e-12, abs=1e-12)
    # the point of the normalisation: the gradient's scale does not matter
    w2 = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt2 = make_optimizer("adam-normgrad", [w2], 0.1)
    for g in grads:
        w2.grad = 1000.0 * torch.tensor(g, dtype=torch.float64)
        opt2.step()
    torch.testing.assert_close(w2, w)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("sgd", [w], 0.1)


def test_noam_schedule_is_the_reference_formula():
    f = [lr_factor("noam", e, 3) for e in range(6)]
    assert f == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, math.sqrt(3 / 4), math.sqrt(3 / 5)])
    assert lr_factor("constant", 17, 3) == 1.0
    with pytest.raises(ValueError):
        lr_factor("cosine", 0, 3)


def test_noam_trains_nothing_in_the_first_epoch():
    cfg = dataclasses.replace(presets.resolve("mixture2d", "reference"), hidden=(5,), seeds=(0,), max_epochs=1,
                              n_train=256, n_val=128)
    assert group_name("mim", 5, cfg) != group_name("mim", 5, presets.resolve("mixture2d", "smoke"))
    model, res = train_group("mim", 5, cfg)
    fresh = MixtureModel2D(5, [0])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)   # lr 0 in epoch 0, as the reference's scheduler


def _vamp_model() -> ConvHVAE:
    """A VampPrior far from N(0, I): the q(z2|x) mean head is offset by +1 and its log-variance by -2."""
    torch.manual_seed(0)
    images = (torch.rand(5, 1, 28, 28) < 0.3).float()
    model = ConvHVAE("vampprior", n_pseudo=5, pseudo_init=images).eval()
    with torch.no_grad():
        bias = model.q_z2_head.linear.bias
        bias[:model.z2_dim] += 1.0
        bias[model.z2_dim:] -= 2.0
    return model


def test_reference_warmup_places_beta_on_the_top_prior():
    model, beta = _vamp_model(), 0.3
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    with torch.no_grad():
        torch.manual_seed(5)
        value, _ = O._mim_encoder_term(model, x, beta, None, warmup="reference")
        torch.manual_seed(5)
        q = model.encoder(x)
        z = q.rsample()
        prior = model.prior()
        z1, z2 = prior.split(z)
        lpxz = model.decoder(z).log_prob(x)
        lpz1, lpz2 = prior.conditional(z2).log_prob(z1), prior.top.log_prob(z2)
        torch.testing.assert_close(value, -(1 + beta) / 2 * (lpxz + lpz1 + beta * lpz2))
        torch.manual_seed(5)
        ours, _ = O._mim_encoder_term(model, x, beta, None, warmup="rescale")
        torch.testing.assert_close(ours, -(1 + beta) / 2 * (lpxz + lpz1 + lpz2))
        torch.manual_seed(5)
        at_one, _ = O._mim_encoder_term(model, x, 1.0, None, warmup="reference")
        torch.manual_seed(5)
        torch.testing.assert_close(at_one, O._mim_encoder_term(model, x, 1.0, None)[0])


def test_decoder_half_after_warmup_only():
    model = MixtureModel2D(5, [0, 1])
    x = MixtureStream([0, 1], n_train=32).epoch(0)
    late = O.MIMOptions(decoder_start="after_warmup")
    torch.manual_seed(1)
    half = O.mim(model, x, beta=0.5, options=late)
    torch.manual_seed(1)
    enc, _ = O._mim_encoder_term(model, x, 0.5, None)
    torch.testing.assert_close(half.value, 0.5 * enc)
    assert not any(k.startswith("dec/") for k in half.terms)
    torch.manual_seed(1)
    full = O.mim(model, x, beta=1.0, options=late)
    torch.manual_seed(1)
    torch.testing.assert_close(full.value, O.mim(model, x, beta=1.0).value)   # weight 1 once beta = 1
    assert any(k.startswith("dec/") for k in full.terms)


class _Spy(torch.nn.Module):
    """Delegates to a model and keeps the latents its decoder was called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def encoder(self, x):
        return self.model.encoder(x)

    def decoder(self, z):
        self.seen.append(z.detach())
        return self.model.decoder(z)

    def prior(self):
        return self.model.prior()

    def anchor(self):
        return self.model.anchor()


def test_prior_sampled_decoder_z_follows_the_vampprior():
    model, n = _vamp_model(), 800
    spy = _Spy(model)
    with torch.no_grad():
        torch.manual_seed(2)
        O._mim_decoder_term(spy, torch.Size([n]), 1.0, None, options=O.MIMOptions(decoder_z="prior"))
        z2 = spy.seen[-1][:, model.z1_dim:]
        top = model.prior().top
        comp_mean, comp_var = top.component_distribution.mean, top.component_distribution.variance
        mean = comp_mean.mean(0)
        var = (comp_var + comp_mean ** 2).mean(0) - mean ** 2
        se = (var / n).sqrt()
        assert bool(((z2.mean(0) - mean).abs() < 5 * se).all())
        assert bool(((z2.var(0) / var - 1).abs() < 5 * math.sqrt(2 / n)).all())
        # power: these moments are not those of the anchor N(0, I), which the default draws from
        assert float(((mean.abs() / se) + ((var - 1).abs() / math.sqrt(2 / n))).max()) > 10
        O._mim_decoder_term(spy, torch.Size([200]), 1.0, None)
        za = spy.seen[-1]
        assert bool((za.mean(0).abs() < 5 / math.sqrt(200)).all())


def test_options_are_validated_and_reference_preset_is_complete():
    with pytest.raises(ValueError, match="MIMOptions.warmup"):
        O.MIMOptions(warmup="half")
    paper = presets.resolve("images", "paper")
    assert paper.mim_options() == O.MIMOptions.reference()
    assert (paper.pseudo_init, paper.optimizer) == ("data", "adam-normgrad")
    assert presets.resolve("pixelhvae", "paper").mim_options() == O.MIMOptions.reference()
    book = presets.resolve("images", "book")
    assert book.mim_options() == O.MIMOptions() and book.optimizer == "adam"


def test_selection_last_keeps_the_last_epoch_and_never_stops():
    from mimlib.train import FitConfig, fit
    from mimlib.data import split_batches

    stream = MixtureStream([0, 1], n_train=256)
    val = stream.validation(128)
    model = MixtureModel2D(4, [0, 1])
    cfg = FitConfig(max_epochs=4, patience=1, warmup_epochs=0, selection="last")
    res = fit(model, O.get_objective("vae"), lambda e: split_batches(stream.epoch(e), 64),
              lambda: split_batches(val, 128), cfg, progress=False)
    assert res.best_epoch == [3, 3] and res.stop_epoch == [3, 3] and len(res.history) == 8
    # the returned parameters are those after the last epoch: one more validation gives its loss
    last = res.history[res.history.epoch == 3].val_loss.tolist()
    assert res.best_val_loss == pytest.approx(last)
    with pytest.raises(ValueError, match="selection"):
        FitConfig(selection="first")
