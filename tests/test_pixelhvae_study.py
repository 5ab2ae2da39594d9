"""The PixelHVAE study (appendix E.2): tiny end-to-end runs with the VAE and A-MIM, run-name stability of
the convHVAE runs, the figure helpers (reconstructions, samples), presets and the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimlib import image_cli
from mimlib import image_study as S
from mimlib import presets
from mimlib.nets.hvae import ConvHVAE
from mimlib.nets.pixelhvae import PixelHVAE


#: 2 steps of 50 on 100 images, small VampPrior, tiny evaluation; the book run's compute settings.
TINY = dict(preset="test", model="pixelhvae", prior="vampprior", n_train_subset=100, batch_size=50,
            steps_per_epoch=1, max_epochs=2, warmup_epochs=1, patience=2, n_val_subset=50, n_pseudo=10,
            precision="auto", channels_last=True, eval_precision="auto", curve_knn_train=100, curve_knn_val=50,
            n_knn_train=100, n_eval_test=50, nll_samples=3, n_nll_points=10, au_samples=2, eval_batch=50,
            threads=1)


def tiny(**kw) -> S.ImageStudyConfig:
    return S.ImageStudyConfig(**{**TINY, **kw})


def _binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# ----------------------------------------------------------------------------- the convHVAE runs keep their names


def test_committed_run_folders_keep_loading():
    """The committed image runs were named when precision and channels_last were part of the hash:
    each committed name is one of its config's legacy names, which train_model finds and renames."""
    base = presets.resolve("images", "book", dataset="mnist", prior="standard", objective="vae", pseudo_init="normal")
    assert base.model == "convhvae"
    assert "images-mnist-S-vae-s0-1b1eef37b4" in S._legacy_run_names(base)
    mim = presets.resolve("images", "book", dataset="mnist", prior="standard", objective="mim", pseudo_init="normal")
    assert "images-mnist-S-mim-s0-770446f2dc" in S._legacy_run_names(mim)
    assert S.run_name(base) not in S._legacy_run_names(base)
    assert base.run_key()["model"] == "convhvae" and base.run_key()["study"] == "images"
    committed = pd.read_csv(Path(__file__).resolve().parents[1] / "book" / "results" / "images.csv")
    for row in committed.itertuples():
        study = "images" if row.model == "convhvae" else row.model
        # trained before the book presets moved to pseudo_init="data" (chapter 07)
        cfg = presets.resolve(study, "book", dataset=row.dataset, prior=row.prior, objective=row.objective,
                              seed=row.seed, pseudo_init="normal")
        assert row.run in S._legacy_run_names(cfg), row.run


def test_pixelhvae_runs_are_named_apart():
    conv = presets.resolve("images", "book", dataset="mnist", prior="vampprior", objective="vae")
    pix = dataclasses.replace(conv, model="pixelhvae")
    assert S.run_name(pix).startswith("images-pixelhvae-mnist-VP-vae-s0-")
    assert S.run_name(pix)[-10:] != S.run_name(conv)[-10:]
    assert pix.run_key()["model"] == "pixelhvae"
    with pytest.raises(ValueError):
        S.ImageStudyConfig(model="pixelcnn")


# ----------------------------------------------------------------------------- end to end


def test_tiny_end_to_end_vae_and_amim(mnist, tmp_path):
    study = S.run_study(tiny(), datasets=["mnist"], objectives=["vae", "amim"], runs_dir=tmp_path,
                        data={"mnist": mnist})
    res = study.results
    assert list(res.objective) == ["vae", "amim"] and (res.model == "pixelhvae").all()
    assert (res.prior == "vampprior").all() and (res.epochs == 2).all() and (res.examples == 2 * 50).all()
    assert np.isfinite(res.nll_is).all() and (res.nll_is > 0).all() and (res.recon > 0).all()
    assert res.knn5.between(0, 1).all() and res.active_units.between(0, 80).all()
    for run in res.run:
        assert run.startswith("images-pixelhvae-mnist-VP-")
        assert (tmp_path / run / "final.pt").exists() and list((tmp_path / run).glob("eval-*.json"))
    for (_, _, objective, _), model in study.models.items():
        assert isinstance(model, PixelHVAE) and not model.training
    h = study.history
    assert "curve_knn" in h and "enc/log p(x|z)" in h and "dec/log p(x|z)" not in h   # A-MIM: no decoder samples
    # the figure helpers on a trained model
    model = study.models[("mnist", "vampprior", "amim", 0)]
    x = mnist.test[:6]
    rec = S.reconstructions(model, x, batch=4)
    smp = S.samples(model, 5, batch=3)
    assert rec.shape == (6, 1, 28, 28) and smp.shape == (5, 1, 28, 28)
    assert rec.dtype == smp.dtype == torch.float32 and _binary(rec) and _binary(smp)


