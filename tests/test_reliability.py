"""Bad input gets a clear, early error; concurrent writers cannot corrupt results; nothing is lost on a full disk.

* a catalogue of bad inputs (command line, library, papermill-style parameters, data files): each
  raises the expected error type, naming the parameter or file, and nothing is trained or written;
* two processes on one run folder: one trains, the other waits (told which process it waits for)
  and loads the finished run; a holder killed with -9 leaves no stale lock;
* a full disk: a clear error naming the file, the last checkpoint intact, the run resumes;
* a read-only runs folder with a finished run still loads and evaluates (the cache write only warns);
* orphans of killed writers are removed on the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import Interrupted, interrupt_at

from mimlib import atomic, presets
from mimlib import image_cli
from mimlib import image_study as S
from mimlib import images as I
from mimlib import mixture2d as M
from mimlib.book import as_list, check_parameters, write_results
from mimlib.data import MixtureStream, split_batches
from mimlib.nets.mlp import MixtureModel2D
from mimlib.objectives import get_objective
from mimlib.records import RunRecord, write_record
from mimlib.train import LOCK_NAME, FitConfig, fit

REPO = Path(__file__).resolve().parents[1]

#: The smallest 2-D study: one width, one seed, one objective, one short epoch.
TINY_2D = dict(hidden=(4,), seeds=(0,), objectives=("vae",), n_train=256, n_val=128, n_test=200,
               n_knn_train=100, n_nll_points=50, nll_samples=2, max_epochs=1, patience=1, warmup_epochs=0)


def tiny_2d(**kw) -> M.Mixture2DConfig:
    return presets.resolve("mixture2d", "smoke", **{**TINY_2D, **kw})


#: A tiny image config (the catalogue never trains it).
TINY_IMG = dict(preset="test", prior="standard", objective="vae", n_train_subset=100, batch_size=50,
                steps_per_epoch=1, max_epochs=1, warmup_epochs=1, patience=1, n_val_subset=50, n_pseudo=10,
                curve_knn_train=0, n_knn_train=100, n_eval_test=20, nll_samples=2, n_nll_points=10,
                au_samples=2, eval_batch=50, knn_ks=(1, 3), threads=1)


def tiny_img(**kw) -> S.ImageStudyConfig:
    return S.ImageStudyConfig(**{**TINY_IMG, **kw})


class CLIError(Exception):
    """What ``parse_command_line`` printed before exiting with status 2."""


def cli(argv: list[str]):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return image_cli.parse_command_line(argv)
    except SystemExit as e:
        assert e.code == 2
        raise CLIError(buf.getvalue()) from None


BASE = ["--dataset", "mnist", "--prior", "standard", "--objective", "vae", "--preset", "smoke"]


def _call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` for later, its arguments evaluated (and any files they create made) now."""
    return lambda: fn(*args, **kwargs)


def _file(tmp: Path) -> Path:
    """A regular file: a folder "under" it can be neither written nor created."""
    f = tmp / "a-file"
    f.write_text("not a folder")
    return f


def _dir_where_file_should_be(tmp: Path):
    folder = tmp / "data" / "mnist"
    folder.mkdir(parents=True)
    for f in I.FILES.values():
        (folder / (f + ".gz")).write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\0"))
    (folder / "train-images-idx3-ubyte.gz").unlink()
    (folder / "train-images-idx3-ubyte.gz").mkdir()
    return lambda: I.find_dataset("mnist", tmp / "data")


def _gzip_without_gz(tmp: Path):
    p = tmp / "mnist" / "train-labels-idx1-ubyte"
    p.parent.mkdir()
    p.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\0"))
    return lambda: I.read_idx(p, checksums=None)


def _raw_named_gz(tmp: Path):
    p = tmp / "mnist" / "train-labels-idx1-ubyte.gz"
    p.parent.mkdir()
    p.write_bytes(b"\0\0\x08\x01\0\0\0\0")
    return lambda: I.read_idx(p, checksums=None)


