"""mimlib.sweep: grids of tiny image runs on a local Dask cluster; idempotence, a killed worker, a bad run."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

from mimlib import image_cli  # noqa: E402
from mimlib import image_study as S  # noqa: E402
from mimlib import presets, sweep  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402

#: A tiny convHVAE (standard prior) run of the smoke preset: 1 step of 25 images per epoch, 3 epochs.
TINY = dict(prior="standard", n_pseudo=10, n_train_subset=100, n_val_subset=50, batch_size=25, steps_per_epoch=1,
            max_epochs=3, curve_knn_train=60, curve_knn_val=30, n_knn_train=60, n_eval_test=40, nll_samples=2,
            n_nll_points=10, au_samples=2, eval_batch=50)
GRID = {"objective": ["vae", "mim"], "seed": [0, 1]}
#: Columns that measure time or where a run ran, not what it computed.
CLOCK = {"seconds", "eval_seconds", "task_seconds", "pid", "host", "attempts", "source", "preset", "machine"}


def _grid(**kw):
    return sweep.run_grid("images", "smoke", kw.pop("grid", GRID), {**TINY, **kw.pop("overrides", {})},
                          progress=False, n_tsne=20, **kw)


@pytest.fixture(scope="module")
def data_env():
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real IDX files not available at {SHARED_DATA}")
    with pytest.MonkeyPatch.context() as mp:   # set before any worker starts: workers inherit it
        mp.setenv("MIMLIB_DATA", str(SHARED_DATA))
        mp.setenv("MIMLIB_PROGRESS", "0")
        yield


@pytest.fixture(scope="module")
def cluster(data_env):
    """A LocalCluster of 2 one-thread worker processes, shared by the tests (cold workers are the
    slow part on a small CPU), as run_grid makes one: its scheduler does not retry a lost task itself."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield c
    c.close()


@pytest.fixture(scope="module")
def tiny_sweep(cluster, tmp_path_factory):
    """The 2 x 2 grid, run once (module-wide: the fault drill compares with its uninterrupted MIM run)."""
    root = tmp_path_factory.mktemp("sweep")
    t0 = time.perf_counter()
    table = _grid(scheduler=cluster.scheduler_address, runs_dir=root / "runs", records_dir=root / "rec",
                  results=root / "res.csv")
    return root, table, time.perf_counter() - t0


# ----------------------------------------------------------------------------- no cluster


