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

Label encodings (``label_encoding``): ``index`` (official, the paper) codes the class indices as one channel,
mapped linearly to [-1, 1]; ``onehot`` has one channel per class, the generator's outputs on the simplex
(a softmax over the classes), which changes only the toRGB/fromRGB layers. Slice position (``condition``):
``slice`` feeds the slice's normalised axial position (:mod:`synthseg.networks.position`) to both networks:
an embedding concatenated to the generator's normalised latent, and in the discriminator a projection
(Miyato & Koyama 2018) or a concatenation to its last features. The defaults build the official networks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthseg.data.labels import LABEL_ENCODINGS, classes_in_order
from synthseg.networks.pgan_layers import (
    LEAKY_SLOPE,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStdDev,
    check_resolution,
    conv_downscale_kernel,
    critic_conv,
    num_features,
    pixel_norm,
    upscale_conv_kernel,
)
from synthseg.networks.position import (
    PositionEmbedding,
    check_condition,
    check_positions,
    conditional_score,
    uniform_positions_from_latents,
)
from synthseg.utils.init_args import records_init_args


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


def _check_encoding(label_encoding: str, classes: int, index_order: str = "paper") -> None:
    if label_encoding not in LABEL_ENCODINGS:
        raise ValueError(f"label_encoding must be one of {LABEL_ENCODINGS}, got {label_encoding!r}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    classes_in_order(index_order, classes)  # a known order, for this class count
    if index_order != "paper" and label_encoding != "index":
        raise ValueError(
            f"index_order={index_order} orders the index coding; label_encoding is {label_encoding}"
        )


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
        label_encoding: ``index`` (official): ``channels`` linear outputs; ``onehot``: ``classes`` outputs,
            softmax over them (class probabilities; the mask is their argmax).
        classes: label classes of the ``onehot`` encoding.
        condition: ``none`` (official) or ``slice``: the slice's normalised axial position is embedded and
            concatenated to the normalised latent.
        condition_dim: size of the position embedding.
        index_order: the index coding's value order (``paper`` or ``anatomical``,
            :data:`synthseg.data.labels.INDEX_ORDERS`); not used by the network, recorded so that its
            outputs are read back in the order it was trained on.

    ``forward(z, resolution=None, alpha=1.0, position=None)``: z (N, latent_dim) -> (N, C, r, r) with
    ``r = resolution or self.resolution`` and C = ``channels`` (index) or ``classes`` (onehot). While a stage
    fades in (``alpha < 1``) the output is ``lerp(up2(out_{r/2}), out_r, alpha)``, ``out`` being toRGB (index:
    linear, no tanh) or its softmax (onehot: the blend stays on the simplex). ``position`` (N,) in [0, 1]: the
    slices' axial positions (``condition=slice``; None draws them uniformly from the latents' lengths, see
    :func:`synthseg.networks.position.uniform_positions_from_latents`).
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
        label_encoding: str = "index",
        classes: int = 7,
        condition: str = "none",
        condition_dim: int = 32,
        index_order: str = "paper",
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        _check_encoding(label_encoding, classes, index_order)
        check_condition(condition)
        if channels < 1 or latent_dim < 1 or fmap_base < 1 or fmap_max < 1 or condition_dim < 1:
            raise ValueError(
                f"channels, latent_dim, fmap_base, fmap_max must be positive, got "
                f"{channels}, {latent_dim}, {fmap_base}, {fmap_max}"
            )
        self.resolution = resolution
        self.channels = channels
        self.latent_dim = latent_dim
        self.normalize_latents = normalize_latents
        self.label_encoding, self.classes, self.condition = label_encoding, int(classes), condition
        self.index_order = index_order
        self.image_channels = self.classes if label_encoding == "onehot" else channels
        log2 = int(math.log2(resolution))

        def nf(stage: int) -> int:
            return num_features(stage, fmap_base, fmap_max)

        inputs, out = latent_dim, self.image_channels
        if condition != "none":
            self.position_embedding = PositionEmbedding(condition_dim)
            inputs += condition_dim
        self.blocks = nn.ModuleDict({"b4": _GeneratorInput(inputs, nf(1))})
        self.to_rgb = nn.ModuleDict({"b4": EqualizedConv2d(nf(1), out, 1, gain=1.0)})
        for r in range(3, log2 + 1):
            self.blocks[f"b{2**r}"] = _GeneratorBlock(nf(r - 2), nf(r - 1), bool(fused_scale))
            self.to_rgb[f"b{2**r}"] = EqualizedConv2d(nf(r - 1), out, 1, gain=1.0)

    @property
    def resolutions(self) -> list[int]:
        """The stages, smallest first: [4, 8, ..., resolution]."""
        return [2**r for r in range(2, int(math.log2(self.resolution)) + 1)]

    def _output(self, x: Tensor) -> Tensor:
        """toRGB's values as the encoding's output: linear (index) or class probabilities (onehot)."""
        return torch.softmax(x.float(), dim=1).to(x.dtype) if self.label_encoding == "onehot" else x

    def _condition(self, x: Tensor, z: Tensor, position: Tensor | None) -> Tensor:
        """The normalised latent (N, latent_dim) with the position's normalised embedding appended."""
        position = uniform_positions_from_latents(z) if position is None else position
        embedding = self.position_embedding(check_positions(position, z.shape[0]).to(z.device))
        return torch.cat([x, pixel_norm(embedding.to(x.dtype))], dim=1)

    def forward(
        self, z: Tensor, resolution: int | None = None, alpha: float = 1.0, position: Tensor | None = None
    ) -> Tensor:
        resolution = self.resolution if resolution is None else int(resolution)
        if resolution not in self.resolutions:
            raise ValueError(f"resolution must be one of {self.resolutions}, got {resolution}")
        alpha = _check_alpha(alpha)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        x = pixel_norm(z) if self.normalize_latents else z
        if self.condition != "none":
            x = self._condition(x, z, position)
        x = self.blocks["b4"](x)
        previous = x
        for r in self.resolutions[1:]:
            if r > resolution:
                break
            previous = x
            x = self.blocks[f"b{r}"](x)
        out = self._output(self.to_rgb[f"b{resolution}"](x))
        if resolution > 4 and alpha < 1.0:
            low = self._output(self.to_rgb[f"b{resolution // 2}"](previous))
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
        conv = critic_conv(conv1.double_backward, x)
        x = conv(x, conv_downscale_kernel(conv1.weight, conv1.scale), None, 2, 1)
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), LEAKY_SLOPE)


