"""Finding the U-Net runs of a sweep and grouping them into the cells of Table 1."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.checkpoint import read_unet_results
from synthseg.data.labels import class_names
from synthseg.errors import InputError
from synthseg.report.stats import RatioMetrics

log = logging.getLogger(__name__)

CLASS_COLUMNS = (7, 4, 2)


@dataclass(frozen=True)
class Mix:
    """One row of Table 1.

    Attributes:
        name: the mix's name (``mix_name`` in the config, a file in ``conf/mix/``).
        half: "full" or "reduced" real training data.
        label: the paper's (real, synthetic) counts as printed in its Table 1.
        paper: the paper's Dice error % for 7, 4 and 2 classes (None for rows the paper does not have).
        reference: the real-only row of the same half, for paired differences.
    """

    name: str
    half: str
    label: str
    paper: dict[int, float] | None
    reference: str


# Table 1 of the paper (Dice error %, test set), in its row order, then the classical-augmentation arms.
MIXES: tuple[Mix, ...] = (
    Mix("full_real", "full", "(26,040, 0)", {7: 10.94, 4: 6.62, 2: 2.49}, "full_real"),
    Mix("full_syn8960", "full", "(26,040, 8,960)", {7: 10.92, 4: 6.65, 2: 2.48}, "full_real"),
    Mix("full_syn23960", "full", "(26,040, 23,960)", {7: 10.90, 4: 6.42, 2: 2.53}, "full_real"),
    Mix("syn_only", "full", "(0, 26,040)", {7: 42.76, 4: 39.11, 2: 24.14}, "full_real"),
    Mix("full_augment", "full", "(26,040, 0) + augmentation", None, "full_real"),
    Mix("reduced_real", "reduced", "(5,208, 0)", {7: 16.80, 4: 12.90, 2: 6.16}, "reduced_real"),
    Mix("reduced_syn4792", "reduced", "(5,208, 4,792)", {7: 16.44, 4: 12.51, 2: 6.14}, "reduced_real"),
    Mix("reduced_syn20832", "reduced", "(5,208, 20,832)", {7: 16.18, 4: 12.11, 2: 5.80}, "reduced_real"),
    Mix("reduced_augment", "reduced", "(5,208, 0) + augmentation", None, "reduced_real"),
)
MIX_BY_NAME = {mix.name: mix for mix in MIXES}


@dataclass
class Run:
    """One U-Net run's ``results.json``, with what the report needs pulled out."""

    path: Path
    mix: str
    classes: int
    seed: int
    half: str
    results: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.results["config"]

    @property
    def sequences(self) -> tuple[str, ...]:
        """The MR sequences the U-Net segmented from (``data.sequences``; before 0.2.0: T1c alone)."""
        return tuple(self.config.get("data", {}).get("sequences") or ("t1c",))

    @property
    def dice_error(self) -> float:
        return float(self.results["metrics"]["test/dice_error"])

    @property
    def per_case(self) -> dict[str, dict[str, list[float]]]:
        return self.results.get("per_case") or {}


def mix_of(results: dict[str, Any]) -> Mix:
    """The mix of a run: its ``mix_name`` when it is one of Table 1's rows, else one made from its counts."""
    config = results.get("config", {})
    name = config.get("mix_name")
    if name in MIX_BY_NAME:
        return MIX_BY_NAME[name]
    data = config.get("data", {})
    stats = results.get("data_stats", {})
    half = "reduced" if data.get("reduced") else "full"
    real, synthetic = stats.get("num_real"), stats.get("num_synthetic", 0)
    augment = bool(data.get("augment"))
    if not name:
        name = f"real{real}_syn{synthetic}" + ("_augment" if augment else "")
    label = f"({real}, {synthetic})" + (" + augmentation" if augment else "")
    return Mix(str(name), half, label, None, f"{half}_real")


def load_run(path: Path) -> Run | None:
    """Read one results.json; None (with a warning) when it is not a tested U-Net run."""
    results = read_unet_results(path)
    if results is None:
        log.warning("%s: no test/dice_error (not a tested U-Net run): skipped", path)
        return None
    config = results["config"]
    mix = mix_of(results)
    return Run(path, mix.name, int(config["data"]["classes"]), int(config.get("seed", 0)), mix.half, results)


