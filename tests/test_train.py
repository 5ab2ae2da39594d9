"""The fit loop: batched seeds equal separate runs, resume is exact, NaN stops with a clear message."""

import pytest
import torch

from conftest import Interrupted, interrupt_at

from mimlib import presets
from mimlib.data import MixtureStream, mixture_means, sample_mixture, split_batches
from mimlib.mixture2d import run_sweep, train_group
from mimlib.nets.mlp import MixtureModel2D
from mimlib.objectives import get_objective
from mimlib.train import FitConfig, beta_schedule, fit

SMALL = dict(n_train=512, n_val=256, max_epochs=3, patience=2, warmup_epochs=1)


def _fit(model, stream, val, cfg, **kw):
    return fit(model, get_objective("mim"),
               train_batches=lambda e: split_batches(stream.epoch(e), 128),
               val_batches=lambda: split_batches(val, 256), config=cfg, **kw)


def test_mixture_components():
    means = mixture_means()
    assert means.shape == (5, 2)
    assert torch.allclose(means[0], torch.zeros(2))
    assert torch.allclose(means[1:].norm(dim=1), torch.ones(4))
    x, y = sample_mixture(50_000, torch.Generator().manual_seed(0))
    assert torch.bincount(y, minlength=5).min() > 9_000
    assert abs((x[y == 0]).std().item() - 0.25) < 0.01


def test_stream_is_per_seed():
    a = MixtureStream([3, 7], n_train=100)
    b = MixtureStream([7], n_train=100)
    assert torch.equal(a.epoch(4)[1], b.epoch(4)[0])
    assert not torch.equal(a.epoch(4)[1], a.epoch(5)[1])


def test_beta_schedule():
    assert [beta_schedule(e, 3) for e in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert beta_schedule(0, 0) == 1.0


def test_fit_config_validation():
    with pytest.raises(ValueError, match="patience"):
        FitConfig(patience=0)


def test_batched_seeds_match_single_runs():
    """Stacked models train exactly as alone: same data stream and init per seed, Adam is elementwise.
    (Only the reparameterisation noise differs, so compare the initialisation and one deterministic step.)"""
    both = MixtureModel2D(8, [0, 1])
    one = MixtureModel2D(8, [1])
    for k, v in one.state_dict().items():
        assert torch.equal(both.state_dict()[k][1:], v)
    # Gradients of the summed loss are the per-model gradients.
    x = MixtureStream([0, 1], n_train=64).epoch(0)
    loss = get_objective("vae")(both, x, beta=0.0)  # beta = 0: decoder mean term still random in z
    grads = torch.autograd.grad(loss.value.mean(-1).sum(), both.enc.heads.weight)[0]
    torch.manual_seed(0)
    loss_one = get_objective("vae")(both, x, beta=0.0).value.mean(-1)[1]
    g1 = torch.autograd.grad(loss_one, both.enc.heads.weight)[0]
    assert torch.count_nonzero(g1[0]) == 0 and torch.count_nonzero(g1[1]) > 0
    assert grads.shape == g1.shape


def test_resume_is_exact(tmp_path):
    """An interrupted run continues where it stopped, with identical results."""
    cfg = FitConfig(max_epochs=4, patience=5, warmup_epochs=2, seed=3)
    stream = MixtureStream([0, 1], n_train=512)
    val = stream.validation(256)

    ref = MixtureModel2D(6, [0, 1])
    res_ref = _fit(ref, stream, val, cfg)

    m = MixtureModel2D(6, [0, 1])
    with pytest.raises(Interrupted):
        _fit(m, stream, val, cfg, run_dir=tmp_path, on_epoch_end=interrupt_at(2))
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "final.pt").exists()
    m2 = MixtureModel2D(6, [0, 1])
    res = _fit(m2, stream, val, cfg, run_dir=tmp_path)
    assert res.resumed_from == 1
    for k, v in ref.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k
    assert res.history["val_loss"].tolist() == res_ref.history["val_loss"].tolist()
    # A finished run is loaded, not retrained.
    m3 = MixtureModel2D(6, [0, 1])
    res3 = _fit(m3, stream, val, cfg, run_dir=tmp_path)
    assert res3.loaded and torch.equal(m3.enc.heads.weight, ref.enc.heads.weight)


