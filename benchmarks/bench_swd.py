"""Time the sliced Wasserstein distance for two sets of label maps (default 2 x 2,048 at 256x256).

    python benchmarks/bench_swd.py [--images 2048] [--size 256] [--runs 3] [--device cpu|cuda]

Prints the median wall time over the runs (the first run included: nothing is cached between runs) and the
throughput in images per second (both sets counted). Inputs are synthetic 7-class label maps made in memory,
scaled with ``labels_to_uint8`` as the PGAN evaluation does; PNG reading is not part of the figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from synthseg.metrics.sliced_wasserstein import labels_to_uint8, sliced_wasserstein


def synthetic_labels(count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 1, size, size) uint8 label maps 0..6: smooth random fields cut into 7 bands."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(count, 1, size, size, dtype=torch.uint8)
    thresholds = torch.tensor([-1.2, -0.7, -0.25, 0.25, 0.7, 1.2])
    for start in range(0, count, 256):
        n = min(256, count - start)
        noise = torch.randn(n, 1, size // 16, size // 16, generator=gen)
        field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
        field = field / field.std(dim=(2, 3), keepdim=True)
        out[start : start + n] = torch.bucketize(field, thresholds).to(torch.uint8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per set")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    a = labels_to_uint8(synthetic_labels(args.images, args.size, seed=1)).to(device)
    b = labels_to_uint8(synthetic_labels(args.images, args.size, seed=2)).to(device)
    times = []
    result: dict[str, float] = {}
    for _ in range(args.runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = sliced_wasserstein(a, b, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"swd {args.images} vs {args.images} images {args.size}x{args.size} on {device} "
        f"({torch.get_num_threads()} CPU threads): median {median:.2f} s over {args.runs} runs "
        f"[{', '.join(f'{t:.2f}' for t in times)}], {2 * args.images / median:.0f} images/s"
    )
    print("swd x1000:", {key: round(value, 3) for key, value in result.items()})


if __name__ == "__main__":
    main()
