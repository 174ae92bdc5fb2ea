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
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from synthseg import __version__
from synthseg.data.manifest import check_files, read_provenance, read_stats, write_provenance
from synthseg.errors import InputError
from synthseg.settings import Settings, check_choice, check_device, check_positive
from synthseg.synth.critic import METHODS
from synthseg.synth.generate_images import BACKGROUNDS
from synthseg.synth.generate_masks import BYTES_PER_MASK_ESTIMATE, check_positions
from synthseg.synth.zscore_position import REFERENCE_BY
from synthseg.utils.atomic import check_free_space, sibling
from synthseg.utils.outputs import (
    DATASET_LATER,
    check_output,
    check_replaceable,
    claim_output,
    lock_path,
    output_lock,
    remove_own,
)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (a folder: of its best snapshot is recorded by generate-masks instead)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SynthesizeSettings(Settings):
    """``conf/synthesize.yaml``.

    Attributes:
        pgan: PGAN snapshot, training checkpoint, or run folder (its best-SWD snapshot is used).
        spade: SPADE training checkpoint or generator snapshot.
        reference: the prepared dataset the filter compares against (its own training data).
        output: the synthetic dataset folder.
        count: masks generated before filtering (the paper: 100,000).
        reference_split: ``train`` (full instance) or ``reduced`` (the reduced instance's 20 %).
        include_empty: empty real masks in the filter's reference (the paper: the entire real dataset).
        full_resolution_only: for a run folder, pick the best snapshot among full-resolution ticks only
            (the paper: among all ticks; see :func:`synthseg.synth.select.run`).
        threshold, threshold_at: the filter threshold and the side length it is stated for.
        mask_size: side of the generated masks (None: the training data's); SPADE must have been trained at
            this size. Masks smaller than the reference are filtered against the reference reduced to their
            size.
        min_island: remove foreground islands smaller than this many pixels from the generated masks before
            the filter (:func:`synthseg.synth.generate_masks.remove_islands`); 0: off, as the paper.
        positions: a slice-conditional PGAN's axial positions: ``real`` (those of the reference's non-empty
            training slices), ``uniform`` or ``[lo, hi]`` (``generate-masks positions``).
        filter_method, reference_by, position_window, critic, critic_quantile: the filter's ``method`` (zscore,
            critic, both) and its keys of the same names (docs/filter.md).
        background: ``keep`` SPADE's output everywhere (the paper) or ``zero`` it beyond one pixel of the brain,
            as in the skull-stripped real slices (``generate-images background``).
        keep_intermediate: keep ``<output>.work/`` with all generated and all kept masks.
        quality: measure what needs no feature extractor (diversity, memorisation, label maps) into
            ``<output>/quality/`` (docs/quality.md); FD/KID come later, from the report's real-data U-Net.
    """

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
    positions: str | tuple[float, ...] = "real"
    filter_method: str = "zscore"
    reference_by: str = "all"
    position_window: float = 2.0
    critic: str | None = None
    critic_quantile: float = 0.05
    device: str = "auto"
    overwrite: bool = False
    background: str = "keep"
    keep_intermediate: bool = True
    progress: bool = True
    quality: bool = True

    def check(self) -> None:
        check_device("device", self.device)
        check_positive("count", self.count)
        check_choice("reference_split", self.reference_split, ("train", "reduced"))
        check_positive("threshold", self.threshold, allow_zero=True)
        check_positive("threshold_at", self.threshold_at)
        check_positive("mask_size", self.mask_size)
        check_positive("mask_batch_size", self.mask_batch_size)
        check_positive("image_batch_size", self.image_batch_size)
        check_positive("min_island", self.min_island, allow_zero=True)
        check_positions(self.positions)
        check_choice("filter_method", self.filter_method, METHODS)
        check_choice("background", self.background, BACKGROUNDS)
        check_choice("reference_by", self.reference_by, REFERENCE_BY)
        check_positive("position_window", self.position_window, allow_zero=True)
        if not 0.0 <= self.critic_quantile < 1.0:
            raise InputError(f"critic_quantile must be in [0, 1), got {self.critic_quantile}")

    def check_inputs(self) -> None:
        """Before any mask is made: the inputs exist and differ, the reference is a readable dataset with real
        training masks, and the masks the PGAN will make are the size the SPADE paints and the filter can compare
        (a SPADE trained at 32 given masks of 64 used to be refused only after every mask was generated)."""
        from synthseg.synth import filter as zfilter
        from synthseg.synth.generate_images import load_generator
        from synthseg.synth.generate_masks import load_mask_generator

        for name, path in (("pgan", self.pgan), ("spade", self.spade), ("reference", self.reference)):
            if not Path(path).exists():
                raise InputError(f"{name}={path}: not found")
        if Path(self.pgan).resolve() == Path(self.spade).resolve():
            raise InputError(f"pgan={self.pgan} and spade={self.spade} are the same file")
        refs = zfilter.reference_items(
            self.reference, self.reference_split
        )  # manifest, ids and paths checked
        check_files(self.reference)
        painter = load_generator(self.spade).generator
        pgan, meta = load_mask_generator(self.pgan)
        size = int(self.mask_size or meta.get("dataset_size") or pgan.resolution)
        given = (
            f"mask_size={size}" if self.mask_size else f"the PGAN's masks ({size}x{size}, its training size)"
        )
        if painter.image_size != size:
            raise InputError(
                f"{given}: the SPADE {self.spade} paints {painter.image_size}x{painter.image_size} label maps; "
                f"set mask_size={painter.image_size} (or give a SPADE trained at {size}x{size})"
            )
        side = zfilter.read_mask(refs[0].label).shape[0]
        if side % size:
            raise InputError(
                f"{given}: the reference {self.reference} is {side}x{side}, not a whole multiple of {size} "
                "(the filter compares masks with the reference reduced to their size)"
            )


