"""The paper's U-Net: parameter counts from the architecture, shapes, bad arguments; the weighted Dice loss."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from synthseg.losses.dice import WeightedDiceError, weighted_dice_loss
from synthseg.networks.unet import UNet, UpConvBN


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
@pytest.mark.parametrize("alignment", ["keras", "torch"])
def test_parameter_count_matches_architecture(classes: int, alignment: str) -> None:
    net = UNet(in_channels=1, num_classes=classes, base_width=64, up_alignment=alignment)
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


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"in_channels": 0},
        {"base_width": 0},
        {"up_alignment": "center"},
        {"bn_eps": 0.0},
        {"bn_momentum": 1.5},
    ],
)
def test_impossible_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UNet(**kwargs)


def test_input_size_not_multiple_of_16_raises() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        UNet(base_width=2)(torch.zeros(1, 1, 24, 24))


def test_he_normal_init_std() -> None:
    torch.manual_seed(0)
    net = UNet(base_width=16)
    conv = net.bridge[0]  # 3x3, 128 -> 256 channels: fan_in 1152, 294,912 weights
    target = (2 / 1152) ** 0.5
    # Keras >= 2.2.3: the truncated normal's std is divided by 0.8796..., so the weights' std is sqrt(2/fan_in)
    # itself (without the correction it would be 0.88 of it) ...
    assert 0.98 * target < conv.weight.std().item() < 1.02 * target
    # ... and the truncation is at 2 of the widened std, beyond 2 * sqrt(2/fan_in).
    bound = 2 * target / 0.87962566
    assert conv.weight.abs().max().item() <= bound
    assert conv.weight.abs().max().item() > 0.99 * bound
    assert torch.count_nonzero(conv.bias) == 0
    up = net.ups[0][0]  # transposed 3x3, 256 -> 128: Keras' fan-in counts the output channels (9 * 128)
    assert 0.98 * target < up.weight.std().item() < 1.02 * target


def test_batch_norms_use_keras_epsilon_and_momentum() -> None:
    net = UNet(1, 7)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 21  # 8 encoder convs, the bridge, 4 transposed convs, 8 decoder convs
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    # Keras' momentum 0.99 keeps 99 % of the running mean: one training batch moves it 1 % of the way.
    block = UNet(1, 2, base_width=2).encoders[0][0]
    x = torch.randn(4, 1, 16, 16)
    block.train()(x)
    batch_mean = block[0](x).mean(dim=(0, 2, 3)).detach()
    torch.testing.assert_close(block[1].running_mean, 0.01 * batch_mean)
    assert UNet(1, 2, base_width=2, bn_eps=1e-5, bn_momentum=0.1).bridge[1].momentum == 0.1


def _full_transposed(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The full stride-2 transposed convolution of a 2-D map, from its definition: each input pixel (p, q)
    adds ``x[p, q] * kernel`` at rows 2p..2p+2 and columns 2q..2q+2 of a (2n+1) x (2m+1) map."""
    n, m = x.shape
    full = torch.zeros(2 * n + 1, 2 * m + 1)
    for p in range(n):
        for q in range(m):
            full[2 * p : 2 * p + 3, 2 * q : 2 * q + 3] += x[p, q] * kernel
    return full


@pytest.mark.parametrize(("alignment", "start"), [("keras", 0), ("torch", 1)])
def test_transposed_conv_keeps_the_keras_pixels(alignment: str, start: int) -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    kernel = torch.arange(1.0, 10.0).reshape(3, 3)  # asymmetric: a one-pixel shift changes every value
    up = UpConvBN(1, 1, alignment=alignment).eval()
    with torch.no_grad():
        up[0].weight.copy_(kernel.reshape(1, 1, 3, 3))
        up[0].bias.zero_()
        up[1].running_var.fill_(1.0 - up[1].eps)  # the batch norm passes values through unchanged
    out = up(x.reshape(1, 1, 2, 2)).detach()[0, 0]
    # Keras' Conv2DTranspose(3, strides=2, padding='same') keeps full[0:2n]; padding=1 with output_padding=1
    # keeps full[1:2n+1].
    expected = _full_transposed(x, kernel)[start : start + 4, start : start + 4]
    torch.testing.assert_close(out, expected)
    assert UNet(1, 2, base_width=2).ups[0].crop  # the default is Keras'


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


class FixedLogits(torch.nn.Module):
    """A stand-in network whose output ignores its input: fixed logits (1, C, H, W), plus a zero parameter."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.init_args = {"num_classes": int(logits.shape[1])}
        self.logits = logits
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + self.bias


def test_dice_plus_class_weighted_cross_entropy_hand_computed() -> None:
    from synthseg.models.unet import UNetModule

    # Two pixels, two classes; the network's logits are fixed by a stand-in whose output ignores its input.
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(
        1, 2, 1, 2
    )  # pixel0 -> class 1, pixel1 -> class 0

    batch = {"image": torch.zeros(1, 1, 1, 2), "label": torch.tensor([[[0, 1]]])}
    weights = torch.tensor([0.25, 0.75])
    p = 1 / (1 + math.e)  # softmax probability of the right class at either pixel
    dice = 1 - 2 * (0.25 * p + 0.75 * p) / (0.25 * 2 + 0.75 * 2)
    ce = (0.25 * -math.log(p) + 0.75 * -math.log(p)) / (0.25 + 0.75)  # weighted mean over pixels
    losses = {}
    for ce_weight in (0.0, 0.5):
        module = UNetModule(FixedLogits(logits), partial(torch.optim.SGD, lr=0.1), ce_weight=ce_weight)
        module.class_weights.copy_(weights)
        module.log = lambda *a, **k: None  # no Trainer attached
        losses[ce_weight] = module.training_step(batch, 0).item()
    assert losses[0.0] == pytest.approx(dice)
    assert losses[0.5] == pytest.approx(dice + 0.5 * ce)


@pytest.mark.parametrize("mode", ["dice", "sqrt", "none"])
def test_cross_entropy_class_weights_by_hand(mode):
    from synthseg.models.unet import UNetModule

    # pixel 0 (class 0) has logits (2, 0), pixel 1 (class 1) has (0, 0): their right-class probabilities differ
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)

    batch = {"image": torch.zeros(1, 1, 1, 2), "label": torch.tensor([[[0, 1]]])}
    nll = [-math.log(math.e**2 / (math.e**2 + 1)), math.log(2)]
    w = {"dice": [0.2, 0.8], "sqrt": [math.sqrt(0.2), math.sqrt(0.8)], "none": [1.0, 1.0]}[mode]
    ce = (w[0] * nll[0] + w[1] * nll[1]) / (w[0] + w[1])  # torch's weighted mean over pixels
    with_ce = UNetModule(
        FixedLogits(logits), partial(torch.optim.SGD, lr=0.1), ce_weight=1.0, ce_class_weights=mode
    )
    dice_only = UNetModule(FixedLogits(logits), partial(torch.optim.SGD, lr=0.1))
    for module in (with_ce, dice_only):
        module.class_weights.copy_(torch.tensor([0.2, 0.8]))
        module.log = lambda *a, **k: None  # no Trainer attached
    difference = with_ce.training_step(batch, 0) - dice_only.training_step(batch, 0)
    assert difference.item() == pytest.approx(ce)
    with pytest.raises(ValueError, match="ce_class_weights must be one of"):
        UNetModule(FixedLogits(logits), partial(torch.optim.SGD, lr=0.1), ce_class_weights="inverse")
