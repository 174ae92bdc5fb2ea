"""SPADE speed on this machine: seconds per training iteration and generation images/s.

    python benchmarks/bench_spade.py [--size 256] [--batch 1] [--iters 3] [--gen-images 16] [--gen-batch 4]
                                     [--ngf 64] [--device cpu|cuda] [--json FILE]

Training: one iteration is what SPADEModule.training_step computes (generator step with hinge + feature
matching, then discriminator step on a fresh fake, real and fake through D in one batch, Adam TTUR), at the
paper's widths by default; FLOPs are counted with ``torch.utils.flop_counter`` on one extra iteration.
Generation: the real ``generate_images`` path (mask PNG read, generator under inference mode, 16-bit PNG and
label write, manifest) on synthetic disc-shaped masks. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from synthseg.checkpoint import save_network
from synthseg.data.pngio import write_label8
from synthseg.losses.adversarial import SPADEObjective
from synthseg.networks.spade import MultiscaleDiscriminator, SPADEGenerator
from synthseg.synth.images import generate_images


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_iteration(g, d, opt_g, opt_d, objective, label, real) -> None:
    def discriminate(fake):
        both = torch.cat([torch.cat([label, fake], 1), torch.cat([label, real], 1)], 0)
        outputs = d(both)
        half = fake.shape[0]
        return [[f[:half] for f in o] for o in outputs], [[f[half:] for f in o] for o in outputs]

    for p in d.parameters():
        p.requires_grad_(False)
    pred_fake, pred_real = discriminate(g(label))
    loss_g = objective.total(objective.generator_terms(pred_fake, pred_real))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    for p in d.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        fake = g(label)
    pred_fake, pred_real = discriminate(fake.detach())
    loss_d = objective.total(objective.discriminator_terms(pred_fake, pred_real))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()


def bench_training(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    g = SPADEGenerator(ngf=args.ngf, image_size=args.size).to(device)
    d = MultiscaleDiscriminator(ndf=args.ndf).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.9))
    objective = SPADEObjective()
    masks = torch.from_numpy(np.stack([disc_mask(args.size, i) for i in range(args.batch)]).astype(np.int64))
    label = F.one_hot(masks, 7).permute(0, 3, 1, 2).float().to(device)
    real = torch.rand(args.batch, 1, args.size, args.size, device=device) * 2 - 1
    times = []
    for i in range(args.warmup + args.iters):
        sync(device)
        start = time.perf_counter()
        training_iteration(g, d, opt_g, opt_d, objective, label, real)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        training_iteration(g, d, opt_g, opt_d, objective, label, real)
    flops = counter.get_total_flops()
    median = statistics.median(times)
    return {
        "seconds_per_iteration": median,
        "all_seconds": times,
        "images_per_second": args.batch / median,
        "tflop_per_iteration": flops / 1e12,
        "achieved_gflops": flops / median / 1e9,
        "generator_parameters": sum(p.numel() for p in g.parameters()),
        "discriminator_parameters": sum(p.numel() for p in d.parameters()),
    }


def bench_generation(args, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(0)
        generator = SPADEGenerator(ngf=args.ngf, image_size=args.size).eval()
        save_network(generator, tmp / "generator.pt", meta={"train_max": 4095.0})
        (tmp / "masks").mkdir()
        for i in range(args.gen_images):
            write_label8(tmp / "masks" / f"synth_{i:06d}.png", disc_mask(args.size, i))
        # Warm-up call on a copy of one mask, then the timed run over all of them.
        (tmp / "warm").mkdir()
        write_label8(tmp / "warm" / "synth_000000.png", disc_mask(args.size, 0))
        generate_images(
            tmp / "generator.pt", tmp / "warm", tmp / "out_warm", device=str(device), progress=False
        )
        start = time.perf_counter()
        generate_images(
            tmp / "generator.pt",
            tmp / "masks",
            tmp / "out",
            batch_size=args.gen_batch,
            device=str(device),
            progress=False,
        )
        elapsed = time.perf_counter() - start
    return {
        "images": args.gen_images,
        "batch_size": args.gen_batch,
        "seconds": elapsed,
        "images_per_second": args.gen_images / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--gen-images", type=int, default=16)
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": args.size,
        "ngf": args.ngf,
        "ndf": args.ndf,
    }
    if not args.skip_training:
        result["training"] = bench_training(args, device)
        t = result["training"]
        print(
            f"training {args.size}x{args.size} batch {args.batch}: {t['seconds_per_iteration']:.2f} s/iteration, "
            f"{t['tflop_per_iteration']:.3f} TFLOP/iteration, {t['achieved_gflops']:.1f} GFLOP/s"
        )
    if not args.skip_generation:
        result["generation"] = bench_generation(args, device)
        g = result["generation"]
        print(
            f"generation {args.size}x{args.size} batch {args.gen_batch}: {g['images_per_second']:.3f} images/s"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
