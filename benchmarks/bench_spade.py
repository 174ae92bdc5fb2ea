"""SPADE at 256x256: training and generation images/s, FLOPs per image, fraction of conv peak, peak memory.

At the paper's widths and the official batch 1; generation both by the generator alone and through the real
generate_images path with PNG I/O; the achieved FLOP/s is taken as a fraction of this machine's 3x3-conv peak
measured in the same run.

    python benchmarks/bench_spade.py [--device cpu|cuda] [--threads 2] [--precision 32-true|bf16-mixed|16-mixed]
                                     [--channels-last] [--compile] [--batch-size 1] [--size 256]
                                     [--gen-batch 4] [--gen-images 16] [--ngf 64] [--ndf 64] [--json PATH]
                                     [--sequences 1,4]

Training: one iteration is what SPADEModule.training_step computes (generator step with hinge + feature
matching, discriminator frozen; then discriminator step on a fresh fake made under no_grad; real and fake go
through the two-scale discriminator in one batch; Adam TTUR, G 1e-4 / D 4e-4, betas (0, 0.9)), at the paper's
widths (SPADEGenerator label_nc 7, output_nc 1, ngf 64; MultiscaleDiscriminator num_D 2, ndf 64, n_layers 4).
Train images/s = batch / iteration. FLOPs (torch.utils.flop_counter: convolutions and matmuls, 2 per
multiply-add) are counted on the fp32 networks over the whole iteration (both generator forwards, the
discriminator on both batches twice, both backwards; Adam adds none), and given per iteration and per image.
Inputs are tensors already on the device (disc-shaped one-hot masks, random images).

Generation: the generator alone in eval mode at --gen-batch under inference mode (its FLOPs and fraction of
peak), then the real ``generate_images`` path (mask PNG read, generator, 16-bit PNG and label write, manifest)
on --gen-images synthetic masks; that one uses the precision (bf16/fp16 autocast) but not --channels-last or
--compile, which generate_images does not take. Weights are random: speed does not depend on them.

--compile compiles both networks. --precision 16-mixed (CUDA only) scales both losses with one GradScaler.
Peak memory on CUDA is the allocator's peak; on CPU the process's peak resident set size (inference is
measured first, so each figure is that workload's high-water mark). The fraction of peak is taken per timed
step against a 3x3-conv peak measured just before that step, median over steps; peaks are also measured
before and after. The paper's SPADE trained at about 5.9 images/s on two V100 (about 2.9 per GPU).
The JSON result (hardware, peaks, figures, top operators) is printed, and written to --json if given.

--sequences 1,4: the same measurements with 1 and with 4 output sequences (the generator's last conv and the
discriminators' first convs grow; issue 16), in one run, one after the other; the record's top level is the
first count's, ``sequences`` holds the images/s of each count and their ratio to the first, the FLOPs per
image and their ratio, and the fraction of the conv peak measured beside each step and its ratio (on a
shared machine the load swings the images/s; the fraction of the peak measured at the same moment does not).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peak import (
    BenchRun,
    add_common_arguments,
    adversarial_step,
    combine_peaks,
    count_flops,
    describe_hardware,
    emit,
    hardware_line,
    measure_peaks,
    operator_lines,
    paper_comparison,
    peaks_line,
    summary_line,
    throughput_record,
    top_operators,
)

from synthseg.checkpoint import save_network
from synthseg.data.pngio import write_label8
from synthseg.data.sequences import SEQUENCES
from synthseg.models.spade import SPADEModule
from synthseg.networks.spade import MultiscaleDiscriminator, SPADEGenerator
from synthseg.synth import generate_images
from synthseg.synth.generate_images import GenerateImagesSettings

PAPER_IMAGES_PER_S = 5.9
PAPER_HARDWARE = "two V100 (DDP), about 2.9 images/s per GPU"
GENERATE_AUTOCAST = {"32-true": None, "bf16-mixed": "bf16", "16-mixed": "fp16"}
CLASSES = 7


def disc_mask(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(yy, xx) / (size / 2)
    mask = np.zeros((size, size), np.uint8)
    for limit, cls in ((0.9, 6), (0.8, 5), (0.6, 4)):
        mask[radius < limit] = cls
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    r = np.hypot(np.arange(size)[:, None] - cy, np.arange(size)[None, :] - cx)
    for limit, cls in ((size / 6, 2), (size / 10, 3), (size / 18, 1)):
        mask[r < limit] = cls
    return mask


def one_hot_masks(count: int, size: int, run: BenchRun) -> torch.Tensor:
    masks = torch.from_numpy(np.stack([disc_mask(size, i) for i in range(count)]).astype(np.int64))
    label = F.one_hot(masks, CLASSES).permute(0, 3, 1, 2).float()
    return label.to(run.device).contiguous(memory_format=run.memory_format)


def build(
    args: argparse.Namespace, run: BenchRun, outputs: int = 1
) -> tuple[SPADEGenerator, MultiscaleDiscriminator]:
    torch.manual_seed(0)
    generator = SPADEGenerator(label_nc=CLASSES, output_nc=outputs, ngf=args.ngf, image_size=args.size)
    discriminator = MultiscaleDiscriminator(
        label_nc=CLASSES, output_nc=outputs, num_D=2, ndf=args.ndf, n_layers=4
    )
    return (
        generator.to(run.device, memory_format=run.memory_format),
        discriminator.to(run.device, memory_format=run.memory_format),
    )


def bench_generation(args: argparse.Namespace, run: BenchRun, outputs: int = 1) -> dict[str, Any]:
    """Images/s of generate_images over PNG masks, PNG reading and writing included (an image: one label
    map painted in every sequence)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(0)
        generator = SPADEGenerator(output_nc=outputs, ngf=args.ngf, image_size=args.size).eval()
        meta = {"train_max": [4095.0] * outputs, "sequences": list(SEQUENCES[:outputs])}
        if outputs == 1:
            meta["sequences"] = ["t1c"]
        save_network(generator, tmp / "generator.pt", meta=meta)
        (tmp / "masks").mkdir()
        for i in range(args.gen_images):
            write_label8(tmp / "masks" / f"synth_{i:06d}.png", disc_mask(args.size, i))
        options = dict(device=str(run.device), autocast=GENERATE_AUTOCAST[args.precision], progress=False)
        # Warm-up call on a copy of one mask, then the timed run over all of them.
        (tmp / "warm").mkdir()
        write_label8(tmp / "warm" / "synth_000000.png", disc_mask(args.size, 0))
        checkpoint = str(tmp / "generator.pt")
        warm = GenerateImagesSettings(
            checkpoint=checkpoint, masks=str(tmp / "warm"), output=str(tmp / "out_warm"), **options
        )
        generate_images.run(warm)
        timed = GenerateImagesSettings(
            checkpoint=checkpoint,
            masks=str(tmp / "masks"),
            output=str(tmp / "out"),
            batch_size=args.gen_batch,
            **options,
        )
        start = time.perf_counter()
        generate_images.run(timed)
        elapsed = time.perf_counter() - start
    return {
        "images": args.gen_images,
        "batch_size": args.gen_batch,
        "seconds": elapsed,
        "images_per_s": args.gen_images / elapsed,
    }


