"""BraTS and MSD trees: finding cases, their files, reading the tumor labels by name, and tissue maps.

BraTS 2018/2019 (``<root>/HGG/<case>/<case>_{t1ce,seg}.nii[.gz]``), 2020 and 2021 (flat case folders),
2023/2024 GLI (``<case>-{t1c,seg}.nii.gz``) and MSD Task01 (``imagesTr/<case>.nii.gz``, 4-D); the presets,
their label maps and the recognition of a tree are in :mod:`synthseg.data.sources.releases`.

Tumor labels on disk are mapped by their class names onto the 7-class indices 0 background, 1 NCR/NET,
2 edema, 3 enhancing; BraTS 2024's resection cavity becomes CSF by default (setting ``cavity``). Tissue (WM 4, GM 5, CSF 6) comes from FSL FAST outputs beside
the case when present, otherwise from the built-in segmentation in :mod:`synthseg.data.sources.tissue`.

File names are built exactly from the case name and the configured suffixes, never globbed, so FAST's hard
segmentation ``<case>_t1ce_seg`` can never be taken for the tumor annotation ``<case>_seg``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.sequences import SEQUENCES
from synthseg.data.sources.label_check import check_label_order, outside_shares
from synthseg.data.sources.nifti import (
    NIFTI_EXTENSIONS,
    check_same_grid,
    find_nifti,
    read_header,
    read_image,
    read_labels,
)
from synthseg.data.sources.releases import (
    CAVITY_MODES,
    IGNORED_FOLDERS,
    PRESETS,
    TUMOR_CLASS,
    BratsConvention,
    make_convention,
)
from synthseg.errors import InputError

__all__ = ["PRESETS", "BratsConvention", "Case", "find_cases", "check_case", "make_convention"]

# 7-class indices of the tissue classes, indexed by FAST's class code (0 none, 1 CSF, 2 GM, 3 WM).
FAST_TO_CLASS = np.array([0, 6, 5, 4], dtype=np.uint8)
# FAST partial-volume maps in order: pve_0 CSF, pve_1 GM, pve_2 WM.
PVE_CLASSES = ("CSF", "GM", "WM")


@dataclass(frozen=True)
class Case:
    """One case.

    Attributes:
        name: the case name (the folder name, e.g. ``Brats18_2013_2_1``; MSD: the file name ``BRATS_001``).
        group: the group folder it was found in (``HGG``), or ``""``.
        folder: the case folder (MSD: ``imagesTr``).
        t1c: the T1c file, or None when missing.
        seg: the tumor annotation, or None when missing.
        tissue: ``(kind, files)`` of the FAST outputs found: kind ``pve`` (3 files: CSF, GM, WM), ``pveseg`` or
            ``fastseg`` (1 file), or ``("builtin", ())`` when there are none.
        files: ``(sequence, file or None)`` of every canonical sequence, resolved through the preset; a file
            is read only when its sequence is requested.
        seg_alias: the annotation is the release's known misnamed file (BraTS 2020 case 355).
    """

    name: str
    group: str
    folder: Path
    t1c: Path | None
    seg: Path | None
    tissue: tuple[str, tuple[Path, ...]] = field(default=("builtin", ()))
    files: tuple[tuple[str, Path | None], ...] = ()
    seg_alias: bool = False
    # Found while listing, as (kind, line): kind "case" (a broken link), "t1c", "seg", a sequence or "tissue"
    # (a file present as both .nii and .nii.gz); check_case raises those of the files it uses.
    problems: tuple[tuple[str, str], ...] = ()

    def file(self, sequence: str) -> Path | None:
        """The file of a canonical sequence (``t1``, ``t1c``, ``t2``, ``flair``), or None when missing."""
        return self.t1c if sequence == "t1c" else dict(self.files).get(sequence)


def _fast_files(folder: Path, case: str, convention: BratsConvention) -> tuple[str, tuple[Path, ...]]:
    """The best FAST output present: all three pve maps, else pveseg, else FAST's seg."""
    pves = [find_nifti(folder, convention.fast_stem(case, f"pve_{k}")) for k in range(3)]
    if all(p is not None for p in pves):
        return "pve", tuple(p for p in pves if p is not None)
    pveseg = find_nifti(folder, convention.fast_stem(case, "pveseg"))
    if pveseg is not None:
        return "pveseg", (pveseg,)
    fastseg = find_nifti(folder, convention.fast_stem(case, "seg"))
    if fastseg is not None:
        return "fastseg", (fastseg,)
    return "builtin", ()


