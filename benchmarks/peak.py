"""This machine's measured peak FLOP/s, FLOP counting and timing helpers shared by the model benchmarks.

    python benchmarks/peak.py [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--threads N]

Peaks are measured, not read from a data sheet: a large square matmul and a large 3x3 convolution
(channels_last), each timed several times, median kept. A model's achieved FLOP/s divided by the conv peak
measured in the same run says how close it gets to what this machine can do on its dominant operator.
FLOPs follow torch.utils.flop_counter: 2 per multiply-add, matmuls and convolutions only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
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
        # The vector ISA torch dispatches to (AVX2, AVX512, ...): it sets the CPU peak more than the model name.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
class _TotalsOnly:
    """Stands in for FlopCounterMode's per-module tracker, so that only the total is kept: the tracker's
    backward hooks fail under torch.autograd.grad ("A leaf node was passed to _will_engine_execute_node"),
    which a gradient penalty calls."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _TotalsOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` runs (forward and, if it calls it, backward; double backward too)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalsOnly()  # type: ignore[assignment]
    with counter:
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


# ------------------------------------------------------------------------- shared by the model benchmarks
AUTOCAST: dict[str, torch.dtype | None] = {
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every model benchmark takes (bench_pgan.py, bench_spade.py; bench_unet.py has the same)."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", choices=sorted(AUTOCAST), default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fused-adam", action="store_true", help="Adam(fused=True), as model.*.fused=true")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: CPU 1, CUDA 5)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: CPU 2, CUDA 20)")
    parser.add_argument("--no-profile", action="store_true", help="skip the operator profile")
    parser.add_argument("--json", type=Path, default=None)