def run(settings: SynthesizeSettings) -> Path:
    """Make a synthetic dataset of at most ``settings.count`` pairs (fewer: the filter drops some masks) in
    ``settings.output`` and return it. Its ``prepare.json`` holds the images' provenance and, under
    ``synthesize``, the whole run's: both checkpoints with their SHA-256, the seed, the filter's summary.
    """
    s = settings
    for name, path in (("pgan", s.pgan), ("spade", s.spade), ("reference", s.reference)):
        if not Path(path).exists():
            raise InputError(f"{name}={path}: not found")
    inputs = [s.pgan, s.spade, s.reference]
    output = check_output(s.output, command="synthesize", inputs=inputs, overwrite=s.overwrite)
    # Refuse before hours of generation when the disk cannot hold the result: generated and kept masks
    # (the estimates of generate-masks) plus image and label of every pair (as generate-images estimates).
    try:
        side = int(read_stats(s.reference).get("size") or 256)
    except (InputError, ValueError, AttributeError):
        side = 256
    check_free_space(
        output.parent if output.parent.exists() else Path.cwd(),
        int(s.count) * (2 * BYTES_PER_MASK_ESTIMATE + side * side * 3),
        f"{s.count} synthetic pairs and their masks",
    )
    s.check_inputs()  # after the cheap checks: it loads both networks
    # One run per output for the whole run: the work folder beside it is opened, cleaned and renamed only under
    # the output's lock (a second synthesize into it used to replace the first one's kept masks meanwhile).
    with output_lock(output):
        check_replaceable(output, "synthesize", s.overwrite)
        _make(s, output)
    return output


