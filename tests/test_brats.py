"""BraTS layout: case discovery, naming presets, label conventions, FAST tissue files and label priority."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.sources.brats import (
    check_case,
    combine_labels,
    find_cases,
    map_tumor_labels,
    read_fast_tissue,
)
from synthseg.data.sources.releases import PRESETS, make_convention
from synthseg.errors import InputError

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (6, 5, 4)


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def ones(dtype: type = np.int16) -> np.ndarray:
    return np.ones(SHAPE, dtype)


def test_presets() -> None:
    b18, b23 = PRESETS["brats2018"], PRESETS["brats2023"]
    assert (b18.groups, b18.image_suffix, b18.seg_suffix, b18.enhancing) == (
        ("HGG", "LGG"),
        "_t1ce",
        "_seg",
        4,
    )
    assert (b23.groups, b23.image_suffix, b23.seg_suffix, b23.enhancing) == ((), "-t1c", "-seg", 3)
    custom = make_convention("brats2018", groups=["HGG"], enhancing=3)
    assert custom.groups == ("HGG",) and custom.enhancing == 3 and custom.image_suffix == "_t1ce"
    with pytest.raises(InputError, match="convention must be one of"):
        make_convention("brats2030")
    with pytest.raises(InputError, match="enhancing must be 3 or 4"):
        make_convention("brats2018", enhancing=5)


def test_find_cases_groups_and_extensions(tmp_path: Path) -> None:
    save(tmp_path / "HGG/Brats18_A_1_1/Brats18_A_1_1_t1ce.nii.gz", ones())
    save(tmp_path / "HGG/Brats18_A_1_1/Brats18_A_1_1_seg.nii.gz", ones())
    save(tmp_path / "LGG/Brats18_B_2_1/Brats18_B_2_1_t1ce.nii", ones())
    save(tmp_path / "LGG/Brats18_B_2_1/Brats18_B_2_1_seg.nii", ones())
    (tmp_path / "HGG/.hidden").mkdir()
    cases = find_cases(tmp_path, PRESETS["brats2018"])
    assert [(c.group, c.name) for c in cases] == [("HGG", "Brats18_A_1_1"), ("LGG", "Brats18_B_2_1")]
    assert cases[1].t1c is not None and cases[1].t1c.name == "Brats18_B_2_1_t1ce.nii"
    only_hgg = find_cases(tmp_path, make_convention(groups=["HGG"]))
    assert [c.name for c in only_hgg] == ["Brats18_A_1_1"]
    with pytest.raises(InputError, match="none of the case folders XYZ/ found"):
        find_cases(tmp_path, make_convention(groups=["XYZ"]))


def test_find_cases_brats2023(tmp_path: Path) -> None:
    case = tmp_path / "BraTS-GLI-00001-000"
    save(case / "BraTS-GLI-00001-000-t1c.nii.gz", ones())
    save(case / "BraTS-GLI-00001-000-seg.nii.gz", ones())
    (found,) = find_cases(tmp_path, PRESETS["brats2023"])
    assert found.group == "" and found.t1c is not None and found.seg is not None
    assert found.seg.name == "BraTS-GLI-00001-000-seg.nii.gz"


def test_fast_seg_never_taken_for_tumor_seg(tmp_path: Path) -> None:
    folder = tmp_path / "HGG/Brats18_C_3_1"
    save(folder / "Brats18_C_3_1_t1ce.nii.gz", ones())
    save(folder / "Brats18_C_3_1_t1ce_seg.nii.gz", ones(np.uint8))
    (case,) = find_cases(tmp_path, PRESETS["brats2018"])
    assert case.seg is None
    assert case.tissue[0] == "fastseg"
    with pytest.raises(InputError, match=r"missing seg: .*Brats18_C_3_1_seg\.nii\.gz.*FSL FAST's tissue"):
        check_case(case, PRESETS["brats2018"])


def test_fast_priority_pve_then_pveseg_then_seg(tmp_path: Path) -> None:
    folder = tmp_path / "HGG/Brats18_D_4_1"
    stem = "Brats18_D_4_1_t1ce"
    save(folder / f"{stem}.nii.gz", ones())
    save(folder / "Brats18_D_4_1_seg.nii.gz", ones())
    save(folder / f"{stem}_seg.nii.gz", ones(np.uint8))
    assert find_cases(tmp_path, PRESETS["brats2018"])[0].tissue[0] == "fastseg"
    save(folder / f"{stem}_pveseg.nii.gz", ones(np.uint8))
    assert find_cases(tmp_path, PRESETS["brats2018"])[0].tissue[0] == "pveseg"
    for k in range(2):
        save(folder / f"{stem}_pve_{k}.nii.gz", ones(np.float32))
    assert find_cases(tmp_path, PRESETS["brats2018"])[0].tissue[0] == "pveseg"  # incomplete pve set
    save(folder / f"{stem}_pve_2.nii.gz", ones(np.float32))
    kind, files = find_cases(tmp_path, PRESETS["brats2018"])[0].tissue
    assert kind == "pve" and [f.name for f in files] == [f"{stem}_pve_{k}.nii.gz" for k in range(3)]


def test_read_pve_argmax_and_outside(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pve = rng.random((3, *SHAPE)).astype(np.float32)
    pve[:, 0] = 0.0  # outside the brain
    files = tuple(save(tmp_path / f"p{k}.nii.gz", pve[k]) for k in range(3))
    codes = read_fast_tissue("pve", files)
    expected = np.argmax(pve, axis=0) + 1
    expected[0] = 0
    np.testing.assert_array_equal(codes, expected)


def test_read_fast_hard_seg_rejects_other_values(tmp_path: Path) -> None:
    data = np.zeros(SHAPE, np.uint8)
    data[0, 0, 0] = 5
    path = save(tmp_path / "x_t1ce_pveseg.nii.gz", data)
    with pytest.raises(
        InputError, match=r"x_t1ce_pveseg\.nii\.gz: unexpected FAST tissue value 5 in 1 voxels"
    ):
        read_fast_tissue("pveseg", (path,))


@pytest.mark.parametrize(
    ("preset", "on_disk", "expected"),
    [("brats2018", [0, 1, 2, 4], [0, 1, 2, 3]), ("brats2023", [0, 1, 2, 3], [0, 1, 2, 3])],
)
def test_label_mapping(preset: str, on_disk: list[int], expected: list[int]) -> None:
    seg = np.array(on_disk * 3)
    out = map_tumor_labels(seg, PRESETS[preset], "seg.nii.gz")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.array(expected * 3))


@pytest.mark.parametrize(
    ("preset", "bad"), [("brats2018", 3), ("brats2023", 4), ("brats2018", -1), ("brats2018", 7)]
)
def test_unexpected_label_names_file_value_count(preset: str, bad: int) -> None:
    seg = np.zeros(50, np.int64)
    seg[:7] = bad
    seg[10] = 1
    with pytest.raises(InputError) as info:
        map_tumor_labels(seg, PRESETS[preset], "/data/c/c_seg.nii.gz")
    assert str(info.value).startswith("/data/c/c_seg.nii.gz: unexpected label ")
    assert f"value {bad} in 7 voxels" in str(info.value)


def test_tumor_over_tissue_over_background() -> None:
    tumor = np.array([0, 0, 0, 0, 1, 2, 3, 3, 1])
    tissue = np.array([0, 1, 2, 3, 3, 2, 1, 0, 0])  # FAST: 1 CSF, 2 GM, 3 WM
    out = combine_labels(tumor.astype(np.uint8), tissue.astype(np.uint8))
    np.testing.assert_array_equal(out, [0, 6, 5, 4, 1, 2, 3, 3, 1])


def test_check_case_mismatch_and_missing(tmp_path: Path) -> None:
    folder = tmp_path / "HGG/Brats18_E_5_1"
    save(folder / "Brats18_E_5_1_t1ce.nii.gz", ones())
    save(folder / "Brats18_E_5_1_seg.nii.gz", np.ones((6, 5, 3), np.uint8))
    (case,) = find_cases(tmp_path, PRESETS["brats2018"])
    with pytest.raises(InputError, match=r"Brats18_E_5_1_seg\.nii\.gz: shape \(6, 5, 3\) does not match"):
        check_case(case, PRESETS["brats2018"])
    (folder / "Brats18_E_5_1_t1ce.nii.gz").unlink()
    (case,) = find_cases(tmp_path, PRESETS["brats2018"])
    with pytest.raises(InputError, match=r"missing T1c: expected .*Brats18_E_5_1_t1ce\.nii\.gz"):
        check_case(case, PRESETS["brats2018"])


def test_every_preset_names_every_sequence_and_label() -> None:
    from synthseg.data.sequences import SEQUENCES

    names = {
        name: tuple(p.suffix(s) for s in SEQUENCES) for name, p in PRESETS.items() if p.layout == "folders"
    }
    assert names == {
        "brats2018": ("_t1", "_t1ce", "_t2", "_flair"),
        "brats2020": ("_t1", "_t1ce", "_t2", "_flair"),
        "brats2021": ("_t1", "_t1ce", "_t2", "_flair"),
        "brats2023": ("-t1n", "-t1c", "-t2w", "-t2f"),
        "brats2024": ("-t1n", "-t1c", "-t2w", "-t2f"),
    }
    assert PRESETS["brats2024"].label_map == {
        0: "background",
        1: "ncr",
        2: "edema",
        3: "enhancing",
        4: "cavity",
    }
    assert PRESETS["msd"].label_map == {0: "background", 1: "edema", 2: "ncr", 3: "enhancing"}
    assert [PRESETS["msd"].channel(s) for s in SEQUENCES] == [1, 2, 3, 0]
    assert [PRESETS[p].groups for p in ("brats2018", "brats2020", "brats2021")] == [("HGG", "LGG"), (), ()]


def test_other_sequences_resolved_not_required(tmp_path: Path) -> None:
    folder = tmp_path / "BraTS-GLI-00001-000"
    save(folder / "BraTS-GLI-00001-000-t1c.nii.gz", ones())
    save(folder / "BraTS-GLI-00001-000-seg.nii.gz", ones())
    save(folder / "BraTS-GLI-00001-000-t2f.nii.gz", ones())
    (case,) = find_cases(tmp_path, PRESETS["brats2023"])
    assert case.file("flair") == folder / "BraTS-GLI-00001-000-t2f.nii.gz" and case.file("t1") is None
    check_case(case, PRESETS["brats2023"])  # T1c only: the missing T1 does not matter
    with pytest.raises(InputError, match=r"missing T1: expected .*BraTS-GLI-00001-000-t1n\.nii\.gz"):
        check_case(case, PRESETS["brats2023"], sequences=("t1c", "t1"))
