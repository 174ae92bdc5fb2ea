"""The layers of the progressive-growing GAN (:mod:`synthseg.networks.pgan`): equalized learning-rate dense and
conv layers, pixel norm, minibatch standard deviation, and the fused resampling kernels built from a 3x3 weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthseg.networks import conv_grad

LEAKY_SLOPE = 0.2
PIXEL_NORM_EPS = 1e-8


def num_features(stage: int, fmap_base: int = 8192, fmap_max: int = 512) -> int:
    """Feature maps of a stage: ``min(fmap_base / 2**stage, fmap_max)`` (at least 1)."""
    return max(1, min(fmap_base // 2**stage, fmap_max))


def pixel_norm(x: Tensor, eps: float = PIXEL_NORM_EPS) -> Tensor:
    """Normalise each pixel's feature vector to unit average square: x / sqrt(mean_c(x^2) + eps).

    Args:
        x: (N, C, ...) features.
    """
    # In float32 under mixed precision: in fp16, eps 1e-8 underflows to 0 and squares above 256 overflow.
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(dim=1, keepdim=True) + eps)).to(x.dtype)


def check_resolution(resolution: int, name: str = "resolution") -> int:
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise ValueError(f"{name} must be an int, got {resolution!r}")
    if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two from 8 to 1024, got {resolution}")
    return resolution


# Below this many pixels per map the double backward's weight term is cheap and conv_grad's Python-level
# backward costs more than it saves (measured at the demo's sizes, benchmarks/RESULTS.md).
CONV_GRAD_MIN_PIXELS = 32 * 32


def critic_conv(double_backward: bool, x: Tensor):  # noqa: ANN202 (F.conv2d's signature)
    if double_backward and x.shape[-1] * x.shape[-2] >= CONV_GRAD_MIN_PIXELS:
        return conv_grad.conv2d
    return F.conv2d


def scale_output(weight: Tensor, out_elements: int) -> bool:
    """Whether the run-time weight scale is cheaper on the layer's output than on its weight.

    ``layer(x, w * s) == layer(x, w) * s`` (equal to float32 rounding): the multiply, and its gradient, go
    where there are fewer elements, e.g. on the (4, 512, 8, 8) output of a 512x512x3x3 kernel.
    """
    return out_elements < weight.numel()


class EqualizedLinear(nn.Module):
    """Dense layer with the equalized learning rate.

    Args:
        in_features: input size.
        out_features: output size.
        gain: the run-time weight scale is ``gain / sqrt(in_features)``.
        bias: add a learned bias (initialised to zero).

    Shapes: (N, in_features) -> (N, out_features).
    """

    def __init__(
        self, in_features: int, out_features: int, gain: float = math.sqrt(2), bias: bool = True
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"features must be positive, got {in_features} -> {out_features}")
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        if scale_output(self.weight, x.shape[0] * self.weight.shape[0]):
            out = F.linear(x, self.weight) * self.scale
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """Square 'same' convolution with the equalized learning rate.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size (1 or 3 here).
        gain: the run-time weight scale is ``gain / sqrt(in_channels * kernel_size**2)``.
        bias: add a learned bias (initialised to zero).

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        gain: float = math.sqrt(2),
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"channels must be positive, got {in_channels} -> {out_channels}")
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        # The critic's convolutions run through conv_grad.conv2d (cheaper gradient penalty); same function.
        self.double_backward = False

    def forward(self, x: Tensor) -> Tensor:
        conv = critic_conv(self.double_backward, x)
        out_elements = x.shape[0] * self.weight.shape[0] * x.shape[2] * x.shape[3]
        if scale_output(self.weight, out_elements):
            out = conv(x, self.weight, None, 1, self.padding) * self.scale
            return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)
        return conv(x, self.weight * self.scale, self.bias, 1, self.padding)


