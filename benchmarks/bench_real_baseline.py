"""What two real samples score on the quality figures, and why: the real-vs-real KID, precision and recall of
``synthseg quality``'s baseline, varied one cause at a time.

    python benchmarks/bench_real_baseline.py --real DIR --unet RUN [--max-images 2000] [--seeds 3] [--json PATH]

Rows (each the mean over ``--seeds`` splits, with min and max):

- ``case``: halves split by case, as the baseline (the reference without empty maps);
- ``slice``: halves split by slice (neighbouring slices of one case on both sides): the split's share;
- ``case, include empty``: the reference with its empty label maps: the reference's share;
- ``case, n/2``: each half cut to half its size: the sample size's share (precision and recall move with n);
- ``case, random U-Net``: the same U-Net architecture with seeded random weights: the extractor's share;
- ``case, pixels``: 8 x 8 block means of the normalised image as the feature vector (no network at all).

Figures: KID (unbiased: near 0 for two samples of one distribution), precision, recall (k = 3), FD∞ on the
features pooled to 124 dimensions. docs/quality.md quotes the demo's rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthseg.metrics import fidelity  # noqa: E402
from synthseg.metrics.baseline import split_by_case  # noqa: E402
from synthseg.metrics.features import UNetEncoderFeatures, build_extractor, extract  # noqa: E402
from synthseg.metrics.quality import input_scaler  # noqa: E402
from synthseg.metrics.slices import DatasetSlices, recorded_range  # noqa: E402
from synthseg.networks.unet import UNet  # noqa: E402


def figures(f_a: torch.Tensor, f_b: torch.Tensor, seed: int) -> dict[str, float | None]:
    found = fidelity.feature_distances(f_b, f_a, seed=seed, k=3, subsets=100, dims=124)
    return {key: found[key] for key in ("kid", "precision", "recall", "fd_inf")}


def halves_by_slice(count: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[:n]), np.sort(order[n : 2 * n])


def summarise(rows: list[dict[str, float | None]]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = (
            [float(np.mean(values)), float(np.min(values)), float(np.max(values))] if values else [None] * 3
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument(
        "--unet", type=Path, required=True, help="the full_real U-Net run folder or a snapshot"
    )
    parser.add_argument("--max-images", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extractor = build_extractor("unet", args.unet)
    results: dict[str, Any] = {}
    for empty in ("exclude", "include"):
        real = DatasetSlices(args.real)
        if empty == "exclude":
            real.drop_empty()
        real.use(extractor.sequences or real.sequences[:1], "bench_real_baseline")
        top = recorded_range(real)
        rows = real.sample(args.max_images, 1)
        labels, images = real.load(rows, real.size)
        factor = real.size // extractor.resolution if extractor.resolution else 1
        small = F.avg_pool2d(images, factor) if factor > 1 else images
        scaled = input_scaler(extractor, small, top)(small, slice(None))
        feats = {"unet": extract(extractor.module, scaled)}
        if empty == "exclude":
            torch.manual_seed(12345)  # not the seed a test or a run would train from
            width = int(extractor.module.num_features // 31)
            net = UNet(scaled.shape[1], 7, base_width=width)
            feats["random U-Net"] = extract(UNetEncoderFeatures(net).eval(), scaled)
            feats["pixels"] = F.adaptive_avg_pool2d(scaled, 8).flatten(1).double()
        cases = real.manifest.case[rows]
        variants: dict[str, list[dict[str, float | None]]] = {}
        for seed in range(args.seeds):
            split = split_by_case(cases, len(rows), seed + 2)
            assert split is not None, "the real split holds fewer than two cases"
            tag = "" if empty == "exclude" else ", include empty"
            variants.setdefault(f"case{tag}", []).append(
                figures(feats["unet"][split.a], feats["unet"][split.b], seed)
            )
            if empty == "exclude":
                a, b = halves_by_slice(len(rows), split.n, seed)
                variants.setdefault("slice", []).append(figures(feats["unet"][a], feats["unet"][b], seed))
                rng = np.random.default_rng(seed)
                half_a = rng.choice(split.a, split.n // 2, replace=False)
                half_b = rng.choice(split.b, split.n // 2, replace=False)
                variants.setdefault("case, n/2", []).append(
                    figures(feats["unet"][half_a], feats["unet"][half_b], seed)
                )
                for name in ("random U-Net", "pixels"):
                    variants.setdefault(f"case, {name}", []).append(
                        figures(feats[name][split.a], feats[name][split.b], seed)
                    )
            results.setdefault("n", {})[f"case{tag}"] = split.n
        for name, found in variants.items():
            results[name] = summarise(found)
    for name, found in results.items():
        if name == "n":
            continue
        cells = "  ".join(
            f"{key} {v[0]:.4g} [{v[1]:.3g}, {v[2]:.3g}]" if v[0] is not None else f"{key} -"
            for key, v in found.items()
        )
        print(f"{name:24s} {cells}", flush=True)
    print(f"n per half: {results['n']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
