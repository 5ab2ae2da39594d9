"""Run records: a chapter re-executes from committed records with no weights and no training."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mimlib import configs as C
from mimlib import mixture2d as M
from mimlib import presets
from mimlib import records as R


def tiny() -> M.Mixture2DConfig:
    return dataclasses.replace(presets.resolve("mixture2d", "smoke"), hidden=(5, 20), seeds=(0, 1), max_epochs=3)


def _no_training(*args, **kwargs):
    raise AssertionError("a group was trained although its record exists")


def test_record_present_weights_absent(tmp_path, monkeypatch):
    cfg = tiny()
    first = M.run_sweep(cfg, runs_dir=tmp_path / "runs", records_dir=tmp_path / "records")
    assert sorted(first.trained) == sorted(first.panels)   # everything trained the first time
    names = {p.name for p in (tmp_path / "records" / "mixture2d").iterdir()}
    assert names == {M.group_name(o, h, cfg) for o in cfg.objectives for h in cfg.hidden}
    shutil.rmtree(tmp_path / "runs")                       # the weights are gone
    monkeypatch.setattr(M, "train_group", _no_training)
    monkeypatch.setattr(M, "train_bucket", _no_training)
    again = M.run_sweep(cfg, runs_dir=tmp_path / "runs", records_dir=tmp_path / "records", workers=2)
    assert again.trained == [] and again.models == {}
    pd.testing.assert_frame_equal(again.results, first.results)
    pd.testing.assert_frame_equal(again.history, first.history)
    for g, panel in first.panels.items():
        for k, v in panel.items():
            np.testing.assert_array_equal(again.panels[g][k], v)
    assert again.train_seconds == pytest.approx(first.train_seconds)


def test_first_execution_prints_what_the_records_hold(tmp_path):
    """The values a chapter sees the first time are those read back from the records (full precision)."""
    cfg = dataclasses.replace(tiny(), hidden=(5,), objectives=("vae",))
    trained = M.run_sweep(cfg, runs_dir=tmp_path / "runs", records_dir=tmp_path / "records")
    plain = M.run_sweep(cfg, runs_dir=tmp_path / "runs")  # weights loaded, no records involved
    pd.testing.assert_frame_equal(trained.results, plain.results, check_exact=True)


def test_new_evaluation_settings_retrain_when_weights_are_absent(tmp_path):
    cfg = dataclasses.replace(tiny(), hidden=(5,), objectives=("vae",))
    M.run_sweep(cfg, runs_dir=tmp_path / "runs", records_dir=tmp_path / "records")
    shutil.rmtree(tmp_path / "runs")
    more = dataclasses.replace(cfg, nll_samples=3)
    assert M.group_name("vae", 5, more) == M.group_name("vae", 5, cfg)    # same run, other evaluation
    r = M.run_sweep(more, runs_dir=tmp_path / "runs", records_dir=tmp_path / "records")
    assert r.trained == [("vae", 5)] and (r.results.nll_is_samples == 3).all()
    evals = sorted((tmp_path / "records" / "mixture2d" / M.group_name("vae", 5, cfg)).glob("eval-*.json"))
    assert len(evals) == 2


def test_refuses_a_record_of_another_config_or_version(tmp_path):
    cfg = dataclasses.replace(tiny(), hidden=(5,), objectives=("vae",))
    M.run_sweep(cfg, records_dir=tmp_path)
    name = M.group_name("vae", 5, cfg)
    with pytest.raises(R.RecordError, match="another configuration"):
        R.read_record(tmp_path, "mixture2d", name, {"something": "else"})
    meta = tmp_path / "mixture2d" / name / "record.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "format_version": 999}))
    with pytest.raises(R.RecordError, match="format version 999"):
        M.run_sweep(cfg, records_dir=tmp_path)
    meta.write_text("{ damaged")
    with pytest.raises(R.RecordError, match="record.json is damaged"):
        M.run_sweep(cfg, records_dir=tmp_path)


def test_history_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    hist = pd.DataFrame({"epoch": [0, 1, 2], "val_loss": rng.normal(size=3) * 1e-7 + 1 / 3,
                         "precision": ["fp32", "bf16", "fp32"]})
    R.write_record(tmp_path, R.RunRecord("s", "n", {"a": 1}, hist, {"x": 0.1}, {"z": np.arange(4.0)}))
    back = R.read_record(tmp_path, "s", "n", {"a": 1})
    pd.testing.assert_frame_equal(back.history, hist, check_exact=True)
    np.testing.assert_array_equal(back.arrays["z"], np.arange(4.0))
    assert back.info["x"] == 0.1 and "cpu" in back.info


def test_every_config_field_has_a_group_and_identity_is_derived():
    cfg = M.Mixture2DConfig()
    groups = {f: g for g in C.GROUPS for f in C.fields_of(cfg, g)}
    assert set(groups) == {f.name for f in dataclasses.fields(cfg)}
    base = M.group_name("mim", 5, cfg)
    other = {"lr_schedule": "noam", "mim_decoder_start": "after_warmup"}   # the string fields' other choice
    for f in C.fields_of(cfg, "train"):
        v = getattr(cfg, f)
        changed = dataclasses.replace(cfg, **{f: other[f] if isinstance(v, str) else type(v)(v * 2)})
        assert M.group_name("mim", 5, changed) != base, f
    assert set(other) <= set(C.fields_of(cfg, "train"))
    for f, v in (("device", "cuda"), ("n_test", 7), ("nll_samples", 3), ("knn_k", 3)):
        assert M.group_name("mim", 5, dataclasses.replace(cfg, **{f: v})) == base, f

    @dataclasses.dataclass(frozen=True)
    class Forgot:
        a: int = C.train(1)
        b: int = 2

        def __post_init__(self):
            C.check_groups(self)
    with pytest.raises(TypeError, match=r"fields \['b'\] have no group"):
        Forgot()


# ----------------------------------------------------------------------------- image runs

from conftest import SHARED_DATA  # noqa: E402

from mimlib import image_study as S  # noqa: E402

#: One tiny image run (2 steps of 50 images, tiny evaluation), in the precision this machine is fast at.
TINY_IMAGES = dict(preset="test", prior="standard", objective="vae", n_train_subset=100, batch_size=50,
                   steps_per_epoch=2, max_epochs=2, warmup_epochs=1, patience=2, n_val_subset=50, curve_knn_train=100,
                   curve_knn_val=50, n_knn_train=100, n_eval_test=50, nll_samples=2, n_nll_points=10, au_samples=2,
                   eval_batch=50, knn_ks=(1, 3), threads=1)


def test_image_record_present_weights_absent(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLIB_DATA", str(SHARED_DATA))
    cfg = S.ImageStudyConfig(**TINY_IMAGES)
    small = lambda m, d, c: S.figure_arrays(m, d, c, n_tsne=40, n_images=4)  # noqa: E731
    first = S.run_study(cfg, objectives=["vae", "mim"], runs_dir=tmp_path / "runs", records_dir=tmp_path / "rec",
                        data={"mnist": mnist}, arrays=small)
    assert set(first.models) == set(first.arrays) and first.arrays[("mnist", "standard", "mim", 0)]["tsne"].shape == (40, 2)
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setattr(S, "train_model", _no_training)
    monkeypatch.setattr(S, "load_data", _no_training)   # nor data: everything comes from the records
    again = S.run_study(cfg, objectives=["vae", "mim"], runs_dir=tmp_path / "runs", records_dir=tmp_path / "rec",
                        arrays=small)
    assert again.models == {} and again.data == {}
    pd.testing.assert_frame_equal(again.results, first.results)
    pd.testing.assert_frame_equal(again.history, first.history)
    for k, figs in first.arrays.items():
        assert sorted(figs) == ["images", "reconstructions", "samples", "tsne", "tsne_labels"]
        for name, v in figs.items():
            np.testing.assert_array_equal(again.arrays[k][name], v)
