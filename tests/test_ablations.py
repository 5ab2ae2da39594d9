"""Chapter 07's screen (mimlib.ablations): variants, their commands, readouts and records."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA
from mimlib import ablations as A
from mimlib import image_cli
from mimlib import image_study as S
from mimlib.nets.hvae import LOGVAR_MIN


def test_screen_variants_are_distinct_runs_and_their_commands_give_the_same_configs():
    labels = [v.label for v in A.SCREEN]
    assert len(set(labels)) == len(labels) == 10
    names = set()
    for v in A.SCREEN:
        cfg = A.config_of(v)
        assert (cfg.dataset, cfg.prior, cfg.model, cfg.objective) == ("mnist", "vampprior", v.model, v.objective)
        for k, val in v.settings.items():
            assert getattr(cfg, k) == val
        parsed, _ = image_cli.parse_command_line(A.command(v).split()[3:])   # after "python -m mimlib.image_study"
        assert parsed == cfg and S.run_name(parsed) == S.run_name(cfg)
        names.add(S.run_name(cfg))
    assert len(names) == len(A.SCREEN)   # every factor is part of the run's identity


def test_variant_rejects_unknown_factors_and_models():
    with pytest.raises(ValueError, match="changes only"):
        A.Variant("convhvae", "mim", {"lr": "1"})
    with pytest.raises(ValueError, match="model must be"):
        A.Variant("vit", "mim")
    with pytest.raises(ValueError, match="at least one"):
        A.run_variants([])


def test_a_budget_variant_is_its_own_run_and_its_command_gives_its_config():
    v, ref = A.WARMUP
    cfg = A.config_of(v)
    assert (cfg.warmup_epochs, cfg.max_epochs) == (8, 16) and v.label == "A-MIM warmup_epochs=8 max_epochs=16"
    assert A.config_of(ref).mim_warmup == "reference" and A.config_of(ref).max_epochs == 16
    assert A.config_of(A.Variant("pixelhvae", "amim")).max_epochs == 10   # the screen's, as FACTORS says
    names = {S.run_name(A.config_of(A.Variant("pixelhvae", "amim")))}
    for w in A.WARMUP:
        parsed, _ = image_cli.parse_command_line(A.command(w).split()[3:])
        assert parsed == A.config_of(w)
        names.add(S.run_name(parsed))
    assert len(names) == 3
    with pytest.raises(ValueError, match="budget sets only"):
        A.Variant("pixelhvae", "amim", budget={"lr": 1})
    # not a factor of the screen: a budget variant is not pooled into its cells
    rows = pd.DataFrame([{"model": "pixelhvae", "objective": "amim", **A.FACTORS},
                         {"model": "pixelhvae", "objective": "amim", **A.FACTORS, **v.changes}])
    assert len(A.at_book_levels(rows, "pixelhvae", "amim", ("pseudo_init", "mim_warmup"))) == 1


def test_collapse_onset_and_epochs_after_the_warmup():
    def history(rates, warmup):
        return pd.DataFrame({"epoch": range(len(rates)), "warmup_epochs": warmup, "log q(z|x)": rates,
                             "log p(z)": 0.0})
    # beta = 1 from the 2nd epoch (index 1, rate 10): below 5 at the 4th epoch, but not after it; from the 6th on
    h = history([20.0, 10.0, 6.0, 4.0, 6.0, 3.0, 2.0], warmup=2)
    assert A.collapse_onset(h) == 6
    assert A.collapse_onset(history([20.0, 10.0, 9.0, 8.0], warmup=2)) is None
    assert A.collapse_onset(history([20.0, 10.0, 9.0, 1.0], warmup=1)) == 3  # reference: the 1st epoch (20)
    assert A.collapse_onset(h.sample(frac=1, random_state=0)) == 6
    # a rate that falls during a long warm-up: from its peak (epoch 2, rate 30) it stays below 15 from the
    # 4th epoch on, while against the first epoch at full weight (the 5th, rate 8) it never halves
    long = history([20.0, 30.0, 16.0, 12.0, 8.0, 7.0, 6.0], warmup=5)
    assert A.collapse_onset(long, since="peak") == 4 and A.collapse_onset(long) is None
    with pytest.raises(ValueError, match="since must be"):
        A.collapse_onset(long, since="end")         # order of rows does not matter
    assert list(A.after_warmup(h)) == [-1, 0, 1, 2, 3, 4, 5]
    assert list(A.after_warmup(history([1.0] * 3, warmup=0))) == [0, 1, 2]   # no warm-up: weight 1 at once


def test_records_dir_with_no_eval_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        image_cli.parse_command_line(["--dataset", "mnist", "--prior", "vampprior", "--objective", "mim",
                                      "--records-dir", "x", "--no-eval"])
    assert e.value.code == 2 and "drop --no-eval" in capsys.readouterr().err


def test_rate_and_log_prior_read_both_kinds_of_history():
    h = pd.DataFrame({"variant": ["MIM", "VAE"], "enc/log q(z|x)": [10.0, np.nan], "enc/log p(z)": [4.0, np.nan],
                      "log q(z|x)": [np.nan, 7.0], "log p(z)": [np.nan, -3.0]})
    assert A.rate(h).tolist() == [6.0, 10.0]
    assert A.log_prior(h).tolist() == [4.0, -3.0]
    assert A.rate(h[["log q(z|x)", "log p(z)"]].iloc[1:]).tolist() == [10.0]
    with pytest.raises(KeyError, match="log q"):
        A.rate(pd.DataFrame({"x": [1.0]}))


def test_effects_are_differences_at_each_level_of_the_other_factor():
    rows = [dict(pseudo_init=p, mim_decoder_z=z, seed=s, knn5=base + dp + dz + 0.01 * s)
            for p, dp in (("normal", 0.0), ("data", 0.2)) for z, dz in (("anchor", 0.0), ("prior", -0.1))
            for s in (0, 1) for base in [0.5]]
    df = pd.DataFrame(rows)
    e = A.effects(df, "pseudo_init", ["knn5"], within=["mim_decoder_z"])
    np.testing.assert_allclose(e["knn5 (data - normal)"].to_numpy(), [0.2, 0.2])
    e = A.effects(df, "mim_decoder_z", ["knn5"], within=["pseudo_init"])
    np.testing.assert_allclose(e["knn5 (prior - anchor)"].to_numpy(), [-0.1, -0.1])
    with pytest.raises(ValueError, match="book level"):
        A.effects(df[df.pseudo_init == "data"], "pseudo_init", ["knn5"], within=["mim_decoder_z"])


def test_log_prior_ceiling_is_minus_the_entropy_at_the_clip():
    """E_q log N(z; mu, s^2) with q = N(mu, s^2) is minus q's entropy; at the clip that is the ceiling."""
    q = torch.distributions.Normal(torch.zeros(80), torch.full((80,), math.exp(0.5 * LOGVAR_MIN)))
    assert A.log_prior_ceiling() == pytest.approx(-float(q.entropy().sum()), rel=1e-6)
    assert A.log_prior_ceiling() == pytest.approx(126.485, abs=1e-3)
    # and no Gaussian prior does better for that q: any other variance or mean lowers E_q log p
    z = q.sample((20_000,))
    for scale in (0.5, 2.0):
        p = torch.distributions.Normal(torch.zeros(80), q.scale * scale)
        assert float(p.log_prob(z).sum(-1).mean()) < A.log_prior_ceiling()