def find_runs(root: str | Path, include: tuple[str, ...] = ()) -> list[Run]:
    """Every tested U-Net run under ``root`` (a multirun folder or any folder above results.json files), or,
    with ``include``, those in the named folders under it (paths relative to ``root``; each must exist)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"runs={root}: folder not found")
    folders = [root / name for name in include] or [root]
    for folder in folders:
        if not folder.is_dir() or root.resolve() not in (folder.resolve(), *folder.resolve().parents):
            raise InputError(f"include: {folder} is not a folder under runs={root}")
    paths = sorted({path for folder in folders for path in folder.rglob("results.json")})
    runs = [run for path in paths if (run := load_run(path)) is not None]
    if not runs:
        raise InputError(f"runs={root}: no results.json of a tested U-Net run found below it")
    return runs


def group_runs(runs: list[Run]) -> dict[tuple[str, int], list[Run]]:
    """Runs by (mix, classes), each list sorted by seed; a repeated (mix, classes, seed) is an error."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.mix, run.classes), []).append(run)
    for key, members in groups.items():
        members.sort(key=lambda r: r.seed)
        used = sorted({r.sequences for r in members})
        if len(used) > 1:  # one cell is one input: several would average unlike networks
            raise InputError(
                f"mix {key[0]}, {key[1]} classes: runs with different data.sequences {[list(u) for u in used]} "
                f"({members[0].path}, ...): report each set of sequences from its own folder"
            )
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            paths = ", ".join(str(r.path) for r in members)
            raise InputError(f"mix {key[0]}, {key[1]} classes: the same seed appears twice ({paths})")
    return groups


def mix_order(names: set[str] | list[str]) -> list[str]:
    """Table 1's row order: the paper's rows and the augmentation arms first, then other mixes by name."""
    known = [mix.name for mix in MIXES if mix.name in names]
    return known + sorted(set(names) - set(known))


def subject_metrics(runs: list[Run], subjects: list[str]) -> RatioMetrics:
    """Per-subject statistics of a cell's runs, summed over seeds, as ratio metrics.

    Metrics: ``dice_error_fixed`` (the weighted Dice error with the fixed weights from the real training
    data, soft sums, in %), the hard Dice of every class but background, and the Dice of the BraTS regions
    (all in %).
    """
    first = runs[0]
    classes = first.classes
    weights = np.asarray(first.results.get("real_class_weights") or np.full(classes, 1.0 / classes))
    regions = list(first.results.get("regions") or [])
    keys = ("soft_intersection", "soft_total", "hard_intersection", "hard_total")
    sums = {k: np.zeros((len(subjects), classes)) for k in keys}
    sums["region_intersection"] = np.zeros((len(subjects), len(regions)))
    sums["region_total"] = np.zeros((len(subjects), len(regions)))
    for run in runs:
        for i, subject in enumerate(subjects):
            case = run.per_case[subject]
            for key, array in sums.items():
                values = np.asarray(case.get(key, ()), dtype=np.float64)
                if values.shape != array.shape[1:]:
                    raise InputError(
                        f"{run.path}: per_case[{subject!r}][{key!r}] has {values.size} values, "
                        f"expected {array.shape[1]}"
                    )
                array[i] += values
    names = ["dice_error_fixed"]
    numerator = [sums["soft_intersection"] @ weights]
    denominator = [sums["soft_total"] @ weights]
    offset, scale = [100.0], [-200.0]
    for c, name in enumerate(class_names(classes)):
        if c == 0:
            continue
        names.append(f"dice_{name}")
        numerator.append(sums["hard_intersection"][:, c])
        denominator.append(sums["hard_total"][:, c])
        offset.append(0.0)
        scale.append(200.0)
    for j, region in enumerate(regions):
        names.append(f"dice_{region}")
        numerator.append(sums["region_intersection"][:, j])
        denominator.append(sums["region_total"][:, j])
        offset.append(0.0)
        scale.append(200.0)
    return RatioMetrics(
        names=tuple(names),
        numerator=np.stack(numerator, axis=1),
        denominator=np.stack(denominator, axis=1),
        offset=np.asarray(offset),
        scale=np.asarray(scale),
    )
