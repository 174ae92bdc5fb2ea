"""How far the plain FD and FD∞ (Chong & Forsyth 2020) are from the true Fréchet distance, by set size and
feature dimension: two Gaussians N(0, I) and N(delta, I), whose FD is ||delta||^2 exactly.

    python benchmarks/bench_fd_estimator.py [--dims 124 248 496] [--sizes 300 500 1000 2000] [--seeds 8]
        [--shift 12] [--json PATH]

Prints one line per (dims, n): the plain FD and FD∞ as multiples of the truth (mean, min, max over seeds), and
whether every FD∞ is within 10 %. FD∞ fits FD at 15 subset sizes from n/2 to n (``frechet_distance_inf``), so it
needs n/2 > dims; the quality command pools the U-Net's features to ``fd_dims`` (124) first. docs/quality.md
quotes the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthseg.metrics.fidelity import frechet_distance, frechet_distance_inf  # noqa: E402


def measure(dims: int, n: int, shift: float, seeds: int) -> dict[str, object]:
    plain, extrapolated = [], []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        delta = torch.full((dims,), math.sqrt(shift / dims), dtype=torch.float64)
        a = torch.randn(n, dims, generator=gen, dtype=torch.float64)
        b = torch.randn(n, dims, generator=gen, dtype=torch.float64) + delta
        plain.append(frechet_distance(a, b) / shift)
        try:
            extrapolated.append(frechet_distance_inf(a, b, seed=seed) / shift)
        except ValueError:
            extrapolated.append(float("nan"))
    p, e = np.asarray(plain), np.asarray(extrapolated)
    return {
        "dims": dims, "n": n, "true_fd": shift, "seeds": seeds,
        "fd_over_true": [float(p.mean()), float(p.min()), float(p.max())],
        "fd_inf_over_true": [float(e.mean()), float(e.min()), float(e.max())],
        "fd_inf_within_10_percent": bool(np.all(np.abs(e - 1) <= 0.1)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[124, 248, 496])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 500, 1000, 2000])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--shift", type=float, default=12.0, help="the true FD, ||delta||^2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = []
    for dims in args.dims:
        for n in args.sizes:
            record = measure(dims, n, args.shift, args.seeds)
            records.append(record)
            fd, inf = record["fd_over_true"], record["fd_inf_over_true"]
            print(
                f"dims {dims:4d}  n {n:5d}  FD/true {fd[0]:6.2f} [{fd[1]:.2f}, {fd[2]:.2f}]  "
                f"FD∞/true {inf[0]:6.3f} [{inf[1]:.3f}, {inf[2]:.3f}]  "
                f"within 10 %: {record['fd_inf_within_10_percent']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
