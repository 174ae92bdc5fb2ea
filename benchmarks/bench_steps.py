"""Training steps of PGAN, SPADE and the U-Net, variants alternating in one process: the ratios a loaded machine
cannot distort.

    python benchmarks/bench_steps.py --model pgan|spade|unet [--demo] [--size N] [--batch N] [--threads 1]
                                     [--rounds 7] [--variants nchw,channels_last,foreach]
                                     [--baseline-src DIR] [--json PATH]

One untimed step of every variant, then ``--rounds`` rounds of one timed step of each in turn (wall and this
process's CPU time), medians and ratios to the first variant; the 1-minute load average is recorded with
every step. A step is what the model's ``training_step`` computes, without Lightning: PGAN's critic step
(WGAN-GP with the gradient penalty's double backward) and generator step plus the EMA update; SPADE's
generator step and discriminator step (fake and real through the discriminator in one batch); the U-Net's
weighted Dice (+ class-weighted cross-entropy with ``--demo``, as the demo trains) with Adam.

Sizes: the paper's (PGAN at 256x256 batch 4, SPADE 256x256 batch 1, the U-Net 256x256 width 64 batch 8) or,
with ``--demo``, the demo's (``conf/experiment/*_demo.yaml``: PGAN 64x64 with fmap_base 128 / latent 32,
batch 16; SPADE 64x64, ngf 8, 32 hidden, ndf 16, batch 4; U-Net 64x64, width 8, batch 8, 7 classes).

Variants: ``nchw`` (the faithful default), ``channels_last`` (NHWC weights and inputs), ``foreach`` (NCHW with
Adam's multi-tensor ``foreach`` implementation), and ``baseline`` (NCHW, the networks and losses of another
source tree, e.g. a ``git worktree`` of an older commit, given by ``--baseline-src DIR/src``: its ``synthseg``
package is copied to a temporary folder under the name ``synthseg_baseline`` and imported beside this one).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import synthseg

DEMO = {
    "pgan": dict(size=64, batch=16, resolution=64, latent_dim=32, fmap_base=128, fmap_max=32, ema=0.99),
    "spade": dict(size=64, batch=4, ngf=8, hidden=32, ndf=16),
    "unet": dict(size=64, batch=8, width=8, classes=7, ce=1.0, lr=3e-3, bn_momentum=0.1),
}
PAPER = {
    "pgan": dict(size=256, batch=4, resolution=256, latent_dim=512, fmap_base=8192, fmap_max=512, ema=0.999),
    "spade": dict(size=256, batch=1, ngf=64, hidden=128, ndf=64),
    "unet": dict(size=256, batch=8, width=64, classes=7, ce=0.0, lr=1e-4, bn_momentum=0.01),
}


def import_baseline(src: Path) -> types.ModuleType:
    """Another tree's ``synthseg`` package, importable as ``synthseg_baseline`` beside this one."""
    tmp = Path(tempfile.mkdtemp(prefix="synthseg_baseline_"))
    target = tmp / "synthseg_baseline"
    shutil.copytree(src / "synthseg", target)
    for path in target.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bsynthseg\.", "synthseg_baseline.", text)
        text = re.sub(r"\bfrom synthseg import\b", "from synthseg_baseline import", text)
        path.write_text(text)
    sys.path.insert(0, str(tmp))
    import synthseg_baseline

    return synthseg_baseline


def _adam(params, foreach: bool, **kwargs) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, foreach=True if foreach else None, **kwargs)


def pgan_step(pkg: str, s: dict, channels_last: bool, foreach: bool) -> Callable[[], None]:
    networks = __import__(f"{pkg}.networks.pgan", fromlist=["x"])
    losses = __import__(f"{pkg}.losses.wgan", fromlist=["x"])
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    kw = dict(resolution=s["resolution"], fmap_base=s["fmap_base"], fmap_max=s["fmap_max"])
    g = networks.PGANGenerator(latent_dim=s["latent_dim"], **kw).to(memory_format=fmt)
    d = networks.PGANDiscriminator(**kw).to(memory_format=fmt)
    ema = copy.deepcopy(g).requires_grad_(False)
    opt_g = _adam(g.parameters(), foreach, lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    opt_d = _adam(d.parameters(), foreach, lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    loss = losses.WGANGPLoss()
    b, r, gen = s["batch"], s["resolution"], torch.Generator().manual_seed(0)
    reals = (torch.randint(0, 7, (b, 1, r, r), generator=gen).float() / 3 - 1).contiguous(memory_format=fmt)

    def step() -> None:
        z_d, z_g, mixing = (
            torch.randn(b, s["latent_dim"]),
            torch.randn(b, s["latent_dim"]),
            torch.rand(b, 1, 1, 1),
        )
        g.requires_grad_(False)
        with torch.no_grad():
            fakes = g(z_d)
        terms = loss.discriminator(d, reals, fakes, mixing)
        opt_d.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt_d.step()
        g.requires_grad_(True)
        d.requires_grad_(False)
        g_loss = loss.generator(d, g(z_g))["loss"]
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d.requires_grad_(True)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), g.parameters(), strict=True):
                e.lerp_(p, 1.0 - s["ema"])

    return step


