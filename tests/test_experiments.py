"""Every experiment file composes with the real config and runs one step (fast_dev_run), shrunk for CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from synthseg.errors import InputError
from synthseg.paths import config_dir
from synthseg.train import train
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import shrink, unet_snapshot

pytestmark = pytest.mark.usefixtures("single_thread")  # shrink() sets torch_threads=1; restored afterwards

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("experiments")
    real = write_dataset(root / "prepared", num_slices=40, size=32)
    synthetic = write_dataset(
        root / "synthetic", num_slices=40, size=32, source="synthetic", seed=1, empty_every=0
    )
    return real, synthetic


@pytest.mark.parametrize("model", ["unet", "pgan", "spade"])
def test_tiny_presets_select_from_the_command_line(model: str, tmp_path: Path) -> None:
    cfg = compose_train(
        [f"model={model}", "data.root=unused", f"debug=[fast_dev_run,tiny_{model}]"], tmp_path
    )
    assert cfg.trainer.fast_dev_run is True and cfg.torch_threads == 1
    shrunk = compose_train([f"model={model}", "data.root=unused"], tmp_path)
    shrink(shrunk)
    assert OmegaConf.to_container(shrunk.model, resolve=True) == OmegaConf.to_container(
        cfg.model, resolve=True
    )
    assert shrunk.data.resolution == cfg.data.resolution < 64


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
    if cfg.model.get("lambda_seg", 0) > 0:  # the segmenter SPADE needs its real-data U-Net, said in one line
        with pytest.raises(InputError, match="needs model.segmenter"):
            train(cfg)
        cfg.model.segmenter = str(unet_snapshot(tmp_path / "unet.pt", resolution=cfg.data.resolution))
    train(cfg)
