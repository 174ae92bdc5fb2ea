"""Quality figures that can be compared (issue 25): an FD estimator that set size does not move, real-vs-real
baselines split by case, one recorded intensity range for both sets, the real reference the generator saw;
and the label-conditional intensity check (issue 26, item 5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.data.pngio import read_png, write_image16
from synthseg.errors import InputError
from synthseg.metrics import diversity, fidelity, intensity
from synthseg.metrics.baseline import split_by_case
from synthseg.metrics.slices import DatasetSlices, reference_empty_rule
from tests.conftest import measure_quality, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")

FAST = {"pairs": 20, "kid_subsets": 5, "search_size": 8}


# ------------------------------------------------------------------------------------------ FD estimator
def _gaussians(n: int, dims: int, shift2: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples of N(0, I) and of N(delta, I) in ``dims`` dimensions, ||delta||^2 = shift2 (the true FD)."""
    gen = torch.Generator().manual_seed(seed)
    delta = torch.full((dims,), math.sqrt(shift2 / dims), dtype=torch.float64)
    a = torch.randn(n, dims, generator=gen, dtype=torch.float64)
    return a, torch.randn(n, dims, generator=gen, dtype=torch.float64) + delta


@pytest.mark.parametrize("n", [300, 600])
def test_fd_inf_is_within_ten_percent_of_the_true_fd_at_n_and_2n(n: int) -> None:
    # 124 dimensions (the default fd_dims), true FD = ||delta||^2 = 40: the plain FD is biased upwards by about
    # c / n (benchmarks/bench_fd_estimator.py: 1.68x the truth at n = 300, 1.34x at 600); FD-infinity is not
    # (0.96-1.05x over 8 seeds at 300).
    real, fake = _gaussians(n, 124, 40.0, seed=n)
    plain = fidelity.frechet_distance(real, fake)
    fd_inf = fidelity.frechet_distance_inf(real, fake, seed=0)
    assert abs(fd_inf - 40.0) <= 0.1 * 40.0, fd_inf
    assert plain > 1.25 * 40.0  # the bias the extrapolation removes


def test_fd_inf_refuses_subsets_no_larger_than_the_feature_dimension() -> None:
    real, fake = _gaussians(200, 124, 1.0, seed=0)  # subsets of 100..200: 100 <= 124
    with pytest.raises(ValueError, match="feature dimension 124"):
        fidelity.frechet_distance_inf(real, fake)
    figures = fidelity.feature_distances(real, fake, subsets=3, dims=124)
    assert figures["fd_inf"] is None and math.isfinite(figures["fd"])
    # Pooled to 62 dimensions the same sets are large enough.
    assert fidelity.feature_distances(real, fake, subsets=3, dims=62)["fd_inf"] is not None


