"""The Z-score filter: streaming statistics, z-score norms, the zero-std rule, and `synthseg filter` end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from synthseg.data.labels import PALETTE
from synthseg.data.pngio import read_png, write_label8
from synthseg.errors import InputError
from synthseg.synth import filter as zfilter
from synthseg.synth.zscore import (
    RunningMoments,
    discarded_fraction,
    filter_masks,
    reference_statistics,
    scaled_threshold,
    zscore_norms,
)
from tests.conftest import write_dataset

SIDE = 32


def brain_mask(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A plausible label map: tissue disk in the centre (4/5/6) with a small tumor (1/2/3), random shifts."""
    yy, xx = np.mgrid[:side, :side]
    cy, cx = side / 2 + rng.integers(-2, 3), side / 2 + rng.integers(-2, 3)
    r = np.hypot(yy - cy, xx - cx)
    mask = np.zeros((side, side), np.uint8)
    mask[r < side * 0.35] = 6
    mask[r < side * 0.30] = 5
    mask[r < side * 0.20] = 4
    ty, tx = cy + rng.integers(-3, 4), cx + rng.integers(-3, 4)
    t = np.hypot(yy - ty, xx - tx)
    mask[t < 4] = 2
    mask[t < 2.5] = 3
    mask[t < 1.2] = 1
    return mask


# --------------------------------------------------------------------------------------------------------
# Core functions


@pytest.mark.parametrize("batch_size", [1, 3, 7, 50])
def test_streaming_statistics_equal_in_memory_numpy(batch_size: int) -> None:
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 7, size=(23, 8, 8)).astype(np.uint8)
    masks[:, 0, 0] = 0  # a constant pixel
    stats = reference_statistics(iter(list(masks)), batch_size=batch_size)
    assert stats.count == 23
    np.testing.assert_allclose(stats.mean, masks.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.std, masks.astype(np.float64).std(axis=0), rtol=0, atol=1e-12)
    assert stats.std[0, 0] == 0.0


def test_running_moments_merge_is_exact_with_large_offsets() -> None:
    # Values far from 0 with a tiny spread: a naive sum-of-squares formula would lose the variance.
    data = 1e6 + np.arange(10, dtype=np.float64).reshape(10, 1, 1) * 1e-3
    moments = RunningMoments((1, 1))
    for part in (data[:1], data[1:4], data[4:]):
        moments.update(part)
    result = moments.result()
    assert result.mean[0, 0] == pytest.approx(1e6 + 4.5e-3, abs=1e-9)
    assert result.std[0, 0] == pytest.approx(
        math.sqrt(8.25) * 1e-3, rel=1e-6
    )  # population std of 0..9 is sqrt(8.25)


def test_running_moments_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        RunningMoments((4, 4)).update(np.zeros((2, 4, 5)))


def _hand_reference() -> list[np.ndarray]:
    # 1x2 masks. Pixel a: 0, 2, 0, 2 -> mean 1, std 1. Pixel b: always 0 -> mean 0, std 0.
    return [np.array([[0, 0]]), np.array([[2, 0]]), np.array([[0, 0]]), np.array([[2, 0]])]


def test_zscore_norm_hand_computed() -> None:
    stats = reference_statistics(_hand_reference())
    np.testing.assert_array_equal(stats.mean, [[1.0, 0.0]])
    np.testing.assert_array_equal(stats.std, [[1.0, 0.0]])
    # z = ((3 - 1) / 1, 0) -> norm 2;  z = ((0 - 1) / 1, 0) -> norm 1.
    norms = zscore_norms([np.array([[3, 0]]), np.array([[0, 0]])], stats)
    np.testing.assert_allclose(norms, [2.0, 1.0])


