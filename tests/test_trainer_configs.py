"""Every trainer config composes with the real train config and builds a pl.Trainer; the SLURM launcher config."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.plugins import TorchSyncBatchNorm
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from synthseg.paths import config_dir

TRAINERS = sorted(p.stem for p in (config_dir() / "trainer").glob("*.yaml"))

# What each hardware config must say (values as composed, before any CPU override).
EXPECTED: dict[str, dict[str, object]] = {
    "default": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
    "cpu": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
    "gpu": {"accelerator": "gpu", "devices": 1},
    "rtx2080ti": {"accelerator": "gpu", "devices": 1, "precision": "16-mixed"},
    "v100x2": {
        "accelerator": "gpu",
        "devices": 2,
        "strategy": "ddp",
        "precision": "16-mixed",
        "sync_batchnorm": True,
    },
    "ddp": {"accelerator": "gpu", "strategy": "ddp", "sync_batchnorm": True},
    "ddp_sim": {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp_spawn",
        "precision": "32-true",
        # nn.SyncBatchNorm refuses CPU tensors.
        "sync_batchnorm": False,
    },
    "multinode": {"accelerator": "gpu", "strategy": "ddp", "sync_batchnorm": True},
}


def compose_raw(overrides: list[str]) -> DictConfig:
    """The composed train config exactly as a user gets it (no test shrinking)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_every_config_file_has_expectations() -> None:
    assert {"rtx2080ti", "v100x2", "ddp", "ddp_sim", "multinode"} <= set(TRAINERS)
    assert set(TRAINERS) == set(EXPECTED), "add the new trainer config to EXPECTED"


@pytest.mark.parametrize("name", TRAINERS)
def test_composes_with_train_config(name: str) -> None:
    cfg = compose_raw(["model=unet", f"trainer={name}"])
    trainer = cfg.trainer
    for key, value in EXPECTED[name].items():
        assert trainer[key] == value, (name, key)
    assert trainer._target_ == "pytorch_lightning.Trainer"
    # Our batch sampler shards global batches; Lightning's DistributedSampler must stay out of the way.
    assert trainer.use_distributed_sampler is False
    # Batch sizes are global: no trainer config touches them.
    assert cfg.data.batch_size == 8
    assert trainer.max_epochs == 150  # the U-Net's schedule survives the hardware choice


def _cpu_version(trainer_cfg: DictConfig) -> DictConfig:
    """The same trainer on CPU processes: what Lightning can build on a machine without GPUs."""
    cfg = OmegaConf.create(OmegaConf.to_container(trainer_cfg, resolve=False))
    with open_dict(cfg):
        if cfg.accelerator != "cpu":
            cfg.accelerator = "cpu"
            distributed = "ddp" in str(cfg.get("strategy", ""))
            cfg.devices = 2 if distributed else 1
            if str(cfg.precision).startswith("16"):
                cfg.precision = "bf16-mixed"  # fp16 autocast is refused on CPU; bf16 stands in
            cfg.pop("benchmark", None)  # Trainer sets the cuDNN flag globally: keep other tests clean
    return cfg


@pytest.mark.parametrize("name", TRAINERS)
def test_instantiates_a_trainer(name: str, tmp_path: Path) -> None:
    cfg = compose_raw(["model=unet", f"trainer={name}"])
    trainer_cfg = _cpu_version(cfg.trainer)
    with open_dict(trainer_cfg):
        trainer_cfg.default_root_dir = str(tmp_path)
    trainer = instantiate(trainer_cfg, logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(trainer, pl.Trainer)
    expected = EXPECTED[name]
    if "strategy" in expected:
        assert isinstance(trainer.strategy, DDPStrategy)
        assert trainer.num_devices == 2
        assert trainer.num_nodes == cfg.trainer.get("num_nodes", 1)
        spawn = trainer.strategy.launcher is not None and type(trainer.strategy.launcher).__name__
        assert (spawn == "_MultiProcessingLauncher") == (expected["strategy"] == "ddp_spawn")
        assert trainer.strategy._get_process_group_backend() == "gloo"  # CPU processes
    else:
        assert isinstance(trainer.strategy, SingleDeviceStrategy)
        assert trainer.num_devices == 1
    layer_sync = getattr(trainer.strategy, "_layer_sync", None)
    assert isinstance(layer_sync, TorchSyncBatchNorm) == bool(cfg.trainer.get("sync_batchnorm", False))


def test_multinode_counts_nodes() -> None:
    cfg = compose_raw(["trainer=multinode", "trainer.num_nodes=4", "trainer.devices=8"])
    assert cfg.trainer.num_nodes == 4 and cfg.trainer.devices == 8


def test_slurm_launcher_file_names_the_plugin_and_follows_the_trainer() -> None:
    raw = yaml.safe_load((config_dir() / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert raw["defaults"] == ["submitit_slurm", "_self_"]
    assert raw["tasks_per_node"] == "${trainer.devices}"  # one SLURM task per GPU, as Lightning expects
    assert "trainer.num_nodes" in raw["nodes"]
    # Not selected by default: the train config composes without the optional plugin.
    assert compose_raw([]).trainer.accelerator == "cpu"


def test_slurm_launcher_composes_when_the_plugin_is_installed() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=["hydra/launcher=slurm", "trainer=v100x2"],
                return_hydra_config=True,
            )
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 2 and launcher.gpus_per_node == 2 and launcher.nodes == 1
