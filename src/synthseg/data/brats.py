"""The BraTS folder layout: finding cases, their files, the tumor label convention and tissue maps.

BraTS 2018 (the default)::

    <root>/HGG/Brats18_<inst>_<id>_1/Brats18_<inst>_<id>_1_{t1ce,seg}.nii[.gz]      (and LGG/)

BraTS 2023 (preset ``brats2023``)::

    <root>/BraTS-GLI-<id>-<tp>/BraTS-GLI-<id>-<tp>-{t1c,seg}.nii.gz

Tumor labels on disk: 0 background, 1 NCR/NET, 2 edema and enhancing tumor as 4 (2018-2021) or 3 (2023);
they map to the 7-class indices 0, 1, 2, 3. Tissue (WM 4, GM 5, CSF 6) comes from FSL FAST outputs beside
the case when present, otherwise from the built-in segmentation in :mod:`synthseg.data.tissue`.

File names are built exactly from the case name and the configured suffixes, never globbed, so FAST's hard
segmentation ``<case>_t1ce_seg`` can never be taken for the tumor annotation ``<case>_seg``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.nifti import NIFTI_EXTENSIONS, check_same_grid, find_nifti, read_header, read_labels
from synthseg.errors import InputError

# 7-class indices of the tissue classes, indexed by FAST's class code (0 none, 1 CSF, 2 GM, 3 WM).
FAST_TO_CLASS = np.array([0, 6, 5, 4], dtype=np.uint8)
# FAST partial-volume maps in order: pve_0 CSF, pve_1 GM, pve_2 WM.
PVE_CLASSES = ("CSF", "GM", "WM")


@dataclass(frozen=True)
class BratsConvention:
    """File naming and label convention of a BraTS release.

    Attributes:
        name: preset name (``brats2018``, ``brats2023``) or ``custom``.
        groups: sub-folders of the root that hold case folders (``HGG``, ``LGG``); empty: cases lie directly
            under the root.
        image_suffix: the T1c file is ``<case><image_suffix>.nii[.gz]``.
        seg_suffix: the tumor annotation is ``<case><seg_suffix>.nii[.gz]``.
        enhancing: on-disk value of enhancing tumor (4 in 2018-2021, 3 in 2023).
    """

    name: str = "brats2018"
    groups: tuple[str, ...] = ("HGG", "LGG")
    image_suffix: str = "_t1ce"
    seg_suffix: str = "_seg"
    enhancing: int = 4

    def __post_init__(self) -> None:
        if self.enhancing not in (3, 4):
            raise InputError(
                f"enhancing must be 3 or 4 (the on-disk value of enhancing tumor), got {self.enhancing}"
            )
        if not self.image_suffix or not self.seg_suffix or self.image_suffix == self.seg_suffix:
            raise InputError(
                f"image_suffix and seg_suffix must be different and non-empty, got {self.image_suffix!r} "
                f"and {self.seg_suffix!r}"
            )

    @property
    def label_values(self) -> tuple[int, ...]:
        """The on-disk tumor values, in the order of the 7-class indices 0, 1, 2, 3."""
        return (0, 1, 2, self.enhancing)

    def fast_stem(self, case: str, output: str) -> str:
        """File stem of FAST output ``output`` (``pve_0``, ``pveseg``, ``seg``) for the case's T1c."""
        return f"{case}{self.image_suffix}_{output}"


PRESETS: dict[str, BratsConvention] = {
    "brats2018": BratsConvention(),
    "brats2023": BratsConvention(
        name="brats2023", groups=(), image_suffix="-t1c", seg_suffix="-seg", enhancing=3
    ),
}