def test_zero_std_floor_is_the_smallest_nonzero_std_and_penalises_off_support_pixels() -> None:
    stats = reference_statistics(_hand_reference())
    # The floor is the std of 4 masks of which one differs by one class: np.std([1, 0, 0, 0]) = sqrt(3) / 4.
    assert stats.zero_std_floor == pytest.approx(np.std([1, 0, 0, 0]))
    assert stats.zero_std_floor == pytest.approx(math.sqrt(3) / 4)
    # Pixel a at its mean (z 0); pixel b paints class 1 where the reals only had background: z = 1 / (sqrt(3) / 4).
    off_support = [np.array([[1, 1]])]
    np.testing.assert_allclose(zscore_norms(off_support, stats, zero_std="floor"), [4 / math.sqrt(3)])
    # The alternative leaves those pixels out of the norm.
    np.testing.assert_allclose(zscore_norms(off_support, stats, zero_std="exclude"), [0.0])
    # Never a NaN or an infinity, even for a mask equal to the constant value.
    assert np.isfinite(zscore_norms([np.array([[1, 0]])], stats)).all()
    with pytest.raises(InputError, match="zero_std"):
        zscore_norms(off_support, stats, zero_std="epsilon")


def test_filter_keeps_norms_at_or_below_threshold() -> None:
    stats = reference_statistics(_hand_reference())
    masks = [np.array([[3, 0]]), np.array([[4, 0]]), np.array([[1, 0]])]  # norms 2, 3, 0
    keep, norms = filter_masks(masks, stats, threshold=2.0)
    np.testing.assert_allclose(norms, [2.0, 3.0, 0.0])
    assert keep.tolist() == [True, False, True]


def test_threshold_scales_linearly_with_the_side() -> None:
    assert scaled_threshold(500, 256) == 500
    assert scaled_threshold(500, 128) == 250
    assert scaled_threshold(500, 32) == 62.5
    assert scaled_threshold(500, 64, threshold_at=None) == 500


def test_mean_square_real_norm_equals_count_of_varying_pixels() -> None:
    # The reason for the linear scaling: over the reference itself, mean(norm^2) = pixels with std > 0.
    rng = np.random.default_rng(1)
    masks = [brain_mask(rng) for _ in range(30)]
    stats = reference_statistics(masks)
    norms = zscore_norms(masks, stats, zero_std="floor")
    assert np.mean(norms**2) == pytest.approx(float((stats.std > 0).sum()), rel=1e-9)


def test_discarded_fraction() -> None:
    np.testing.assert_allclose(
        discarded_fraction(np.array([4.0, 1.0, 3.0, 2.0]), np.array([0.0, 2.0, 4.0])), [1.0, 0.5, 0.0]
    )


# --------------------------------------------------------------------------------------------------------
# `synthseg filter` on folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("zfilter")
    rng = np.random.default_rng(2)
    real = [brain_mask(rng) for _ in range(40)]
    for i in (5, 17, 35):
        real[i] = np.zeros((SIDE, SIDE), np.uint8)  # empty slices, as BraTS has them
    splits = ["train"] * 32 + ["val"] * 4 + ["test"] * 4
    reduced = [1] * 8 + [0] * 32
    write_dataset(
        base / "prepared",
        labels=real,
        images=[mask.astype(np.uint16) * 700 + 1000 + i for i, mask in enumerate(real)],
        ids=[f"case_{i:03d}" for i in range(len(real))],
        splits=splits,
        reduced=reduced,
        cases=[f"case{i // 4}" for i in range(len(real))],
        slices=list(range(len(real))),
    )

    # Plausible synthetic masks: copies of reference masks (a memorising generator); their norms are the reals'.
    synthetic = [real[i].copy() for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12)]
    corrupt = []
    for i in (3, 8):
        # An image patch of enhancing tumor in a corner the reals never touch: the paper's typical artefact.
        synthetic[i] = synthetic[i].copy()
        synthetic[i][:6, :6] = 3
        corrupt.append(i)
    ids = [f"synth_{i:03d}" for i in range(len(synthetic))]
    write_dataset(
        base / "generated",
        labels=synthetic,
        images=[mask.astype(np.uint16) * 700 + 1000 + i for i, mask in enumerate(synthetic)],
        ids=ids,
        source="synthetic",
    )
    return {
        "base": base,
        "real": real,
        "splits": splits,
        "reduced": reduced,
        "synthetic": synthetic,
        "corrupt": corrupt,
        "ids": ids,
    }


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from synthseg.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="filter", overrides=overrides)


