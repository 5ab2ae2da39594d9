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

* the achieved GFLOP/s of the step and, as the machine's own limit, the GFLOP/s
  of a square GEMM (``torch.mm``, 2048^3 in float32; 1024^3 in bf16 where bf16
  is emulated) measured in the same run at the same precision and thread
  count; the step's fraction of it is the figure to watch (target: >= 75%
  for the precision ``auto`` picks).

The first line names the CPU, torch's vector capability, its native bf16
flags and what ``precision="auto"`` picks here (:mod:`mimlib.precision`).

Speed settings (:meth:`mimlib.nets.hvae.ConvHVAE.set_compute`): ``--precision
{auto,fp32,bf16}`` and ``--channels-last``. ``--compare`` (the default when no
precision is given) measures every configuration in fp32 and in bf16, both
channels last, alternating the two so that a machine whose load changes during
the run biases neither, and prints the ratio. Where bf16 is not native it is
emulated and slow: ``--bf16-steps`` (default 1 there) bounds its timed steps.

Usage: ``python benchmarks/bench_hvae.py [--steps 5] [--threads 1] [--batch 100]
[--precision auto|fp32|bf16] [--channels-last] [--compare] [--bf16-steps N]``
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
    precision = model.precision   # "auto" resolved
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


def gemm(threads: int, precision: str, n: int, reps: int = 3) -> dict:
    """GFLOP/s of an n x n x n ``torch.mm`` at ``precision`` on ``threads`` threads (best of ``reps``)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return {"precision": precision, "n": n, "seconds": best, "gflops": 2 * n ** 3 / best / 1e9}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run_gemm(args, precision: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--gemm", precision, "--gemm-n", str(n), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _run_worker(config: str, args, precision: str, channels_last: bool, steps: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", config, "--steps", str(steps or args.steps),
           "--threads", str(args.threads), "--batch", str(args.batch), "--precision", precision]
    if channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _line(label: str, r: dict, gemm_gflops: float) -> str:
    rate = r["gflops_step_per_example"] * r["batch"] / r["s_per_step"]
    return (f"{label:7s} {r['precision']:>5s} {'NHWC' if r['channels_last'] else 'NCHW':>5s} "
            f"{r['params']:>9,d} {r['s_per_step']:8.3f} {r['s_per_epoch']:9.0f} "
            f"{r['gflops_fwd_per_example']:13.3f} {r['gflops_step_per_example'] * r['batch']:10.1f} "
            f"{rate:8.1f} {gemm_gflops:8.1f} {rate / gemm_gflops:6.0%} "
            f"{r['peak_rss_mib']:13.0f} {r['peak_rss_mib'] - r['rss_after_build_mib']:9.0f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=100, help="batch size (paper: 100)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                    help="one precision only (default: --compare, fp32 and bf16)")
    ap.add_argument("--channels-last", action="store_true", help="with --precision (--compare uses it always)")
    ap.add_argument("--compare", action="store_true", help="fp32 and bf16, both channels last, alternating")
    ap.add_argument("--bf16-steps", type=int, default=None,
                    help="timed bf16 steps (default: --steps with native bf16, else 1: emulated bf16 is slow)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--gemm", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    ap.add_argument("--gemm-n", type=int, default=2048, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads, args.batch,
                                args.precision or "fp32", args.channels_last)))
        return
    if args.gemm:
        print(json.dumps(gemm(args.threads, args.gemm, args.gemm_n)))
        return

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mimlib import precision as P

    torch.set_num_threads(args.threads)
    native = P.native_bf16("cpu")
    print(P.describe())
    compare = args.compare or args.precision is None
    settings = [("fp32", True), ("bf16", True)] if compare else [(args.precision, args.channels_last)]
    bf16_steps = args.bf16_steps or (args.steps if native else 1)
    gemms = {}
    for prec in sorted({P.resolve_precision(p) for p, _ in settings}):
        gemms[prec] = _run_gemm(args, prec, 2048 if prec == "fp32" or native else 1024)
        g = gemms[prec]
        print(f"GEMM {g['n']}^3 {prec}: {g['gflops']:.1f} GFLOP/s ({args.threads} thread(s))")
    print(f"\nconvHVAE (L=2), batch {args.batch}, {args.steps} timed steps ({bf16_steps} in bf16), "
          f"{args.threads} thread(s); epoch = {N_TRAIN // args.batch} steps; "
          "GFLOP/s = FLOPs of a step (forward + backward, FlopCounterMode) / its time")
    header = (f"{'config':7s} {'prec':>5s} {'mem':>5s} {'params':>9s} {'s/step':>8s} {'s/epoch':>9s} "
              f"{'GFLOP/ex fwd':>13s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'GEMM':>8s} {'of GEMM':>7s} "
              f"{'peak RSS MiB':>13s} {'(+steps)':>9s}")
    print(header)
    summary = []
    for config in args.configs:
        results = [_run_worker(config, args, prec, cl, bf16_steps if P.resolve_precision(prec) == "bf16" else None)
                   for prec, cl in settings]
        for r in results:
            print(_line(config, r, gemms[r["precision"]]["gflops"]), flush=True)
        if compare:
            summary.append((config, results[0]["s_per_step"], results[1]["s_per_step"]))
    if summary:
        auto = P.resolve_precision("auto")
        print(f"\nbf16 autocast against float32, both channels last (same machine, same threads); "
              f"'auto' picks {auto} here:")
        for config, fp32, bf16 in summary:
            picked = fp32 if auto == "fp32" else bf16
            print(f"  {config:7s} fp32 {fp32:6.3f} s/step, bf16 {bf16:6.3f} s/step: bf16 is x{fp32 / bf16:.2f} "
                  f"as fast; auto trains at {picked:.3f} s/step "
                  f"({'the faster' if picked == min(fp32, bf16) else 'NOT the faster'} of the two)")


if __name__ == "__main__":
    main()
