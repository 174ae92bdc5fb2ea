"""The paper's U-Net (section 3.1; REFERENCE.md "U-Net")."""

from __future__ import annotations

import math

import torch
from torch import nn

from synthseg.utils.init_args import records_init_args

# Keras' BatchNormalization defaults: epsilon 1e-3, moving-average momentum 0.99 (PyTorch's 0.01).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01
# Keras >= 2.2.3 divides the truncated normal's std by the std of a unit normal truncated at +-2 std, so the
# weights end up with std sqrt(2 / fan_in) itself.
TRUNCATED_STD_CORRECTION = 0.87962566103423978
UP_ALIGNMENTS = ("keras", "torch")


def _he_normal_(weight: torch.Tensor, fan_in: int) -> None:
    # Keras' he_normal: normal with std sqrt(2 / fan_in) / 0.8796..., truncated at 2 of that std.
    std = math.sqrt(2.0 / fan_in) / TRUNCATED_STD_CORRECTION
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class ConvBNReLU(nn.Sequential):
    """3x3 'same' convolution -> batch norm -> ReLU. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ConvBNReLU layers: one U-Net level. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels, bn_eps, bn_momentum),
            ConvBNReLU(out_channels, out_channels, bn_eps, bn_momentum),
        )


class UpConvBN(nn.Sequential):
    """3x3 stride-2 'same' transposed convolution -> batch norm. (B, C_in, H, W) -> (B, C_out, 2H, 2W).

    The full transposed convolution of an n-pixel side has 2n + 1 pixels. ``alignment="keras"`` keeps
    ``full[0:2n]`` as Keras' ``Conv2DTranspose(padding='same')`` does (padding 0, then crop the last row and
    column); ``"torch"`` keeps ``full[1:2n+1]`` (``padding=1, output_padding=1``), one pixel shifted.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        alignment: str = "keras",
    ) -> None:
        if alignment not in UP_ALIGNMENTS:
            raise ValueError(f"up_alignment must be one of {UP_ALIGNMENTS}, got {alignment!r}")
        padding = (0, 0) if alignment == "keras" else (1, 1)
        super().__init__(
            nn.ConvTranspose2d(
                in_channels, out_channels, 3, stride=2, padding=padding, output_padding=padding
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        )
        self.crop = alignment == "keras"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = 2 * x.shape[-2], 2 * x.shape[-1]
        x = self[0](x)
        if self.crop:  # before the batch norm: its statistics are over the kept pixels only
            x = x[..., :height, :width]
        return self[1](x)


class UNet(nn.Module):
    """U-Net of Foroozandeh & Eklund (2020).

    Encoder: 4 levels of two 3x3 convs (w, 2w, 4w, 8w filters; w = 64 in the paper), each followed by batch norm
    and ReLU, 2x2 max-pooling between levels. Bridge: one 3x3 conv with 16w filters, then a 3x3 stride-2
    transposed conv. Decoder: 4 levels of two convs (8w, 4w, 2w, w); a transposed conv + batch norm precedes
    every concatenation with the encoder's skip. A final 1x1 conv gives the class scores. 'same' padding
    everywhere, He-normal initialization. The defaults are the Keras layers' (see the module constants).

    Args:
        in_channels: image channels (1 for T1c).
        num_classes: output classes (7, 4 or 2 in the paper).
        base_width: filters of the first level (64 in the paper).
        bn_eps: batch norm epsilon (Keras 1e-3; PyTorch's own default 1e-5).
        bn_momentum: batch norm running-statistics momentum in PyTorch's sense (Keras 0.99 = 0.01 here).
        up_alignment: which 2n of the transposed conv's 2n + 1 pixels are kept: ``"keras"`` (the first) or
            ``"torch"`` (the last, PyTorch's usual ``padding=1, output_padding=1``).

    Shapes:
        input (B, in_channels, H, W) with H and W multiples of 16 -> logits (B, num_classes, H, W).
        ``predict_proba`` applies the paper's softmax over channels.
    """

    @records_init_args
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 7,
        base_width: int = 64,
        *,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        up_alignment: str = "keras",
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or base_width < 1:
            raise ValueError(
                f"UNet needs in_channels >= 1, num_classes >= 2, base_width >= 1; got {in_channels}, "
                f"{num_classes}, {base_width}"
            )
        if not bn_eps > 0 or not 0 <= bn_momentum <= 1:
            raise ValueError(f"UNet needs bn_eps > 0 and bn_momentum in [0, 1]; got {bn_eps}, {bn_momentum}")
        bn = {"bn_eps": float(bn_eps), "bn_momentum": float(bn_momentum)}
        widths = [base_width * 2**i for i in range(4)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.encoders.append(DoubleConv(channels, width, **bn))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bridge = ConvBNReLU(channels, base_width * 16, **bn)
        channels = base_width * 16
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths):
            self.ups.append(UpConvBN(channels, width, alignment=up_alignment, **bn))
            self.decoders.append(DoubleConv(2 * width, width, **bn))
            channels = width
        self.head = nn.Conv2d(channels, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                receptive = module.kernel_size[0] * module.kernel_size[1]
                # Keras counts a transposed conv's fan-in over its output channels.
                fan_in = receptive * (
                    module.out_channels if isinstance(module, nn.ConvTranspose2d) else module.in_channels
                )
                _he_normal_(module.weight, fan_in)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(
                f"UNet input height and width must be multiples of 16, got {tuple(x.shape[-2:])}"
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities (B, num_classes, H, W)."""
        return torch.softmax(self.forward(x), dim=1)