def test_grid_syntax_and_names():
    g = sweep.parse_grid("dataset=[mnist,fashion-mnist] prior=[standard, vampprior] seed=[0,1,2] lr=1e-3 "
                         "knn_ks=[[1,5],[10]] n_train_subset=[null,100]")
    assert g == {"dataset": ["mnist", "fashion-mnist"], "prior": ["standard", "vampprior"], "seed": [0, 1, 2],
                 "lr": [1e-3], "knn_ks": [[1, 5], [10]], "n_train_subset": [None, 100]}
    assert sweep.parse_sets(["max_epochs=2", "device=cuda"]) == {"max_epochs": 2, "device": "cuda"}
    for bad in ("seed=[0,1", "seed", "seed=[]", "seed=[0] seed=[1]"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_grid(bad)
    with pytest.raises(sweep.SweepError, match=r"\['sed'\].*valid: .*'seed'"):
        sweep.run_grid("images", "smoke", {"sed": [0, 1]})
    with pytest.raises(sweep.SweepError, match="both in the grid and as --set"):
        sweep.expand("images", "smoke", {"seed": [0]}, {"seed": 1})
    with pytest.raises(SystemExit) as e:
        sweep.main(["--study", "images", "--preset", "smoke", "--grid", "bogus=[1]", "--dry-run"])
    assert e.value.code == 2


def test_expand_resolves_presets_and_orders_longest_first():
    runs = sweep.expand("images", "book", {"dataset": ["mnist"], "prior": ["standard", "vampprior"],
                                           "objective": ["mim", "vae"]})
    for r in runs:
        assert r.config == presets.resolve("images", "book", **r.point) and r.name == S.run_name(r.config)
    order = [(r.config.prior, r.config.objective) for r in sorted(runs, key=lambda r: -r.cost)]
    assert order == [("vampprior", "mim"), ("standard", "mim"), ("vampprior", "vae"), ("standard", "vae")]
    pixel = sweep.expand("pixelhvae", "book", {"objective": ["vae"]})[0]
    assert pixel.cost > max(r.cost for r in runs)
    # the book runs of the Makefile are the runs of the one-run command line (same names: same folders)
    cfg, _ = image_cli.parse_command_line(["--preset", "book", "--dataset", "mnist", "--prior", "vampprior",
                                           "--objective", "mim", "--threads", "1"])
    assert S.run_name(cfg) == runs[2].name and runs[2].point == {"dataset": "mnist", "prior": "vampprior", "objective": "mim"}
    # 2-D study: one run per (objective, width) group, named as run_sweep names it
    groups = sweep.expand("mixture2d", "smoke", {"hidden": [5, 20]})
    assert [(r.config.objectives, r.config.hidden) for r in groups] == [
        (("mim",), (5,)), (("vae",), (5,)), (("mim",), (20,)), (("vae",), (20,))]


def test_a_grid_point_with_an_invalid_config_is_reported_without_a_cluster(tmp_path):
    table = sweep.run_grid("images", "smoke", {"prior": ["bogus"]}, runs_dir=tmp_path, progress=False)
    assert list(table.status) == ["config error"] and "prior must be one of" in table.error[0]
    assert "prior=bogus" in table.name[0] and not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- on clusters


def test_the_default_cluster_is_local_processes_of_one_thread(data_env):
    """run_grid's own cluster (no --scheduler): N worker processes, one thread each, no scheduler retries."""
    with sweep._client(2, None) as client:
        assert sorted(client.nthreads().values()) == [1, 1]
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 0


def test_tiny_grid_runs_once_then_is_read(tiny_sweep, monkeypatch):
    root, table, wall = tiny_sweep
    print(f"first sweep: {wall:.0f} s")
    assert len(table) == 4 and (table.status == "done").all() and (table.source == "trained").all()
    assert list(zip(table.objective, table.seed)) == [("vae", 0), ("vae", 1), ("mim", 0), ("mim", 1)]
    assert table.name.is_unique and list(table.name) == list(table.run) and (table.attempts == 1).all()
    assert (table.epochs == 3).all() and (table.error == "").all()
    assert pd.read_csv(root / "res.csv").name.tolist() == table.name.tolist()
    for name in table.name:
        assert (root / "rec" / "images" / name / "record.json").exists()
        assert (root / "runs" / name / "final.pt").exists()
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (root / "runs").rglob("*") if p.is_file()}
    # a second invocation trains nothing: every run is read from its record, no cluster is started
    monkeypatch.setattr(sweep, "_client", lambda *a, **k: pytest.fail("a cluster was started"))
    again = _grid(workers=2, runs_dir=root / "runs", records_dir=root / "rec")
    assert (again.source == "recorded").all() and (again.status == "done").all()
    cols = [c for c in table.columns if c not in CLOCK]
    pd.testing.assert_frame_equal(again[cols], table[cols], check_dtype=False)
    assert list(again.seconds) == list(table.seconds)   # the training time measured when they were trained
    assert files == {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (root / "runs").rglob("*") if p.is_file()}


def test_without_records_finished_runs_are_loaded_not_trained(tiny_sweep, cluster):
    root, table, _ = tiny_sweep
    files = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("*.pt")}
    # threads is a runtime setting: each run is in the grid twice, under one name; the two never run at once
    again = _grid(grid={**GRID, "threads": [1, 2]}, scheduler=cluster.scheduler_address, runs_dir=root / "runs")
    assert (again.status == "done").all() and (again.source == "loaded").all()
    assert list(again.name) == [n for n in table.name for _ in range(2)] and list(again.threads) == [1, 2] * 4
    assert list(again.seconds[::2]) == list(table.seconds) == list(again.seconds[1::2])
    assert files == {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("*.pt")}


