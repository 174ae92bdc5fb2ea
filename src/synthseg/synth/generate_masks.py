"""``synthseg generate-masks``: new 7-class label maps from a trained PGAN generator (its EMA weights).

The output is a dataset folder (docs/dataset_layout.md) without images: ``labels/synth_<index:06d>.png``
(8-bit grayscale, values 0..6, the size of the prepared labels), ``manifest.csv`` (``source=synthetic``,
empty ``image`` column), ``stats.json`` (label statistics) and ``prepare.json`` (provenance). The filter
and the image generation read it as it is.

The generator runs at the growing stage its weights were saved at (a snapshot of an early tick makes
coarse masks, nearest-upsampled, as the SWD of that tick saw them). Masks are made in batches under
``torch.inference_mode``, written while the next batch is generated, and never held all at once, so memory
stays constant whatever the count. Latents come in blocks of :data:`LATENT_BLOCK` seeded from
``(seed, block)``: the same seed gives the same masks whatever the batch size or device (up to the device's
floating-point differences).

A slice-conditional generator (``condition=slice``) makes each mask at a normalised axial position:
``positions=real`` (default) draws them from the non-empty real training slices of ``reference`` (the prepared
dataset, its manifest's ``case``/``slice``), ``uniform`` from [0, 1], ``[lo, hi]`` from that range; like the
latents, the position of mask ``i`` depends only on the seed and ``i``. The manifest records each mask's
position (its ``position`` column). An unconditional generator ignores the default and refuses any other.

A crash costs at most one batch: the work happens in ``<output>.partial-resume/`` with a progress record
written after every batch whose files are on disk, a re-run with the same settings continues from there,
and the finished folder is renamed into place (docs/reliability.md).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from scipy import ndimage
from tqdm import tqdm

from synthseg import __version__
from synthseg.checkpoint import CheckpointError, load_network, safe_load
from synthseg.data.labels import NUM_CLASSES, net_to_labels, resize_labels
from synthseg.data.manifest import (
    MANIFEST,
    dataset_stats,
    manifest_columns,
    manifest_header,
    read_manifest,
    read_provenance,
    synthetic_row,
    write_provenance,
    write_stats,
)
from synthseg.data.pngio import write_label8
from synthseg.errors import InputError
from synthseg.networks.pgan import PGANGenerator
from synthseg.progressive import SCHEDULE_SETTINGS, ProgressiveSchedule
from synthseg.settings import Settings, check_choice, check_device, check_positive, resolve_device
from synthseg.synth import select
from synthseg.utils.atomic import check_free_space, sibling, write_text_atomic
from synthseg.utils.fastpath import autocast_dtype
from synthseg.utils.outputs import (
    DATASET_LATER,
    check_output,
    check_replaceable,
    clean_leftovers,
    install_output,
    output_lock,
    remove_own,
)

LATENT_BLOCK = 1024
BYTES_PER_MASK_ESTIMATE = 2_000  # PNG label maps compress to a few hundred bytes; generous margin
PROGRESS = "progress.json"
# What the resume folder holds (the finished output's files, written into it before the rename, included).
RESUME_FILES = ("labels/*", PROGRESS, "manifest.part.csv", "manifest.csv", "stats.json", "prepare.json", ".*")


def resume_folder(output: str | os.PathLike[str]) -> Path:
    """The work folder of ``output``: ``<output>.partial-resume/``, kept across a crash so a re-run resumes.

    Its name is fixed and derived from the output like every other work path
    (:func:`synthseg.utils.atomic.sibling`), it is opened, cleaned and renamed only under the output's lock, and
    it holds the finished batches' label PNGs, their manifest rows and ``progress.json``.
    """
    return sibling(output, "resume")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_progress(work: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The progress record of an interrupted run with the same settings, else a fresh one (work emptied)."""
    fresh = {
        "settings": settings,
        "done": 0,
        "class_counts": [0] * NUM_CLASSES,
        "empty": 0,
        "manifest_bytes": 0,
    }
    try:
        state = json.loads((work / PROGRESS).read_text())
        if state.get("settings") == json.loads(json.dumps(settings)):
            return state
    except (OSError, ValueError):
        pass
    if work.exists():  # another configuration (or no record): start over, deleting only its own files
        remove_own(work, patterns=RESUME_FILES, lock=False)  # the caller holds the output's lock
    work.mkdir(parents=True)
    return fresh


