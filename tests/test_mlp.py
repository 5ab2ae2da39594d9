"""The 2-D networks' fast kernels compute the same function and gradients as the plain torch operations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from mimlib import presets
from mimlib.mixture2d import run_sweep
from mimlib.nets import mlp
from mimlib.nets.mlp import MixtureModel2D


def test_batched_affine_gradients_by_finite_differences():
    g = torch.Generator().manual_seed(0)
    for d_in, d_out in ((2, 7), (7, 2), (20, 3)):   # wide and narrow results: both layouts of _bmm
        x = torch.randn(3, 5, d_in, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(3, d_out, d_in, dtype=torch.float64, generator=g, requires_grad=True)
        b = torch.randn(3, 1, d_out, dtype=torch.float64, generator=g, requires_grad=True)
        assert torch.autograd.gradcheck(mlp._BatchedAffine.apply, (x, w, b))
        torch.testing.assert_close(mlp._BatchedAffine.apply(x, w, b), x @ w.transpose(1, 2) + b)


def test_fast_tanh_matches_tanh_and_its_gradient():
    x = torch.linspace(-12, 12, 1 << 16).reshape(4, -1).requires_grad_()
    y = mlp.fast_tanh(x)                      # large enough for the custom kernel
    assert y.grad_fn is not None and "Tanh" in type(y.grad_fn).__name__ and "Backward" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=5e-7)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=2e-6)
    assert torch.autograd.gradcheck(mlp._Tanh.apply, (torch.randn(6, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("hidden", [3, 300])   # small: plain torch path; large: the custom kernels
def test_model_gradients_match_a_plain_reference(hidden):
    """The same loss through the fast layers and through plain matmul + torch.tanh: same value and gradients."""
    torch.manual_seed(0)
    model = MixtureModel2D(hidden, [0, 1, 2])
    x = torch.randn(3, 64, 2)

    def plain(net, inp):
        h = torch.tanh(inp @ net.hidden_layer.weight.transpose(1, 2) + net.hidden_layer.bias)
        return h @ net.heads.weight.transpose(1, 2) + net.heads.bias

    def loss(fn):
        out = fn(model.enc, x)
        out = fn(model.dec, out[..., :2])
        return (out ** 2).sum()

    fast = loss(lambda net, inp: net.heads(mlp.fast_tanh(net.hidden_layer(inp))))
    g_fast = torch.autograd.grad(fast, list(model.parameters()))
    ref = loss(plain)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_sample_dimension_input_equals_one_product_per_sample():
    """(samples, models, batch, d) inputs (the NLL's importance samples) give the per-sample outputs."""
    torch.manual_seed(1)
    model = MixtureModel2D(200, [0, 1]).eval()
    z = torch.randn(5, 2, 30, 2)
    with torch.no_grad():
        q = model.decoder(z)
        for s in range(5):
            one = model.decoder(z[s])
            torch.testing.assert_close(q.mean[s], one.mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(q.stddev[s], one.stddev, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden,batch", [(5, 7), (5, 3000), (500, 300), (500, 1200)])
def test_without_gradients_the_networks_compute_the_same_in_pieces(hidden, batch, monkeypatch):
    """Without gradients a network runs in place over pieces of the batch (mlp._block_no_grad; here
    pieces of ~100 points for the wide ones): the numbers of the autograd path, to the order of sums."""
    monkeypatch.setattr(mlp, "_PIECE", 1 << 17)
    torch.manual_seed(2)
    net = MixtureModel2D(hidden, [0, 1, 2]).dec
    z = 3 * torch.randn(3, batch, 2)
    with torch.no_grad():
        a = net(z)
    b = net(z)
    assert b.mean.requires_grad and not a.mean.requires_grad
    torch.testing.assert_close(a.mean, b.mean.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.stddev, b.stddev.detach(), rtol=1e-6, atol=0)


def test_initialisation_and_legacy_layout():
    """Weights start from the same draws as before the (out, in) layout; version-1 state dicts load."""
    model = MixtureModel2D(6, [4, 9])
    g = torch.Generator().manual_seed(9)
    bound = 1 / np.sqrt(2)
    first = torch.empty(2, 6).uniform_(-bound, bound, generator=g)   # seed 9's first draw, (in, out)
    torch.testing.assert_close(model.enc.hidden_layer.weight[1], first.t())
    legacy = model.state_dict()
    for k in list(legacy):
        if k.endswith("weight"):
            legacy[k] = legacy[k].transpose(1, 2).contiguous()       # how version 1 stored it
    for k in list(legacy._metadata):
        legacy._metadata[k] = {**legacy._metadata[k], "version": 1}
    other = MixtureModel2D(6, [0, 1])
    other.load_state_dict(legacy)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    plain = MixtureModel2D(6, [0, 1])
    plain.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})   # no metadata: by shape
    assert torch.equal(plain.enc.heads.weight, model.enc.heads.weight)


def test_sweep_with_worker_processes_equals_one_process(tmp_path):
    cfg = dataclasses.replace(presets.resolve("mixture2d", "smoke"), hidden=(5, 20), seeds=(0, 1), max_epochs=3)
    one = run_sweep(cfg, runs_dir=tmp_path / "a", workers=1)
    two = run_sweep(cfg, runs_dir=tmp_path / "b", workers=2)
    assert list(two.models) == list(one.models)
    keys = ["objective", "hidden", "seed", "epochs", "best_epoch"]
    pd.testing.assert_frame_equal(two.results[keys], one.results[keys])
    for col in ("mi_ksg", "nll_is", "knn5", "recon_mean"):
        np.testing.assert_allclose(two.results[col], one.results[col], rtol=1e-3, atol=1e-3)
    for g, m in one.models.items():
        for a, b in zip(m.state_dict().values(), two.models[g].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="workers"):
        run_sweep(cfg, workers=0)
