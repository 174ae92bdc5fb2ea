"""The Table 1 sweep configs: every mix's counts, the sweep's parameters, counts resolved on a tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from synthseg.data.datamodule import resolve_count
from synthseg.paths import config_dir
from synthseg.report.runs import MIXES
from tests.conftest import compose_train, run_report, write_dataset

BRATS_TRAIN = 26040  # the paper's real training split
BRATS_REDUCED = 5208  # its first 20 %
# Table 1's (real, synthetic) counts, typed in from the paper; the augmentation arms use no synthetic data.
PAPER_COUNTS = {
    "full_real": (26040, 0),
    "full_syn8960": (26040, 8960),
    "full_syn23960": (26040, 23960),
    "syn_only": (0, 26040),
    "reduced_real": (5208, 0),
    "reduced_syn4792": (5208, 4792),
    "reduced_syn20832": (5208, 20832),
    "full_augment": (26040, 0),
    "reduced_augment": (5208, 0),
}
MIX_DIR = config_dir() / "mix"


def _mix(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(MIX_DIR / f"{name}.yaml"), resolve=False)


def _brats_count(value: float | int | None, available: int, what: str) -> int:
    """A count setting on BraTS, resolved by the DataModule's own rule (fractions of the 26,040 slices)."""
    return resolve_count(value, BRATS_TRAIN, available, what)


def test_mix_files_are_the_tables_rows() -> None:
    assert {p.stem for p in MIX_DIR.glob("*.yaml")} == set(PAPER_COUNTS)
    assert {mix.name for mix in MIXES} == set(PAPER_COUNTS)


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_every_mix_gives_the_papers_counts_on_brats(name: str) -> None:
    mix = _mix(name)
    data = mix["data"]
    assert mix["mix_name"] == name
    real = _brats_count(data["real"], BRATS_REDUCED if data["reduced"] else BRATS_TRAIN, "data.real")
    # The synthetic pools hold as many pairs as the real training split (the paper's largest mix).
    synthetic = (
        _brats_count(data["synthetic"]["count"], BRATS_TRAIN, "data.synthetic.count")
        if data["synthetic"]
        else 0
    )
    assert (real, synthetic) == PAPER_COUNTS[name]
    assert data["augment"] is name.endswith("_augment")
    if data["synthetic"]:
        # Each half takes its synthetic pairs from the GANs trained on that half's real data.
        half = "reduced" if data["reduced"] else "full"
        assert data["synthetic"]["root"] == f"${{paths.synthetic_{half}}}"


def _compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_the_sweep_covers_every_class_count_and_mix() -> None:
    cfg = _compose_with_hydra(["experiment=table1"])
    params = cfg.hydra.sweeper.params
    assert [int(c) for c in params["data.classes"].split(",")] == [7, 4, 2]
    assert params["mix"].split(",") == [mix.name for mix in MIXES if mix.paper] + [
        mix.name for mix in MIXES if not mix.paper
    ]
    assert cfg.task_name == "table1" and cfg.mix_name == "full_real"
    # The paper's U-Net settings.
    assert cfg.model.net.base_width == 64 and cfg.trainer.max_epochs == 150 and cfg.data.batch_size == 8
    assert cfg.model.optimizer.lr == 1e-4 and cfg.data.resolution is None
    assert cfg.data.stats_from == "train"  # the paper: statistics over real + synthetic training data
    demo = _compose_with_hydra(["experiment=table1_demo", "mix=reduced_syn20832"])
    assert demo.task_name == "table1_demo" and demo.data.resolution == 64 and demo.model.net.base_width == 8
    assert demo.hydra.sweeper.params == params and demo.mix_name == "reduced_syn20832"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("table1")
    return {
        # 40 slices: 32 training rows, the first int(0.2 * 32) = 6 of them reduced.
        "real": write_dataset(root / "prepared", num_slices=40, size=16),
        "full": write_dataset(root / "syn_full", num_slices=32, size=16, source="synthetic", seed=1),
        "reduced": write_dataset(root / "syn_reduced", num_slices=26, size=16, source="synthetic", seed=2),
    }


# On the tiny dataset (32 training slices): fractions of 32, rounded; reduced = 6 slices.
TINY_COUNTS = {
    "full_real": (32, 0),
    "full_syn8960": (32, 11),  # 8960 / 26040 * 32 = 11.01
    "full_syn23960": (32, 29),  # 29.44
    "syn_only": (0, 32),
    "reduced_real": (6, 0),
    "reduced_syn4792": (6, 6),  # 5.89
    "reduced_syn20832": (6, 26),  # 25.6
    "full_augment": (32, 0),
    "reduced_augment": (6, 0),
}


@pytest.mark.parametrize("name", sorted(TINY_COUNTS))
def test_counts_resolve_on_a_tiny_dataset(name: str, datasets: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "experiment=table1",
            f"mix={name}",
            f"data.root={datasets['real']}",
            f"paths.synthetic_full={datasets['full']}",
            f"paths.synthetic_reduced={datasets['reduced']}",
        ],
        tmp_path,
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    stats = datamodule.stats
    assert (stats["num_real"], stats["num_synthetic"]) == TINY_COUNTS[name]
    assert datamodule.augment is name.endswith("_augment")
    if cfg.data.synthetic:
        half = "reduced" if name.startswith("reduced") else "full"
        assert cfg.data.synthetic.root == str(datasets[half])
    # Validation and test sets are the same for every mix.
    assert (stats["num_val"], stats["num_test"]) == (4, 4)


@pytest.mark.slow
def test_a_table1_run_carries_its_mix_into_results(datasets: dict[str, Path], tmp_path: Path) -> None:
    from synthseg.train import train

    cfg = compose_train(
        [
            "experiment=table1_demo",
            "mix=full_syn8960",
            "data.classes=2",
            f"data.root={datasets['real']}",
            f"paths.synthetic_full={datasets['full']}",
            "data.resolution=null",
            "model.net.base_width=2",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["mix_name"] == "full_syn8960"
    assert results["data_stats"]["num_synthetic"] == 11
    run_report(
        {
            "runs": str(tmp_path / "run"),
            "output": str(tmp_path / "report"),
            "bootstrap": {"samples": 50},
            "figures": {"segmentation_slices": 2},
        }
    )
    table = (tmp_path / "report" / "table1.md").read_text()
    assert "| full | full_syn8960 | (26,040, 8,960) | (32, 11) | 1 |" in table
    assert (tmp_path / "report" / "fig10_segmentations_2class.png").is_file()
