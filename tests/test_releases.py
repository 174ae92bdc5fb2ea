"""Every BraTS release 2018-2024 and MSD Task01, as downloaded, prepared with no switches.

Tiny trees (24x24x8 volumes) are written here in each release's layout; the tests check the recognised
release, the case names and the exact 7-class label counts, computed here from the volumes written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.pngio import read_png
from synthseg.data.prepare import prepare as prep
from synthseg.data.prepare import slices
from synthseg.errors import InputError
from tests.helpers.releases import (
    MAPS,
    NAMES_2023,
    SHAPE,
    SIZE,
    counts_by_case,
    expected_counts,
    expected_label,
    fake_tissue,
    run,
    save,
    tree_2018,
    tree_2020,
    tree_2021,
    tree_2023,
    tree_2024,
    tree_msd,
    write_case,
)

LAYOUTS: list[tuple[str, Callable[..., Any], str, str]] = [
    ("2018", tree_2018, "brats2018", "recognised BraTS 2018/2019 layout: 2 case folders in HGG/, LGG/"),
    ("2020", tree_2020, "brats2020", "recognised BraTS 2020 layout: 2 case folders BraTS20_Training_NNN"),
    ("2021", tree_2021, "brats2021", "recognised BraTS 2021 layout: 2 case folders BraTS2021_NNNNN"),
    (
        "2023",
        tree_2023,
        "brats2023",
        "recognised BraTS 2023/2024 GLI layout: 2 case folders BraTS-GLI-NNNNN-NNN",
    ),
    (
        "2024",
        tree_2024,
        "brats2024",
        "recognised BraTS 2024 GLI layout (training_data*_v2/ folders): 2 case folders BraTS-GLI-NNNNN-NNN "
        "in training_data1_v2/",
    ),
    (
        "msd",
        tree_msd,
        "msd",
        "recognised MSD Task01_BrainTumour layout: dataset.json and 2 images in imagesTr/",
    ),
]


@pytest.mark.parametrize(("release", "make", "preset", "line"), LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_every_release_with_no_switches(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    release: str,
    make: Callable[..., Any],
    preset: str,
    line: str,
) -> None:
    source, cases = make(tmp_path / "download")
    record, rows = run(source, tmp_path / "out", monkeypatch)
    assert record["release"]["recognised"].startswith(line)
    assert record["release"]["preset"] == preset
    assert capsys.readouterr().out.startswith(line)  # said before any case is read
    assert sorted(c["case"] for c in record["cases"]) == sorted(cases)
    got = counts_by_case(rows)
    for name, case in cases.items():
        assert got[name] == expected_counts(case["label"]), name
        # a tumor slice, pixel for pixel
        label = read_png(tmp_path / "out/labels" / f"{name}_004.png")
        top = (SIZE - SHAPE[1]) // 2
        np.testing.assert_array_equal(
            label[top : top + SHAPE[1], top : top + SHAPE[0]], case["label"][:, :, 4].T
        )
        image = read_png(tmp_path / "out/images" / f"{name}_004.png")
        np.testing.assert_array_equal(
            image[top : top + SHAPE[1], top : top + SHAPE[0]], case["image"][:, :, 4].T
        )


def test_2024_cavity_counts_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, cases = tree_2024(tmp_path / "download")
    with_rc = "BraTS-GLI-00005-100"
    rc = cases[with_rc]["masks"]["cavity"]
    record, rows = run(source, tmp_path / "csf", monkeypatch)
    assert {c["case"]: c["cavity_voxels"] for c in record["cases"]} == {
        with_rc: int(rc.sum()),
        "BraTS-GLI-00005-101": 0,
    }
    assert record["release"]["cavity_voxels"] == int(rc.sum()) and record["release"]["cavity"] == "csf"
    summary = prep.summarize(record)
    assert f"resection cavity: {int(rc.sum())} voxels in 1 cases, mapped to CSF" in summary

    record, rows = run(source, tmp_path / "bg", monkeypatch, cavity="background")
    image, masks = cases[with_rc]["image"], cases[with_rc]["masks"]
    assert counts_by_case(rows)[with_rc] == expected_counts(expected_label(image, masks, cavity_class=0))

    record, rows = run(source, tmp_path / "drop", monkeypatch, cavity="drop_slice")
    kept = sorted(int(r["slice"]) for r in rows if r["case"] == with_rc)
    assert kept == [k for k in range(SHAPE[2]) if not rc[:, :, k].any()] == [0, 1, 5, 6, 7]
    assert {r["id"] for r in rows if r["case"] == with_rc} == {f"{with_rc}_{k:03d}" for k in kept}
    assert sum(1 for r in rows if r["case"] != with_rc) == SHAPE[2]  # other cases keep every slice

    with pytest.raises(
        InputError, match=rf"{with_rc}-seg\.nii\.gz: {int(rc.sum())} voxels of resection cavity"
    ):
        run(source, tmp_path / "refuse", monkeypatch, cavity="refuse")
    assert not (tmp_path / "refuse").exists()


def test_gli_without_2024_signs_decided_by_label_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "gli"
    write_case(
        top / "BraTS-GLI-00001-000", "BraTS-GLI-00001-000", 0, "-", NAMES_2023, MAPS["2023"], cavity=True
    )
    write_case(top / "BraTS-GLI-00002-000", "BraTS-GLI-00002-000", 1, "-", NAMES_2023, MAPS["2023"])
    record, _ = run(top, tmp_path / "out", monkeypatch)
    assert record["release"]["preset"] == "brats2024"
    assert "BraTS 2024: 1 annotations hold label 4 (resection cavity)" in prep.summarize(record)
    # the explicit 2023 preset has no label 4
    with pytest.raises(InputError, match=r"unexpected label value 4 in \d+ voxels"):
        run(top, tmp_path / "o2", monkeypatch, convention="brats2023")


def test_2020_alias_only_in_2020_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = tree_2020(tmp_path / "download")
    record, _ = run(source, tmp_path / "out", monkeypatch)
    assert record["release"]["seg_aliases"] == {"BraTS20_Training_355": "W39_1998.09.19_Segm.nii"}
    assert "BraTS20_Training_355: annotation read from W39_1998.09.19_Segm.nii" in prep.summarize(record)
    with pytest.raises(InputError, match=r"missing seg: expected .*BraTS20_Training_355_seg\.nii\.gz"):
        run(source, tmp_path / "o2", monkeypatch, convention="brats2021")


def test_explicit_presets_match_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for release, make, preset, _ in LAYOUTS:
        source, cases = make(tmp_path / release)
        record, rows = run(source, tmp_path / f"out{release}", monkeypatch, convention=preset)
        assert record["release"]["preset"] == preset
        got = counts_by_case(rows)
        assert all(got[n] == expected_counts(c["label"]) for n, c in cases.items()), release


def test_custom_needs_suffixes_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "mine"
    case = write_case(top / "sub01", "sub01", 0, "_", {"t1c": "T1GD"}, {"ncr": 5, "edema": 6, "enhancing": 7})
    with pytest.raises(InputError, match="convention=custom needs image_suffix"):
        run(top, tmp_path / "o1", monkeypatch, convention="custom", image_suffix="_T1GD")
    record, rows = run(
        top,
        tmp_path / "o2",
        monkeypatch,
        convention="custom",
        image_suffix="_T1GD",
        seg_suffix="_seg",
        labels={0: "background", 5: "necrosis", 6: "edema", 7: "enhancing tumor"},
    )
    assert counts_by_case(rows)["sub01"] == expected_counts(case["label"])


def test_msd_order_under_brats_preset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MSD reshaped by hand into BraTS 2023 case folders: values in MSD order (1 edema, 2 non-enhancing, 3 ET)
    top = tmp_path / "reshaped"
    for i, name in enumerate(["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]):
        write_case(top / name, name, i, "-", NAMES_2023, MAPS["msd"])
    for kwargs in ({}, {"convention": "brats2023"}, {"on_error": "skip"}):
        with pytest.raises(InputError) as info:
            run(top, tmp_path / "out", monkeypatch, **kwargs)
        message = str(info.value)
        assert message.startswith(
            f"{top}/BraTS-GLI-00001-000/BraTS-GLI-00001-000-seg.nii.gz: labels contradict"
        )
        assert "the data looks like MSD Task01_BrainTumour order (1 edema, 2 NCR/NET, 3 enhancing)" in message
        assert message.endswith("use convention=msd") and "\n" not in message
        assert not (tmp_path / "out").exists()


def test_brats_order_under_msd_preset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = tree_msd(tmp_path / "download", values=MAPS["2023"])
    with pytest.raises(
        InputError, match=r"BRATS_001\.nii\.gz: labels contradict convention msd.*BraTS 2023 GLI order"
    ):
        run(source, tmp_path / "out", monkeypatch)


def test_msd_ignores_resource_forks_and_imagests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = tree_msd(tmp_path / "download")
    record, _ = run(source, tmp_path / "out", monkeypatch)
    assert [c["case"] for c in record["cases"]] == ["BRATS_001", "BRATS_002"]  # no ._BRATS_*, no BRATS_485
    channels = json.loads(json.dumps(record["convention"]["channels"]))
    assert channels == [["flair", 0], ["t1", 1], ["t1c", 2], ["t2", 3]]
    assert "T1c = channel 2" in record["release"]["recognised"]


def test_msd_channel_by_name_in_dataset_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, cases = tree_msd(tmp_path / "download")
    # the same data with the channels listed in another order: T1c is then read from channel 0
    for name in cases:
        path = source / "imagesTr" / f"{name}.nii.gz"
        data = np.asarray(nib.load(str(path)).dataobj)
        save(path, data[..., [2, 0, 1, 3]])
    meta = json.loads((source / "dataset.json").read_text())
    meta["modality"] = {"0": "t1gd", "1": "FLAIR", "2": "T1w", "3": "T2w"}
    (source / "dataset.json").write_text(json.dumps(meta))
    record, rows = run(source, tmp_path / "out", monkeypatch)
    assert counts_by_case(rows) == {n: expected_counts(c["label"]) for n, c in cases.items()}
    top = (SIZE - SHAPE[1]) // 2
    image = read_png(tmp_path / "out/images/BRATS_002_004.png")
    np.testing.assert_array_equal(
        image[top : top + 24, top : top + 24], cases["BRATS_002"]["image"][:, :, 4].T
    )


@pytest.mark.parametrize(
    ("layout", "found"),
    [
        (
            {"HGG/Brats18_A_1_1": None, "BraTS2021_00001": None},
            "ambiguous tree, found BraTS 2018/2019: 1 case folders in HGG/; BraTS 2021: 1 case folders BraTS2021_NNNNN",
        ),
        (
            {"subjects/a": None, "notes": None},
            "no known BraTS or MSD layout (found 2 other folders (notes, subjects))",
        ),
        ({"BraTS-PED-00001-000": None}, "1 folders like BraTS-PED-00001-000 (a BraTS sub-challenge"),
    ],
)
def test_unknown_or_ambiguous_tree_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: dict[str, None], found: str
) -> None:
    for folder in layout:
        (tmp_path / "src" / folder).mkdir(parents=True)
    with pytest.raises(InputError) as info:
        run(tmp_path / "src", tmp_path / "out", monkeypatch)
    assert found in str(info.value)
    assert (
        "choose convention= one of brats2018, brats2020, brats2021, brats2023, brats2024, msd, custom"
        in str(info.value)
    )


def test_broken_flair_does_not_stop_t1c_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthseg.data.sources.brats import check_case, find_cases
    from synthseg.data.sources.releases import PRESETS

    source, cases = tree_2021(tmp_path / "download")
    flair = source / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    flair.write_bytes(b"not a volume")
    record, rows = run(source, tmp_path / "out", monkeypatch)
    assert len(record["cases"]) == 2
    found = find_cases(source, PRESETS["brats2021"])[0]
    assert found.file("flair") == flair and found.file("t2") is not None
    with pytest.raises(InputError, match=r"BraTS2021_00000_flair\.nii\.gz: named \.nii\.gz but not gzip"):
        check_case(found, PRESETS["brats2021"], sequences=("t1c", "flair"))


def test_scaled_float_image_rescaled_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, cases = tree_2021(tmp_path / "download")
    name = "BraTS2021_00002"
    path = source / name / f"{name}_t1ce.nii.gz"
    scaled = cases[name]["image"].astype(np.float32) / 1000.0  # [0.1, 1): a normalised copy
    save(path, scaled)
    record, rows = run(source, tmp_path / "out", monkeypatch)
    scaling = {c["case"]: c["intensity_scaling"] for c in record["cases"]}
    assert scaling["BraTS2021_00000"] is None
    offset, factor = scaling[name]["offset"], scaling[name]["factor"]
    inside = scaled[scaled != 0].astype(np.float64)
    assert (inside.min() - offset) * factor == pytest.approx(1.0)
    assert (inside.max() - offset) * factor == pytest.approx(65535.0)
    image = read_png(tmp_path / "out/images" / f"{name}_004.png")
    top = (SIZE - 24) // 2
    plane = scaled[:, :, 4].astype(np.float64)
    want = np.where(plane != 0, np.rint((plane - offset) * factor), 0).T
    np.testing.assert_array_equal(image[top : top + 24, top : top + 24], want)
    assert len(np.unique(image)) == len(np.unique(plane))  # every grey level kept, not a handful
    assert f"{name}: float image already scaled, rescaled to 1..65535" in prep.summarize(record)


@pytest.mark.slow
def test_cli_no_switches_and_custom_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthseg.cli import main

    monkeypatch.setattr(slices, "_segment_builtin", fake_tissue)
    source, _ = tree_msd(tmp_path / "download")
    common = ["size=32", "progress=false", "workers=1"]
    main(["prepare", f"source={tmp_path / 'download'}", f"output={tmp_path / 'out'}", *common])
    out = capsys.readouterr().out
    assert out.startswith(
        "recognised MSD Task01_BrainTumour layout: dataset.json and 2 images in Task01_BrainTumour/"
    )
    assert "prepared 2 cases, 16 slices" in out
    saved = json.loads((tmp_path / "out/prepare.json").read_text())
    assert saved["release"]["preset"] == "msd" and saved["config"]["convention"] == "auto"
    assert [c["intensity_scaling"] for c in saved["cases"]] == [None, None]

    top = tmp_path / "mine"
    case = write_case(top / "sub01", "sub01", 0, "_", {"t1c": "T1GD"}, {"ncr": 5, "edema": 6, "enhancing": 7})
    main(
        [
            "prepare",
            f"source={top}",
            f"output={tmp_path / 'o2'}",
            *common,
            "convention=custom",
            "image_suffix=_T1GD",
            "seg_suffix=_seg",
            "labels={0: background, 5: necrosis, 6: edema, 7: enhancing}",
        ]
    )
    with open(tmp_path / "o2/manifest.csv", newline="") as handle:
        assert counts_by_case(list(csv.DictReader(handle)))["sub01"] == expected_counts(case["label"])
    with pytest.raises(SystemExit) as info:
        main(["prepare", f"source={top}", f"output={tmp_path / 'o3'}", *common, "cavity=keep"])
    assert info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("cavity must be one of csf, background, drop_slice, refuse, got 'keep'")
    )
