"""Prepare time per case at the real BraTS size (240x240x155 -> 155 slices of 256x256), on this machine.

    python benchmarks/bench_prepare.py [--cohort DIR] [--cases 2] [--workers 1] [--keep DIR]

Runs ``synthseg prepare`` twice over the same cases: with FSL FAST outputs beside each case (``tissue=auto``)
and with the built-in tissue segmentation (``tissue=builtin``). Prints the wall time per case and its parts
(reading and label mapping, tissue, PNG writing) taken from prepare.json.

Without --cohort, a demo cohort of --cases cases is generated first (``synthseg demo-cohort``; its FAST
``pve`` maps are the true tissue); if the demo cohort module is not available, plausible random volumes are
written instead (an ellipsoid brain with three intensity classes, noise and a tumor blob).
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

import nibabel as nib
import numpy as np

from synthseg.data.manifest import read_provenance
from synthseg.data.prepare import prepare
from synthseg.data.prepare.settings import PrepareSettings

AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def random_cohort(root: Path, cases: int, seed: int = 0) -> Path:
    """Plausible BraTS 2018 cases: ellipsoid brain with WM/GM/CSF shells, noise, a tumor, FAST pve maps."""
    shape = (240, 240, 155)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    for index in range(cases):
        rng = np.random.default_rng([seed, index])
        radius = np.sqrt(((grid / np.array([0.7, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0))
        radius = radius * (1 + 0.03 * rng.standard_normal())
        tissue = np.select([radius < 0.6, radius < 0.85, radius < 1.0], [3, 2, 1], 0).astype(np.uint8)
        means = np.array([0.0, 400.0, 900.0, 1300.0])
        image = means[tissue] + rng.normal(0, 60, shape) * (tissue > 0)
        center = rng.uniform(-0.3, 0.3, 3)
        blob = np.sqrt(((grid - center[:, None, None, None]) ** 2).sum(0))
        seg = np.select([blob < 0.08, blob < 0.14, blob < 0.25], [1, 4, 2], 0).astype(np.uint8)
        seg[tissue == 0] = 0
        image[seg == 4] = 1800
        name = f"Brats18_BENCH_{index}_1"
        folder = root / "HGG" / name
        folder.mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(np.clip(image, 0, 32767).astype(np.int16), AFFINE),
            str(folder / f"{name}_t1ce.nii.gz"),
        )
        nib.save(nib.Nifti1Image(seg, AFFINE), str(folder / f"{name}_seg.nii.gz"))
        for k in range(3):
            pve = (tissue == k + 1).astype(np.float32)
            nib.save(nib.Nifti1Image(pve, AFFINE), str(folder / f"{name}_t1ce_pve_{k}.nii.gz"))
    return root


def make_cohort(root: Path, cases: int) -> tuple[Path, str]:
    try:
        from synthseg.data.demo import demo_cohort
    except ImportError:
        return random_cohort(root, cases), "random volumes"
    demo_cohort.run(
        demo_cohort.DemoCohortSettings(output=str(root), cases=cases, seed=0, montage=False, progress=False)
    )
    return root, "demo cohort"


def run(source: Path, output: Path, tissue: str, workers: int) -> dict:
    settings = PrepareSettings(
        source=str(source), output=str(output), tissue=tissue, workers=workers, progress=False
    )
    start = time.perf_counter()
    record = read_provenance(prepare.run(settings)) or {}
    record["wall_s"] = time.perf_counter() - start
    return record


def report(label: str, record: dict) -> None:
    cases = record["cases"]
    parts = {key: statistics.mean(c["seconds"][key] for c in cases) for key in ("read", "tissue", "write")}
    print(
        f"{label:<34} {record['wall_s'] / len(cases):6.2f} s/case wall   "
        f"(per case: read+labels {parts['read']:.2f} s, tissue {parts['tissue']:.2f} s, "
        f"PNG write {parts['write']:.2f} s; tissue from {sorted({c['tissue'] for c in cases})})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cohort", type=Path, default=None, help="an existing BraTS-layout root to prepare")
    parser.add_argument("--cases", type=int, default=2, help="cases to generate when --cohort is not given")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="write the prepared datasets here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        if args.cohort is None:
            start = time.perf_counter()
            source, kind = make_cohort(Path(tmp) / "cohort", args.cases)
            print(f"generated {args.cases} cases ({kind}) in {time.perf_counter() - start:.1f} s")
        else:
            source, kind = args.cohort, str(args.cohort)
        print(
            f"python {platform.python_version()}, {platform.machine()}, workers={args.workers}, source: {kind}"
        )
        fast = run(source, work / "prepared_fast", "auto", args.workers)
        report("FAST files present (tissue=auto)", fast)
        builtin = run(source, work / "prepared_builtin", "builtin", args.workers)
        report("built-in tissue (tissue=builtin)", builtin)
        size = sum(p.stat().st_size for p in (work / "prepared_fast").rglob("*") if p.is_file())
        slices = fast["stats"]["num_slices"]
        print(
            f"output: {size / 1e6:.1f} MB for {slices} slices ({size / slices / 1e3:.1f} kB per image+label pair)"
        )
        json.dump({"fast": fast["timings"], "builtin": builtin["timings"]}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
