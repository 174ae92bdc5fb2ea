"""`synthseg export format=nnunet`: the written dataset obeys the nnU-Net v2 raw-format rules."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import png
import pytest

from synthseg.data.pngio import read_png, write_label8
from synthseg.errors import InputError
from synthseg.synth import export
from synthseg.synth.export import ExportSettings
from tests.conftest import write_dataset

SIDE = 16
# Every class once in the first row, so the reductions can be checked by hand.
BASE = np.zeros((SIDE, SIDE), np.uint8)
BASE[0, :7] = [0, 1, 2, 3, 4, 5, 6]


def _label(i: int) -> np.ndarray:
    label = BASE.copy()
    label[5 + i % 8, 5] = 3
    return label


def write_folder(root: Path, n: int, *, splits: list[str], source: str, prefix: str) -> list[str]:
    """A dataset folder with 16-bit images above 255 (the shared writer); returns the ids."""
    ids = [f"{prefix}_{i:03d}" for i in range(n)]
    write_dataset(
        root,
        labels=[_label(i) for i in range(n)],
        images=[np.full((SIDE, SIDE), 40000 + i, np.uint16) for i in range(n)],
        ids=ids,
        splits=splits,
        reduced=[int(i < 2) for i in range(n)],
        source=source,
        cases=["synthetic" if source == "synthetic" else f"Brats18_X_{i // 3}_1" for i in range(n)],
        slices=[-1 if source == "synthetic" else i for i in range(n)],
    )
    return ids


@pytest.fixture()
def sources(tmp_path: Path) -> dict:
    real = write_folder(
        tmp_path / "prepared",
        8,
        splits=["train"] * 5 + ["val", "test", "test"],
        source="real",
        prefix="Brats18_2013_2_1",
    )
    synthetic = write_folder(
        tmp_path / "synthetic", 4, splits=["train"] * 4, source="synthetic", prefix="synth"
    )
    return {
        "real": tmp_path / "prepared",
        "synthetic": tmp_path / "synthetic",
        "real_ids": real,
        "synthetic_ids": synthetic,
    }


def _header(path: Path) -> tuple[int, int, int]:
    width, height, _, info = png.Reader(filename=str(path)).read()
    return height, width, int(info["bitdepth"])


def check_nnunet(folder: Path) -> dict:
    """Validate a dataset folder against the nnU-Net v2 raw-format rules; return its dataset.json."""
    assert re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_-]+", folder.name)
    info = json.loads((folder / "dataset.json").read_text())
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        assert key in info, key
    ending = info["file_ending"]
    assert ending == ".png"
    # Labels: consecutive integers from 0, background 0.
    assert sorted(info["labels"].values()) == list(range(len(info["labels"])))
    assert info["labels"]["background"] == 0
    channels = {f"{int(k):04d}" for k in info["channel_names"]}
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if not (folder / images).exists():
            continue
        cases: dict[str, set[str]] = {}
        for path in (folder / images).iterdir():
            match = re.fullmatch(r"(.+)_(\d{4})" + re.escape(ending), path.name)
            assert match, f"image name without a 4-digit channel suffix: {path.name}"
            cases.setdefault(match.group(1), set()).add(match.group(2))
        assert all(chans == channels for chans in cases.values()), "every case needs every channel"
        label_files = {p.name[: -len(ending)] for p in (folder / labels).iterdir()}
        assert label_files == set(cases), (
            "every image needs its label with the same case name, and vice versa"
        )
        if images == "imagesTr":
            assert info["numTraining"] == len(label_files)
        for case in cases:
            height, width, depth = _header(folder / images / f"{case}_0000{ending}")
            assert depth == 16, "16-bit images preserved"
            assert _header(folder / labels / f"{case}{ending}")[:2] == (height, width), (
                "image and label sizes match"
            )
            values = np.unique(read_png(folder / labels / f"{case}{ending}"))
            assert set(values.tolist()) <= set(info["labels"].values())
    return info


def test_real_and_synthetic_to_nnunet(sources: dict, tmp_path: Path) -> None:
    out = tmp_path / "nnUNet_raw"
    folder = export.run(
        ExportSettings(source=[sources["real"], sources["synthetic"]], output=out, classes=7, progress=False)
    )
    assert folder == out / "Dataset501_SynthSeg"
    info = check_nnunet(folder)
    assert info["channel_names"] == {"0": "T1c"}
    assert info["labels"] == {
        "background": 0,
        "NCR/NET": 1,
        "edema": 2,
        "enhancing": 3,
        "WM": 4,
        "GM": 5,
        "CSF": 6,
    }
    # 5 real training slices + 4 synthetic ones; the two sources are told apart by a prefix.
    assert info["numTraining"] == 9
    expected = {f"s0_{i}" for i in sources["real_ids"][:5]} | {f"s1_{i}" for i in sources["synthetic_ids"]}
    assert {p.name[: -len(".png")] for p in (folder / "labelsTr").iterdir()} == expected
    assert not (folder / "imagesTs").exists()
    # Images byte for byte, labels unchanged at 7 classes.
    sid = sources["synthetic_ids"][2]
    assert (folder / "imagesTr" / f"s1_{sid}_0000.png").read_bytes() == (
        sources["synthetic"] / "images" / f"{sid}.png"
    ).read_bytes()
    assert read_png(folder / "imagesTr" / f"s1_{sid}_0000.png")[3, 3] == 40002
    np.testing.assert_array_equal(
        read_png(folder / "labelsTr" / f"s1_{sid}.png"),
        read_png(sources["synthetic"] / "labels" / f"{sid}.png"),
    )
    with open(folder / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["kind"] for r in rows} == {"real", "synthetic"} and len(rows) == 9


@pytest.mark.parametrize(
    ("classes", "first_row", "names"),
    [
        (4, [0, 1, 2, 3, 0, 0, 0], ["background", "NCR/NET", "edema", "enhancing"]),
        (2, [0, 1, 1, 1, 0, 0, 0], ["background", "tumor"]),
    ],
)
def test_reduced_classes(
    sources: dict, tmp_path: Path, classes: int, first_row: list[int], names: list[str]
) -> None:
    folder = export.run(
        ExportSettings(source=[sources["real"]], output=tmp_path / "raw", classes=classes, progress=False)
    )
    info = check_nnunet(folder)
    assert list(info["labels"]) == names
    sid = sources["real_ids"][0]  # a single source keeps the slice ids as case names
    label = read_png(folder / "labelsTr" / f"{sid}.png")
    assert label[0, :7].tolist() == first_row


def test_command_with_test_split_val_and_limit(sources: dict, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from synthseg.paths import config_dir

    overrides = [
        f"source=[{sources['real']},{sources['synthetic']}]",
        f"output={tmp_path / 'raw'}",
        "split=[train,val]",
        "test=true",
        "limit=[null,3]",
        "dataset_id=502",
        "name=BraTSMix",
        "classes=2",
        "progress=false",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="export", overrides=overrides)
    folder = Path(export.main(cfg))
    assert folder.name == "Dataset502_BraTSMix"
    info = check_nnunet(folder)
    # 5 train + 1 val real slices, the first 3 synthetic slices; the 2 real test slices in imagesTs.
    assert info["numTraining"] == 9
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [
        f"s0_{i}_0000.png" for i in sources["real_ids"][6:]
    ]
    assert not (folder / "labelsTr" / f"s1_{sources['synthetic_ids'][3]}.png").exists()


def test_reduced_split(sources: dict, tmp_path: Path) -> None:
    folder = export.run(
        ExportSettings(source=[sources["real"]], output=tmp_path / "raw", split="reduced", progress=False)
    )
    assert check_nnunet(folder)["numTraining"] == 2  # rows 0 and 1 are marked reduced


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format": "msd"}, "format"),
        ({"classes": 3}, "classes"),
        ({"dataset_id": 1000}, "dataset_id"),
        ({"name": "bad name"}, "name"),
        ({"split": "test"}, "imagesTs"),
        ({"split": "everything"}, "unknown split"),
        ({"limit": 6}, "limit 6 is not between 0 and the 5 slices"),
    ],
)
def test_bad_settings_are_refused(sources: dict, tmp_path: Path, overrides: dict, message: str) -> None:
    from omegaconf import OmegaConf

    cfg = {
        "source": str(sources["real"]),
        "output": str(tmp_path / "raw"),
        "format": "nnunet",
        "classes": 7,
        "split": "train",
        "test": False,
        "limit": None,
        "sequences": None,
        "regions": False,
        "folds": 5,
        "dataset_id": 501,
        "name": "SynthSeg",
        "overwrite": False,
        "progress": False,
    }
    cfg.update(overrides)
    with pytest.raises(InputError, match=message):
        export.main(OmegaConf.create(cfg))


def test_existing_and_clashing_datasets_are_refused(sources: dict, tmp_path: Path) -> None:
    export.run(ExportSettings(source=[sources["real"]], output=tmp_path / "raw", progress=False))
    with pytest.raises(InputError, match="already exists"):
        export.run(ExportSettings(source=[sources["real"]], output=tmp_path / "raw", progress=False))
    with pytest.raises(InputError, match="taken by Dataset501_SynthSeg"):
        export.run(
            ExportSettings(source=[sources["real"]], output=tmp_path / "raw", name="Other", progress=False)
        )
    folder = export.run(
        ExportSettings(
            source=[sources["real"]], output=tmp_path / "raw", classes=2, overwrite=True, progress=False
        )
    )
    assert check_nnunet(folder)["labels"] == {"background": 0, "tumor": 1}


def test_a_bad_file_leaves_no_partial_dataset(sources: dict, tmp_path: Path) -> None:
    # An 8-bit image where a 16-bit one is expected: refused, naming the file, and nothing is left behind.
    sid = sources["real_ids"][3]
    write_label8(sources["real"] / "images" / f"{sid}.png", np.zeros((SIDE, SIDE), np.uint8))
    with pytest.raises(InputError, match=f"{sid}.png.*16-bit"):
        export.run(ExportSettings(source=[sources["real"]], output=tmp_path / "raw", progress=False))
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [".Dataset501_SynthSeg.lock"]  # the lock only
