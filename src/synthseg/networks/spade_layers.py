"""The layers of SPADE (Park et al. 2019): spectral norm in float32, the SPADE layer, the residual block.

Kept apart from the networks that assemble them (:mod:`synthseg.networks.spade`). Two things here make the
faithful generator faster without changing its function, parameters or state-dict keys: a block's SPADE
layers read the label map resized once and run their shared convs as one conv, and each layer's gamma and
beta convs run as one conv (weights stacked at call time); ``norm_0`` and ``norm_s`` of a block share one
parameter-free normalisation of their common input.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The hook-based spectral norm (as the official code uses): unlike torch.nn.utils.parametrizations, modules
# that carry it can be pickled, which DDP with spawned processes needs.
from torch.nn.utils import spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from synthseg.networks.sync_norm import SyncBatchNorm2d

PARAM_FREE_NORMS = ("batch", "instance")


class Float32SpectralNorm(SpectralNorm):
    """torch's spectral-norm hook with the power iteration and sigma in float32, also under autocast.

    Under fp16 autocast on CUDA ``torch.mv`` runs in half precision, so sigma (and with it every weight)
    would carry about three significant digits and the power-iteration vectors would drift. The weights
    stay float32 parameters; only the conv that uses the normalised weight runs in reduced precision.

    On a :class:`SpectralConv2d` whose output has fewer elements than its weight (the generator's 1024-channel
    convs at 8x8 to 32x32), the hook leaves the division to the conv's output: ``conv(x, W / sigma) + b ==
    conv(x, W) / sigma + b``, with the division and its gradient on the smaller tensor. Same power iteration,
    same sigma, same function to float32 rounding.
    """

    def sigma(self, module: nn.Module, do_power_iteration: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(the unnormalised weight, sigma = u . W v), after one power-iteration step when asked (as torch's
        ``compute_weight``, whose vectors are updated in place and cloned before use)."""
        weight = getattr(module, self.name + "_orig")
        device_type = weight.device.type
        has_autocast = torch.amp.is_autocast_available(device_type)  # not on the meta device
        with torch.autocast(device_type, enabled=False) if has_autocast else contextlib.nullcontext():
            u = getattr(module, self.name + "_u")
            v = getattr(module, self.name + "_v")
            matrix = self.reshape_weight_to_matrix(weight)
            if do_power_iteration:
                with torch.no_grad():
                    for _ in range(self.n_power_iterations):
                        v = F.normalize(torch.mv(matrix.t(), u), dim=0, eps=self.eps, out=v)
                        u = F.normalize(torch.mv(matrix, v), dim=0, eps=self.eps, out=u)
                    if self.n_power_iterations > 0:  # later forwards update them in place
                        u = u.clone(memory_format=torch.contiguous_format)
                        v = v.clone(memory_format=torch.contiguous_format)
            return weight, torch.dot(u, torch.mv(matrix, v))

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        weight, sigma = self.sigma(module, do_power_iteration)
        return weight / sigma

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        if (
            isinstance(module, SpectralConv2d)
            and module.output_elements(inputs[0]) < module.weight_orig.numel()
        ):
            weight, sigma = self.sigma(module, do_power_iteration=module.training)
            setattr(
                module, self.name, weight.view_as(weight)
            )  # a view: setting the Parameter would register it
            module.weight_sigma = sigma
            return
        if isinstance(module, SpectralConv2d):
            module.weight_sigma = None
        setattr(module, self.name, self.compute_weight(module, do_power_iteration=module.training))


class SpectralConv2d(nn.Conv2d):
    """``nn.Conv2d`` that divides its output by ``weight_sigma`` when the spectral-norm hook sets it (then
    ``weight`` holds the unnormalised weight; see :class:`Float32SpectralNorm`). Without spectral norm, or
    with ``weight_sigma`` None, it is ``nn.Conv2d``."""

    weight_sigma: torch.Tensor | None = None

    def output_elements(self, x: torch.Tensor) -> int:
        """Elements of the output for input ``x`` (N, C, H, W)."""
        size = [
            (x.shape[i + 2] + 2 * self.padding[i] - self.kernel_size[i]) // self.stride[i] + 1  # type: ignore[operator]
            for i in range(2)
        ]
        return x.shape[0] * self.out_channels * size[0] * size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.weight_sigma
        if sigma is None:
            return super().forward(x)
        out = self._conv_forward(x, self.weight, None) / sigma
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def spectral_norm_float32(layer: nn.Module) -> nn.Module:
    """``torch.nn.utils.spectral_norm`` (same state-dict keys) whose hook computes in float32."""
    layer = spectral_norm(layer)
    for hook in layer._forward_pre_hooks.values():
        if type(hook) is SpectralNorm:
            # torch's SpectralNorm.apply builds its own class; the subclass changes how the weight is made.
            hook.__class__ = Float32SpectralNorm
    return layer


