"""Distributed data parallel on 2 CPU processes (gloo): metrics gathered across processes, and train() under
``trainer=ddp_sim``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import open_dict
from torchmetrics.segmentation import DiceScore

import synthseg.train as train_module
from synthseg.losses.dice import WeightedDiceError
from tests.conftest import compose_train, write_dataset

WORLD = 2
NUM_CLASSES = 7
WEIGHTS = [0.05, 3.0, 1.0, 2.0, 0.2, 0.3, 0.6]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: 5 batches (an odd count, so the ranks get unequal shares)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for size in (3, 2, 4, 1, 3):
        logits = torch.randn(size, NUM_CLASSES, 8, 8, generator=gen)
        labels = torch.randint(0, NUM_CLASSES, (size, 8, 8), generator=gen)
        out.append((torch.softmax(logits, 1), labels))
    return out


def _update(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    dice_error = WeightedDiceError(WEIGHTS)
    class_dice = DiceScore(
        num_classes=NUM_CLASSES, average="none", aggregation_level="global", input_format="index"
    )
    for probs, labels in batches:
        target = torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
        dice_error.update(probs, target)
        class_dice.update(probs.argmax(1), labels)
    return {"dice_error": dice_error.compute(), "class_dice": class_dice.compute()}


def _metric_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        # Each rank sees every other batch: rank 0 gets 3 of them, rank 1 gets 2.
        values = _update(_batches()[rank::WORLD])
        torch.save(values, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_metrics_gathered_over_two_processes_equal_one_process(tmp_path: Path) -> None:
    # Forked workers skip re-importing torch (seconds each); they run single-threaded, so the parent's
    # OpenMP pool is never touched after the fork.
    mp.start_processes(
        _metric_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    single = _update(_batches())
    half = _update(_batches()[0::WORLD])
    assert not torch.allclose(half["dice_error"], single["dice_error"])  # the halves really differ
    for rank in range(WORLD):
        gathered = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(gathered["dice_error"], single["dice_error"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gathered["class_dice"], single["class_dice"])


@pytest.mark.slow
def test_unet_trains_under_ddp_sim_and_matches_single_process_test(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=40, size=16)
    common = ["model=unet", "model.net.base_width=4", f"data.root={data}", "data.batch_size=8"]
    cfg = compose_train([*common, "trainer=ddp_sim", "trainer.max_epochs=1"], tmp_path / "ddp")
    with open_dict(cfg):
        # compose_train pins one CPU device; ddp_sim is two CPU processes.
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = WORLD
    assert cfg.trainer.strategy == "ddp_spawn" and cfg.trainer.sync_batchnorm is False

    metrics = train_module.train(cfg)

    # results.json is written by rank 0 inside the spawned workers, where the data statistics and the
    # per-subject test statistics live (the main process only gets the metrics back).
    assert len(list(tmp_path.rglob("results.json"))) == 1
    results = json.loads((tmp_path / "ddp" / "run" / "results.json").read_text())
    assert results["config"]["trainer"]["devices"] == WORLD
    assert results["data_stats"]["num_train"] == 32 and results["per_case"]
    assert results["metrics"]["test/dice_error"] == pytest.approx(metrics["test/dice_error"])
    assert "train/loss_epoch" in results["metrics"]  # fit's metrics carried into the test process
    assert 0.0 < metrics["test/dice_error"] < 1.0

    best = Path(results["best_checkpoint"])
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4  # 32 training slices / global batch 8: batch sizes are global
    assert "state_dict" in checkpoint and "BraTSDataModule" in checkpoint

    # The same checkpoint tested in one process gives the same test metrics.
    single = compose_train([*common, "train=false", f"ckpt_path={best}"], tmp_path / "single")
    reference = train_module.train(single)
    test_keys = sorted(k for k in reference if k.startswith("test/"))
    assert {"test/dice_error", "test/dice_error_fixed", "test/dice_WT"} <= set(test_keys)
    for key in test_keys:
        assert metrics[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key
