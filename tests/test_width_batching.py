"""Widths trained as one batched model (mimlib.bucket2d): each model as alone, padding exactly zero, early
stopping per model and group, checkpoints in fit's format that resume exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import Interrupted, interrupt_at

from mimlib import bucket2d as B
from mimlib import mixture2d as M
from mimlib import presets
from mimlib.data import MixtureStream, split_batches
from mimlib.nets.mlp import MixtureModel2D
from mimlib.objectives import MIMOptions, get_objective
from mimlib.train import FitConfig, fit

SEEDS = [0, 1, 2]
STREAM = MixtureStream(SEEDS, n_train=384)
VAL = STREAM.validation(300)


def _train(e):
    return split_batches(STREAM.epoch(e), 128)


def _val():
    return split_batches(VAL, 200)


def _alone(objective, hidden, cfg, options=MIMOptions()):
    model = MixtureModel2D(hidden, SEEDS)
    res = fit(model, get_objective(objective, options), _train, _val, cfg, progress=False)
    return model, res


def _bucket(objective, widths, cfg, options=MIMOptions(), run_root=None, **kw):
    members = [B.BucketMember(h, run_root / f"H{h}" if run_root is not None else None, {"hidden": h})
               for h in widths]
    return B.fit_bucket(objective, members, SEEDS, _train, _val, cfg, options, progress=False, **kw)


def _close(a: MixtureModel2D, b: MixtureModel2D, rtol=1e-5, atol=1e-7):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("objective,options", [("mim", MIMOptions()), ("vae", MIMOptions()),
                                               ("mim", MIMOptions(decoder_start="after_warmup")),
                                               ("amim", MIMOptions())])
def test_a_bucket_trains_every_width_as_alone(objective, options):
    """Widths {5, 20} as one bucket (5 zero-padded to 20) for a few steps (2 epochs of 3 steps, the first
    in the warm-up): the same per-model parameters, validation losses and history as each width trained
    alone by fit (objectives and autograd), and as a bucket of its own, to float rounding."""
    cfg = FitConfig(max_epochs=2, patience=5, warmup_epochs=2, seed=0)
    joint = _bucket(objective, [5, 20], cfg, options)
    for h, (model, res) in zip([5, 20], joint):
        ref, ref_res = _alone(objective, h, cfg, options)
        _close(ref, model)
        assert res.stop_epoch == ref_res.stop_epoch and res.best_epoch == ref_res.best_epoch
        torch.testing.assert_close(torch.tensor(res.best_val_loss), torch.tensor(ref_res.best_val_loss), rtol=1e-6,
                                   atol=0)
        assert list(res.history.columns) == list(ref_res.history.columns)
        (one, one_res), = _bucket(objective, [h], cfg, options)
        _close(one, model)   # torch's products may sum the padded zeros in another order


def test_padded_units_stay_exactly_zero():
    """Width 5 padded to 20 next to width 20: after 10 training steps the padded units' weights, biases,
    output weights and Adam moments are exactly 0 (tanh(0) = 0: no output, no gradient)."""
    states = [MixtureModel2D(h, SEEDS).state_dict() for h in (5, 20)]
    full = B._stack_groups(states, 20)
    zeros = {k: torch.zeros_like(v) for k, v in full.items()}
    rows = torch.arange(2 * len(SEEDS))
    engine = B._Engine("mim", MIMOptions(), len(SEEDS), rows % len(SEEDS), 1e-6)
    engine.set(rows, 20, [B._active(t, rows, 20) for t in (full, zeros, zeros)])
    gen = torch.Generator().manual_seed(0)
    sums = torch.zeros(9, rows.numel())
    for step, xb in enumerate(_train(0)):
        engine.loss_sums(xb, engine.noise(gen, 3, xb.shape[1]), 1.0, "mim", 1.0, True, sums)
        engine.adam(step + 1, 1e-2)
    for step, xb in enumerate(_train(1)):
        engine.loss_sums(xb, engine.noise(gen, 3, xb.shape[1]), 1.0, "mim", 1.0, True, sums)
        engine.adam(step + 4, 1e-2)
    narrow = slice(0, len(SEEDS))   # the width-5 models' rows among the encoders (and, + A, the decoders)
    a = rows.numel()
    for flat in (engine.theta, engine.m, engine.v, engine.grad):
        w1, b1, w2, b2 = engine.views(flat)
        for half in (narrow, slice(a + narrow.start, a + narrow.stop)):
            assert torch.count_nonzero(w1[half, 5:]) == 0
            assert torch.count_nonzero(b1[half, :, 5:]) == 0
            assert torch.count_nonzero(w2[half, :, 5:]) == 0
    moved = engine.views(engine.theta)[2][narrow, :, :5] - B._active(full, rows, 20)[2][narrow, :, :5]
    assert torch.count_nonzero(moved) > 0


def test_early_stopping_freezes_exactly_the_stopped_group(tmp_path):
    """Per-model early stopping as fit's (a large rate, patience 1): a group stops before the others; at that
    epoch its final.pt is written with its best parameters and it leaves the bucket, while the other groups
    train on; every group ends where it ends alone, and the stopped group's result does not change after."""
    cfg = FitConfig(max_epochs=14, patience=1, warmup_epochs=1, seed=0, lr=0.02)
    widths = [5, 20, 50]
    alone = {h: _alone("vae", h, cfg) for h in widths}
    stops = {h: max(r.stop_epoch) for h, (_, r) in alone.items()}
    first = min(stops, key=stops.get)
    assert stops[first] < max(stops.values()), stops   # a group stops before the others
    seen = {}

    def look(epoch):
        seen[epoch] = {h: ((tmp_path / f"H{h}" / "final.pt").exists(), (tmp_path / f"H{h}" / "checkpoint.pt").exists())
                       for h in widths}
        if epoch == stops[first]:
            seen["frozen"] = torch.load(tmp_path / f"H{first}" / "final.pt", weights_only=False)["model"]

    out = _bucket("vae", widths, cfg, run_root=tmp_path, checkpoint_seconds=1e9, after_epoch=look)
    for h, (model, res) in zip(widths, out):
        ref, ref_res = alone[h]
        assert res.stop_epoch == ref_res.stop_epoch and res.best_epoch == ref_res.best_epoch, h
        _close(ref, model, rtol=1e-4, atol=1e-6)
    e = stops[first]
    assert seen[e][first] == (True, False)   # finished at its stop epoch: final.pt, no checkpoint
    for h in widths:
        if stops[h] > e:
            assert seen[e][h] == (False, True), (h, seen[e])   # the others checkpointed at that epoch, train on
    final = torch.load(tmp_path / f"H{first}" / "final.pt", weights_only=False)["model"]
    for k, v in seen["frozen"].items():
        assert torch.equal(final[k], v)
    model = dict(zip(widths, out))[first][0]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())


