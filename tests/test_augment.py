"""Classical augmentation: label sets, identity, determinism, flips, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from synthseg.data.augment import ClassicalAugmentation
from tests.conftest import synthetic_slice

OFF = dict(flip_prob=0.0, vertical_flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0, elastic_prob=0.0)


def _pair(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image, label = synthetic_slice(np.random.default_rng(seed), size)
    return image.astype(np.float32), label


def test_labels_stay_in_the_original_label_set() -> None:
    image, label = _pair()
    augment = ClassicalAugmentation(flip_prob=1.0, rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0)
    rng = np.random.default_rng(3)
    for _ in range(5):
        out_image, out_label = augment(image, label, rng)
        assert out_label.dtype == np.uint8 and out_image.dtype == np.float32
        assert out_label.shape == label.shape and out_image.shape == image.shape
        # Nearest-neighbour resampling: no averaged, invented classes (background is in the input).
        assert set(np.unique(out_label)) <= set(np.unique(label))
        assert not np.array_equal(out_label, label)


def test_identity_when_every_probability_is_zero() -> None:
    image, label = _pair()
    out_image, out_label = ClassicalAugmentation(**OFF)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    assert out_image is not image and out_label is not label


def test_a_seeded_generator_repeats_the_result() -> None:
    image, label = _pair()
    augment = ClassicalAugmentation(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0)
    a = augment(image, label, np.random.default_rng(7))
    b = augment(image, label, np.random.default_rng(7))
    c = augment(image, label, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_a_flip_flips() -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    label = (np.arange(12) % 7).astype(np.uint8).reshape(3, 4)
    out_image, out_label = ClassicalAugmentation(**{**OFF, "flip_prob": 1.0})(
        image, label, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(out_image[0], [3, 2, 1, 0])
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    out_image, _ = ClassicalAugmentation(**{**OFF, "vertical_flip_prob": 1.0})(
        image, label, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(out_image[:, 0], [8, 4, 0])


def test_a_quarter_turn_rotates_the_label_map() -> None:
    label = np.zeros((9, 9), np.uint8)
    label[1, 4] = 3  # above the centre (4, 4)
    image = label.astype(np.float32)
    augment = ClassicalAugmentation(**{**OFF, "rotate_prob": 1.0, "max_rotation": 90.0})

    class QuarterTurn:
        """A generator stand-in that draws the largest rotation (+90 degrees)."""

        def random(self) -> float:
            return 0.0

        def uniform(self, low: float, high: float) -> float:
            return high

    _, out_label = augment(image, label, QuarterTurn())  # type: ignore[arg-type]
    # Exactly one pixel moved a quarter turn around the centre, three pixels from it.
    (y,), (x,) = np.nonzero(out_label)
    assert out_label[y, x] == 3 and abs(y - 4) + abs(x - 4) == 3 and (y, x) != (1, 4)
    assert (y, x) in {(4, 1), (4, 7)}


def test_scaling_up_grows_the_foreground() -> None:
    image, label = _pair()
    augment = ClassicalAugmentation(**{**OFF, "scale_prob": 1.0, "scale_range": (1.2, 1.2)})
    _, out_label = augment(image, label, np.random.default_rng(0))
    assert (out_label > 0).sum() > (label > 0).sum() * 1.2


@pytest.mark.parametrize(
    "kwargs",
    [{"flip_prob": 1.5}, {"elastic_prob": -0.1}, {"scale_range": (1.1, 0.9)}, {"elastic_sigma": 0.0}],
)
def test_impossible_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ClassicalAugmentation(**kwargs)


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        ClassicalAugmentation()(
            np.zeros((4, 4), np.float32), np.zeros((4, 5), np.uint8), np.random.default_rng()
        )