def _init_conv(layer: nn.Module, gain: float) -> nn.Module:
    nn.init.xavier_normal_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv_layer(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    spectral: bool = False,
    gain: float = 0.02,
) -> nn.Module:
    """A conv initialised before spectral norm wraps it, so the power iteration starts from the final weights."""
    conv = SpectralConv2d if spectral else nn.Conv2d
    layer = _init_conv(conv(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias), gain)
    return spectral_norm_float32(layer) if spectral else layer


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``norm(x) * (1 + gamma(label)) + beta(label)``.

    The label map is resized to the activation with nearest interpolation, goes through a shared conv to
    ``hidden_channels`` + ReLU, then one conv each to gamma and beta. Where the activations outweigh the
    kernels, the gamma and beta convs run as one conv with their weights stacked at call time (same
    parameters and state-dict keys, same function).

    Args:
        norm_nc: channels of the activation to normalise.
        label_nc: channels of the (one-hot) label map.
        hidden_channels: width of the shared conv (official 128).
        kernel_size: kernel of the three convs (odd).
        param_free_norm: ``"batch"`` (affine-free batch norm, synchronised across processes) or
            ``"instance"``.
        init_gain: xavier-normal gain of the convs.

    Shape:
        x (B, norm_nc, H, W), label (B, label_nc, h, w) -> (B, norm_nc, H, W).
    """

    def __init__(
        self,
        norm_nc: int,
        label_nc: int,
        hidden_channels: int = 128,
        kernel_size: int = 3,
        param_free_norm: str = "batch",
        init_gain: float = 0.02,
    ):
        super().__init__()
        check_positive(norm_nc=norm_nc, label_nc=label_nc, hidden_channels=hidden_channels)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if param_free_norm == "batch":
            self.param_free_norm: nn.Module = SyncBatchNorm2d(norm_nc)
        elif param_free_norm == "instance":
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        else:
            raise ValueError(f"param_free_norm must be one of {PARAM_FREE_NORMS}, got {param_free_norm!r}")
        self.padding = kernel_size // 2
        self.mlp_shared = nn.Sequential(
            conv_layer(label_nc, hidden_channels, kernel_size, padding=self.padding, gain=init_gain),
            nn.ReLU(),
        )
        self.mlp_gamma = conv_layer(
            hidden_channels, norm_nc, kernel_size, padding=self.padding, gain=init_gain
        )
        self.mlp_beta = conv_layer(
            hidden_channels, norm_nc, kernel_size, padding=self.padding, gain=init_gain
        )

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = resize_label(label, x.shape[2:])
        return self.modulate(self.param_free_norm(x), self.mlp_shared(label))

    def modulate(self, normalized: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``normalized * (1 + gamma) + beta`` from the shared conv's output ``hidden`` (B, hidden, H, W)."""
        batch, _, height, width = hidden.shape
        # Stacking copies both weights (and splits their gradient) once per call, saving one pass over hidden:
        # worth it where the activations outweigh the kernels (the 128-channel layers at 128 and 256 px), not
        # for the 1024-channel ones at 8-32 px.
        if batch * height * width >= 18 * self.mlp_gamma.out_channels:
            gamma, beta = _conv_stacked(hidden, (self.mlp_gamma, self.mlp_beta), self.padding)
        else:
            gamma, beta = self.mlp_gamma(hidden), self.mlp_beta(hidden)
        return normalized * (1 + gamma) + beta