def test_fault_drill_a_killed_worker_resumes_its_run_exactly(tiny_sweep, cluster, tmp_path):
    """SIGKILL the worker training a run once its first epoch is checkpointed: the run is submitted
    again, resumes from that checkpoint, and ends with the weights of the uninterrupted run."""
    root, table, _ = tiny_sweep
    ref = table[(table.objective == "mim") & (table.seed == 0)].iloc[0]
    run_dir = tmp_path / "runs" / ref["name"]
    with distributed.Client(cluster) as client, ThreadPoolExecutor(1) as ex:
        pids = client.run(os.getpid)
        fut = ex.submit(_grid, grid={"objective": ["mim"], "seed": [0]}, scheduler=cluster.scheduler_address,
                        retries=2, runs_dir=tmp_path / "runs", records_dir=tmp_path / "rec", poll_seconds=0.2)
        deadline = time.monotonic() + 900   # generous: a loaded CI machine
        while not (run_dir / "checkpoint.pt").exists():   # the sentinel: epoch 1 is checkpointed
            assert not fut.done(), fut.result()
            assert time.monotonic() < deadline, "the run never checkpointed its first epoch"
            time.sleep(0.01)
        busy = [w for w, keys in client.processing().items() if any(ref["name"] in str(k) for k in keys)]
        assert len(busy) == 1
        os.kill(pids[busy[0]], signal.SIGKILL)
        interrupted = not (run_dir / "final.pt").exists()
        out = fut.result(timeout=300)
    assert interrupted, "the worker was killed after the run had finished: no resume was tested"
    row = out.iloc[0]
    assert row.status == "done" and row.attempts == 2 and row.source == "resumed", row.to_dict()
    assert row.pid != pids[busy[0]]
    a = torch.load(root / "runs" / ref["name"] / "final.pt", weights_only=False)
    b = torch.load(run_dir / "final.pt", weights_only=False)
    assert b["result"]["resumed_from"] is not None
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    cols = [c for c in table.columns if c not in CLOCK]
    assert out[cols].iloc[0].to_dict() == ref[cols].to_dict()


def test_a_run_with_a_configuration_error_fails_fast_and_the_others_complete(cluster, tmp_path, capsys):
    # pseudo-inputs from the training images: 500 of them cannot come from 100 images; only the
    # building of that run finds out (its config is valid)
    t0 = time.perf_counter()
    setting = {**TINY, "prior": "vampprior", "pseudo_init": "data", "objective": "vae", "max_epochs": 1}
    del setting["n_pseudo"]
    table = sweep.run_grid("images", "smoke", {"n_pseudo": [500, 10]}, setting,
                           scheduler=cluster.scheduler_address, retries=2, runs_dir=tmp_path / "runs",
                           results=tmp_path / "res.csv", progress=False, log=True, n_tsne=20)
    print(f"config-error sweep: {time.perf_counter() - t0:.0f} s")
    bad, good = table.iloc[0], table.iloc[1]
    assert bad.status == "config error" and bad.attempts == 1
    assert bad.error.startswith("ValueError") and "lower n_pseudo or raise n_train_subset" in bad.error
    assert bad["name"] == S.run_name(presets.resolve("images", "smoke", **setting, n_pseudo=500))
    assert good.status == "done" and good.source == "trained" and good.n_pseudo == 10
    assert (tmp_path / "runs" / good["name"] / "final.pt").exists()
    assert not (tmp_path / "runs" / bad["name"] / "checkpoint.pt").exists()
    assert f"FAILED {bad['name']}: config error: ValueError" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "res.csv").status) == ["config error", "done"]


