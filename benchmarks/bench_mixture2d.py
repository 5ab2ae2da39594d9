"""Benchmark of the 2-D study (not a test): the whole sweep's wall time, today's code against an older
revision, and the training step of each objective and width.

    .venv/bin/python benchmarks/bench_mixture2d.py sweep [--baseline-rev 0a0914c] [--workers 2]
    .venv/bin/python benchmarks/bench_mixture2d.py steps [--steps 30] [--threads 1]

``sweep`` trains and evaluates the `book` sweep (every width and seed of both objectives;
``--hidden`` / ``--seeds`` cut it down) with this checkout's :func:`mimlib.mixture2d.run_sweep`
(``--workers`` processes of one thread), then with the same function of ``--baseline-rev``
(``git archive`` of that revision's ``mimlib/`` into a temporary folder, run as one process with
``--workers`` threads, as that code ran), each into a fresh runs folder, back to back on the same
machine, and prints both wall times, the speed-up, and whether the two sweeps agree (same epochs per
model, metrics within rounding). ``steps`` prints ms per training step of each objective and width,
all seeds batched in one model.

Both print the CPU (:func:`mimlib.precision.describe`) first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The revision before the sweep was made fast (fast batched products and tanh, worker processes).
BASELINE_REV = "0a0914c"

_SWEEP = """
import json, sys, time
import torch
import mimlib
from mimlib import presets
from mimlib.mixture2d import run_sweep
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
cfg = presets.resolve("mixture2d", "book", hidden=args["hidden"], seeds=args["seeds"])
kw = {"workers": args["workers"]} if args["workers"] > 1 else {}
t0 = time.perf_counter()
sweep = run_sweep(cfg, runs_dir=args["runs"], progress=False, **kw)
wall = time.perf_counter() - t0
sweep.results.to_csv(args["out"], index=False)
print(json.dumps({"wall": wall, "train_seconds": sweep.train_seconds, "mimlib": mimlib.__file__}))
"""


def _sweep(code_root: Path, threads: int, workers: int, hidden, seeds, tmp: Path, label: str) -> dict:
    args = {"threads": threads, "workers": workers, "hidden": hidden, "seeds": seeds,
            "runs": str(tmp / f"runs-{label}"), "out": str(tmp / f"{label}.csv")}
    env = {**os.environ, "PYTHONPATH": str(code_root), "MIMLIB_PROGRESS": "0"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _SWEEP, json.dumps(args)], env=env, check=True,
                         capture_output=True, text=True, cwd=tmp).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["process_wall"] = time.perf_counter() - t0
    return res


def sweep(args) -> None:
    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old = tmp / "baseline"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "mimlib"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        what = (f"book sweep, widths {args.hidden or 'all'}, seeds {args.seeds or 'all'}")
        print(f"{what}; this checkout: {args.workers} worker process(es) x 1 thread; "
              f"{args.baseline_rev}: 1 process x {args.workers} thread(s)", flush=True)
        new = _sweep(ROOT, 1, args.workers, args.hidden, args.seeds, tmp, "new")
        print(f"this checkout ({new['mimlib']}): {new['wall']:.0f} s wall ({new['process_wall']:.0f} s with "
              f"start-up), {new['train_seconds']:.0f} s of training summed over groups", flush=True)
        base = _sweep(old, args.workers, 1, args.hidden, args.seeds, tmp, "old")
        print(f"{args.baseline_rev} ({base['mimlib']}): {base['wall']:.0f} s wall ({base['process_wall']:.0f} s "
              f"with start-up), {base['train_seconds']:.0f} s of training summed over groups")
        print(f"speed-up of the whole sweep: x{base['process_wall'] / new['process_wall']:.2f} "
              f"(wall with start-up)")
        a, b = pd.read_csv(tmp / "new.csv"), pd.read_csv(tmp / "old.csv")
        keys = ["objective", "hidden", "seed"]
        m = a.merge(b, on=keys, suffixes=("_new", "_old"))
        same_epochs = (m.epochs_new == m.epochs_old).mean()
        print(f"models compared: {len(m)}; same number of epochs: {same_epochs:.0%}")
        for col in ("knn5", "mi_ksg", "nll_is", "recon_mean"):
            diff = (m[f"{col}_new"] - m[f"{col}_old"]).abs()
            print(f"  {col}: mean |new - old| {diff.mean():.4f}, max {diff.max():.4f} "
                  f"(mean value {m[f'{col}_old'].mean():.4f})")


def seconds_per_step(objective: str, hidden: int, n_seeds: int, steps: int, batch: int = 128) -> float:
    import torch

    from mimlib.allocator import keep_freed_memory
    from mimlib.data import MixtureStream
    from mimlib.nets.mlp import MixtureModel2D
    from mimlib.objectives import get_objective

    keep_freed_memory()
    model = MixtureModel2D(hidden, range(n_seeds))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = MixtureStream(range(n_seeds), n_train=batch).epoch(0)
    f = get_objective(objective)

    def step():
        loss = f(model, x).value.mean(-1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def steps(args) -> None:
    import pandas as pd

    rows = []
    for objective in ("mim", "vae"):
        for h in args.hidden or [5, 20, 50, 100, 200, 300, 400, 500]:
            s = seconds_per_step(objective, h, args.n_seeds, args.steps)
            rows.append({"objective": objective, "hidden": h, "ms/step": 1e3 * s,
                         "s/epoch (79 steps)": 79 * s})
    print(pd.DataFrame(rows).round(3).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("sweep", help="the whole sweep, this checkout against --baseline-rev")
    a.add_argument("--baseline-rev", default=BASELINE_REV)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--hidden", type=int, nargs="+", default=None)
    a.add_argument("--seeds", type=int, nargs="+", default=None)
    b = sub.add_parser("steps", help="ms per training step of each objective and width")
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--n-seeds", type=int, default=10)
    b.add_argument("--hidden", type=int, nargs="+", default=None)
    args = ap.parse_args()

    import torch

    from mimlib import precision as P

    torch.set_num_threads(getattr(args, "threads", 1))
    print(P.describe())
    sweep(args) if args.mode == "sweep" else steps(args)


if __name__ == "__main__":
    main()
