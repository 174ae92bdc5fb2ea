"""Every experiment file composes with the real config and runs one step (fast_dev_run), shrunk for CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from synthseg.paths import config_dir
from synthseg.train import train
from tests.conftest import compose_train, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")  # shrink() sets torch_threads=1; restored afterwards

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))

# Per model: overrides that keep the architecture but make it tiny (the experiment's own choices stay).
SHRINK = {
    "unet": {"model.net.base_width": 2, "data.resolution": 16, "data.batch_size": 4},
    "pgan": {
        "model.generator.resolution": 16,
        "model.generator.latent_dim": 16,
        "model.generator.fmap_base": 64,
        "model.generator.fmap_max": 16,
        "data.resolution": 16,
        "model.swd_images": 8,
        "model.batch_sizes": {4: 4, 8: 4, 16: 4},
        "model.tick_kimg": {4: 0.004, 8: 0.004, 16: 0.004},
    },
    "spade": {
        "model.generator.ngf": 2,
        "model.generator.image_size": 32,
        "model.generator.hidden_channels": 4,
        "model.discriminator.ndf": 4,
        "data.resolution": 32,
        "data.batch_size": 2,
        "model.num_val_images": 2,
    },
}


def shrink(cfg: DictConfig) -> None:
    """Apply the model's SHRINK overrides to a composed config, with one CPU thread."""
    with open_dict(cfg):
        for key, value in SHRINK[cfg.model_name].items():
            node, _, leaf = key.rpartition(".")
            target = cfg
            for part in node.split("."):
                target = target[part]
            target[leaf] = value
        cfg.torch_threads = 1


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("experiments")
    real = write_dataset(root / "prepared", num_slices=40, size=32)
    synthetic = write_dataset(
        root / "synthetic", num_slices=40, size=32, source="synthetic", seed=1, empty_every=0
    )
    return real, synthetic


def test_there_are_experiments() -> None:
    assert {"demo", "pgan_demo", "pgan_full", "spade_full", "table1"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_one_step(experiment: str, datasets: tuple[Path, Path], tmp_path: Path) -> None:
    real, synthetic = datasets
    cfg = compose_train(
        [
            f"experiment={experiment}",
            f"data.root={real}",
            "debug=fast_dev_run",
            f"++paths.synthetic_full={synthetic}",
            f"++paths.synthetic_reduced={synthetic}",
        ],
        tmp_path,
    )
    shrink(cfg)
    train(cfg)
