"""Where a convHVAE (VP) training step spends its time: each convolution shape of the step, alone.

Not a test. For the convolutions that dominate a VAE-VP / MIM-VP step (the profile of
``bench_hvae.py``'s step: the VampPrior's K = 500 pseudo-inputs through q(z2|x)'s stack, and the
decoder's 64-channel gated convolutions at 28 x 28), it times forward + backward (gradients of the
weights and of the input, as in training: the pseudo-inputs are parameters) in three layouts:
NCHW, NHWC (channels last, what the book's presets use) and im2col + one matrix product
(``F.unfold``), and prints the achieved GFLOP/s against a square float32 GEMM measured in the same
run with the same threads. A layout far below the GEMM is where the step's fraction of the GEMM
(``bench_hvae.py``) is lost.

Usage: ``python benchmarks/bench_convs.py [--threads 1] [--reps 3]``
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mimlib import precision

#: (label, batch, in channels, out channels (gated: 2x), kernel, stride, input size): the shapes of one step.
SHAPES = [
    ("q(z2|u) conv1 7x7, K=500", 500, 1, 64, 7, 1, 28),
    ("q(z2|u) conv2 3x3/2, K=500", 500, 32, 64, 3, 2, 28),
    ("q(z2|u) conv3 5x5, K=500", 500, 32, 128, 5, 1, 14),
    ("decoder conv 3x3, B=100", 100, 64, 128, 3, 1, 28),
]


def _best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def conv_seconds(n, ci, co, k, stride, h, layout: str, reps: int) -> float:
    """Best-of-``reps`` seconds of forward + backward of one convolution in ``layout``."""
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x = torch.randn(n, ci, h, h).contiguous(memory_format=fmt).requires_grad_(True)
    conv = torch.nn.Conv2d(ci, co, k, stride, k // 2).to(memory_format=fmt)

    def plain():
        y = conv(x)
        y.backward(torch.ones_like(y))

    def unfold():
        p = F.unfold(x, k, padding=k // 2, stride=stride)                    # n, ci k k, positions
        y = (p.transpose(1, 2) @ conv.weight.reshape(co, -1).t() + conv.bias)  # n, positions, co
        y.backward(torch.ones_like(y))

    return _best(unfold if layout == "unfold" else plain, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(precision.describe())
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2 * 2048 ** 3 / _best(lambda: a @ b, args.reps) / 1e9
    print(f"GEMM 2048^3 fp32: {gemm:.1f} GFLOP/s ({args.threads} thread(s)); forward + backward of each "
          f"convolution (3x the forward's FLOPs), best of {args.reps}\n")
    print(f"{'convolution':28s} {'layout':7s} {'s':>7s} {'GFLOP/s':>8s} {'of GEMM':>8s}")
    for label, n, ci, co, k, stride, h in SHAPES:
        flops = 3 * 2 * n * (h // stride) ** 2 * co * ci * k * k
        for layout in ("NCHW", "NHWC", "unfold"):
            s = conv_seconds(n, ci, co, k, stride, h, layout, args.reps)
            print(f"{label:28s} {layout:7s} {s:7.3f} {flops / s / 1e9:8.1f} {flops / s / 1e9 / gemm:8.0%}")


if __name__ == "__main__":
    main()
