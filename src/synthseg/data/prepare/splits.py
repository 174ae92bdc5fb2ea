"""The split design of a prepared dataset: train/val/test by slice (``paper``) or by case (``subject``), and the
reduced training set."""

from __future__ import annotations

import math

import numpy as np

from synthseg.data.prepare.settings import PrepareSettings
from synthseg.errors import InputError


def split_counts(n: int, fractions: tuple[float, float, float], what: str) -> tuple[int, int, int]:
    """Train, val and test sizes for ``n`` items: val and test rounded (at least 1 each), train the rest.

    Raises:
        InputError: when ``n`` is too small for three non-empty splits.
    """
    n_val = max(1, math.floor(n * fractions[1] + 0.5))
    n_test = max(1, math.floor(n * fractions[2] + 0.5))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"{n} {what} are too few for train, val and test splits (need at least 3)")
    return n_train, n_val, n_test


def assign_splits(
    cases: list[str], slices_per_case: list[int], settings: PrepareSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The manifest's row order, split and reduced flag.

    Slices are numbered case by case (cases in the given order, slices 0..Z-1).

    Args:
        cases: case names, sorted.
        slices_per_case: number of slices of each case.
        settings: split mode, fractions, reduced fraction and seed.

    Returns:
        ``(order, split, reduced)``: slice numbers in manifest order (training rows first, in shuffled order,
        then validation, then test), each row's split index (0 train, 1 val, 2 test) and reduced flag.
    """
    rng = np.random.default_rng(settings.seed)
    n = int(sum(slices_per_case))
    case_of = np.repeat(np.arange(len(cases)), slices_per_case)
    if settings.split == "paper":
        shuffled = rng.permutation(n)
        n_train, n_val, _ = split_counts(n, settings.split_fractions, "slices")
        split_of = np.empty(n, dtype=np.int64)
        split_of[shuffled[:n_train]] = 0
        split_of[shuffled[n_train : n_train + n_val]] = 1
        split_of[shuffled[n_train + n_val :]] = 2
    else:
        case_order = rng.permutation(len(cases))
        n_train, n_val, _ = split_counts(len(cases), settings.split_fractions, "cases")
        case_split = np.empty(len(cases), dtype=np.int64)
        case_split[case_order[:n_train]] = 0
        case_split[case_order[n_train : n_train + n_val]] = 1
        case_split[case_order[n_train + n_val :]] = 2
        split_of = case_split[case_of]
        shuffled = rng.permutation(n)
    # A stable sort by split keeps the shuffled order inside each split.
    order = shuffled[np.argsort(split_of[shuffled], kind="stable")]
    split = split_of[order]
    n_train_rows = int((split == 0).sum())
    n_reduced = max(1, math.floor(n_train_rows * settings.reduced_fraction + 0.5))
    reduced = np.zeros(n, dtype=bool)
    reduced[:n_reduced] = True
    return order, split, reduced
