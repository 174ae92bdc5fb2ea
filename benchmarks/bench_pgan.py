"""PGAN at its final stage, 256x256: training and generation images/s, FLOPs, fraction of conv peak, memory.

The paper-size networks at resolution 256, alpha 1 and the paper's batch 8; the achieved FLOP/s is taken as
a fraction of this machine's 3x3-conv peak measured in the same run.

    python benchmarks/bench_pgan.py [--device cpu|cuda] [--threads 2] [--precision 32-true|bf16-mixed|16-mixed]
                                    [--channels-last] [--compile] [--batch-size 8] [--gen-batch 32]
                                    [--resolution 256] [--no-fused-scale] [--compare-fused STEPS]
                                    [--compare-only] [--json PATH]

The training step is the one PGAN.training_step takes at the last stage: a critic step (fakes made under
no_grad, WGANGPLoss().discriminator on reals, fakes and the interpolates with its gradient penalty, Adam),
then a generator step (other latents, WGANGPLoss().generator with the critic frozen, Adam), then the EMA
update (lerp 0.999). Adam: lr 1e-3, betas (0, 0.99), eps 1e-8. Latents and mixing factors are drawn once
(drawing them is not what is measured). A training image is one real image through one critic step and one
generator step, as the paper's kimg count, so train images/s = batch / step time. Generation is the
generator alone (the EMA copy) at --gen-batch under inference mode (and autocast with a mixed precision).

FLOPs (torch.utils.flop_counter: convolutions and matmuls, 2 per multiply-add) are counted on the fp32
networks over the whole step: the critic step's generator forward, the three critic forwards (reals,
fakes, interpolates), the input gradient of the interpolates' scores (create_graph) and the backward of the
loss through all of it (the double backward of the penalty included), plus the generator step's generator
and critic forwards and its backward (critic weights frozen, so only input gradients through the critic).
Adam and the EMA add no counted FLOPs. The networks use the official fused scaling (their default): at
256x256 a forward (one generated image) is 36.6 GFLOP and a training image 659 GFLOP (critic step 476 G,
generator step 183 G); with --no-fused-scale (upsample then conv; conv, bias, LReLU, then pool: the official unfused critic) 56.3 and 1,013 GFLOP
(731 G + 281 G). Inputs are random tensors already on the device, so the figure is the model's compute.

--compare-fused STEPS times the training step of fused and unfused networks holding the same weights,
alternating one step of each (after one untimed step of each), and reports both medians and their ratio,
measured in the same run; --compare-only stops after it.

--compile compiles the generator only: the critic's gradient penalty needs a double backward, which
torch.compile does not support ("aot_autograd does not currently support double backward"). With
--precision 16-mixed (CUDA only) a GradScaler scales both losses, and the penalty's input gradient too where
``WGANGPLoss.discriminator`` takes it as ``grad_scale``.

Peak memory on CUDA is the allocator's peak; on CPU the process's peak resident set size (generation is
measured first, so each figure is that workload's high-water mark). The fraction of peak is taken per timed
step against a 3x3-conv peak measured just before that step, median over steps; peaks are also measured
before and after. The paper's throughput, about 21.5 images/s on one RTX 2080 Ti, is an average over the
whole 12,000-kimg schedule, most of it at resolutions below 256: a ratio at 256 alone understates us.
The JSON result (hardware, peaks, figures, top operators) is printed, and written to --json if given.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from peak import (
    BenchRun,
    add_common_arguments,
    adversarial_step,
    count_flops,
    describe_hardware,
    emit,
    hardware_line,
    measure_peaks,
    operator_lines,
    paper_comparison,
    peaks_line,
    profile_and_records,
    summary_line,
    synchronize,
)

from synthseg.losses.wgan import WGANGPLoss
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator

PAPER_IMAGES_PER_S = 21.5  # 12,000 kimg averaged over the whole schedule
PAPER_HARDWARE = "one RTX 2080 Ti, average over the 12,000-kimg schedule"
EMA_DECAY = 0.999
CLASSES = 7


def build(
    args: argparse.Namespace, run: BenchRun, fused_scale: bool
) -> tuple[PGANGenerator, PGANDiscriminator]:
    torch.manual_seed(0)
    generator = PGANGenerator(
        resolution=args.resolution,
        channels=1,
        latent_dim=512,
        fmap_base=8192,
        fmap_max=512,
        normalize_latents=True,
        fused_scale=fused_scale,
    )
    discriminator = PGANDiscriminator(
        resolution=args.resolution,
        channels=1,
        fmap_base=8192,
        fmap_max=512,
        mbstd_group_size=4,
        fused_scale=fused_scale,
    )
    return (
        generator.to(run.device, memory_format=run.memory_format),
        discriminator.to(run.device, memory_format=run.memory_format),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="the paper's minibatch at 256x256: 8")
    parser.add_argument("--gen-batch", type=int, default=32, help="generation batch")
    parser.add_argument("--resolution", type=int, default=256, help="final stage, trained at alpha 1")
    parser.add_argument(
        "--no-fused-scale",
        action="store_true",
        help="separate upsample/conv; conv, bias, LReLU, then pool (official unfused)",
    )
    parser.add_argument(
        "--compare-fused", type=int, default=0, metavar="STEPS", help="time fused vs unfused steps"
    )
    parser.add_argument("--compare-only", action="store_true", help="stop after --compare-fused")
    args = parser.parse_args()
    run = BenchRun(args)
    device, b, e, r, alpha = run.device, args.batch_size, args.gen_batch, args.resolution, 1.0
    loss = WGANGPLoss()
    gen = torch.Generator(device="cpu").manual_seed(0)
    # Reals as the model feeds them: class indices 0..6 mapped linearly onto [-1, 1].
    labels = torch.randint(0, CLASSES, (b, 1, r, r), generator=gen).float()
    reals = (labels * (2.0 / (CLASSES - 1)) - 1.0).to(device).contiguous(memory_format=run.memory_format)
    latents_d, latents_g = (torch.randn(b, 512, generator=gen).to(device) for _ in range(2))
    latents_gen = torch.randn(e, 512, generator=gen).to(device)
    mixing = torch.rand(b, 1, 1, 1, generator=gen).to(device)

    def make_step(fused_scale: bool) -> tuple[Callable[[], None], PGANGenerator, PGANDiscriminator]:
        """The training step of fresh networks (same seed, so the same weights fused or not)."""
        generator, discriminator = build(args, run, fused_scale)
        generator_ema = copy.deepcopy(generator).requires_grad_(False)
        run_generator = torch.compile(generator) if args.compile else generator
        opt_g = run.adam(generator.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
        opt_d = run.adam(discriminator.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)

        def train_step() -> None:
            adversarial_step(
                [
                    (lambda: critic_loss(run_generator, discriminator), opt_d, generator),
                    (lambda: generator_loss(run_generator, discriminator), opt_g, discriminator),
                ],
                run,
            )
            with torch.no_grad():
                for ema, live in zip(generator_ema.parameters(), generator.parameters(), strict=True):
                    ema.lerp_(live, 1.0 - EMA_DECAY)

        train_step.generator_ema = generator_ema  # type: ignore[attr-defined]
        return train_step, generator, discriminator

    def critic_loss(g: torch.nn.Module, discriminator: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            fakes = g(latents_d, r, alpha)
        # With fp16 loss scaling the penalty's input gradient carries the scaler's scale, as in PGAN.
        scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
        terms = loss.discriminator(lambda x: discriminator(x, alpha), reals, fakes, mixing, grad_scale=scale)
        return terms["loss"]

    def generator_loss(g: torch.nn.Module, discriminator: torch.nn.Module) -> torch.Tensor:
        return loss.generator(lambda x: discriminator(x, alpha), g(latents_g, r, alpha))["loss"]

    comparison = compare_fused(make_step, args.compare_fused, device) if args.compare_fused > 0 else None
    if comparison is not None:
        print(comparison_line(comparison), flush=True)
        if args.compare_only:
            emit(
                {"benchmark": "pgan", "settings": run.settings(args), "fused_vs_unfused": comparison},
                [],
                args.json,
            )
            return

    peaks_before = measure_peaks(device, run.peak_dtype)
    train_step, generator, discriminator = make_step(not args.no_fused_scale)
    generator_ema = train_step.generator_ema  # type: ignore[attr-defined]
    run_generator_ema = torch.compile(generator_ema) if args.compile else generator_ema

    def generate() -> None:
        with torch.inference_mode(), run.autocast():
            run_generator_ema(latents_gen, r, alpha)

    # FLOPs of the plain fp32 networks (precision and memory layout do not change the arithmetic). Generation
    # is counted and timed before training: on CPU the peak RSS is a high-water mark.
    with torch.no_grad():
        generate_flops = count_flops(lambda: generator(latents_gen, r, alpha)) / e
    gen_timing, gen_mem = run.timed(generate, generate_flops * e)
    critic_flops = count_flops(
        lambda: adversarial_step([(lambda: critic_loss(generator, discriminator), None, generator)])
    )
    generator_flops = count_flops(
        lambda: adversarial_step([(lambda: generator_loss(generator, discriminator), None, discriminator)])
    )
    train_flops = (critic_flops + generator_flops) / b
    generator.zero_grad(set_to_none=True)
    discriminator.zero_grad(set_to_none=True)
    train_timing, train_mem = run.timed(train_step, train_flops * b)
    records = profile_and_records(
        run,
        args,
        train_step,
        peaks_before,
        train=(train_timing, train_mem, b, train_flops),
        inference=(gen_timing, gen_mem, e, generate_flops),
    )
    train, inference, peaks = records["train"], records["inference"], records["peaks"]
    result: dict[str, Any] = {
        "benchmark": "pgan",
        "hardware": describe_hardware(device),
        "settings": {
            **run.settings(args),
            "batch_size": b,
            "eval_batch_size": e,
            "size": r,
            "alpha": alpha,
            "fused_scale": not args.no_fused_scale,
        },
        "flops_per_image": {
            "forward": generate_flops,
            "train": train_flops,
            "critic_step": critic_flops / b,
            "generator_step": generator_flops / b,
        },
        "parameters": {
            "generator": sum(p.numel() for p in generator.parameters()),
            "discriminator": sum(p.numel() for p in discriminator.parameters()),
        },
        **records,
        **({"fused_vs_unfused": comparison} if comparison else {}),
        **paper_comparison(train["images_per_s"], PAPER_IMAGES_PER_S, PAPER_HARDWARE, device),
    }

    summary = [
        f"PGAN {r}x{r} alpha 1 batch {b}, {run.describe(args)} on {hardware_line(result['hardware'])}",
        peaks_line(peaks),
        f"FLOPs/image: train {train_flops / 1e9:.1f} G (critic step {critic_flops / b / 1e9:.1f} G,"
        f" generator step {generator_flops / b / 1e9:.1f} G), forward (one generated image)"
        f" {generate_flops / 1e9:.1f} G ({'fused' if not args.no_fused_scale else 'unfused'} scaling)",
        summary_line("train:", train, train_flops),
        summary_line("generate:", inference, generate_flops),
    ]
    if "ratio_to_paper" in result:
        summary.append(f"ratio to the paper's {PAPER_IMAGES_PER_S} images/s: {result['ratio_to_paper']:.2f}")
    if comparison is not None:
        summary.append(comparison_line(comparison))
    emit(result, summary + operator_lines(records["top_operators_train"][:8]), args.json)


def compare_fused(
    make_step: Callable[[bool], tuple[Callable[[], None], Any, Any]], steps: int, device: torch.device
) -> dict[str, Any]:
    """Median seconds per training step of fused and unfused networks, alternating steps in one run.

    Wall time, and on CPU also this process's CPU time (on a shared machine the less disturbed of the two).
    """
    fused_step, unfused_step = make_step(True)[0], make_step(False)[0]
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps + 1):
        for fused, step in ((True, fused_step), (False, unfused_step)):
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            if i:  # the first step of each is warm-up
                wall[fused].append(time.perf_counter() - start)
                cpu[fused].append(time.process_time() - start_cpu)
    result: dict[str, Any] = {"steps": steps}
    for name, times in (("wall", wall), ("cpu", cpu)):
        fused_s, unfused_s = statistics.median(times[True]), statistics.median(times[False])
        result[name] = {
            "fused_s": fused_s,
            "unfused_s": unfused_s,
            "ratio": fused_s / unfused_s,
            "fused_times": times[True],
            "unfused_times": times[False],
        }
    return result


def comparison_line(comparison: dict[str, Any]) -> str:
    wall, cpu = comparison["wall"], comparison["cpu"]
    return (
        f"fused vs unfused training step, median of {comparison['steps']} alternating steps: wall"
        f" {wall['fused_s']:.2f} s vs {wall['unfused_s']:.2f} s (ratio {wall['ratio']:.3f}); CPU time"
        f" {cpu['fused_s']:.2f} s vs {cpu['unfused_s']:.2f} s (ratio {cpu['ratio']:.3f})"
    )


if __name__ == "__main__":
    main()
