"""Atomic outputs: a stage killed midway (a real SIGKILL of the command) leaves the previous output intact, and
a re-run completes; generate-masks resumes where it stopped instead of starting over."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthseg.data.manifest import read_provenance
from synthseg.synth import export
from synthseg.synth import filter as zfilter
from synthseg.synth import generate_masks as masks_module
from synthseg.synth.generate_masks import PROGRESS, GenerateMasksSettings, resume_folder
from tests.conftest import kill_when, tiny_snapshot, tiny_spade_snapshot, write_dataset

SYNTHSEG = str(Path(sys.executable).parent / "synthseg")


pytestmark = pytest.mark.usefixtures("single_thread")


def run_masks(**options: Any) -> dict[str, Any]:
    """generate-masks from Python: its settings object and run; the provenance it wrote (prepare.json)."""
    return read_provenance(masks_module.run(GenerateMasksSettings(**options))) or {}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def partial_of(target: Path) -> Callable[[], bool]:
    return lambda: any(target.parent.glob(f".{target.name}.*.partial"))


def no_leftovers(target: Path) -> bool:
    """No temporary folder of ``target`` (its lock file ``.<name>.lock`` stays beside it, by design)."""
    lock = f".{target.name}.lock"
    return not [
        p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.") and p.name != lock
    ]


# ------------------------------------------------------------------------- generate-masks: resume
def test_interrupted_generation_resumes_to_identical_files_without_redoing_batches(tmp_path, monkeypatch):
    snap = tiny_snapshot(tmp_path / "snap.pt")
    whole = tmp_path / "whole"
    run_masks(checkpoint=snap, count=23, output=whole, batch_size=5, progress=False)

    out = tmp_path / "masks"
    real_write = masks_module._write_batch
    written: list[str] = []

    def crash_in_fourth_batch(folder, ids, masks):
        if ids[0] == "synth_000015":
            raise RuntimeError("simulated crash")
        written.extend(ids)
        real_write(folder, ids, masks)

    monkeypatch.setattr(masks_module, "_write_batch", crash_in_fourth_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_masks(checkpoint=snap, count=23, output=out, batch_size=5, progress=False)
    assert not out.exists()
    work = resume_folder(out)
    assert json.loads((work / PROGRESS).read_text())["done"] == 15
    first = (work / "labels" / "synth_000000.png").stat()

    written.clear()
    monkeypatch.setattr(
        masks_module, "_write_batch", lambda f, i, m: (written.extend(i), real_write(f, i, m))
    )
    info = run_masks(checkpoint=snap, count=23, output=out, batch_size=5, progress=False)
    assert info["resumed_from"] == 15
    assert written == [f"synth_{i:06d}" for i in range(15, 23)]  # completed batches were not redone
    again = (out / "labels" / "synth_000000.png").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    a, b = tree(whole), tree(out)
    a.pop("prepare.json"), b.pop("prepare.json")  # timings differ
    assert a == b
    assert not work.exists() and no_leftovers(out)


def test_a_different_configuration_starts_over(tmp_path, monkeypatch):
    snap = tiny_snapshot(tmp_path / "snap.pt")
    out = tmp_path / "masks"
    real_write = masks_module._write_batch

    def crash(folder, ids, masks):
        if ids[0] == "synth_000010":
            raise RuntimeError("simulated crash")
        real_write(folder, ids, masks)

    monkeypatch.setattr(masks_module, "_write_batch", crash)
    with pytest.raises(RuntimeError):
        run_masks(checkpoint=snap, count=12, output=out, batch_size=5, seed=0, progress=False)
    monkeypatch.setattr(masks_module, "_write_batch", real_write)
    info = run_masks(checkpoint=snap, count=12, output=out, batch_size=5, seed=1, progress=False)
    assert info["resumed_from"] == 0
    fresh = tmp_path / "fresh"
    run_masks(checkpoint=snap, count=12, output=fresh, batch_size=5, seed=1, progress=False)
    assert tree(out)["manifest.csv"] == tree(fresh)["manifest.csv"]
    assert {k: v for k, v in tree(out).items() if k.startswith("labels")} == {
        k: v for k, v in tree(fresh).items() if k.startswith("labels")
    }


@pytest.mark.slow
def test_sigkill_of_generate_masks_keeps_the_old_output_and_resumes(tmp_path: Path) -> None:
    snap = tiny_snapshot(tmp_path / "snap.pt", size=64)
    out = tmp_path / "masks"
    run_masks(checkpoint=snap, count=3, output=out, progress=False)
    before = tree(out)
    work = resume_folder(out)

    def some_batches_done() -> bool:
        try:
            return json.loads((work / PROGRESS).read_text())["done"] >= 100
        except (OSError, ValueError):
            return False

    count = 2500
    command = [SYNTHSEG, "generate-masks", f"checkpoint={snap}", f"count={count}", f"output={out}",
               "batch_size=50", "overwrite=true", "progress=false", "device=cpu"]  # fmt: skip
    kill_when(command, some_batches_done, tmp_path, timeout=180)
    assert tree(out) == before  # the previous output, untouched
    done = json.loads((work / PROGRESS).read_text())["done"]
    assert 100 <= done < count

    info = run_masks(
        checkpoint=snap, count=count, output=out, batch_size=50, overwrite=True, progress=False, device="cpu"
    )
    assert info["resumed_from"] == done
    whole = tmp_path / "whole"
    run_masks(checkpoint=snap, count=count, output=whole, batch_size=50, progress=False, device="cpu")
    a, b = tree(whole), tree(out)
    a.pop("prepare.json"), b.pop("prepare.json")
    assert a == b
    assert not work.exists() and no_leftovers(out)


# --------------------------------------------------------------------------- filter, export, report
@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared dataset and a synthetic one, large enough that writing them out takes a moment."""
    root = tmp_path_factory.mktemp("big")
    return {
        "prepared": write_dataset(root / "prepared", num_slices=60, size=32),
        "synthetic": write_dataset(root / "synthetic", num_slices=1500, size=32, source="synthetic", seed=3),
    }