def _independent_norms(reference: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """The paper's recipe in plain numpy, in memory, with the floor for zero std."""
    stack = np.stack(reference).astype(np.float64)
    mean, std = stack.mean(axis=0), stack.std(axis=0)
    n = len(reference)
    std = np.where(std == 0, math.sqrt(n - 1) / n, std)
    z = (np.stack(masks).astype(np.float64) - mean) / std
    return np.sqrt((z**2).reshape(len(masks), -1).sum(axis=1))


def test_filter_command_end_to_end(folders: dict, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    cfg = _compose(
        [
            f"masks={folders['base'] / 'generated'}",
            f"reference={folders['base'] / 'prepared'}",
            f"output={out}",
            "progress=false",
            "include_empty=false",  # the switch; the default (empty masks kept) is tested below
        ]
    )
    summary = zfilter.read_summary(zfilter.main(cfg))

    # Reference: the training split without its empty masks (2 of the 3 empty ones are in train).
    train_real = [m for m, s in zip(folders["real"], folders["splits"], strict=True) if s == "train"]
    nonempty = [m for m in train_real if m.any()]
    assert summary["reference_count"] == len(nonempty) == 30
    assert summary["reference_empty_excluded"] == 2
    # 500 at 256x256 is 62.5 at 32x32.
    assert summary["threshold"] == pytest.approx(62.5)

    # Norms agree with an independent in-memory computation, and the verdicts follow them.
    expected = _independent_norms(nonempty, folders["synthetic"])
    with open(out / "norms.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == folders["ids"]
    np.testing.assert_allclose([float(r["norm"]) for r in rows], expected, rtol=1e-5)
    assert [int(r["kept"]) for r in rows] == [int(v <= 62.5) for v in expected]
    # The corrupt masks are discarded, the plausible ones kept.
    discarded = [i for i, r in enumerate(rows) if r["kept"] == "0"]
    assert discarded == folders["corrupt"]
    assert summary["synthetic_discarded_fraction"] == pytest.approx(2 / 12)
    real_expected = _independent_norms(nonempty, nonempty)
    assert summary["real_discarded_fraction"] == pytest.approx(float(np.mean(real_expected > 62.5)))

    # The output is a dataset folder: kept labels and images copied byte for byte, synthetic manifest.
    kept_ids = [folders["ids"][i] for i in range(12) if i not in folders["corrupt"]]
    assert sorted(p.stem for p in (out / "labels").glob("*.png")) == kept_ids
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == kept_ids
    for sid in kept_ids:
        for sub in ("labels", "images"):
            assert (out / sub / f"{sid}.png").read_bytes() == (
                folders["base"] / "generated" / sub / f"{sid}.png"
            ).read_bytes()
    from synthseg.data.manifest import read_manifest

    manifest = read_manifest(out)
    assert manifest.ids.tolist() == kept_ids
    assert set(manifest.source) == {"synthetic"} and set(manifest.split) == {"train"}
    first = folders["synthetic"][0]
    np.testing.assert_array_equal(manifest.counts[0], np.bincount(first.ravel(), minlength=7))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_slices"] == 10 and stats["source"] == "synthetic"

    filter_json = json.loads((out / "filter.json").read_text())
    assert filter_json["discarded_ids"] == [folders["ids"][i] for i in folders["corrupt"]]
    assert filter_json["kept"] == 10 and filter_json["discarded"] == 2

    # Figures: the calibration plot, and the montage shows the discarded masks in the paper's colours.
    import matplotlib.image as mpimg

    assert (out / "filter_calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    montage = (mpimg.imread(out / "filter_discarded.png")[..., :3] * 255).round().astype(int)
    orange = PALETTE[3].astype(int)  # enhancing tumor: the corrupt patch
    assert (np.abs(montage - orange).sum(axis=-1) <= 3).sum() > 50
    assert not list(tmp_path.glob(".*partial"))


def test_reduced_reference_and_empty_switch(folders: dict, tmp_path: Path) -> None:
    base = folders["base"]
    common = [f"masks={base / 'generated'}", f"reference={base / 'prepared'}", "progress=false"]
    reduced = zfilter.read_summary(
        zfilter.main(
            _compose([*common, f"output={tmp_path / 'a'}", "reference_split=reduced", "include_empty=false"])
        )
    )
    # Reduced: the first 8 rows, minus the empty slice 5.
    assert reduced["reference_count"] == 7 and reduced["reference_empty_excluded"] == 1
    # The default (the paper: the entire real dataset) keeps the empty masks in the reference.
    with_empty = zfilter.read_summary(zfilter.main(_compose([*common, f"output={tmp_path / 'b'}"])))
    assert with_empty["reference_count"] == 32 and with_empty["reference_empty_excluded"] == 0


def test_threshold_quantile_of_real_norms(folders: dict, tmp_path: Path) -> None:
    base = folders["base"]
    settings = zfilter.FilterSettings(
        masks=base / "generated",
        reference=base / "prepared",
        output=tmp_path / "q",
        threshold_quantile=1.0,
        progress=False,
        montage=0,
    )
    summary = zfilter.read_summary(zfilter.run(settings))
    assert summary["threshold"] == pytest.approx(summary["real_norm"]["max"])
    assert summary["real_discarded_fraction"] == 0.0


def test_plain_folder_of_pngs_is_accepted(folders: dict, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, mask in enumerate(folders["synthetic"][:4]):
        write_label8(plain / f"m{i}.png", mask)
    settings = zfilter.FilterSettings(
        masks=plain, reference=folders["base"] / "prepared", output=tmp_path / "out", progress=False
    )
    ids, _, keep = zfilter.read_norms(zfilter.run(settings))
    assert ids == ["m0", "m1", "m2", "m3"]
    assert keep.tolist() == [True, True, True, False]  # m3 is the corrupt synthetic[3]
    assert not (tmp_path / "out" / "images").exists()
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "labels" / "m0.png"), folders["synthetic"][0])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.full((SIDE, SIDE), 7, np.uint8), "not one of the 7 classes"),
        (np.zeros((SIDE, SIDE + 2), np.uint8), "expected size"),
    ],
)
def test_bad_masks_are_named(folders: dict, tmp_path: Path, bad: np.ndarray, message: str) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    write_label8(plain / "good.png", folders["synthetic"][0])
    write_label8(plain / "bad.png", bad)
    settings = zfilter.FilterSettings(
        masks=plain, reference=folders["base"] / "prepared", output=tmp_path / "out", progress=False
    )
    with pytest.raises(InputError, match=f"bad.png.*{message}"):
        zfilter.run(settings)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_an_empty_output_folder_is_filled_and_a_filled_one_refused(folders: dict, tmp_path: Path) -> None:
    # `mkdir out; synthseg filter ... output=out` used to say "out: already exists" (issue 24, class 5).
    (tmp_path / "out").mkdir()
    settings = zfilter.FilterSettings(
        masks=folders["base"] / "generated",
        reference=folders["base"] / "prepared",
        output=tmp_path / "out",
        progress=False,
    )
    zfilter.run(settings)
    assert (tmp_path / "out" / "filter.json").is_file()
    with pytest.raises(InputError, match="already exists"):
        zfilter.run(settings)


def test_masks_at_lower_resolution_are_compared_with_a_reduced_reference(tmp_path: Path) -> None:
    from synthseg.data.labels import resize_labels
    from synthseg.data.manifest import read_manifest

    reference = write_dataset(tmp_path / "prepared", num_slices=30, size=32)
    manifest = read_manifest(reference)
    train = [read_png(reference / manifest.label[r]) for r in manifest.rows("train")]
    reduced = [resize_labels(m, m.shape[-1] // 2) for m in train if m.any()]
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, mask in enumerate(reduced[:5]):
        write_label8(masks / f"m{i}.png", mask)
    settings = zfilter.FilterSettings(
        masks=masks, reference=reference, output=tmp_path / "out", include_empty=False, progress=False
    )
    out = zfilter.run(settings)
    stats = reference_statistics(iter(reduced))
    expected = zscore_norms(iter(reduced[:5]), stats)
    np.testing.assert_allclose(zfilter.read_norms(out)[1], expected, rtol=1e-10)
    assert zfilter.read_summary(out)["threshold"] == pytest.approx(
        500 * 16 / 256
    )  # the faithful 500 scaled to the masks' side