def _seg_alias(folder: Path) -> Path | None:
    """BraTS 2020 case 355's annotation: the folder's only ``*Segm*.nii[.gz]`` file."""
    found = [
        p for p in folder.iterdir() if "Segm" in p.name and p.name.endswith(NIFTI_EXTENSIONS) and p.is_file()
    ]
    return found[0] if len(found) == 1 else None


def _folder_case(folder: Path, group: str, convention: BratsConvention) -> Case:
    """One case folder. Problems found while listing (a broken link, a file present as both ``.nii`` and
    ``.nii.gz``) are kept per file kind and raised by :func:`check_case` only when that file is used, so that
    ``on_error=skip`` can skip the case and an ambiguous FLAIR does not stop a T1c-only run."""
    name = folder.name
    if not folder.exists():
        problem = f"{folder}: broken symbolic link (its target is missing)"
        return Case(name, group, folder, None, None, problems=(("case", problem),))
    problems: list[tuple[str, str]] = []

    def find(kind: str, stem: str) -> Path | None:
        try:
            return find_nifti(folder, stem)
        except InputError as err:
            problems.append((kind, str(err)))
            return None

    seg = find("seg", f"{name}{convention.seg_suffix}")
    alias = None
    if seg is None and convention.seg_alias and not problems:
        alias = _seg_alias(folder)
    files = tuple(
        (seq, find(seq, f"{name}{convention.suffix(seq)}"))
        for seq in SEQUENCES
        if seq != "t1c" and seq in dict(convention.suffixes)
    )
    t1c = find("t1c", f"{name}{convention.image_suffix}")
    try:
        tissue = _fast_files(folder, name, convention)
    except InputError as err:
        problems.append(("tissue", str(err)))
        tissue = ("builtin", ())
    return Case(
        name=name,
        group=group,
        folder=folder,
        t1c=t1c,
        seg=alias or seg,
        tissue=tissue,
        files=files,
        seg_alias=alias is not None,
        problems=tuple(problems),
    )