class BenchRun:
    """What the common flags decide: device, step counts, autocast dtype, memory format, gradient scaler."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if args.precision == "16-mixed" and not self.cuda:
            # fp16 autocast on CPU is neither what the paper ran nor fast there; bf16-mixed is the CPU option.
            raise SystemExit("--precision 16-mixed needs --device cuda (use bf16-mixed on CPU)")
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.warmup = args.warmup if args.warmup is not None else (5 if self.cuda else 1)
        self.repeats = args.repeats if args.repeats is not None else (20 if self.cuda else 2)
        self.autocast_dtype = AUTOCAST[args.precision]
        # Peaks in the precision the model computes in: fp32, or the autocast dtype.
        self.peak_dtype = self.autocast_dtype or torch.float32
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.precision == "16-mixed")

        self.fused_adam = bool(args.fused_adam)

    def adam(self, params: Any, **kwargs: Any) -> torch.optim.Adam:
        """Adam as the model configs build it, fused with --fused-adam (else torch's default kernel)."""
        return torch.optim.Adam(params, fused=True if self.fused_adam else None, **kwargs)

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """The common settings for the JSON record."""
        return {
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "fused_adam": self.fused_adam,
            "warmup": self.warmup,
            "repeats": self.repeats,
        }

    def describe(self, args: argparse.Namespace) -> str:
        """Precision and fast paths in a few words, for the summary line."""
        extras = [
            ("channels_last", args.channels_last),
            ("compile", args.compile),
            ("fused Adam", self.fused_adam),
        ]
        return " ".join([args.precision, *(name for name, on in extras if on)])

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def timed(self, fn: Callable[[], Any], flops: float) -> tuple[dict[str, Any], float]:
        """``fn`` timed against the conv peak (see time_against_peak), and the peak memory it reached."""
        reset_peak_memory(self.device)
        timing = time_against_peak(
            fn, flops, self.device, self.peak_dtype, warmup=self.warmup, repeats=self.repeats
        )
        return timing, peak_memory_mib(self.device)


Phase = tuple[Callable[[], torch.Tensor], torch.optim.Optimizer | None, torch.nn.Module]


def adversarial_step(phases: list[Phase], run: BenchRun | None = None) -> None:
    """One GAN iteration: per phase (loss, its optimizer, the other network), the other network is frozen
    (as Lightning's toggle_optimizer does), the loss is computed under autocast and backpropagated through
    the run's GradScaler, and the optimizer steps. Without ``run`` (FLOP counting) there is no autocast and
    no scaling; a phase without an optimizer only backpropagates."""
    scaler = run.scaler if run else torch.amp.GradScaler("cpu", enabled=False)
    for loss_fn, optimizer, frozen in phases:
        frozen.requires_grad_(False)
        with run.autocast() if run else contextlib.nullcontext():
            loss = loss_fn()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if optimizer is not None:
            scaler.step(optimizer)
        frozen.requires_grad_(True)
    scaler.update()


def combine_peaks(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Peaks measured before and after the model: their mean, with both kept."""
    return {
        name: {
            **{k: v for k, v in before[name].items() if k != "seconds"},
            "flop_per_s": (before[name]["flop_per_s"] + after[name]["flop_per_s"]) / 2,
            "flop_per_s_before": before[name]["flop_per_s"],
            "flop_per_s_after": after[name]["flop_per_s"],
        }
        for name in before
    }


def throughput_record(
    timing: dict[str, Any],
    images: int,
    flops_per_image: float,
    memory_mib: float,
    seconds_key: str = "step_s",
) -> dict[str, Any]:
    """A time_against_peak result as the benchmarks' JSON record of one workload."""
    images_per_s = images / timing["seconds"]
    return {
        seconds_key: timing["seconds"],
        "images_per_s": images_per_s,
        "flop_per_s": flops_per_image * images_per_s,
        "fraction_of_conv_peak": timing["fraction_of_conv_peak"],
        "conv_peak_during": timing["conv_peak_flop_per_s"],
        "fractions_per_step": timing["fractions"],
        "fraction_of_conv_peak_cpu_time": timing.get("fraction_of_conv_peak_cpu_time"),
        "peak_memory_mib": memory_mib,
    }


def profile_and_records(
    run: BenchRun,
    args: argparse.Namespace,
    train_step: Callable[[], Any],
    peaks_before: dict[str, Any],
    train: tuple[dict[str, Any], float, int, float],
    inference: tuple[dict[str, Any], float, int, float],
) -> dict[str, Any]:
    """After the timed runs: the top operators of ``train_step``, the peaks (before and after), and the
    ``train`` and ``inference`` records from their (timing, peak memory, images per step, FLOPs per image)."""
    operators = (
        []
        if args.no_profile
        else top_operators(train_step, run.device, steps=5 if run.cuda else 1, warm=False)
    )
    peaks = combine_peaks(peaks_before, measure_peaks(run.device, run.peak_dtype))
    train_timing, train_mem, train_images, train_flops = train
    train_record = throughput_record(train_timing, train_images, train_flops, train_mem)
    train_record["fraction_of_matmul_peak"] = train_record["flop_per_s"] / peaks["matmul"]["flop_per_s"]
    infer_timing, infer_mem, infer_images, infer_flops = inference
    return {
        "peaks": peaks,
        "train": train_record,
        "inference": throughput_record(
            infer_timing, infer_images, infer_flops, infer_mem, seconds_key="batch_s"
        ),
        "top_operators_train": operators,
    }


def paper_comparison(
    images_per_s: float, paper_images_per_s: float, paper_hardware: str, device: torch.device
) -> dict[str, Any]:
    """The paper's training throughput, and our ratio to it on a GPU (a CPU ratio would mean nothing)."""
    out: dict[str, Any] = {"paper_images_per_s": paper_images_per_s, "paper_hardware": paper_hardware}
    if device.type == "cuda":
        out["ratio_to_paper"] = images_per_s / paper_images_per_s
    return out


def hardware_line(hardware: dict[str, Any]) -> str:
    return hardware.get("gpu") or f"{hardware['cpu']}, {hardware['torch_threads']} threads"


def summary_line(label: str, record: dict[str, Any], flops_per_image: float) -> str:
    """One line of a workload's figures for the human-readable summary."""
    cpu = record.get("fraction_of_conv_peak_cpu_time")
    cpu_note = "" if cpu is None else f" ({100 * cpu:.1f} % in CPU time)"
    return (
        f"{label:10s} {record['images_per_s']:8.2f} images/s  {format_si(record['flop_per_s'], 'FLOP/s')}"
        f"  = {100 * record['fraction_of_conv_peak']:.1f} % of conv peak{cpu_note}"
        f"  peak mem {record['peak_memory_mib']:.0f} MiB  ({format_si(flops_per_image, 'FLOP')}/image)"
    )


def peaks_line(peaks: dict[str, Any]) -> str:
    conv = peaks["conv3x3"]
    return (
        f"peaks (mean of before/after): conv3x3 {format_si(conv['flop_per_s'], 'FLOP/s')}"
        f" ({format_si(conv['flop_per_s_before'], 'FLOP/s')} /"
        f" {format_si(conv['flop_per_s_after'], 'FLOP/s')}),"
        f" matmul {format_si(peaks['matmul']['flop_per_s'], 'FLOP/s')}"
    )


def operator_lines(operators: list[dict]) -> list[str]:
    return [
        f"  {op['share'] * 100:5.1f} %  {op['self_ms_per_step']:9.2f} ms/step  {op['name']}"
        for op in operators
    ]


def emit(result: dict[str, Any], summary: list[str], path: Path | None) -> None:
    """The JSON record to stdout (and to ``path``), the summary to stderr."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print("\n".join(summary), file=sys.stderr)


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