@pytest.mark.slow
def test_sigkill_of_filter_keeps_the_old_output_and_a_rerun_completes(big, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    options = {"threshold_quantile": 1.0, "progress": False}
    zfilter.run(
        zfilter.FilterSettings(masks=big["synthetic"], reference=big["prepared"], output=out, **options)
    )
    before = tree(out)
    command = [SYNTHSEG, "filter", f"masks={big['synthetic']}", f"reference={big['prepared']}",
               f"output={out}", "overwrite=true", "progress=false", "threshold_quantile=0.5"]  # fmt: skip
    kill_when(command, partial_of(out), tmp_path, timeout=180)
    assert tree(out) == before
    zfilter.run(
        zfilter.FilterSettings(
            masks=big["synthetic"],
            reference=big["prepared"],
            output=out,
            overwrite=True,
            **{**options, "threshold_quantile": 0.5},
        )
    )
    assert tree(out) != before and (out / "filter.json").is_file()
    assert no_leftovers(out)


@pytest.mark.slow
def test_sigkill_of_export_keeps_the_old_output_and_a_rerun_completes(big, tmp_path: Path) -> None:
    out = tmp_path / "nnUNet_raw"
    folder = export.run(export.ExportSettings(source=[big["prepared"]], output=out, progress=False))
    before = tree(folder)
    command = [SYNTHSEG, "export", f"source=[{big['prepared']},{big['synthetic']}]", f"output={out}",
               "overwrite=true", "progress=false"]  # fmt: skip
    kill_when(command, partial_of(folder), tmp_path, timeout=180)
    assert tree(folder) == before
    export.run(
        export.ExportSettings(
            source=[big["prepared"], big["synthetic"]], output=out, overwrite=True, progress=False
        )
    )
    assert len(list((folder / "imagesTr").glob("*.png"))) == 48 + 1500
    assert no_leftovers(folder)


@pytest.mark.slow
def test_sigkill_of_report_keeps_the_old_output_and_a_rerun_completes(tmp_path: Path) -> None:
    from synthseg.report import report
    from synthseg.report.settings import ReportSettings
    from tests.conftest import make_run

    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    runs = tmp_path / "runs"
    for seed in range(3):
        make_run(runs / f"{seed}", mix="full_real", classes=7, seed=seed, dice_error=0.1 + seed / 100,
                 data_root=prepared)  # fmt: skip
    out = tmp_path / "report"
    report.run(ReportSettings.from_config({"runs": runs, "output": out, "bootstrap": {"samples": 20},
                                           "figures": {"enabled": False}}, partial=True))  # fmt: skip
    before = tree(out)
    command = [SYNTHSEG, "report", f"runs={runs}", f"output={out}", "bootstrap.samples=20",
               "figures.segmentation_slices=4", f"figures.masks_full={big_masks(tmp_path)}",
               "overwrite=true"]  # fmt: skip
    kill_when(command, partial_of(out), tmp_path, timeout=180)
    assert tree(out) == before
    report.run(ReportSettings.from_config({"runs": runs, "output": out, "bootstrap": {"samples": 20},
                                           "overwrite": True, "figures": {"segmentation_slices": 4}},
                                          partial=True))  # fmt: skip
    assert (out / "fig8_segmentations_7class.png").is_file() and no_leftovers(out)


def big_masks(tmp_path: Path) -> Path:
    from synthseg.data.pngio import write_label8

    folder = tmp_path / "fig_masks"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(48):
        write_label8(folder / f"m{i:02d}.png", rng.integers(0, 7, (256, 256), dtype=np.uint8))
    return folder


@pytest.mark.slow
def test_sigkill_of_synthesize_keeps_the_old_output_and_a_rerun_completes(big, tmp_path: Path) -> None:
    from synthseg.synth import synthesize

    pgan = tiny_snapshot(tmp_path / "pgan.pt", size=32)
    spade = tiny_spade_snapshot(tmp_path / "spade.pt")
    out = tmp_path / "synthetic"
    options = {"threshold": 1e9, "device": "cpu", "progress": False}
    synthesize.run(
        synthesize.SynthesizeSettings(
            pgan=pgan, spade=spade, reference=big["prepared"], count=6, output=out, **options
        )
    )
    before = tree(out)
    count = 1200
    command = [SYNTHSEG, "synthesize", f"pgan={pgan}", f"spade={spade}", f"reference={big['prepared']}",
               f"count={count}", f"output={out}", "threshold=1e9", "device=cpu", "overwrite=true",
               "progress=false"]  # fmt: skip
    kill_when(command, partial_of(out), tmp_path, timeout=180)
    assert tree(out) == before
    synthesize.run(
        synthesize.SynthesizeSettings(
            pgan=pgan,
            spade=spade,
            reference=big["prepared"],
            count=count,
            output=out,
            overwrite=True,
            **options,
        )
    )
    assert len(list((out / "images").glob("*.png"))) == len(list((out / "labels").glob("*.png"))) == count
    assert no_leftovers(out)


@pytest.mark.slow
def test_sigkill_of_generate_images_keeps_the_old_output_and_a_rerun_completes(big, tmp_path: Path) -> None:
    from synthseg.synth import generate_images

    spade = tiny_spade_snapshot(tmp_path / "spade.pt")
    out = tmp_path / "images"
    small = write_dataset(tmp_path / "small", num_slices=5, size=32, source="synthetic", seed=4)
    generate_images.run(
        generate_images.GenerateImagesSettings(
            checkpoint=spade, masks=small, output=out, device="cpu", progress=False
        )
    )
    before = tree(out)
    command = [SYNTHSEG, "generate-images", f"checkpoint={spade}", f"masks={big['synthetic']}", f"output={out}",
               "device=cpu", "overwrite=true", "progress=false"]  # fmt: skip
    kill_when(command, partial_of(out), tmp_path, timeout=180)
    assert tree(out) == before
    generate_images.run(
        generate_images.GenerateImagesSettings(
            checkpoint=spade, masks=big["synthetic"], output=out, device="cpu", overwrite=True, progress=False
        )
    )
    assert len(list((out / "images").glob("*.png"))) == 1500 and no_leftovers(out)
