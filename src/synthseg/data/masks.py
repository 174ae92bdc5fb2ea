"""The masks of a folder, for the commands that read masks (filter, generate-images, synthesize, report).

A dataset folder is read through its manifest (``data/manifest.py``); a plain folder of PNGs by file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthseg.data.manifest import is_dataset_folder, named_file, read_manifest
from synthseg.data.names import check_id
from synthseg.data.sequences import DEFAULT_SEQUENCES
from synthseg.errors import InputError


@dataclass(frozen=True)
class MaskItem:
    """One mask file of a folder: its id, label path and image path (None when the folder has no images).

    ``image`` is the first sequence's; ``images`` holds every sequence's (in ``sequences`` order) when all exist.
    ``position``: the normalised axial position its manifest records (a slice-conditional PGAN's mask), or None.
    """

    id: str
    label: Path
    image: Path | None = None
    images: tuple[Path, ...] = ()
    sequences: tuple[str, ...] = DEFAULT_SEQUENCES
    position: float | None = None


def list_masks(
    folder: str | os.PathLike[str], key: str | None = None, split: str | None = None
) -> list[MaskItem]:
    """The masks of a dataset folder (manifest order) or of a plain folder of PNGs (name order).

    A dataset folder has ``manifest.csv``; a folder with ``labels/`` but no manifest is read from ``labels/``
    (images from ``images/<id>.png`` when present); otherwise every ``*.png`` of the folder is a mask.

    Args:
        key: the setting that named the folder, for errors (``masks`` -> ``masks=DIR: ...``).
        split: only a dataset folder's rows of this split (``manifest.SPLITS``); None: every row.
    """
    folder = Path(folder)
    named = f"{key}={folder}" if key else str(folder)
    if not folder.is_dir():
        raise InputError(f"{named}: masks folder not found")
    items: list[MaskItem] = []
    if split is not None and not is_dataset_folder(folder):
        raise InputError(f"split={split} needs a dataset folder (manifest.csv), got {named}")
    if is_dataset_folder(folder):
        manifest = read_manifest(folder)
        recorded = manifest.recorded_position
        rows = range(len(manifest)) if split is None else manifest.rows(split).tolist()
        if not len(rows):
            raise InputError(f"{named}: its manifest has no {split} rows")
        for i in rows:
            # Every file the manifest names must exist: a deleted image is an error, not a mask without one.
            label = named_file(folder, manifest.label[i])
            paths = [named_file(folder, p) if p else None for p in manifest.images[i]]
            found = tuple(p for p in paths if p is not None)
            position = float(recorded[i]) if recorded is not None and np.isfinite(recorded[i]) else None
            items.append(
                MaskItem(
                    str(manifest.ids[i]),
                    label,
                    paths[0],
                    found if len(found) == len(paths) else (),
                    manifest.sequences,
                    position,
                )
            )
    else:
        labels = folder / "labels" if (folder / "labels").is_dir() else folder
        for path in sorted(labels.glob("*.png")):
            check_id(path.stem, str(path), "file name")  # it becomes the id of every file made from it
            image = folder / "images" / path.name if labels != folder else None
            found = image if image is not None and image.is_file() else None
            items.append(MaskItem(path.stem, path, found, (found,) if found else ()))
    if not items:
        raise InputError(f"{named}: no label PNGs found (expected manifest.csv, labels/*.png or *.png)")
    return items
