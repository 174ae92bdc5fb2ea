"""Time ``synthseg quality`` stage by stage on N synthetic vs N real slices, against the time SPADE takes to
synthesise those N images (default 2,000 vs 2,000 at 256x256).

    python benchmarks/bench_quality.py [--images 2000] [--size 256] [--sequences t1c[,flair,...]]
                                       [--unet-width 64] [--ngf 64] [--pairs 500] [--kid-subsets 100]
                                       [--real DIR --synthetic DIR] [--unet RUN] [--workdir DIR]
                                       [--device cpu|cuda] [--threads N] [--quick] [--json PATH]

The real ``quality`` measurement (:func:`synthseg.metrics.quality.measure`) runs once, in this process, on two dataset folders: ``--real`` / ``--synthetic`` when
given, else ones written by the test fixture writer (plausible disc-shaped brains with a tumor, noisy images
whose intensity follows the labels; every real slice a training slice, so the nearest-real search covers N),
into ``--workdir`` (kept and reused on the next run) or a temporary folder. Their slice caches are built
first and timed apart (a one-off per dataset). The U-Net extractor is ``--unet``, else a seeded random U-Net of
``--unet-width`` (64: the paper's; speed does not depend on the weights) reading ``--sequences``.

Parts (``seconds_by_stage`` of quality.json): ``load`` (sample read from the cache, block means), ``label_maps``
(SWD, areas, fragmentation), ``diversity`` (MS-SSIM, ``--pairs`` pairs per set), ``memorisation`` (the nearest
real slice of every synthetic and every sampled real slice), ``baseline`` (MS-SSIM and the nearest-real search of
the real-vs-real baseline split by case), ``features`` (the U-Net encoder's forward passes), ``fd_kid``,
``precision_recall``, ``baseline_features`` (the feature figures of the baseline), ``figures``; and the total wall
time of the call.

Baseline, measured in the same run on the same device: one SPADE generator forward per image at that size
(``SPADEGenerator`` label_nc 7, ``--ngf`` 64 as the paper, one output per sequence, eval, inference mode,
batch ``--gen-batch``; median of ``--repeats`` batches after one warm-up). ``quality_over_synthesis`` is the
quality total over N times that: how much a quality check adds to synthesising the set (the issue asks for a
small fraction). The PNG writing of ``generate-images`` is not in the baseline, so the fraction is an upper
bound.

Memory: the process's peak resident set size after the measurement (before the SPADE baseline; it includes the
dataset writing, which holds one slice at a time), and on CUDA the allocator's peak.

--quick: 48 vs 48 at 64x64, U-Net width 4, ngf 8, 20 pairs, 5 KID subsets: a smoke run whose figures mean
nothing. The JSON record is printed to stdout (and written to --json), the summary to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peak import describe_hardware, emit, peak_memory_mib, reset_peak_memory, time_median

from synthseg.checkpoint import save_network
from synthseg.data.cache import build_cache
from synthseg.data.manifest import is_dataset_folder
from synthseg.data.sequences import check_sequences
from synthseg.metrics.quality import QualitySettings, measure
from synthseg.networks.spade import SPADEGenerator
from synthseg.networks.unet import UNet

CLASSES = 7
PARTS = (
    "load",
    "label_maps",
    "diversity",
    "memorisation",
    "baseline",
    "features",
    "fd_kid",
    "precision_recall",
    "baseline_features",
    "figures",
)
QUICK = {"images": 48, "size": 64, "unet_width": 4, "ngf": 8, "pairs": 20, "kid_subsets": 5, "gen_batch": 2}


def write_sets(folder: Path, images: int, size: int, sequences: tuple[str, ...]) -> tuple[Path, Path]:
    """A real set (every slice a training slice) and a synthetic set of ``images`` slices each, written with
    the test fixture writer unless ``folder`` holds them already."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import write_dataset

    tag = f"{images}x{size}-{'+'.join(sequences)}"
    real, synthetic = folder / f"real-{tag}", folder / f"synthetic-{tag}"
    if not is_dataset_folder(real):
        write_dataset(
            real, num_slices=images, size=size, seed=1, splits=["train"] * images, sequences=sequences
        )
    if not is_dataset_folder(synthetic):
        write_dataset(synthetic, num_slices=images, size=size, source="synthetic", seed=2, empty_every=0,
                      sequences=sequences)  # fmt: skip
    return real, synthetic


