"""The figures ``synthseg filter`` writes: the calibration curves (Z-score norm, critic score) and the montage of
discarded masks (Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthseg.data.labels import CLASS_NAMES, PALETTE, colorize
from synthseg.synth.zscore import discarded_fraction


def plot_calibration(
    path: Path, norms: np.ndarray, real_norms: np.ndarray, threshold: float, side: int
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(float(np.max(norms, initial=0.0)), float(np.max(real_norms, initial=0.0)), threshold) * 1.05
    grid = np.linspace(0.0, max(top, 1.0), 500)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    syn = discarded_fraction(norms, threshold) * 100
    real = discarded_fraction(real_norms, threshold) * 100
    ax.plot(grid, discarded_fraction(norms, grid) * 100, label=f"synthetic masks ({syn:.3f} % at threshold)")
    ax.plot(grid, discarded_fraction(real_norms, grid) * 100, label=f"real masks ({real:.3f} % at threshold)")
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.1f}")
    ax.set_xlabel(f"threshold on the z-score norm ({side}x{side} masks)")
    ax.set_ylabel("discarded (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(0, 100)
    ax.set_title("Z-score filter: fraction of masks discarded against the threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_critic_calibration(
    path: Path, scores: np.ndarray, real_scores: np.ndarray, threshold: float, quantile: float
) -> None:
    """Fraction of synthetic and of real validation masks the critic discards (score below the threshold)
    against the threshold, the one used (the ``quantile`` quantile of the real scores) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.concatenate([scores, real_scores, [threshold]])
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * max(hi - lo, 1e-6)
    grid = np.linspace(lo - pad, hi + pad, 500)

    def below(x: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        x = np.sort(x)
        return np.searchsorted(x, t, side="left") / max(x.size, 1)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    syn, real = below(scores, threshold) * 100, below(real_scores, threshold) * 100
    ax.plot(grid, below(scores, grid) * 100, label=f"synthetic masks ({syn:.2f} % at threshold)")
    ax.plot(grid, below(real_scores, grid) * 100, label=f"real validation masks ({real:.2f} % at threshold)")
    ax.axvline(
        threshold,
        color="k",
        linestyle="--",
        linewidth=1,
        label=f"threshold {threshold:.4g} (q = {quantile:g})",
    )
    ax.set_xlabel("threshold on the critic's score (a mask is kept at or above it)")
    ax.set_ylabel("discarded (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Critic filter: fraction of masks discarded against the threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_montage(
    path: Path,
    masks: list[np.ndarray],
    titles: list[str],
    columns: int = 6,
    heading: str = "Masks discarded by the Z-score filter (norm in the titles)",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not masks:
        fig, ax = plt.subplots(figsize=(4, 1.5), dpi=120)
        ax.axis("off")
        ax.text(0.5, 0.5, "no mask was discarded", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    rows = (len(masks) + columns - 1) // columns
    cols = min(columns, len(masks))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(2.0 * cols, 7.0), 2.5 * rows + 0.8), dpi=120, squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, mask, title in zip(axes.ravel(), masks, titles, strict=False):
        ax.imshow(colorize(mask), interpolation="nearest")
        ax.set_title(title, fontsize=7)
    handles = [
        Patch(facecolor=PALETTE[c] / 255, edgecolor="0.5", label=name) for c, name in enumerate(CLASS_NAMES)
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles) if cols >= 4 else 4, fontsize=7, frameon=False
    )
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if cols >= 4 else 0.14, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
