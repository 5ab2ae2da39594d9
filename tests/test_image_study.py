"""The image study: a tiny end-to-end run on real MNIST, exact resume, evaluation columns, metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from mimlib import image_study as S
from mimlib import metrics, presets

from conftest import SHARED_DATA, Interrupted, interrupt_at
from mimlib.nets.hvae import ConvHVAE


REQUIRED = ["dataset", "prior", "objective", "model", "seed", "preset", "epochs", "knn1", "knn3", "knn5",
            "knn10", "nll_is", "recon", "active_units", "seconds"]

#: A few steps on 200 images; every code path of the book run (channels last, curves) in the precision this
#: machine is fast at ("auto"); bf16 itself is tested on tiny models below, on every machine.
TINY = dict(preset="test", n_train_subset=200, batch_size=50, steps_per_epoch=2, max_epochs=2, warmup_epochs=1,
            patience=2, n_val_subset=100, n_pseudo=10, precision="auto", channels_last=True,
            eval_precision="auto", curve_knn_train=200, curve_knn_val=100, n_knn_train=200, n_eval_test=100,
            nll_samples=4, n_nll_points=20, au_samples=2, eval_batch=100, threads=1)


def tiny(**kw) -> S.ImageStudyConfig:
    return S.ImageStudyConfig(**{**TINY, **kw})


# ----------------------------------------------------------------------------- end to end


def test_tiny_end_to_end(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLIB_DATA", str(SHARED_DATA))
    cfg = tiny(prior="standard")
    study = S.run_study(cfg, datasets=["mnist"], objectives=["mim", "vae"], runs_dir=tmp_path)
    res = study.results
    assert len(res) == 2 and set(REQUIRED) <= set(res.columns)
    assert list(res.objective) == ["mim", "vae"] and (res.model == "convhvae").all()
    assert (res.epochs == 2).all() and (res.examples == 2 * 2 * 50).all()
    for k in (1, 3, 5, 10):
        assert res[f"knn{k}"].between(0, 1).all() and res[f"knn{k}_mean"].between(0, 1).all()
    assert np.isfinite(res.nll_is).all() and (res.nll_is > 0).all() and (res.recon > 0).all()
    assert res.active_units.between(0, 80).all()
    assert (res.active_units == res.active_z1 + res.active_z2).all()
    assert (res.nll_samples == 4).all() and (res.nll_points == 20).all() and (res.knn_train == 200).all()
    # learning curves: one row per epoch, the cheap k-NN and the loss terms against examples seen
    h = study.history
    assert len(h) == 4 and {"curve_knn", "examples", "val_loss", "beta", "train_loss", "kl",
                            "enc/log p(x|z)", "dec/log p(x|z)"} <= set(h.columns)
    assert h.curve_knn.between(0, 1).all() and list(h.examples[:2]) == [100, 200]
    # run folders named from the hash; the evaluation row is cached beside the model
    for run in res.run:
        assert (tmp_path / run / "final.pt").exists() and list((tmp_path / run).glob("eval-*.json"))
    # a second call loads both models and their rows: identical numbers
    again = S.run_study(cfg, datasets=["mnist"], objectives=["mim", "vae"], runs_dir=tmp_path)
    pd.testing.assert_frame_equal(again.results, res)


def test_resume_is_exact(mnist, tmp_path):
    """Interrupted after epoch 1 (the callback raises), resumed: identical to an uninterrupted run."""
    cfg = tiny(prior="vampprior", objective="mim", max_epochs=3, warmup_epochs=2, steps_per_epoch=2)
    ref, res_ref, _ = S.train_model(cfg, tmp_path / "a", data=mnist)
    with pytest.raises(Interrupted):
        S.train_model(cfg, tmp_path / "b", data=mnist, on_epoch_end=interrupt_at(1))
    run_dir = tmp_path / "b" / S.run_name(cfg)
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "final.pt").exists()
    resumed, res, _ = S.train_model(cfg, tmp_path / "b", data=mnist)
    assert res.resumed_from == 0 and not res.loaded
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    cols = [c for c in res_ref.history.columns if "seconds" not in c]
    pd.testing.assert_frame_equal(res.history[cols], res_ref.history[cols])


def test_evaluation_depends_only_on_eval_settings(mnist, tmp_path):
    cfg = tiny(prior="standard", objective="vae", max_epochs=1)
    assert S.run_name(cfg) == S.run_name(dataclasses.replace(cfg, nll_samples=99, threads=2, preset="x"))
    assert S.run_name(cfg) != S.run_name(dataclasses.replace(cfg, lr=1e-3))
    model, res, data = S.train_model(cfg, tmp_path, data=mnist)
    run_dir = tmp_path / S.run_name(cfg)
    row = S.evaluate_model(model, data, cfg, res, run_dir)
    assert set(REQUIRED) <= set(row) and row["preset"] == "test" and row["epochs"] == 1
    assert row["run"] == S.run_name(cfg) and row["seconds"] == pytest.approx(res.seconds)
    # cached: read back, not recomputed
    assert S.evaluate_model(model, data, cfg, res, run_dir) == row
    other = S.evaluate_model(model, data, dataclasses.replace(cfg, nll_samples=2), res, run_dir)
    assert other["nll_samples"] == 2 and len(list(run_dir.glob("eval-*.json"))) == 2


# ----------------------------------------------------------------------------- pieces


def test_active_units_constructed():
    rng = np.random.default_rng(0)
    n = 20_000
    stds = np.array([1.0, 0.3, 0.2, 0.05, 0.0])      # variances 1, 0.09, 0.04, 0.0025, 0
    means = rng.standard_normal((n, 5)) * stds + 3.0  # the offset does not matter
    assert S.active_units(means).tolist() == [True, True, True, False, False]
    assert S.active_units(means, threshold=0.05).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError):
        S.active_units(np.zeros(5))


def test_active_units_of_a_constructed_model():
    """q(z2|x) with a zero mean head: E[z2|x] = 0 for every x, so no z2 unit is active."""
    torch.manual_seed(0)
    m = ConvHVAE("standard").eval()
    with torch.no_grad():
        w = m.q_z2_head.linear
        w.weight[:40].zero_()
        w.bias[:40].zero_()
    x = (torch.rand(64, 1, 28, 28) < 0.3).float()
    mu = S.posterior_means(m, x, n_samples=2)
    assert mu.shape == (64, 80) and np.allclose(mu[:, 40:], 0)
    au = S.active_units(mu, threshold=1e-6)
    assert au[40:].sum() == 0 and au[:40].sum() > 0


def test_knn_accuracies_match_scikit_learn():
    rng = np.random.default_rng(1)
    z_tr, z_te = rng.standard_normal((300, 6)), rng.standard_normal((120, 6))
    y_tr, y_te = rng.integers(0, 4, 300), rng.integers(0, 4, 120)
    z_tr[:, 0] += y_tr
    z_te[:, 0] += y_te
    got = S.knn_accuracies(z_tr, y_tr, z_te, y_te, (1, 3, 5, 10))
    for k, acc in got.items():
        clf = KNeighborsClassifier(n_neighbors=k).fit(z_tr.astype(np.float32), y_tr)
        assert acc == clf.score(z_te.astype(np.float32), y_te)
        assert metrics.knn_accuracy(z_tr, y_tr, z_te, y_te, k=k) == acc   # one k-NN path


def test_epoch_batches_continue_through_passes(mnist):
    data = S._subset(mnist, tiny(n_train_subset=200, batch_size=50))   # 4 batches per pass
    stream = [x for e in range(3) for x in S.epoch_batches(data, e, 3)]  # 9 steps
    passes = [x for p in range(3) for x, _ in data.train_batches(p, drop_last=True)]
    assert len(stream) == 9
    for a, b in zip(stream, passes[:9]):
        assert torch.equal(a, b)
    # one full pass per epoch without steps_per_epoch
    assert len(list(S.epoch_batches(data, 0, None))) == 4


def test_embed_leaves_global_rng_alone():
    m = ConvHVAE("standard").eval()
    x = (torch.rand(8, 1, 28, 28) < 0.3).float()
    torch.manual_seed(4)
    before = torch.get_rng_state()
    zs, zm = S.embed(m, x)
    assert torch.equal(torch.get_rng_state(), before)
    assert zs.shape == zm.shape == (8, 80)
    zs2, zm2 = S.embed(m, x)
    assert np.array_equal(zs, zs2) and np.array_equal(zm, zm2)


def test_presets_and_validation():
    smoke, book, paper = (presets.resolve("images", p) for p in ("smoke", "book", "paper"))
    assert (smoke.preset, book.preset, paper.preset) == ("smoke", "book", "paper")
    assert (paper.lr, paper.batch_size, paper.max_epochs, paper.patience, paper.warmup_epochs,
            paper.nll_samples, paper.precision) == (5e-4, 100, 2000, 50, 100, 5000, "auto")
    # the book schedule: the weight reaches 1 within the first half of every model's budget
    assert book.warmup_epochs <= book.max_epochs / 2
    with pytest.raises(ValueError):
        S.ImageStudyConfig(dataset="cifar")
    with pytest.raises(ValueError):
        S.ImageStudyConfig(precision="fp16")


def test_fast_compute_keeps_model_and_float32_densities():
    """bf16 autocast + channels last: same parameters, float32 log-densities close to the fp32 ones."""
    torch.manual_seed(0)
    m = ConvHVAE("vampprior", n_pseudo=5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    with torch.no_grad():
        torch.manual_seed(1)
        z = m.encoder(x).sample()
        ref = (m.encoder(x).log_prob(z), m.decoder(z).log_prob(x), m.prior().log_prob(z))
        m.set_compute("bf16", channels_last=True)
        fast = (m.encoder(x).log_prob(z), m.decoder(z).log_prob(x), m.prior().log_prob(z))
    assert m.q_z2_convs[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in m.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    for a, b in zip(ref, fast):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-2, atol=0.5)
    with pytest.raises(ValueError):
        m.set_compute("fp16")


def test_time_per_epoch_differences_cumulative_seconds():
    """The history holds cumulative seconds; time_per_epoch turns them into per-epoch statistics."""
    key = dict(dataset="mnist", prior="standard", seed=0)
    hist = pd.DataFrame([{**key, "objective": "mim", "epoch": e, "seconds": s} for e, s in [(2, 45.0), (0, 10.0), (1, 25.0)]]
                        + [{**key, "objective": "vae", "epoch": e, "seconds": s} for e, s in [(0, 4.0), (1, 12.0)]])
    res = pd.DataFrame([{**key, "objective": "mim", "steps_per_epoch": 5, "epochs": 3, "seconds": 45.0, "eval_seconds": 7.0},
                        {**key, "objective": "vae", "steps_per_epoch": 4, "epochs": 2, "seconds": 12.0, "eval_seconds": 3.0}])
    study = S.StudyResult(results=res, history=hist, models={}, data={})
    t = S.time_per_epoch(study)
    mim = t.loc[("mnist", "standard", "mim", 0)]
    assert (mim["median s/epoch"], mim["min s/epoch"], mim["max s/epoch"]) == (15.0, 10.0, 20.0)
    assert mim["median s/step"] == 3.0 and mim["training s"] == 45.0 and mim["evaluation s"] == 7.0
    vae = t.loc[("mnist", "standard", "vae", 0)]
    assert (vae["median s/epoch"], vae["min s/epoch"], vae["max s/epoch"]) == (6.0, 4.0, 8.0)
    assert vae["median s/step"] == 1.5


def test_training_curves_merge_vae_and_mim_columns():
    """VAE rows carry log p(x|z) / kl, MIM and A-MIM rows enc/...: one recon_train and rate column for both."""
    hist = pd.DataFrame([
        {"objective": "vae", "log p(x|z)": -90.0, "kl": 3.0},
        {"objective": "amim", "enc/log p(x|z)": -80.0, "enc/log q(z|x)": 126.5, "enc/log p(z)": 124.0},
    ])
    out = S.training_curves(hist)
    assert out.recon_train.tolist() == [90.0, 80.0]
    assert out.rate.tolist() == [3.0, 2.5]
    assert "dec_nll" not in out and "recon_train" not in hist   # the input is not modified
    mim = pd.DataFrame([{"objective": "mim", "enc/log p(x|z)": -70.0, "enc/log q(z|x)": 10.0,
                         "enc/log p(z)": 4.0, "dec/log p(x|z)": -30.0}])
    out = S.training_curves(mim)
    assert (out.recon_train.item(), out.rate.item(), out.dec_nll.item()) == (70.0, 6.0, 30.0)