def spade_seconds_per_image(
    size: int, channels: int, ngf: int, batch: int, repeats: int, device: torch.device
) -> float:
    """Median seconds of one SPADE generator forward per image (eval, inference mode, random weights)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_spade import disc_mask

    torch.manual_seed(0)
    generator = (
        SPADEGenerator(label_nc=CLASSES, output_nc=channels, ngf=ngf, image_size=size).eval().to(device)
    )
    masks = torch.from_numpy(np.stack([disc_mask(size, i) for i in range(batch)]).astype(np.int64))
    label = F.one_hot(masks, CLASSES).permute(0, 3, 1, 2).float().to(device)

    def forward() -> None:
        with torch.inference_mode():
            generator(label)

    return time_median(forward, device, warmup=1, repeats=repeats) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="slices per set (N synthetic vs N real)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sequences", default="t1c", help="comma-separated, e.g. t1c,flair")
    parser.add_argument(
        "--unet-width", type=int, default=64, help="base width of the random U-Net (paper: 64)"
    )
    parser.add_argument(
        "--ngf", type=int, default=64, help="SPADE generator width of the baseline (paper: 64)"
    )
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed SPADE batches (median)")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument(
        "--real", type=Path, default=None, help="a prepared dataset folder instead of made ones"
    )
    parser.add_argument("--synthetic", type=Path, default=None, help="a synthetic dataset folder")
    parser.add_argument(
        "--unet", type=Path, default=None, help="a U-Net run folder or snapshot (default: random)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the made datasets here (reused)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.repeats = 1
    if (args.real is None) != (args.synthetic is None):
        parser.error("--real and --synthetic go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    sequences = check_sequences(args.sequences.split(","), "--sequences")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        if args.real is not None:
            real, synthetic = args.real, args.synthetic
        else:
            workdir = args.workdir or tmp
            workdir.mkdir(parents=True, exist_ok=True)
            real, synthetic = write_sets(workdir, args.images, args.size, sequences)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        build_cache(real, progress=False)
        build_cache(synthetic, progress=False)
        cache_s = time.perf_counter() - start
        unet = args.unet
        if unet is None:
            torch.manual_seed(0)
            unet = tmp / "unet.pt"
            net = UNet(len(sequences), CLASSES, base_width=args.unet_width)
            save_network(net, unet, meta={"sequences": list(sequences)})
        rss_before = peak_memory_mib(torch.device("cpu"))
        reset_peak_memory(device)
        start = time.perf_counter()
        settings = QualitySettings(
            synthetic=str(synthetic), real=str(real), output=str(tmp / "quality"), unet=str(unet),
            max_images=args.images, pairs=args.pairs, kid_subsets=args.kid_subsets, device=str(device),
        )  # fmt: skip
        result = json.loads(measure(settings).read_text())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
        rss = peak_memory_mib(torch.device("cpu"))
        gpu = peak_memory_mib(device) if device.type == "cuda" else None

    used = tuple(result["sequences"])
    per_image = spade_seconds_per_image(
        result["size"], len(used), args.ngf, args.gen_batch, args.repeats, device
    )
    count = result["synthetic_count"]
    synthesis = per_image * count
    stages = result["seconds_by_stage"]
    record: dict[str, Any] = {
        "benchmark": "quality",
        "hardware": describe_hardware(device),
        "settings": {
            "images": args.images,
            "size": result["size"],
            "sequences": list(used),
            "unet": str(args.unet) if args.unet else f"random UNet base_width={args.unet_width}",
            "ngf": args.ngf,
            "gen_batch": args.gen_batch,
            "pairs": args.pairs,
            "kid_subsets": args.kid_subsets,
            "real": str(args.real) if args.real else "made",
            "synthetic": str(args.synthetic) if args.synthetic else "made",
            "quick": args.quick,
        },
        "synthetic_count": count,
        "real_count": result["real_count"],
        "real_search_count": result["real_search_count"],
        "seconds_by_part": {part: stages.get(part, 0.0) for part in PARTS},
        "quality_seconds": round(total, 2),
        "quality_seconds_inside": result["seconds"],
        "dataset_write_seconds": round(write_s, 2),
        "cache_build_seconds": round(cache_s, 2),
        "peak_rss_mib": round(rss, 1),
        "peak_rss_mib_before_quality": round(rss_before, 1),
        "peak_gpu_mib": None if gpu is None else round(gpu, 1),
        "spade_seconds_per_image": per_image,
        "synthesis_seconds": round(synthesis, 2),
        "quality_over_synthesis": total / synthesis,
        "fd_unet": result["features"]["fd_unet"],
    }
    parts = ", ".join(f"{part} {seconds:.2f}" for part, seconds in record["seconds_by_part"].items())
    summary = [
        f"quality {count} synthetic vs {result['real_count']} real ({result['real_search_count']} searched), "
        f"{result['size']}x{result['size']}, {'+'.join(used)}, on {device} ({torch.get_num_threads()} threads)",
        f"parts (s): {parts}",
        f"quality total {total:.2f} s; peak RSS {rss / 1024:.2f} GiB"
        + ("" if gpu is None else f", GPU peak {gpu / 1024:.2f} GiB"),
        f"one-off: datasets written in {write_s:.1f} s, caches built in {cache_s:.1f} s",
        f"SPADE ngf {args.ngf}: {per_image * 1000:.1f} ms/image -> {synthesis:.1f} s for {count} images; "
        f"quality / synthesis = {total / synthesis:.3f}",
    ]
    emit(record, summary, args.json)


if __name__ == "__main__":
    main()