def test_a_killed_bucket_resumes_exactly(tmp_path):
    """Interrupted after an epoch at which one group had finished and the others had checkpointed: the
    finished group loads, the others resume from their checkpoints, and every result equals the
    uninterrupted bucket's bit for bit (the resumed bucket stacks the same models at the same width)."""
    cfg = FitConfig(max_epochs=14, patience=1, warmup_epochs=1, seed=0, lr=0.02)
    widths = [5, 20, 50]
    ref = _bucket("vae", widths, cfg, run_root=tmp_path / "ref")
    stops = {h: max(r.stop_epoch) for h, (_, r) in zip(widths, ref)}
    cut = min(stops.values()) + 1   # a group has finished, another one not yet
    assert cut < max(stops.values()), stops
    with pytest.raises(Interrupted):
        _bucket("vae", widths, cfg, run_root=tmp_path / "run", checkpoint_seconds=0, after_epoch=interrupt_at(cut))
    for h in widths:
        assert (tmp_path / "run" / f"H{h}" / ("final.pt" if stops[h] <= cut else "checkpoint.pt")).exists()
    out = _bucket("vae", widths, cfg, run_root=tmp_path / "run")
    for h, (model, res), (rmodel, rres) in zip(widths, out, ref):
        if stops[h] <= cut:
            assert res.loaded
        else:
            assert res.resumed_from == cut and not res.loaded
        assert res.stop_epoch == rres.stop_epoch
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rmodel.state_dict().values())), h
        cols = [c for c in res.history.columns if c != "seconds"]
        assert res.history[cols].equals(rres.history[cols]), h
    again = _bucket("vae", widths, cfg, run_root=tmp_path / "run")   # finished: all loaded
    assert all(r.loaded for _, r in again)


