"""The paper's U-Net at 256x256, batch 8: training and inference images/s, peak memory, FLOPs per image and the
achieved FLOP/s as a fraction of this machine's peak measured in the same run.

    python benchmarks/bench_unet.py [--device cpu|cuda] [--threads 2] [--precision 32-true|bf16-mixed|16-mixed]
                                    [--channels-last] [--compile] [--batch-size 8] [--size 256] [--json PATH]

The training step is the one UNetModule takes: forward, softmax, the paper's weighted Dice loss, backward,
Adam. Inputs are random tensors already on the device (the loader is measured by bench_loader.py), so the
figure is the model's compute. Peak memory on CUDA is the allocator's peak; on CPU the process's peak
resident set size (inference is measured first, so each figure is that workload's high-water mark).
The fraction of peak is taken per timed step against a 3x3-conv peak measured just before that step (on a
shared machine the FLOP/s available drifts), median over steps; peaks are also measured before and after.
The JSON result (hardware, peaks, figures, top operators) is printed, and written to --json if given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from peak import (
    count_flops,
    describe_hardware,
    format_si,
    measure_peaks,
    peak_memory_mib,
    reset_peak_memory,
    time_against_peak,
    top_operators,
)

from synthseg.losses.dice import weighted_dice_loss
from synthseg.networks.unet import UNet

AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def build(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The network (for FLOP counting) and the module that runs (channels_last and/or compiled)."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=args.classes, base_width=args.base_width).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    runner = torch.compile(net) if args.compile else net
    return net, runner


def _cpu_note(timing: dict[str, Any]) -> str:
    share = timing.get("fraction_of_conv_peak_cpu_time")
    return "" if share is None else f" ({100 * share:.1f} % in CPU time)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", choices=sorted(AUTOCAST), default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8, help="the paper's batch: 8")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="inference batch (default: batch)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: CPU 1, CUDA 5)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: CPU 2, CUDA 20)")
    parser.add_argument("--no-profile", action="store_true", help="skip the operator profile")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 2)
    autocast_dtype = AUTOCAST[args.precision]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    # Peaks in the precision the model computes in (fp32, or the autocast dtype), measured before and after
    # the model so that a change in what the machine gives us (shared CPUs, clocks) shows.
    peak_dtype = autocast_dtype or torch.float32
    peaks_before = measure_peaks(device, peak_dtype)

    net, runner = build(args, device)
    b, e, s, c = args.batch_size, args.eval_batch_size or args.batch_size, args.size, args.classes
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(b, 1, s, s, generator=gen).to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, c, (b, s, s), generator=gen).to(device)
    target = torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()
    eval_images = torch.randn(e, 1, s, s, generator=gen).to(device).contiguous(memory_format=memory_format)
    weights = torch.rand(c, generator=gen).to(device) + 0.1

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        # Softmax and the Dice sums in fp32, as UNetModule computes them.
        return weighted_dice_loss(torch.softmax(logits.float(), dim=1), target, weights)

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = runner(images)
        loss = loss_of(logits)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def infer_step() -> None:
        with torch.inference_mode(), autocast():
            runner(eval_images).softmax(1)

    # FLOPs of the plain fp32 network (precision and memory layout do not change the arithmetic).
    net.train()
    with torch.no_grad():
        forward_flops = count_flops(lambda: net(images)) / b
    train_flops = count_flops(lambda: loss_of(net(images)).backward()) / b
    net.zero_grad(set_to_none=True)

    # Inference first: on CPU the peak RSS is a high-water mark.
    net.eval()
    reset_peak_memory(device)
    infer = time_against_peak(
        infer_step, forward_flops * e, device, peak_dtype, warmup=warmup, repeats=repeats
    )
    infer_s = infer["seconds"]
    infer_mem = peak_memory_mib(device)
    net.train()
    reset_peak_memory(device)
    train = time_against_peak(train_step, train_flops * b, device, peak_dtype, warmup=warmup, repeats=repeats)
    train_s = train["seconds"]
    train_mem = peak_memory_mib(device)
    operators = (
        [] if args.no_profile else top_operators(train_step, device, steps=5 if cuda else 1, warm=False)
    )

    peaks_after = measure_peaks(device, peak_dtype)
    peaks = {
        name: {
            **peaks_before[name],
            "flop_per_s": (peaks_before[name]["flop_per_s"] + peaks_after[name]["flop_per_s"]) / 2,
        }
        for name in peaks_before
    }
    for name in peaks:
        peaks[name]["flop_per_s_before"] = peaks_before[name]["flop_per_s"]
        peaks[name]["flop_per_s_after"] = peaks_after[name]["flop_per_s"]
        del peaks[name]["seconds"]
    conv_peak = peaks["conv3x3"]["flop_per_s"]
    matmul_peak = peaks["matmul"]["flop_per_s"]
    train_ips, infer_ips = b / train_s, e / infer_s
    result: dict[str, Any] = {
        "benchmark": "unet",
        "hardware": describe_hardware(device),
        "settings": {
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "batch_size": b,
            "eval_batch_size": e,
            "size": s,
            "classes": c,
            "base_width": args.base_width,
            "warmup": warmup,
            "repeats": repeats,
        },
        "peaks": peaks,
        "flops_per_image": {"forward": forward_flops, "train": train_flops},
        "train": {
            "step_s": train_s,
            "images_per_s": train_ips,
            "flop_per_s": train_flops * train_ips,
            "fraction_of_conv_peak": train["fraction_of_conv_peak"],
            "conv_peak_during": train["conv_peak_flop_per_s"],
            "fractions_per_step": train["fractions"],
            "fraction_of_conv_peak_cpu_time": train.get("fraction_of_conv_peak_cpu_time"),
            "fraction_of_matmul_peak": train_flops * train_ips / matmul_peak,
            "peak_memory_mib": train_mem,
        },
        "inference": {
            "batch_s": infer_s,
            "images_per_s": infer_ips,
            "flop_per_s": forward_flops * infer_ips,
            "fraction_of_conv_peak": infer["fraction_of_conv_peak"],
            "conv_peak_during": infer["conv_peak_flop_per_s"],
            "fractions_per_step": infer["fractions"],
            "fraction_of_conv_peak_cpu_time": infer.get("fraction_of_conv_peak_cpu_time"),
            "peak_memory_mib": infer_mem,
        },
        "top_operators_train": operators,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")

    hw = (
        result["hardware"].get("gpu")
        or f"{result['hardware']['cpu']}, {result['hardware']['torch_threads']} threads"
    )
    layout = " channels_last" if args.channels_last else ""
    compiled = " compile" if args.compile else ""
    summary = [
        f"U-Net {s}x{s} batch {b}, {args.precision}{layout}{compiled} on {hw}",
        f"peaks (mean of before/after): conv3x3 {format_si(conv_peak, 'FLOP/s')}"
        f" ({format_si(peaks['conv3x3']['flop_per_s_before'], 'FLOP/s')} /"
        f" {format_si(peaks['conv3x3']['flop_per_s_after'], 'FLOP/s')}),"
        f" matmul {format_si(matmul_peak, 'FLOP/s')}",
        f"FLOPs/image: forward {format_si(forward_flops, 'FLOP')}, train {format_si(train_flops, 'FLOP')}",
        f"train:     {train_ips:8.2f} images/s  {format_si(train_flops * train_ips, 'FLOP/s')}"
        f"  = {100 * train['fraction_of_conv_peak']:.1f} % of conv peak"
        f"{_cpu_note(train)}  peak mem {train_mem:.0f} MiB",
        f"inference: {infer_ips:8.2f} images/s  {format_si(forward_flops * infer_ips, 'FLOP/s')}"
        f"  = {100 * infer['fraction_of_conv_peak']:.1f} % of conv peak"
        f"{_cpu_note(infer)}  peak mem {infer_mem:.0f} MiB",
    ]
    for op in operators[:8]:
        summary.append(f"  {op['share'] * 100:5.1f} %  {op['self_ms_per_step']:9.2f} ms/step  {op['name']}")
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