def parse_sequences(text: str) -> list[int]:
    counts = [int(v) for v in text.split(",") if v.strip()]
    if not counts or any(not 1 <= n <= len(SEQUENCES) for n in counts):
        raise SystemExit(f"--sequences: counts between 1 and {len(SEQUENCES)}, e.g. 1,4; got {text!r}")
    return counts


def measure(
    args: argparse.Namespace, run: BenchRun, outputs: int, profile: bool = True
) -> tuple[dict[str, Any], list[dict]]:
    """Training, generation and generate_images figures of SPADE with ``outputs`` sequences."""
    device, b, e, s = run.device, args.batch_size, args.gen_batch, args.size
    generator, discriminator = build(args, run, outputs)
    # The module's own generate/discriminate (fake and real through the discriminator in one batch), with its
    # compile switch; the optimizers are built here, as Lightning would from configure_optimizers.
    module = SPADEModule(generator, discriminator, torch.optim.Adam, torch.optim.Adam, compile=args.compile)
    # FLOPs are counted on the plain networks (the compiled graph hides its operators from the counter).
    plain = (
        SPADEModule(generator, discriminator, torch.optim.Adam, torch.optim.Adam) if args.compile else module
    )
    opt_g = run.adam(generator.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = run.adam(discriminator.parameters(), lr=4e-4, betas=(0.0, 0.9))
    label = one_hot_masks(b, s, run)
    real = (torch.rand(b, outputs, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    real = real.contiguous(memory_format=run.memory_format)
    eval_label = one_hot_masks(e, s, run)

    def generator_loss(m: SPADEModule) -> torch.Tensor:
        fake = m.generate(label)[0]
        terms = m.objective.generator_terms(*m.discriminate(label, fake, real), fake=fake, real=real)
        return m.objective.total(terms)

    def discriminator_loss(m: SPADEModule) -> torch.Tensor:
        with torch.no_grad():
            fake = m.generate(label)[0]
        return m.objective.total(m.objective.discriminator_terms(*m.discriminate(label, fake, real)))

    def phases(m: SPADEModule, optimize: bool) -> list:
        return [
            (lambda: generator_loss(m), opt_g if optimize else None, discriminator),
            (lambda: discriminator_loss(m), opt_d if optimize else None, generator),
        ]

    def train_step() -> None:
        adversarial_step(phases(module, optimize=True), run)

    def infer_step() -> None:
        with torch.inference_mode(), run.autocast():
            module.run_generator(eval_label)

    # FLOPs of the plain fp32 networks (precision and memory layout do not change the arithmetic). Inference
    # is counted and timed before training: on CPU the peak RSS is a high-water mark.
    generator.eval()
    with torch.no_grad():
        forward_flops = count_flops(lambda: generator(eval_label)) / e
    infer_timing, infer_mem = run.timed(infer_step, forward_flops * e)
    generator.train()
    inference = throughput_record(infer_timing, e, forward_flops, infer_mem, seconds_key="batch_s")
    result: dict[str, Any] = {
        "benchmark": "spade",
        "hardware": describe_hardware(device),
        "settings": {
            **run.settings(args),
            "batch_size": b,
            "eval_batch_size": e,
            "size": s,
            "ngf": args.ngf,
            "ndf": args.ndf,
            "sequences": outputs,
        },
        "flops_per_image": {"forward": forward_flops},
        "parameters": {
            "generator": sum(p.numel() for p in generator.parameters()),
            "discriminator": sum(p.numel() for p in discriminator.parameters()),
        },
    }
    operators: list[dict] = []
    if not args.skip_training:
        iteration_flops = count_flops(lambda: adversarial_step(phases(plain, optimize=False)))
        generator.zero_grad(set_to_none=True)
        discriminator.zero_grad(set_to_none=True)
        train_timing, train_mem = run.timed(train_step, iteration_flops)
        if profile and not args.no_profile:
            operators = top_operators(train_step, device, steps=5 if run.cuda else 1, warm=False)
        result["flops_per_image"]["train"] = iteration_flops / b
        result["flops_per_iteration"] = iteration_flops
        result["train"] = throughput_record(train_timing, b, iteration_flops / b, train_mem)
        result.update(
            paper_comparison(result["train"]["images_per_s"], PAPER_IMAGES_PER_S, PAPER_HARDWARE, device)
        )
        if "ratio_to_paper" in result:  # the paper's figure is for two GPUs, this run uses one
            result["ratio_to_paper_per_gpu"] = 2 * result["ratio_to_paper"]
    result["inference"] = inference
    if not args.skip_generation:
        result["generation_png"] = bench_generation(args, run, outputs)
    return result, operators


def sequence_figures(record: dict[str, Any]) -> dict[str, Any]:
    """The images/s of one sequence count's record (median step times), its FLOPs per image (load does not
    change them) and its network sizes."""
    figures: dict[str, Any] = {
        "parameters": record["parameters"],
        "flops_per_image": record["flops_per_image"],
    }
    for key, name in (("train", "train"), ("inference", "generate"), ("generation_png", "generate_png")):
        if key in record:
            figures[f"{name}_images_per_s"] = record[key]["images_per_s"]
            if "fraction_of_conv_peak" in record[key]:  # a shared machine's load cancels out of this one
                figures[f"{name}_fraction_of_conv_peak"] = record[key]["fraction_of_conv_peak"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", "--batch", type=int, default=1, help="official default: 1")
    parser.add_argument("--iters", dest="repeats", type=int, help="same as --repeats")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--gen-batch", type=int, default=4, help="generation batch")
    parser.add_argument("--gen-images", type=int, default=16, help="masks through generate_images")
    parser.add_argument("--sequences", default="1", help="output sequence counts to measure, e.g. 1,4")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-generation", action="store_true", help="skip the generate_images (PNG) run")
    args = parser.parse_args()
    counts = parse_sequences(args.sequences)
    run = BenchRun(args)
    b, s = args.batch_size, args.size
    peaks_before = measure_peaks(run.device, run.peak_dtype)
    result, operators = measure(args, run, counts[0])
    inference, forward_flops = result["inference"], result["flops_per_image"]["forward"]
    if len(counts) > 1:
        result["sequences"] = {str(counts[0]): sequence_figures(result)}
        for n in counts[1:]:
            result["sequences"][str(n)] = sequence_figures(measure(args, run, n, profile=False)[0])
        first = result["sequences"][str(counts[0])]
        for n in counts[1:]:
            figures = result["sequences"][str(n)]
            figures["ratio_to_first"] = {
                k: figures[k] / first[k] for k in first if k.endswith("images_per_s")
            }
            # images/s at equal machine speed: the ratio of the fractions of the conv peak measured beside
            # each step, times the inverse FLOP ratio
            figures["ratio_to_first_at_equal_peak"] = {
                k.removesuffix("_fraction_of_conv_peak"): figures[k] / first[k]
                for k in first
                if k.endswith("_fraction_of_conv_peak")
            }
            figures["flops_ratio_to_first"] = {
                k: v / first["flops_per_image"][k] for k, v in figures["flops_per_image"].items()
            }
    peaks = combine_peaks(peaks_before, measure_peaks(run.device, run.peak_dtype))
    result["peaks"] = peaks
    if "train" in result:
        result["train"]["fraction_of_matmul_peak"] = (
            result["train"]["flop_per_s"] / peaks["matmul"]["flop_per_s"]
        )
    result["top_operators_train"] = operators

    summary = [
        f"SPADE {s}x{s} batch {b}, {run.describe(args)} on {hardware_line(result['hardware'])}",
        peaks_line(peaks),
        f"FLOPs/image: forward {forward_flops / 1e9:.1f} G",
    ]
    if "train" in result:
        summary[-1] += f", train {result['flops_per_image']['train'] / 1e9:.1f} G"
        summary.append(summary_line("train:", result["train"], result["flops_per_image"]["train"]))
    summary.append(summary_line("generate:", inference, forward_flops))
    if "generation_png" in result:
        png = result["generation_png"]
        summary.append(
            f"generate_images with PNG I/O, batch {png['batch_size']}: {png['images_per_s']:.3f} images/s"
        )
    if "ratio_to_paper" in result:
        summary.append(f"ratio to the paper's {PAPER_IMAGES_PER_S} images/s: {result['ratio_to_paper']:.2f}")
    for n, figures in result.get("sequences", {}).items():
        line = ", ".join(
            f"{k.removesuffix('_images_per_s')} {v:.3f}" for k, v in figures.items() if k.endswith("_s")
        )
        ratio = figures.get("ratio_to_first")
        if ratio:
            line += " (x" + ", x".join(f"{v:.2f}" for v in ratio.values()) + f" of {counts[0]} sequence(s)"
            flops = figures["flops_ratio_to_first"]
            line += "; FLOPs x" + ", x".join(f"{k} {v:.4f}" for k, v in flops.items())
            equal = figures["ratio_to_first_at_equal_peak"]
            line += "; fraction of conv peak x" + ", x".join(f"{k} {v:.2f}" for k, v in equal.items()) + ")"
        summary.append(f"{n} sequence(s), images/s: {line}")
    emit(result, summary + operator_lines(operators[:8]), args.json)


if __name__ == "__main__":
    main()