def test_a_bucket_checkpoint_is_fits_and_fit_resumes_it(tmp_path):
    """A group's checkpoint written by a bucket has fit's format (Adam's state dict included): fit alone
    resumes it and ends where the bucket ends (to rounding)."""
    cfg = FitConfig(max_epochs=4, patience=5, warmup_epochs=1, seed=0)
    ref = _bucket("mim", [5, 20], cfg)
    with pytest.raises(Interrupted):
        _bucket("mim", [5, 20], cfg, run_root=tmp_path, checkpoint_seconds=0, after_epoch=interrupt_at(1))
    ck = torch.load(tmp_path / "H20" / "checkpoint.pt", weights_only=False)
    model = MixtureModel2D(20, SEEDS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert ck["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    opt.load_state_dict(ck["optimizer"])
    res = fit(model, get_objective("mim"), _train, _val, cfg, run_dir=tmp_path / "H20", run_config={"hidden": 20},
              progress=False)
    assert res.resumed_from == 1
    _close(ref[1][0], model, rtol=1e-4, atol=1e-6)


def test_buckets_of_the_book_widths_and_group_identity(tmp_path):
    """The book's widths fall into buckets by a rule of the widths alone; a sweep trains them in buckets and
    every (objective, width) keeps its run folder (named as ever) and its run record."""
    assert M.bucket_widths((5, 20, 50, 100, 200, 300, 400, 500)) == [(5, 20), (50,), (100,), (200,), (300,),
                                                                     (400,), (500,)]
    assert M.bucket_widths((20, 5)) == [(5, 20)] and M.bucket_widths((5,)) == [(5,)]
    cfg = dataclasses.replace(presets.resolve("mixture2d", "smoke"), hidden=(5, 20), seeds=(0, 1), max_epochs=2)
    sweep = M.run_sweep(cfg, runs_dir=tmp_path / "runs", records_dir=tmp_path / "rec")
    names = {M.group_name(o, h, cfg) for o in cfg.objectives for h in cfg.hidden}
    assert {p.name for p in (tmp_path / "runs").iterdir()} == names
    assert {p.name for p in (tmp_path / "rec" / "mixture2d").iterdir()} == names
    assert all((tmp_path / "runs" / n / "final.pt").exists() for n in names)
    for (o, h), model in sweep.models.items():
        one, _ = M.train_group(o, h, cfg)   # alone (no runs folder): the same model
        _close(one, model)


@pytest.mark.parametrize("m,b,h", [(3, 21, 7), (2, 130, 300)])
def test_gaussian_block_is_autograd_of_the_module_s_operations(m, b, h):
    """gaussian_block (the bucket's networks, with their written-out backward) against autograd through
    GaussianMLP's operations, in float64, some log-stds clamped; its buffers reused across calls."""
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, b, 2), (m, h, 2), (m, 1, h), (m, 4, h),
                                                                       (m, 1, 4))]
    args[4][:, :, 2:] += 9.5   # log-stds about the clamp at 10
    ref_args = [t.clone().requires_grad_() for t in args]
    out = torch.tanh(ref_args[0] @ ref_args[1].transpose(1, 2) + ref_args[2]) @ ref_args[3].transpose(1, 2) + ref_args[4]
    mean, log_std = out.chunk(2, dim=-1)
    ref = (mean, 1e-6 + torch.exp(log_std.clamp(max=10.0)))
    assert bool((log_std > 10).any()) and bool((log_std < 10).any())
    g_mean, g_std = torch.randn(m, b, 2, generator=g, dtype=torch.float64), torch.randn(m, b, 2, generator=g,
                                                                                         dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, ref_args, (g_mean, g_std))
    ws = B._Workspace()
    for _ in range(2):
        ours = [t.clone().requires_grad_() for t in args]
        got = B.gaussian_block(*ours, 1e-6, ws, "slot")
        grads = torch.autograd.grad(got, ours, (g_mean, g_std))
        for a, r in zip((*got, *grads), (*ref, *ref_grads)):
            torch.testing.assert_close(a, r.detach(), rtol=1e-10, atol=1e-10)
