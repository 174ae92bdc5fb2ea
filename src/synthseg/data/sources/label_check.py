"""Cross-check an annotation against its label map: MSD order read as BraTS (or the reverse) must not pass.

BraTS and MSD both store three tumor classes as small integers but in different orders (BraTS 2023: 1 NCR,
2 edema, 3 enhancing; MSD: 1 edema, 2 non-enhancing tumor, 3 enhancing), so the values alone cannot tell
them apart. The anatomy can: peritumoral edema surrounds the tumor core. Per case we count the faces each
group shares with the outside (anything not tumor) versus with the other tumor groups: the core's share
(NCR/NET with enhancing) is small and the edema's large when the map is right, and the reverse when
edema and core are swapped. The resection cavity counts with the tumor (it is not outside).

Never rejected: a case lacking core or edema, a tiny tumor (too few voxels to tell), or one where the two
groups are not clearly reversed (an LGG without enhancing tumor, a tumor at the brain's edge).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthseg.data.sources.releases import CAVITY, PRESETS, BratsConvention
from synthseg.errors import InputError

MIN_VOXELS = 30  # fewer voxels of core or edema: too small to tell inside from outside
CORE_OUTSIDE = 0.5  # reversed: the core's faces are mostly outside ...
EDEMA_OUTSIDE = 0.25  # ... and the edema's mostly inside the tumor
_OUT, _CORE, _EDEMA, _CAVITY = 0, 1, 2, 3
_GROUP_OF = {"background": _OUT, "ncr": _CORE, "enhancing": _CORE, "edema": _EDEMA, CAVITY: _CAVITY}


def contacts(groups: np.ndarray) -> np.ndarray:
    """Symmetric (4, 4) counts of faces shared by voxels of two different groups (volume edge = outside)."""
    padded = np.pad(groups, 1, constant_values=_OUT).astype(np.int64)
    table = np.zeros(16, dtype=np.int64)
    for axis in range(padded.ndim):
        a = np.moveaxis(padded, axis, 0)
        first, second = a[:-1], a[1:]
        differ = first != second
        table += np.bincount((first[differ] * 4 + second[differ]).ravel(), minlength=16)
    matrix = table.reshape(4, 4)
    return matrix + matrix.T


def _crop(seg: np.ndarray) -> np.ndarray:
    """The tumor's bounding box and one voxel around it (faces are the same; a whole volume is slow)."""
    nonzero = np.nonzero(seg)
    if not nonzero[0].size:
        return seg
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in nonzero)
    return seg[box]


def outside_shares(seg: np.ndarray, convention: BratsConvention) -> tuple[float, float] | None:
    """Share of the core's and of the edema's faces that touch the outside, or None when not decidable.

    Args:
        seg: on-disk labels (X, Y, Z), values already checked against ``convention``.
        convention: its label map gives each value's group.
    """
    lookup = np.zeros(max(convention.label_values) + 1, dtype=np.int64)
    for value, name in convention.labels:
        lookup[value] = _GROUP_OF[name]
    groups = lookup[np.clip(_crop(seg), 0, len(lookup) - 1)]
    counts = np.bincount(groups.ravel(), minlength=4)
    if counts[_CORE] < MIN_VOXELS or counts[_EDEMA] < MIN_VOXELS:
        return None
    faces = contacts(groups)
    core_total, edema_total = faces[_CORE].sum(), faces[_EDEMA].sum()
    if core_total == 0 or edema_total == 0:
        return None
    return float(faces[_CORE, _OUT] / core_total), float(faces[_EDEMA, _OUT] / edema_total)


def _swapped(convention: BratsConvention) -> str:
    """The convention the data looks like: this one with edema and core (NCR/NET) swapped."""
    swap = {"edema": "ncr", "ncr": "edema"}
    labels = tuple(sorted((v, swap.get(n, n)) for v, n in convention.labels))
    words = {"ncr": "NCR/NET", "edema": "edema", "enhancing": "enhancing", CAVITY: "cavity"}
    listing = ", ".join(f"{v} {words[n]}" for v, n in labels if n not in ("background", CAVITY))
    same = [
        p.name
        for p in PRESETS.values()
        if {v: n for v, n in p.labels if n != CAVITY} == {v: n for v, n in labels if n != CAVITY}
    ]
    if same:
        return f"{PRESETS[same[0]].title} order ({listing}); use convention={same[0]}"
    mapping = "{" + ", ".join(f"{v}: {n}" for v, n in labels) + "}"
    return f"edema and NCR/NET swapped ({listing}); use convention=custom labels='{mapping}'"


def check_label_order(seg: np.ndarray, convention: BratsConvention, path: Path | str) -> None:
    """Stop when the annotation's edema lies inside its core, i.e. the label map has them swapped.

    Raises:
        InputError: one line naming the file and the convention the data looks like.
    """
    shares = outside_shares(seg, convention)
    if shares is None:
        return
    core, edema = shares
    if core > CORE_OUTSIDE and edema < EDEMA_OUTSIDE:
        values = {n: [v for v, m in convention.labels if m == n] for n in ("ncr", "edema")}
        raise InputError(
            f"{path}: labels contradict convention {convention.name}: the core (label "
            f"{'/'.join(map(str, values['ncr']))}) surrounds the edema (label "
            f"{'/'.join(map(str, values['edema']))}) ({core:.0%} vs {edema:.0%} of their faces outside the "
            f"tumor); the data looks like {_swapped(convention)}"
        )
