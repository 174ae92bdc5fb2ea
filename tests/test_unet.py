"""The paper's U-Net: parameter counts from the architecture, shapes, bad arguments; the weighted Dice loss."""

from __future__ import annotations

import pytest
import torch

from synthseg.losses.dice import WeightedDiceError, weighted_dice_loss
from synthseg.networks.unet import UNet


def expected_unet_parameters(classes: int, width: int = 64, in_channels: int = 1) -> int:
    """Count by hand from REFERENCE.md: conv (k*k*in*out + out) + batch norm (2*out) per layer."""

    def conv(k: int, cin: int, cout: int, bn: bool = True) -> int:
        return k * k * cin * cout + cout + (2 * cout if bn else 0)

    widths = [width, 2 * width, 4 * width, 8 * width]
    total, cin = 0, in_channels
    for w in widths:  # encoder: two 3x3 convs per level
        total += conv(3, cin, w) + conv(3, w, w)
        cin = w
    total += conv(3, cin, 16 * width)  # bridge conv
    cin = 16 * width
    for w in reversed(widths):  # transposed conv + BN, then two convs on the concatenation
        total += conv(3, cin, w) + conv(3, 2 * w, w) + conv(3, w, w)
        cin = w
    return total + conv(1, width, classes, bn=False)


@pytest.mark.parametrize("classes", [7, 4, 2])
def test_parameter_count_matches_architecture(classes: int) -> None:
    net = UNet(in_channels=1, num_classes=classes, base_width=64)
    assert sum(p.numel() for p in net.parameters()) == expected_unet_parameters(classes)


@pytest.mark.parametrize(
    ("kwargs", "shape", "expected"),
    [
        ({"num_classes": 7, "base_width": 4}, (2, 1, 32, 32), (2, 7, 32, 32)),
        ({"num_classes": 2, "base_width": 2}, (1, 1, 16, 48), (1, 2, 16, 48)),
        ({"in_channels": 3, "num_classes": 4, "base_width": 2}, (1, 3, 64, 64), (1, 4, 64, 64)),
    ],
)
def test_output_shapes(kwargs: dict, shape: tuple, expected: tuple) -> None:
    net = UNet(**kwargs).eval()
    with torch.no_grad():
        probs = net.predict_proba(torch.randn(shape))
    assert probs.shape == expected
    assert torch.allclose(probs.sum(1), torch.ones(expected[0], *expected[2:]), atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"in_channels": 0}, {"base_width": 0}])
def test_impossible_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UNet(**kwargs)


def test_input_size_not_multiple_of_16_raises() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        UNet(base_width=2)(torch.zeros(1, 1, 24, 24))


def test_he_normal_init_std() -> None:
    net = UNet(base_width=16)
    conv = net.encoders[1][0][0]  # 3x3, 16 -> 32 channels: fan_in 144
    std = conv.weight.std().item()
    # Truncated at 2 std, the normal's spread shrinks by ~0.88.
    assert 0.80 * (2 / 144) ** 0.5 < std < 0.95 * (2 / 144) ** 0.5
    assert torch.count_nonzero(conv.bias) == 0


def test_weighted_dice_loss_hand_computed() -> None:
    # Two pixels, two classes. probs: pixel0 (0.8, 0.2), pixel1 (0.4, 0.6); truth: pixel0 class 0, pixel1 class 1.
    probs = torch.tensor([[0.8, 0.4], [0.2, 0.6]]).reshape(1, 2, 1, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    weights = torch.tensor([0.25, 0.75])
    # class 0: I = 0.8, T = 1.2 + 1 = 2.2; class 1: I = 0.6, T = 0.8 + 1 = 1.8
    expected = 1 - 2 * (0.25 * 0.8 + 0.75 * 0.6) / (0.25 * 2.2 + 0.75 * 1.8)
    assert weighted_dice_loss(probs, target, weights).item() == pytest.approx(expected)


def test_weighted_dice_error_accumulates_over_batches_like_one_batch() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 3, 8, 8), 1)
    target = torch.nn.functional.one_hot(torch.randint(0, 3, (6, 8, 8)), 3).permute(0, 3, 1, 2).float()
    weights = torch.tensor([0.2, 0.3, 0.5])
    metric = WeightedDiceError(weights)
    for i in range(0, 6, 2):
        metric.update(probs[i : i + 2], target[i : i + 2])
    whole = weighted_dice_loss(probs.double(), target.double(), weights.double())
    assert metric.compute().item() == pytest.approx(whole.item(), rel=1e-12)
    # Not the mean of per-batch losses (that would be a different number).
    per_batch = torch.stack(
        [weighted_dice_loss(probs[i : i + 2], target[i : i + 2], weights) for i in range(0, 6, 2)]
    )
    assert abs(per_batch.mean().item() - whole.item()) > 1e-6
