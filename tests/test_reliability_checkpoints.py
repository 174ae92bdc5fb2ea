"""Checkpoints from elsewhere: a crafted pickle is refused and runs nothing; a checkpoint of another
configuration is one error naming both values, for every loader a user passes a path to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from synthseg.checkpoint import CheckpointError, save_network
from synthseg.cli import run as cli_run
from synthseg.networks.pgan import PGANGenerator
from synthseg.report import report
from synthseg.report.settings import ReportSettings
from synthseg.synth import generate_masks
from synthseg.synth.generate_masks import GenerateMasksSettings
from synthseg.train import train
from tests.conftest import compose_train, make_run, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


class Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload(marker)}, path)
    return path


def _one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def test_the_payload_really_runs_when_unpickled_unsafely(tmp_path: Path) -> None:
    # Guards the other tests: the crafted file is dangerous, so refusing it means something.
    marker = tmp_path / "ran"
    torch.load(evil_checkpoint(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_generate_masks_refuses_a_malicious_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    marker = tmp_path / "ran"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refused to load"):
        generate_masks.run(
            GenerateMasksSettings(checkpoint=evil, count=4, output=tmp_path / "masks", progress=False)
        )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_run("generate-masks", [f"checkpoint={evil}", "count=4", f"output={tmp_path / 'masks'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert _one_line(err).startswith("synthseg generate-masks: error: ") and str(evil) in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not any(p.name.startswith(("masks", ".masks")) for p in tmp_path.iterdir())


def test_train_resume_refuses_a_malicious_checkpoint(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    marker = tmp_path / "ran"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    cfg = compose_train(
        ["model=unet", f"data.root={data}", "model.net.base_width=2", f"ckpt_path={evil}"], tmp_path
    )
    with pytest.raises(CheckpointError, match="refused to load") as err:
        train(cfg)
    _one_line(str(err.value))
    assert not marker.exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_report_refuses_a_malicious_best_checkpoint(tmp_path: Path) -> None:
    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    run = make_run(
        tmp_path / "runs" / "0", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=prepared
    )
    marker = tmp_path / "ran"
    evil_checkpoint(run / "checkpoints" / "best.ckpt", marker)
    out = tmp_path / "report"
    cfg = {"runs": str(tmp_path / "runs"), "output": str(out), "bootstrap": {"samples": 20},
           "figures": {"segmentation_slices": 2}}  # fmt: skip
    with pytest.raises(CheckpointError, match="refused to load") as err:
        report.run(ReportSettings.from_config(cfg, partial=True))
    _one_line(str(err.value))
    assert not marker.exists()
    assert not out.exists() and [p.name for p in tmp_path.glob(".report.*")] == [".report.lock"]


def test_report_checkpoint_of_other_classes_is_one_clear_error(tmp_path: Path) -> None:
    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    run = make_run(
        tmp_path / "runs" / "0", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=prepared
    )
    four = make_run(
        tmp_path / "other", mix="full_real", classes=4, seed=0, dice_error=0.1, data_root=prepared
    )
    (four / "checkpoints" / "best.ckpt").replace(run / "checkpoints" / "best.ckpt")
    cfg = {"runs": str(tmp_path / "runs"), "output": str(tmp_path / "report"), "bootstrap": {"samples": 20},
           "figures": {"segmentation_slices": 2}}  # fmt: skip
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint has 4 label classes \(net\.head\.weight 4x\S+\), config asks for 7",
    ) as err:
        report.run(ReportSettings.from_config(cfg, partial=True))
    _one_line(str(err.value))


# ------------------------------------------------------------------------- shapes that do not fit
def _unet_checkpoint(tmp_path: Path, data: Path, *overrides: str) -> Path:
    """A checkpoint of the configured U-Net (what a finished run's last.ckpt holds, minus the loop state)."""
    cfg = compose_train(
        ["model=unet", f"data.root={data}", "model.net.base_width=2", *overrides], tmp_path / "src"
    )
    model = instantiate(cfg.model, _convert_="partial")
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "global_step": 4}, path)
    return path


