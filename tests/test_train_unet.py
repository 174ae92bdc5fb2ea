"""The real train() on the real composed config (shrunk), for the U-Net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from synthseg.train import train
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import UNET_SMALL


def test_model_config_settings_survive_composition(tmp_path: Path) -> None:
    cfg = compose_train(["model=unet"], tmp_path)
    # The U-Net keeps the weights with the lowest validation loss (set by conf/model/unet.yaml).
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert cfg.trainer.max_epochs == 150 and cfg.data.batch_size == 8


@pytest.mark.slow
def test_train_and_test_write_results(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train([*UNET_SMALL, f"data.root={tiny_dataset}", "trainer.max_epochs=2"], tmp_path)
    before = OmegaConf.to_container(cfg)  # interpolations kept as written
    metrics = train(cfg)
    assert OmegaConf.to_container(cfg) == before  # train() edits nothing of the config it was given
    assert (
        cfg.model.net.in_channels == 1 and before["model"]["net"]["in_channels"] == "${len:${data.sequences}}"
    )
    assert 0.0 < metrics["test/dice_error"] < 1.0
    assert {"train/loss_epoch", "val/loss", "test/dice_error_fixed", "test/dice_WT", "test/dice_ET"} <= set(
        metrics
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["test/dice_error"] == pytest.approx(metrics["test/dice_error"])
    assert results["config"]["data"]["classes"] == 7
    assert len(results["class_weights"]) == 7
    # Per-subject statistics of the 2 test subjects, for bootstrap intervals in the report.
    assert set(results["per_case"]) == {"Brats18_T_7_1"}  # the fixture's test rows 36..39 are one subject
    best = Path(results["best_checkpoint"])
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)  # only tensors and primitives
    assert {k for k in checkpoint["state_dict"] if not k.startswith("net.")} == {
        "class_weights",
        "real_class_weights",
    }
    assert "state_dict" in checkpoint and checkpoint["hyper_parameters"] == {
        "num_image_rows": 4,
        "channels_last": False,
        "compile": False,
        "eval_reduction": "batch_mean",
        "eval_batch_size": 32,
        "ce_weight": 0.0,
        "hd95_empty": "brats",
        "ce_class_weights": "dice",
    }
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("classes", [4, 2])
def test_reduced_class_problems(tiny_dataset: Path, tmp_path: Path, classes: int) -> None:
    cfg = compose_train(
        [*UNET_SMALL, f"data.root={tiny_dataset}", f"data.classes={classes}", "debug=fast_dev_run"], tmp_path
    )
    with open_dict(cfg):
        cfg.test = False
    train(cfg)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_from_mid_epoch_checkpoint_continues_exactly(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=50, size=16)  # 40 training slices: 5 batches/epoch
    common = [
        *UNET_SMALL,
        "data.resolution=null",
        f"data.root={data}",
        "trainer.max_epochs=2",
        "test=false",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "callbacks.model_checkpoint.save_top_k=-1",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.filename='step_{step}'",
    ]
    full = compose_train(common, tmp_path / "full")
    train(full)
    mid = tmp_path / "full" / "run" / "checkpoints" / "step_3.ckpt"
    assert torch.load(mid, weights_only=True)["BraTSDataModule"]["position"] == 24  # 3 batches of 8
    resumed = compose_train([*common, f"ckpt_path={mid}"], tmp_path / "resumed")
    train(resumed)
    a = _weights(tmp_path / "full" / "run" / "checkpoints" / "last.ckpt")
    b = _weights(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
