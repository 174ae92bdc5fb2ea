"""Slices/s from the memory-mapped cache vs decoding PNG files, on this machine.

    python benchmarks/bench_loader.py [--root PREPARED_DIR] [--slices 512] [--repeats 5]

Without --root a temporary dataset of 256x256 slices is written first. Prints the median over repeats and the
ratio cache/PNG measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from synthseg.data.cache import build_cache
from synthseg.data.datamodule import BraTSDataModule
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png


def write_temporary_dataset(root: Path, slices: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import write_dataset

    return write_dataset(root, num_slices=slices, size=256, empty_every=0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--slices", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or write_temporary_dataset(Path(tmp) / "prepared", args.slices)
        manifest = read_manifest(root)
        n = min(args.slices, len(manifest))
        t0 = time.perf_counter()
        build_cache(root, progress=False)
        cache_build_s = time.perf_counter() - t0

        def png_pass() -> float:
            t = time.perf_counter()
            for i in range(n):
                read_png(root / manifest.image[i])
                read_png(root / manifest.label[i])
            return n / (time.perf_counter() - t)

        dm = BraTSDataModule(str(root), batch_size=args.batch_size, num_workers=0)
        dm.setup("fit")
        loader_n = min(n, len(dm.train_set))

        def cache_pass() -> float:
            t = time.perf_counter()
            seen = 0
            for batch in dm.train_dataloader():
                seen += len(batch["image"])
                if seen >= loader_n:
                    break
            return seen / (time.perf_counter() - t)

        png = statistics.median(png_pass() for _ in range(args.repeats))
        cache = statistics.median(cache_pass() for _ in range(args.repeats))
        result = {
            "machine": platform.processor() or platform.machine(),
            "slices": n,
            "size": int(read_png(root / manifest.image[0]).shape[0]),
            "png_decode_slices_per_s": round(png, 1),
            "cache_loader_slices_per_s": round(cache, 1),
            "ratio_cache_over_png": round(cache / png, 1),
            "cache_build_s": round(cache_build_s, 2),
        }
        print(f"PNG decode (image + label): {png:10.1f} slices/s (median of {args.repeats})")
        print(f"cache DataLoader (batches):  {cache:10.1f} slices/s (median of {args.repeats})")
        print(f"ratio cache / PNG:          {cache / png:10.1f}x")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