def load_mask_generator(checkpoint: str | os.PathLike[str]) -> tuple[PGANGenerator, dict[str, Any]]:
    """The EMA generator from a snapshot, a full training checkpoint, or a run folder (best SWD snapshot).

    Returns:
        The generator (eval mode, CPU) and metadata: ``source`` (the file), ``tick``/``kimg`` when known,
        ``resolution``/``alpha`` (the growing stage the weights were trained to: a snapshot taken at 32x32 of
        a 256x256 generator must run at 32x32), ``dataset_size`` (side of the training slices) when known,
        and ``selected`` for a run folder.
    """
    path = Path(checkpoint)
    meta: dict[str, Any] = {}
    if path.is_dir():
        best = select.run(select.SelectSettings(run=str(path)))
        meta["selected"] = best
        path = Path(best["snapshot"])
    obj = safe_load(path)
    net, found = load_network(path, checkpoint=obj)
    if not isinstance(net, PGANGenerator):
        raise CheckpointError(f"{path}: holds a {type(net).__name__}, not a PGAN generator")
    meta.update(found)
    pgan = obj.get("pgan")
    if isinstance(pgan, dict) and "resolution" not in found:
        meta.update(_stage_of_old_checkpoint(net, obj, path))
    meta["source"] = str(path)
    return net, meta


def _stage_of_old_checkpoint(net: PGANGenerator, obj: dict[str, Any], path: Path) -> dict[str, Any]:
    """The stage of a training checkpoint written before 0.2.0 (which did not record it): the run's schedule
    (its hyperparameters, the schedule's own defaults for the rest) at the images it had seen."""
    hparams = obj.get("hyper_parameters") or {}
    settings = {key: hparams[key] for key in SCHEDULE_SETTINGS if hparams.get(key) is not None}
    try:
        stage = ProgressiveSchedule(net.resolution, **settings).at(int(obj["pgan"]["images_seen"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot derive the growing stage of this PGAN checkpoint ({err})"
        ) from None
    return {
        "kimg": stage.kimg,
        "tick": obj["pgan"].get("tick"),
        "resolution": stage.resolution,
        "alpha": stage.alpha,
        "dataset_size": obj["pgan"].get("dataset_size"),
    }


def block_latents(seed: int, block: int, latent_dim: int) -> torch.Tensor:
    """Latents of masks ``block * LATENT_BLOCK ...``: (LATENT_BLOCK, latent_dim), seeded by (seed, block)."""
    state = int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1, dtype=np.uint64)[0])
    return torch.randn(LATENT_BLOCK, latent_dim, generator=torch.Generator().manual_seed(state))