def resize_label(label: torch.Tensor, size: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The label map at ``size`` by nearest interpolation (as it is when it already has that size)."""
    if tuple(label.shape[2:]) == tuple(size):
        return label
    return F.interpolate(label, size=size, mode="nearest")


def _conv_stacked(x: torch.Tensor, convs: tuple[nn.Module, ...], padding: int) -> tuple[torch.Tensor, ...]:
    """Convs of the same input and kernel as one conv with their weights stacked (the same function).

    One conv writes the outputs of all of them, reading (and in the backward, writing the gradient of) ``x``
    once instead of once per conv. Plain ``nn.Conv2d`` layers with stride 1, each with a bias.
    """
    weight = torch.cat([conv.weight for conv in convs])
    bias = torch.cat([conv.bias for conv in convs])
    out = F.conv2d(x, weight, bias, padding=padding)
    return out.split([conv.weight.shape[0] for conv in convs], dim=1)


def _same_statistics(a: nn.Module, b: nn.Module) -> bool:
    """Whether two parameter-free norms compute the same function on any input (so one can serve both)."""
    if type(a) is not type(b) or a.training != b.training:
        return False
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    if buffers_a.keys() != buffers_b.keys():
        return False
    settings = ("eps", "momentum", "track_running_stats", "process_group")
    if any(getattr(a, name, None) != getattr(b, name, None) for name in settings):
        return False
    # Meta tensors (shape checks) have no values to compare.
    return all(v.is_meta or torch.equal(v, buffers_b[k]) for k, v in buffers_a.items())


def _forget_agreement(module: nn.Module, incompatible_keys: Any) -> None:
    module._norms_agree = None


class SPADEResnetBlock(nn.Module):
    """Residual block with SPADE: two (SPADE -> LeakyReLU 0.2 -> conv 3x3) steps plus a shortcut.

    The middle width is ``min(fin, fout)``; when ``fin != fout`` the shortcut is its own SPADE followed by a
    1x1 conv without bias. Spectral norm wraps the block convs (not the SPADE convs).

    The block's SPADE layers all read the label map at the block's resolution: it is resized once, and their
    shared convs run as one conv with stacked weights. ``norm_0`` and ``norm_s`` normalise the same input, so
    their parameter-free norm runs once while their running statistics agree (always, unless set apart by
    hand), and both sets are updated as before. The same function as three separate :class:`SPADE` layers.

    Args:
        fin: input channels.
        fout: output channels.
        label_nc: label-map channels.
        spectral: spectral norm on conv_0, conv_1, conv_s.
        hidden_channels, param_free_norm, init_gain: passed to each :class:`SPADE`.

    Shape:
        x (B, fin, H, W), label (B, label_nc, h, w) -> (B, fout, H, W).
    """

    def __init__(
        self,
        fin: int,
        fout: int,
        label_nc: int,
        spectral: bool = True,
        hidden_channels: int = 128,
        param_free_norm: str = "batch",
        init_gain: float = 0.02,
    ):
        super().__init__()
        check_positive(fin=fin, fout=fout, label_nc=label_nc)
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        conv = {"spectral": spectral, "gain": init_gain}
        spade = {
            "hidden_channels": hidden_channels,
            "param_free_norm": param_free_norm,
            "init_gain": init_gain,
        }
        self.conv_0 = conv_layer(fin, fmiddle, 3, padding=1, **conv)
        self.conv_1 = conv_layer(fmiddle, fout, 3, padding=1, **conv)
        self.norm_0 = SPADE(fin, label_nc, **spade)
        self.norm_1 = SPADE(fmiddle, label_nc, **spade)
        if self.learned_shortcut:
            self.conv_s = conv_layer(fin, fout, 1, bias=False, **conv)
            self.norm_s = SPADE(fin, label_nc, **spade)
        # Whether norm_0's and norm_s's statistics agree: checked once (a GPU sync), then kept so by the shared
        # update; checked again after a state dict is loaded.
        self._norms_agree: bool | None = None
        self.register_load_state_dict_post_hook(_forget_agreement)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        norms = (
            (self.norm_0, self.norm_1, self.norm_s) if self.learned_shortcut else (self.norm_0, self.norm_1)
        )
        label = resize_label(label, x.shape[2:])
        shared = _conv_stacked(label, tuple(norm.mlp_shared[0] for norm in norms), self.norm_0.padding)
        hidden = [F.relu(h) for h in shared]
        norm_0 = self.norm_0.param_free_norm
        share = False
        if self.learned_shortcut:
            if self._norms_agree is None:
                self._norms_agree = _same_statistics(norm_0, self.norm_s.param_free_norm)
            share = self._norms_agree and norm_0.training == self.norm_s.param_free_norm.training
        normalized = norm_0(x)
        if self.learned_shortcut:
            norm_s = self.norm_s.param_free_norm
            if share:
                normalized_s = normalized
                with torch.no_grad():  # the update norm_s would have made from the same batch
                    for name, buffer in norm_0.named_buffers():
                        norm_s.get_buffer(name).copy_(buffer)
            else:
                normalized_s = norm_s(x)
                self._norms_agree = None
            shortcut = self.conv_s(self.norm_s.modulate(normalized_s, hidden[2]))
        else:
            shortcut = x
        dx = self.conv_0(F.leaky_relu(self.norm_0.modulate(normalized, hidden[0]), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1.modulate(self.norm_1.param_free_norm(dx), hidden[1]), 0.2))
        return shortcut + dx
