"""The Z-score filter of generated label maps (paper section 3.4).

Every synthetic mask is compared pixel by pixel with the real training masks: the per-pixel mean and standard
deviation of the real masks over the batch axis give a z-image ``(mask - mean) / std``; the Euclidean norm of the
vectorised z-image measures how far the mask lies from the real set, and a mask is kept when that norm is at
most a threshold (500 in the paper, at 256x256).

Decisions (argued in docs/filter.md):

- Pixels where the real standard deviation is 0 (every real mask has the same class there, usually background
  at the image border) use a floor instead of 0: the smallest non-zero standard deviation ``N`` integer masks
  can show, ``sqrt(N - 1) / N`` (one mask of ``N`` differing by one class). A synthetic mask painting anything
  there is treated as if the reference held one such mask, which is suspicious in proportion to the evidence
  against it. ``zero_std="exclude"`` drops those pixels from the norm instead.
- The threshold is stated at ``threshold_at`` (256) pixels of side and scaled linearly with the side length,
  because the norm grows with the square root of the pixel count; or it is a quantile of the real norms.
- Empty real masks are in the reference by default, as the paper compares with "the entirety of the real
  dataset"; ``include_empty=False`` leaves them out (the GAN was trained on non-empty masks only).

Beyond the paper: ``reference_by=position`` compares each mask of a slice-conditional PGAN with the reals of
nearby axial positions (:mod:`synthseg.synth.zscore_position`), and ``method=critic|both`` scores every mask
with the trained PGAN critic, keeping those at or above a quantile of the real validation maps' scores
(:mod:`synthseg.synth.critic`); ``both`` keeps what both filters keep.

The statistics live in :mod:`synthseg.synth.zscore` (re-exported here), the figures in
:mod:`synthseg.synth.filter_plots`; this module does the folder-to-folder work of ``synthseg filter``
(:func:`run`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from synthseg.data.labels import NUM_CLASSES, resize_labels
from synthseg.data.manifest import (
    MANIFEST,
    PROVENANCE,
    check_distinct,
    dataset_stats,
    read_manifest,
    read_provenance,
    synthetic_row,
    write_manifest,
    write_provenance,
    write_stats,
)
from synthseg.data.masks import MaskItem, list_masks
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.settings import Settings, check_choice, check_positive
from synthseg.synth.critic import METHODS
from synthseg.synth.filter_plots import plot_calibration, plot_critic_calibration, plot_montage
from synthseg.synth.filter_verdicts import critic_verdict, zscore_verdict
from synthseg.synth.zscore import (
    PAPER_DISCARDED,
    REFERENCE_SPLITS,
    ZERO_STD_MODES,
)
from synthseg.synth.zscore_position import REFERENCE_BY
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output

CRITIC_PLOT = "critic_calibration.png"
CRITIC_MONTAGE = "critic_discarded.png"


def read_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an 8-bit label PNG (H, W) and check its values are 7-class indices."""
    mask = read_png(path, bitdepth=8, shape=shape)
    if mask.size and mask.max() >= NUM_CLASSES:
        raise InputError(f"{path}: label value {int(mask.max())} is not one of the 7 classes 0..6")
    return mask


def reference_items(reference: str | os.PathLike[str], split: str = "train") -> list[MaskItem]:
    """The real masks of a prepared dataset's training split (``train``) or reduced training split, each with
    its normalised axial position (None where unknown); ``val``: the non-empty real validation masks."""
    if split not in (*REFERENCE_SPLITS, "val"):
        raise InputError(f"reference_split must be one of {REFERENCE_SPLITS}, got {split!r}")
    manifest = read_manifest(reference)
    rows = manifest.rows("val" if split == "val" else "train")
    if split == "reduced":
        rows = rows[manifest.reduced[rows]]
    rows = rows[manifest.source[rows] == "real"]
    if split == "val":
        rows = rows[~manifest.empty[rows]]
    if rows.size == 0:
        raise InputError(f"{reference}: no real masks in the {split} split")
    root, positions = Path(reference), manifest.positions()
    return [
        MaskItem(
            str(manifest.ids[i]),
            root / manifest.label[i],
            position=float(positions[i]) if np.isfinite(positions[i]) else None,
        )
        for i in rows
    ]