def test_data_init_needs_as_many_training_images_as_pseudo_inputs(mnist):
    cfg = A.config_of(A.Variant("convhvae", "vae", {"pseudo_init": "data"}), "smoke", n_train_subset=50)
    with pytest.raises(ValueError, match="lower n_pseudo or raise n_train_subset"):
        S.build_model(cfg, S._subset(mnist, cfg))


def test_run_variants_records_then_reads_without_training(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLIB_DATA", str(SHARED_DATA))
    tiny = dict(n_pseudo=10, n_train_subset=100, n_val_subset=50, batch_size=25, max_epochs=2, steps_per_epoch=1,
                curve_knn_train=60, curve_knn_val=30, n_knn_train=60, n_eval_test=40, nll_samples=2,
                n_nll_points=10, au_samples=2, eval_batch=50)
    vs = [A.Variant("convhvae", "vae"), A.Variant("convhvae", "mim", {"pseudo_init": "data"})]
    first = A.run_variants(vs, "smoke", records_dir=tmp_path / "rec", runs_dir=tmp_path / "runs", n_tsne=30, **tiny)
    assert list(first.results.variant) == [v.label for v in vs] and set(first.models) == {v.label for v in vs}
    assert (first.results.pseudo_init == ["normal", "data"]).all()
    assert set(first.history.variant) == {v.label for v in vs} and len(first.history) == 4
    assert first.arrays[vs[1].label]["tsne"].shape == (30, 2)
    assert np.isfinite(A.rate(first.history)).all()
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setattr(S, "train_model", lambda *a, **k: pytest.fail("trained although recorded"))
    again = A.run_variants(vs, "smoke", records_dir=tmp_path / "rec", runs_dir=tmp_path / "runs", n_tsne=30, **tiny)
    assert again.models == {}
    cols = [c for c in first.results.columns if c != "preset"]
    pd.testing.assert_frame_equal(again.results[cols], first.results[cols])


def test_contrasts_give_effects_for_a_full_factorial_and_joint_differences_otherwise():
    full = pd.DataFrame([dict(pseudo_init=p, mim_warmup=w, knn5=0.1 + 0.5 * (p == "data") + 0.2 * (w == "reference"))
                         for p in ("normal", "data") for w in ("rescale", "reference")])
    titles = [t for t, _ in A.contrasts(full, ("pseudo_init", "mim_warmup"), ["knn5"])]
    assert len(titles) == 2 and titles[0].startswith("pseudo_init") and titles[1].startswith("mim_warmup")
    (_, e1), (_, e2) = A.contrasts(full, ("pseudo_init", "mim_warmup"), ["knn5"])
    np.testing.assert_allclose(e1.to_numpy().ravel(), [0.5, 0.5])
    np.testing.assert_allclose(e2.to_numpy().ravel(), [0.2, 0.2])
    corners = full[(full.pseudo_init == "data") == (full.mim_warmup == "reference")]
    [(title, d)] = A.contrasts(corners, ("pseudo_init", "mim_warmup"), ["knn5"])
    assert "joint effect" in title and d.iloc[0, 0] == pytest.approx(0.7)
    assert A.contrasts(full[full.pseudo_init == "data"], ("pseudo_init", "mim_warmup"), ["knn5"]) == []


def test_recorded_splits_variants_by_their_records(tmp_path):
    have, missing = A.recorded(A.SCREEN, tmp_path)
    assert have == [] and missing == A.SCREEN


def test_choose_validates_labels_and_picks_the_smoke_corners(tmp_path):
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['MIM typo'\]; valid: \["):
        A.choose(["MIM typo"], "screen", tmp_path)
    corners, missing = A.choose(None, "smoke", tmp_path, **A.SMOKE_OVERRIDES)
    assert missing == [] and len(corners) == 5 and all(len(v.changes) in (0, 2) for v in corners)
    # without records and without training: everything is missing, nothing is shown
    shown, missing = A.choose(None, "screen", tmp_path)
    assert shown == [] and missing == A.VARIANTS
    one = A.SCREEN[1].label
    assert A.choose([one], "screen", tmp_path, train_missing=True) == ([A.SCREEN[1]], [])


def test_a_follow_up_is_not_pooled_into_the_2x2_cells():
    base = dict(model="pixelhvae", objective="amim", **A.FACTORS)
    rows = pd.DataFrame([base, {**base, "pseudo_init": "data"}, {**base, "optimizer": "adam-normgrad"}])
    assert len(A.at_book_levels(rows, "pixelhvae", "amim", ("pseudo_init", "mim_warmup"))) == 2
    single = A.at_book_levels(rows, "pixelhvae", "amim", ("optimizer",))
    assert sorted(single.optimizer) == ["adam", "adam-normgrad"]
    assert A.at_book_levels(rows, "convhvae", "mim", ("pseudo_init",)).empty


def test_seed_summary_gives_the_student_t_interval_and_sign_agreement():
    per_seed = pd.DataFrame({"objective": ["mim"] * 3 + ["vae"], "seed": [0, 1, 2, 0],
                             "knn5": [0.1, 0.3, -0.1, 0.05]}).set_index(["objective", "seed"])
    out = A.seed_summary(per_seed).set_index("objective")
    mim, vae = out.loc["mim"], out.loc["vae"]
    # mean 0.1, s = 0.2, n = 3: half-width t_{0.975, 2} * 0.2 / sqrt(3) = 4.3027 * 0.11547 = 0.49683
    assert mim["mean"] == pytest.approx(0.1) and mim.seeds == 3 and mim.same_sign == 2
    assert (mim.lo, mim.hi) == (pytest.approx(0.1 - 0.49683, abs=1e-5), pytest.approx(0.1 + 0.49683, abs=1e-5))
    assert vae.seeds == 1 and math.isnan(vae.lo) and vae["per_seed"] == "0.05"
    # coverage: the 95% interval of n = 4 normal draws holds the true mean about 95% of the time
    rng = np.random.default_rng(0)
    draws = pd.DataFrame({"x": rng.normal(1.0, 2.0, 4000)},
                         index=pd.MultiIndex.from_product([range(1000), range(4)], names=["trial", "seed"]))
    s = A.seed_summary(draws)
    covered = ((s.lo <= 1.0) & (1.0 <= s.hi)).mean()
    assert 0.93 <= covered <= 0.97
    with pytest.raises(ValueError, match="seed"):
        A.seed_summary(per_seed.reset_index("seed"))


def test_objective_gap_pairs_runs_by_seed_and_initialisation():
    res = pd.DataFrame({"objective": ["mim", "vae", "mim", "vae", "mim"], "pseudo_init": ["normal"] * 4 + ["data"],
                        "seed": [0, 0, 1, 1, 0], "knn5": [0.7, 0.75, 0.6, 0.8, 0.9]})
    gap = A.objective_gap(res, ["knn5"])
    assert gap.knn5.round(3).to_dict() == {("normal", 0): -0.05, ("normal", 1): -0.2}   # data: no VAE to pair
    assert A.objective_gap(res[res.objective == "mim"], ["knn5"]).empty


def test_recorded_seeds_lists_the_seeds_with_a_record(tmp_path):
    v = A.REPLICATED[0]
    assert A.recorded_seeds(v, tmp_path, seeds=range(3)) == []
    assert {x.model for x in A.REPLICATED} == {"convhvae"} and len(A.REPLICATED) == 4


def test_summary_lines_state_mean_interval_and_sign_agreement():
    diff = pd.DataFrame({"knn5 (data - normal)": [1.0, 2.0, 3.0], "rate (data - normal)": [5.0, 5.0, 5.0]},
                        index=pd.MultiIndex.from_tuples([("mim", s) for s in (0, 1, 2)], names=["objective", "seed"]))
    lines = A.summary_lines(diff, "data init minus normal", "objective")
    half = 4.302653 / 3 ** 0.5          # t_{0.975, 2} x s / sqrt(n), s = 1
    assert lines == [f"- data init minus normal, mim: 5-NN (sampled) +2 [{2 - half:+.3g}, {2 + half:+.3g}], 3 seed(s), "
                     "same sign at 3 of 3 (per seed: 1, 2, 3)"]          # the rate is not a named readout
    one = A.summary_lines(diff.iloc[:1], "t", "objective")
    assert one == ["- t, mim: 5-NN (sampled) +1, 1 seed(s), same sign at 1 of 1 (per seed: 1)"]
    assert A.summary_lines(diff.iloc[:0], "t", "objective") == []
