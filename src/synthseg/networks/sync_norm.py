"""Parameter-free batch norm whose statistics are synchronised across processes with ``all_reduce``.

PyTorch's ``nn.SyncBatchNorm`` only runs on CUDA tensors, so DDP on CPU processes (gloo) cannot use it. The
normalisation inside SPADE has no affine parameters, so synchronising it needs only the per-channel sums of
``x`` and ``x**2`` and the element count: three small all-reduces that work on gloo and NCCL alike.

This module deliberately does not derive from ``nn.modules.batchnorm._BatchNorm``, so that Lightning's
``sync_batchnorm=True`` (``nn.SyncBatchNorm.convert_sync_batchnorm``) leaves it alone; its buffers carry the
same names as ``nn.BatchNorm2d``'s, so state dicts are interchangeable with an affine-free ``BatchNorm2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum a tensor over all processes; the gradient is summed the same way (each process's loss depends on
    every process's contribution)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _distributed_world(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class SyncBatchNorm2d(nn.Module):
    """Affine-free 2-D batch norm, synchronised across processes while training under ``torch.distributed``.

    Training: normalise with the batch mean and (biased) variance per channel over every process's batch and
    update the running statistics with the unbiased variance (momentum 0.1), as ``nn.BatchNorm2d`` does.
    Evaluation: normalise with the running statistics. Without an initialised process group (or with one
    process) it is exactly ``nn.BatchNorm2d(num_features, affine=False)``.

    Args:
        num_features: channels C.
        eps: added to the variance.
        momentum: running-statistics update factor.
        process_group: group to synchronise over (default: the whole world).

    Shape:
        input and output (B, C, H, W).
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, process_group: Any = None
    ):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.process_group = process_group
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine=False"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input (B, {self.num_features}, H, W), got {tuple(x.shape)}")
        world = _distributed_world(self.process_group)
        if not self.training or world == 1:
            return nn.functional.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                training=self.training,
                momentum=self.momentum,
                eps=self.eps,
            )
        # Statistics in float32 even under autocast: sums of squares overflow or lose precision in half.
        xf = x.float()
        count = torch.tensor([xf.numel() / self.num_features], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        stats = _AllReduceSum.apply(stats, self.process_group)
        total = stats[-1]
        mean = stats[: self.num_features] / total
        var = (stats[self.num_features : 2 * self.num_features] / total - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            n = float(total.item())
            unbiased = var * (n / max(n - 1.0, 1.0))
            self.running_mean.mul_(1.0 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1.0 - self.momentum).add_(self.momentum * unbiased.detach())
            self.num_batches_tracked.add_(1)
        out = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return out.to(x.dtype)
