"""A 2-D convolution whose double backward runs as convolutions (the critic's gradient penalty).

WGAN-GP differentiates the critic's input gradient with respect to its weights. PyTorch's own derivative of a
convolution's backward computes that weight term as a convolution with the batch as channels and whole
feature maps as kernels (input (C, N, H, W), kernel (C', N, H, W)), which oneDNN runs far below its rate for
ordinary convolutions: 7 % of PGAN's critic step at 256x256 on CPU (benchmarks/RESULTS.md). Here the backward
of :func:`conv2d` is written with operations that are themselves differentiable ordinary convolutions:

- input gradient: ``conv_transpose2d(grad, weight)``, whose own derivatives are a forward convolution (with
  respect to ``grad``) and a transposed convolution's weight gradient (with respect to ``weight``);
- weight gradient: :class:`_WeightGrad`, the backward-weights kernel, whose derivatives are a forward and a
  transposed convolution.

Same function, same gradients to float32 rounding (tests/test_pgan_fused.py compares it with ``F.conv2d``
to the second order). Inside :func:`no_weight_gradients` the backward skips the weight and bias gradients: a
custom autograd function cannot tell that ``torch.autograd.grad(scores, inputs)`` wants only the input
gradient, and the penalty's input gradient is exactly that case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

_skip_weight_gradients = 0  # a counter, not thread-local: CUDA runs backward passes on its own threads


@contextlib.contextmanager
def no_weight_gradients() -> Iterator[None]:
    """Backward passes of :func:`conv2d` started inside compute input gradients only (weights get none)."""
    global _skip_weight_gradients
    _skip_weight_gradients += 1
    try:
        yield
    finally:
        _skip_weight_gradients -= 1


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _output_padding(
    input_size: tuple[int, ...],
    grad: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int, int]:
    """The ``output_padding`` that makes ``conv_transpose2d(grad)`` as large as the convolution's input."""
    return tuple(  # type: ignore[return-value]
        input_size[i + 2] - ((grad.shape[i + 2] - 1) * stride[i] - 2 * padding[i] + weight.shape[i + 2])
        for i in range(2)
    )


class _WeightGrad(torch.autograd.Function):
    """(grad (N, O, h, w), x (N, I, H, W), weight) -> the gradient (O, I, kh, kw) of ``conv2d(x, weight)``
    with respect to ``weight`` (whose values are not read; it gets no gradient from here)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad: Tensor,
        x: Tensor,
        weight: Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> Tensor:
        ctx.save_for_backward(grad, x)
        ctx.conv = (stride, padding)  # type: ignore[attr-defined]
        mask = (False, True, False)
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride, padding, (1, 1), False, (0, 0), 1, mask
        )[1]

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_weight: Tensor):  # type: ignore[override]
        grad, x = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding = ctx.conv  # type: ignore[attr-defined]
        grad_grad = grad_x = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            grad_grad = F.conv2d(x, grad_weight, None, stride, padding)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            output_padding = _output_padding(x.shape, grad, grad_weight, stride, padding)
            grad_x = F.conv_transpose2d(grad, grad_weight, None, stride, padding, output_padding)
        return grad_grad, grad_x, None, None, None


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward is built from differentiable ordinary convolutions (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding)  # type: ignore[attr-defined]
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding = ctx.conv  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_x = grad_weight = grad_bias = None
        if needs[0]:
            output_padding = _output_padding(x.shape, grad, weight, stride, padding)
            grad_x = F.conv_transpose2d(grad, weight, None, stride, padding, output_padding)
        if not _skip_weight_gradients:
            if needs[1]:
                grad_weight = _WeightGrad.apply(grad, x, weight, stride, padding)
            if needs[2]:
                grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """``F.conv2d`` (no dilation, no groups) with a double backward made of ordinary convolutions.

    Args:
        x: (N, I, H, W) input.
        weight: (O, I, kh, kw) kernel.
        bias: (O,) or None.
        stride, padding: as ``F.conv2d``.

    Returns:
        (N, O, H', W'), equal to ``F.conv2d(x, weight, bias, stride, padding)``.
    """
    if not torch.is_grad_enabled() or not (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return F.conv2d(x, weight, bias, stride, padding)
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        # Cast as autocast would, then run without it: the backward sees tensors of one dtype.
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return _Conv2d.apply(
                x.to(dtype),
                weight.to(dtype),
                None if bias is None else bias.to(dtype),
                _pair(stride),
                _pair(padding),
            )
    return _Conv2d.apply(x, weight, bias, _pair(stride), _pair(padding))
