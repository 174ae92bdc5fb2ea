"""BraTS releases 2018-2024 and MSD Task01: naming presets, label maps as data, and recognising a release.

A preset (:class:`BratsConvention`) says where the cases are, how each sequence's file is named and what every
on-disk label value means, as ``{value: class name}``. The names are mapped onto the 7-class convention
(:data:`TUMOR_CLASS`), so a release whose values mean other things (MSD: 1 edema, 2 non-enhancing tumor) is
read by meaning, never by position. ``convention=auto`` recognises the release from the tree
(:func:`recognise`); docs/prepare.md has the table of releases.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthseg.data.sequences import SEQUENCES as SEQUENCES  # canonical names, re-exported
from synthseg.errors import InputError

# 7-class index of each tumor class name. The resection cavity (BraTS 2024) is no tumor class: the cavity
# setting decides what it becomes.
TUMOR_CLASS = {"background": 0, "ncr": 1, "edema": 2, "enhancing": 3}
CAVITY = "cavity"
CLASS_NAMES = (*TUMOR_CLASS, CAVITY)
CAVITY_MODES = ("csf", "background", "drop_slice", "refuse")
# Not cases, whatever the layout: archive leftovers and sidecar tables.
SIDECARS = ("name_mapping.csv", "survival_info.csv", "survival_data.csv", "dataset.json", ".DS_Store")
IGNORED_FOLDERS = ("__MACOSX",)

_LABELS_2018 = ((0, "background"), (1, "ncr"), (2, "edema"), (4, "enhancing"))
_LABELS_2023 = ((0, "background"), (1, "ncr"), (2, "edema"), (3, "enhancing"))
_LABELS_MSD = ((0, "background"), (1, "edema"), (2, "ncr"), (3, "enhancing"))
_NAMES_2018 = (("t1", "_t1"), ("t1c", "_t1ce"), ("t2", "_t2"), ("flair", "_flair"))
_NAMES_2023 = (("t1", "-t1n"), ("t1c", "-t1c"), ("t2", "-t2w"), ("flair", "-t2f"))
_MSD_CHANNELS = (("flair", 0), ("t1", 1), ("t1c", 2), ("t2", 3))


@dataclass(frozen=True)
class BratsConvention:
    """File naming and label convention of one release.

    Attributes:
        name: preset name (``brats2018`` ... ``msd``, ``custom``), ``+custom`` when settings override it.
        title: the release in words (``BraTS 2021``).
        groups: sub-folders (relative paths) of the root that hold the cases; empty: directly under the root.
        image_suffix: the T1c file is ``<case><image_suffix>.nii[.gz]``.
        seg_suffix: the tumor annotation is ``<case><seg_suffix>.nii[.gz]``.
        labels: ``(on-disk value, class name)`` pairs; class names from :data:`CLASS_NAMES`.
        suffixes: ``(sequence, suffix)`` of every sequence (the T1c's is ``image_suffix``).
        layout: ``folders`` (a folder per case) or ``msd`` (``imagesTr/<case>`` 4-D, ``labelsTr/<case>``).
        channels: ``msd``: ``(sequence, channel)`` of the 4-D images.
        seg_alias: BraTS 2020: a case folder's only ``*Segm*.nii`` stands in for a missing annotation.
    """

    name: str = "brats2018"
    title: str = "BraTS 2018/2019"
    groups: tuple[str, ...] = ("HGG", "LGG")
    image_suffix: str = "_t1ce"
    seg_suffix: str = "_seg"
    labels: tuple[tuple[int, str], ...] = _LABELS_2018
    suffixes: tuple[tuple[str, str], ...] = _NAMES_2018
    layout: str = "folders"
    channels: tuple[tuple[str, int], ...] = ()
    seg_alias: bool = False

    def __post_init__(self) -> None:
        values = [v for v, _ in self.labels]
        if len(set(values)) != len(values) or min(values, default=0) < 0:
            raise InputError(f"labels: on-disk values must be distinct and >= 0, got {values}")
        for value, name in self.labels:
            if name not in CLASS_NAMES:
                raise InputError(
                    f"labels: value {value} is {name!r}, not a class name ({', '.join(CLASS_NAMES)})"
                )
        if self.layout == "folders" and (
            not self.image_suffix or not self.seg_suffix or self.image_suffix == self.seg_suffix
        ):
            raise InputError(
                f"image_suffix and seg_suffix must be different and non-empty, got {self.image_suffix!r} "
                f"and {self.seg_suffix!r}"
            )

    @property
    def label_map(self) -> dict[int, str]:
        return dict(self.labels)

    @property
    def label_values(self) -> tuple[int, ...]:
        """The on-disk values the annotation may hold, sorted."""
        return tuple(sorted(v for v, _ in self.labels))

    @property
    def enhancing(self) -> int | None:
        """On-disk value of enhancing tumor."""
        return next((v for v, n in self.labels if n == "enhancing"), None)

    @property
    def cavity_values(self) -> tuple[int, ...]:
        return tuple(v for v, n in self.labels if n == CAVITY)

    def suffix(self, sequence: str) -> str:
        """File-name suffix of a canonical sequence (``t1c`` -> ``image_suffix``)."""
        if sequence == "t1c":
            return self.image_suffix
        return dict(self.suffixes)[sequence]

    def channel(self, sequence: str) -> int | None:
        """Channel of a sequence in the 4-D image (``msd``), else None."""
        return dict(self.channels).get(sequence) if self.layout == "msd" else None

    def fast_stem(self, case: str, output: str) -> str:
        """File stem of FAST output ``output`` (``pve_0``, ``pveseg``, ``seg``) for the case's T1c."""
        return f"{case}{self.image_suffix}_{output}"


PRESETS: dict[str, BratsConvention] = {
    "brats2018": BratsConvention(),
    "brats2020": BratsConvention(name="brats2020", title="BraTS 2020", groups=(), seg_alias=True),
    "brats2021": BratsConvention(name="brats2021", title="BraTS 2021", groups=()),
    "brats2023": BratsConvention(
        name="brats2023",
        title="BraTS 2023 GLI",
        groups=(),
        image_suffix="-t1c",
        seg_suffix="-seg",
        labels=_LABELS_2023,
        suffixes=_NAMES_2023,
    ),
    "brats2024": BratsConvention(
        name="brats2024",
        title="BraTS 2024 GLI",
        groups=(),
        image_suffix="-t1c",
        seg_suffix="-seg",
        labels=(*_LABELS_2023, (4, CAVITY)),
        suffixes=_NAMES_2023,
    ),
    "msd": BratsConvention(
        name="msd",
        title="MSD Task01_BrainTumour",
        groups=(),
        image_suffix="",
        seg_suffix="",
        labels=_LABELS_MSD,
        suffixes=(),
        layout="msd",
        channels=_MSD_CHANNELS,
    ),
}
CONVENTIONS = ("auto", *PRESETS, "custom")


def class_name(text: str) -> str:
    """A label's name as written by a release (``non-enhancing tumor``, ``SNFH``, ``NCR/NET``) -> class name.

    Raises:
        InputError: for a name that is no tumor class.
    """
    t = str(text).strip().lower().replace("_", " ")
    if t in ("background", "bg", "none"):
        return "background"
    if "cavity" in t or "resection" in t or t == "rc":
        return CAVITY
    if "edema" in t or "oedema" in t or t in ("ed", "snfh"):
        return "edema"
    if re.search(r"non.?enhancing|necro|ncr|\bnet\b|netc", t):
        return "ncr"
    if "enhancing" in t or t == "et":
        return "enhancing"
    raise InputError(f"label name {text!r} is not one of {', '.join(CLASS_NAMES)} (or a known synonym)")


def _sequence_name(text: str) -> str | None:
    t = str(text).strip().lower().replace("-", "").replace("_", "")
    if t in ("t1gd", "t1c", "t1ce", "t1ce", "t1contrast", "t1post"):
        return "t1c"
    if t in ("t1", "t1w", "t1n"):
        return "t1"
    if t in ("t2", "t2w"):
        return "t2"
    if t in ("flair", "t2f", "t2flair"):
        return "flair"
    return None


def read_dataset_json(path: Path) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[int, str], ...] | None]:
    """Channels (by name) and label map of an MSD/nnU-Net ``dataset.json``.

    Returns:
        ``(channels, labels)``: ``(sequence, channel)`` pairs, and ``(value, class name)`` pairs or None when
        the file has no labels.

    Raises:
        InputError: naming the file, when it is unreadable or has no T1c channel.
    """
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read it as JSON ({err})") from None
    modality = meta.get("modality") or meta.get("channel_names") or {}
    channels = []
    for key, name in dict(modality).items():
        sequence = _sequence_name(name)
        if sequence is not None and str(key).isdigit():
            channels.append((sequence, int(key)))
    if "t1c" not in dict(channels):
        raise InputError(f"{path}: no T1c channel (t1gd) among its modalities {dict(modality)}")
    raw = meta.get("labels")
    if not raw:
        return tuple(sorted(channels, key=lambda c: c[1])), None
    # MSD: {"1": "edema"}; nnU-Net v2: {"edema": 1}
    pairs = [(k, v) for k, v in dict(raw).items()]
    if all(str(k).isdigit() for k, _ in pairs):
        labels = [(int(k), class_name(v)) for k, v in pairs]
    elif all(isinstance(v, int) for _, v in pairs):
        labels = [(int(v), class_name(k)) for k, v in pairs]
    else:
        raise InputError(f"{path}: labels {raw} are not a value -> name map (regions are not read)")
    return tuple(sorted(channels, key=lambda c: c[1])), tuple(sorted(labels))