def test_figure_helpers_reproducible_and_leave_state_alone():
    torch.manual_seed(0)
    model = PixelHVAE("vampprior", n_pseudo=5)
    model.train()
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = S.reconstructions(model, x, generator_seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(m.training for m in model.modules())           # modes restored
    assert torch.equal(a, S.reconstructions(model, x, generator_seed=1))
    s1, s2 = S.samples(model, 4, generator_seed=2), S.samples(model, 4, generator_seed=2)
    assert torch.equal(s1, s2) and _binary(s1) and s1.shape == (4, 1, 28, 28)
    assert S.samples(model, 0).shape == (0, 1, 28, 28)
    # the same helpers draw Bernoulli images from the convHVAE
    conv = ConvHVAE("standard").eval()
    assert _binary(S.reconstructions(conv, x)) and S.samples(conv, 2).shape == (2, 1, 28, 28)


def test_build_model_picks_the_class():
    assert type(S.build_model(tiny(model="convhvae", prior="standard"))) is ConvHVAE
    m = S.build_model(tiny(precision="bf16"))
    assert isinstance(m, PixelHVAE) and m.precision == "bf16" and m.channels_last
    assert m.n_pseudo == 10


# ----------------------------------------------------------------------------- presets and command line


def test_presets_resolve():
    smoke, book, paper = (presets.resolve("pixelhvae", p) for p in ("smoke", "book", "paper"))
    for c in (smoke, book, paper):
        assert (c.model, c.prior) == ("pixelhvae", "vampprior")
    assert (smoke.preset, book.preset, paper.preset) == ("smoke", "book", "paper")
    assert (paper.lr, paper.batch_size, paper.max_epochs, paper.patience, paper.warmup_epochs,
            paper.nll_samples, paper.n_nll_points, paper.precision, paper.device) == (
        5e-4, 100, 2000, 50, 100, 5000, None, "auto", "auto")
    # book: the KL/MIM weight is 1 for at least half of the epochs (warm-up reaches 1 at epoch warmup_epochs)
    assert book.warmup_epochs <= book.max_epochs / 2 and book.batch_size == 100
    assert smoke.n_train_subset <= 500 and smoke.max_epochs * smoke.steps_per_epoch <= 10
    # the convHVAE presets are untouched by the new study
    assert presets.resolve("images", "book").model == "convhvae"
    assert presets.resolve("pixelhvae", "book", objective="amim", dataset="fashion-mnist").objective == "amim"


def test_cli_resolves_pixelhvae(monkeypatch, tmp_path):
    """--model pixelhvae picks the pixelhvae presets (prior from the preset); training is stubbed out."""
    seen = {}

    def fake_train(cfg, runs_dir, **kw):
        seen["cfg"], seen["runs_dir"] = cfg, runs_dir
        raise SystemExit(0)

    monkeypatch.setattr(S, "train_model", fake_train)
    with pytest.raises(SystemExit):
        image_cli.main(["--model", "pixelhvae", "--preset", "smoke", "--dataset", "mnist", "--objective", "amim",
                "--runs-dir", str(tmp_path)])
    cfg = seen["cfg"]
    assert (cfg.model, cfg.prior, cfg.objective, cfg.preset) == ("pixelhvae", "vampprior", "amim", "smoke")
    seen.clear()
    with pytest.raises(SystemExit) as err:   # the convHVAE still needs --prior: an argparse error, no training
        image_cli.main(["--preset", "smoke", "--dataset", "mnist", "--objective", "vae"])
    assert err.value.code == 2 and not seen


def test_cli_set_repeats_and_overrides_named_flags(monkeypatch):
    """Every --set counts; --set seed=1 (a named flag's field) is taken, not a 'multiple values' crash."""
    seen = {}

    def fake_train(cfg, runs_dir, log=False):
        seen["cfg"] = cfg
        raise SystemExit(0)
    monkeypatch.setattr(S, "train_model", fake_train)
    with pytest.raises(SystemExit):
        image_cli.main(["--preset", "smoke", "--dataset", "mnist", "--prior", "standard", "--objective", "vae",
                "--set", "lr=0.01", "--set", "max_epochs=1", "seed=3"])
    cfg = seen["cfg"]
    assert (cfg.lr, cfg.max_epochs, cfg.seed) == (0.01, 1, 3)
    for bad in (["--set", "lr=1", "--set", "lr=2"], ["--seed", "2", "--set", "seed=3"], ["--set", "lr"],
                ["--set", "hiden=5"]):
        with pytest.raises(SystemExit) as e:
            image_cli.main(["--preset", "smoke", "--dataset", "mnist", "--prior", "standard", "--objective", "vae", *bad])
        assert e.value.code == 2, bad