def _make(s: SynthesizeSettings, output: Path) -> None:
    """The stages of :func:`run`, under the output's lock: masks and kept masks in ``<output>.work/``, then the
    images into the claimed output."""
    from synthseg.synth import filter as zfilter
    from synthseg.synth import generate_images, generate_masks, select

    inputs = [s.pgan, s.spade, s.reference]
    work = sibling(output, "work")
    masks_dir, kept_dir = work / "masks", work / "kept"
    selected = (
        select.run(select.SelectSettings(run=s.pgan, full_resolution_only=s.full_resolution_only))
        if Path(s.pgan).is_dir()
        else None
    )
    generate_masks.run(
        generate_masks.GenerateMasksSettings(
            checkpoint=selected["snapshot"] if selected else s.pgan,
            count=s.count,
            output=str(masks_dir),
            seed=s.seed,
            batch_size=s.mask_batch_size,
            size=s.mask_size,
            device=s.device,
            min_island=s.min_island,
            positions=s.positions,
            reference=s.reference,
            overwrite=True,
            progress=s.progress,
        )
    )
    mask_record = read_provenance(masks_dir) or {}
    zfilter.run(
        zfilter.FilterSettings(
            masks=str(masks_dir),
            reference=s.reference,
            output=str(kept_dir),
            reference_split=s.reference_split,
            include_empty=s.include_empty,
            threshold=s.threshold,
            threshold_at=s.threshold_at,
            method=s.filter_method,
            reference_by=s.reference_by,
            position_window=s.position_window,
            critic=s.critic,
            critic_quantile=s.critic_quantile,
            device=s.device,
            overwrite=True,
            progress=s.progress,
        )
    )
    summary = zfilter.read_summary(kept_dir)
    if summary["kept"] == 0:
        # Nothing to paint: one line that says why, not a complaint about an empty manifest further on.
        raise FilterKeptNothing(
            f"{kept_dir}: the filter ({s.filter_method}) kept none of the {s.count} generated masks "
            "(filter.json says why; filter_discarded.png / critic_discarded.png show them): train the PGAN "
            "longer, or check its samples"
        )
    pgan_file = Path(mask_record.get("checkpoint") or s.pgan)
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
        "spade": {"path": str(s.spade), "sha256": file_sha256(s.spade)},
        "reference": str(s.reference),
        "reference_split": s.reference_split,
        "include_empty": s.include_empty,
        "full_resolution_only": s.full_resolution_only,
        "min_island": s.min_island,
        "island_pixels_removed": mask_record.get("island_pixels_removed", 0),
        "positions": mask_record.get("positions"),
        "seed": s.seed,
        "generated": s.count,
        "filter": {"threshold": s.threshold, "threshold_at": s.threshold_at, **summary},
    }
    with claim_output(
        output, command="synthesize", inputs=inputs, overwrite=s.overwrite, later=DATASET_LATER
    ) as tmp:
        images = generate_images.run(
            generate_images.GenerateImagesSettings(
                checkpoint=s.spade,
                masks=str(kept_dir),
                output=str(tmp / "dataset"),
                batch_size=s.image_batch_size,
                device=s.device,
                seed=s.seed,
                background=s.background,
                overwrite=True,
                progress=s.progress,
            )
        )
        image_record = read_provenance(images) or {}
        for entry in images.iterdir():
            shutil.move(str(entry), tmp / entry.name)
        images.rmdir()
        lock_path(images).unlink(missing_ok=True)
        provenance["images"] = {
            k: image_record.get(k)
            for k in ("sequences", "checkpoint_train_max", "seconds", "images_per_second")
        }
        write_provenance(tmp, {**(read_provenance(tmp) or {}), "synthesize": provenance})
        if s.quality:
            measure_quality(tmp, s.reference, s.reference_split, s.seed)
    if not s.keep_intermediate:  # the masks' and the filter's own folders, then the (then empty) work folder
        remove_own(masks_dir)
        remove_own(kept_dir)
        for lock in (lock_path(masks_dir), lock_path(kept_dir)):
            lock.unlink(missing_ok=True)
        if work.is_dir() and not any(work.iterdir()):
            work.rmdir()


class FilterKeptNothing(InputError):
    """The filter discarded every generated mask, so there is no synthetic pair to make."""


def measure_quality(
    dataset: Path, reference: str | os.PathLike[str], reference_split: str, seed: int
) -> None:
    """What needs no feature extractor (diversity, memorisation, label maps) into ``dataset/quality/``.

    Runs inside the claimed temporary folder, so the quality folder is part of what the command wrote.
    """
    from synthseg.metrics.quality import QualitySettings, measure

    split = "reduced" if reference_split == "reduced" else "train"
    try:
        measure(
            QualitySettings(
                synthetic=str(dataset),
                real=str(reference),
                output=str(dataset / "quality"),
                extractor=None,
                real_split=split,
                seed=seed,
            )
        )
    except (InputError, ValueError) as err:
        # The synthetic set is complete; too few or too small pairs to measure is not a failure of it.
        print(f"synthesize: quality not measured ({err})")


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg synthesize`` (``conf/synthesize.yaml``)."""
    settings = SynthesizeSettings.from_config(cfg)
    output = run(settings)
    provenance = (read_provenance(output) or {}).get("synthesize") or {}
    print(f"synthetic dataset: {settings.output} ({json.dumps(provenance.get('filter'))})")
    return output