def spade_step(pkg: str, s: dict, channels_last: bool, foreach: bool) -> Callable[[], None]:
    networks = __import__(f"{pkg}.networks.spade", fromlist=["x"])
    losses = __import__(f"{pkg}.losses.adversarial", fromlist=["x"])
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = networks.SPADEGenerator(image_size=s["size"], ngf=s["ngf"], hidden_channels=s["hidden"]).to(
        memory_format=fmt
    )
    d = networks.MultiscaleDiscriminator(ndf=s["ndf"]).to(memory_format=fmt)
    objective = losses.SPADEObjective()
    opt_g = _adam(g.parameters(), foreach, lr=1e-4, betas=(0.0, 0.9))
    opt_d = _adam(d.parameters(), foreach, lr=4e-4, betas=(0.0, 0.9))
    gen = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 7, (s["batch"], s["size"], s["size"]), generator=gen)
    label = F.one_hot(classes, 7).permute(0, 3, 1, 2).float().contiguous(memory_format=fmt)
    real = (torch.rand(s["batch"], 1, s["size"], s["size"], generator=gen) * 2 - 1).contiguous(
        memory_format=fmt
    )

    def discriminate(fake: torch.Tensor) -> tuple:
        out = d(torch.cat([torch.cat([label, fake], 1), torch.cat([label, real], 1)], 0))
        half = fake.shape[0]
        return [[f[:half] for f in o] for o in out], [[f[half:] for f in o] for o in out]

    def step() -> None:
        d.requires_grad_(False)
        loss_g = objective.total(objective.generator_terms(*discriminate(g(label))))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        g.requires_grad_(False)
        with torch.no_grad():
            fake = g(label)
        loss_d = objective.total(objective.discriminator_terms(*discriminate(fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        g.requires_grad_(True)

    return step


def unet_step(pkg: str, s: dict, channels_last: bool, foreach: bool) -> Callable[[], None]:
    networks = __import__(f"{pkg}.networks.unet", fromlist=["x"])
    dice = __import__(f"{pkg}.losses.dice", fromlist=["x"])
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = networks.UNet(
        in_channels=1, num_classes=s["classes"], base_width=s["width"], bn_momentum=s["bn_momentum"]
    )
    net = net.to(memory_format=fmt)
    opt = _adam(net.parameters(), foreach, lr=s["lr"], eps=1e-7)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(s["batch"], 1, s["size"], s["size"], generator=gen).contiguous(memory_format=fmt)
    label = torch.randint(0, s["classes"], (s["batch"], s["size"], s["size"]), generator=gen)
    weights = torch.full((s["classes"],), 1.0 / s["classes"])

    def step() -> None:
        logits = net(image).float()
        probs = torch.softmax(logits, dim=1)
        target = F.one_hot(label, s["classes"]).permute(0, 3, 1, 2).to(probs.dtype)
        loss = dice.weighted_dice_loss(probs, target, weights)
        if s["ce"]:
            loss = loss + s["ce"] * F.cross_entropy(logits, label, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


STEPS = {"pgan": pgan_step, "spade": spade_step, "unet": unet_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(STEPS), required=True)
    parser.add_argument("--demo", action="store_true", help="the demo's sizes instead of the paper's")
    parser.add_argument("--size", type=int, help="image side (default: the paper's or the demo's)")
    parser.add_argument("--batch", type=int, help="batch (default: the paper's or the demo's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo's stages run with 1)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--variants", default="nchw,channels_last", help="nchw, channels_last, foreach, baseline"
    )
    parser.add_argument("--baseline-src", type=Path, help="the src/ folder of another synthseg tree")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict((DEMO if args.demo else PAPER)[args.model])
    if args.size:
        settings["size"] = args.size
        settings["resolution"] = args.size
    if args.batch:
        settings["batch"] = args.batch
    variants: dict[str, Callable[[], None]] = {}
    for name in args.variants.split(","):
        if name == "baseline":
            if args.baseline_src is None:
                parser.error("the baseline variant needs --baseline-src")
            import_baseline(args.baseline_src)
            variants[name] = STEPS[args.model]("synthseg_baseline", settings, False, False)
        elif name in ("nchw", "channels_last", "foreach"):
            variants[name] = STEPS[args.model](
                "synthseg", settings, name == "channels_last", name == "foreach"
            )
        else:
            parser.error(f"unknown variant {name!r}")
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    loads: list[float] = []
    for index in range(args.rounds + 1):
        for name, step in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
            if index:  # the first round is warm-up
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
                loads.append(os.getloadavg()[0])
    first = next(iter(variants))
    medians = {k: statistics.median(v) for k, v in wall.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "model": args.model,
        "settings": settings,
        "demo": args.demo,
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": str(torch.__version__),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "synthseg": synthseg.__version__,
        "median_wall_s": medians,
        "median_cpu_s": cpu_medians,
        "ratio_wall": {k: v / medians[first] for k, v in medians.items()},
        "ratio_cpu": {k: v / cpu_medians[first] for k, v in cpu_medians.items()},
        "load_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "wall_s": wall,
        "cpu_s": cpu,
    }
    print(
        f"{args.model} {'demo' if args.demo else 'paper'} size {settings['size']} batch {settings['batch']}, "
        f"{args.threads} thread(s), median of {args.rounds} alternating rounds (load {result['load_1min']}):"
    )
    for name in variants:
        print(
            f"  {name:<14} wall {medians[name]:8.3f} s ({result['ratio_wall'][name]:.3f}x {first})   "
            f"cpu {cpu_medians[name]:8.3f} s ({result['ratio_cpu'][name]:.3f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