class MinibatchStdDev(nn.Module):
    """Append one feature map holding the average standard deviation over groups of samples.

    Samples ``n`` and ``n + N/G`` (etc.) form a group, as in the official layer. The group size is
    ``min(group_size, N)``, lowered further to the largest divisor of ``N`` when ``N`` is not divisible.

    Args:
        group_size: samples per group (official: 4).

    Shapes: (N, C, H, W) -> (N, C + 1, H, W).
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        group = min(self.group_size, n)
        while n % group:
            group -= 1
        # float32 under mixed precision: in fp16 the 1e-8 vanishes and sqrt(0) has an infinite gradient.
        y = x.float().reshape(group, n // group, c, h, w)
        y = y - y.mean(dim=0, keepdim=True)
        y = torch.sqrt(y.square().mean(dim=0) + 1e-8)  # (M, C, H, W)
        y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)  # (M, 1, 1, 1)
        y = y.repeat(group, 1, h, w).to(x.dtype)  # sample g*M + m gets group m's value
        return torch.cat([x, y], dim=1)


def _one_sided_pads(weight: Tensor) -> Tensor:
    return (
        F.pad(weight, (1, 0, 1, 0))
        + F.pad(weight, (0, 1, 1, 0))
        + F.pad(weight, (1, 0, 0, 1))
        + F.pad(weight, (0, 1, 0, 1))
    )


# The shift sum as a (9, 16) 0/1 matrix: one matmul builds (and differentiates) a 512x512 kernel about 8x
# faster on CPU than pads and adds, which matters at low resolutions where the convolutions themselves are cheap.
_SHIFT_SUM = _one_sided_pads(torch.eye(9).reshape(9, 3, 3)).reshape(9, 16)


def _shift_sum(weight: Tensor, scale: float = 1.0, flip: bool = False) -> Tensor:
    """(..., 3, 3) -> (..., 4, 4): the kernel zero-padded and summed over its four one-pixel shifts.

    ``scale`` multiplies the result and ``flip`` flips the 3x3 kernel in both axes first; both are folded into
    the (9, 16) matrix, so the whole build is one matmul of the weights.
    """
    flat = weight.reshape(*weight.shape[:-2], 9)
    matrix = _SHIFT_SUM.flip(0) if flip else _SHIFT_SUM  # a 3x3 flip reverses the nine flattened taps
    matrix = (matrix * scale).to(device=weight.device, dtype=weight.dtype)
    device = weight.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        # Exact sums in the weight's dtype: the convolution casts the summed kernel, as it casts the 3x3 one.
        with torch.autocast(device, enabled=False):
            return (flat @ matrix).reshape(*weight.shape[:-2], 4, 4)
    return (flat @ matrix).reshape(*weight.shape[:-2], 4, 4)


def upscale_conv_kernel(weight: Tensor, scale: float = 1.0) -> Tensor:
    """The ``conv_transpose2d`` kernel (in, out, 4, 4) of nearest x2 upsampling + 'same' 3x3 ``conv2d``.

    ``conv_transpose2d(x, kernel, stride=2, padding=1)`` then equals ``conv2d(up2(x), weight * scale,
    padding=1)``. A transposed conv scatters where ``conv2d`` gathers, so the 3x3 kernel is flipped before the
    shift sum: the official ``Conv0_up`` weight (TensorFlow, used by ``conv2d_transpose`` as it is) is ours
    flipped in both spatial axes (docs/fidelity.md).

    Args:
        weight: ``conv2d`` kernel (out, in, 3, 3).
        scale: the equalized learning rate's run-time scale.
    """
    return _shift_sum(weight, scale, flip=True).transpose(0, 1)


def conv_downscale_kernel(weight: Tensor, scale: float = 1.0) -> Tensor:
    """The ``conv2d`` kernel (out, in, 4, 4) of 'same' 3x3 ``conv2d`` + 2x2 average pooling.

    ``conv2d(x, kernel, stride=2, padding=1)`` then equals ``avg_pool2d(conv2d(x, weight * scale, padding=1),
    2)``.

    Args:
        weight: ``conv2d`` kernel (out, in, 3, 3).
        scale: the equalized learning rate's run-time scale.
    """
    return _shift_sum(weight, 0.25 * scale)
