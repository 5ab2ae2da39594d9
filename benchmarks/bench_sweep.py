"""The sweep command against the ``xargs -P`` it replaced (not a test): one dataset's image grid, back to back.

    .venv/bin/python benchmarks/bench_sweep.py [--preset smoke] [--dataset mnist] [--jobs 2]

Trains and evaluates the grid {standard, VampPrior} x {MIM, VAE} of chapter 05 for one dataset twice,
each time into a fresh runs folder: once as ``xargs -P <jobs>`` of one ``python -m mimlib.image_study``
process per run (longest first, as ``make runs-images`` did before :mod:`mimlib.sweep`), once through
``python -m mimlib.sweep`` on a local Dask cluster of ``<jobs>`` single-thread workers. Prints both wall
times and their ratio, with the CPU and the precision ``auto`` picks. With ``--preset smoke`` (minutes)
the difference is the sweep's own overhead (cluster start, task dispatch); ``--preset book`` is the
real schedule (hours).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mimlib.precision import describe  # noqa: E402

#: Chapter 05's grid of one dataset, longest first (MIM before VAE, VampPrior before standard).
GRID = [("vampprior", "mim"), ("standard", "mim"), ("vampprior", "vae"), ("standard", "vae")]


def _run(cmd: list[str] | str, shell: bool = False) -> float:
    env = {**os.environ, "MIMLIB_PROGRESS": "0"}
    env.setdefault("MIMLIB_DATA", str(ROOT.parent / "shared" / "data"))
    t = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    print(describe())
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        lines = "\n".join(f"--prior {p} --objective {o}" for p, o in GRID)
        xargs = (f"printf '%s\\n' {' '.join(repr(x) for x in lines.splitlines())} | xargs -P {args.jobs} -L 1 "
                 f"{py} -m mimlib.image_study --preset {args.preset} --dataset {args.dataset} --threads 1 "
                 f"--runs-dir {tmp}/xargs")
        t_xargs = _run(xargs, shell=True)
        t_sweep = _run([py, "-m", "mimlib.sweep", "--study", "images", "--preset", args.preset, "--grid",
                        f"dataset=[{args.dataset}] prior=[standard,vampprior] objective=[mim,vae]",
                        "--workers", str(args.jobs), "--runs-dir", f"{tmp}/sweep", "--results", f"{tmp}/sweep.csv"])
    print(f"{len(GRID)} runs ({args.preset} preset, {args.dataset}), {args.jobs} at a time, one thread each, "
          f"back to back:")
    print(f"  xargs -P {args.jobs} of mimlib.image_study: {t_xargs:.1f} s wall")
    print(f"  python -m mimlib.sweep (local Dask cluster): {t_sweep:.1f} s wall "
          f"(x{t_sweep / t_xargs:.2f} of xargs)")


if __name__ == "__main__":
    main()