def _msd_cases(base: Path, group: str) -> list[Case]:
    """MSD: ``imagesTr/<case>.nii.gz`` (4-D, every sequence) and ``labelsTr/<case>.nii.gz``; macOS ``._*``
    files and ``imagesTs/`` (no labels) are not cases."""
    images = base / "imagesTr"
    if not images.is_dir():
        raise InputError(f"{base}: no imagesTr/ folder (MSD layout)")
    cases = []
    for path in sorted(images.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not path.name.endswith(NIFTI_EXTENSIONS):
            continue
        name = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.name[: -len(".nii")]
        files = tuple((seq, path) for seq in SEQUENCES if seq != "t1c")
        seg = find_nifti(base / "labelsTr", name)
        cases.append(Case(name=name, group=group, folder=images, t1c=path, seg=seg, files=files))
    return cases


def find_cases(root: str | Path, convention: BratsConvention) -> list[Case]:
    """All cases under ``root``, sorted by group then name.

    A case folder is any non-hidden sub-folder of a group folder (or of the root when there are no groups);
    its T1c and seg may be missing (:func:`check_case` reports that). Files (sidecar tables, ``dataset.json``)
    are never cases. MSD: every image in ``imagesTr/``.

    Raises:
        InputError: when the root or all of its group folders are missing, or no case folder is found.
    """
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise InputError(
                f"{root}: is a file, not a folder (source= takes the folder holding the case folders)"
            )
        raise InputError(f"{root}: source folder not found")
    group_dirs: list[tuple[str, Path]]
    if convention.groups:
        group_dirs = [(g, root / g) for g in convention.groups if (root / g).is_dir()]
        if not group_dirs:
            names = ", ".join(f"{g}/" for g in convention.groups)
            raise InputError(
                f"{root}: none of the case folders {names} found (set groups=... to change them)"
            )
    else:
        group_dirs = [("", root)]
    cases = []
    for group, gdir in group_dirs:
        if convention.layout == "msd":
            cases.extend(_msd_cases(gdir, group))
            continue
        for folder in sorted(
            p
            for p in gdir.iterdir()
            # A symbolic link to a missing folder is a case whose data went away: named, not dropped.
            if (p.is_dir() or (p.is_symlink() and not p.exists()))
            and not p.name.startswith(".")
            and p.name not in IGNORED_FOLDERS
        ):
            cases.append(_folder_case(folder, group, convention))
    if not cases:
        where = ", ".join(str(d) for _, d in group_dirs)
        raise InputError(f"no case folders found in {where}")
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{root}: case names found in more than one group: {', '.join(duplicates)}")
    return cases


def _expected(folder: Path, stem: str) -> str:
    return f"{folder / stem}{NIFTI_EXTENSIONS[0]} (or {NIFTI_EXTENSIONS[1]})"


def check_case(
    case: Case,
    convention: BratsConvention,
    *,
    use_fast: bool = True,
    sequences: tuple[str, ...] = ("t1c",),
) -> None:
    """Check a case's files and geometry from their headers only (fast, reads no voxels).

    Only the requested ``sequences`` are looked at: a broken FLAIR does not stop a T1c-only run.

    Raises:
        InputError: naming the file, for a missing sequence or seg, an unreadable or foreign file, or a shape or
            affine that differs from the T1c's.
    """
    used = {"case", "t1c", "seg", *sequences, *(("tissue",) if use_fast else ())}
    for kind, problem in case.problems:
        if kind in used:
            raise InputError(problem)
    for sequence in ("t1c", *(s for s in sequences if s != "t1c")):
        if case.file(sequence) is None:
            label = "T1c" if sequence == "t1c" else sequence.upper()
            raise InputError(
                f"missing {label}: expected {_expected(case.folder, case.name + convention.suffix(sequence))}"
            )
    if case.seg is None:
        hint = ""
        fastseg = find_nifti(case.folder, convention.fast_stem(case.name, "seg"))
        if fastseg is not None:
            hint = f"; {fastseg.name} is FSL FAST's tissue segmentation, not the tumor annotation"
        where = case.folder.parent / "labelsTr" if convention.layout == "msd" else case.folder
        raise InputError(f"missing seg: expected {_expected(where, case.name + convention.seg_suffix)}{hint}")
    assert case.t1c is not None
    ref = read_header(case.t1c, channel=convention.channel("t1c"))
    others = [
        *((case.file(s), convention.channel(s)) for s in sequences if s != "t1c"),
        (case.seg, None),
        *((p, None) for p in (case.tissue[1] if use_fast else ())),
    ]
    for path, channel in others:
        assert path is not None
        head = read_header(path, channel=channel)
        check_same_grid(ref.path, ref.shape, ref.affine, head.path, head.shape, head.affine)


def read_sequence(case: Case, sequence: str, convention: BratsConvention) -> tuple[np.ndarray, np.ndarray]:
    """Read one sequence's volume (X, Y, Z) and affine (MSD: its channel of the 4-D image).

    Raises:
        InputError: naming the file (see :func:`synthseg.data.sources.nifti.read_image`).
    """
    path = case.file(sequence)
    if path is None:
        raise InputError(f"{case.folder}: missing {sequence} for case {case.name}")
    return read_image(path, channel=convention.channel(sequence))


def tumor_and_cavity(
    seg: np.ndarray, convention: BratsConvention, path: Path | str
) -> tuple[np.ndarray, np.ndarray | None]:
    """On-disk labels -> 7-class tumor indices by class name, and the resection-cavity mask.

    Args:
        seg: integer labels (X, Y, Z).
        convention: its label map ``{value: class name}``.
        path: the file, named in errors.

    Returns:
        ``(tumor, cavity)``: uint8 (X, Y, Z) with 0 none, 1 NCR/NET, 2 edema, 3 enhancing (cavity voxels 0),
        and a bool mask of cavity voxels, or None when the convention has no cavity label.

    Raises:
        InputError: naming the file, every unexpected value and its voxel count.
    """
    values, counts = np.unique(seg, return_counts=True)
    allowed = set(convention.label_values)
    bad = [(int(v), int(c)) for v, c in zip(values, counts, strict=True) if int(v) not in allowed]
    if bad:
        listing = ", ".join(f"value {v} in {c} voxels" for v, c in bad)
        expected = "{" + ",".join(str(v) for v in convention.label_values) + "}"
        raise InputError(
            f"{path}: unexpected label {listing} (expected {expected}, convention {convention.name})"
        )
    table = np.zeros(max(convention.label_values) + 1, dtype=np.uint8)
    for value, name in convention.labels:
        table[value] = TUMOR_CLASS.get(name, 0)
    cavity = np.isin(seg, convention.cavity_values) if convention.cavity_values else None
    return table[seg], cavity


def map_tumor_labels(seg: np.ndarray, convention: BratsConvention, path: Path | str) -> np.ndarray:
    """On-disk tumor labels -> 7-class tumor indices (0 none, 1 NCR/NET, 2 edema, 3 enhancing); see
    :func:`tumor_and_cavity` (cavity voxels become 0 here)."""
    return tumor_and_cavity(seg, convention, path)[0]


@dataclass
class TumorLabels:
    """A case's annotation, read and checked: tumor classes, cavity mask and what to report about it."""

    tumor: np.ndarray
    cavity: np.ndarray | None
    notes: dict[str, Any]

    @property
    def excluded(self) -> np.ndarray:
        """Voxels the tissue segmentation must leave out: tumor and cavity."""
        return self.tumor > 0 if self.cavity is None else (self.tumor > 0) | self.cavity


def read_tumor(
    case: Case,
    convention: BratsConvention,
    shape: tuple[int, ...],
    affine: np.ndarray,
    cavity: str = "csf",
) -> TumorLabels:
    """Read the case's annotation on the T1c's grid, cross-check it against the label map and map it.

    Raises:
        InputError: naming the file, for a grid mismatch, unexpected values, labels that contradict the
            convention (:mod:`synthseg.data.sources.label_check`), or a cavity under ``cavity=refuse``.
    """
    assert case.seg is not None and case.t1c is not None
    seg, seg_affine = read_labels(case.seg)
    check_same_grid(case.t1c, shape, affine, case.seg, seg.shape, seg_affine)
    tumor, mask = tumor_and_cavity(seg, convention, case.seg)
    check_label_order(seg, convention, case.seg)
    notes: dict[str, Any] = {}
    if case.seg_alias:
        notes["seg_alias"] = case.seg.name
    if mask is not None:
        n = int(mask.sum())
        notes["cavity_voxels"] = n
        if n and cavity == "refuse":
            raise InputError(
                f"{case.seg}: {n} voxels of resection cavity (label {convention.cavity_values[0]}); "
                "cavity=refuse (csf, background or drop_slice read them)"
            )
    return TumorLabels(tumor, mask, notes)


def apply_cavity(label: np.ndarray, cavity: np.ndarray | None, mode: str) -> np.ndarray:
    """The 7-class label with the resection cavity as CSF (``csf``, and ``drop_slice`` before its slices
    go) or background (``background``)."""
    if mode not in CAVITY_MODES:
        raise InputError(f"cavity must be one of {', '.join(CAVITY_MODES)}, got {mode!r}")
    if cavity is None or not cavity.any():
        return label
    value = 0 if mode == "background" else 6  # 6: CSF, a fluid-filled cavity inside the brain
    return np.where(cavity, np.uint8(value), label).astype(np.uint8)


def kept_slices(cavity: np.ndarray | None, mode: str, depth: int) -> list[int]:
    """Axial slice indices to write: all, except under ``drop_slice`` those holding resection cavity."""
    if mode != "drop_slice" or cavity is None:
        return list(range(depth))
    return [k for k in range(depth) if not cavity[:, :, k].any()]


def read_fast_tissue(kind: str, files: tuple[Path, ...]) -> np.ndarray:
    """Read FAST outputs into FAST's class codes (0 none, 1 CSF, 2 GM, 3 WM).

    Args:
        kind: ``pve`` (files: pve_0, pve_1, pve_2 = CSF, GM, WM partial volumes), ``pveseg`` or ``fastseg``
            (one file of codes 0..3).
        files: the files, already checked to share the T1c's grid.

    Returns:
        uint8 array (X, Y, Z): the pve maps' argmax where any is positive, else the file's codes.

    Raises:
        InputError: naming the file, for unreadable files or codes outside 0..3.
    """
    if kind == "pve":
        maps = []
        for path in files:
            data, _ = read_image(path)
            if (data < 0).any():
                raise InputError(f"{path}: partial-volume map has negative values")
            maps.append(data.astype(np.float32))
        stack = np.stack(maps)  # (3, X, Y, Z): CSF, GM, WM
        codes = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
        codes[stack.sum(axis=0) <= 0] = 0
        return codes
    (path,) = files
    labels, _ = read_labels(path)
    values, counts = np.unique(labels, return_counts=True)
    bad = [(int(v), int(c)) for v, c in zip(values, counts, strict=True) if not 0 <= v <= 3]
    if bad:
        listing = ", ".join(f"value {v} in {c} voxels" for v, c in bad)
        raise InputError(f"{path}: unexpected FAST tissue {listing} (expected 0 none, 1 CSF, 2 GM, 3 WM)")
    return labels.astype(np.uint8)


def combine_labels(tumor: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The 7-class label: tumor over tissue over background.

    Args:
        tumor: uint8 (X, Y, Z), 0 none, 1 NCR/NET, 2 edema, 3 enhancing.
        tissue: uint8 (X, Y, Z), FAST codes 0 none, 1 CSF, 2 GM, 3 WM.

    Returns:
        uint8 (X, Y, Z) with 0 background, 1-3 tumor, 4 WM, 5 GM, 6 CSF.
    """
    label = FAST_TO_CLASS[tissue]
    return np.where(tumor > 0, tumor, label).astype(np.uint8)


def check_sample(cases: list, convention: BratsConvention, wanted: int = 3, limit: int = 12) -> int:
    """Cross-check the first cases' annotations before anything is written (stops under any on_error).

    Reads annotations in case order until ``wanted`` of them were decidable or ``limit`` were read.

    Returns:
        How many annotations were decidable.

    Raises:
        InputError: from :func:`check_label_order`; unreadable files are left to the per-case run.
    """
    decided = 0
    for case in cases[:limit]:
        if case.seg is None:
            continue
        try:
            seg, _ = read_labels(case.seg)
            tumor_and_cavity(seg, convention, case.seg)
        except InputError:
            continue  # reported, with the case, when it is processed
        if outside_shares(seg, convention) is not None:
            check_label_order(seg, convention, case.seg)
            decided += 1
            if decided >= wanted:
                break
    return decided
