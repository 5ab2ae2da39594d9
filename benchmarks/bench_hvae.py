"""Training-step cost of the convHVAE (L = 2) under VAE and MIM, each prior, on this machine.

Not a test. For each of VAE-S, MIM-S, VAE-VP, MIM-VP (S: standard-normal prior on
z2, VP: VampPrior with K = 500) it runs a fresh worker process that builds the
model, takes one untimed warm-up Adam step, then times ``--steps`` steps on a
random binary batch, and prints

* seconds per training step (median) and the extrapolated seconds per epoch
  (50,000 training images / batch size steps);
* FLOPs per example of the objective's forward pass and of a whole training
  step (forward + backward), from ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products and convolutions, 2 FLOPs per multiply-add);
* peak resident memory of the worker (``resource.getrusage``, after the steps)
  and how much of it the steps added over the process after building the model.

Speed settings (:meth:`mimlib.nets.hvae.ConvHVAE.set_compute`): ``--precision
{fp32,bf16}`` and ``--channels-last``. ``--compare`` measures every configuration
twice, before (fp32, NCHW: the plain model) and after (bf16 autocast, channels
last: what the image study trains with), alternating the two so that a
machine whose load changes during the run biases neither, and prints the speed-up.

Usage: ``python benchmarks/bench_hvae.py [--steps 5] [--threads 1] [--batch 100]
[--precision bf16] [--channels-last] [--compare]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {"VAE-S": ("vae", "standard"), "MIM-S": ("mim", "standard"),
           "VAE-VP": ("vae", "vampprior"), "MIM-VP": ("mim", "vampprior")}
N_TRAIN = 50_000


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def worker(config: str, steps: int, threads: int, batch: int, precision: str = "fp32",
           channels_last: bool = False) -> dict:
    """Measure one configuration in this process; returns the numbers as a dict."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mimlib import objectives
    from mimlib.nets.hvae import ConvHVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    objective, prior = CONFIGS[config]
    loss_fn = objectives.get_objective(objective)
    model = ConvHVAE(prior, precision=precision, channels_last=channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = (torch.rand(batch, 1, 28, 28) < 0.13).float()
    rss_built = _rss_mib()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, x).value.mean()
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rss_peak = _rss_mib()

    with FlopCounterMode(display=False) as fwd:
        loss = loss_fn(model, x).value.mean()
    with FlopCounterMode(display=False) as full:
        loss = loss_fn(model, x).value.mean()
        loss.backward()
    s = statistics.median(times)
    return {"config": config, "s_per_step": s, "s_per_epoch": s * N_TRAIN / batch,
            "step_times": times, "gflops_fwd_per_example": fwd.get_total_flops() / batch / 1e9,
            "gflops_step_per_example": full.get_total_flops() / batch / 1e9,
            "peak_rss_mib": rss_peak, "rss_after_build_mib": rss_built,
            "params": sum(p.numel() for p in model.parameters()), "threads": threads,
            "batch": batch, "precision": precision, "channels_last": channels_last,
            "torch": torch.__version__}


def _run_worker(config: str, args, precision: str, channels_last: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", config, "--steps", str(args.steps),
           "--threads", str(args.threads), "--batch", str(args.batch), "--precision", precision]
    if channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _line(label: str, r: dict) -> str:
    return (f"{label:7s} {r['precision']:>5s} {'NHWC' if r['channels_last'] else 'NCHW':>5s} "
            f"{r['params']:>9,d} {r['s_per_step']:8.3f} {r['s_per_epoch']:9.0f} "
            f"{r['gflops_fwd_per_example']:13.3f} {r['gflops_step_per_example']:14.3f} "
            f"{r['peak_rss_mib']:13.0f} {r['peak_rss_mib'] - r['rss_after_build_mib']:9.0f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=100, help="batch size (paper: 100)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compare", action="store_true",
                    help="before (fp32, NCHW) and after (bf16, channels last), alternating")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads, args.batch,
                                args.precision, args.channels_last)))
        return

    print(f"convHVAE (L=2), batch {args.batch}, {args.steps} timed steps, {args.threads} thread(s); "
          f"epoch = {N_TRAIN // args.batch} steps")
    header = (f"{'config':7s} {'prec':>5s} {'mem':>5s} {'params':>9s} {'s/step':>8s} {'s/epoch':>9s} "
              f"{'GFLOP/ex fwd':>13s} {'GFLOP/ex step':>14s} {'peak RSS MiB':>13s} {'(+steps)':>9s}")
    print(header)
    settings = ([("fp32", False), ("bf16", True)] if args.compare
                else [(args.precision, args.channels_last)])
    summary = []
    for config in args.configs:
        results = [_run_worker(config, args, prec, cl) for prec, cl in settings]
        for r in results:
            print(_line(config, r), flush=True)
        if args.compare:
            summary.append((config, results[0]["s_per_step"], results[1]["s_per_step"]))
    if summary:
        print("\nspeed-up of bf16 + channels last over fp32 + NCHW (same machine, same threads):")
        for config, before, after in summary:
            print(f"  {config:7s} {before:6.3f} -> {after:6.3f} s/step  "
                  f"({before * N_TRAIN / args.batch:5.0f} -> {after * N_TRAIN / args.batch:5.0f} s/epoch, "
                  f"x{before / after:.2f})")


if __name__ == "__main__":
    main()
