"""The all-reduce batch norm: equal to single-process batch norm, in one process and across two (gloo, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from synthseg.networks.sync_norm import SyncBatchNorm2d

WORLD = 2
BATCH, CHANNELS, SIZE = 4, 3, 5


def full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen) * 3 + 1
    weight = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen)  # makes the gradient non-trivial
    return x, weight


def reference(steps: int = 2) -> dict[str, torch.Tensor]:
    x, weight = full_batch()
    x.requires_grad_(True)
    norm = nn.BatchNorm2d(CHANNELS, affine=False)
    for _ in range(steps):
        out = norm(x)
    (out * weight).sum().backward()
    norm.eval()
    return {
        "out": out.detach(),
        "grad": x.grad,
        "running_mean": norm.running_mean,
        "running_var": norm.running_var,
        "eval": norm(x).detach(),
    }


def _worker(rank: int, folder: str, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        x, weight = full_batch()
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        x = x[part].clone().requires_grad_(True)
        norm = SyncBatchNorm2d(CHANNELS)
        for _ in range(steps):
            out = norm(x)
        (out * weight[part]).sum().backward()
        norm.eval()
        result = {
            "out": out.detach(),
            "grad": x.grad,
            "running_mean": norm.running_mean,
            "running_var": norm.running_var,
            "eval": norm(x).detach(),
        }
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_single_process_equals_batchnorm():
    x, weight = full_batch()
    x.requires_grad_(True)
    norm = SyncBatchNorm2d(CHANNELS)
    for _ in range(2):
        out = norm(x)
    (out * weight).sum().backward()
    norm.eval()
    expected = reference()
    torch.testing.assert_close(out, expected["out"])
    torch.testing.assert_close(x.grad, expected["grad"])
    torch.testing.assert_close(norm.running_var, expected["running_var"])
    torch.testing.assert_close(norm(x), expected["eval"])


def test_state_dict_matches_affine_free_batchnorm():
    own = SyncBatchNorm2d(CHANNELS).state_dict()
    torch_bn = nn.BatchNorm2d(CHANNELS, affine=False).state_dict()
    assert set(own) == set(torch_bn)
    # Lightning's sync_batchnorm conversion must leave it alone (it would refuse CPU tensors).
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(SyncBatchNorm2d(CHANNELS)))
    assert isinstance(converted[0], SyncBatchNorm2d)


@pytest.mark.slow
def test_two_processes_equal_single_process_batchnorm(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    steps = 2
    mp.spawn(_worker, args=(str(tmp_path), steps), nprocs=WORLD, join=True)
    expected = reference(steps)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key in ("out", "grad", "eval"):
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), expected[key], atol=1e-5, rtol=1e-5)
    for part in parts:
        torch.testing.assert_close(part["running_mean"], expected["running_mean"])
        torch.testing.assert_close(part["running_var"], expected["running_var"])
