"""Peak memory and time of the two parts of ``synthseg quality`` that once dominated its memory, each in a
process of its own so that its peak resident set size is its own (``resource.getrusage``):

    python benchmarks/bench_quality_memory.py [--labels 2000] [--images 128] [--size 256] [--threads 2]
                                              [--batches 64,16,4] [--quick] [--json PATH]

- ``vote``: majority-vote downsampling of N random label maps (``--size`` -> 32), as ``resize_labels`` does it
  now (one scatter in chunks), against the float one-hot + average pooling it replaced (the baseline, measured
  in the same run).
- ``extract``: the U-Net extractor (width 64, random weights) on ``--images`` random images at each batch size
  of ``--batches`` (``auto``: the pixel-bounded default of ``extract``); ms per image, user and system CPU.

Peaks are reported with the process's peak before the measured call (the inputs). --quick: tiny sizes, a smoke
run whose figures mean nothing. JSON to stdout (and --json), a summary to stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GIB = 2**20  # ru_maxrss is in KiB on Linux


def _usage() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_maxrss / GIB


def _one_hot_vote(labels: Any, factor: int, classes: int) -> Any:
    """The 0.2.0 vote (float one-hot, average pooling), kept here as the baseline."""
    import torch

    onehot = torch.nn.functional.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float()
    counts = torch.nn.functional.avg_pool2d(onehot, factor)
    return (classes - 1 - counts.flip(1).argmax(dim=1)).to(labels.dtype)


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    if args.part in ("vote", "vote-baseline"):
        from synthseg.data.labels import _majority_vote

        rng = np.random.default_rng(0)
        labels = torch.from_numpy(rng.integers(0, 7, (args.labels, args.size, args.size), dtype=np.uint8))
        vote = _one_hot_vote if args.part == "vote-baseline" else _majority_vote
        before = _usage()
        start = time.perf_counter()
        out = vote(labels, args.size // 32, 7)
        seconds = time.perf_counter() - start
        after = _usage()
        return {"part": args.part, "labels": args.labels, "seconds": seconds, "shape": list(out.shape),
                "peak_rss_gib": after[2], "peak_rss_gib_before": before[2]}  # fmt: skip
    from synthseg.metrics.features import UNetEncoderFeatures, extract
    from synthseg.networks.unet import UNet

    torch.manual_seed(0)
    module = UNetEncoderFeatures(UNet(1, 7, base_width=args.width)).eval()
    images = torch.rand(args.images, 1, args.size, args.size)
    batch = None if args.batch == "auto" else int(args.batch)
    before = _usage()
    start = time.perf_counter()
    extract(module, images, batch_size=batch)
    seconds = time.perf_counter() - start
    after = _usage()
    return {"part": "extract", "batch": args.batch, "images": args.images, "ms_per_image": seconds / args.images * 1e3,
            "user_s": after[0] - before[0], "sys_s": after[1] - before[1], "peak_rss_gib": after[2],
            "peak_rss_gib_before": before[2]}  # fmt: skip


def _spawn(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=2000)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="U-Net base width of the extractor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="64,16,4,auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # one measurement, in a child process
    parser.add_argument("--batch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.labels, args.images, args.size, args.width, args.batches = 8, 4, 64, 4, "2,auto"
    if args.part:
        print(json.dumps(_child(args)))
        return
    common = ["--labels", str(args.labels), "--images", str(args.images), "--size", str(args.size),
              "--width", str(args.width), "--threads", str(args.threads)]  # fmt: skip
    record: dict[str, Any] = {"benchmark": "quality_memory", "size": args.size, "threads": args.threads}
    record["vote"] = _spawn([*common, "--part", "vote"])
    record["vote_baseline"] = _spawn([*common, "--part", "vote-baseline"])
    record["vote_time_ratio"] = record["vote"]["seconds"] / record["vote_baseline"]["seconds"]
    record["extract"] = [
        _spawn([*common, "--part", "extract", "--batch", b]) for b in args.batches.split(",")
    ]
    v, b = record["vote"], record["vote_baseline"]
    print(f"vote of {args.labels} label maps: {v['seconds']:.2f} s, peak {v['peak_rss_gib']:.2f} GiB; one-hot "
          f"baseline {b['seconds']:.2f} s, peak {b['peak_rss_gib']:.2f} GiB (inputs {b['peak_rss_gib_before']:.2f})",
          file=sys.stderr)  # fmt: skip
    for e in record["extract"]:
        print(f"extract batch {e['batch']}: {e['ms_per_image']:.0f} ms/image, user {e['user_s']:.1f} s, sys "
              f"{e['sys_s']:.1f} s, peak {e['peak_rss_gib']:.2f} GiB (before {e['peak_rss_gib_before']:.2f})",
              file=sys.stderr)  # fmt: skip
    text = json.dumps(record, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