def latents(seed: int, start: int, stop: int, latent_dim: int) -> torch.Tensor:
    """Latents of masks ``start .. stop - 1`` (stop - start, latent_dim), independent of how they are batched."""
    parts = []
    for block in range(start // LATENT_BLOCK, (stop - 1) // LATENT_BLOCK + 1):
        lo = max(start, block * LATENT_BLOCK) - block * LATENT_BLOCK
        hi = min(stop, (block + 1) * LATENT_BLOCK) - block * LATENT_BLOCK
        parts.append(block_latents(seed, block, latent_dim)[lo:hi])
    return torch.cat(parts)


POSITION_MODES = ("real", "uniform")


def check_positions(value: str | tuple[float, ...], key: str = "positions") -> None:
    """Refuse a ``positions`` setting other than ``real``, ``uniform`` or a range ``[lo, hi]`` in [0, 1]."""
    if isinstance(value, str):
        check_choice(key, value, POSITION_MODES)
    elif len(value) != 2 or not 0.0 <= value[0] <= value[1] <= 1.0:
        raise InputError(f"{key} must be real, uniform or a range [lo, hi] within [0, 1], got {list(value)}")


def real_positions(reference: str | os.PathLike[str]) -> np.ndarray:
    """The normalised axial positions of a prepared dataset's non-empty real training slices (what a
    conditional PGAN trained on with ``data.drop_empty``), sorted, float32."""
    manifest = read_manifest(reference)
    rows = manifest.rows("train")
    rows = rows[(manifest.source[rows] == "real") & ~manifest.empty[rows]]
    pool = manifest.positions()[rows]
    pool = pool[np.isfinite(pool)]
    if pool.size == 0:
        raise InputError(f"reference={reference}: no non-empty real training slice with an axial position")
    return np.sort(pool).astype(np.float32)


def block_positions(
    seed: int, block: int, mode: str | tuple[float, ...], pool: np.ndarray | None
) -> np.ndarray:
    """Positions of masks ``block * LATENT_BLOCK ...`` (LATENT_BLOCK,) float32, seeded by (seed, block):
    drawn from ``pool`` (``real``), from [0, 1] (``uniform``) or from ``[lo, hi]``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(block), 1]))
    if mode == "real":
        assert pool is not None
        return pool[rng.integers(0, len(pool), LATENT_BLOCK)]
    lo, hi = (0.0, 1.0) if mode == "uniform" else (float(mode[0]), float(mode[1]))
    return rng.uniform(lo, hi, LATENT_BLOCK).astype(np.float32)


def mask_positions(
    seed: int, start: int, stop: int, mode: str | tuple[float, ...], pool: np.ndarray | None = None
) -> np.ndarray:
    """Positions of masks ``start .. stop - 1``, independent of how they are batched (as :func:`latents`)."""
    parts = []
    for block in range(start // LATENT_BLOCK, (stop - 1) // LATENT_BLOCK + 1):
        lo = max(start, block * LATENT_BLOCK) - block * LATENT_BLOCK
        hi = min(stop, (block + 1) * LATENT_BLOCK) - block * LATENT_BLOCK
        parts.append(block_positions(seed, block, mode, pool)[lo:hi])
    return np.concatenate(parts)


def _position_pool(
    generator: PGANGenerator, positions: str | tuple[float, ...], reference: str | None
) -> tuple[bool, np.ndarray | None]:
    """(conditional, the real positions to draw from): the rule for ``positions`` and an unconditional generator."""
    if generator.condition == "none":
        if positions != "real":
            raise InputError(
                f"positions={positions if isinstance(positions, str) else list(positions)}: the generator is not "
                "slice-conditional (condition=none): leave positions at real (ignored)"
            )
        return False, None
    if positions != "real":
        return True, None
    if not reference:
        raise InputError(
            "positions=real: a slice-conditional generator draws positions from the real training slices: give "
            "reference=DIR (the prepared dataset it was trained on), or positions=uniform"
        )
    return True, real_positions(reference)


# 8-connected within a mask, never across the batch axis.
_ISLAND_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_ISLAND_STRUCTURE[1] = True


def remove_islands(masks: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Set foreground islands smaller than ``min_size`` pixels to background.

    A short PGAN run leaves speckle of one or two pixels where the real masks are always background (the
    corners of the image); the Z-score filter, rightly, discards a mask for any of them. An island is an
    8-connected group of non-background pixels, whatever its classes; the brain and everything touching it
    form one island and are kept as they are.

    Args:
        masks: (N, H, W) class indices.
        min_size: islands of fewer pixels are removed; 0 returns ``masks`` unchanged.

    Returns:
        The cleaned masks (a new array when anything changed) and the number of pixels set to background.
    """
    if min_size <= 0 or masks.size == 0:
        return masks, 0
    components, _ = ndimage.label(masks > 0, structure=_ISLAND_STRUCTURE)
    sizes = np.bincount(components.ravel())
    small = sizes < min_size
    small[0] = False  # background
    drop = small[components]
    removed = int(drop.sum())
    if removed == 0:
        return masks, 0
    cleaned = masks.copy()
    cleaned[drop] = 0
    return cleaned, removed


def _write_batch(folder: Path, ids: list[str], masks: np.ndarray) -> None:
    for sid, mask in zip(ids, masks, strict=True):
        write_label8(folder / f"{sid}.png", mask)


@dataclass(frozen=True)
class GenerateMasksSettings(Settings):
    """``conf/generate_masks.yaml``; the keys are described there and in :func:`run`."""

    REQUIRED = {"checkpoint": "PATH", "count": "N", "output": "DIR"}

    checkpoint: str
    count: int
    output: str
    seed: int = 0
    batch_size: int = 256
    size: int | None = None
    device: str = "auto"
    autocast: str | None = None
    min_island: int = 0
    positions: str | tuple[float, ...] = "real"
    reference: str | None = None
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        check_device("device", self.device)
        check_positions(self.positions)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise InputError(f"count must be a positive number of masks, got {self.count}")
        if self.count > 999_999:
            raise InputError(f"count={self.count}: ids have 6 digits (synth_000000 .. synth_999999)")
        check_positive("batch_size", self.batch_size)
        check_positive("size", self.size)
        if isinstance(self.min_island, bool) or self.min_island < 0:
            raise InputError(f"min_island must be 0 (off) or a number of pixels, got {self.min_island}")
        autocast_dtype(self.autocast)


def run(settings: GenerateMasksSettings) -> Path:
    """Write ``settings.count`` generated masks as the dataset folder ``settings.output`` and return it; its
    ``prepare.json`` records the provenance (checkpoint, tick, stage, seed, size, empty fraction, speed).

    ``min_island`` > 0 sets foreground islands (8-connected groups of non-background pixels) smaller than
    that many pixels, at the output size, to background (:func:`remove_islands`); 0 (the paper) writes the
    generator's masks as they are.

    ``autocast`` (``bf16`` or ``fp16``, GPU) runs the generator in mixed precision: faster, and the masks
    may differ from float32 ones where a pixel's value lies near the rounding boundary between two classes.
    """
    checkpoint, count, seed, batch_size = (
        settings.checkpoint,
        settings.count,
        settings.seed,
        settings.batch_size,
    )
    autocast, min_island, overwrite = settings.autocast, settings.min_island, settings.overwrite
    amp_dtype = autocast_dtype(autocast)
    output = check_output(settings.output, command="generate-masks", inputs=[checkpoint], overwrite=overwrite)
    generator, meta = load_mask_generator(checkpoint)
    stage_resolution = int(meta.get("resolution") or generator.resolution)
    alpha = float(meta.get("alpha", 1.0))
    if stage_resolution not in generator.resolutions or not 0.0 <= alpha <= 1.0:
        raise InputError(
            f"checkpoint={checkpoint}: stage {stage_resolution}x{stage_resolution}, alpha {alpha} does not fit "
            "the generator"
        )
    size = int(settings.size or meta.get("dataset_size") or generator.resolution)
    if size < 4 or size & (size - 1):
        raise InputError(f"size={size}: must be a power of two")
    if not (size % stage_resolution == 0 or stage_resolution % size == 0):
        raise InputError(
            f"size={size}: cannot be reached from the generator's {stage_resolution}x{stage_resolution}"
        )
    dev = resolve_device(settings.device)
    generator = generator.to(dev)
    conditional, pool = _position_pool(generator, settings.positions, settings.reference)
    position_mode = settings.positions if isinstance(settings.positions, str) else list(settings.positions)
    columns = manifest_columns(position=conditional)
    check_free_space(
        output.parent if output.parent.exists() else Path.cwd(),
        count * BYTES_PER_MASK_ESTIMATE,
        f"{count} masks",
    )
    # One run per output: the lock covers the shared work folder too (its clean-up and resume).
    with output_lock(output):
        clean_leftovers(output)
        check_replaceable(output, "generate-masks", overwrite)
        work = resume_folder(output)
        resume_key = {  # a re-run resumes only with all of these the same
            "checkpoint_sha256": _file_digest(Path(meta["source"])),
            "generator": generator.init_args,
            "stage_resolution": stage_resolution,
            "alpha": alpha,
            "count": count,
            "seed": int(seed),
            "batch_size": batch_size,
            "size": size,
            "autocast": autocast,
            "min_island": int(min_island),
            "positions": position_mode if conditional else None,
            "position_pool_sha256": hashlib.sha256(pool.tobytes()).hexdigest() if pool is not None else None,
        }
        state = _load_progress(work, resume_key)
        resumed_from = int(state["done"])
        class_counts = np.asarray(state["class_counts"], np.int64)
        empty = int(state["empty"])
        islands = int(state.get("island_pixels", 0))
        labels_dir = work / "labels"
        labels_dir.mkdir(parents=True, exist_ok=True)
        manifest_part = work / "manifest.part.csv"
        with open(manifest_part, "a+b") as raw:  # drop rows appended after the last progress record
            raw.truncate(int(state["manifest_bytes"]))
        started = time.perf_counter()
        bar = tqdm(
            total=count,
            initial=resumed_from,
            desc="generating masks",
            unit="mask",
            disable=not settings.progress,
        )

        def commit(batch: tuple[Future[None], int, list[dict[str, Any]], np.ndarray, int, int]) -> None:
            # A batch counts as done only once its files are on disk: then its rows and the progress record.
            future, stop, rows, counts, batch_empty, batch_islands = batch
            future.result()
            nonlocal empty, islands
            with open(manifest_part, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=list(columns)).writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
            class_counts[:] += counts
            empty += batch_empty
            islands += batch_islands
            state.update(
                done=stop,
                class_counts=class_counts.tolist(),
                empty=empty,
                island_pixels=islands,
                manifest_bytes=manifest_part.stat().st_size,
            )
            write_text_atomic(work / PROGRESS, json.dumps(state))
            bar.update(len(rows))

        with ThreadPoolExecutor(max_workers=1) as writer:
            pending = None
            for start in range(resumed_from, count, batch_size):
                stop = min(count, start + batch_size)
                where = mask_positions(seed, start, stop, settings.positions, pool) if conditional else None
                with torch.inference_mode():
                    z = latents(seed, start, stop, generator.latent_dim).to(dev)
                    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        if where is None:
                            x = generator(z, stage_resolution, alpha)
                        else:
                            x = generator(z, stage_resolution, alpha, torch.from_numpy(where).to(dev))
                    labels = net_to_labels(x, NUM_CLASSES, generator.index_order)
                    masks = resize_labels(labels, size, NUM_CLASSES).cpu().numpy()
                masks, batch_islands = remove_islands(masks, int(min_island))
                ids = [f"synth_{i:06d}" for i in range(start, stop)]
                if pending is not None:
                    commit(pending)  # one batch in flight: constant memory
                future = writer.submit(_write_batch, labels_dir, ids, masks)
                counts = np.stack([(masks == c).sum(axis=(1, 2)) for c in range(NUM_CLASSES)], axis=1)
                rows, batch_empty = [], 0
                for i, (sid, mask_counts) in enumerate(zip(ids, counts, strict=True)):
                    is_empty = int(mask_counts[1:].sum() == 0)
                    batch_empty += is_empty
                    at = None if where is None else float(where[i])
                    rows.append(synthetic_row(sid, mask_counts, has_image=False, position=at))
                pending = (future, stop, rows, counts.sum(axis=0), batch_empty, batch_islands)
            if pending is not None:
                commit(pending)
        bar.close()
        # Still ours or empty? Asked before the work folder is finalised, so a refusal leaves it resumable.
        check_replaceable(output, "generate-masks", overwrite)
        # The finished folder: manifest, statistics, provenance, then the marker and the rename.
        (work / MANIFEST).write_bytes(
            manifest_header(position=conditional).encode() + manifest_part.read_bytes()
        )
        manifest_part.unlink()
        (work / PROGRESS).unlink()
        seconds = time.perf_counter() - started
        write_stats(
            work,
            dataset_stats(source="synthetic", size=size, splits={"train": count}, class_counts=class_counts),
        )
        provenance = {
            "command": "generate-masks",
            "version": __version__,
            "checkpoint": meta.get("source"),
            "selected": meta.get("selected"),
            "tick": meta.get("tick"),
            "kimg": meta.get("kimg"),
            "generator": generator.init_args,
            "stage_resolution": stage_resolution,
            "alpha": alpha,
            "count": count,
            "seed": seed,
            "batch_size": batch_size,
            "size": size,
            "device": str(dev),
            "autocast": autocast,
            "empty": empty,
            "empty_fraction": empty / count,
            "min_island": int(min_island),
            "island_pixels_removed": islands,
            "condition": generator.condition,
            "index_order": generator.index_order,
            "positions": position_mode if conditional else None,
            "reference": settings.reference if pool is not None else None,
            "resumed_from": resumed_from,
            "seconds": seconds,
            "masks_per_second": (count - resumed_from) / seconds if seconds > 0 else None,
        }
        write_provenance(work, provenance)
        # The marker last, then the completed work folder becomes the output in one rename.
        install_output(work, output, command="generate-masks", overwrite=overwrite, later=DATASET_LATER)
    return output


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg generate-masks`` (``conf/generate_masks.yaml``)."""
    settings = GenerateMasksSettings.from_config(cfg)
    output = run(settings)
    result = read_provenance(output) or {}
    print(
        f"wrote {result['count']} masks ({100 * result['empty_fraction']:.2f} % empty) of "
        f"{result['size']}x{result['size']} to {settings.output} in {result['seconds']:.1f} s "
        f"({result['masks_per_second']:.0f} masks/s) from {result['checkpoint']}"
    )
    print(json.dumps({k: result[k] for k in ("count", "size", "seed", "checkpoint", "tick", "kimg")}))
    return output