def test_pool_features_averages_groups_inside_each_unet_level() -> None:
    width = 64
    levels = [
        torch.full((2, c), float(i))
        for i, c in enumerate((width, 2 * width, 4 * width, 8 * width, 16 * width))
    ]
    features = torch.cat(levels, dim=1)  # 1,984 values: each level constant
    pooled = fidelity.pool_features(features, 248)
    assert pooled.shape == (2, 248)  # groups of 8 channels
    # No group mixes two levels: every pooled value is one level's constant, in level order.
    expected = torch.cat(
        [torch.full((2, c // 8), float(i)) for i, c in enumerate((64, 128, 256, 512, 1024))], 1
    )
    assert torch.equal(pooled, expected)
    small = torch.randn(3, 100)
    assert fidelity.pool_features(small, 124) is small


# ------------------------------------------------------------------------------------------ case split
def test_split_by_case_puts_every_case_on_one_side_and_cuts_all_sets_to_one_n() -> None:
    cases = np.repeat([f"c{i}" for i in range(6)], [10, 8, 8, 6, 4, 4])
    split = split_by_case(cases, synthetic_count=100, seed=0)
    assert split is not None
    assert not set(cases[split.a]) & set(cases[split.b])
    assert len(split.a) == len(split.b) == len(split.synthetic) == split.n
    assert sum(split.cases) == 6 and set(split.b_cases) == set(cases[split.b])
    assert split_by_case(cases, synthetic_count=5, seed=0).n == 5  # the synthetic sample limits n
    assert split_by_case(np.array(["one"] * 9), synthetic_count=9, seed=0) is None


@pytest.mark.slow
def test_nearest_real_baseline_reads_other_cases_only(tmp_path: Path) -> None:
    # Every case is one slice repeated five times: the whole-split search finds a copy in the same case (Dice 1);
    # split by case, the baseline compares different cases.
    rng = np.random.default_rng(0)
    from tests.conftest import synthetic_slice

    pairs = [synthetic_slice(rng, 32) for _ in range(8)]
    labels = [pairs[i // 5][1] for i in range(40)]
    images = [pairs[i // 5][0] for i in range(40)]
    real = write_dataset(tmp_path / "real", labels=labels, images=images, splits=["train"] * 40)
    synthetic = write_dataset(tmp_path / "syn", num_slices=20, size=32, source="synthetic", seed=3)
    result = measure_quality(synthetic=synthetic, real=real, output=tmp_path / "q", extractor=None, **FAST)
    base = result["baseline"]
    assert result["memorisation"]["dice"]["real_to_real"]["median"] == pytest.approx(1.0)
    assert base["nearest_real_dice_median_real_baseline"] < 0.99
    assert base["split"] == "case" and sum(base["cases"]) == 8 and base["n"] <= 20
    for key in ("ms_ssim_synthetic_real_baseline", "ms_ssim_synthetic_at_baseline_n", "ms_ssim_real_at_baseline_n",
                "nearest_real_dice_median_at_baseline_n", "swd_real_baseline", "swd_at_baseline_n",
                "area_distance_real_baseline", "area_distance_at_baseline_n"):  # fmt: skip
        assert math.isfinite(base[key])


@pytest.mark.slow
def test_every_feature_figure_has_its_real_baseline_and_its_value_at_the_baselines_n(tmp_path: Path) -> None:
    from synthseg.checkpoint import save_network
    from synthseg.networks.unet import UNet

    real = write_dataset(tmp_path / "real", num_slices=50, size=32)
    synthetic = write_dataset(tmp_path / "syn", num_slices=24, size=32, source="synthetic", seed=1)
    torch.manual_seed(0)
    save_network(UNet(1, 7, base_width=2), tmp_path / "unet.pt")
    feats = measure_quality(
        synthetic=synthetic, real=real, output=tmp_path / "q", unet=str(tmp_path / "unet.pt"), **FAST
    )["features"]
    assert feats["feature_dim"] == 62 and feats["baseline_n"] >= 10
    for figure in ("fd_unet", "kid_unet", "precision_unet", "recall_unet"):
        for suffix in ("", "_at_baseline_n", "_real_baseline"):
            assert math.isfinite(feats[figure + suffix]), figure + suffix
    assert "fd_inf_unet_real_baseline" in feats  # None here: 10-odd slices per half against 62 dimensions
    off = measure_quality(
        synthetic=synthetic,
        real=real,
        output=tmp_path / "q2",
        unet=str(tmp_path / "unet.pt"),
        baseline=False,
        **FAST,
    )
    assert off["baseline"] is None and "fd_unet_real_baseline" not in off["features"]


# ------------------------------------------------------------------------------------- intensity range
@pytest.mark.slow
def test_ms_ssim_is_unchanged_by_one_bright_voxel_in_an_unrelated_slice(tmp_path: Path) -> None:
    before = write_dataset(tmp_path / "before", num_slices=50, size=32)
    after = write_dataset(tmp_path / "after", num_slices=50, size=32)
    synthetic = write_dataset(tmp_path / "syn", num_slices=24, size=32, source="synthetic", seed=1)
    slices = DatasetSlices(after)
    slices.drop_empty()  # the reference quality() reads (the PGAN default: no empty maps)
    used = set(diversity.random_pairs(len(slices.rows), FAST["pairs"], 0).reshape(-1).tolist())
    unrelated = next(i for i in range(len(slices.rows)) if i not in used)
    path = after / slices.manifest.image[slices.rows[unrelated]]
    image = read_png(path).astype(np.int64)
    image[3, 3] = 4 * image.max()  # one voxel 4x brighter than any other, in a slice no pair reads
    write_image16(path, image.astype(np.uint16))
    options = {"extractor": None, "baseline": False, **FAST}
    a = measure_quality(synthetic=synthetic, real=before, output=tmp_path / "qa", **options)
    b = measure_quality(synthetic=synthetic, real=after, output=tmp_path / "qb", **options)
    assert b["diversity"]["ms_ssim_real"] == a["diversity"]["ms_ssim_real"]
    assert b["diversity"]["ms_ssim_synthetic"] == a["diversity"]["ms_ssim_synthetic"]
    stats = json.loads((before / "stats.json").read_text())
    assert b["intensity_range"]["train_max"] == {"t1c": float(stats["train_max"])}


def test_a_real_set_without_a_recorded_range_is_one_line(tmp_path: Path) -> None:
    real = write_dataset(tmp_path / "real", num_slices=20, size=32)
    synthetic = write_dataset(tmp_path / "syn", num_slices=12, size=32, source="synthetic", seed=1)
    stats = json.loads((real / "stats.json").read_text())
    stats.pop("train_max")
    (real / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(InputError, match=r"stats.json: records no positive train_max"):
        measure_quality(synthetic=synthetic, real=real, output=tmp_path / "q", extractor=None, **FAST)


# ------------------------------------------------------------------------------------- reference rule
def _pgan_run(root: Path, drop_empty: bool) -> Path:
    """A PGAN run folder with results.json and one snapshot file; returns the snapshot's path."""
    snapshot = root / "snapshots" / "network-snapshot-000040.pt"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"")
    (root / "results.json").write_text(json.dumps({"config": {"data": {"drop_empty": drop_empty}}}))
    return snapshot


@pytest.mark.slow
@pytest.mark.parametrize(("drop_empty", "rule", "count"), [(True, "exclude", 35), (False, "include", 40)])
def test_the_reference_follows_the_pgan_run_named_in_the_provenance(
    tmp_path: Path, drop_empty: bool, rule: str, count: int
) -> None:
    real = write_dataset(tmp_path / "real", num_slices=50, size=32)  # 40 training slices, 5 of them empty
    synthetic = write_dataset(tmp_path / "syn", num_slices=24, size=32, source="synthetic", seed=1)
    snapshot = _pgan_run(tmp_path / "pgan", drop_empty)
    (synthetic / "prepare.json").write_text(json.dumps({"synthesize": {"pgan": {"path": str(snapshot)}}}))
    result = measure_quality(
        synthetic=synthetic, real=real, output=tmp_path / "q", extractor=None, baseline=False, **FAST
    )
    assert result["reference_empty"]["rule"] == rule and result["real_count"] == count
    assert "results.json" in result["reference_empty"]["from"]
    # The user's word wins.
    forced = measure_quality(synthetic=synthetic, real=real, output=tmp_path / "q2", extractor=None, baseline=False,
                     reference_empty="include", **FAST)  # fmt: skip
    assert forced["real_count"] == 40 and forced["reference_empty"]["empty_left_out"] == 0


def test_the_reference_rule_follows_generate_masks_through_the_masks_folder(tmp_path: Path) -> None:
    snapshot = _pgan_run(tmp_path / "pgan", drop_empty=False)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "prepare.json").write_text(
        json.dumps({"command": "filter", "input": {"command": "generate-masks", "checkpoint": str(snapshot)}})
    )
    images = tmp_path / "images"
    images.mkdir()
    (images / "prepare.json").write_text(json.dumps({"command": "generate-images", "masks": str(masks)}))
    assert reference_empty_rule(images, "auto")["rule"] == "include"
    # Without a reachable run: the PGAN config's default (empty maps never trained on), said so.
    bare = reference_empty_rule(tmp_path / "nothing", "auto")
    assert bare["rule"] == "exclude" and "default" in bare["from"]
    with pytest.raises(InputError, match="reference_empty must be one of"):
        reference_empty_rule(images, "sometimes")


# ------------------------------------------------------------------------------------- class intensity
LEVELS = {3: 900.0, 4: 700.0, 5: 500.0, 6: 200.0, 1: 300.0, 2: 600.0}


def _pair(levels: dict[int, float], noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 32 x 32 label map with a band of every class and an image painting each class at its level."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((32, 32), np.uint8)
    for i, c in enumerate((1, 2, 3, 4, 5, 6)):
        labels[4 + 4 * i : 8 + 4 * i, 4:28] = c
    image = np.zeros((32, 32), np.float64)
    for c, value in levels.items():
        image[labels == c] = value
    image += rng.normal(0, noise, image.shape) * (labels > 0)
    return labels, np.clip(image, 0, 65535).astype(np.uint16)


def test_class_levels_are_medians_over_slices_of_the_mean_inside_each_class() -> None:
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    images = torch.zeros(3, 1, 4, 4)
    labels[:, :2] = 4  # WM in the top half of every slice
    images[0, 0, :2] = torch.tensor([[100.0, 300, 100, 300], [100, 300, 100, 300]])  # mean 200
    images[1, 0, :2] = 500.0
    images[2, 0, :2] = 250.0
    labels[1, 3, 3] = 6  # CSF in slice 1 only
    images[1, 0, 3, 3] = 40.0
    means = intensity.slice_class_means(labels, images)
    assert means[0, 0, 4] == pytest.approx(200.0) and np.isnan(means[0, 0, 6])
    levels = intensity.class_levels(means)
    assert levels[0, 4] == pytest.approx(250.0)  # median of 200, 500, 250
    assert levels[0, 6] == pytest.approx(40.0) and np.isnan(levels[0, 3])


def test_wm_ratios_are_free_of_each_scans_gain() -> None:
    labels = torch.zeros(4, 4, 4, dtype=torch.long)
    labels[:, :2], labels[:, 2:] = 4, 5  # WM above, GM below
    images = torch.zeros(4, 1, 4, 4)
    images[:, 0, :2], images[:, 0, 2:] = 700.0, 500.0
    images[2:] *= 3.0  # two slices from a scanner with 3x the gain
    means = intensity.slice_class_means(labels, images)
    levels, ratios = intensity.class_levels(means), intensity.wm_ratios(means)
    assert levels[0, 4] == pytest.approx(1400.0)  # the median of 700, 700, 2100, 2100
    assert ratios[0, 4] == pytest.approx(1.0) and ratios[0, 5] == pytest.approx(500 / 700)


@pytest.mark.slow
def test_class_intensity_reads_levels_order_and_distance_in_real_wm_units(tmp_path: Path) -> None:
    real_pairs = [_pair(LEVELS, noise=5.0, seed=i) for i in range(20)]
    close = {**LEVELS, 4: 750.0, 5: 460.0}  # WM 50 and GM 40 off: 0.071 and 0.057 of the real WM level
    swapped = {**LEVELS, 4: 480.0, 5: 720.0}  # GM brighter than WM: the order breaks
    real = write_dataset(tmp_path / "real", labels=[p[0] for p in real_pairs], images=[p[1] for p in real_pairs],
                         cases=[f"case{i // 4}" for i in range(20)], splits=["train"] * 20)  # fmt: skip
    results = {}
    for name, levels in (("close", close), ("swapped", swapped)):
        pairs = [_pair(levels, noise=5.0, seed=100 + i) for i in range(12)]
        syn = write_dataset(tmp_path / name, labels=[p[0] for p in pairs], images=[p[1] for p in pairs],
                            source="synthetic")  # fmt: skip
        results[name] = measure_quality(
            synthetic=syn, real=real, output=tmp_path / f"q_{name}", extractor=None, **FAST
        )["class_intensity"]
    good = results["close"]["by_sequence"]["t1c"]
    assert good["order_real"] == ["enhancing", "WM", "GM", "CSF"] == good["order_synthetic"]
    wm, gm = good["classes"]["WM"], good["classes"]["GM"]
    assert wm["real"] == pytest.approx(700, abs=3) and wm["synthetic"] == pytest.approx(750, abs=3)
    assert wm["distance_over_real_wm"] == pytest.approx(50 / 700, abs=0.01)
    assert gm["distance_over_real_wm"] == pytest.approx(40 / 700, abs=0.01)
    assert good["within_tolerance"] and good["same_order"] and good["target_met"]
    assert wm["real_baseline_distance_over_real_wm"] < 0.02  # two real halves: the same levels, noise aside
    assert wm["over_wm_real"] == pytest.approx(1.0) and gm["over_wm_real"] == pytest.approx(
        500 / 700, abs=0.01
    )
    assert gm["over_wm_synthetic"] == pytest.approx(460 / 750, abs=0.01)
    bad = results["swapped"]["by_sequence"]["t1c"]
    assert bad["order_synthetic"] == ["enhancing", "GM", "WM", "CSF"] and not bad["same_order"]
    assert bad["classes"]["WM"]["distance_over_real_wm"] == pytest.approx(220 / 700, abs=0.01)
    assert not bad["within_tolerance"] and not bad["target_met"]
