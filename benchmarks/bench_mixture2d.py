"""Benchmark of the 2-D study (not a test): the whole sweep's wall time, today's code against an older
revision side by side, and the training step of each objective and width.

    .venv/bin/python benchmarks/bench_mixture2d.py sweep            # the book sweep (160 models), both codes
    .venv/bin/python benchmarks/bench_mixture2d.py sweep --quick    # MIM only, 3 seeds, <= 20 epochs: minutes
    .venv/bin/python benchmarks/bench_mixture2d.py steps [--steps 30]

``sweep`` trains and evaluates the `book` sweep (every width and seed of both objectives;
``--objectives`` / ``--hidden`` / ``--seeds`` / ``--max-epochs`` cut it down, ``--quick`` is
``--objectives mim --seeds 0 1 2 --max-epochs 20``) with this checkout's
:func:`mimlib.mixture2d.run_sweep` and with the same function of ``--baseline-rev`` (``git archive`` of
that revision's ``mimlib/`` into a temporary folder), both with ``--workers`` worker processes of one
thread, each into a fresh runs folder, back to back on the same machine (``--repeat`` times,
alternating), and prints the wall times, the CPU times (all processes of the sweep), the speed-ups,
and whether the two sweeps agree (number of epochs per model, mean |new - old| of the metrics; the
noise of a different float rounding, not a test). ``steps`` prints ms per training step of each
objective and width, all seeds batched in one model: through :mod:`mimlib.objectives` and autograd
(as a group alone in :func:`mimlib.train.fit`) and as a bucket step of :mod:`mimlib.bucket2d`.

Both print the CPU (:func:`mimlib.precision.describe`) first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The revision before widths were trained in buckets (mimlib.bucket2d).
BASELINE_REV = "376365e"

_SWEEP = """
import json, sys, time
import torch
import mimlib
from mimlib import presets
from mimlib.mixture2d import run_sweep
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
over = {k: args[k] for k in ("hidden", "seeds", "objectives", "max_epochs") if args[k] is not None}
cfg = presets.resolve("mixture2d", "book", **over)
kw = {"workers": args["workers"]} if args["workers"] > 1 else {}
if __name__ == "__main__":
    t0 = time.perf_counter()
    sweep = run_sweep(cfg, runs_dir=args["runs"], progress=False, **kw)
    wall = time.perf_counter() - t0
    sweep.results.to_csv(args["out"], index=False)
    print(json.dumps({"wall": wall, "train_seconds": sweep.train_seconds, "mimlib": mimlib.__file__}))
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _sweep(code_root: Path, args, tmp: Path, label: str) -> dict:
    spec = {"threads": 1, "workers": args.workers, "hidden": args.hidden, "seeds": args.seeds,
            "objectives": args.objectives, "max_epochs": args.max_epochs,
            "runs": str(tmp / f"runs-{label}"), "out": str(tmp / f"{label}.csv")}
    env = {**os.environ, "PYTHONPATH": str(code_root), "MIMLIB_PROGRESS": "0"}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _SWEEP, json.dumps(spec)], env=env, check=True,
                         capture_output=True, text=True, cwd=tmp).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["process_wall"] = time.perf_counter() - t0
    res["cpu"] = _children_cpu() - cpu0
    return res