def test_resume_refuses_other_config(tmp_path):
    stream = MixtureStream([0], n_train=256)
    val = stream.validation(128)
    _fit(MixtureModel2D(4, [0]), stream, val, FitConfig(max_epochs=1), run_dir=tmp_path, run_config={"a": 1})
    with pytest.raises(ValueError, match="different configuration"):
        _fit(MixtureModel2D(4, [0]), stream, val, FitConfig(max_epochs=1), run_dir=tmp_path, run_config={"a": 2})


def test_nan_stops_with_step_and_terms():
    stream = MixtureStream([0], n_train=512)
    val = stream.validation(128)
    model = MixtureModel2D(4, [0])
    with torch.no_grad():
        model.dec.heads.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1.*enc/log p\(x\|z\)"):
        _fit(model, stream, val, FitConfig(max_epochs=2))


def test_early_stopping_per_model_restores_best():
    stream = MixtureStream([0, 1], n_train=256)
    val = stream.validation(256)
    model = MixtureModel2D(4, [0, 1])
    res = fit(model, get_objective("vae"), lambda e: split_batches(stream.epoch(e), 128),
              lambda: split_batches(val, 256), FitConfig(max_epochs=30, patience=1, lr=0.05))
    h = res.history
    for i in range(2):
        hi = h[h.model == i]
        assert res.best_val_loss[i] == pytest.approx(hi.val_loss.min(), rel=1e-6)
        assert res.best_epoch[i] == int(hi.loc[hi.val_loss.idxmin(), "epoch"])
        assert res.stop_epoch[i] <= res.best_epoch[i] + 1
        assert int(hi.epoch.max()) == res.stop_epoch[i]  # no history after a model stopped


def test_stopped_models_are_frozen_while_others_train():
    """A seed that stopped keeps its best parameters while the rest of the batch trains on."""
    stream = MixtureStream([0, 1, 2], n_train=256)
    val = stream.validation(256)
    model = MixtureModel2D(4, [0, 1, 2])
    snapshots = {}

    def record(epoch, m):
        snapshots[epoch] = m.enc.heads.weight.detach().clone()

    res = fit(model, get_objective("vae"), lambda e: split_batches(stream.epoch(e), 128),
              lambda: split_batches(val, 256), FitConfig(max_epochs=40, patience=1, lr=0.02),
              on_epoch_end=record)
    first, last = min(res.stop_epoch), max(res.stop_epoch)
    assert first < last, "need one model to stop before the other for this test"
    i = res.stop_epoch.index(first)
    # From the epoch after it stopped, model i sits at its best parameters.
    for e in range(first + 1, last + 1):
        assert torch.equal(snapshots[e][i], model.enc.heads.weight[i])


def test_presets_and_overrides():
    cfg = presets.resolve("mixture2d", "smoke", seeds=[4, 5])
    assert cfg.seeds == (4, 5) and cfg.hidden == (5, 20)
    book = presets.resolve("mixture2d", "book")
    assert len(book.hidden) == 8 and len(book.seeds) == 10 and book.patience == 10
    with pytest.raises(ValueError, match="unknown setting"):
        presets.resolve("mixture2d", "smoke", hiden=(5,))
    with pytest.raises(ValueError, match="unknown preset"):
        presets.resolve("mixture2d", "fast")


def test_sweep_smoke_columns(tmp_path):
    cfg = presets.resolve("mixture2d", "smoke", hidden=(5,), max_epochs=2)
    r = run_sweep(cfg, runs_dir=tmp_path)
    need = {"objective", "hidden", "seed", "mi_ksg", "nll_is", "nll_single", "recon_mean",
            "recon_sample", "knn5", "epochs", "seconds"}
    assert need <= set(r.results.columns)
    assert len(r.results) == 2 * len(cfg.seeds)
    again = run_sweep(cfg, runs_dir=tmp_path)
    assert again.results.drop(columns=["seconds", "group_seconds"]).equals(
        r.results.drop(columns=["seconds", "group_seconds"]))
