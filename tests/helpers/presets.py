"""Toy-size override lists of the three models and the debug preset merge, for tests through the real config."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from synthseg.checkpoint import save_network
from synthseg.networks.unet import UNet
from synthseg.paths import config_dir

# The progressive-growing mask GAN at 16x16: every level, a few images each (model=pgan).
PGAN_TINY = [
    "model=pgan",
    "model.generator.resolution=16",
    "model.generator.latent_dim=16",
    "model.generator.fmap_base=64",
    "model.generator.fmap_max=16",
    "model.stable_kimg=0.016",
    "model.transition_kimg=0.016",
    "model.batch_sizes={4: 8, 8: 8, 16: 4}",
    "model.tick_kimg={4: 0.016, 8: 0.016, 16: 0.016}",
    "model.swd_images=12",
    "model.swd_batch_size=8",
    "model.grid_size=[2, 2]",
    "model.minibatch_repeats=1",
    "trainer.log_every_n_steps=1",
]

# SPADE at the debug preset's toy size, two batches of training and validation (model=spade).
SPADE_TINY = [
    "model=spade",
    "debug=tiny_spade",
    "model.num_val_images=3",
    "data.eval_batch_size=4",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=2",
    "trainer.deterministic=true",
]

# The U-Net at 16x16, width 4 (model=unet).
UNET_SMALL = ["model=unet", "model.net.base_width=4", "data.batch_size=8", "data.resolution=16"]


def shrink(cfg: DictConfig) -> None:
    """Apply the model's toy-size preset (conf/debug/tiny_<model>.yaml, one CPU thread) to a composed config.

    The same preset a user selects with ``'debug=[fast_dev_run,tiny_<model>]'``; merged here because the
    model is only known once the experiment is composed.
    """
    preset = OmegaConf.load(config_dir() / "debug" / f"tiny_{cfg.model_name}.yaml")
    with open_dict(cfg):
        cfg.merge_with(preset)


def compose_spade(root: Path, out: Path, *overrides: str) -> DictConfig:
    """``train`` with :data:`SPADE_TINY` on the dataset ``root``, writing into ``out`` (then ``overrides``)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*SPADE_TINY, f"data.root={root}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


def unet_snapshot(path: Path, *, resolution: int = 32, norm: str = "zscore", **meta) -> Path:
    """A tiny 7-class T1c U-Net snapshot (random weights, seed 0): SPADE's ``model.segmenter``."""
    torch.manual_seed(0)
    save_network(
        UNet(1, 7, base_width=2),
        path,
        meta={"image_norm": norm, "resolution": resolution, "sequences": ["t1c"], **meta},
    )
    return path
