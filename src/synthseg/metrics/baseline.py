"""Real-vs-real baselines: what every synthetic-vs-real figure gives for two disjoint real samples.

The real sample is split **by case** into halves A and B (neighbouring slices of one case are near-copies: a
split of slices would put them on both sides and flatter the baseline). A plays the synthetic set against the
reference B (``<figure>_real_baseline``); a synthetic subsample of the same n against the same B gives the
synthetic figure like with like (``<figure>_at_baseline_n``): FD, precision and recall move with n, so only
these two are read against each other. See docs/quality.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from synthseg.metrics import diversity, fidelity, labelmaps, memorisation
from synthseg.metrics.memorisation import Rows
from synthseg.metrics.sliced_wasserstein import labels_to_uint8, sliced_wasserstein


@dataclass(frozen=True)
class CaseSplit:
    """Halves A and B of a real sample split by case, each cut to ``n`` rows, and ``n`` synthetic rows.

    Attributes:
        a, b: indices into the real sample (A: the baseline's "synthetic" side; B: the reference).
        synthetic: indices into the synthetic sample.
        n: rows per set.
        cases: the number of cases in A and in B.
        b_cases: the case names of B (the nearest-real search reads every slice of them).
    """

    a: np.ndarray
    b: np.ndarray
    synthetic: np.ndarray
    n: int
    cases: tuple[int, int]
    b_cases: np.ndarray


def split_by_case(cases: np.ndarray, synthetic_count: int, seed: int) -> CaseSplit | None:
    """Split the sampled real rows (``cases``: the case of each) into two halves of whole cases.

    Cases in a seeded order go one by one, the largest first, to the half with fewer rows; both halves and the
    synthetic sample are then cut to the smallest of the three sizes (seeded, order kept). None when the
    sample holds fewer than two cases, or a half fewer than two rows.
    """
    names, counts = np.unique(np.asarray(cases).astype(str), return_counts=True)
    if len(names) < 2:
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    halves: tuple[list[str], list[str]] = ([], [])
    sizes = [0, 0]
    for i in order:
        side = int(sizes[1] < sizes[0])
        halves[side].append(str(names[i]))
        sizes[side] += int(counts[i])
    case_of = np.asarray(cases).astype(str)
    a_all = np.flatnonzero(np.isin(case_of, halves[0]))
    b_all = np.flatnonzero(np.isin(case_of, halves[1]))
    n = min(len(a_all), len(b_all), synthetic_count)
    if n < 2:
        return None

    def cut(index: np.ndarray) -> np.ndarray:
        return index if len(index) == n else np.sort(rng.choice(index, size=n, replace=False))

    return CaseSplit(
        a=cut(a_all), b=cut(b_all), synthetic=cut(np.arange(synthetic_count)), n=n,
        cases=(len(halves[0]), len(halves[1])), b_cases=np.asarray(sorted(halves[1])),
    )  # fmt: skip


def feature_baseline(
    f_real: torch.Tensor, f_syn: torch.Tensor, split: CaseSplit, *, seed: int, k: int, subsets: int, dims: int
) -> dict[str, float | None]:
    """Every feature figure (:func:`fidelity.feature_distances`) for A against B (``<figure>_real_baseline``)
    and for the synthetic subsample against B (``<figure>_at_baseline_n``)."""
    reference = f_real[split.b]
    options = {"seed": seed, "k": min(k, split.n - 1), "subsets": subsets, "dims": dims}
    base = fidelity.feature_distances(reference, f_real[split.a], **options)
    same_n = fidelity.feature_distances(reference, f_syn[split.synthetic], **options)
    return {
        **{f"{key}_real_baseline": value for key, value in base.items()},
        **{f"{key}_at_baseline_n": value for key, value in same_n.items()},
    }


def label_map_baseline(
    real_labels: torch.Tensor, syn_labels: torch.Tensor, split: CaseSplit, seed: int
) -> dict[str, float]:
    """SWD (x10^3, the average over levels) and the mean class-area distance of the label maps: A against B
    (``..._real_baseline``) and the synthetic subsample against B (``..._at_baseline_n``)."""
    reference = real_labels[split.b]
    size = reference.shape[-1]
    out: dict[str, float] = {}
    for suffix, labels in (
        ("real_baseline", real_labels[split.a]),
        ("at_baseline_n", syn_labels[split.synthetic]),
    ):
        swd = sliced_wasserstein(
            labels_to_uint8(labels)[:, None], labels_to_uint8(reference)[:, None], seed=seed,
            min_resolution=min(16, size),
        )  # fmt: skip
        areas = labelmaps.area_distance(labelmaps.class_areas(labels), labelmaps.class_areas(reference))
        out[f"swd_{suffix}"] = float(swd["avg"])
        out[f"area_distance_{suffix}"] = float(areas["mean"])
    return out


def diversity_baseline(
    real: torch.Tensor, synthetic: torch.Tensor, split: CaseSplit, pairs: int, seed: int
) -> dict[str, Any]:
    """Mean MS-SSIM within A (``ms_ssim_synthetic_real_baseline``: a real set in the synthetic's place),
    within B (``ms_ssim_real_at_baseline_n``) and within the synthetic subsample
    (``ms_ssim_synthetic_at_baseline_n``), images already in [0, 1]; per sequence and their means."""
    out: dict[str, Any] = {"by_sequence": {}}
    parts = {
        "ms_ssim_synthetic_real_baseline": real[split.a],
        "ms_ssim_real_at_baseline_n": real[split.b],
        "ms_ssim_synthetic_at_baseline_n": synthetic[split.synthetic],
    }
    for key, images in parts.items():
        values, _ = diversity.ms_ssim_by_channel(images, pairs, seed)
        out[key] = sum(values) / len(values)
        out["by_sequence"][key] = values
    return out


def nearest_baseline(
    real_labels: torch.Tensor, real_images: torch.Tensor, syn_labels: torch.Tensor, syn_images: torch.Tensor,
    split: CaseSplit, reference_labels: Rows, reference_images: Rows, *, search_size: int, candidates: int,
) -> dict[str, float]:  # fmt: skip
    """Median nearest-real label Dice and image correlation against every slice of B's cases
    (``reference_*``): A's rows (``..._real_baseline``) and the synthetic subsample (``..._at_baseline_n``)."""
    near = memorisation.nearest_real(
        torch.cat([real_labels[split.a], syn_labels[split.synthetic]]),
        torch.cat([real_images[split.a], syn_images[split.synthetic]]),
        reference_labels, reference_images, search_size=search_size, candidates=candidates,
    )  # fmt: skip
    base, same_n = near.split(split.n)
    return {
        "nearest_real_dice_median_real_baseline": float(np.median(base.dice)),
        "nearest_real_dice_median_at_baseline_n": float(np.median(same_n.dice)),
        "nearest_real_correlation_median_real_baseline": float(np.median(base.corr)),
        "nearest_real_correlation_median_at_baseline_n": float(np.median(same_n.corr)),
    }


def describe(split: CaseSplit) -> dict[str, Any]:
    """The baseline's own record: how it was split and how large its sets are."""
    return {
        "split": "case",
        "n": split.n,
        "cases": list(split.cases),
        "note": f"real half A ({split.cases[0]} cases) and the synthetic set, {split.n} slices each, against real "
        f"half B ({split.cases[1]} other cases, {split.n} slices; its every slice for the nearest-real search)",
    }
