"""Cost of PixelHVAE (appendix E.2): autoregressive sampling and training steps, on this machine.

Not a test. Builds one PixelHVAE (VampPrior with K = 500 by default: the
paper's "PixelHVAE (VP)") and prints

* seconds per autoregressive sample of a batch of 16 and of 100 images
  (eval-mode network, 784 sequential pixel steps; the incremental sampler of
  :mod:`mimlib.nets.pixelhvae`), median of ``--steps`` draws after one
  untimed warm-up; for contrast, the estimated time of the naive sampler
  (784 full network passes, measured as 784 x one full pass);
* seconds per Adam training step, batch ``--batch`` (paper: 100), for the VAE
  and A-MIM objectives (median of ``--steps`` after one warm-up step), and the
  extrapolated seconds per epoch (50,000 images / batch steps);
* for contrast, symmetric MIM: one measured step (it draws one batch of
  ``--batch`` decoder samples per step, z ~ P(z), x ~ p(x|z), plus the extra
  encoder / decoder passes and the score-function term), the part of it that
  is decoder sampling alone, and the extrapolated seconds per epoch.

The first line names the CPU and what ``precision="auto"`` picks (:mod:`mimlib.precision`); the
model computes in ``--precision`` (default ``auto``), channels last unless ``--no-channels-last``.

Usage: ``python benchmarks/bench_pixelhvae.py [--steps 5] [--threads 1] [--batch 100]
[--prior vampprior|standard] [--precision auto|fp32|bf16]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

N_TRAIN = 50_000


def _median_time(fn, steps: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed repetitions of each measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=100, help="training batch size (paper: 100)")
    ap.add_argument("--prior", default="vampprior", choices=["vampprior", "standard"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="compute precision (default auto: bf16 only with native bf16, mimlib.precision)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mimlib import objectives
    from mimlib import precision as P
    from mimlib.nets.pixelhvae import PixelHVAE

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PixelHVAE(args.prior).set_compute(args.precision, args.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = N_TRAIN // args.batch
    print(P.describe())
    print(f"PixelHVAE ({args.prior}), {n_params:,} parameters; precision {model.precision} (asked: "
          f"{args.precision}), channels_last {model.channels_last}; {args.threads} thread(s), "
          f"{args.steps} timed repetitions; torch {torch.__version__}")

    # -- sampling ---------------------------------------------------------------
    model.eval()
    sample_s = {}
    for n in (16, args.batch if args.batch != 16 else 100):
        with torch.no_grad():
            z = model.prior().sample((n,))
            d = model.decoder(z)
        s, _ = _median_time(lambda: d.sample(), args.steps)
        sample_s[n] = s
        print(f"sample, batch {n:4d}: {s:8.3f} s per batch ({s / n * 1e3:.1f} ms per image)")
    with torch.no_grad():
        z = model.prior().sample((16,))
        d = model.decoder(z)
        x16 = d.sample()
        one_pass, _ = _median_time(lambda: d.logits_given(x16), args.steps)
    print(f"  contrast: one full network pass, batch 16: {one_pass:.3f} s -> naive sampler "
          f"(784 passes) ~ {784 * one_pass:.0f} s per batch of 16")

    # -- training steps -----------------------------------------------------------
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = (torch.rand(args.batch, 1, 28, 28) < 0.13).float()

    def make_step(loss_fn):
        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x).value.mean()
            loss.backward()
            opt.step()
        return step

    print(f"training step, batch {args.batch} (epoch = {steps_per_epoch} steps):")
    step_s = {}
    for name in ("vae", "amim", "mim"):
        s, times = _median_time(make_step(objectives.get_objective(name)), args.steps)
        step_s[name] = s
        print(f"  {name:5s}: {s:8.3f} s per step, {s * steps_per_epoch / 3600:6.2f} h per epoch "
              f"(steps: {', '.join(f'{t:.2f}' for t in times)})")

    # decoder sampling inside a MIM step runs in whatever mode the model is in (train here)
    with torch.no_grad():
        z = model.anchor().sample((args.batch,))
        d = model.decoder(z)
    samp, _ = _median_time(lambda: d.sample(), args.steps)
    print(f"symmetric MIM: decoder sampling of {args.batch} images per step = {samp:.3f} s "
          f"({samp / step_s['mim']:.0%} of the MIM step); MIM step / A-MIM step = "
          f"{step_s['mim'] / step_s['amim']:.2f}")
    print(f"  per epoch: VAE {step_s['vae'] * steps_per_epoch / 3600:.2f} h, "
          f"A-MIM {step_s['amim'] * steps_per_epoch / 3600:.2f} h, "
          f"MIM {step_s['mim'] * steps_per_epoch / 3600:.2f} h "
          f"(of which sampling {samp * steps_per_epoch / 3600:.2f} h; with the naive sampler, "
          f"sampling alone ~ {784 * one_pass * args.batch / 16 * steps_per_epoch / 3600:.0f} h)")


if __name__ == "__main__":
    main()
