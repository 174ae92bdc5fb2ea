"""Label maps as data: class names, dataset.json, the label-order cross-check and its valid-case quirks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthseg.data.sources.brats import tumor_and_cavity
from synthseg.data.sources.label_check import check_label_order, outside_shares
from synthseg.data.sources.releases import PRESETS, class_name, make_convention, read_dataset_json, recognise
from synthseg.errors import InputError

SHAPE = (40, 40, 24)


def glioma(
    center: tuple[float, float, float], core: float, rim: float, edema: float
) -> dict[str, np.ndarray]:
    """Nested spheres (voxel radii): necrosis < rim (enhancing) < edema."""
    x, y, z = np.indices(SHAPE)
    r = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
    return {"ncr": r < core, "enhancing": (r >= core) & (r < rim), "edema": (r >= rim) & (r < edema)}


def on_disk(masks: dict[str, np.ndarray], values: dict[str, int]) -> np.ndarray:
    seg = np.zeros(SHAPE, np.int64)
    for name, value in values.items():
        seg[masks[name]] = value
    return seg


BRATS = {"ncr": 1, "edema": 2, "enhancing": 4}
MSD = {"edema": 1, "ncr": 2, "enhancing": 3}


def test_class_names_by_meaning() -> None:
    assert [class_name(n) for n in ("non-enhancing tumor", "enhancing tumour", "edema", "background")] == [
        "ncr",
        "enhancing",
        "edema",
        "background",
    ]
    assert [class_name(n) for n in ("NETC", "SNFH", "ET", "Resection cavity", "NCR/NET")] == [
        "ncr",
        "edema",
        "enhancing",
        "cavity",
        "ncr",
    ]
    with pytest.raises(InputError, match="label name 'tumor' is not one of"):
        class_name("tumor")


def test_maps_by_name_onto_seven_classes() -> None:
    seg = np.array([0, 1, 2, 3, 4])
    msd = PRESETS["msd"]
    tumor, cavity = tumor_and_cavity(seg[:4], msd, "x")
    np.testing.assert_array_equal(tumor, [0, 2, 1, 3])  # MSD 1 edema -> class 2, 2 non-enhancing -> 1
    assert cavity is None
    tumor, cavity = tumor_and_cavity(seg, PRESETS["brats2024"], "x")
    np.testing.assert_array_equal(tumor, [0, 1, 2, 3, 0])
    assert cavity is not None and cavity.tolist() == [False, False, False, False, True]


def test_dataset_json_msd_and_nnunet_v2(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(
        json.dumps(
            {
                "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {
                    "0": "background",
                    "1": "edema",
                    "2": "non-enhancing tumor",
                    "3": "enhancing tumour",
                },
            }
        )
    )
    channels, labels = read_dataset_json(path)
    assert dict(channels) == {"flair": 0, "t1": 1, "t1c": 2, "t2": 3}
    assert labels == ((0, "background"), (1, "edema"), (2, "ncr"), (3, "enhancing"))
    path.write_text(
        json.dumps({"channel_names": {"0": "T1", "1": "T1C"}, "labels": {"background": 0, "ED": 2}})
    )
    channels, labels = read_dataset_json(path)
    assert dict(channels) == {"t1": 0, "t1c": 1} and labels == ((0, "background"), (2, "edema"))
    path.write_text(json.dumps({"modality": {"0": "FLAIR"}}))
    with pytest.raises(InputError, match=r"dataset\.json: no T1c channel"):
        read_dataset_json(path)


def test_custom_labels_and_enhancing_override() -> None:
    conv = make_convention("brats2018", enhancing=3)
    assert conv.label_map == {0: "background", 1: "ncr", 2: "edema", 3: "enhancing"} and conv.enhancing == 3
    # two values may share a class (BraTS 2017 stored non-enhancing tumor as 3 beside necrosis 1)
    conv = make_convention("brats2018", labels={0: "background", 1: "ncr", 2: "edema", 3: "NET", 4: "ET"})
    np.testing.assert_array_equal(tumor_and_cavity(np.array([1, 2, 3, 4]), conv, "x")[0], [1, 2, 1, 3])
    with pytest.raises(InputError, match="label name 'whole tumor' is not one of"):
        make_convention("custom", image_suffix="_a", seg_suffix="_b", labels={1: "whole tumor"})


def test_swapped_order_detected_both_ways() -> None:
    masks = glioma((20, 20, 12), 4, 6, 10)
    with pytest.raises(
        InputError, match=r"^s\.nii: labels contradict convention brats2023.*use convention=msd$"
    ):
        check_label_order(on_disk(masks, MSD), PRESETS["brats2023"], "s.nii")
    with pytest.raises(InputError, match=r"looks like BraTS 2023 GLI order .*use convention=brats2023$"):
        check_label_order(on_disk(masks, {"ncr": 1, "edema": 2, "enhancing": 3}), PRESETS["msd"], "s.nii")
    # 2018 values swapped: no preset has that order, the line gives the custom map
    swapped = on_disk(masks, {"edema": 1, "ncr": 2, "enhancing": 4})
    with pytest.raises(InputError, match=r"edema and NCR/NET swapped .*convention=custom labels="):
        check_label_order(swapped, PRESETS["brats2018"], "s.nii")


def test_cavity_counts_with_the_tumor() -> None:
    # 2024 post-treatment: edema around a resection cavity with a little residual tumor on its wall
    x, y, z = np.indices(SHAPE)
    r = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + (z - 12) ** 2)
    seg = np.zeros(SHAPE, np.int64)
    seg[r < 6] = 4  # cavity
    seg[(r >= 6) & (r < 7.5) & (x > 20)] = 3  # enhancing rim on one side
    seg[(r >= 6) & (r < 7.5) & (x <= 20)] = 1
    seg[(r >= 7.5) & (r < 11)] = 2
    check_label_order(seg, PRESETS["brats2024"], "s.nii")  # core between cavity and edema: fine
    core, edema = outside_shares(seg, PRESETS["brats2024"]) or (1.0, 0.0)
    assert core == 0.0 and edema > 0.5


@pytest.mark.parametrize(
    "quirk",
    ["lgg_without_et", "tiny", "outside_image", "at_volume_edge", "no_edema", "edema_only_on_one_side"],
)
def test_valid_brats_cases_never_rejected(quirk: str) -> None:
    if quirk == "lgg_without_et":  # non-enhancing tumor with edema, no label 4 at all
        masks = glioma((20, 20, 12), 5, 5, 9)
    elif quirk == "tiny":  # a few voxels, random mixture
        masks = {k: np.zeros(SHAPE, bool) for k in ("ncr", "enhancing", "edema")}
        rng = np.random.default_rng(0)
        pick = rng.choice(3, size=(2, 2, 2))
        for index, name in enumerate(("ncr", "enhancing", "edema")):
            masks[name][10:12, 10:12, 10:12] = pick == index
    elif quirk == "outside_image":  # labels where the image is 0 do not matter to the check
        masks = glioma((2, 20, 12), 4, 6, 10)
    elif quirk == "at_volume_edge":  # core cut by the volume edge
        masks = glioma((0, 20, 0), 6, 8, 12)
    elif quirk == "no_edema":
        masks = glioma((20, 20, 12), 4, 7, 7)
    else:  # edema on one side only, core exposed elsewhere
        masks = glioma((20, 20, 12), 4, 6, 6)
        x = np.indices(SHAPE)[0]
        r = np.sqrt(((np.indices(SHAPE) - np.array([20, 20, 12])[:, None, None, None]) ** 2).sum(0))
        masks["edema"] = (r >= 6) & (r < 10) & (x > 20)
    check_label_order(on_disk(masks, BRATS), PRESETS["brats2018"], "s.nii")


def test_recognise_descends_into_the_archive_folder(tmp_path: Path) -> None:
    for name in ("BraTS2021_00000", "BraTS2021_00001"):
        (tmp_path / "download/BraTS2021_Training_Data" / name).mkdir(parents=True)
    found = recognise(tmp_path / "download")
    assert found.preset == "brats2021" and found.groups == ("BraTS2021_Training_Data/",)
    assert (
        found.message
        == "recognised BraTS 2021 layout: 2 case folders BraTS2021_Training_Data/BraTS2021_NNNNN"
    )


def test_shares_do_not_depend_on_the_volume_around_the_tumor() -> None:
    masks = glioma((20, 20, 12), 4, 6, 9)
    seg = on_disk(masks, BRATS)
    big = np.zeros((80, 80, 40), np.int64)
    big[10:50, 20:60, 5:29] = seg
    edge = seg[14:, :, :]  # cut through the tumor: the cut face is outside
    assert outside_shares(big, PRESETS["brats2018"]) == outside_shares(seg, PRESETS["brats2018"])
    from synthseg.data.sources.label_check import contacts

    lookup = np.array([0, 1, 2, 0, 1])
    assert outside_shares(edge, PRESETS["brats2018"]) == pytest.approx(
        tuple(contacts(lookup[edge])[g, 0] / contacts(lookup[edge])[g].sum() for g in (1, 2))
    )