@pytest.mark.parametrize(
    "trained, resumed, message",
    [
        (["data.classes=7"], ["data.classes=4"], r"checkpoint has 7 label classes \(net\.head\.weight 7x2x1x1\), config asks for 4"),
        (["data.classes=2"], ["data.classes=7"], r"checkpoint has 2 label classes .* config asks for 7"),
        ([], ["model.net.base_width=4"], r"checkpoint has net\.\S+ of shape 2x1x3x3, the configured UNetModule has 4x1x3x3"),
    ],
)  # fmt: skip
def test_unet_resume_with_another_configuration_is_one_clear_error(tmp_path, trained, resumed, message):
    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    ckpt = _unet_checkpoint(tmp_path, data, *trained)
    cfg = compose_train(["model=unet", f"data.root={data}", "model.net.base_width=2", *resumed,
                         f"ckpt_path={ckpt}"], tmp_path)  # fmt: skip
    with pytest.raises(CheckpointError, match=message) as err:
        train(cfg)
    assert "size mismatch" not in _one_line(str(err.value))
    assert not (tmp_path / "run" / "results.json").exists()


def test_checkpoint_of_another_model_type_is_one_clear_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    path = tmp_path / "pgan.pt"
    save_network(PGANGenerator(resolution=8, latent_dim=4, fmap_base=16, fmap_max=4), path)
    cfg = compose_train(
        ["model=unet", f"data.root={data}", "model.net.base_width=2", f"ckpt_path={path}"], tmp_path
    )
    with pytest.raises(CheckpointError, match=r"does not fit the configured UNetModule: \d+ weights missing"):
        train(cfg)


PGAN_TINY = [
    "model=pgan",
    "model.generator.latent_dim=8",
    "model.generator.fmap_base=32",
    "model.generator.fmap_max=8",
]


@pytest.mark.parametrize(
    "trained, resumed, message",
    [
        (["model.generator.resolution=16"], ["model.generator.resolution=8"],
         "checkpoint has resolution=16, config asks for resolution=8"),
        (["model.generator.resolution=8"], ["model.generator.resolution=8", "model.generator.latent_dim=16"],
         "checkpoint has latent_dim=8, config asks for latent_dim=16"),
        (["model.generator.resolution=8"], ["model.generator.resolution=8", "model.generator.fmap_max=16"],
         "checkpoint has fmap_max=8, config asks for fmap_max=16"),
    ],
)  # fmt: skip
def test_pgan_resume_with_another_configuration_is_one_clear_error(tmp_path, trained, resumed, message):
    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    cfg = compose_train([*PGAN_TINY, f"data.root={data}", *trained], tmp_path / "src")
    model = instantiate(cfg.model, _convert_="partial")
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "pgan": {"generator_init_args": model.generator.init_args}}, ckpt
    )
    cfg = compose_train([*PGAN_TINY, f"data.root={data}", *resumed, f"ckpt_path={ckpt}"], tmp_path)
    with pytest.raises(CheckpointError, match=message) as err:
        train(cfg)
    _one_line(str(err.value))


def test_generate_images_refuses_a_malicious_checkpoint(tmp_path: Path) -> None:
    from synthseg.synth import generate_images

    masks = write_dataset(tmp_path / "masks", num_slices=4, size=32, source="synthetic")
    marker = tmp_path / "ran"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        generate_images.run(
            generate_images.GenerateImagesSettings(
                checkpoint=evil, masks=masks, output=tmp_path / "images", progress=False
            )
        )
    _one_line(str(err.value))
    assert not marker.exists()
    assert not any(p.name.startswith(("images", ".images")) for p in tmp_path.iterdir())


def test_missing_checkpoint_and_nothing_to_resume_are_one_line(tmp_path: Path) -> None:
    from synthseg.errors import InputError

    data = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    for ckpt, message in (
        (tmp_path / "nowhere.ckpt", "file not found"),
        ("last", "no last.ckpt found under"),
    ):
        cfg = compose_train(
            ["model=unet", f"data.root={data}", "model.net.base_width=2", f"ckpt_path={ckpt}"], tmp_path
        )
        with pytest.raises(InputError, match=message) as err:
            train(cfg)
        _one_line(str(err.value))


SPADE_TINY = ["model=spade", "debug=tiny_spade"]


def test_spade_resume_with_another_class_count_is_one_clear_error(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=20, size=32)
    cfg = compose_train([*SPADE_TINY, f"data.root={data}", "data.classes=7"], tmp_path / "src")
    model = instantiate(cfg.model, _convert_="partial")
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    cfg = compose_train([*SPADE_TINY, f"data.root={data}", "data.classes=4", f"ckpt_path={ckpt}"], tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint has \S+ of shape \d+x7x3x3, the configured SPADEModule has \d+x4x3x3",
    ) as err:
        train(cfg)
    _one_line(str(err.value))
