"""The built-in CSF/GM/WM segmentation: phantoms for its properties, the demo cohort for its accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from synthseg.data.demo import case as demo_case
from synthseg.data.sources.tissue import CSF, GM, WM, dice_per_class, segment_tissue
from synthseg.errors import InputError


def _phantom(size: int = 40, noise: float = 0.06, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nested balls (WM core, GM shell, CSF shell): (image, brain mask, true labels 0..3)."""
    rng = np.random.default_rng(seed)
    r = np.linalg.norm(np.indices((size,) * 3) - (size - 1) / 2, axis=0) / (size / 2)
    truth = np.zeros(r.shape, np.uint8)
    truth[r < 0.9] = CSF
    truth[r < 0.75] = GM
    truth[r < 0.45] = WM
    level = np.array([0.0, 0.35, 0.7, 1.0])
    image = level[truth] + noise * rng.standard_normal(r.shape)
    return (1000 * image).astype(np.float32), truth > 0, truth


def test_phantom_labels_follow_intensity_order() -> None:
    image, brain, truth = _phantom()
    labels = segment_tissue(image, brain)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    assert not labels[~brain].any()
    assert min(dice_per_class(labels, truth).values()) > 0.95


def test_exclude_is_left_out() -> None:
    image, brain, truth = _phantom()
    exclude = np.zeros_like(brain)
    exclude[:20, :20, :] = True
    labels = segment_tissue(image, brain, exclude)
    assert not labels[exclude].any()
    keep = brain & ~exclude
    assert np.all(labels[keep] > 0)


def test_intensity_scale_invariant() -> None:
    image, brain, _ = _phantom()
    assert np.array_equal(segment_tissue(image, brain), segment_tissue(image * 7.5, brain))


def test_potts_prior_cleans_noise() -> None:
    image, brain, truth = _phantom(noise=0.16, seed=1)
    plain = dice_per_class(segment_tissue(image, brain, beta=0.0, bias_sigma=0), truth)
    mrf = dice_per_class(segment_tissue(image, brain, bias_sigma=0), truth)
    assert all(mrf[c] > plain[c] + 0.02 for c in (CSF, GM, WM)), (plain, mrf)


def test_bias_correction_helps() -> None:
    image, brain, truth = _phantom(size=48, noise=0.04, seed=2)
    # A strong ramp: WM at the dark end is as dark as GM at the bright end.
    ramp = np.linspace(0.6, 1.5, image.shape[0], dtype=np.float32)[:, None, None]
    biased = image * ramp
    without = dice_per_class(segment_tissue(biased, brain, bias_sigma=0), truth)
    with_bias = dice_per_class(segment_tissue(biased, brain, bias_sigma=12), truth)
    assert min(with_bias.values()) > min(without.values()) + 0.03, (without, with_bias)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"brain_mask": np.ones((5, 5, 5), bool)}, InputError),
        ({"exclude": np.zeros((5, 5, 5), bool)}, InputError),
        ({"brain_mask": np.zeros((40, 40, 40), bool)}, InputError),
        ({"image": np.full((40, 40, 40), np.nan, np.float32)}, InputError),
        ({"beta": -1.0}, ValueError),
    ],
)
def test_refuses_bad_input(change: dict, error: type[Exception]) -> None:
    image, brain, _ = _phantom()
    args = {"image": image, "brain_mask": brain, **change}
    with pytest.raises(error):
        segment_tissue(args.pop("image"), args.pop("brain_mask"), **args)


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_demo_cohort_dice_at_least_080(index: int) -> None:
    """Only the T1c and the brain/tumour masks go in; the true tissue (FAST-style pve maps) is held back."""
    seed = 21
    inst, _ = demo_case.case_names(2, seed)[index]
    case = demo_case.make_case(
        "c", demo_case.scanner_of(seed, inst), np.random.default_rng([seed, 11, index])
    )
    brain, tumor = case.t1ce > 0, case.seg > 0
    labels = segment_tissue(case.t1ce, brain, tumor)
    healthy = brain & ~tumor
    truth = np.where(healthy, case.pve.argmax(0) + 1, 0)
    dice = dice_per_class(labels, truth)
    print(f"case {index} ({inst}): Dice CSF {dice[CSF]:.3f} GM {dice[GM]:.3f} WM {dice[WM]:.3f}")
    assert min(dice.values()) >= 0.80, dice