def make_convention(
    preset: str = "brats2018",
    *,
    groups: list[str] | tuple[str, ...] | None = None,
    image_suffix: str | None = None,
    seg_suffix: str | None = None,
    enhancing: int | None = None,
) -> BratsConvention:
    """A preset with some settings overridden (None keeps the preset's value).

    Raises:
        InputError: for an unknown preset or impossible settings.
    """
    if preset not in PRESETS:
        raise InputError(f"convention must be one of {sorted(PRESETS)}, got {preset!r}")
    changes: dict[str, Any] = {}
    if groups is not None:
        changes["groups"] = tuple(str(g) for g in groups)
    if image_suffix is not None:
        changes["image_suffix"] = str(image_suffix)
    if seg_suffix is not None:
        changes["seg_suffix"] = str(seg_suffix)
    if enhancing is not None:
        changes["enhancing"] = int(enhancing)
    if not changes:
        return PRESETS[preset]
    return dataclasses.replace(PRESETS[preset], name=f"{preset}+custom", **changes)


@dataclass(frozen=True)
class Case:
    """One case folder.

    Attributes:
        name: the case name (the folder name, e.g. ``Brats18_2013_2_1``).
        group: the group folder it was found in (``HGG``), or ``""``.
        folder: the case folder.
        t1c: the T1c file, or None when missing.
        seg: the tumor annotation, or None when missing.
        tissue: ``(kind, files)`` of the FAST outputs found: kind ``pve`` (3 files: CSF, GM, WM), ``pveseg`` or
            ``fastseg`` (1 file), or ``("builtin", ())`` when there are none.
    """

    name: str
    group: str
    folder: Path
    t1c: Path | None
    seg: Path | None
    tissue: tuple[str, tuple[Path, ...]] = field(default=("builtin", ()))


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


def find_cases(root: str | Path, convention: BratsConvention) -> list[Case]:
    """All case folders under ``root``, sorted by group then name.

    A case folder is any non-hidden sub-folder of a group folder (or of the root when there are no groups);
    its T1c and seg may be missing (:func:`check_case` reports that).

    Raises:
        InputError: when the root or all of its group folders are missing, or no case folder is found.
    """
    root = Path(root)
    if not root.is_dir():
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
        for folder in sorted(p for p in gdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            name = folder.name
            cases.append(
                Case(
                    name=name,
                    group=group,
                    folder=folder,
                    t1c=find_nifti(folder, f"{name}{convention.image_suffix}"),
                    seg=find_nifti(folder, f"{name}{convention.seg_suffix}"),
                    tissue=_fast_files(folder, name, convention),
                )
            )
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


def check_case(case: Case, convention: BratsConvention, *, use_fast: bool = True) -> None:
    """Check a case's files and geometry from their headers only (fast, reads no voxels).

    Raises:
        InputError: naming the file, for a missing T1c or seg, an unreadable or foreign file, or a shape or
            affine that differs from the T1c's.
    """
    if case.t1c is None:
        raise InputError(
            f"missing T1c: expected {_expected(case.folder, case.name + convention.image_suffix)}"
        )
    if case.seg is None:
        hint = ""
        fastseg = find_nifti(case.folder, convention.fast_stem(case.name, "seg"))
        if fastseg is not None:
            hint = f"; {fastseg.name} is FSL FAST's tissue segmentation, not the tumor annotation"
        raise InputError(
            f"missing seg: expected {_expected(case.folder, case.name + convention.seg_suffix)}{hint}"
        )
    ref = read_header(case.t1c)
    others = [case.seg, *(case.tissue[1] if use_fast else ())]
    for path in others:
        head = read_header(path)
        check_same_grid(ref.path, ref.shape, ref.affine, head.path, head.shape, head.affine)


def map_tumor_labels(seg: np.ndarray, convention: BratsConvention, path: Path | str) -> np.ndarray:
    """On-disk tumor labels -> 7-class tumor indices (0 none, 1 NCR/NET, 2 edema, 3 enhancing).

    Args:
        seg: integer labels (X, Y, Z).
        convention: gives the on-disk value of enhancing tumor.
        path: the file, named in errors.

    Returns:
        uint8 array (X, Y, Z) with values 0..3.

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
    for index, value in enumerate(convention.label_values):
        table[value] = index
    return table[seg]


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
    from synthseg.data.nifti import read_image

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