@dataclass(frozen=True)
class Recognition:
    """What :func:`recognise` found: the preset, where the cases are, and the line that says so."""

    preset: str
    groups: tuple[str, ...]
    message: str


# Case-folder names of the flat releases -> (preset, how the names are shown).
_FLAT = (
    (re.compile(r"BraTS20_(Training|Validation)_\d+$"), "brats2020", "BraTS20_Training_NNN"),
    (re.compile(r"BraTS2021_\d+$"), "brats2021", "BraTS2021_NNNNN"),
    (re.compile(r"BraTS-GLI-\d+-\d+$"), "gli", "BraTS-GLI-NNNNN-NNN"),
)
# Other 2023+ sub-challenges share the naming but not (all) the label maps: never claimed.
_OTHER_CHALLENGE = re.compile(r"BraTS-(MEN|MET|PED|SSA|MEN-RT|GoAT)-\d+-\d+$", re.IGNORECASE)
_TRAINING_2024 = re.compile(r"training_data\w*_v2$")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_FOLDERS
    )


def _survey(root: Path, prefix: str) -> tuple[list[tuple[str, tuple[str, ...], str]], list[str]]:
    """Candidate layouts directly in ``root``: ``(preset, groups, evidence)`` and what else was seen."""
    found: list[tuple[str, tuple[str, ...], str]] = []
    seen: list[str] = []
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        n = sum(1 for p in (root / "imagesTr").iterdir() if _is_nifti(p))
        found.append(
            ("msd", (prefix,) if prefix else (), f"dataset.json and {n} images in {prefix}imagesTr/")
        )
    groups = [g for g in ("HGG", "LGG") if (root / g).is_dir() and _subfolders(root / g)]
    if groups:
        n = sum(len(_subfolders(root / g)) for g in groups)
        where = ", ".join(f"{prefix}{g}/" for g in groups)
        found.append(("brats2018", tuple(prefix + g for g in groups), f"{n} case folders in {where}"))
    subs = _subfolders(root)
    by_kind: dict[str, list[str]] = {}
    others: list[str] = []
    for sub in subs:
        kind = next((preset for pattern, preset, _ in _FLAT if pattern.match(sub.name)), None)
        if kind is not None:
            by_kind.setdefault(kind, []).append(sub.name)
        elif _OTHER_CHALLENGE.match(sub.name):
            by_kind.setdefault("other-challenge", []).append(sub.name)
        elif sub.name not in ("HGG", "LGG", "imagesTr", "labelsTr", "imagesTs"):
            others.append(sub.name)
    for _pattern, kind, shown in _FLAT:
        names = by_kind.get(kind, [])
        if names:
            found.append((kind, (prefix,) if prefix else (), f"{len(names)} case folders {prefix}{shown}"))
    if "other-challenge" in by_kind:
        names = by_kind["other-challenge"]
        seen.append(f"{len(names)} folders like {names[0]} (a BraTS sub-challenge whose labels are not read)")
    # BraTS 2024: cases under training_data*_v2/ folders.
    gli_groups = [
        s.name
        for s in subs
        if s.name.startswith("training_data") and any(_FLAT[2][0].match(c.name) for c in _subfolders(s))
    ]
    if gli_groups:
        n = sum(len(_subfolders(root / g)) for g in gli_groups)
        where = ", ".join(f"{prefix}{g}/" for g in gli_groups)
        found.append(
            ("gli", tuple(prefix + g for g in gli_groups), f"{n} case folders BraTS-GLI-NNNNN-NNN in {where}")
        )
        others = [o for o in others if o not in gli_groups]
    if others:
        seen.append(
            f"{len(others)} other folders ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
        )
    return found, seen