def _read_all(
    items: Sequence[MaskItem],
    shape: tuple[int, int] | None,
    desc: str,
    progress: bool,
    *,
    reduce: bool = False,
) -> Iterator[np.ndarray]:
    """Read masks checking their size; with ``reduce``, larger reference masks are brought to ``shape``.

    A reference prepared at 256x256 serves masks of a GAN trained at a lower resolution (the demo): it is
    reduced by the DataModule's own rule (majority vote per block), so the filter sees the reals as the GAN did.
    """
    for item in tqdm(items, desc=desc, unit="mask", disable=not progress, leave=False):
        if not reduce or shape is None:
            yield read_mask(item.label, shape)
            continue
        mask = read_mask(item.label)
        if mask.shape != shape:
            factor = mask.shape[0] // shape[0]
            if mask.shape != (shape[0] * factor, shape[1] * factor) or factor < 1:
                raise InputError(
                    f"{item.label}: reference mask is {mask.shape[0]}x{mask.shape[1]}, the masks are "
                    f"{shape[0]}x{shape[1]} (not an integer reduction)"
                )
            mask = resize_labels(mask, mask.shape[-1] // factor)
        yield mask


def _comparison_shape(refs: list[MaskItem], items: list[MaskItem]) -> tuple[int, int]:
    """Masks smaller than the reference by an integer factor (a GAN trained at a lower resolution) are
    compared at their own size; otherwise at the reference's, and any mask of another size is an error."""
    shape = read_mask(refs[0].label).shape
    first = read_mask(items[0].label).shape
    if first[0] == first[1] and shape[0] == shape[1] and shape[0] % first[0] == 0:
        shape = first
    return (int(shape[0]), int(shape[1]))


def _summary(
    s: FilterSettings,
    items: list[MaskItem],
    keep: np.ndarray,
    side: int,
    has_images: bool,
    zscore: dict[str, Any] | None,
    critic: dict[str, Any] | None,
) -> dict[str, Any]:
    """The content of filter.json: the verdict, then the Z-score filter's fields (top level, as before 0.3.0)
    and the critic's (under ``critic``)."""
    discarded = [i for i, k in enumerate(keep) if not k]
    files = {"manifest": MANIFEST, "norms": "norms.csv"}
    if zscore is not None:
        files.update(calibration_plot="filter_calibration.png", discarded_montage="filter_discarded.png")
    if critic is not None:
        files.update(critic_calibration_plot=CRITIC_PLOT, critic_discarded_montage=CRITIC_MONTAGE)
    summary: dict[str, Any] = {
        "masks": str(s.masks),
        "reference": str(s.reference),
        "method": s.method,
        "size": side,
        "synthetic_count": len(items),
        "kept": int(np.count_nonzero(keep)),
        "discarded": len(discarded),
        "synthetic_discarded_fraction": float(len(discarded) / max(len(items), 1)),
        **(zscore["summary"] if zscore is not None else {}),
        "paper_synthetic_discarded_fraction": PAPER_DISCARDED,
        "images_copied": has_images,
        "discarded_ids": [items[i].id for i in discarded],
        "files": files,
    }
    if critic is not None:
        summary["critic"] = critic["summary"]
    return summary


def _write_kept(
    tmp: Path,
    items: list[MaskItem],
    keep: np.ndarray,
    counts: np.ndarray,
    norms: np.ndarray,
    scores: np.ndarray | None,
    side: int,
    has_images: bool,
) -> None:
    """The kept masks (and their images) copied byte for byte, their manifest (positions kept), stats, and
    every mask's norm (``nan`` where the Z-score filter did not run) and critic score."""
    (tmp / "labels").mkdir()
    if has_images:
        (tmp / "images").mkdir()
    rows = []
    for i, item in enumerate(items):
        if not keep[i]:
            continue
        # Copy the files byte for byte: lossless, and faster than decoding and re-encoding.
        shutil.copyfile(item.label, tmp / "labels" / f"{item.id}.png")
        if has_images and item.image is not None:
            shutil.copyfile(item.image, tmp / "images" / f"{item.id}.png")
        rows.append(synthetic_row(item.id, counts[i], has_image=has_images, position=item.position))
    write_manifest(tmp, rows, position=any(item.position is not None for item in items))
    with open(tmp / "norms.csv", "w", newline="") as handle:
        norm_writer = csv.writer(handle)
        norm_writer.writerow(["id", "norm", "kept", *(["score"] if scores is not None else [])])
        for i, item in enumerate(items):
            score = [repr(float(scores[i]))] if scores is not None else []
            norm_writer.writerow([item.id, repr(float(norms[i])), int(keep[i]), *score])
    kept = int(np.count_nonzero(keep))
    write_stats(
        tmp,
        dataset_stats(
            source="synthetic", size=side, splits={"train": kept}, class_counts=counts[keep].sum(axis=0)
        ),
    )


@dataclass(frozen=True)
class FilterSettings(Settings):
    """``conf/filter.yaml``; the keys are described there and in the module docstring."""

    REQUIRED = {"masks": "DIR", "reference": "DIR", "output": "DIR"}

    masks: str
    reference: str
    output: str
    method: str = "zscore"
    reference_split: str = "train"
    reference_by: str = "all"
    position_window: float = 2.0
    include_empty: bool = True
    threshold: float = 500.0
    threshold_at: int | None = 256
    threshold_quantile: float | None = None
    zero_std: str = "floor"
    critic: str | None = None
    critic_quantile: float = 0.05
    device: str = "auto"
    batch_size: int = 64
    montage: int = 24
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("reference_split", self.reference_split, REFERENCE_SPLITS)
        check_choice("reference_by", self.reference_by, REFERENCE_BY)
        check_positive("position_window", self.position_window, allow_zero=True)
        if self.zero_std not in ZERO_STD_MODES:
            raise InputError(f"zero_std must be one of {ZERO_STD_MODES}, got {self.zero_std!r}")
        if self.threshold_quantile is not None and not 0.0 < float(self.threshold_quantile) <= 1.0:
            raise InputError(f"threshold_quantile must be in (0, 1], got {self.threshold_quantile}")
        if not 0.0 <= float(self.critic_quantile) < 1.0:
            raise InputError(f"critic_quantile must be in [0, 1), got {self.critic_quantile}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        check_positive("threshold", self.threshold, allow_zero=True)
        check_positive("threshold_at", self.threshold_at)
        check_positive("montage", self.montage, allow_zero=True)

    def check_inputs(self) -> None:
        """Before any mask is read: the two folders are different datasets, every mask's file (and image) the
        masks' manifest names exists, and the reference has real training masks."""
        check_distinct({"masks": self.masks, "reference": self.reference})
        list_masks(self.masks, "masks")
        reference_items(self.reference, self.reference_split)


def run(settings: FilterSettings) -> Path:
    """Filter a folder of generated masks against a prepared dataset; write the kept ones as a dataset folder
    and return it.

    The output folder (written atomically) holds ``labels/`` (and ``images/`` when the input has them),
    ``manifest.csv`` (``source=synthetic``), ``stats.json``, ``prepare.json`` (provenance), ``filter.json``
    (the summary: threshold, counts, discarded fractions, the norms' spread), ``norms.csv`` (every mask's norm,
    lossless, its critic score with ``method=critic|both``, and verdict), and per filter that ran its
    calibration curve (discarded fractions of synthetic and real masks against the threshold) and a montage of
    the masks it discarded in the paper's colours (its Fig. 4): ``filter_calibration.png`` and
    ``filter_discarded.png`` (Z-score), ``critic_calibration.png`` and ``critic_discarded.png`` (critic).
    """
    settings.check_inputs()
    masks, reference = Path(settings.masks), Path(settings.reference)
    overwrite = settings.overwrite
    output = check_output(settings.output, command="filter", inputs=[masks, reference], overwrite=overwrite)
    items = list_masks(masks, "masks")
    refs = reference_items(reference, settings.reference_split)
    shape = _comparison_shape(refs, items)
    side = shape[0]
    counts = np.zeros((len(items), NUM_CLASSES), dtype=np.int64)

    def read(indices: Sequence[int]) -> Iterator[np.ndarray]:
        """The synthetic masks at ``indices`` (their class counts noted for the manifest)."""
        chosen = [items[i] for i in indices]
        for i, mask in zip(
            indices, _read_all(chosen, shape, "synthetic masks", settings.progress), strict=True
        ):
            counts[i] = np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            yield mask

    def read_reference(chosen: Sequence[MaskItem], desc: str) -> Iterator[np.ndarray]:
        return _read_all(chosen, shape, desc, settings.progress, reduce=True)

    zscore = None
    if settings.method != "critic":
        zscore = zscore_verdict(settings, refs, items, side, read_reference, read)
    critic = None
    if settings.method != "zscore":
        reals = reference_items(reference, "val")
        critic = critic_verdict(settings, reals, items, lambda item: read_mask(item.label), read)
    keep = np.ones(len(items), dtype=bool)
    for verdict in (zscore, critic):
        if verdict is not None:
            keep &= verdict["keep"]
    norms = zscore["norms"] if zscore is not None else np.full(len(items), np.nan)
    has_images = all(item.image is not None for item in items)
    summary = _summary(settings, items, keep, side, has_images, zscore, critic)

    needed = sum(
        item.label.stat().st_size + (item.image.stat().st_size if has_images and item.image else 0)
        for item, k in zip(items, keep, strict=True)
        if k
    )
    check_free_space(output.parent, needed, "the filtered masks")
    with claim_output(
        output, command="filter", inputs=[masks, reference], overwrite=overwrite, later=DATASET_LATER
    ) as tmp:
        scores = critic["scores"] if critic is not None else None
        _write_kept(tmp, items, keep, counts, norms, scores, side, has_images)
        provenance: dict[str, Any] = {
            "command": "filter",
            "config": dataclasses.asdict(settings),
            "filter": {
                k: summary.get(k)
                for k in (
                    "method",
                    "threshold",
                    "zero_std",
                    "reference",
                    "reference_split",
                    "kept",
                    "discarded",
                )
            },
        }
        if critic is not None:
            provenance["filter"]["critic"] = {
                k: summary["critic"][k] for k in ("source", "origin", "threshold")
            }
        if (masks / PROVENANCE).is_file():
            provenance["input"] = read_provenance(masks)
        from synthseg import __version__

        provenance["version"] = __version__
        write_provenance(tmp, provenance)
        (tmp / "filter.json").write_text(json.dumps(summary, indent=2) + "\n")
        limit = max(int(settings.montage), 0)
        if zscore is not None:
            threshold = zscore["summary"]["threshold"]
            plot_calibration(tmp / "filter_calibration.png", norms, zscore["real_norms"], threshold, side)
            shown = np.flatnonzero(~zscore["keep"])[:limit]
            plot_montage(
                tmp / "filter_discarded.png",
                [read_mask(items[i].label, shape) for i in shown],
                [f"{items[i].id}\n{norms[i]:.0f}" for i in shown],
            )
        if critic is not None:
            entry = critic["summary"]
            plot_critic_calibration(
                tmp / CRITIC_PLOT,
                critic["scores"],
                critic["real_scores"],
                entry["threshold"],
                entry["quantile"],
            )
            shown = np.flatnonzero(~critic["keep"])[:limit]
            plot_montage(
                tmp / CRITIC_MONTAGE,
                [read_mask(items[i].label, shape) for i in shown],
                [f"{items[i].id}\n{critic['scores'][i]:.2f}" for i in shown],
                heading="Masks discarded by the PGAN critic (score in the titles)",
            )
    return output


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg filter`` (``conf/filter.yaml``)."""
    settings = FilterSettings.from_config(cfg)
    output = run(settings)
    s = read_summary(output)
    lines = [
        f"synthseg filter ({s['method']}): kept {s['kept']} of {s['synthetic_count']} masks "
        f"({100 * s['synthetic_discarded_fraction']:.3f} % discarded)."
    ]
    if "threshold" in s:
        by = (
            "the reals of nearby positions"
            if s["reference_by"] == "position"
            else f"{s['reference_count']} real masks"
        )
        lines.append(
            f"  Z-score: threshold {s['threshold']:.1f} against {by}: discards "
            f"{100 * s['zscore_discarded_fraction']:.3f} % of the masks and would discard "
            f"{100 * s['real_discarded_fraction']:.3f} % of the real ones (filter_calibration.png, filter_discarded.png)"
        )
    if "critic" in s:
        c = s["critic"]
        origin = (
            "its snapshot's own critic (tick {tick})"
            if c["origin"] == "snapshot"
            else "the run's final critic (last.ckpt, tick {tick}; snapshots hold no critic unless trained with "
            "model.snapshot_critic=true)"
        ).format(tick=c["tick"])
        lines.append(
            f"  critic: {origin} from {c['source']}; keeps a score >= {c['threshold']:.4g} (the "
            f"{c['quantile']:g} quantile of {c['real_count']} real validation maps): discards "
            f"{100 * c['synthetic_discarded_fraction']:.3f} % of the masks (critic_calibration.png, critic_discarded.png)"
        )
    lines.append(f"  output: {settings.output} (filter.json, norms.csv)")
    print("\n".join(lines))
    return output


def read_summary(output: str | os.PathLike[str]) -> dict[str, Any]:
    """``<output>/filter.json``: what a filter run measured and kept (see :func:`run`)."""
    return json.loads((Path(output) / "filter.json").read_text())


def read_norms(output: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``<output>/norms.csv``: every input mask's id, its z-score norm (float64, as computed) and whether it was
    kept, in input order."""
    with open(Path(output) / "norms.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [row["id"] for row in rows]
    norms = np.array([float(row["norm"]) for row in rows], dtype=np.float64)
    return ids, norms, np.array([row["kept"] == "1" for row in rows], dtype=bool)


def read_scores(output: str | os.PathLike[str]) -> np.ndarray:
    """``<output>/norms.csv``'s critic scores (float64, in input order; NaN without the critic)."""
    with open(Path(output) / "norms.csv", newline="") as handle:
        return np.array([float(row.get("score") or "nan") for row in csv.DictReader(handle)], np.float64)
