"""SPADE under DDP on 2 CPU processes (trainer=ddp_sim): the run completes and its checkpoint loads safely.

(The U-Net's DDP tests are in test_ddp.py. PGAN under ddp_spawn fails in the spawned workers while they
unpickle the shared tensors — "unable to resize file" — and has no DDP test yet.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from synthseg.train import train
from tests.conftest import compose_train, write_dataset
from tests.test_experiments import shrink


def _shrunk(experiment: str, data: Path, tmp_path: Path, *, extra: list[str]):
    cfg = compose_train(
        [f"experiment={experiment}", f"data.root={data}", "trainer=ddp_sim", *extra], tmp_path
    )
    shrink(cfg)
    with open_dict(cfg):
        cfg.trainer.devices = 2  # compose_train pins one device
    return cfg


@pytest.mark.slow
def test_spade_trains_under_ddp_sim_and_its_checkpoint_loads(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    threads = torch.get_num_threads()
    try:
        train(
            _shrunk(
                "spade_demo",
                data,
                tmp_path,
                extra=["trainer.max_epochs=1", "data.real=8", "trainer.limit_val_batches=1"],
            )
        )
    finally:
        torch.set_num_threads(threads)
    checkpoint = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert checkpoint["global_step"] > 0 and any(k.startswith("generator.") for k in checkpoint["state_dict"])
