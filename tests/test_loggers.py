"""The loggers of conf/logger/: CSV (always there) and TensorBoard + CSV through the real train(), MLflow and
W&B composing, and each refusing in one line when its package is missing."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from synthseg.errors import InputError
from synthseg.train import TrainSettings, train
from tests.conftest import compose_train

TINY = ["model=unet", "debug=tiny_unet", "trainer.max_epochs=1", "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]  # fmt: skip


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_logger_writes_the_metrics_file(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train([*TINY, f"data.root={tiny_dataset}", "logger=csv"], tmp_path)
    metrics = train(cfg)
    rows = _rows(tmp_path / "run")
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss_epoch", "val/loss", "test/dice_error"} <= logged
    test_row = next(row for row in rows if row.get("test/dice_error"))
    assert float(test_row["test/dice_error"]) == pytest.approx(metrics["test/dice_error"])
    assert (tmp_path / "run" / "csv" / "hparams.yaml").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_and_csv_together(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_train([*TINY, f"data.root={tiny_dataset}", "logger=[tensorboard,csv]"], tmp_path)
    assert set(cfg.logger) == {"tensorboard", "csv"}
    train(cfg)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert any(row.get("val/loss") for row in _rows(tmp_path / "run"))


@pytest.mark.parametrize(
    ("logger", "package", "target"),
    [("mlflow", "mlflow", "MLFlowLogger"), ("wandb", "wandb", "WandbLogger")],
)
def test_a_logger_without_its_package_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logger: str, package: str, target: str
) -> None:
    cfg = compose_train(["model=unet", f"logger={logger}"], tmp_path)
    node = cfg.logger[logger]
    assert node._target_ == f"pytorch_lightning.loggers.{target}"
    if logger == "mlflow":  # a local file store in the run folder, no server
        assert node.tracking_uri == f"file:{tmp_path / 'run'}/mlruns"
    else:
        assert node.offline is True and node.save_dir == str(tmp_path / "run")
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(InputError) as err:
        TrainSettings.from_config(cfg)
    assert str(err.value) == f"logger={logger} needs the {package} package: pip install {package}"
    assert not (tmp_path / "run").exists()


def test_the_train_command_prints_the_missing_package_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthseg.cli import run as cli_run

    monkeypatch.setitem(sys.modules, "mlflow", None)
    overrides = ["model=unet", "logger=mlflow", f"paths.log_dir={tmp_path / 'logs'}"]
    with pytest.raises(SystemExit) as exit_info:
        cli_run("train", [*overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "synthseg train: error: logger=mlflow needs the mlflow package: pip install mlflow"
