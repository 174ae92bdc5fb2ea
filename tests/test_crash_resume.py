"""A training run that crashed after a checkpoint resumes to the same weights, and its last.ckpt ends at the
same final step as an uninterrupted run's (the SIGKILL harness: tests/test_reliability_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from synthseg.train import train
from tests.conftest import compose_train, write_dataset

ROOT = Path(__file__).resolve().parents[1]


class _CrashAtStep(pl.Callback):
    """Raises at the end of a training step, before that step's checkpoint is written (a crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [9, 13])  # resumed mid-epoch 1 (from step 8) and mid-epoch 2 (from 12)
def test_resume_ends_with_last_ckpt_at_the_final_step_like_an_uninterrupted_run(
    tmp_path: Path, crash_at: int
) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=50, size=16)  # 5 batches per epoch, 15 steps
    common = [
        "model=unet",
        f"data.root={data}",
        "model.net.base_width=4",
        "data.batch_size=8",
        "trainer.max_epochs=3",
        "test=false",
        "torch_threads=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ]
    train(compose_train(common, tmp_path / "uninterrupted"))
    crashed = compose_train(common, tmp_path / "crashed")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": f"{__name__}._CrashAtStep", "step": crash_at}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed)
    last = tmp_path / "crashed" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == crash_at - 1
    train(compose_train([*common, f"ckpt_path={last}"], tmp_path / "resumed"))

    final = [
        torch.load(tmp_path / run / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        for run in ("uninterrupted", "resumed")
    ]
    assert final[0]["global_step"] == final[1]["global_step"] == 15
    for key, value in final[0]["state_dict"].items():
        assert torch.equal(value, final[1]["state_dict"][key]), key
