"""Which arithmetic a run computes in: ``"auto"`` picks bfloat16 only where the hardware is fast at it.

bfloat16 autocast (:meth:`mimlib.nets.hvae.ConvHVAE.set_compute`) changes only
the rounding of the convolutions and dense layers; parameters, optimiser state
and every log-density stay float32. Whether it is *faster* depends on the
device:

* CUDA GPUs with bf16 support (Ampere and later): yes;
* CPUs with native bf16 instructions (Intel AMX-BF16, AVX512-BF16; on Arm the
  ``bf16`` extension): several times faster through oneDNN;
* every other CPU (for example AVX2-only AMD EPYC / Zen 3, most laptops): the
  bf16 arithmetic is emulated, about 20x *slower* than float32.

:func:`resolve_precision` turns a requested precision (``"auto"``, ``"fp32"``,
``"bf16"``) into the one used. ``"auto"`` on a CPU asks two questions: do the
CPU flags (``/proc/cpuinfo``) name a native bf16 instruction set, and, if so,
is a bf16 convolution step really faster here (:func:`bf16_speedup`, a
short micro-benchmark, run once per machine, torch version and
thread count and cached in ``~/.cache/mimlib/precision.json``, or
``$MIMLIB_CACHE``)? The environment variable ``MIMLIB_PRECISION=fp32|bf16``
forces what ``"auto"`` means (for every run of a process tree, e.g. ``make test``);
an explicit ``"fp32"`` / ``"bf16"`` always wins.

Precision is **not** part of a run's identity (its hash), like the thread
count and the device: a run trained in bf16 on an AMX machine is found, loaded
and resumed on a float32 machine. What a run actually computed in is recorded
instead: per epoch in its history (column ``precision``) and in its results row.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .atomic import write_atomic

__all__ = ["PRECISIONS", "REQUESTS", "CpuInfo", "cpu_info", "native_bf16", "bf16_speedup",
           "resolve_precision", "describe", "torch_device", "machine_label"]

#: Compute precisions: name -> autocast dtype (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: What a config may ask for.
REQUESTS = ("auto", *PRECISIONS)
#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
_ARM_BF16_FLAGS = frozenset({"bf16", "svebf16"})
#: ``auto`` takes bf16 on a CPU only if the micro-benchmark finds it at least this much faster.
MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class CpuInfo:
    """What decides the CPU's precision: its model name, torch's vector capability and its flags."""

    model: str
    capability: str
    flags: frozenset[str]
    machine: str

    @property
    def bf16_flags(self) -> list[str]:
        wanted = BF16_CPU_FLAGS | (_ARM_BF16_FLAGS if self.machine in ("aarch64", "arm64") else frozenset())
        return sorted(self.flags & wanted)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (Linux: ``/proc/cpuinfo``; elsewhere the model only, no flags)."""
    model, flags = platform.processor() or "unknown CPU", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model in ("", "unknown CPU", platform.machine()):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model, capability=torch.backends.cpu.get_cpu_capability(), flags=flags,
                   machine=platform.machine().lower())


def machine_label(device: str | torch.device = "cpu") -> str:
    """One line naming where a timing was taken: the GPU's name, or the CPU model, torch's vector
    capability and the thread count (e.g. ``"AMD EPYC (AVX2), 1 thread(s)"``)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    info = cpu_info()
    return f"{info.model} ({info.capability}), {torch.get_num_threads()} thread(s)"


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA: ``is_bf16_supported``; CPU: its flags)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False   # MPS and others: float32 (bf16 autocast support varies)
    return bool(cpu_info().bf16_flags)


def _cache_path() -> Path:
    root = os.environ.get("MIMLIB_CACHE") or Path.home() / ".cache" / "mimlib"
    return Path(root) / "precision.json"


def _time_conv_step(dtype: torch.dtype | None, reps: int = 3) -> float:
    """Best of ``reps``: forward + backward of a 3x3, 64-channel convolution at 14x14, batch 100
    (the convHVAE's typical layer), plain float32 (``dtype=None``) or under CPU autocast."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 64, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 128, 3, padding=1).to(memory_format=torch.channels_last)
    best = float("inf")
    for i in range(reps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            y = conv(x)
        y.float().sum().backward()
        if i:   # the first call builds oneDNN's kernels
            best = min(best, time.perf_counter() - t0)
    return best


def bf16_speedup(refresh: bool = False) -> float:
    """float32 time / bf16-autocast time of a convolution step on this CPU (> 1: bf16 is faster).

    Measured once per (CPU model, torch version, thread count) and cached (module docstring).
    """
    key = f"{cpu_info().model} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = _cache_path()
    cache: dict = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}   # a damaged cache is measured again and rewritten
    if not refresh and isinstance(cache.get(key), dict) and "speedup" in cache[key]:
        return float(cache[key]["speedup"])
    fp32, bf16 = _time_conv_step(None), _time_conv_step(torch.bfloat16)
    cache[key] = {"speedup": fp32 / bf16, "fp32_s": fp32, "bf16_s": bf16,
                  "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        write_atomic(path, json.dumps(cache, indent=1))
    except OSError:
        pass   # an unwritable cache only costs a re-measurement next time
    return fp32 / bf16


def resolve_precision(requested: str = "auto", device: str | torch.device = "cpu") -> str:
    """The precision (``"fp32"`` or ``"bf16"``) a run computes in on ``device`` (module docstring)."""
    if requested not in REQUESTS:
        raise ValueError(f"precision must be one of {list(REQUESTS)}, got {requested!r}")
    if requested != "auto":
        return requested
    forced = os.environ.get("MIMLIB_PRECISION", "").strip()
    if forced and forced != "auto":
        if forced not in PRECISIONS:
            raise ValueError(f"MIMLIB_PRECISION must be one of {list(REQUESTS)}, got {forced!r}")
        return forced
    device = torch.device(device)
    if not native_bf16(device):
        return "fp32"
    if device.type == "cuda":
        return "bf16"
    return "bf16" if bf16_speedup() >= MIN_SPEEDUP else "fp32"


def describe(device: str | torch.device = "cpu") -> str:
    """One line for banners and benchmarks: the CPU, torch's capability, its bf16 flags, and what
    ``"auto"`` picks on ``device``."""
    info = cpu_info()
    flags = ", ".join(info.bf16_flags) or "none"
    line = (f"CPU {info.model} ({info.machine}, torch capability {info.capability}, native bf16 flags: {flags}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(dev)}"
    return f"{line}; precision 'auto' -> {resolve_precision('auto', dev)}"


def torch_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda[:n]"`` or ``"auto"`` (a GPU where torch sees one) as a torch device, with a
    clear error where a GPU is asked for and none is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but torch sees no GPU here (torch.cuda.is_available() is False; "
                         f"this torch is {torch.__version__}); use device='auto' (a GPU where there is one) or 'cpu'")
    return device
