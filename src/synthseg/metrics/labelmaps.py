"""Label-map statistics of a synthetic set beside the real one: class areas, tumor fragmentation, filter rate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance

from synthseg.data.labels import NUM_CLASSES, class_names

TUMOR_CLASSES = (1, 2, 3)


def class_areas(labels: torch.Tensor, classes: int = NUM_CLASSES) -> np.ndarray:
    """(N, H, W) class indices -> (N, classes) fraction of each slice's pixels per class (one bincount)."""
    n = len(labels)
    flat = labels.reshape(n, -1).long() + classes * torch.arange(n)[:, None]
    counts = torch.bincount(flat.reshape(-1), minlength=n * classes).reshape(n, classes)
    return (counts.double() / max(labels[0].numel(), 1)).numpy()


def area_distance(synthetic: np.ndarray, real: np.ndarray) -> dict[str, Any]:
    """1-D Wasserstein distance between the per-slice area fractions of each class, and their mean.

    Areas are fractions of the slice, so the distance does not depend on the resolution.
    """
    names = class_names(NUM_CLASSES)
    per_class = {
        names[c]: float(wasserstein_distance(synthetic[:, c], real[:, c])) for c in range(1, NUM_CLASSES)
    }
    return {"mean": float(np.mean(list(per_class.values()))), "per_class": per_class}


def components_per_slice(labels: np.ndarray, classes: tuple[int, ...] = TUMOR_CLASSES) -> np.ndarray:
    """(N, H, W) labels -> (N, len(classes)) connected components (8-connected, in-plane) per class.

    One ``scipy.ndimage.label`` call per class over the whole stack, with no connectivity across slices.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    out = np.zeros((len(labels), len(classes)), dtype=np.int64)
    for j, c in enumerate(classes):
        components, count = ndimage.label(labels == c, structure=structure)
        if count == 0:
            continue
        # Each component lies in one slice: the slice of its first pixel in the flattened stack.
        ids, first = np.unique(components.reshape(-1), return_index=True)
        slice_of = first[ids > 0] // components[0].size
        out[:, j] = np.bincount(np.asarray(slice_of, dtype=np.int64), minlength=len(labels))
    return out


def fragmentation(synthetic: np.ndarray, real: np.ndarray) -> dict[str, Any]:
    """Mean components per slice holding the class, synthetic vs real, per tumor class."""
    names = class_names(NUM_CLASSES)
    out: dict[str, Any] = {}
    for j, c in enumerate(TUMOR_CLASSES):
        entry = {}
        for key, counts in (("synthetic", synthetic[:, j]), ("real", real[:, j])):
            holding = counts[counts > 0]
            entry[key] = float(holding.mean()) if holding.size else 0.0
        out[names[c]] = entry
    return out


def discard_rate(synthetic_dir: str | os.PathLike[str]) -> float | None:
    """The filter's discarded fraction for a synthetic set, from its filter.json or prepare.json; None if absent."""
    root = Path(synthetic_dir)
    candidates = [root / "filter.json", root.parent / f"{root.name}.work" / "kept" / "filter.json"]
    for path in candidates:
        if path.is_file():
            try:
                return float(json.loads(path.read_text())["synthetic_discarded_fraction"])
            except (ValueError, KeyError, TypeError):
                continue
    try:
        record = json.loads((root / "prepare.json").read_text())
        return float(record["synthesize"]["filter"]["synthetic_discarded_fraction"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot_areas(path: Path, synthetic: np.ndarray, real: np.ndarray, distance: dict[str, Any]) -> None:
    """Histograms of the per-slice area fraction of each non-background class, synthetic over real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = class_names(NUM_CLASSES)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for c, ax in zip(range(1, NUM_CLASSES), axes.ravel(), strict=True):
        top = max(float(synthetic[:, c].max(initial=0)), float(real[:, c].max(initial=0)), 1e-3)
        bins = np.linspace(0, top, 30)
        ax.hist(real[:, c], bins=bins, density=True, alpha=0.55, label="real")
        ax.hist(synthetic[:, c], bins=bins, density=True, alpha=0.55, label="synthetic")
        ax.set_title(f"{names[c]} (W1 {distance['per_class'][names[c]]:.4f})")
        ax.set_xlabel("area fraction of the slice")
        ax.set_yscale("log")
    axes[0, 0].legend()
    fig.suptitle(f"Per-slice class areas (mean 1-D Wasserstein distance {distance['mean']:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
