"""The paper's U-Net at 256x256, batch 8: training and inference images/s, peak memory, FLOPs per image and the
achieved FLOP/s as a fraction of this machine's peak measured in the same run.

    python benchmarks/bench_unet.py [--device cpu|cuda] [--threads 2] [--precision 32-true|bf16-mixed|16-mixed]
                                    [--channels-last] [--compile] [--batch-size 8] [--size 256] [--json PATH]
    python benchmarks/bench_unet.py --compare [--rounds 7] [--size 64 --base-width 8]   # the demo's U-Net

``--compare`` times the training step of fp32, compiled, bf16-autocast and compiled bf16 copies of the same
network in one process, alternating one step of each per round, and prints each median with its ratio to
the fp32 median of the same run (a shared machine's speed drifts; alternation spreads the drift evenly).

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
import json
from typing import Any

import torch
from peak import (
    BenchRun,
    add_common_arguments,
    count_flops,
    describe_hardware,
    emit,
    format_si,
    hardware_line,
    measure_peaks,
    operator_lines,
    paper_comparison,
    peaks_line,
    profile_and_records,
    summary_line,
)

from synthseg.losses.dice import weighted_dice_loss
from synthseg.networks.unet import UNet

# The paper's U-Net trained at 12-70 images/s depending on the Table 1 row and GPU (RTX 2080 Ti or V100);
# the ratio is taken against the fastest.
PAPER_IMAGES_PER_S = 70.0
PAPER_HARDWARE = "RTX 2080 Ti or V100, the fastest Table 1 row (12-70 images/s over the rows)"


def build(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The network (for FLOP counting) and the module that runs (channels_last and/or compiled)."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=args.classes, base_width=args.base_width).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    runner = torch.compile(net) if args.compile else net
    return net, runner


VARIANTS = {"fp32": (False, None), "compiled": (True, None), "bf16": (False, torch.bfloat16)}
VARIANTS["compiled+bf16"] = (True, torch.bfloat16)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Median training-step seconds of each variant and its ratio to fp32, steps alternating per round."""
    import statistics
    import time

    if args.threads:
        torch.set_num_threads(args.threads)
    b, s, c = args.batch_size, args.size, args.classes
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 1, s, s, generator=gen)
    target = torch.nn.functional.one_hot(torch.randint(0, c, (b, s, s), generator=gen), c).permute(0, 3, 1, 2)
    target, weights = target.float(), torch.rand(c, generator=gen) + 0.1
    steps = {}
    for name, (compiled, dtype) in VARIANTS.items():
        torch.manual_seed(0)
        net = UNet(in_channels=1, num_classes=c, base_width=args.base_width)
        runner = torch.compile(net) if compiled else net
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step(
            runner: torch.nn.Module = runner, optimizer: torch.optim.Optimizer = optimizer, dtype=dtype
        ) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = runner(images)
            weighted_dice_loss(torch.softmax(logits.float(), dim=1), target, weights).backward()
            optimizer.step()

        t0 = time.perf_counter()
        step()  # compiles the compiled variants
        first = time.perf_counter() - t0
        for _ in range(args.warmup or 1):
            step()
        steps[name] = (step, first, [])
    for _ in range(args.rounds):
        for step, _, times in steps.values():
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    fp32 = statistics.median(steps["fp32"][2])
    result = {
        "benchmark": "unet_compare",
        "settings": {
            "batch_size": b,
            "size": s,
            "classes": c,
            "base_width": args.base_width,
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "variants": {
            name: {
                "median_step_s": statistics.median(times),
                "first_step_s": first,
                "ratio_to_fp32": statistics.median(times) / fp32,
            }
            for name, (_, first, times) in steps.items()
        },
    }
    print(
        f"U-Net {s}x{s} width {args.base_width} batch {b}, {torch.get_num_threads()} threads, "
        f"{args.rounds} alternating rounds (median; ratio to fp32 of the same run)"
    )
    for name, v in result["variants"].items():
        print(
            f"  {name:<14} {1000 * v['median_step_s']:8.1f} ms/step  x{v['ratio_to_fp32']:.2f}  "
            f"(first step, compile included: {v['first_step_s']:.1f} s)"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="the paper's batch: 8")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="inference batch (default: batch)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--compare", action="store_true", help="fp32 / compiled / bf16 steps side by side")
    parser.add_argument("--rounds", type=int, default=7, help="--compare: timed steps per variant")
    args = parser.parse_args()
    if args.compare:
        result = compare(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    run = BenchRun(args)
    device = run.device
    # Peaks measured before and after the model, so that a change in what the machine gives us shows.
    peaks_before = measure_peaks(device, run.peak_dtype)

    net, runner = build(args, device)
    b, e, s, c = args.batch_size, args.eval_batch_size or args.batch_size, args.size, args.classes
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(b, 1, s, s, generator=gen).to(device).contiguous(memory_format=run.memory_format)
    labels = torch.randint(0, c, (b, s, s), generator=gen).to(device)
    target = torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()
    eval_images = (
        torch.randn(e, 1, s, s, generator=gen).to(device).contiguous(memory_format=run.memory_format)
    )
    weights = torch.rand(c, generator=gen).to(device) + 0.1

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        # Softmax and the Dice sums in fp32, as UNetModule computes them.
        return weighted_dice_loss(torch.softmax(logits.float(), dim=1), target, weights)

    optimizer = run.adam(net.parameters(), lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            logits = runner(images)
        loss = loss_of(logits)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()

    def infer_step() -> None:
        with torch.inference_mode(), run.autocast():
            runner(eval_images).softmax(1)

    # FLOPs of the plain fp32 network (precision and memory layout do not change the arithmetic).
    net.train()
    with torch.no_grad():
        forward_flops = count_flops(lambda: net(images)) / b
    train_flops = count_flops(lambda: loss_of(net(images)).backward()) / b
    net.zero_grad(set_to_none=True)

    # Inference first: on CPU the peak RSS is a high-water mark.
    net.eval()
    infer_timing, infer_mem = run.timed(infer_step, forward_flops * e)
    net.train()
    train_timing, train_mem = run.timed(train_step, train_flops * b)
    records = profile_and_records(
        run,
        args,
        train_step,
        peaks_before,
        train=(train_timing, train_mem, b, train_flops),
        inference=(infer_timing, infer_mem, e, forward_flops),
    )
    train, inference, peaks = records["train"], records["inference"], records["peaks"]
    result: dict[str, Any] = {
        "benchmark": "unet",
        "hardware": describe_hardware(device),
        "settings": {
            **run.settings(args),
            "batch_size": b,
            "eval_batch_size": e,
            "size": s,
            "classes": c,
            "base_width": args.base_width,
        },
        "flops_per_image": {"forward": forward_flops, "train": train_flops},
        **records,
        **paper_comparison(train["images_per_s"], PAPER_IMAGES_PER_S, PAPER_HARDWARE, device),
    }
    summary = [
        f"U-Net {s}x{s} batch {b}, {run.describe(args)} on {hardware_line(result['hardware'])}",
        peaks_line(peaks),
        f"FLOPs/image: forward {format_si(forward_flops, 'FLOP')}, train {format_si(train_flops, 'FLOP')}",
        summary_line("train:", train, train_flops),
        summary_line("inference:", inference, forward_flops),
    ]
    if "ratio_to_paper" in result:
        summary.append(f"ratio to the paper's {PAPER_IMAGES_PER_S} images/s: {result['ratio_to_paper']:.2f}")
    emit(result, summary + operator_lines(records["top_operators_train"][:8]), args.json)


if __name__ == "__main__":
    main()
