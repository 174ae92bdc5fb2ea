"""Export real and/or synthetic dataset folders as an nnU-Net (v2) raw dataset.

``synthseg export source=DIR output=DIR format=nnunet classes=7`` writes::

    <output>/Dataset<NNN>_<Name>/
      imagesTr/<case>_000k.png   16-bit slice of sequence k, copied byte for byte (lossless)
      labelsTr/<case>.png        8-bit label map reduced to 7, 4 or 2 classes (or the tumor regions' labels)
      imagesTs/<case>_000k.png   the sources' test split, when ``test=true`` (and labelsTs/ for evaluation)
      dataset.json               channel_names {"0": "T1c", ...} in channel order, labels, numTraining, ...
      splits_final.json          cross-validation folds grouped by subject (no subject in two folds)
      cases.csv                  which source folder and slice id each case comes from

Every sequence of the sources (or those of ``sequences``, in that order) is one channel ``_000k``. Case
identifiers are the slice ids; with several sources every case is prefixed ``s<k>_`` (k the source's position
in the list) so that two synthetic sets, both numbered ``synth_000000`` on, cannot collide.

``regions=true`` writes the labels as nnU-Net's own BraTS conversion does (Dataset137): 1 edema, 2 NCR/NET,
3 enhancing, and dataset.json labels as the overlapping regions whole tumor (1, 2, 3), tumor core (2, 3) and
enhancing tumor (3) with ``regions_class_order`` [1, 2, 3], for nnU-Net's region-based training.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import png
from omegaconf import DictConfig
from tqdm import tqdm

from synthseg.data.labels import NUM_CLASSES, check_num_classes, class_names, reduce_labels
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png, write_label8
from synthseg.data.sequences import check_sequences
from synthseg.errors import InputError
from synthseg.settings import Settings
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import check_output, claim_output

log = logging.getLogger(__name__)

FORMATS = ("nnunet",)
SELECTABLE_SPLITS = ("train", "reduced", "val", "test")
# nnU-Net's channel names; only "CT" changes its normalisation, the MR sequences get a z-score each.
CHANNEL_NAMES = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}
# Region labels as nnU-Net's BraTS conversion writes them: our 7-class index -> its label (tissues: 0).
REGION_LABELS = np.array([0, 2, 1, 3, 0, 0, 0], np.uint8)
REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
REGIONS_CLASS_ORDER = [1, 2, 3]
FOLDS_SEED = 12345  # nnU-Net's own seed for its 5-fold split
_CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
PAPER = (
    "M. Foroozandeh and A. Eklund, Synthesizing brain tumor images and annotations by combining progressive "
    "growing GAN and SPADE, arXiv:2009.05946, 2020"
)


@dataclass(frozen=True)
class Case:
    """One exported slice: nnU-Net case name, source folder, slice id, split, and its files."""

    name: str
    source: Path
    id: str
    split: str
    kind: str  # "real" or "synthetic"
    images: tuple[Path, ...]  # one per exported sequence, in channel order
    label: Path
    subject: str  # the cross-validation group: the real case, or the slice itself for synthetic ones


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset<NNN>_<Name>``; nnU-Net wants a 3-digit id (custom datasets: 500..999 by convention)."""
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"dataset_id must be between 1 and 999 (nnU-Net uses 3 digits), got {dataset_id}")
    if not _NAME_RE.match(str(name)):
        raise InputError(f"name must be letters, digits, '_' or '-' only, got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)


def source_sequences(
    sources: Sequence[str | os.PathLike[str]], sequences: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The sequences to export: ``sequences`` (checked, in that order) or the first source's, which every
    source must hold."""
    found = [(Path(s), read_manifest(s).sequences) for s in sources]
    chosen = check_sequences(sequences, "sequences") if sequences else found[0][1]
    for root, have in found:
        missing = [seq for seq in chosen if seq not in have]
        if missing:
            raise InputError(
                f"{root}: holds sequences {list(have)}, not {missing} (export needs {list(chosen)} in every "
                "source; choose them with sequences=[...])"
            )
    return tuple(chosen)


def select_cases(
    sources: Sequence[str | os.PathLike[str]],
    splits: Sequence[str],
    limits: Sequence[int | None] | None = None,
    sequences: Sequence[str] | None = None,
) -> list[Case]:
    """The slices of ``sources`` in the given splits (manifest order), as nnU-Net cases.

    Args:
        sources: dataset folders (prepared or synthetic layout).
        splits: any of ``train``, ``reduced`` (the reduced training set), ``val``, ``test``.
        limits: per source, keep only its first N selected slices (None: all).
        sequences: the channels, in order (None: the first source's sequences).
    """
    sequences = source_sequences(sources, sequences)
    bad = sorted(set(splits) - set(SELECTABLE_SPLITS))
    if bad:
        raise InputError(f"unknown split {bad}: choose from {list(SELECTABLE_SPLITS)}")
    limits = list(limits) if limits is not None else [None] * len(sources)
    if len(limits) != len(sources):
        raise InputError(f"limit has {len(limits)} entries for {len(sources)} sources")
    cases: list[Case] = []
    for k, source in enumerate(sources):
        root = Path(source)
        manifest = read_manifest(root)
        columns = [manifest.sequences.index(seq) for seq in sequences]
        mask = np.zeros(len(manifest), dtype=bool)
        for split in splits:
            if split == "reduced":
                mask |= (manifest.split == "train") & manifest.reduced
            else:
                mask |= manifest.split == split
        rows = np.flatnonzero(mask)
        limit = limits[k]
        if limit is not None:
            if not 0 <= int(limit) <= rows.size:
                raise InputError(
                    f"{root}: limit {limit} is not between 0 and the {rows.size} slices of splits {list(splits)}"
                )
            rows = rows[: int(limit)]
        for i in rows:
            sid = str(manifest.ids[i])
            if not _CASE_RE.match(sid):
                raise InputError(
                    f"{root / 'manifest.csv'}: slice id {sid!r} is not a valid nnU-Net case name"
                )
            images = [str(manifest.images[i, c]) for c in columns]
            if not all(images):
                raise InputError(f"{root}: slice {sid} has no image (export needs image/label pairs)")
            name = f"s{k}_{sid}" if len(sources) > 1 else sid
            kind = str(manifest.source[i])
            # A real subject's slices share one group (the same subject in two sources too); every synthetic
            # slice is its own.
            subject = str(manifest.case[i]) if kind == "real" and manifest.case[i] else name
            cases.append(
                Case(
                    name,
                    root,
                    sid,
                    str(manifest.split[i]),
                    kind,
                    tuple(root / image for image in images),
                    root / manifest.label[i],
                    subject,
                )
            )
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise InputError(f"duplicate slice ids within one source: {dup}")
    return cases


def _image_header(path: Path) -> tuple[int, int]:
    """(height, width) of a 16-bit grayscale PNG, reading only its header."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        width, height, _, info = png.Reader(filename=str(path)).read()
    except (png.Error, OSError, EOFError) as err:  # EOFError: an empty or cut file
        raise InputError(f"{path}: not a readable PNG ({err or type(err).__name__})") from None
    if not info.get("greyscale", False) or info.get("alpha", False) or int(info["bitdepth"]) != 16:
        raise InputError(f"{path}: expected a 16-bit single-channel grayscale PNG")
    return int(height), int(width)


def _write_case(case: Case, images: Path, labels: Path | None, classes: int, regions: bool) -> None:
    shape = _image_header(case.images[0])
    for image in case.images[1:]:
        if _image_header(image) != shape:
            raise InputError(f"{image}: {_image_header(image)} differs from {case.images[0]} {shape}")
    label = read_png(case.label, bitdepth=8, shape=shape)
    if label.size and label.max() >= NUM_CLASSES:
        raise InputError(f"{case.label}: label value {int(label.max())} is not one of the 7 classes 0..6")
    # Images are copied byte for byte: the 16-bit values stay exactly as prepared.
    for k, image in enumerate(case.images):
        shutil.copyfile(image, images / f"{case.name}_{k:04d}.png")
    if labels is not None:
        out = REGION_LABELS[label] if regions else np.asarray(reduce_labels(label, classes))
        write_label8(labels / f"{case.name}.png", out)


def subject_folds(
    cases: Sequence[Case], folds: int = 5, seed: int = FOLDS_SEED
) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: ``folds`` x {train, val} case names, every subject in one fold only.

    Subjects are shuffled with ``seed`` and dealt out in turn, so the folds hold nearly equal subject counts.
    With fewer subjects than ``folds`` there is one fold per subject (none with a single subject).
    """
    subjects = sorted({c.subject for c in cases})
    if len(subjects) < folds:
        wanted, folds = folds, len(subjects) if len(subjects) > 1 else 0
        log.warning("export: %d subjects for folds=%d: %d folds", len(subjects), wanted, folds)
        if not folds:
            return []
    order = np.random.default_rng(seed).permutation(len(subjects))
    fold_of = {subjects[j]: rank % folds for rank, j in enumerate(order)}
    return [
        {
            "train": [c.name for c in cases if fold_of[c.subject] != f],
            "val": [c.name for c in cases if fold_of[c.subject] == f],
        }
        for f in range(folds)
    ]


@dataclass(frozen=True)
class ExportSettings(Settings):
    """``conf/export.yaml``.

    Attributes:
        source: dataset folders, real and/or synthetic (one folder or a list).
        output: the nnU-Net raw folder (``nnUNet_raw``) that receives the dataset folder.
        format: ``nnunet`` (v2 raw layout).
        classes: 7, 4 or 2 (labels reduced with :func:`synthseg.data.labels.reduce_labels`).
        split: the splits that go to imagesTr/labelsTr (``train``, ``reduced``, ``val``; one or a list).
        test: also write the sources' test split to imagesTs/ (and labelsTs/, which nnU-Net ignores).
        limit: per source (or one number for all), the first N training slices only.
        sequences: the channels, in order (None: every sequence of the sources, in their order).
        regions: region labels (whole tumor, tumor core, enhancing) for nnU-Net's region-based training;
            needs ``classes=4``.
        folds: cross-validation folds of ``splits_final.json``, grouped by subject (0: no file).
        dataset_id: nnU-Net dataset id (3 digits).
        name: dataset name.
        overwrite: replace a dataset folder of the same name that this command wrote (never a foreign one).
        progress: show a progress bar.
    """

    REQUIRED = {"source": "DIR", "output": "DIR"}

    source: str | tuple[str, ...]
    output: str
    format: str = "nnunet"
    classes: int = 7
    split: str | tuple[str, ...] = "train"
    test: bool = False
    limit: int | tuple[int | None, ...] | None = None
    sequences: tuple[str, ...] | None = None
    regions: bool = False
    folds: int = 5
    dataset_id: int = 501
    name: str = "SynthSeg"
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"format must be one of {FORMATS}, got {self.format!r}")
        try:
            check_num_classes(self.classes)
        except ValueError as err:
            raise InputError(str(err)) from None
        if self.regions and self.classes != 4:
            raise InputError(
                f"regions=true needs classes=4 (the three tumor classes), got classes={self.classes}"
            )
        if self.folds < 0 or self.folds == 1:
            raise InputError(f"folds must be 0 (no splits_final.json) or at least 2, got {self.folds}")


def run(settings: ExportSettings) -> Path:
    """Write the sources as the nnU-Net raw dataset ``<output>/Dataset<NNN>_<name>`` atomically; return that
    folder (its ``dataset.json`` records the sources, splits, classes, sequences and case counts; ``cases.csv``
    where each case came from)."""
    s = settings
    classes, regions, folds, dataset_id, name, overwrite = (
        s.classes,
        s.regions,
        s.folds,
        s.dataset_id,
        s.name,
        s.overwrite,
    )
    output = Path(s.output)
    sources = [Path(source) for source in _as_list(s.source)]
    if not sources:
        raise InputError("source: give at least one dataset folder")
    resolved = [source.expanduser().resolve() for source in sources]
    twice = next((src for i, src in enumerate(sources) if resolved[i] in resolved[:i]), None)
    if twice is not None:  # refused, not de-duplicated: every slice would be written twice
        raise InputError(f"source lists {twice} more than once (each dataset folder may be exported once)")
    splits = _as_list(s.split)
    if "test" in splits:
        raise InputError("split: the test split goes to imagesTs (test=true), not to the training cases")
    limits = _as_list(s.limit) if not isinstance(s.limit, int) else [s.limit] * len(sources)
    # The rule applies to the dataset folder this command replaces, not to the nnUNet_raw parent.
    folder = check_output(
        Path(output) / dataset_folder_name(dataset_id, name),
        command="export",
        inputs=sources,
        overwrite=overwrite,
    )

    def id_is_free() -> None:
        """nnU-Net needs unique dataset ids across nnUNet_raw: checked up front, and again under a lock on
        nnUNet_raw just before the rename (two exports of one id under two names used to both succeed)."""
        pattern = f"Dataset{int(dataset_id):03d}_*"
        clash = [p.name for p in Path(output).glob(pattern) if p.name != folder.name]
        if clash:
            raise InputError(
                f"{output}: dataset id {int(dataset_id):03d} is taken by {clash[0]} (nnU-Net needs unique ids)"
            )

    id_is_free()

    channels = source_sequences(sources, _as_list(s.sequences) or None)
    train = select_cases(sources, splits, limits or None, channels)
    if not train:
        raise InputError(f"no slices in splits {splits} of {[str(s) for s in sources]}")
    tests = select_cases(sources, ["test"], sequences=channels) if s.test else []
    cv_folds = subject_folds(train, folds) if folds else []

    # Every file the manifests name, before anything is written (one stat each).
    files = [p for c in (*train, *tests) for p in (*c.images, c.label)]
    missing = next((p for p in files if not p.is_file()), None)
    if missing is not None:
        raise InputError(f"{missing}: file not found")
    needed = sum(p.stat().st_size for p in files)
    check_free_space(Path(output), needed, "the nnU-Net dataset")
    with claim_output(
        folder, command="export", inputs=sources, overwrite=overwrite, shared=id_is_free
    ) as tmp:
        groups = [("imagesTr", "labelsTr", train)]
        if tests:
            groups.append(("imagesTs", "labelsTs", tests))
        for images, labels, cases in groups:
            (tmp / images).mkdir()
            (tmp / labels).mkdir()
            for case in tqdm(cases, desc=images, unit="case", disable=not s.progress, leave=False):
                _write_case(case, tmp / images, tmp / labels, classes, regions)
        kinds = {kind: sum(c.kind == kind for c in train) for kind in sorted({c.kind for c in train})}
        labels_json: dict[str, Any] = (
            dict(REGIONS) if regions else {label: index for index, label in enumerate(class_names(classes))}
        )
        shown = "/".join(CHANNEL_NAMES[seq] for seq in channels)
        dataset_json = {
            "channel_names": {str(k): CHANNEL_NAMES[seq] for k, seq in enumerate(channels)},
            "labels": labels_json,
            **({"regions_class_order": list(REGIONS_CLASS_ORDER)} if regions else {}),
            "numTraining": len(train),
            "file_ending": ".png",
            "name": name,
            "description": f"BraTS-style {shown} slices with {'region' if regions else f'{classes}-class'} labels ({', '.join(f'{n} {k}' for k, n in kinds.items())}), exported by synthseg",
            "reference": PAPER,
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "synthseg": {
                "sources": [str(source) for source in sources],
                "splits": splits,
                "classes": classes,
                "sequences": list(channels),
                "regions": regions,
                "folds": len(cv_folds),
                "training_cases": kinds,
                "test_cases": len(tests),
            },
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        if (
            cv_folds
        ):  # nnU-Net reads it from the preprocessed folder: copied there by the user (docs/export.md)
            (tmp / "splits_final.json").write_text(json.dumps(cv_folds, indent=2) + "\n")
        with open(tmp / "cases.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "set", "source", "id", "split", "kind", "subject"])
            for set_name, cases in (("train", train), ("test", tests)):
                writer.writerows(
                    [c.name, set_name, str(c.source), c.id, c.split, c.kind, c.subject] for c in cases
                )
    return folder


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg export`` (``conf/export.yaml``)."""
    settings = ExportSettings.from_config(cfg)
    folder = run(settings)
    info = json.loads((folder / "dataset.json").read_text())
    print(f"synthseg export: {info['numTraining']} training cases, {settings.classes} classes -> {folder}")
    return folder