def _html_named_gz(tmp: Path):
    p = tmp / "mnist" / "t10k-labels-idx1-ubyte.gz"
    p.parent.mkdir()
    p.write_bytes(b"<!DOCTYPE html><html>404 Not Found</html>")
    return lambda: I.read_idx(p, checksums=None)


def _directory_as_idx(tmp: Path):
    p = tmp / "mnist" / "t10k-images-idx3-ubyte"
    p.mkdir(parents=True)
    return lambda: I.read_idx(p, checksums=None)


def _fit_with(config):
    stream = MixtureStream([0], n_train=64)
    return lambda tmp: lambda: fit(MixtureModel2D(4, [0]), get_objective("vae"),
                                   lambda e: split_batches(stream.epoch(e), 64),
                                   lambda: split_batches(stream.validation(64), 64), config,
                                   run_dir=tmp / "runs" / "r")


def _no_gpu(tmp):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    return lambda: M.run_sweep(tiny_2d(device="cuda"), runs_dir=tmp / "runs")


#: kind -> (setup(tmp) returning the call, error type, pattern the message must match)
CATALOGUE = {
    # --- command line (python -m mimlib.image_study) ---------------------------------------------------
    "cli: --set max_epochs=2.5": (lambda t: lambda: cli(BASE + ["--set", "max_epochs=2.5"]), CLIError,
                                  r"max_epochs expects an integer, got 2\.5 \(float\).*JSON"),
    "cli: --set lr=abc": (lambda t: lambda: cli(BASE + ["--set", "lr=abc"]), CLIError,
                          r"lr expects a finite number, got 'abc' \(str\)"),
    "cli: --set lr=Infinity": (lambda t: lambda: cli(BASE + ["--set", "lr=Infinity"]), CLIError,
                               r"lr expects a finite number, got inf"),
    "cli: --set nll_samples=0": (lambda t: lambda: cli(BASE + ["--set", "nll_samples=0"]), CLIError,
                                 r"nll_samples must be >= 1, got 0"),
    "cli: --set n_knn_train=3 (k > k-NN set)": (
        lambda t: _call(image_cli.main, BASE + ["--runs-dir", str(t / "runs"), "--set", "n_knn_train=3"]), ValueError,
        r"knn_ks .*k = 10 exceeds the 3 training images"),
    "cli: --set hiden=5 (unknown)": (lambda t: lambda: cli(BASE + ["--set", "hiden=5"]), CLIError,
                                     r"unknown setting\(s\) \['hiden'\]"),
    "cli: --set seed=0,1": (lambda t: lambda: cli(BASE + ["--set", "seed=0,1"]), CLIError,
                            r"seed expects an integer, got '0,1' \(str\)"),
    "cli: --set without =": (lambda t: lambda: cli(BASE + ["--set", "max_epochs"]), CLIError,
                             r"--set expects NAME=VALUE, got 'max_epochs'"),
    "cli: --seed abc": (lambda t: lambda: cli(BASE + ["--seed", "abc"]), CLIError,
                        r"--seed: invalid int value: 'abc'"),
    "cli: --threads 0": (lambda t: lambda: cli(BASE + ["--threads", "0"]), CLIError,
                         r"threads must be None or >= 1, got 0"),
    "cli: --runs-dir not writable": (lambda t: _call(image_cli.main, BASE + ["--runs-dir", str(_file(t) / "runs")]),
                                     NotADirectoryError, r"runs folder .*a-file/runs is not writable"),
    "cli: --records-dir not writable": (
        lambda t: _call(image_cli.main, BASE + ["--runs-dir", str(t / "runs"), "--records-dir", str(_file(t) / "rec")]),
        NotADirectoryError, r"records folder .*a-file/rec/images is not writable"),
    # --- library: configs --------------------------------------------------------------------------------
    "2-D seeds='01'": (lambda t: lambda: tiny_2d(seeds="01"), TypeError,
                       r"seeds expects a sequence \(tuple or list\) of integers.*got '01' \(str\)"),
    "2-D seeds='0,1'": (lambda t: lambda: tiny_2d(seeds="0,1"), TypeError, r"seeds expects .*got '0,1'"),
    "2-D seeds=(0, 1.5)": (lambda t: lambda: tiny_2d(seeds=(0, 1.5)), TypeError,
                           r"seeds .*element 1, 1\.5, is not an integer"),
    "2-D hidden=5": (lambda t: lambda: tiny_2d(hidden=5), TypeError,
                     r"hidden expects a sequence .*got 5 \(int\).*write \(5,\)"),
    "2-D objectives='mim'": (lambda t: lambda: tiny_2d(objectives="mim"), TypeError,
                             r"objectives expects .*single string.*\('mim',\)"),
    "2-D max_epochs=2.5": (lambda t: lambda: tiny_2d(max_epochs=2.5), TypeError, r"max_epochs expects an integer"),
    "2-D lr='abc'": (lambda t: lambda: tiny_2d(lr="abc"), TypeError, r"lr expects a finite number, got 'abc'"),
    "2-D lr=0 (ablation lr)": (lambda t: lambda: dataclasses.replace(tiny_2d(), lr=0.0), ValueError,
                               r"lr must be > 0, got 0"),
    "2-D lr=inf": (lambda t: lambda: tiny_2d(lr=float("inf")), TypeError, r"lr expects a finite number, got inf"),
    "2-D lr=nan": (lambda t: lambda: tiny_2d(lr=float("nan")), TypeError, r"lr expects a finite number, got nan"),
    "2-D min_std=-1": (lambda t: lambda: tiny_2d(min_std=-1.0), ValueError, r"min_std must be >= 0, got -1"),
    "2-D knn_k=0": (lambda t: lambda: tiny_2d(knn_k=0), ValueError, r"knn_k must be >= 1, got 0"),
    "2-D n_test=0": (lambda t: lambda: tiny_2d(n_test=0), ValueError, r"n_test must be >= 1, got 0"),
    "2-D nll_samples=0": (lambda t: lambda: tiny_2d(nll_samples=0), ValueError, r"nll_samples must be >= 1"),
    "2-D ksg_k=0": (lambda t: lambda: tiny_2d(ksg_k=0), ValueError, r"ksg_k must be >= 1"),
    "2-D n_nll_points=0": (lambda t: lambda: tiny_2d(n_nll_points=0), ValueError, r"n_nll_points must be >= 1"),
    "2-D knn_k > n_knn_train": (lambda t: lambda: tiny_2d(knn_k=500), ValueError,
                                r"knn_k = 500 exceeds n_knn_train = 100"),
    "2-D ksg_k >= n_test": (lambda t: lambda: tiny_2d(ksg_k=200), ValueError,
                            r"ksg_k = 200 must be smaller than n_test = 200"),
    "2-D typo in 2nd objective": (lambda t: lambda: tiny_2d(objectives=("mim", "vea")), ValueError,
                                  r"objectives\[1\] = 'vea': unknown objective"),
    "2-D device='gpu'": (lambda t: lambda: tiny_2d(device="gpu"), ValueError, r"device must be"),
    "image max_epochs=2.5": (lambda t: lambda: tiny_img(max_epochs=2.5), TypeError,
                             r"max_epochs expects an integer, got 2\.5"),
    "image lr='abc'": (lambda t: lambda: tiny_img(lr="abc"), TypeError, r"lr expects a finite number"),
    "image channels_last=1": (lambda t: lambda: tiny_img(channels_last=1), TypeError,
                              r"channels_last expects True or False, got 1"),
    "run_study knn_ks > n_train_subset": (
        lambda t: lambda: S.run_study(tiny_img(knn_ks=(1, 200), n_knn_train=None), runs_dir=t / "runs"), ValueError,
        r"knn_ks \(1, 200\): k = 200 exceeds the 100 training images"),
    "FitConfig max_epochs=2.5": (lambda t: lambda: FitConfig(max_epochs=2.5), TypeError,
                                 r"FitConfig: max_epochs expects an integer"),
    "FitConfig min_delta=-1": (lambda t: lambda: FitConfig(min_delta=-1.0), ValueError, r"min_delta must be >= 0"),
    "fit config={...}": (_fit_with({"lr": 1e-3}), TypeError, r"fit: config expects a FitConfig, got dict"),
    # --- library: run_sweep ------------------------------------------------------------------------------
    "run_sweep workers=0": (lambda t: lambda: M.run_sweep(tiny_2d(), runs_dir=t / "runs", workers=0), ValueError,
                            r"workers must be >= 1"),
    "run_sweep workers='2'": (lambda t: lambda: M.run_sweep(tiny_2d(), runs_dir=t / "runs", workers="2"),
                              TypeError, r"workers expects an integer, got '2'"),
    "run_sweep runs_dir not writable": (lambda t: _call(M.run_sweep, tiny_2d(), runs_dir=_file(t) / "runs"),
                                        NotADirectoryError, r"runs folder .*a-file/runs is not writable"),
    "run_sweep records_dir not writable": (
        lambda t: _call(M.run_sweep, tiny_2d(), runs_dir=t / "runs", records_dir=_file(t) / "rec"),
        NotADirectoryError, r"records folder .*a-file/rec/mixture2d is not writable"),
    "run_sweep device=cuda without GPU": (_no_gpu, ValueError, r"device='cuda'.*no GPU"),
    # --- library: run_study ------------------------------------------------------------------------------
    "run_study datasets='mnist'": (lambda t: lambda: S.run_study(tiny_img(), datasets="mnist", runs_dir=t / "runs"),
                                   TypeError, r"run_study: datasets expects a list, got 'mnist'.*\['mnist'\]"),
    "run_study typo in 2nd dataset": (
        lambda t: lambda: S.run_study(tiny_img(), datasets=["mnist", "mnsit"], runs_dir=t / "runs"),
        ValueError, r"datasets\[1\] = 'mnsit': dataset must be one of"),
    "run_study typo in 2nd prior": (
        lambda t: lambda: S.run_study(tiny_img(), priors=["standard", "vampprir"], runs_dir=t / "runs"),
        ValueError, r"priors\[1\] = 'vampprir'"),
    "run_study typo in 2nd objective": (
        lambda t: lambda: S.run_study(tiny_img(), objectives=["vae", "mmi"], runs_dir=t / "runs"),
        ValueError, r"objectives\[1\] = 'mmi': unknown objective"),
    "run_study seeds=[0, 1.5]": (lambda t: lambda: S.run_study(tiny_img(), seeds=[0, 1.5], runs_dir=t / "runs"),
                                 TypeError, r"seeds\[1\] = 1\.5: .*seed expects an integer"),
    "run_study seeds=[0, 0]": (lambda t: lambda: S.run_study(tiny_img(), seeds=[0, 0], runs_dir=t / "runs"),
                               ValueError, r"seeds lists 0 more than once"),
    "run_study runs_dir not writable": (lambda t: _call(S.run_study, tiny_img(), runs_dir=_file(t) / "runs"),
                                        NotADirectoryError, r"runs folder .*a-file/runs is not writable"),
    "run_study data-initialised pseudo-inputs > training images": (
        lambda t: lambda: S.run_study(tiny_img(prior="vampprior", pseudo_init="data", n_pseudo=500),
                                      objectives=["vae", "mim"], runs_dir=t / "runs"),
        ValueError, r"pseudo_init='data' starts the 500 pseudo-inputs.*n_train_subset = 100"),
    # --- papermill-style parameters --------------------------------------------------------------------
    "papermill: misspelt parameter": (
        lambda t: lambda: check_parameters({"hidden": None, "hiden": [5], "PARAMETERS": {}},
                                           {"hidden": None, "seeds": None}),
        NameError, r"unknown parameter\(s\) \['hiden'\]; this notebook's parameters are \['hidden', 'seeds'\]"),
    "papermill: seeds as a string": (lambda t: lambda: as_list("0,1", "seeds", int, [0]), TypeError,
                                     r"seeds: expected a list of int \(e\.g\. \[0, 1\]\), got '0,1' \(str\)"),
    "papermill: seeds with a float": (lambda t: lambda: as_list([0, 1.5], "seeds", int, [0]), TypeError,
                                      r"seeds: .*whose item 1\.5 is a float"),
    "papermill: datasets=[]": (lambda t: lambda: as_list([], "datasets", str, ["mnist"]), ValueError,
                               r"datasets: the list is empty"),
    "presets: unknown preset": (lambda t: lambda: presets.resolve("mixture2d", "fast"), ValueError,
                                r"unknown preset 'fast'"),
    # --- data files --------------------------------------------------------------------------------------
    "data: a directory where a file should be": (_dir_where_file_should_be, FileNotFoundError,
                                                 r"a directory where a data file should be: .*train-images-idx3-ubyte\.gz"),
    "data: gzip file without .gz": (_gzip_without_gz, I.DataIntegrityError,
                                    r"train-labels-idx1-ubyte is gzip-compressed .*rename it to train-labels-idx1-ubyte\.gz"),
    "data: raw IDX named .gz": (_raw_named_gz, I.DataIntegrityError,
                                r"uncompressed IDX file: rename it to train-labels-idx1-ubyte \(without \.gz\)"),
    "data: HTML page named .gz": (_html_named_gz, I.DataIntegrityError, r"t10k-labels.*HTML page.*delete it"),
    "data: read_idx on a directory": (_directory_as_idx, I.DataIntegrityError,
                                      r"t10k-images-idx3-ubyte is a directory where the IDX data file should be"),
}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("kind", list(CATALOGUE))
def test_bad_input_is_refused_early_and_clearly(kind, tmp_path, monkeypatch):
    setup, error, pattern = CATALOGUE[kind]
    monkeypatch.setenv("MIMLIB_DATA", str(tmp_path / "no-data"))      # no data: nothing could train
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    monkeypatch.setattr(S, "load_data", lambda *a, **k: pytest.fail("data loaded before the error"))
    monkeypatch.setattr(M, "train_group", lambda *a, **k: pytest.fail("a group was trained"))
    monkeypatch.setattr(M, "train_bucket", lambda *a, **k: pytest.fail("a group was trained"))
    call = setup(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(error, match=pattern):
        call()
    assert _files(tmp_path) == before, "something was written"


def test_catalogue_is_large():
    assert len(CATALOGUE) >= 20


# ----------------------------------------------------------------------------- two processes, one run folder

_TRAINER = """
import os, sys, time
from pathlib import Path
from mimlib.data import MixtureStream, split_batches
from mimlib.nets.mlp import MixtureModel2D
from mimlib.objectives import get_objective
from mimlib.train import FitConfig, fit

run_dir, marker, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
stream = MixtureStream([0], n_train=256)
val = stream.validation(128)

def epoch_end(epoch, model):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()} {epoch}\\n")
    if epoch == 1:                      # hold the run folder until the test says go
        t0 = time.time()
        while not go.exists() and time.time() - t0 < 120:
            time.sleep(0.05)

res = fit(MixtureModel2D(4, [0]), get_objective("vae"), lambda e: split_batches(stream.epoch(e), 128),
          lambda: split_batches(val, 128), FitConfig(max_epochs=3, patience=5), run_dir=run_dir,
          on_epoch_end=epoch_end, progress=False)
print("RESULT", os.getpid(), res.loaded, len(res.history), res.seconds, flush=True)
"""


def _start(tmp: Path, name: str) -> tuple[subprocess.Popen, Path]:
    err = tmp / f"{name}.err"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MIMLIB_PROGRESS": "0"}
    p = subprocess.Popen([sys.executable, "-c", _TRAINER, str(tmp / "run"), str(tmp / "marker"), str(tmp / "go")],
                         stdout=subprocess.PIPE, stderr=open(err, "w"), text=True, env=env, cwd=tmp)
    return p, err


def _wait_for(cond, what: str, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _marker(tmp: Path) -> list[tuple[int, int]]:
    m = tmp / "marker"
    return [tuple(map(int, line.split())) for line in m.read_text().splitlines()] if m.exists() else []


def test_two_processes_on_one_run_folder_train_it_once(tmp_path, capsys):
    """Process a trains; this process, started on the same run folder while a holds it, waits (naming a's
    pid) and then loads what a trained: every epoch is trained once."""
    a, _ = _start(tmp_path, "a")
    _wait_for(lambda: len(_marker(tmp_path)) >= 2, "the first process to reach its second epoch")
    stream = MixtureStream([0], n_train=256)
    val = stream.validation(128)

    def epoch_end(epoch, model):
        with open(tmp_path / "marker", "a") as f:
            f.write(f"{os.getpid()} {epoch}\n")

    out: list = []
    b = threading.Thread(target=lambda: out.append(fit(
        MixtureModel2D(4, [0]), get_objective("vae"), lambda e: split_batches(stream.epoch(e), 128),
        lambda: split_batches(val, 128), FitConfig(max_epochs=3, patience=5), run_dir=tmp_path / "run",
        on_epoch_end=epoch_end, progress=False)))
    b.start()
    err = []
    _wait_for(lambda: err.append(capsys.readouterr().err) or "waiting" in "".join(err), "the second one to wait")
    assert f"run folder {tmp_path / 'run'} is in use by process {a.pid} " in "".join(err)
    (tmp_path / "go").touch()
    out_a = a.communicate(timeout=120)[0]
    b.join(timeout=120)
    assert a.returncode == 0, (tmp_path / "a.err").read_text()
    _, pid, loaded, n, seconds = out_a.split()
    res = out[0]
    assert loaded == "False" and res.loaded                # a trained, this process loaded what a trained
    assert len(res.history) == int(n) == 3 and res.seconds == float(seconds)
    assert _marker(tmp_path) == [(a.pid, 0), (a.pid, 1), (a.pid, 2)]   # every epoch trained once, by a
    assert (tmp_path / "run" / "final.pt").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


_HOLDER = """
import os, sys, time
from pathlib import Path
from mimlib.atomic import file_lock          # no torch: starts in a moment
run = Path(sys.argv[1])
with file_lock(run / sys.argv[2]):
    half = run / "checkpoint.pt0a1b2c.tmp"                   # killed mid-write, a while ago
    half.write_bytes(b"half a checkpoint")
    os.utime(half, (time.time() - 3600, time.time() - 3600))
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_holder_killed_with_9_leaves_no_stale_lock(tmp_path, capsys):
    """A process holding a run folder is killed with -9 mid-write: the next one neither waits nor finds
    the half-written file (flock is released by the kernel; the orphan is removed under the lock)."""
    run = tmp_path / "run"
    run.mkdir()
    a = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run), LOCK_NAME], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert a.stdout.readline().strip() == "held"
    assert (run / LOCK_NAME).read_text().startswith(f"{a.pid} ")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=60)
    capsys.readouterr()
    res = _tiny_fit(run)
    assert "in use by" not in capsys.readouterr().err       # no wait for the dead holder
    assert not res.loaded and (run / "final.pt").exists()
    assert (run / LOCK_NAME).read_text().startswith(f"{os.getpid()} ")
    assert not list(run.glob("*.tmp"))


# ----------------------------------------------------------------------------- full disk

def _tiny_fit(run_dir, **kw):
    stream = MixtureStream([0, 1], n_train=256)
    val = stream.validation(128)
    return fit(MixtureModel2D(4, [0, 1]), get_objective("mim"), lambda e: split_batches(stream.epoch(e), 128),
               lambda: split_batches(val, 128), FitConfig(max_epochs=3, patience=5, warmup_epochs=1),
               run_dir=run_dir, progress=False, **kw)


def _tiny_fit_interrupted(run_dir):
    """:func:`_tiny_fit` stopped by an exception at the end of epoch 1 (its checkpoint left behind)."""
    with pytest.raises(Interrupted):
        _tiny_fit(run_dir, on_epoch_end=interrupt_at(1))


@pytest.mark.parametrize("failure", ["ENOSPC", "torch unexpected pos"])
def test_a_full_disk_names_the_file_keeps_the_checkpoint_and_resumes(tmp_path, monkeypatch, failure):
    real_save, calls = torch.save, []

    def full_disk_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:                                # the checkpoint of the second epoch
            Path(f).write_bytes(b"half a checkpoint")
            if failure == "ENOSPC":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1216 vs 1114")
        return real_save(obj, f, *a, **k)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(atomic.DiskFullError) as e:
        _tiny_fit(run)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(run / "checkpoint.pt")
    assert f"cannot write {run / 'checkpoint.pt'}: the disk is full" in msg
    assert "resumes after epoch 1" in msg and "Free some space" in msg
    assert not list(run.glob("*.tmp"))                     # the half-written file is gone
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 0   # the last checkpoint, intact
    resumed = _tiny_fit(run)
    assert resumed.resumed_from == 0 and (run / "final.pt").exists() and not (run / "checkpoint.pt").exists()
    ref = _tiny_fit(None)
    assert resumed.history.val_loss.tolist() == ref.history.val_loss.tolist()


def test_a_full_disk_keeps_the_previous_results_file(tmp_path, monkeypatch):
    path = write_results(pd.DataFrame({"a": [1]}), tmp_path, "r")
    real_write_bytes = Path.write_bytes

    def half_then_full(self, data):                    # the disk fills up half-way through the write
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.Path, "write_bytes", half_then_full)
    with pytest.raises(atomic.DiskFullError, match=r"cannot write .*r\.csv: the disk is full.*run the same command"):
        write_results(pd.DataFrame({"a": [2]}), tmp_path, "r")
    monkeypatch.undo()
    assert pd.read_csv(path).a.tolist() == [1] and not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- read-only folders


@contextlib.contextmanager
def read_only(*folders: Path):
    """Make ``folders`` truly read-only (root ignores permission bits: chattr +i there)."""
    if os.geteuid() != 0:
        for f in folders:
            f.chmod(0o555)
        try:
            yield
        finally:
            for f in folders:
                f.chmod(0o755)
        return
    done = []
    try:
        for f in folders:
            if subprocess.run(["chattr", "+i", str(f)], capture_output=True).returncode != 0:
                pytest.skip("cannot make a folder read-only here (chattr +i failed)")
            done.append(f)
        yield
    finally:
        for f in done:
            subprocess.run(["chattr", "-i", str(f)], check=True)


def test_read_only_runs_folder_refuses_training_but_loads_a_finished_run(tmp_path):
    runs = tmp_path / "runs"
    cfg = tiny_2d()
    first = M.run_sweep(cfg, runs_dir=runs)
    run = runs / M.group_name("vae", 4, cfg)
    with read_only(runs, run):
        again = M.run_sweep(cfg, runs_dir=runs)            # finished: loads, writes nothing
        assert again.results.knn5.tolist() == first.results.knn5.tolist()
        with pytest.raises(OSError, match=rf"runs folder {re.escape(str(runs))} is not writable"):
            M.run_sweep(dataclasses.replace(cfg, hidden=(5,)), runs_dir=runs)   # a new group needs training
    assert sorted(p.name for p in runs.iterdir()) == [run.name]


def _synthetic_images() -> I.BinarizedImages:
    rng = np.random.default_rng(0)
    raw = I.RawImages("mnist", rng.integers(0, 256, (150, 28, 28), dtype=np.uint8),
                      rng.integers(0, 10, 150, dtype=np.uint8), rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
                      rng.integers(0, 10, 20, dtype=np.uint8), Path("."))
    return I.split_and_binarize(raw, n_val=50, batch_size=50)


def test_evaluation_cache_write_failure_keeps_the_row(tmp_path):
    cfg = tiny_img(precision="fp32", eval_precision="fp32", channels_last=False)
    data = _synthetic_images()
    model = S.build_model(cfg, data)
    run = tmp_path / "runs" / "finished"
    run.mkdir(parents=True)
    with read_only(run):
        with pytest.warns(UserWarning, match=r"could not cache the evaluation row in .*finished/eval-.*the row is returned"):
            row = S.evaluate_model(model, data, cfg, run_dir=run)
    assert np.isfinite(row["nll_is"]) and row["knn_train"] == 100 and list(run.iterdir()) == []


# ----------------------------------------------------------------------------- orphans


def test_orphans_of_killed_writers_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    _tiny_fit_interrupted(run)
    orphans = [run / "checkpoint.ptk2j3h4.tmp", run / ".eval-0123456789.json.ab12.tmp"]
    young = run / "checkpoint.ptyoung1.tmp"        # as a writer that takes no lock (older mimlib) would have

    def leave(*paths):
        for p in paths:
            p.write_bytes(b"half")
            os.utime(p, (time.time() - 3600, time.time() - 3600))

    leave(*orphans)
    young.write_bytes(b"half")
    res = _tiny_fit(run)                                    # resumes: orphans gone, the young file spared
    assert res.resumed_from == 0 and not any(o.exists() for o in orphans) and young.exists()
    young.unlink()
    # a finished run: a checkpoint beside final.pt and temporary files are removed when it is next loaded
    shutil.copy(run / "final.pt", run / "checkpoint.pt")
    leave(*orphans, run / "final.ptq9w8e7.tmp")
    assert _tiny_fit(run).loaded
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "final.pt"]
    # results: a temporary file of a killed writer of the same CSV goes with the next write
    (tmp_path / ".images.csv.x7y8.tmp").write_text("a,b\n1,")
    write_results(pd.DataFrame({"a": [1]}), tmp_path, "images")
    assert not list(tmp_path.glob(".images.csv.*.tmp"))
    # records: old temporary files go, a live writer's (young) one stays
    rec = RunRecord("study", "run", {"a": 1}, pd.DataFrame({"epoch": [0]}))
    d = write_record(tmp_path / "records", rec)
    old, young = d / ".history.csv.old1.tmp", d / ".record.json.new1.tmp"
    old.write_text("half")
    young.write_text("half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    write_record(tmp_path / "records", rec)
    assert not old.exists() and young.exists()


def test_a_bare_chapter_parameter_is_a_one_element_list():
    """``-p datasets mnist`` means ["mnist"] (not ["m", "n", ...]); None gives the default, a copy."""
    default = ["fashion-mnist", "mnist"]
    assert as_list("mnist", "datasets", str, default) == ["mnist"]
    assert as_list(3, "seeds", int, [0]) == [3]
    assert as_list((0, 2), "seeds", int, [0]) == [0, 2]
    got = as_list(None, "datasets", str, default)
    assert got == default and got is not default
    with pytest.raises(TypeError, match="seeds: expected a list of int"):
        as_list(True, "seeds", int, [0])


def test_names_imported_from_mimlib_are_not_taken_for_parameters():
    """Chapter 05 imports ``DATASET_NAMES as NAMES`` before the check; a misspelt list parameter is still caught."""
    from mimlib.plots import DATASET_NAMES as NAMES, OBJECTIVE_COLORS

    params = {"datasets": None, "PARAMETERS": {}}
    check_parameters({**params, "NAMES": NAMES, "OBJECTIVE_COLORS": OBJECTIVE_COLORS}, params)
    with pytest.raises(NameError, match=r"unknown parameter\(s\) \['NAMES2'\]"):
        check_parameters({**params, "NAMES2": dict(NAMES)}, params)
    with pytest.raises(NameError, match=r"unknown parameter\(s\) \['dataset'\]"):
        check_parameters({**params, "dataset": ["mnist"]}, params)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_honour_the_umask(tmp_path, umask):
    """Checkpoints, final weights, records and results get 0666 less the umask, not mkstemp's 0600,
    so a shared runs or results folder stays readable to others."""
    old = os.umask(umask)
    try:
        _tiny_fit_interrupted(tmp_path / "stopped")                  # leaves checkpoint.pt
        _tiny_fit(tmp_path / "done")                                     # leaves final.pt
        write_results(pd.DataFrame({"a": [1]}), tmp_path, "images")
        d = write_record(tmp_path / "records", RunRecord("study", "run", {"a": 1}, pd.DataFrame({"epoch": [0]})))
    finally:
        os.umask(old)
    files = [tmp_path / "stopped" / "checkpoint.pt", tmp_path / "done" / "final.pt", tmp_path / "images.csv",
             d / "record.json", d / "history.csv"]
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in files}
    assert modes == {f.name: oct(0o666 & ~umask) for f in files}