class _DiscriminatorOutput(nn.Module):
    """(N, C, 4, 4) -> (N, 1): minibatch stddev, conv 3x3, dense to ``hidden``, dense to 1 (linear)."""

    def __init__(self, channels: int, hidden: int, group_size: int, extra_features: int = 0) -> None:
        super().__init__()
        self.mbstd = MinibatchStdDev(group_size)
        self.conv = EqualizedConv2d(channels + 1, channels, 3)
        # extra_features: a conditional critic's position embedding, concatenated to the flattened features
        self.dense0 = EqualizedLinear(channels * 16 + extra_features, hidden)
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
        label_encoding: ``index`` (official): ``channels`` inputs; ``onehot``: ``classes`` inputs (one-hot
            reals, class fractions at lower levels of detail, or the generator's probabilities).
        classes: label classes of the ``onehot`` encoding.
        condition: ``none`` (official) or ``slice``: the score also depends on the slice's axial position.
        condition_style: ``projection``: the score gains the inner product of the last hidden features with
            the position's embedding (Miyato & Koyama 2018); ``concat``: the embedding is concatenated to the
            flattened 4x4 features before the first dense layer.
        condition_dim: size of the position embedding with ``concat`` (projection: the hidden width).
        index_order: the index coding's value order its reals are coded in (``paper`` or ``anatomical``);
            recorded for the critic filter, not used by the network.

    ``forward(x, alpha=1.0, position=None)``: x (N, C, r, r) with r a stage (4 ... resolution) and C =
    ``channels`` (index) or ``classes`` (onehot) -> (N, 1). While a stage fades in, the features after its
    block are ``lerp(fromRGB_{r/2}(avgpool2(x)), block_r(fromRGB_r(x)), alpha)``. ``position`` (N,) in [0, 1]:
    required with ``condition=slice``.
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
        label_encoding: str = "index",
        classes: int = 7,
        condition: str = "none",
        condition_style: str = "concat",
        condition_dim: int = 32,
        index_order: str = "paper",
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        _check_encoding(label_encoding, classes, index_order)
        check_condition(condition, condition_style)
        if channels < 1 or fmap_base < 1 or fmap_max < 1 or mbstd_group_size < 1 or condition_dim < 1:
            raise ValueError(
                f"channels, fmap_base, fmap_max, mbstd_group_size must be positive, got "
                f"{channels}, {fmap_base}, {fmap_max}, {mbstd_group_size}"
            )
        self.resolution = resolution
        self.channels = channels
        self.label_encoding, self.classes, self.condition = label_encoding, int(classes), condition
        self.index_order = index_order
        self.condition_style = condition_style
        self.image_channels = inputs = self.classes if label_encoding == "onehot" else channels
        log2 = int(math.log2(resolution))

        def nf(stage: int) -> int:
            return num_features(stage, fmap_base, fmap_max)

        extra = condition_dim if condition != "none" and condition_style == "concat" else 0
        if condition != "none":
            self.position_embedding = PositionEmbedding(extra or nf(0))
        self.from_rgb = nn.ModuleDict({"b4": EqualizedConv2d(inputs, nf(1), 1)})
        self.blocks = nn.ModuleDict({"b4": _DiscriminatorOutput(nf(1), nf(0), mbstd_group_size, extra)})
        for r in range(3, log2 + 1):
            self.from_rgb[f"b{2**r}"] = EqualizedConv2d(inputs, nf(r - 1), 1)
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

    def forward(self, x: Tensor, alpha: float = 1.0, position: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.image_channels or x.shape[2] != x.shape[3]:
            raise ValueError(f"x must have shape (N, {self.image_channels}, r, r), got {tuple(x.shape)}")
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
        if self.condition != "none":
            embedding = self.position_embedding(check_positions(position, h.shape[0]).to(h.device))
            return conditional_score(self.blocks["b4"], h, embedding.to(h.dtype), self.condition_style)
        return self.blocks["b4"](h)