def _is_nifti(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith((".nii", ".nii.gz"))


def recognise(root: str | Path) -> Recognition:
    """The release a downloaded tree is, from its group folders, case names, file names and ``dataset.json``.

    A root holding nothing recognisable but one folder is looked into (the archive's top folder).

    Raises:
        InputError: one line listing what was found, for an unknown or ambiguous tree.
    """
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise InputError(
                f"{root}: is a file, not a folder (source= takes the folder holding the case folders)"
            )
        raise InputError(f"{root}: source folder not found")
    found, seen = _survey(root, "")
    if not found:
        subs = _subfolders(root)
        if len(subs) == 1:
            found, inner = _survey(subs[0], subs[0].name + "/")
            seen = inner if found else seen
    choose = f"choose convention= one of {', '.join(c for c in CONVENTIONS if c != 'auto')}"
    if not found:
        listing = "; ".join(seen) or "no case folders, HGG/ LGG/, imagesTr/ or dataset.json"
        raise InputError(f"{root}: no known BraTS or MSD layout (found {listing}); {choose}")
    if len(found) > 1:
        listing = "; ".join(f"{_title(p)}: {evidence}" for p, _, evidence in found)
        raise InputError(f"{root}: ambiguous tree, found {listing}; {choose}, with groups=...")
    preset, groups, evidence = found[0]
    if preset == "gli":
        years_2024 = any(_TRAINING_2024.match(g.split("/")[-1]) for g in groups) or bool(
            _TRAINING_2024.match(root.name)
        )
        late = _timepoints_2024(root, groups)
        if years_2024 or late:
            why = "training_data*_v2/ folders" if years_2024 else "time points -100 and above"
            return Recognition("brats2024", groups, f"recognised BraTS 2024 GLI layout ({why}): {evidence}")
        return Recognition(
            "gli",
            groups,
            f"recognised BraTS 2023/2024 GLI layout: {evidence} (2024 if any annotation holds label 4, "
            "resection cavity)",
        )
    return Recognition(preset, groups, f"recognised {_title(preset)} layout: {evidence}")


def _title(preset: str) -> str:
    return "BraTS 2023/2024 GLI" if preset == "gli" else PRESETS[preset].title


def _timepoints_2024(root: Path, groups: tuple[str, ...]) -> bool:
    """BraTS 2024 numbers its post-treatment time points from 100."""
    folders = [root / g for g in groups] if groups else [root]
    return any(
        int(c.name.rsplit("-", 1)[1]) >= 100
        for f in folders
        for c in _subfolders(f)
        if _FLAT[2][0].match(c.name)
    )


def make_convention(
    preset: str = "brats2018",
    *,
    groups: list[str] | tuple[str, ...] | None = None,
    image_suffix: str | None = None,
    seg_suffix: str | None = None,
    enhancing: int | None = None,
    labels: dict[Any, str] | None = None,
) -> BratsConvention:
    """A preset with some settings overridden (None keeps the preset's value).

    ``custom`` starts from no preset: it needs ``image_suffix``, ``seg_suffix`` and ``labels``.

    Raises:
        InputError: for an unknown preset or impossible settings.
    """
    if preset == "custom":
        if image_suffix is None or seg_suffix is None or not labels:
            raise InputError(
                "convention=custom needs image_suffix=..., seg_suffix=... and labels={value: class name} "
                f"(class names: {', '.join(CLASS_NAMES)})"
            )
        base = BratsConvention(
            name="custom", title="custom", groups=(), image_suffix=image_suffix, seg_suffix=seg_suffix
        )
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise InputError(
            f"convention must be one of {sorted(c for c in CONVENTIONS if c != 'auto')}, got {preset!r}"
        )
    changes: dict[str, Any] = {}
    if groups is not None:
        changes["groups"] = tuple(str(g) for g in groups)
    if image_suffix is not None:
        changes["image_suffix"] = str(image_suffix)
    if seg_suffix is not None:
        changes["seg_suffix"] = str(seg_suffix)
    if labels:
        try:
            changes["labels"] = tuple(sorted((int(k), class_name(v)) for k, v in dict(labels).items()))
        except InputError:
            raise
        except (TypeError, ValueError):
            raise InputError(f"labels must map on-disk values to class names, got {labels}") from None
    if enhancing is not None:
        if int(enhancing) not in (3, 4):
            raise InputError(
                f"enhancing must be 3 or 4 (the on-disk value of enhancing tumor), got {enhancing}"
            )
        kept = [
            (v, n) for v, n in changes.get("labels", base.labels) if n != "enhancing" and v != int(enhancing)
        ]
        changes["labels"] = tuple(sorted([*kept, (int(enhancing), "enhancing")]))
    if not changes:
        return base
    name = base.name if preset == "custom" else f"{preset}+custom"
    return dataclasses.replace(base, name=name, **changes)


def resolve_convention(
    source: str | Path,
    convention: str = "auto",
    *,
    groups: list[str] | tuple[str, ...] | None = None,
    image_suffix: str | None = None,
    seg_suffix: str | None = None,
    enhancing: int | None = None,
    labels: dict[Any, str] | None = None,
) -> tuple[BratsConvention, str]:
    """The convention to read ``source`` with, and one line saying which and why.

    ``auto`` recognises the release (:func:`recognise`); for MSD the channels and label names come from its
    ``dataset.json``. A BraTS-GLI tree without a 2024 sign is read with the 2024 label map (4 = resection
    cavity), which equals 2023's wherever no annotation holds 4; the run then says which release it was.

    Raises:
        InputError: an unknown or ambiguous tree, an unknown preset or impossible overrides.
    """
    source = Path(source)
    message = ""
    preset = convention
    where: tuple[str, ...] | None = None  # where the archive put the cases, when recognised
    if convention == "auto":
        found = recognise(source)
        preset, message, where = found.preset, found.message, found.groups
    elif groups is None and convention in PRESETS:
        # An explicit preset still finds its cases where the archive put them (training_data1_v2/, ...).
        try:
            found = recognise(source)
        except InputError:
            found = None
        family = {"gli": ("brats2023", "brats2024"), "brats2024": ("brats2023", "brats2024")}
        if found is not None and convention in family.get(found.preset, (found.preset,)):
            where = found.groups
    overrides = {"groups": groups, "image_suffix": image_suffix, "seg_suffix": seg_suffix}
    if preset == "gli":
        result = make_convention("brats2024", enhancing=enhancing, labels=labels, **overrides)
        result = dataclasses.replace(result, name="brats2023/2024", title="BraTS 2023/2024 GLI")
    else:
        result = make_convention(preset, enhancing=enhancing, labels=labels, **overrides)
    if groups is None and where is not None:
        result = dataclasses.replace(result, groups=where)
    if not message:
        message = f"convention {result.name} ({result.title})"
    if result.layout == "msd":
        base = source / result.groups[0] if result.groups else source
        meta = base / "dataset.json"
        if meta.is_file():
            channels, from_json = read_dataset_json(meta)
            changes: dict[str, Any] = {"channels": channels}
            if from_json is not None and not labels:
                changes["labels"] = from_json
            result = dataclasses.replace(result, **changes)
        message += f" (T1c = channel {result.channel('t1c')}; imagesTs/ ignored: it has no labels)"
    return result, message
