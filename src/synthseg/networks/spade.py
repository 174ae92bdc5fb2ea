"""SPADE (Park et al. 2019): the label-to-image generator and the multiscale PatchGAN discriminator.

The vocabulary follows the paper and its official code (``SPADE``, ``SPADEResnetBlock``, ``SPADEGenerator``,
``NLayerDiscriminator``, ``MultiscaleDiscriminator``, ``ConvEncoder``) so the two can be compared; every
setting is an explicit constructor argument. With the paper's options (7 labels, no instance map, one output
channel, 256x256, ngf 64, ndf 64) the generator has 92,178,241 parameters and the discriminator 5,537,922, as
the official networks do.

Weights start xavier-normal with gain ``init_gain`` (0.02 by default, the official setting), biases zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthseg.networks.spade_layers import SPADEResnetBlock, check_positive, conv_layer, resize_label
from synthseg.utils.init_args import records_init_args

UPSAMPLING_LAYERS = (5, 6, 7)  # official "normal", "more", "most"


class SPADEGenerator(nn.Module):
    """The SPADE generator: a label map in, an image in [-1, 1] out.

    Without VAE, the label map resized to ``image_size / 2**num_upsampling_layers`` goes through a 3x3 conv to
    ``16 * ngf`` channels; with VAE a latent code goes through a linear layer to that size instead. Then
    head_0 -> up -> G_middle_0 -> [up if 6+] -> G_middle_1 -> up -> up_0 -> up -> up_1 -> up -> up_2 -> up ->
    up_3 -> [up -> up_4 if 7] -> LeakyReLU 0.2 -> conv 3x3 -> tanh, with nearest x2 upsampling.

    Args:
        label_nc: label classes (channels of the one-hot input).
        output_nc: image channels (1 for T1c).
        ngf: base width.
        image_size: output height and width; divisible by ``2**num_upsampling_layers``.
        num_upsampling_layers: 5 (official "normal"), 6 ("more") or 7 ("most").
        use_vae: start from a latent code instead of the downsampled label map.
        z_dim: latent size with ``use_vae``.
        spectral: spectral norm on the residual-block convs.
        hidden_channels: SPADE hidden width.
        param_free_norm: normalisation inside SPADE (``"batch"`` synchronised, or ``"instance"``).
        init_gain: xavier-normal gain.

    Shape:
        label (B, label_nc, image_size, image_size), z (B, z_dim) or None -> (B, output_nc, image_size,
        image_size).
    """

    @records_init_args
    def __init__(
        self,
        label_nc: int = 7,
        output_nc: int = 1,
        ngf: int = 64,
        image_size: int = 256,
        num_upsampling_layers: int = 5,
        use_vae: bool = False,
        z_dim: int = 256,
        spectral: bool = True,
        hidden_channels: int = 128,
        param_free_norm: str = "batch",
        init_gain: float = 0.02,
    ):
        super().__init__()
        check_positive(label_nc=label_nc, output_nc=output_nc, ngf=ngf, image_size=image_size, z_dim=z_dim)
        if num_upsampling_layers not in UPSAMPLING_LAYERS:
            raise ValueError(
                f"num_upsampling_layers must be one of {UPSAMPLING_LAYERS}, got {num_upsampling_layers}"
            )
        if image_size % 2**num_upsampling_layers:
            raise ValueError(
                f"image_size must be divisible by 2**num_upsampling_layers = {2**num_upsampling_layers}, "
                f"got {image_size}"
            )
        if num_upsampling_layers == 7 and ngf < 2:
            raise ValueError("num_upsampling_layers 7 halves ngf in its last block: ngf must be at least 2")
        self.label_nc = label_nc
        self.output_nc = output_nc
        self.image_size = image_size
        self.num_upsampling_layers = num_upsampling_layers
        self.use_vae = use_vae
        self.z_dim = z_dim
        self.start_size = image_size // 2**num_upsampling_layers
        nf = ngf
        if use_vae:
            self.fc: nn.Module = nn.Linear(z_dim, 16 * nf * self.start_size**2)
            nn.init.xavier_normal_(self.fc.weight, gain=init_gain)
            nn.init.zeros_(self.fc.bias)
        else:
            self.fc = conv_layer(label_nc, 16 * nf, 3, padding=1, gain=init_gain)

        def block(fin: int, fout: int) -> SPADEResnetBlock:
            return SPADEResnetBlock(
                fin, fout, label_nc, spectral, hidden_channels, param_free_norm, init_gain
            )

        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, nf)
        final_nc = nf
        if num_upsampling_layers == 7:
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = conv_layer(final_nc, output_nc, 3, padding=1, gain=init_gain)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, label: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        batch = label.shape[0]
        expected = (batch, self.label_nc, self.image_size, self.image_size)
        if tuple(label.shape) != expected:
            raise ValueError(f"label map must have shape {expected}, got {tuple(label.shape)}")
        if self.use_vae:
            if z is None:
                z = torch.randn(batch, self.z_dim, device=label.device, dtype=label.dtype)
            x = self.fc(z).view(batch, -1, self.start_size, self.start_size)
        else:
            x = self.fc(F.interpolate(label, size=(self.start_size, self.start_size), mode="nearest"))
        resized: dict[tuple[int, ...], torch.Tensor] = {}

        def at(x: torch.Tensor) -> torch.Tensor:
            """The label map at the size of ``x``, resized once per size and forward."""
            size = tuple(x.shape[2:])
            if size not in resized:
                resized[size] = resize_label(label, size)
            return resized[size]

        x = self._up(self.head_0(x, at(x)))
        x = self.G_middle_0(x, at(x))
        if self.num_upsampling_layers >= 6:
            x = self._up(x)
        x = self._up(self.G_middle_1(x, at(x)))
        x = self._up(self.up_0(x, at(x)))
        x = self._up(self.up_1(x, at(x)))
        x = self._up(self.up_2(x, at(x)))
        x = self.up_3(x, at(x))
        if self.num_upsampling_layers == 7:
            x = self._up(x)
            x = self.up_4(x, at(x))
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class ConvEncoder(nn.Module):
    """The optional VAE image encoder: six (five below 256) stride-2 convs to a mean and log-variance.

    Convs are 3x3 with spectral norm and affine-free instance norm (no bias), LeakyReLU 0.2 between them;
    inputs of another size are resized to 256x256 first, as the official encoder does.

    Args:
        input_nc: image channels.
        ndf: base width.
        z_dim: latent size.
        image_size: training size (decides whether the sixth conv exists).
        init_gain: xavier-normal gain.

    Shape:
        image (B, input_nc, H, W) -> mu (B, z_dim), logvar (B, z_dim).
    """

    @records_init_args
    def __init__(
        self,
        input_nc: int = 1,
        ndf: int = 64,
        z_dim: int = 256,
        image_size: int = 256,
        init_gain: float = 0.02,
    ):
        super().__init__()
        check_positive(input_nc=input_nc, ndf=ndf, z_dim=z_dim, image_size=image_size)
        widths = [input_nc, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf] + (
            [8 * ndf] if image_size >= 256 else []
        )
        self.layers = nn.ModuleList(
            nn.Sequential(
                conv_layer(cin, cout, 3, stride=2, padding=1, bias=False, spectral=True, gain=init_gain),
                nn.InstanceNorm2d(cout, affine=False),
            )
            for cin, cout in zip(widths[:-1], widths[1:], strict=True)
        )
        self.fc_mu = nn.Linear(8 * ndf * 4 * 4, z_dim)
        self.fc_var = nn.Linear(8 * ndf * 4 * 4, z_dim)
        for fc in (self.fc_mu, self.fc_var):
            nn.init.xavier_normal_(fc.weight, gain=init_gain)
            nn.init.zeros_(fc.bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[2:] != (256, 256):
            image = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)
        x = image
        for index, layer in enumerate(self.layers):
            x = layer(x if index == 0 else F.leaky_relu(x, 0.2))
        x = F.leaky_relu(x, 0.2)
        # Below 256 the official encoder has five convs and ends at 8x8; pool to the 4x4 its fc layers expect.
        if x.shape[-1] != 4:
            x = F.adaptive_avg_pool2d(x, 4)
        x = x.flatten(1)
        return self.fc_mu(x), self.fc_var(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator returning every layer's output (the last one is the patch prediction).

    ``n_layers`` convs of kernel ``kernel_size``: the first (ndf, stride 2, no norm), then doubling widths up
    to 512, stride 2 except the last (stride 1); each followed by LeakyReLU 0.2, the later ones wrapped in
    spectral norm with affine-free instance norm (and no bias, which instance norm would cancel); then a conv to
    one channel, stride 1.

    Args:
        input_nc: channels of the input (label channels + image channels).
        ndf: base width.
        n_layers: convs before the prediction conv (at least 1).
        kernel_size: kernel of every conv; padding is ``ceil((kernel_size - 1) / 2)``.
        spectral: spectral norm on the normalised convs.
        init_gain: xavier-normal gain.

    Shape:
        x (B, input_nc, H, W) -> list of n_layers + 1 feature maps, the last (B, 1, h, w).
    """

    @records_init_args
    def __init__(
        self,
        input_nc: int = 8,
        ndf: int = 64,
        n_layers: int = 4,
        kernel_size: int = 4,
        spectral: bool = True,
        init_gain: float = 0.02,
    ):
        super().__init__()
        check_positive(input_nc=input_nc, ndf=ndf, n_layers=n_layers, kernel_size=kernel_size)
        pad = math.ceil((kernel_size - 1) / 2)  # official: 2 for kernel 4
        nf = ndf
        layers = [
            nn.Sequential(
                conv_layer(input_nc, nf, kernel_size, stride=2, padding=pad, gain=init_gain),
                nn.LeakyReLU(0.2),
            )
        ]
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            layers.append(
                nn.Sequential(
                    conv_layer(
                        nf_prev,
                        nf,
                        kernel_size,
                        stride=stride,
                        padding=pad,
                        bias=False,
                        spectral=spectral,
                        gain=init_gain,
                    ),
                    nn.InstanceNorm2d(nf, affine=False),
                    nn.LeakyReLU(0.2),
                )
            )
        layers.append(nn.Sequential(conv_layer(nf, 1, kernel_size, padding=pad, gain=init_gain)))
        self.model = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.model:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGAN discriminators; each next one sees the input average-pooled by 2 (k3 s2 p1).

    The input is the one-hot label map concatenated with the image along channels.

    Args:
        label_nc: label classes.
        output_nc: image channels.
        num_D: number of discriminators (official 2).
        ndf, n_layers, kernel_size, spectral, init_gain: passed to each :class:`NLayerDiscriminator`.

    Shape:
        x (B, label_nc + output_nc, H, W) -> list over discriminators of lists of feature maps.
    """

    @records_init_args
    def __init__(
        self,
        label_nc: int = 7,
        output_nc: int = 1,
        num_D: int = 2,
        ndf: int = 64,
        n_layers: int = 4,
        kernel_size: int = 4,
        spectral: bool = True,
        init_gain: float = 0.02,
    ):
        super().__init__()
        check_positive(label_nc=label_nc, output_nc=output_nc, num_D=num_D)
        self.input_nc = label_nc + output_nc
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(self.input_nc, ndf, n_layers, kernel_size, spectral, init_gain)
            for _ in range(num_D)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"expected input (B, {self.input_nc}, H, W), got {tuple(x.shape)}")
        outputs = []
        for index, discriminator in enumerate(self.discriminators):
            if index:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs
