"""The demo cohort: BraTS 2018 layout, NIfTI properties, tumour, tissue contrast, tissue maps, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.demo import case as demo_case
from synthseg.data.demo import demo_cohort
from synthseg.errors import InputError

SEED = 3
CASES = 2


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "cohort"
    demo_cohort.run(
        demo_cohort.DemoCohortSettings(output=root, cases=CASES, seed=SEED, montage=True, progress=False)
    )
    return root


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "HGG").iterdir() if p.is_dir())


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


@pytest.mark.slow
def test_layout_and_naming(cohort: Path) -> None:
    dirs = _case_dirs(cohort)
    assert len(dirs) == CASES
    assert not [p for p in cohort.parent.iterdir() if p.name.endswith(".partial")]
    for case in dirs:
        assert re.fullmatch(r"Brats18_(2013|CBICA|TCIA\d\d)_[A-Z0-9]+_1", case.name), case.name
        expected = {
            f"{case.name}_{suffix}.nii.gz"
            for suffix in ("t1", "t1ce", "t2", "flair", "seg", "t1ce_pve_0", "t1ce_pve_1", "t1ce_pve_2")
        }
        assert {p.name for p in case.iterdir()} == expected
    assert (cohort / "montage.png").stat().st_size > 10_000


def test_volumes_shapes_dtypes_labels_affine(cohort: Path) -> None:
    for case in _case_dirs(cohort):
        t1ce, t1_img = _load(case / f"{case.name}_t1ce.nii.gz")
        seg, seg_img = _load(case / f"{case.name}_seg.nii.gz")
        assert t1ce.shape == seg.shape == (240, 240, 155)
        assert t1_img.get_data_dtype() == np.int16
        assert seg_img.get_data_dtype() in (np.uint8, np.int16)
        assert np.allclose(t1_img.header.get_zooms(), 1.0)
        assert np.allclose(t1_img.affine, seg_img.affine)
        assert nib.aff2axcodes(t1_img.affine) == ("L", "P", "S")
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        # Skull-stripped: background is exactly zero, the tumour lies inside the brain.
        brain = t1ce > 0
        assert 0.1 < brain.mean() < 0.35
        assert t1ce.min() == 0
        assert not (seg[~brain] > 0).any()
        # The brain sits centred in the grid, like BraTS's SRI24 space.
        centre = np.argwhere(brain).mean(0)
        assert np.all(np.abs(centre - (np.array(t1ce.shape) - 1) / 2) < 12), centre
        for k in range(3):
            pve, pve_img = _load(case / f"{case.name}_t1ce_pve_{k}.nii.gz")
            assert pve_img.get_data_dtype() == np.float32
            assert np.allclose(pve_img.affine, t1_img.affine)
            assert pve.min() >= 0 and pve.max() <= 1


def test_tumor_has_all_classes_and_t1c_appearance(cohort: Path) -> None:
    for case in _case_dirs(cohort):
        t1ce, _ = _load(case / f"{case.name}_t1ce.nii.gz")
        seg, _ = _load(case / f"{case.name}_seg.nii.gz")
        wm, _ = _load(case / f"{case.name}_t1ce_pve_2.nii.gz")
        counts = {v: int((seg == v).sum()) for v in (1, 2, 4)}
        assert min(counts.values()) > 300, counts
        white = np.median(t1ce[wm > 0.9])
        # Dark necrotic core, bright enhancing rim.
        assert np.median(t1ce[seg == 1]) < 0.7 * white
        assert np.median(t1ce[seg == 4]) > 1.05 * white
        # Necrosis is surrounded by enhancing tumour, edema lies outside it: the core's centroid is nearer the
        # tumour centre than the edema's voxels are on average.
        centre = np.argwhere(seg == 1).mean(0)
        tumour_radius = np.linalg.norm(np.argwhere(seg == 4) - centre, axis=1).mean()
        edema_radius = np.linalg.norm(np.argwhere(seg == 2) - centre, axis=1).mean()
        assert edema_radius > tumour_radius


@pytest.mark.slow
def test_tissue_maps_and_contrast_order(cohort: Path) -> None:
    for case in _case_dirs(cohort):
        t1ce, _ = _load(case / f"{case.name}_t1ce.nii.gz")
        seg, _ = _load(case / f"{case.name}_seg.nii.gz")
        pve = np.stack([_load(case / f"{case.name}_t1ce_pve_{k}.nii.gz")[0] for k in range(3)])
        total = pve.sum(0)
        healthy = (t1ce > 0) & (seg == 0)
        # Zero outside the brain and in the tumour; partial volumes add up inside the healthy brain.
        assert not total[~healthy].any()
        assert np.all(total[healthy] > 0.45) and np.all(total <= 1.0)
        assert np.median(total[healthy]) > 0.99
        means = [np.mean(t1ce[healthy & (pve[k] > 0.9)]) for k in range(3)]  # CSF, GM, WM
        assert means[2] > 1.1 * means[1] > 1.1 * 1.1 * means[0], means
        fractions = [(healthy & (pve.argmax(0) == k)).sum() / healthy.sum() for k in range(3)]
        assert all(f > 0.05 for f in fractions), fractions


@pytest.mark.slow
def test_t1_t2_flair_have_their_own_contrast(cohort: Path) -> None:
    for case in _case_dirs(cohort):
        seg, _ = _load(case / f"{case.name}_seg.nii.gz")
        pve = np.stack([_load(case / f"{case.name}_t1ce_pve_{k}.nii.gz")[0] for k in range(3)])
        t1ce, t1c_img = _load(case / f"{case.name}_t1ce.nii.gz")
        healthy = (t1ce > 0) & (seg == 0)
        means = {}
        for seq in ("t1", "t2", "flair"):
            image, img = _load(case / f"{case.name}_{seq}.nii.gz")
            assert image.shape == t1ce.shape and img.get_data_dtype() == np.int16
            assert np.allclose(img.affine, t1c_img.affine) and image.min() == 0
            tissue = [np.mean(image[healthy & (pve[k] > 0.9)]) for k in range(3)]  # CSF, GM, WM
            tumor = {v: np.mean(image[seg == v]) for v in (1, 2, 4)}
            means[seq] = (tissue, tumor)
            assert not np.array_equal(image > 0, np.zeros_like(image, bool))
        (csf, gm, wm), tumor = means["t1"]
        assert wm > gm > csf and tumor[4] < wm and tumor[2] < wm  # T1: no enhancement, tumour dark
        assert tumor[4] < 0.8 * np.mean(t1ce[seg == 4]) / np.mean(t1ce[healthy & (pve[2] > 0.9)]) * wm
        (csf, gm, wm), tumor = means["t2"]
        assert csf > gm > wm and tumor[2] > 1.4 * wm  # T2: CSF bright, edema bright, WM < GM
        (csf, gm, wm), tumor = means["flair"]
        assert csf < 0.5 * wm < 0.5 * gm and tumor[2] > 1.4 * gm  # FLAIR: CSF suppressed, edema bright


def test_a_sequence_sometimes_has_a_slightly_different_skull_strip() -> None:
    from types import SimpleNamespace

    from synthseg.data.demo.sequences import paint_sequences

    shape = (20, 20, 20)
    brain = np.zeros(shape, bool)
    brain[4:16, 4:16, 4:16] = True
    wm = brain * 0.8
    gm = brain * 0.2
    seg = np.zeros(shape, np.uint8)
    seg[8:11, 8:11, 8:11] = 4
    scanner = SimpleNamespace(wm_level=1000.0, noise=0.02, bias=0.05)
    differing = 0
    for seed in range(12):
        out = paint_sequences(
            np.random.default_rng(seed), scanner, wm * 0.87, (brain * 0.0, gm, wm), brain * 0.0, seg,
            (slice(None),) * 3, brain, demo_case._smooth_field,
        )  # fmt: skip
        masks = [out[s] > 0 for s in ("t1", "t2", "flair")]
        changed = [m for m in masks if not np.array_equal(m, brain)]
        assert len(changed) <= 1
        for m in changed:  # one voxel in or out, no more
            from scipy import ndimage

            assert np.array_equal(m, ndimage.binary_dilation(brain)) or np.array_equal(
                m, ndimage.binary_erosion(brain)
            )
        differing += len(changed)
    assert 1 <= differing <= 8


@pytest.mark.slow
def test_same_seed_same_bytes_through_cli(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg.cli import run

    monkeypatch.chdir(tmp_path)
    # two worker processes make the two cases: the same bytes as the one-process fixture
    run(
        "demo-cohort",
        [
            f"output={tmp_path / 'again'}",
            f"cases={CASES}",
            f"seed={SEED}",
            "montage=false",
            "progress=false",
            "workers=2",
        ],
    )
    again = _case_dirs(tmp_path / "again")
    first = _case_dirs(cohort)
    assert [p.name for p in again] == [p.name for p in first]
    for original, copy in zip(first, again, strict=True):
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in original.iterdir())
        for path in original.iterdir():
            assert (copy / path.name).read_bytes() == path.read_bytes(), path.name
    assert not (tmp_path / "again" / "montage.png").exists()


@pytest.mark.slow
def test_other_seed_differs() -> None:
    assert demo_case.case_names(4, SEED) != demo_case.case_names(4, SEED + 1)
    assert len(set(demo_case.case_names(50, SEED))) == 50
    scanner = demo_case.scanner_of(SEED, "CBICA")
    a = demo_case.make_case("a", scanner, np.random.default_rng([SEED, 11, 0]))
    b = demo_case.make_case("b", scanner, np.random.default_rng([SEED + 1, 11, 0]))
    assert not np.array_equal(a.t1ce, b.t1ce)
    # Tumour position varies between cases.
    ca, cb = (np.argwhere(c.seg > 0).mean(0) for c in (a, b))
    assert np.linalg.norm(ca - cb) > 3


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 1"):
        demo_cohort.run(demo_cohort.DemoCohortSettings(output=tmp_path / "x", cases=0, seed=0))
    with pytest.raises(InputError, match="workers must be positive"):
        demo_cohort.DemoCohortSettings.from_config(
            {"output": str(tmp_path / "y"), "workers": 0}, partial=True
        )
    assert not (tmp_path / "y").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("not a cohort")
    with pytest.raises(InputError, match=f"{busy}: not empty and not written by synthseg demo-cohort"):
        demo_cohort.run(demo_cohort.DemoCohortSettings(output=busy, cases=1, seed=0, progress=False))
    assert (busy / "keep.txt").read_text() == "not a cohort"
