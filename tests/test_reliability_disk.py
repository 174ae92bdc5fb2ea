"""Disk space: every large writer estimates its output and refuses, in one line and before writing
anything, when the disk cannot hold it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from synthseg.cli import run as cli_run
from synthseg.errors import InputError
from synthseg.report import report
from synthseg.report.settings import ReportSettings
from synthseg.synth import export, generate_masks
from synthseg.synth import filter as zfilter
from synthseg.synth.generate_masks import GenerateMasksSettings, resume_folder
from tests.conftest import make_run, tiny_snapshot, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def full_disk(monkeypatch):
    """A disk with 100 bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))


def _nothing_written(target: Path) -> bool:
    return not [p for p in target.parent.iterdir() if p.name.startswith((target.name, f".{target.name}"))]


def test_generate_masks_refuses_a_full_disk_in_one_line(tmp_path: Path, full_disk, capsys, monkeypatch):
    snap = tiny_snapshot(tmp_path / "snap.pt")
    out = tmp_path / "masks"
    with pytest.raises(InputError, match=r"not enough disk space for 1000 masks in .*: needs about 0\.00 GB"):
        generate_masks.run(GenerateMasksSettings(checkpoint=snap, count=1000, output=out, progress=False))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_run("generate-masks", [f"checkpoint={snap}", "count=1000", f"output={out}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthseg generate-masks: error: not enough disk space") and "\n" not in err
    assert _nothing_written(out) and not resume_folder(out).exists()


def test_filter_export_and_report_refuse_a_full_disk(tmp_path: Path, full_disk) -> None:
    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    synthetic = write_dataset(tmp_path / "synthetic", num_slices=20, size=32, source="synthetic", seed=1)
    with pytest.raises(InputError, match="not enough disk space for the filtered masks"):
        zfilter.run(
            zfilter.FilterSettings(
                masks=synthetic,
                reference=prepared,
                output=tmp_path / "filtered",
                threshold_quantile=1.0,
                progress=False,
            )
        )
    assert _nothing_written(tmp_path / "filtered")
    with pytest.raises(InputError, match="not enough disk space for the nnU-Net dataset"):
        export.run(export.ExportSettings(source=[prepared], output=tmp_path / "nnUNet_raw", progress=False))
    assert not (tmp_path / "nnUNet_raw").exists() or not list((tmp_path / "nnUNet_raw").iterdir())
    make_run(tmp_path / "runs" / "0", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=prepared)
    with pytest.raises(InputError, match="not enough disk space for the report"):
        report.run(
            ReportSettings.from_config(
                {"runs": str(tmp_path / "runs"), "output": str(tmp_path / "report")}, partial=True
            )
        )
    assert _nothing_written(tmp_path / "report")


def test_synthesize_refuses_before_generating_anything(tmp_path: Path, full_disk) -> None:
    from synthseg.synth import synthesize

    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    snap = tiny_snapshot(tmp_path / "snap.pt")
    with pytest.raises(InputError, match="not enough disk space for 500 synthetic pairs"):
        synthesize.run(
            synthesize.SynthesizeSettings(
                pgan=snap,
                spade=snap,
                reference=prepared,
                count=500,
                output=tmp_path / "synthetic",
                progress=False,
            )
        )
    assert _nothing_written(tmp_path / "synthetic")
