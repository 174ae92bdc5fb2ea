"""``synthseg demo-cohort output=DIR cases=N seed=S``: a BraTS-2018-layout cohort of demo cases
(:mod:`synthseg.data.demo.case`), written atomically, with a montage of the first cases."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from synthseg.data.demo.case import (
    COHORT_MARKER,
    GRID_SHAPE,
    DemoCase,
    case_names,
    make_case,
    scanner_of,
    write_case,
)
from synthseg.errors import InputError
from synthseg.settings import Settings, check_positive
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import check_output, claim_output
from synthseg.utils.procs import ordered_map


def save_montage(path: Path, cases: list[DemoCase], slices: int = 2) -> None:
    """Save a PNG grid: per case, ``slices`` axial slices through the tumour, one row each: T1, T1c, T2, FLAIR
    (those made), then the colored seg over the T1c. Each sequence is scaled by its own 99.5th percentile.

    Slices are shown in radiological view (patient left on the image right, anterior at the top).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthseg.data.labels import colorize

    # Crop every tile to the union of the brains' in-plane extent (+ margin): the brain, not the black border.
    union = np.zeros(GRID_SHAPE[:2], dtype=bool)
    for case in cases:
        union |= (case.t1ce > 0).any(2)
    nz = np.argwhere(union.T) if union.any() else np.array([[0, 0], [GRID_SHAPE[1] - 1, GRID_SHAPE[0] - 1]])
    (r0, c0), (r1, c1) = np.maximum(nz.min(0) - 4, 0), nz.max(0) + 5
    rows = []
    for case in cases:
        zs = np.flatnonzero((case.seg > 0).any((0, 1)))
        zs = zs if len(zs) else np.arange(40, 120)
        picks = np.linspace(zs[0], zs[-1], slices + 2)[1:-1].round().astype(int)
        names = [s for s in ("t1", "t1c", "t2", "flair") if s == "t1c" or s in case.others]
        volumes = [case.t1ce if s == "t1c" else case.others[s] for s in names]
        tops = [np.percentile(v[v > 0], 99.5) for v in volumes]
        for z in picks:
            grays = [
                np.clip(v[:, :, z].T.astype(np.float32) / t, 0, 1) for v, t in zip(volumes, tops, strict=True)
            ]
            rgbs = [np.repeat(g[..., None], 3, -1)[r0:r1, c0:c1] for g in grays]
            labels = case.seg[:, :, z].T.copy()
            labels[labels == 4] = 3
            color = (colorize(labels).astype(np.float32) / 255)[r0:r1, c0:c1]
            t1c = rgbs[names.index("t1c")]
            overlay = np.where(labels[r0:r1, c0:c1, None] > 0, 0.5 * t1c + 0.5 * color, t1c)
            rows.append(np.concatenate([*rgbs, overlay], 1))
    plt.imsave(path, np.concatenate(rows, 0))


# A case's eight .nii.gz files take about 16 MB (measured: 240x240x155, T1, T1c, T2, FLAIR, seg, three FAST maps);
# the estimate leaves a margin. The montage is a few MB at most.
BYTES_PER_CASE = 25_000_000
MONTAGE_BYTES = 10_000_000


@dataclass(frozen=True)
class DemoCohortSettings(Settings):
    """``conf/demo_cohort.yaml``.

    Attributes:
        output: root folder; cases go to ``output/HGG/<case>/``.
        cases: number of cases (>= 1).
        seed: everything random derives from it; the same seed gives byte-identical files.
        montage: also write ``output/montage.png`` (axial T1, T1c, T2, FLAIR slices and the colored labels).
        progress: show a progress bar.
        overwrite: replace a cohort this command wrote earlier.
        workers: cases made in parallel processes (the same files for any count).
    """

    REQUIRED = {"output": "DIR"}

    output: str
    cases: int = 8
    seed: int = 0
    montage: bool = True
    progress: bool = True
    overwrite: bool = False
    workers: int = 1

    def check(self) -> None:
        if self.cases < 1:
            raise InputError(f"cases must be at least 1, got {self.cases}")
        check_positive("workers", self.workers)


def run(settings: DemoCohortSettings) -> Path:
    """Write a demo cohort of ``settings.cases`` HGG cases in BraTS 2018 layout under ``settings.output``.

    The folder is built under a temporary name and renamed into place when complete. An existing output is
    replaced only with ``overwrite`` and only if this command wrote it (synthseg.utils.outputs).

    Returns:
        The cohort folder; its ``demo_cohort.json`` names the cases in generation order (:func:`case_folders`).
    """
    from tqdm import tqdm

    cases, seed, montage, overwrite = settings.cases, settings.seed, settings.montage, settings.overwrite
    output = check_output(settings.output, command="demo-cohort", overwrite=overwrite)
    # Refuse before the first case when the disk cannot hold them all (it used to fail with ENOSPC midway).
    check_free_space(
        output.parent if output.parent.exists() else Path.cwd(),
        cases * BYTES_PER_CASE + (MONTAGE_BYTES if montage else 0),
        f"{cases} demo cases",
    )
    names = case_names(cases, seed)
    shown: list[DemoCase] = []
    folders = [output / "HGG" / f"Brats18_{inst}_{ident}_1" for inst, ident in names]
    with claim_output(output, command="demo-cohort", overwrite=overwrite) as tmp:
        jobs = [
            (tmp, seed, index, inst, ident, montage and index < 3)
            for index, (inst, ident) in enumerate(names)
        ]
        made = ordered_map(_make_and_write, jobs, settings.workers)
        for case in tqdm(
            made, total=len(jobs), desc="demo cohort", unit="case", disable=not settings.progress
        ):
            shown += [case] if case is not None else []
        if montage:
            save_montage(tmp / "montage.png", shown)
        meta = {
            "cases": cases,
            "seed": int(seed),
            "names": [f.name for f in folders],
            "shape": list(GRID_SHAPE),
        }
        (tmp / COHORT_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return output


def case_folders(cohort: str | os.PathLike[str]) -> list[Path]:
    """The case folders of a cohort this command wrote, in generation order (from its marker file)."""
    names = json.loads((Path(cohort) / COHORT_MARKER).read_text())["names"]
    return [Path(cohort) / "HGG" / name for name in names]


def _make_and_write(job: tuple[Path, int, int, str, str, bool]) -> DemoCase | None:
    """Make case ``index`` and write it under ``tmp/HGG``; return it when it goes into the montage."""
    tmp, seed, index, inst, ident, keep = job
    rngs = (np.random.default_rng([seed, 11, index]), np.random.default_rng([seed, 13, index]))
    case = make_case(f"Brats18_{inst}_{ident}_1", scanner_of(seed, inst), *rngs)
    write_case(tmp / "HGG" / case.name, case)
    return case if keep else None


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg demo-cohort output=DIR cases=N seed=S [montage=true]``."""
    settings = DemoCohortSettings.from_config(cfg)
    output = run(settings)
    print(f"demo cohort: {len(case_folders(output))} cases in {Path(settings.output) / 'HGG'}")
    return output
