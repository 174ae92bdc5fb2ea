"""``synthseg synthesize``: PGAN masks -> Z-score filter -> SPADE images -> one synthetic dataset folder.

The result has exactly the prepared-dataset layout (docs/dataset_layout.md, ``source=synthetic``), so
``BraTSDataModule`` mixes it with real data by counts alone. Its ``prepare.json`` records the provenance:
both checkpoints with their SHA-256, the seed, the filter threshold and its outcome, the code version.
The intermediate folders (all masks, kept masks) stay beside the output for inspection, under ``work/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from synthseg import __version__
from synthseg.data.manifest import read_provenance, read_stats, write_provenance
from synthseg.errors import InputError
from synthseg.settings import Settings, check_choice, check_positive
from synthseg.synth.generate_masks import BYTES_PER_MASK_ESTIMATE
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output, lock_path, remove_own


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (a folder: of its best snapshot is recorded by generate-masks instead)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def synthesize(
    pgan: str | os.PathLike[str],
    spade: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    count: int,
    output: str | os.PathLike[str],
    *,
    reference_split: str = "train",
    include_empty: bool = True,
    full_resolution_only: bool = False,
    threshold: float = 500.0,
    threshold_at: int | None = 256,
    seed: int = 0,
    mask_size: int | None = None,
    mask_batch_size: int = 256,
    image_batch_size: int = 16,
    min_island: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    keep_intermediate: bool = True,
    progress: bool = True,
    quality: bool = True,
) -> dict[str, Any]:
    """Make a synthetic dataset of at most ``count`` pairs (fewer: the filter drops some masks).

    Args:
        pgan: PGAN snapshot, training checkpoint, or run folder (its best-SWD snapshot is used).
        spade: SPADE training checkpoint or generator snapshot.
        reference: the prepared dataset the filter compares against (its own training data).
        count: masks generated before filtering (the paper: 100,000).
        output: the synthetic dataset folder.
        reference_split: ``train`` (full instance) or ``reduced`` (the reduced instance's 20 %).
        include_empty: empty real masks in the filter's reference (the paper: the entire real dataset).
        full_resolution_only: for a run folder, pick the best snapshot among full-resolution ticks only
            (the paper: among all ticks; see :func:`synthseg.synth.select.select_best`).
        threshold, threshold_at: the filter threshold and the side length it is stated for.
        mask_size: side of the generated masks (None: the training data's); SPADE must have been trained at
            this size. Masks smaller than the reference are filtered against the reference reduced to their
            size.
        min_island: remove foreground islands smaller than this many pixels from the generated masks before
            the filter (:func:`synthseg.synth.generate_masks.remove_islands`); 0: off, as the paper.
        keep_intermediate: keep ``<output>.work/`` with all generated and all kept masks.
        quality: measure what needs no feature extractor (diversity, memorisation, label maps) into
            ``<output>/quality/`` (docs/quality.md); FD/KID come later, from the report's real-data U-Net.
    """
    from synthseg.synth.filter import run_filter
    from synthseg.synth.generate_images import generate_images
    from synthseg.synth.generate_masks import generate_masks
    from synthseg.synth.select import select_best

    for name, path in (("pgan", pgan), ("spade", spade), ("reference", reference)):
        if not Path(path).exists():
            raise InputError(f"{name}={path}: not found")
    inputs = [pgan, spade, reference]
    output = check_output(output, command="synthesize", inputs=inputs, overwrite=overwrite)
    # Refuse before hours of generation when the disk cannot hold the result: generated and kept masks
    # (the estimates of generate-masks) plus image and label of every pair (as generate-images estimates).
    try:
        side = int(read_stats(reference).get("size") or 256)
    except (InputError, ValueError, AttributeError):
        side = 256
    check_free_space(
        output.parent if output.parent.exists() else Path.cwd(),
        int(count) * (2 * BYTES_PER_MASK_ESTIMATE + side * side * 3),
        f"{count} synthetic pairs and their masks",
    )
    work = output.parent / f"{output.name}.work"
    masks_dir, kept_dir = work / "masks", work / "kept"
    selected = select_best(pgan, full_resolution_only=full_resolution_only) if Path(pgan).is_dir() else None
    mask_record = generate_masks(
        selected["snapshot"] if selected else pgan,
        count,
        masks_dir,
        seed=seed,
        batch_size=mask_batch_size,
        size=mask_size,
        device=device,
        min_island=min_island,
        overwrite=True,
        progress=progress,
    )
    report = run_filter(
        masks_dir,
        reference,
        kept_dir,
        reference_split=reference_split,
        include_empty=include_empty,
        threshold=threshold,
        threshold_at=threshold_at,
        overwrite=True,
        progress=progress,
    )
    if report.summary["kept"] == 0:
        # Nothing to paint: one line that says why, not a complaint about an empty manifest further on.
        raise FilterKeptNothing(
            f"{kept_dir}: the Z-score filter kept none of the {count} generated masks (threshold "
            f"{report.summary['threshold']:g} at their size; filter_discarded.png shows them): train the PGAN "
            "longer, or check its samples"
        )
    pgan_file = Path(mask_record.get("checkpoint") or pgan)
    provenance = {
        "command": "synthesize",
        "version": __version__,
        "pgan": {
            "path": str(pgan_file),
            "sha256": file_sha256(pgan_file) if pgan_file.is_file() else None,
            "tick": mask_record.get("tick"),
            "kimg": mask_record.get("kimg"),
            "selected": selected,
        },
        "spade": {"path": str(spade), "sha256": file_sha256(spade)},
        "reference": str(reference),
        "reference_split": reference_split,
        "include_empty": include_empty,
        "full_resolution_only": full_resolution_only,
        "min_island": min_island,
        "island_pixels_removed": mask_record.get("island_pixels_removed", 0),
        "seed": seed,
        "generated": count,
        "filter": {"threshold": threshold, "threshold_at": threshold_at, **report.summary},
    }
    with claim_output(
        output, command="synthesize", inputs=inputs, overwrite=overwrite, later=DATASET_LATER
    ) as tmp:
        image_record = generate_images(
            spade,
            kept_dir,
            tmp / "dataset",
            batch_size=image_batch_size,
            device=device,
            seed=seed,
            overwrite=True,
            progress=progress,
        )
        for entry in (tmp / "dataset").iterdir():
            shutil.move(str(entry), tmp / entry.name)
        (tmp / "dataset").rmdir()
        lock_path(tmp / "dataset").unlink(missing_ok=True)
        provenance["images"] = {
            k: image_record.get(k)
            for k in ("sequences", "checkpoint_train_max", "seconds", "images_per_second")
        }
        write_provenance(tmp, {**(read_provenance(tmp) or {}), "synthesize": provenance})
        if quality:
            measure_quality(tmp, reference, reference_split, seed)
    if not keep_intermediate:  # the masks' and the filter's own folders, then the (then empty) work folder
        remove_own(masks_dir)
        remove_own(kept_dir)
        for lock in (lock_path(masks_dir), lock_path(kept_dir)):
            lock.unlink(missing_ok=True)
        if work.is_dir() and not any(work.iterdir()):
            work.rmdir()
    return provenance


class FilterKeptNothing(InputError):
    """The Z-score filter discarded every generated mask, so there is no synthetic pair to make."""


def measure_quality(dataset: Path, reference: str | os.PathLike[str], reference_split: str, seed: int) -> None:
    """What needs no feature extractor (diversity, memorisation, label maps) into ``dataset/quality/``.

    Runs inside the claimed temporary folder, so the quality folder is part of what the command wrote.
    """
    from synthseg.metrics.quality import quality as measure

    split = "reduced" if reference_split == "reduced" else "train"
    try:
        measure(dataset, reference, dataset / "quality", extractor=None, real_split=split, seed=seed)
    except (InputError, ValueError) as err:
        # The synthetic set is complete; too few or too small pairs to measure is not a failure of it.
        print(f"synthesize: quality not measured ({err})")


@dataclass(frozen=True)
class SynthesizeSettings(Settings):
    """``conf/synthesize.yaml``: the keyword arguments of :func:`synthesize`."""

    REQUIRED = {"pgan": "PATH", "spade": "PATH", "reference": "DIR", "output": "DIR"}

    pgan: str
    spade: str
    reference: str
    output: str
    count: int = 100000
    reference_split: str = "train"
    include_empty: bool = True
    full_resolution_only: bool = False
    threshold: float = 500.0
    threshold_at: int | None = 256
    seed: int = 0
    mask_size: int | None = None
    mask_batch_size: int = 256
    image_batch_size: int = 16
    min_island: int = 0
    device: str = "auto"
    overwrite: bool = False
    keep_intermediate: bool = True
    progress: bool = True
    quality: bool = True

    def check(self) -> None:
        check_positive("count", self.count)
        check_choice("reference_split", self.reference_split, ("train", "reduced"))
        check_positive("threshold", self.threshold, allow_zero=True)
        check_positive("threshold_at", self.threshold_at)
        check_positive("mask_size", self.mask_size)
        check_positive("mask_batch_size", self.mask_batch_size)
        check_positive("image_batch_size", self.image_batch_size)
        check_positive("min_island", self.min_island, allow_zero=True)


def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry (``conf/synthesize.yaml``)."""
    settings = SynthesizeSettings.from_config(cfg)
    provenance = synthesize(**asdict(settings))
    print(f"synthetic dataset: {settings.output} ({json.dumps(provenance['filter'])})")
    return provenance