def sweep(args) -> None:
    import pandas as pd

    if args.quick:
        args.objectives = args.objectives or ["mim"]
        args.seeds = args.seeds or [0, 1, 2]
        args.max_epochs = args.max_epochs or 20
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old = tmp / "baseline"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "mimlib"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        what = (f"book sweep, objectives {args.objectives or 'all'}, widths {args.hidden or 'all'}, "
                f"seeds {args.seeds or 'all'}, max_epochs {args.max_epochs or 'as the preset'}")
        print(f"{what}; both codes: {args.workers} worker process(es) x 1 thread; {args.repeat} run(s) each, "
              f"alternating", flush=True)
        runs = {"new": [], "old": []}
        for i in range(args.repeat):
            for label, root in (("new", ROOT), ("old", old)):
                r = _sweep(root, args, tmp, f"{label}-{i}")
                runs[label].append(r)
                name = "this checkout" if label == "new" else args.baseline_rev
                print(f"  {name} ({r['mimlib']}): {r['wall']:.1f} s wall ({r['process_wall']:.1f} s with start-up), "
                      f"{r['cpu']:.1f} s CPU, {r['train_seconds']:.1f} s of training summed over groups", flush=True)
        new_wall = sum(r["process_wall"] for r in runs["new"]) / args.repeat
        old_wall = sum(r["process_wall"] for r in runs["old"]) / args.repeat
        new_cpu = sum(r["cpu"] for r in runs["new"]) / args.repeat
        old_cpu = sum(r["cpu"] for r in runs["old"]) / args.repeat
        print(f"sweep wall time (with start-up, mean of {args.repeat}): this checkout {new_wall:.1f} s, "
              f"{args.baseline_rev} {old_wall:.1f} s")
        print(f"speed-up of the whole sweep: x{old_wall / new_wall:.2f} wall, x{old_cpu / new_cpu:.2f} CPU time")
        a, b = pd.read_csv(tmp / "new-0.csv"), pd.read_csv(tmp / "old-0.csv")
        keys = ["objective", "hidden", "seed"]
        m = a.merge(b, on=keys, suffixes=("_new", "_old"))
        same_epochs = (m.epochs_new == m.epochs_old).mean()
        print(f"models compared: {len(m)}; same number of epochs: {same_epochs:.0%} "
              f"(mean epochs {m.epochs_new.mean():.1f} new, {m.epochs_old.mean():.1f} old)")
        for col in ("knn5", "mi_ksg", "nll_is", "recon_mean"):
            diff = (m[f"{col}_new"] - m[f"{col}_old"]).abs()
            print(f"  {col}: mean |new - old| {diff.mean():.4f}, max {diff.max():.4f} "
                  f"(mean value {m[f'{col}_old'].mean():.4f} old, {m[f'{col}_new'].mean():.4f} new)")


def seconds_per_step(objective: str, hidden: int, n_seeds: int, steps: int, batch: int = 128) -> tuple[float, float]:
    """(generic step: objectives + autograd + torch Adam, bucket step of mimlib.bucket2d), seconds."""
    import torch

    from mimlib.allocator import keep_freed_memory
    from mimlib.bucket2d import _Engine, _active, _kind, _stack_groups
    from mimlib.data import MixtureStream
    from mimlib.nets.mlp import MixtureModel2D
    from mimlib.objectives import MIMOptions, get_objective

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

    def timed(fn):
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) / steps

    generic = timed(step)
    full = _stack_groups([MixtureModel2D(hidden, range(n_seeds)).state_dict()], hidden)
    zeros = {k: torch.zeros_like(v) for k, v in full.items()}
    rows = torch.arange(n_seeds)
    engine = _Engine(objective, MIMOptions(), n_seeds, rows, 1e-6)
    engine.set(rows, hidden, [_active(t, rows, hidden) for t in (full, zeros, zeros)])
    kind, weight = _kind(objective, 1.0, MIMOptions())
    gen = torch.Generator().manual_seed(0)
    sums = torch.zeros(9, n_seeds)
    count = [0]

    def bucket_step():
        noise = engine.noise(gen, 3 if kind == "mim" else 1, batch)
        engine.loss_sums(x, noise, 1.0, kind, weight, True, sums)
        count[0] += 1
        engine.adam(count[0], 1e-3)

    return generic, timed(bucket_step)


def steps(args) -> None:
    import pandas as pd

    rows = []
    for objective in ("mim", "vae"):
        for h in args.hidden or [5, 20, 50, 100, 200, 300, 400, 500]:
            g, b = seconds_per_step(objective, h, args.n_seeds, args.steps)
            rows.append({"objective": objective, "hidden": h, "ms/step (fit)": 1e3 * g,
                         "ms/step (bucket)": 1e3 * b, "s/epoch (79 steps, bucket)": 79 * b})
    print(pd.DataFrame(rows).round(3).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("sweep", help="the whole sweep, this checkout against --baseline-rev")
    a.add_argument("--baseline-rev", default=BASELINE_REV)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--objectives", nargs="+", default=None)
    a.add_argument("--hidden", type=int, nargs="+", default=None)
    a.add_argument("--seeds", type=int, nargs="+", default=None)
    a.add_argument("--max-epochs", type=int, default=None)
    a.add_argument("--repeat", type=int, default=1, help="runs of each code, alternating")
    a.add_argument("--quick", action="store_true", help="MIM only, seeds 0-2, at most 20 epochs (a few minutes)")
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
