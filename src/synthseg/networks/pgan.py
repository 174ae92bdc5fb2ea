"""Progressive-growing GAN networks (Karras et al. 2018), as plain ``nn.Module``s.

Both networks are built for a target resolution and hold one block per resolution (``b4``, ``b8``, ...,
registered by name) plus one toRGB/fromRGB 1x1 layer per resolution. Which part runs is chosen per call:
the generator by ``resolution`` and ``alpha``, the discriminator by the input size and ``alpha``, so the
training loop grows the networks without rebuilding them.

Feature maps per stage follow the official ``nf(stage) = min(fmap_base / 2**stage, fmap_max)``: with the
defaults 512 channels from 4x4 to 32x32, then 256, 128, 64 at 64, 128, 256. The block at resolution
``2**r`` works with ``nf(r - 1)`` channels. At 256x256 with one channel the generator has 23,039,303
parameters and the discriminator 23,047,361, as the official networks.

Every weight uses the equalized learning rate: it is stored as N(0, 1) and scaled at run time by
``gain / sqrt(fan_in)``, so Adam sees all layers on one scale.

Fused scaling (``fused_scale=True``, the official default at every resolution from 8x8 up): the generator's
nearest x2 upsampling + 3x3 conv runs as one stride-2 transposed conv with a 4x4 kernel, and the
discriminator's 3x3 conv + 2x2 average pool as one stride-2 conv with a 4x4 kernel. Both kernels are built
at run time from the stored 3x3 weight (scaled by the 3x3 fan-in, as the official layers), so the parameters
and the state-dict keys are the same either way; fused needs 16/36 of the multiply-adds. As in the official
``D_paper``, the two discriminators differ: fused pools inside the conv, before bias and LReLU; unfused pools
after them. The generators compute the same function either way.

The discriminator's convolutions run through :func:`synthseg.networks.conv_grad.conv2d`, whose double
backward (the gradient penalty's) is made of ordinary convolutions; the run-time weight scale is applied to
a layer's output instead of its weight where the output is the smaller of the two. Both give the same
function to float32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthseg.networks import conv_grad
from synthseg.utils.init_args import records_init_args

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


def _check_resolution(resolution: int, name: str = "resolution") -> int:
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise ValueError(f"{name} must be an int, got {resolution!r}")
    if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two from 8 to 1024, got {resolution}")
    return resolution


# Below this many pixels per map the double backward's weight term is cheap and conv_grad's Python-level
# backward costs more than it saves (measured at the demo's sizes, benchmarks/RESULTS.md).
CONV_GRAD_MIN_PIXELS = 32 * 32


def _critic_conv(double_backward: bool, x: Tensor):  # noqa: ANN202 (F.conv2d's signature)
    if double_backward and x.shape[-1] * x.shape[-2] >= CONV_GRAD_MIN_PIXELS:
        return conv_grad.conv2d
    return F.conv2d


def _scale_output(weight: Tensor, out_elements: int) -> bool:
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
        if _scale_output(self.weight, x.shape[0] * self.weight.shape[0]):
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
        conv = _critic_conv(self.double_backward, x)
        out_elements = x.shape[0] * self.weight.shape[0] * x.shape[2] * x.shape[3]
        if _scale_output(self.weight, out_elements):
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


class _GeneratorInput(nn.Module):
    """Latent (N, latent_dim) -> 4x4 features (N, C, 4, 4): dense, bias, LReLU, pixel norm, conv 3x3."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        # One bias per channel after the reshape; gain sqrt(2)/4 matches the official first layer.
        self.dense = EqualizedLinear(latent_dim, channels * 16, gain=math.sqrt(2) / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv = EqualizedConv2d(channels, channels, 3)
        self.channels = channels

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(z).reshape(-1, self.channels, 4, 4) + self.bias.reshape(1, -1, 1, 1)
        x = pixel_norm(F.leaky_relu(x, LEAKY_SLOPE))
        return pixel_norm(F.leaky_relu(self.conv(x), LEAKY_SLOPE))


class _GeneratorBlock(nn.Module):
    """(N, in, H, W) -> (N, out, 2H, 2W): nearest x2, two conv 3x3, each with LReLU and pixel norm.

    With ``fused_scale`` the upsampling and the first conv are one stride-2 transposed conv (same function).
    """

    def __init__(self, in_channels: int, out_channels: int, fused_scale: bool = True) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.fused_scale = fused_scale

    def forward(self, x: Tensor) -> Tensor:
        conv0 = self.conv0
        if self.fused_scale:
            kernel = upscale_conv_kernel(conv0.weight, conv0.scale)
            x = F.conv_transpose2d(x, kernel, conv0.bias, stride=2, padding=1)
        else:
            x = conv0(F.interpolate(x, scale_factor=2, mode="nearest"))
        x = pixel_norm(F.leaky_relu(x, LEAKY_SLOPE))
        return pixel_norm(F.leaky_relu(self.conv1(x), LEAKY_SLOPE))


def _lerp(low: Tensor, high: Tensor, alpha: float) -> Tensor:
    return low + (high - low) * alpha


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


class PGANGenerator(nn.Module):
    """Progressive-growing generator: latent vector -> image at any stage up to ``resolution``.

    Args:
        resolution: target (largest) output size, a power of two from 8 to 1024.
        channels: image channels (1 for label maps).
        latent_dim: size of the latent vector.
        fmap_base: feature-map budget of ``nf(stage) = min(fmap_base / 2**stage, fmap_max)``.
        fmap_max: most feature maps of any stage.
        normalize_latents: pixel-normalise the latent vector first (official default).
        fused_scale: upsample + conv as one stride-2 transposed conv (official default; same weights and
            function, fewer FLOPs). False: upsample, then conv.

    ``forward(z, resolution=None, alpha=1.0)``: z (N, latent_dim) -> (N, channels, r, r) with
    ``r = resolution or self.resolution``. While a stage fades in (``alpha < 1``) the output is
    ``lerp(up2(toRGB_{r/2}(x_{r/2})), toRGB_r(x_r), alpha)``. The output is linear (no tanh).
    """

    @records_init_args
    def __init__(
        self,
        resolution: int = 256,
        channels: int = 1,
        latent_dim: int = 512,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        normalize_latents: bool = True,
        fused_scale: bool = True,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        if channels < 1 or latent_dim < 1 or fmap_base < 1 or fmap_max < 1:
            raise ValueError(
                f"channels, latent_dim, fmap_base, fmap_max must be positive, got "
                f"{channels}, {latent_dim}, {fmap_base}, {fmap_max}"
            )
        self.resolution = resolution
        self.channels = channels
        self.latent_dim = latent_dim
        self.normalize_latents = normalize_latents
        log2 = int(math.log2(resolution))

        def nf(stage: int) -> int:
            return num_features(stage, fmap_base, fmap_max)

        self.blocks = nn.ModuleDict({"b4": _GeneratorInput(latent_dim, nf(1))})
        self.to_rgb = nn.ModuleDict({"b4": EqualizedConv2d(nf(1), channels, 1, gain=1.0)})
        for r in range(3, log2 + 1):
            self.blocks[f"b{2**r}"] = _GeneratorBlock(nf(r - 2), nf(r - 1), bool(fused_scale))
            self.to_rgb[f"b{2**r}"] = EqualizedConv2d(nf(r - 1), channels, 1, gain=1.0)

    @property
    def resolutions(self) -> list[int]:
        """The stages, smallest first: [4, 8, ..., resolution]."""
        return [2**r for r in range(2, int(math.log2(self.resolution)) + 1)]

    def forward(self, z: Tensor, resolution: int | None = None, alpha: float = 1.0) -> Tensor:
        resolution = self.resolution if resolution is None else int(resolution)
        if resolution not in self.resolutions:
            raise ValueError(f"resolution must be one of {self.resolutions}, got {resolution}")
        alpha = _check_alpha(alpha)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        x = pixel_norm(z) if self.normalize_latents else z
        x = self.blocks["b4"](x)
        previous = x
        for r in self.resolutions[1:]:
            if r > resolution:
                break
            previous = x
            x = self.blocks[f"b{r}"](x)
        out = self.to_rgb[f"b{resolution}"](x)
        if resolution > 4 and alpha < 1.0:
            low = self.to_rgb[f"b{resolution // 2}"](previous)
            out = _lerp(F.interpolate(low, scale_factor=2, mode="nearest"), out, alpha)
        return out


class _DiscriminatorBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/2, W/2): conv 3x3 + bias + LReLU, then conv 3x3 and 2x2 average pooling.

    As the official ``D_paper``: with ``fused_scale`` (``Conv1_down``) the second conv and the pooling are one
    stride-2 conv with the averaged 4x4 kernel, followed by the bias and the LReLU; without it (``Conv1``,
    then ``downscale2d``) the pooling comes last, after the bias and the LReLU. The two differ where the
    LReLU's input changes sign within a 2x2 block.
    """

    def __init__(self, in_channels: int, out_channels: int, fused_scale: bool = True) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.fused_scale = fused_scale

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv0(x), LEAKY_SLOPE)
        conv1 = self.conv1
        if not self.fused_scale:
            x = conv1(x) + self.bias.reshape(1, -1, 1, 1)
            return F.avg_pool2d(F.leaky_relu(x, LEAKY_SLOPE), 2)
        conv = _critic_conv(conv1.double_backward, x)
        x = conv(x, conv_downscale_kernel(conv1.weight, conv1.scale), None, 2, 1)
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), LEAKY_SLOPE)


class _DiscriminatorOutput(nn.Module):
    """(N, C, 4, 4) -> (N, 1): minibatch stddev, conv 3x3, dense to ``hidden``, dense to 1 (linear)."""

    def __init__(self, channels: int, hidden: int, group_size: int) -> None:
        super().__init__()
        self.mbstd = MinibatchStdDev(group_size)
        self.conv = EqualizedConv2d(channels + 1, channels, 3)
        self.dense0 = EqualizedLinear(channels * 16, hidden)
        self.dense1 = EqualizedLinear(hidden, 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv(self.mbstd(x)), LEAKY_SLOPE)
        x = F.leaky_relu(self.dense0(x.flatten(1)), LEAKY_SLOPE)
        return self.dense1(x)


class PGANDiscriminator(nn.Module):
    """Progressive-growing discriminator (critic): image at any stage -> one unbounded score.

    Args:
        resolution: target (largest) input size, a power of two from 8 to 1024.
        channels: image channels (1 for label maps).
        fmap_base: feature-map budget of ``nf(stage) = min(fmap_base / 2**stage, fmap_max)``.
        fmap_max: most feature maps of any stage.
        mbstd_group_size: group size of the minibatch standard deviation (official: 4).
        fused_scale: conv + average pool as one stride-2 conv, then bias and LReLU (official default, fewer
            FLOPs). False: conv, bias, LReLU, then average pool (the official unfused block: not the same
            function; same weights).

    ``forward(x, alpha=1.0)``: x (N, channels, r, r) with r a stage (4 ... resolution) -> (N, 1). While a
    stage fades in, the features after its block are ``lerp(fromRGB_{r/2}(avgpool2(x)), block_r(fromRGB_r(x)),
    alpha)``.
    """

    @records_init_args
    def __init__(
        self,
        resolution: int = 256,
        channels: int = 1,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        mbstd_group_size: int = 4,
        fused_scale: bool = True,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        if channels < 1 or fmap_base < 1 or fmap_max < 1 or mbstd_group_size < 1:
            raise ValueError(
                f"channels, fmap_base, fmap_max, mbstd_group_size must be positive, got "
                f"{channels}, {fmap_base}, {fmap_max}, {mbstd_group_size}"
            )
        self.resolution = resolution
        self.channels = channels
        log2 = int(math.log2(resolution))

        def nf(stage: int) -> int:
            return num_features(stage, fmap_base, fmap_max)

        self.from_rgb = nn.ModuleDict({"b4": EqualizedConv2d(channels, nf(1), 1)})
        self.blocks = nn.ModuleDict({"b4": _DiscriminatorOutput(nf(1), nf(0), mbstd_group_size)})
        for r in range(3, log2 + 1):
            self.from_rgb[f"b{2**r}"] = EqualizedConv2d(channels, nf(r - 1), 1)
            self.blocks[f"b{2**r}"] = _DiscriminatorBlock(nf(r - 1), nf(r - 2), bool(fused_scale))
        for layer in self.modules():
            if isinstance(layer, EqualizedConv2d):
                layer.double_backward = True

    @property
    def resolutions(self) -> list[int]:
        """The stages, smallest first: [4, 8, ..., resolution]."""
        return [2**r for r in range(2, int(math.log2(self.resolution)) + 1)]

    def _from_rgb(self, x: Tensor, resolution: int) -> Tensor:
        return F.leaky_relu(self.from_rgb[f"b{resolution}"](x), LEAKY_SLOPE)

    def forward(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[2] != x.shape[3]:
            raise ValueError(f"x must have shape (N, {self.channels}, r, r), got {tuple(x.shape)}")
        resolution = int(x.shape[-1])
        if resolution not in self.resolutions:
            raise ValueError(f"input size must be one of {self.resolutions}, got {resolution}")
        alpha = _check_alpha(alpha)
        h = self._from_rgb(x, resolution)
        if resolution > 4:
            h = self.blocks[f"b{resolution}"](h)
            if alpha < 1.0:
                h = _lerp(self._from_rgb(F.avg_pool2d(x, 2), resolution // 2), h, alpha)
            for r in reversed(self.resolutions[1:]):
                if r < resolution:
                    h = self.blocks[f"b{r}"](h)
        return self.blocks["b4"](h)
