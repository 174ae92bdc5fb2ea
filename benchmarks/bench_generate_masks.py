"""Masks/s of ``synthseg generate-masks`` on this machine, and where the time goes.

    python benchmarks/bench_generate_masks.py [--count 512] [--batch-size 64] [--device auto]
                                              [--resolution 256] [--fmap-base 8192] [--fmap-max 512]
                                              [--latent-dim 512] [--size SIDE] [--threads N]

Builds a PGAN generator (by default of the paper's size; random weights: speed does not depend on them),
saves it as a snapshot and runs the real command into a temporary folder. Prints, as one JSON object on the last line: the
end-to-end masks/s, the generator alone (masks/s, batched, inference mode) and the PNG writing alone
(masks/s, one thread), so the slower of the two is visible.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthseg.checkpoint import save_network
from synthseg.data.labels import net_to_labels
from synthseg.data.manifest import read_provenance
from synthseg.data.pngio import write_label8
from synthseg.networks.pgan import PGANGenerator
from synthseg.settings import resolve_device
from synthseg.synth import generate_masks
from synthseg.synth.generate_masks import GenerateMasksSettings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--fmap-base", type=int, default=8192)
    parser.add_argument("--fmap-max", type=int, default=512)
    parser.add_argument("--latent-dim", type=int, default=512)
    parser.add_argument("--size", type=int, default=None, help="output side (default: --resolution)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    generator = PGANGenerator(
        resolution=args.resolution,
        latent_dim=args.latent_dim,
        fmap_base=args.fmap_base,
        fmap_max=args.fmap_max,
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "snapshot.pt"
        save_network(generator, snapshot, meta={"dataset_size": args.size or args.resolution})

        # The generator alone (warm-up batch first).
        net = generator.to(device)
        with torch.inference_mode():
            z = torch.randn(args.batch_size, net.latent_dim, device=device)
            net_to_labels(net(z), 7).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            done = 0
            while done < args.count:
                masks = net_to_labels(net(z), 7).cpu().numpy()
                done += len(masks)
            generator_s = time.perf_counter() - started

        # PNG writing alone, on the masks just made, at the output size.
        factor = (args.size or args.resolution) // args.resolution
        if factor > 1:
            masks = masks.repeat(factor, axis=1).repeat(factor, axis=2)
        started = time.perf_counter()
        for i in range(args.count):
            write_label8(Path(tmp) / f"w{i}.png", masks[i % len(masks)])
        writing_s = time.perf_counter() - started

        # The real command, end to end.
        settings = GenerateMasksSettings(
            checkpoint=str(snapshot),
            count=args.count,
            output=str(Path(tmp) / "masks"),
            batch_size=args.batch_size,
            device=args.device,
            progress=False,
        )
        info = read_provenance(generate_masks.run(settings)) or {}
    result = {
        "count": args.count,
        "resolution": args.resolution,
        "size": args.size or args.resolution,
        "batch_size": args.batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "end_to_end_masks_per_s": round(info["masks_per_second"], 1),
        "generator_masks_per_s": round(done / generator_s, 1),
        "png_write_masks_per_s": round(args.count / writing_s, 1),
        "empty_fraction": round(float(np.mean(info["empty_fraction"])), 4),
    }
    print(
        f"generate-masks: {result['end_to_end_masks_per_s']} masks/s end to end on {device} "
        f"(generator alone {result['generator_masks_per_s']}, PNG writing alone {result['png_write_masks_per_s']})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
