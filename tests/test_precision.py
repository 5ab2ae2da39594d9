"""precision="auto": bf16 only with native bf16 that measures faster; precision is not a run's identity."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from mimlib import image_study as S
from mimlib import precision as P
from mimlib.nets.hvae import ConvHVAE

AVX2 = P.CpuInfo(model="AMD EPYC (simulated)", capability="AVX2", flags=frozenset({"avx2", "fma"}), machine="x86_64")
AMX = P.CpuInfo(model="Intel Xeon (simulated)", capability="AVX512",
                flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}), machine="x86_64")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Simulate a CPU: returns a function that sets its info and the measured conv-step times."""
    monkeypatch.setenv("MIMLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIMLIB_PRECISION", raising=False)
    calls = []

    def set_machine(info: P.CpuInfo, fp32_s: float = 1.0, bf16_s: float = 0.3):
        monkeypatch.setattr(P, "cpu_info", lambda: info)

        def timed(dtype, reps=3):
            calls.append(dtype)
            return fp32_s if dtype is None else bf16_s
        monkeypatch.setattr(P, "_time_conv_step", timed)
        return calls
    return set_machine


def test_auto_is_fp32_without_native_bf16(machine):
    calls = machine(AVX2)
    assert P.native_bf16("cpu") is False
    assert P.resolve_precision("auto") == "fp32"
    assert calls == []   # no micro-benchmark where the flags already rule bf16 out (it would be slow)


def test_auto_is_bf16_with_native_bf16_that_measures_faster(machine, tmp_path):
    calls = machine(AMX, fp32_s=1.0, bf16_s=0.3)
    assert P.native_bf16("cpu") and P.cpu_info().bf16_flags == ["amx_bf16", "avx512_bf16"]
    assert P.resolve_precision("auto") == "bf16"
    assert P.resolve_precision("auto") == "bf16"
    assert len(calls) == 2   # one fp32 and one bf16 timing: measured once, then read from the cache
    cache = json.loads((tmp_path / "cache" / "precision.json").read_text())
    (entry,) = cache.values()
    assert entry["speedup"] == pytest.approx(1 / 0.3)


def test_auto_stays_fp32_when_bf16_flags_do_not_pay_off(machine):
    machine(AMX, fp32_s=1.0, bf16_s=0.95)   # flags present, but not MIN_SPEEDUP faster
    assert P.resolve_precision("auto") == "fp32"


def test_damaged_cache_is_measured_again(machine, tmp_path):
    calls = machine(AMX)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "precision.json").write_text("{not json")
    assert P.resolve_precision("auto") == "bf16" and len(calls) == 2


def test_forcing_either_value(machine, monkeypatch):
    machine(AVX2)
    assert P.resolve_precision("bf16") == "bf16" and P.resolve_precision("fp32") == "fp32"
    monkeypatch.setenv("MIMLIB_PRECISION", "bf16")
    assert P.resolve_precision("auto") == "bf16"
    monkeypatch.setenv("MIMLIB_PRECISION", "half")
    with pytest.raises(ValueError, match="MIMLIB_PRECISION"):
        P.resolve_precision("auto")
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("fp16")


def test_cuda_without_a_gpu_is_not_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.native_bf16("cuda") is False


def test_the_real_cpu_is_described():
    line = P.describe()
    assert P.cpu_info().capability in line and "precision 'auto' -> " in line
    assert line.endswith(P.resolve_precision("auto"))


def test_model_resolves_auto(machine):
    machine(AVX2)
    assert ConvHVAE("standard").set_compute("auto").precision == "fp32"
    machine(AMX)
    assert ConvHVAE("standard").set_compute("auto").precision == "bf16"


# ----------------------------------------------------------------------------- a run's identity


#: One step of 50 images, no learning curves: small enough to train in emulated bf16 on any CPU.
ONE_STEP = dict(preset="test", prior="standard", objective="vae", n_train_subset=100, batch_size=50,
                steps_per_epoch=1, max_epochs=1, warmup_epochs=1, patience=1, n_val_subset=50, curve_knn_train=0,
                channels_last=True, threads=1)


def test_precision_is_not_part_of_a_runs_identity():
    cfg = S.ImageStudyConfig(**ONE_STEP)
    for field in ("precision", "eval_precision"):
        for value in ("auto", "fp32", "bf16"):
            assert S.run_name(dataclasses.replace(cfg, **{field: value})) == S.run_name(cfg)
    assert S.run_name(dataclasses.replace(cfg, channels_last=False)) == S.run_name(cfg)
    assert dataclasses.replace(cfg, precision="bf16").eval_key() == cfg.eval_key()
    # the fields the hand-listed key forgot now change the run (they steer early stopping)
    for field, value in (("eval_batch", 250), ("eval_seed", 1)):
        assert S.run_name(dataclasses.replace(cfg, **{field: value})) != S.run_name(cfg), field


