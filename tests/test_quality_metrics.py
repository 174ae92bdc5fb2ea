"""Synthetic-data quality metrics (issue 17): FD/KID, precision/recall, diversity, memorisation, HD95."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthseg.metrics import diversity, fidelity, hausdorff, labelmaps, memorisation
from synthseg.metrics.features import UNetEncoderFeatures, extract
from synthseg.networks.unet import UNet
from tests.conftest import synthetic_slice

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    pairs = [synthetic_slice(rng, size) for _ in range(n)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32))[:, None] / 1500.0
    labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
    return images, labels


@pytest.fixture(scope="module")
def features() -> dict[str, torch.Tensor]:
    """U-Net encoder features (random seeded weights: no download) of a set and its degraded copies."""
    torch.manual_seed(0)
    net = UNetEncoderFeatures(UNet(1, 7, base_width=4)).eval()
    images, _ = _images(240)
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    heavy = F.avg_pool2d(F.pad(images, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    return {
        "a": extract(net, images[:120]),
        "b": extract(net, images[120:]),
        "shift_small": extract(net, images[:120] + 0.05),
        "shift_large": extract(net, images[:120] + 0.3),
        "blur": extract(net, blur[:120]),
        "blur_heavy": extract(net, heavy[:120]),
    }


def test_encoder_features_have_the_documented_width() -> None:
    net = UNetEncoderFeatures(UNet(1, 7, base_width=4))
    assert extract(net, torch.zeros(3, 1, 32, 32)).shape == (3, 31 * 4) and net.num_features == 124


def test_fd_and_kid_are_zero_against_itself_and_ordered_for_degraded_copies(features) -> None:
    a = features["a"]
    fd = {
        k: fidelity.frechet_distance(a, features[k])
        for k in ("a", "shift_small", "shift_large", "blur", "blur_heavy")
    }
    kid = {k: fidelity.kernel_distance(a, features[k], subsets=20)[0] for k in fd}
    assert fd["a"] == pytest.approx(0.0, abs=1e-6) and abs(kid["a"]) < 0.05 * kid["shift_large"]
    assert 0 < fd["shift_small"] < fd["shift_large"] and 0 < fd["blur"] < fd["blur_heavy"]
    assert kid["shift_small"] < kid["shift_large"] and kid["blur"] < kid["blur_heavy"]


def test_kid_is_unbiased_near_zero_for_two_halves_of_one_set(features) -> None:
    halves, _ = fidelity.kernel_distance(features["a"], features["b"], subsets=50, subset_size=100)
    shifted, _ = fidelity.kernel_distance(features["a"], features["shift_large"], subsets=50, subset_size=100)
    # Unbiased: centred on zero (may be slightly negative), far below a real difference.
    assert abs(halves) < 0.05 * shifted


def test_kid_subset_is_capped_at_the_set_size(features) -> None:
    value, _ = fidelity.kernel_distance(features["a"][:30], features["b"], subset_size=1000, subsets=5)
    assert math.isfinite(value)


def test_precision_recall_one_for_identical_sets_and_recall_falls_for_a_collapsed_set(features) -> None:
    a = features["a"]
    assert fidelity.precision_recall(a, a.clone()) == (1.0, 1.0)
    collapsed = a[:4].repeat(30, 1) + 1e-4 * torch.randn(120, a.shape[1], dtype=a.dtype)
    precision, recall = fidelity.precision_recall(a, collapsed)
    assert precision > 0.9 and recall < 0.3


def test_ms_ssim_scales_shrink_with_the_image_and_collapsed_sets_score_higher() -> None:
    assert [diversity.ms_ssim_scales(s) for s in (32, 64, 128, 256)] == [2, 3, 4, 5]
    images, _ = _images(20, size=64)
    varied, scales = diversity.mean_ms_ssim(images.clamp(0, 1), pairs=40)
    same, _ = diversity.mean_ms_ssim(images[:1].repeat(20, 1, 1, 1).clamp(0, 1), pairs=40)
    assert scales == 3 and same == pytest.approx(1.0, abs=1e-4) and varied < same


def test_random_pairs_never_pair_an_image_with_itself() -> None:
    pairs = diversity.random_pairs(3, 200, seed=1)
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.max() == 2


def test_components_are_counted_per_slice_without_joining_slices() -> None:
    labels = np.zeros((3, 16, 16), np.uint8)
    labels[0, 1:3, 1:3] = labels[0, 6:8, 6:8] = 1  # two NCR blobs
    labels[1, 1:3, 1:3] = 1  # the same place one slice later: a separate component
    labels[2, 4:9, 4:9] = 2
    assert labelmaps.components_per_slice(labels).tolist() == [[2, 0, 0], [1, 0, 0], [0, 1, 0]]
    areas = labelmaps.class_areas(torch.from_numpy(labels))
    assert areas[2, 2] == pytest.approx(25 / 256) and np.allclose(areas.sum(1), 1)


def test_area_distance_is_zero_for_the_same_set_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(7), 100)
    assert labelmaps.area_distance(a, a)["mean"] == 0.0
    b = a.copy()
    b[:, 1] += 0.1
    assert labelmaps.area_distance(a, b)["per_class"]["NCR/NET"] == pytest.approx(0.1)


def test_memorisation_finds_a_planted_copy_of_a_training_slice() -> None:
    real_images, real_labels = _images(120, size=32, seed=3)
    syn_images, syn_labels = _images(12, size=32, seed=4)
    syn_images[5], syn_labels[5] = real_images[77], real_labels[77]  # the planted copy
    near = memorisation.nearest_real(
        syn_labels, syn_images, real_labels.numpy().astype(np.uint8), real_images[:, 0].numpy(), search_size=8
    )
    assert near.dice_index[5] == 77 and near.dice[5] == pytest.approx(1.0)
    assert near.corr_index[5] == 77 and near.corr[5] == pytest.approx(1.0, abs=1e-5)
    others = np.delete(near.corr, 5)
    assert (others < 0.999).all()
    # The real-to-real baseline never matches a slice with itself.
    base = memorisation.nearest_real(
        real_labels[:10], real_images[:10], real_labels.numpy().astype(np.uint8), real_images[:, 0].numpy(),
        exclude=np.arange(10), search_size=8,
    )  # fmt: skip
    assert (base.dice_index != np.arange(10)).all() and (base.corr_index != np.arange(10)).all()


def test_dice_matrix_equals_the_pairwise_definition() -> None:
    _, labels = _images(6, size=16, seed=5)
    flat = labels.reshape(6, -1)
    matrix = memorisation.dice_matrix(flat, flat)
    for i in range(6):
        for j in range(6):
            present = [c for c in range(1, 7) if (flat[i] == c).any() or (flat[j] == c).any()]
            dice = [2 * ((flat[i] == c) & (flat[j] == c)).sum() / ((flat[i] == c).sum() + (flat[j] == c).sum())
                    for c in present]  # fmt: skip
            assert matrix[i, j] == pytest.approx(float(np.mean(dice)), abs=1e-6)


# ------------------------------------------------------------------------------------------------ HD95
def test_hd95_of_hand_made_shapes() -> None:
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[4, 4], b[7, 8] = True, True  # single pixels 3 and 4 apart: distance 5
    assert hausdorff.hd95(a, b) == pytest.approx(5.0)
    assert hausdorff.hd95(a, b, (2.0, 2.0)) == pytest.approx(10.0)
    # Two 5x5 squares, one 3 columns to the right: every boundary pixel of either is at most 3 from the
    # other's boundary, and the columns that moved (10 of 16 boundary pixels) are exactly 3 away.
    sq1, sq2 = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    sq1[5:10, 5:10], sq2[5:10, 8:13] = True, True
    assert hausdorff.hd95(sq1, sq2) == pytest.approx(3.0)
    assert hausdorff.hd95(sq1, sq1) == 0.0


def test_hd95_empty_conventions() -> None:
    empty, full = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    full[10:12, 10:12] = True
    assert hausdorff.hd95(empty, empty) == 0.0
    assert hausdorff.hd95(full, empty) == pytest.approx(373.13)  # BraTS' figure for an empty side
    assert hausdorff.hd95(full, empty, empty="diagonal") == pytest.approx(50.0)  # the image diagonal
    assert hausdorff.hd95(
        np.zeros((2, 30, 40), bool), np.stack([full, empty]), empty="diagonal"
    ) == pytest.approx(math.sqrt(2**2 + 50**2))
    with pytest.raises(ValueError, match="brats"):
        hausdorff.hd95(full, empty, empty="nan")


def test_subject_hd95_2d_mean_counts_one_sided_slices_and_3d_uses_the_stack() -> None:
    pred = np.zeros((4, 20, 20), bool)
    truth = np.zeros((4, 20, 20), bool)
    pred[0, 4, 4], truth[0, 7, 8] = True, True  # 5
    pred[1, 4, 4], truth[1, 4, 6] = True, True  # 2; slice 2 empty in both: left out of the mean
    pred[3, 9, 9] = True  # one false-positive pixel on a tumor-free slice: counted, not averaged in
    assert hausdorff.subject_hd95(pred, truth, volume=False) == (pytest.approx(3.5), 1)
    assert hausdorff.subject_hd95(pred, truth, volume=False, scale=4.0) == (pytest.approx(14.0), 1)
    # 3-D over slices 0-2: truth->pred distances {5 (slice 0), 2 (slice 1)}, pred->truth {sqrt(5), 2}; the 95th
    # percentile (linear interpolation) of {2, 5} is 2 + 0.95 * 3.
    assert hausdorff.subject_hd95(pred[:3], truth[:3], volume=True) == (pytest.approx(4.85, abs=1e-5), 0)


def test_one_false_positive_pixel_does_not_cost_a_subject_the_diagonal() -> None:
    # The case: 9 perfect slices and one slice with a lone false-positive pixel.
    truth = np.zeros((10, 32, 32), bool)
    truth[:9, 10:20, 10:20] = True
    pred = truth.copy()
    pred[9, 2, 2] = True
    value, one_side = hausdorff.subject_hd95(pred, truth, volume=False)
    assert value == 0.0 and one_side == 1  # folded in at the diagonal it was (9 * 0 + 45.25) / 10
    # Only one-sided slices: one figure must stand for the subject, BraTS' 373.13 (or the slice diagonal).
    alone = np.zeros((2, 32, 32), bool)
    alone[0, 5, 5] = True
    nothing = np.zeros_like(alone)
    assert hausdorff.subject_hd95(alone, nothing, volume=False) == (pytest.approx(373.13), 1)
    assert hausdorff.subject_hd95(alone, nothing, volume=False, empty="diagonal") == (
        pytest.approx(32 * math.sqrt(2)),
        1,
    )
    assert hausdorff.subject_hd95(alone, nothing, volume=True) == (pytest.approx(373.13), 1)
    assert hausdorff.subject_hd95(nothing, nothing, volume=False) == (0.0, 0)


def test_3d_hd95_equals_monai_on_the_volume() -> None:
    from monai.metrics import HausdorffDistanceMetric

    rng = np.random.default_rng(1)
    truth = np.zeros((12, 40, 40), bool)
    pred = np.zeros((12, 40, 40), bool)
    truth[2:9, 10:25, 12:30] = True
    pred[3:11, 13:27, 10:28] = True
    pred[rng.integers(1, 12, 15), rng.integers(0, 40, 15), rng.integers(0, 40, 15)] = True
    for scale in (1.0, 4.0):
        metric = HausdorffDistanceMetric(include_background=True, percentile=95)
        metric(
            torch.from_numpy(pred)[None, None].float(),
            torch.from_numpy(truth)[None, None].float(),
            spacing=[1.0, scale, scale],
        )
        value, one_side = hausdorff.subject_hd95(pred, truth, volume=True, scale=scale)
        assert value == pytest.approx(float(metric.aggregate()), rel=1e-6) and one_side >= 2


def test_accumulator_orders_slices_and_picks_the_mode_from_the_split() -> None:
    acc = hausdorff.HD95Accumulator()
    pred = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    truth = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    pred[0, 0, 2, 2], truth[0, 0, 2, 5] = True, True  # 3 apart in slice 1
    pred[1, 0, 8, 8], truth[1, 0, 8, 8] = True, True  # identical in slice 0
    acc.add(["s1", "s1"], [1, 0], pred, truth)
    case = np.array(["s1", "s1", "s2"])
    found = hausdorff.hd95_per_case(
        acc, volume=hausdorff.split_by_subject(case, np.array(["test", "test", "train"])), native_size=32
    )
    # 3-D, pixels 2 native pixels wide: distances {0, 6} both ways; 95th percentile 0.95 * 6.
    assert found.mode == "3d" and found.values["s1"][0] == pytest.approx(5.7, abs=1e-5)
    found = hausdorff.hd95_per_case(
        acc, volume=hausdorff.split_by_subject(case, np.array(["test", "train", "train"])), native_size=16
    )
    # 2-D: slice 0 gives 0, slice 1 gives 3: the mean over the two slices; none one-sided.
    assert found.mode == "2d" and found.values["s1"] == [pytest.approx(1.5)]
    assert found.one_side_empty["s1"] == [0]


def test_hd95_agrees_with_monai_hausdorff_metric_class() -> None:
    from monai.metrics import HausdorffDistanceMetric

    rng = np.random.default_rng(0)
    a = np.zeros((32, 32), bool)
    b = np.zeros((32, 32), bool)
    a[5:20, 6:18] = True
    b[8:25, 4:16] = True
    b[rng.integers(0, 32, 10), rng.integers(0, 32, 10)] = True
    metric = HausdorffDistanceMetric(include_background=True, percentile=95)
    metric(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float())
    assert hausdorff.hd95(a, b) == pytest.approx(float(metric.aggregate()))


@pytest.mark.parametrize(("size", "expected"), [(256, 4), (64, 64), (32, 64), (1024, 1)])
def test_extractor_batches_hold_a_bounded_number_of_pixels(size: int, expected: int) -> None:
    seen: list[int] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return x.mean(dim=(2, 3))

    out = extract(Probe(), torch.ones(70, 1, size, size))
    assert out.shape == (70, 1) and max(seen) == expected and sum(seen) == 70
    seen.clear()
    extract(Probe(), torch.ones(10, 1, size, size), batch_size=3)  # an explicit batch still wins
    assert seen == [3, 3, 3, 1]