def test_mixture2d_one_task_per_group(cluster, tmp_path):
    """The 2-D study: one task per (objective, width), one row per seed, the groups run_sweep names."""
    from mimlib import mixture2d as M

    small = dict(hidden=[5], seeds=[0, 1], max_epochs=2, n_train=500, n_val=200, n_test=300, n_knn_train=300,
                 n_nll_points=100)
    kw = dict(scheduler=cluster.scheduler_address, runs_dir=tmp_path / "runs", records_dir=tmp_path / "rec",
              progress=False)
    table = sweep.run_grid("mixture2d", "smoke", {"objectives": ["mim", "vae"]}, small, **kw)
    cfg = presets.resolve("mixture2d", "smoke", **{k: tuple(v) if isinstance(v, list) else v for k, v in small.items()})
    assert list(table.name) == [M.group_name(o, 5, cfg) for o in ("mim", "mim", "vae", "vae")]
    assert list(zip(table.objective, table.seed)) == [("mim", 0), ("mim", 1), ("vae", 0), ("vae", 1)]
    assert (table.status == "done").all() and (table.source == "trained").all()
    full = M.run_sweep(cfg, runs_dir=tmp_path / "runs", records_dir=tmp_path / "rec")   # read, not trained
    assert full.trained == []
    pd.testing.assert_series_equal(full.results.nll_is, table.nll_is, check_names=False)
    again = sweep.run_grid("mixture2d", "smoke", {"objectives": ["mim", "vae"]}, small, **kw)
    assert (again.source == "recorded").all()


def test_command_line_on_recorded_runs_reads_them(tiny_sweep, tmp_path, monkeypatch, capsys):
    """The command line gives the same runs as run_grid (all recorded here: nothing runs, no cluster)."""
    root, table, _ = tiny_sweep
    monkeypatch.setattr(sweep, "_client", lambda *a, **k: pytest.fail("a cluster was started"))
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    common = ["--study", "images", "--preset", "smoke", "--grid", "objective=[vae,mim]", "seed=[0, 1]",
              "--set", *sets, "--runs-dir", str(root / "runs"), "--records-dir", str(root / "rec")]
    assert sweep.main([*common, "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in plan] == list(table.name[[2, 3, 0, 1]])   # MIM first
    assert all(line.endswith("recorded") for line in plan)
    assert sweep.main([*common, "--results", str(tmp_path / "out.csv")]) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.name) == list(table.name) and (out.source == "recorded").all()
    assert "4 of 4 rows done" in capsys.readouterr().out


def test_commands_make_exactly_the_runs_not_yet_recorded(tiny_sweep, tmp_path):
    """--commands lists the unrecorded runs only, longest first; a listed line, run as a process,
    trains and records exactly the run the sweep would have made (same name, same numbers)."""
    import shlex
    import subprocess
    import sys

    root, table, _ = tiny_sweep
    grid = {"objective": ["vae", "mim"], "seed": [0, 1, 2]}
    runs = sweep.expand("images", "smoke", grid, TINY)
    lines = sweep.commands("images", "smoke", grid, TINY, runs_dir=tmp_path / "runs", records_dir=root / "rec",
                           python=sys.executable)
    from mimlib.image_cli import parse_command_line
    from mimlib.image_study import run_name

    new = [r.name for r in runs if r.config.seed == 2]
    named = [run_name(parse_command_line(shlex.split(line)[3:])[0]) for line in lines]
    assert len(lines) == 2 and sorted(named) == sorted(new) and "--objective mim" in lines[0]   # MIM first
    vae = shlex.split(lines[1])
    assert subprocess.run(vae, check=False, capture_output=True, text=True).returncode == 0
    assert sweep.commands("images", "smoke", grid, TINY, records_dir=root / "rec") == [
        sweep.commands("images", "smoke", grid, TINY, records_dir=root / "rec")[0]]    # the VAE is recorded now
    cfg = next(r.config for r in runs if r.config.seed == 2 and r.config.objective == "vae")
    row = sweep.run_one("images", cfg, runs_dir=tmp_path / "again", records_dir=None, n_tsne=20)
    recorded = sweep._recorded("images", cfg, str(root / "rec"))[0]
    for k in ("best_val_loss", "knn5", "nll_is", "recon", "active_units"):
        assert recorded[k] == pytest.approx(row[0][k] if isinstance(row, list) else row[k], rel=1e-6), k
    with pytest.raises(sweep.SweepError, match="image studies"):
        sweep.commands("mixture2d", "smoke", {"seeds": [[0]]})