def test_a_bf16_run_loads_on_a_float32_machine(mnist, tmp_path):
    """Trained in bf16 (a tiny model, on any CPU), then asked for with fp32: found and loaded, not retrained,
    and its history and row say it trained in bf16."""
    bf16 = S.ImageStudyConfig(**ONE_STEP, precision="bf16")
    _, res, _ = S.train_model(bf16, tmp_path, data=mnist)
    assert not res.loaded and list(res.history.precision) == ["bf16"]
    fp32 = dataclasses.replace(bf16, precision="fp32", eval_precision="fp32", n_knn_train=100, n_eval_test=50,
                               nll_samples=2, n_nll_points=10, au_samples=2, knn_ks=(1, 3))
    model, again, data = S.train_model(fp32, tmp_path, data=mnist)
    assert again.loaded and model.precision == "fp32"
    row = S.evaluate_model(model, data, fp32, again)
    assert row["precision"] == "bf16" and row["eval_precision"] == "fp32"


def test_a_run_folder_with_a_legacy_name_is_found(mnist, tmp_path):
    """Run folders named when precision and channels_last were hashed (and eval_batch, eval_seed were
    not) are renamed and loaded; a config whose eval_batch differs from the legacy runs' is not matched."""
    cfg = S.ImageStudyConfig(**ONE_STEP, precision="fp32")
    S.train_model(cfg, tmp_path, data=mnist)
    legacy = S.run_name(cfg, S._legacy_key(cfg.run_key(), "bf16", True))
    assert legacy in S._legacy_run_names(cfg)
    assert S._legacy_run_names(dataclasses.replace(cfg, eval_batch=250)) == []
    os.replace(tmp_path / S.run_name(cfg), tmp_path / legacy)
    # an old folder stored the legacy run config: the config check must migrate it
    final = tmp_path / legacy / "final.pt"
    state = torch.load(final, weights_only=False)
    state["config"]["run"] = S._legacy_key(state["config"]["run"], "bf16", True)
    torch.save(state, final)
    _, res, _ = S.train_model(cfg, tmp_path, data=mnist)
    assert res.loaded and (tmp_path / S.run_name(cfg) / "final.pt").exists() and not (tmp_path / legacy).exists()


def test_every_image_field_has_a_group_and_moves_the_name_it_should():
    from mimlib import configs as C

    cfg = S.ImageStudyConfig(**ONE_STEP)
    base, base_eval = S.run_name(cfg), cfg.eval_key()
    choices = {"model": "pixelhvae", "dataset": "fashion-mnist", "prior": "vampprior", "objective": "mim",
               "pseudo_init": "data", "optimizer": "adam-normgrad", "mim_warmup": "reference",
               "mim_decoder_start": "after_warmup", "mim_decoder_z": "prior", "mim_score_cost": "x_dependent",
               "selection": "last"}

    def changed(f):
        v = getattr(cfg, f)
        if f in choices:
            return choices[f]
        if v is None:
            return 7
        return (v[0],) if isinstance(v, tuple) else (not v if isinstance(v, bool) else type(v)(v * 2 + 1))

    from mimlib.image_config import PSEUDO_INPUT_FIELDS

    for f in C.fields_of(cfg, "grid", "train"):
        moved = S.run_name(dataclasses.replace(cfg, **{f: changed(f)})) != base
        assert moved != (f in PSEUDO_INPUT_FIELDS), f      # the standard prior has no pseudo-inputs
    vamp = dataclasses.replace(cfg, prior="vampprior")
    for f in PSEUDO_INPUT_FIELDS:                          # ... the VampPrior has
        assert S.run_name(dataclasses.replace(vamp, **{f: changed(f)})) != S.run_name(vamp), f
    for f in C.fields_of(cfg, "evaluate"):
        other = dataclasses.replace(cfg, **{f: changed(f)})
        assert S.run_name(other) == base and other.eval_key() != base_eval, f
    for f, v in (("precision", "bf16"), ("eval_precision", "fp32"), ("channels_last", False), ("threads", 2),
                 ("device", "auto"), ("preset", "x")):
        other = dataclasses.replace(cfg, **{f: v})
        assert S.run_name(other) == base and other.eval_key() == base_eval, f
    assert set(C.fields_of(cfg, "runtime")) == {"precision", "eval_precision", "channels_last", "threads",
                                                 "device", "preset"}


def test_cuda_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no GPU here.*'auto'.*'cpu'"):
        P.torch_device("cuda")
    with pytest.raises(ValueError, match="no GPU"):
        S.build_model(S.ImageStudyConfig(**ONE_STEP, device="cuda"))
    assert P.torch_device("auto").type == "cpu"
