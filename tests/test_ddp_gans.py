"""PGAN and SPADE under DDP on 2 CPU processes (trainer=ddp_sim): runs complete, checkpoints load safely, and
PGAN's schedule (images shown, ticks, steps) is the same as in one process. The U-Net's are in test_ddp.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from synthseg.data.labels import net_to_labels
from synthseg.synth.generate_images import load_image_generator
from synthseg.synth.generate_masks import load_mask_generator
from synthseg.train import train
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import shrink

pytestmark = pytest.mark.usefixtures("single_thread")  # shrink() sets torch_threads=1; restored afterwards


def _shrunk(experiment: str, data: Path, tmp_path: Path, *, extra: list[str], ddp: bool = True):
    overrides = [
        f"experiment={experiment}",
        f"data.root={data}",
        *extra,
        *(["trainer=ddp_sim"] if ddp else []),
    ]
    cfg = compose_train(overrides, tmp_path)
    shrink(cfg)
    if ddp:
        with open_dict(cfg):
            cfg.trainer.devices = 2  # compose_train pins one device
    return cfg


@pytest.mark.slow
def test_pgan_schedule_is_the_same_on_one_or_two_processes(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    extra = ["model.stable_kimg=0.008", "model.transition_kimg=0.008", "model.total_kimg=0.048"]
    states = []
    for ddp in (False, True):
        run = tmp_path / ("ddp" if ddp else "single")
        train(_shrunk("pgan_demo", data, run, extra=extra, ddp=ddp))
        checkpoint = torch.load(
            run / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        states.append(checkpoint["pgan"])
    single, ddp = states
    # kimg counts images over all processes: the same images shown, ticks and phase on 1 or 2 processes.
    assert ddp["images_seen"] == single["images_seen"] >= 48
    assert ddp["tick"] == single["tick"] and ddp["last_phase"] == single["last_phase"]
    assert ddp["steps"] == single["steps"]  # global batches: the same number of optimiser steps
    # The DDP checkpoint gives back a working EMA generator.
    generator, meta = load_mask_generator(tmp_path / "ddp" / "run" / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        masks = net_to_labels(generator(torch.randn(2, generator.latent_dim), meta["resolution"]), 7)
    assert masks.shape[0] == 2 and int(masks.max()) <= 6


@pytest.mark.slow
def test_spade_trains_under_ddp_sim_and_its_checkpoint_loads(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    extra = ["trainer.max_epochs=1", "data.real=8", "trainer.limit_val_batches=1"]
    train(_shrunk("spade_demo", data, tmp_path, extra=extra))
    checkpoint = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert checkpoint["global_step"] > 0 and any(k.startswith("generator.") for k in checkpoint["state_dict"])
    generator, train_max = load_image_generator(tmp_path / "run" / "checkpoints" / "last.ckpt")
    label = torch.nn.functional.one_hot(torch.zeros(1, 32, 32, dtype=torch.long), 7).permute(0, 3, 1, 2)
    with torch.no_grad():
        image = generator(label.float())
    assert image.shape == (1, 1, 32, 32) and torch.isfinite(image).all() and train_max > 0
