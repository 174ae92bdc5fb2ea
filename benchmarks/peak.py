"""This machine's measured peak FLOP/s, FLOP counting and timing helpers shared by the model benchmarks.

    python benchmarks/peak.py [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--threads N]

Peaks are measured, not read from a data sheet: a large square matmul and a large 3x3 convolution
(channels_last), each timed several times, median kept. A model's achieved FLOP/s divided by the conv peak
measured in the same run says how close it gets to what this machine can do on its dominant operator.
FLOPs follow torch.utils.flop_counter: 2 per multiply-add, matmuls and convolutions only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------- hardware
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU, threads, GPU, library versions."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


# ------------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 5, inner: int = 1
) -> float:
    """Median wall time in seconds of one call of ``fn`` (``inner`` calls per timed window, for short GPU ops)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------- peaks
def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5
) -> dict[str, Any]:
    """FLOP/s of an n x n by n x n matmul (2 n^3 FLOPs)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1
    seconds = time_median(lambda: a @ b, device, warmup=2, repeats=repeats, inner=inner)
    flops = 2 * n**3
    return {"shape": [n, n, n], "dtype": str(dtype), "seconds": seconds, "flop_per_s": flops / seconds}


def conv3x3_peak(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    channels_last: bool = True,
    batch: int | None = None,
    channels: int = 256,
    size: int | None = None,
    repeats: int = 5,
) -> dict[str, Any]:
    """FLOP/s of a 3x3 'same' convolution, channels -> channels, no bias (2 * B * C * C * 9 * H * W FLOPs)."""
    batch = batch or (64 if device.type == "cuda" else 8)
    size = size or (128 if device.type == "cuda" else 64)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype).to(memory_format=memory_format)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype).to(memory_format=memory_format)
    inner = 10 if device.type == "cuda" else 1
    with torch.no_grad():
        seconds = time_median(
            lambda: F.conv2d(x, w, padding=1), device, warmup=2, repeats=repeats, inner=inner
        )
    flops = 2 * batch * channels * channels * 9 * size * size
    return {
        "shape": {"batch": batch, "channels": channels, "size": size, "kernel": 3},
        "channels_last": channels_last,
        "dtype": str(dtype),
        "seconds": seconds,
        "flop_per_s": flops / seconds,
    }


def measure_peaks(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    return {"matmul": matmul_peak(device, dtype), "conv3x3": conv3x3_peak(device, dtype)}


def time_against_peak(
    fn: Callable[[], Any],
    flops: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    warmup: int = 1,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time ``fn`` (doing ``flops`` FLOPs) and measure the conv peak right before every timed call.

    On a shared machine the FLOP/s available changes while a benchmark runs, so the fraction of peak is taken
    per call against the peak measured just before it (median reported). On CPU the same ratio is also taken
    in process CPU time (FLOPs per CPU-second of the model over FLOPs per CPU-second of the conv): what the
    code achieves with the cycles it got, unaffected by other processes taking cores away.
    """
    cpu = device.type == "cpu"
    x, w, peak_flops = _conv_operands(device, dtype)
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds, fractions, cpu_fractions, peaks = [], [], [], []
    for _ in range(repeats):
        with torch.no_grad():
            peak_wall, peak_cpu = _timed(lambda: F.conv2d(x, w, padding=1), device, calls=3 if cpu else 30)
        wall, cpu_s = _timed(fn, device, calls=1)
        seconds.append(wall)
        peaks.append(peak_flops / peak_wall)
        fractions.append((flops / wall) / (peak_flops / peak_wall))
        if cpu:
            cpu_fractions.append((flops / cpu_s) / (peak_flops / peak_cpu))
    out: dict[str, Any] = {
        "seconds": statistics.median(seconds),
        "conv_peak_flop_per_s": statistics.median(peaks),
        "fraction_of_conv_peak": statistics.median(fractions),
        "fractions": fractions,
    }
    if cpu:
        out["fraction_of_conv_peak_cpu_time"] = statistics.median(cpu_fractions)
        out["fractions_cpu_time"] = cpu_fractions
    return out


def _conv_operands(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The reference conv of conv3x3_peak (default sizes, channels_last) and its FLOPs per call."""
    batch, size, channels = (64, 128, 256) if device.type == "cuda" else (8, 64, 256)
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
    x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    return x, w, 2 * batch * channels * channels * 9 * size * size


def _timed(fn: Callable[[], Any], device: torch.device, calls: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, averaged over ``calls`` back-to-back calls."""
    synchronize(device)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - wall0) / calls, (time.process_time() - cpu0) / calls


# -------------------------------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` runs (forward and, if it calls it, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_image(
    model: torch.nn.Module, batch: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, float]:
    """Forward FLOPs per image, and training FLOPs per image (forward + backward) when ``loss_fn`` is given."""
    n = len(batch)
    with torch.no_grad():
        forward = count_flops(lambda: model(batch))
    out = {"forward": forward / n}
    if loss_fn is not None:

        def step() -> None:
            loss_fn(model(batch)).backward()

        out["train"] = count_flops(step) / n
        model.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------------------------ memory
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated tensor memory since the last reset. CPU: the process's peak resident set size
    (a high-water mark since start: measure the smaller workload first)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ---------------------------------------------------------------------------------------------- profiler
def top_operators(
    fn: Callable[[], Any], device: torch.device, *, steps: int = 2, top: int = 10, warm: bool = True
) -> list[dict]:
    """The operators taking the most self time over ``steps`` calls of ``fn`` (device time on CUDA).

    ``warm`` runs ``fn`` once first, so one-off set-up does not show (skip it when ``fn`` already ran).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if warm:
        fn()
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {
            "name": e.key,
            "self_ms_per_step": getattr(e, key) / 1000 / steps,
            "share": getattr(e, key) / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]


def format_si(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peaks = measure_peaks(device, DTYPES[args.dtype])
    print(json.dumps({"hardware": describe_hardware(device), "peaks": peaks}, indent=2))
    for name, peak in peaks.items():
        print(f"{name:8s} {format_si(peak['flop_per_s'], 'FLOP/s')}", file=sys.stderr)


if __name__ == "__main__":
    main()
