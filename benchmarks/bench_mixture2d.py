"""Benchmark of the 2-D study's training step (not a test): seconds per epoch for each
objective and width, all seeds batched in one model versus one seed at a time.

    .venv/bin/python benchmarks/bench_mixture2d.py --steps 30 --threads 2

Prints a table and the speed-up of batching the seeds (the reason the `book`
sweep of 160 models fits in minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from mimlib.data import MixtureStream
from mimlib.nets.mlp import MixtureModel2D
from mimlib.objectives import get_objective


def seconds_per_step(objective: str, hidden: int, n_seeds: int, steps: int, batch: int = 128) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hidden", type=int, nargs="+", default=[5, 20, 50, 100, 200, 300, 400, 500])
    ap.add_argument("--n-train", type=int, default=10_000, help="points per epoch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps_per_epoch = -(-args.n_train // 128)
    rows = []
    for objective in ("mim", "vae"):
        for h in args.hidden:
            batched = seconds_per_step(objective, h, args.seeds, args.steps)
            single = seconds_per_step(objective, h, 1, args.steps)
            rows.append({"objective": objective, "hidden": h,
                         "ms/step, batched": 1e3 * batched, "ms/step, one seed": 1e3 * single,
                         f"s/epoch, {args.seeds} seeds batched": batched * steps_per_epoch,
                         f"s/epoch, {args.seeds} seeds one by one": single * steps_per_epoch * args.seeds,
                         "speed-up": single * args.seeds / batched})
    df = pd.DataFrame(rows)
    print(f"torch {torch.__version__}, {args.threads} threads, {steps_per_epoch} steps per epoch")
    print(df.round(3).to_string(index=False))
    tot = df.groupby("objective")[[c for c in df.columns if c.startswith("s/epoch")]].sum()
    print("\none epoch of every width:\n" + tot.round(2).to_string())


if __name__ == "__main__":
    main()
