"""No command deletes what it did not write (issue 12, findings 1-4; docs/reliability.md, "Outputs").

Every folder-writing command runs, with ``overwrite=true``, against: an unrelated non-empty folder, its own
input's folder, a parent of its input, and a folder it wrote earlier with a user file added. Each is refused
with one line, and every file the command did not write is still there, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from synthseg.errors import InputError
from synthseg.utils.outputs import MARKER
from tests.conftest import tiny_snapshot, tiny_spade_snapshot, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Command:
    """``run(output, overwrite)`` writes ``output`` (for export: the nnUNet_raw parent of ``written``)."""

    run: Callable[[Path, bool], Any]
    input: Path | None  # the folder it reads (None: it reads nothing)
    written: Callable[[Path], Path] = lambda output: output  # the folder the command replaces
    # The output whose replaced folder is the input's parent.
    parent_output: Callable[[Path], Path] = lambda source: source.parent


def _prepare(tmp: Path) -> Command:
    from synthseg.data.prepare import prepare
    from synthseg.data.prepare.settings import PrepareSettings
    from tests.helpers.cohort import make_cohort

    source = tmp / "brats"
    make_cohort(source, 3, shape=(6, 5, 4))

    def run(output: Path, overwrite: bool) -> Any:
        settings = PrepareSettings(
            source=str(source), output=str(output), size=8, workers=1, progress=False, overwrite=overwrite
        )
        return prepare.run(settings)

    return Command(run, source)


def _generate_masks(tmp: Path) -> Command:
    from synthseg.synth import generate_masks

    run_dir = tmp / "pgan_run"
    run_dir.mkdir(parents=True)
    snap = tiny_snapshot(run_dir / "snapshot.pt", size=16)

    def run(out: Path, overwrite: bool) -> Any:
        settings = generate_masks.GenerateMasksSettings(
            checkpoint=snap, count=3, output=out, overwrite=overwrite, progress=False
        )
        return generate_masks.run(settings)

    return Command(run, run_dir)


def _filter(tmp: Path) -> Command:
    from synthseg.synth import filter as zfilter

    masks = write_dataset(tmp / "masks", num_slices=6, size=16, source="synthetic", seed=1, empty_every=0)
    reference = write_dataset(tmp / "reference", num_slices=10, size=16)

    def run(out: Path, overwrite: bool) -> Any:
        settings = zfilter.FilterSettings(
            masks=masks, reference=reference, output=out, threshold_quantile=1.0, overwrite=overwrite,
            progress=False,
        )  # fmt: skip
        return zfilter.run(settings)

    return Command(run, masks)


def _generate_images(tmp: Path) -> Command:
    from synthseg.synth import generate_images

    spade = tiny_spade_snapshot(tmp / "spade.pt")
    masks = write_dataset(tmp / "masks", num_slices=3, size=32, source="synthetic", seed=1, empty_every=0)

    def run(out: Path, overwrite: bool) -> Any:
        settings = generate_images.GenerateImagesSettings(
            checkpoint=spade, masks=masks, output=out, device="cpu", overwrite=overwrite, progress=False
        )
        return generate_images.run(settings)

    return Command(run, masks)


def _synthesize(tmp: Path) -> Command:
    from synthseg.synth import synthesize

    pgan = tiny_snapshot(tmp / "pgan.pt", size=32)
    spade = tiny_spade_snapshot(tmp / "spade.pt")
    reference = write_dataset(tmp / "reference", num_slices=10, size=32)

    def run(out: Path, overwrite: bool) -> Any:
        settings = synthesize.SynthesizeSettings(
            pgan=pgan, spade=spade, reference=reference, count=3, output=out, threshold=1e9, device="cpu",
            progress=False, overwrite=overwrite,
        )  # fmt: skip
        return synthesize.run(settings)

    return Command(run, reference)


def _export(tmp: Path) -> Command:
    from synthseg.synth import export

    # The input lies inside a folder named like the dataset folder, so "a parent of the input" can be it.
    source = write_dataset(tmp / "raw" / "Dataset501_SynthSeg" / "prepared", num_slices=10, size=16)

    def run(out: Path, overwrite: bool) -> Any:
        return export.run(
            export.ExportSettings(source=[source], output=out, overwrite=overwrite, progress=False)
        )

    return Command(
        run,
        source,
        written=lambda out: out / "Dataset501_SynthSeg",
        parent_output=lambda source: source.parent.parent,
    )


def _report(tmp: Path) -> Command:
    from synthseg.report import report
    from synthseg.report.settings import BootstrapSettings, FigureSettings, ReportSettings
    from tests.conftest import make_run

    prepared = write_dataset(tmp / "prepared", num_slices=10, size=16)
    runs = tmp / "runs"
    make_run(runs / "0", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=prepared)

    def run(out: Path, overwrite: bool) -> Any:
        settings = ReportSettings(
            runs=runs, output=out, overwrite=overwrite, bootstrap=BootstrapSettings(samples=5),
            figures=FigureSettings(enabled=False),
        )  # fmt: skip
        return report.run(settings)

    return Command(run, runs)


def _demo_cohort(tmp: Path) -> Command:
    from synthseg.data.demo import demo_cohort

    def run(out: Path, overwrite: bool) -> Any:
        settings = demo_cohort.DemoCohortSettings(
            output=out, cases=1, seed=0, montage=False, progress=False, overwrite=overwrite
        )
        return demo_cohort.run(settings)

    return Command(run, None)


def _quality(tmp: Path) -> Command:
    from synthseg.metrics.quality import QualitySettings
    from synthseg.metrics.quality import main as quality_main

    real = write_dataset(tmp / "real", num_slices=20, size=16)
    synthetic = write_dataset(tmp / "synthetic", num_slices=8, size=16, source="synthetic", seed=1)
    options = {"extractor": None, "pairs": 5, "kid_subsets": 2, "search_size": 8, "device": "cpu"}

    def run(out: Path, overwrite: bool) -> Any:
        settings = {
            "synthetic": str(synthetic),
            "real": str(real),
            "output": str(out),
            "overwrite": overwrite,
        }
        # The whole config, as Hydra composes it: the command's main() builds the settings and runs them.
        cfg = {**dataclasses.asdict(QualitySettings(**settings)), **options}
        return quality_main(OmegaConf.create(cfg))

    return Command(run, synthetic)


COMMANDS = {
    "prepare": _prepare,
    "generate-masks": _generate_masks,
    "filter": _filter,
    "generate-images": _generate_images,
    "synthesize": _synthesize,
    "export": _export,
    "report": _report,
    "demo-cohort": _demo_cohort,
    "quality": _quality,
}


def _unrelated(tmp: Path) -> Path:
    folder = tmp / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "thesis.tex").write_text("four years of work")
    (folder / "chapters" / "results.csv").write_text("a,b\n1,2\n")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_folder_writer_keeps_what_it_did_not_write(name: str, tmp_path: Path) -> None:
    command = COMMANDS[name](tmp_path / "in")
    everything = tmp_path  # every file of the test, inputs and the user's files included

    def refused(output: Path, message: str) -> None:
        before = tree(everything)
        with pytest.raises(InputError, match=message) as err:
            command.run(output, True)
        assert "\n" not in str(err.value)
        after = tree(everything)
        assert {k: v for k, v in before.items() if k in after} == before  # nothing gone or changed
        assert not [k for k in after if k not in before and not k.endswith(".lock")]  # nothing written

    # An unrelated non-empty folder, whatever overwrite says.
    unrelated = _unrelated(tmp_path / "user")
    if name == "export":  # the rule is about the dataset folder inside nnUNet_raw: make it the user's
        unrelated.rename(command.written(unrelated.parent))
        refused(unrelated.parent, "not written by synthseg export")
    else:
        refused(unrelated, f"not written by synthseg {name}")

    if command.input is not None:
        refused(command.input, "the input")  # its own input's folder
        refused(command.parent_output(command.input), "the input")  # a parent of its input

    # A folder it wrote earlier, with a user file added: refused, naming the file; without it, replaced.
    output = tmp_path / "out" / "result"
    command.run(output, False)
    folder = command.written(output)
    assert (folder / MARKER).is_file()
    (folder / "notes.txt").write_text("my notes")
    refused(output, f"{folder / 'notes.txt'}: not written by synthseg {name}")
    with pytest.raises(InputError, match="already exists"):
        command.run(output, False)
    (folder / "notes.txt").unlink()
    command.run(output, True)
    assert (folder / MARKER).is_file()


def test_a_foreign_marker_or_an_empty_json_is_no_proof(tmp_path: Path) -> None:
    # Finding 2: a `prepare.json` holding `{}` used to be proof enough to wipe the folder.
    command = _prepare(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepare.json").write_text("{}")
    (out / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="not written by synthseg prepare"):
        command.run(out, True)
    (out / MARKER).write_text('{"format": "synthseg-output/1", "command": "report", "files": []}')
    with pytest.raises(InputError, match="not written by synthseg prepare"):
        command.run(out, True)
    assert (out / "mine.txt").read_text() == "keep"


def test_a_datamodule_cache_inside_a_prepared_dataset_is_the_tools_own(tmp_path: Path) -> None:
    from synthseg.data.cache import build_cache

    command = _prepare(tmp_path / "in")
    out = tmp_path / "out"
    command.run(out, False)
    build_cache(out, progress=False)
    (out / ".complete").write_text("1\n")  # the demo's stage marker
    command.run(out, True)
    assert not (out / "cache").exists() and (out / MARKER).is_file()


# --------------------------------------------------------------------------------- demo stage clean-up
def _demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool = False, **settings: Any) -> Path:
    """Run the demo loop with two stand-in stages: one with a marker (prepare), one training run."""
    from synthseg import demo as pipeline
    from tests.helpers.cohort import make_cohort

    source = tmp_path / "brats"
    if not source.exists():
        make_cohort(source, 3, shape=(6, 5, 4))

    def prepare(out: Path) -> None:
        from synthseg.data.prepare import prepare as command
        from synthseg.data.prepare.settings import PrepareSettings

        command.run(
            PrepareSettings(
                source=source, output=out / "prepared", size=8, workers=1, progress=False, overwrite=True
            )
        )

    def train(out: Path) -> None:
        (out / "pgan" / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "pgan" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        (out / "pgan" / "results.json").write_text("{}")

    reads = ("pgan_switches", "spade", "synthetic")  # what the tests below change, for the second stage
    stages = [
        pipeline.Stage("prepare", "prepared", prepare, 10.0, reads=("cases", "seed")),
        pipeline.Stage(
            "PGAN",
            "pgan",
            train,
            10.0,
            pipeline.TRAIN_RUN_FILES,
            ("prepared",),
            reads=reads,
        ),
    ]
    monkeypatch.setattr(pipeline, "build_stages", lambda cfg: stages)
    monkeypatch.setattr(pipeline, "collect_results", lambda out, folders: [])
    out = tmp_path / "demo"
    # workers=1: every stage here, in order (the stand-ins are closures, which no worker process can receive)
    pipeline.run(pipeline.DemoSettings(output=str(out), force=force, workers=1, **settings))
    return out


def test_demo_refuses_an_unrelated_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "demo"
    user.mkdir()
    (user / "thesis.tex").write_text("four years of work")
    before = tree(user)
    with pytest.raises(InputError, match=f"{user}: not empty and not written by synthseg demo"):
        _demo(tmp_path, monkeypatch)
    assert tree(user) == before


def test_demo_resumes_only_with_the_settings_its_stages_were_made_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg.demo import DemoBudgets, DemoSpade

    out = _demo(tmp_path, monkeypatch)
    before = tree(out)
    switched = DemoSpade(switches=("model.lambda_gan=0.1",))
    with pytest.raises(
        InputError,
        match=r"settings changed since its stages were made \(seed: 0 -> 1; spade.switches: \[\] -> "
        r"\['model.lambda_gan=0.1'\]\), and they change the completed stages prepare, PGAN: update=true",
    ):
        _demo(tmp_path, monkeypatch, seed=1, spade=switched)
    assert tree(out) == before  # nothing replaced, no marker removed
    _demo(tmp_path, monkeypatch, budgets=DemoBudgets(pgan=1.0))  # how long it may take: free to change
    assert tree(out).keys() == before.keys()  # no stage made again (its marker would be new)
    assert all(tree(out)[name] == before[name] for name in before if name != "summary.json")
    _demo(tmp_path, monkeypatch, force=True, seed=1)  # every stage again, under the new settings
    assert json.loads((out / "demo_settings.json").read_text())["seed"] == 1
    (out / "demo_settings.json").write_text("{trunc")
    with pytest.raises(InputError, match="demo_settings.json: unreadable"):
        _demo(tmp_path, monkeypatch, seed=1)


def test_demo_resumed_with_a_setting_no_completed_stage_reads_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg.demo import DemoSpade
    from synthseg.demo_sweep import DemoSweep

    out = _demo(tmp_path, monkeypatch)
    done = (out / "prepared" / ".complete").stat().st_mtime_ns
    _demo(tmp_path, monkeypatch, sweep=DemoSweep(seeds=(0, 2)))  # no stage here reads the sweep: taken
    assert json.loads((out / "demo_settings.json").read_text())["sweep"]["seeds"] == [0, 2]
    # a PGAN stopped by a bad switch: the corrected value needs no force, and prepare is not made again
    (out / "pgan" / ".complete").unlink()
    _demo(tmp_path, monkeypatch, spade=DemoSpade(epochs=2), sweep=DemoSweep(seeds=(0, 2)))
    assert (out / "pgan" / ".complete").is_file()
    assert (out / "prepared" / ".complete").stat().st_mtime_ns == done
    assert json.loads((out / "demo_settings.json").read_text())["spade"]["epochs"] == 2


@pytest.mark.parametrize("stage", ["prepared", "pgan"])
@pytest.mark.parametrize("force", [False, True])
def test_demo_stage_clean_up_keeps_user_files(
    stage: str, force: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _demo(tmp_path, monkeypatch)
    if not force:
        (out / stage / ".complete").unlink()  # an interrupted stage: the demo replaces it on the next run
    (out / stage / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=f"{out / stage / 'notes.txt'}: not written by synthseg"):
        _demo(tmp_path, monkeypatch, force=force)
    assert (out / stage / "notes.txt").read_text() == "mine"
    (out / stage / "notes.txt").unlink()
    _demo(tmp_path, monkeypatch, force=force)  # its own files only: replaced
    assert (out / stage / ".complete").is_file()
    assert (out / "summary.json").is_file()


@pytest.mark.slow
def test_synthesize_removes_only_its_own_intermediate_folders(tmp_path: Path) -> None:
    from synthseg.synth import synthesize

    command = _synthesize(tmp_path / "in")
    out = tmp_path / "synthetic"
    work = tmp_path / "synthetic.work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    pgan, spade, reference = tmp_path / "in" / "pgan.pt", tmp_path / "in" / "spade.pt", command.input
    settings = synthesize.SynthesizeSettings(
        pgan=pgan, spade=spade, reference=reference, count=3, output=out, threshold=1e9, device="cpu",
        progress=False, keep_intermediate=False,
    )  # fmt: skip
    synthesize.run(settings)
    assert sorted(p.name for p in work.iterdir()) == [
        "notes.txt"
    ]  # masks/ and kept/ are gone, the note stays


def test_generate_masks_starting_over_keeps_a_user_file_in_its_resume_folder(tmp_path: Path) -> None:
    from synthseg.synth import generate_masks
    from synthseg.synth.generate_masks import GenerateMasksSettings, resume_folder

    snap = tiny_snapshot(tmp_path / "snap.pt", size=16)
    out = tmp_path / "masks"
    work = resume_folder(out)
    (work / "labels").mkdir(parents=True)
    (work / "labels" / "synth_000000.png").write_bytes(b"left over")
    (work / "thesis.tex").write_text("not a mask")
    with pytest.raises(InputError, match=f"{work / 'thesis.tex'}: not written by synthseg"):
        generate_masks.run(GenerateMasksSettings(checkpoint=snap, count=3, output=out, progress=False))
    assert (work / "thesis.tex").read_text() == "not a mask"
    (work / "thesis.tex").unlink()
    generate_masks.run(
        GenerateMasksSettings(checkpoint=snap, count=3, output=out, progress=False)
    )  # its own leftovers only: started over
    assert not work.exists() and len(list((out / "labels").iterdir())) == 3


def test_a_symlink_to_an_input_is_that_input(tmp_path: Path) -> None:
    command = _filter(tmp_path / "in")
    assert command.input is not None
    link = tmp_path / "link"
    link.symlink_to(command.input, target_is_directory=True)
    before = tree(command.input)
    with pytest.raises(InputError, match="is the input"):
        command.run(link, True)
    (tmp_path / "parent_link").symlink_to(command.input.parent, target_is_directory=True)
    with pytest.raises(InputError, match="contains the input"):
        command.run(tmp_path / "parent_link", True)
    assert tree(command.input) == before


def test_synthesize_says_in_one_line_when_the_filter_keeps_no_mask(tmp_path: Path) -> None:
    """A PGAN whose every mask the filter drops: a clear line naming the filter's folder, no output folder."""
    from synthseg.synth import synthesize

    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    out = tmp_path / "synthetic"
    settings = synthesize.SynthesizeSettings(
        pgan=tiny_snapshot(tmp_path / "pgan.pt", size=32), spade=tiny_spade_snapshot(tmp_path / "spade.pt"),
        reference=prepared, count=6, output=out, threshold=0.0, device="cpu", progress=False, quality=False,
    )  # fmt: skip
    with pytest.raises(synthesize.FilterKeptNothing, match=r"kept none of the 6 generated masks") as err:
        synthesize.run(settings)
    assert "\n" not in str(err.value) and "kept" in str(err.value)
    assert not out.exists()


# ------------------------------------------------------------- paths that come from data (issue 24, class 1)
def _edit_manifest(root: Path, row: int, **cells: str) -> None:
    """Set ``cells`` (column -> value) in data row ``row`` of ``<root>/manifest.csv``."""
    import csv

    path = root / "manifest.csv"
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    rows[row].update(cells)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _bad_ids_and_paths(tmp: Path) -> dict[str, tuple[Callable[[Path], None], str]]:
    """Manifest edits that point outside the dataset folder: (edit of a dataset folder, expected part of the line)."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    outside = write_dataset(tmp / "outside_dataset", num_slices=2, size=32, source="synthetic", seed=5)
    (elsewhere / "images").mkdir(exist_ok=True)

    def symlinked_images(root: Path) -> None:
        import shutil

        shutil.copytree(root / "images", elsewhere / "images", dirs_exist_ok=True)
        shutil.rmtree(root / "images")
        (root / "images").symlink_to(elsewhere / "images", target_is_directory=True)

    return {
        "id ../../victim/important": (
            lambda root: _edit_manifest(root, 1, id="../../victim/important"),
            "id '../../victim/important' contains '/'",
        ),
        "label ../../../elsewhere": (
            lambda root: _edit_manifest(root, 1, label="../../../outside_dataset/labels/synth_000000.png"),
            "goes up with '..'",
        ),
        "absolute image path": (
            lambda root: _edit_manifest(root, 1, image=str(outside / "images" / "synth_000000.png")),
            "is an absolute path",
        ),
        "id with a control character": (
            lambda root: _edit_manifest(root, 1, id="a\x07b"),
            "contains '\\x07'",
        ),
        "id of 201 bytes": (lambda root: _edit_manifest(root, 1, id="x" * 201), "is 201 bytes long"),
        "images/ symlinked elsewhere": (symlinked_images, "lies in a folder that resolves to"),
    }


def _reads_a_manifest(tmp: Path) -> dict[str, Callable[[Path], Any]]:
    """Every command that reads a dataset folder's manifest, given the (edited) folder ``data``."""
    from synthseg.metrics import swd
    from synthseg.metrics.quality import QualitySettings, measure
    from synthseg.synth import export, generate_images, synthesize
    from synthseg.synth import filter as zfilter

    clean = write_dataset(tmp / "clean", num_slices=10, size=32)
    spade = tiny_spade_snapshot(tmp / "spade.pt")
    pgan = tiny_snapshot(tmp / "pgan.pt", size=32)
    out = (
        tmp / "area" / "victim_parent" / "out"
    )  # labels/../../victim/important.png would land in area/victim

    def train(overrides: list[str]) -> Any:
        from synthseg.train import train as train_command
        from tests.conftest import compose_train

        width = ["model=unet", "model.net.base_width=2", "trainer.max_epochs=1"]
        return train_command(compose_train([*width, *overrides], tmp / "area"))

    def quality(data: Path) -> Any:
        options = {"extractor": None, "pairs": 5, "kid_subsets": 2, "search_size": 8, "device": "cpu"}
        return measure(QualitySettings(synthetic=data, real=clean, output=out, **options))

    return {
        "filter (masks)": lambda data: zfilter.run(zfilter.FilterSettings(
            masks=data, reference=clean, output=out, threshold_quantile=1.0, progress=False)),
        "filter (reference)": lambda data: zfilter.run(zfilter.FilterSettings(
            masks=clean, reference=data, output=out, threshold_quantile=1.0, progress=False)),
        "generate-images keep_ids=true": lambda data: generate_images.run(generate_images.GenerateImagesSettings(
            checkpoint=spade, masks=data, output=out, device="cpu", keep_ids=True, progress=False)),
        "export": lambda data: export.run(export.ExportSettings(source=[data], output=out, progress=False)),
        "train (data.root)": lambda data: train([f"data.root={data}"]),
        "train (data.synthetic.root)": lambda data: train(
            [f"data.root={clean}", f"+data.synthetic={{root: {data}, count: 2}}"]),
        "quality": quality,
        "synthesize (reference)": lambda data: synthesize.run(synthesize.SynthesizeSettings(
            pgan=pgan, spade=spade, reference=data, count=3, output=out, threshold=1e9, device="cpu",
            progress=False, quality=False)),
        "swd": lambda data: swd.run(swd.SWDSettings(a=data, b=clean, device="cpu", progress=False)),
    }  # fmt: skip


def _bad_names_ids() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return list(_bad_ids_and_paths(Path(scratch)))


READERS = [
    "filter (masks)", "filter (reference)", "generate-images keep_ids=true", "export", "train (data.root)",
    "train (data.synthetic.root)", "quality", "synthesize (reference)", "swd",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("edit", _bad_names_ids())
@pytest.mark.parametrize("reader", READERS)
def test_ids_and_paths_from_a_manifest_stay_inside_their_folder(
    reader: str, edit: str, tmp_path: Path
) -> None:
    """Issue 24, class 1: ``../``, absolute paths, a symlinked folder, bad ids: one line naming the manifest,
    the line and the value, before any file is read or written; nothing outside changes."""
    data = write_dataset(tmp_path / "data", num_slices=10, size=32, source="synthetic", seed=1, empty_every=0)
    victim = tmp_path / "area" / "victim" / "important.png"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the user's own file")
    change, expected = _bad_ids_and_paths(tmp_path)[edit]
    change(data)
    run = _reads_a_manifest(tmp_path)[reader]
    before = tree(tmp_path)
    with pytest.raises(InputError) as err:
        run(data)
    line = str(err.value)
    assert "\n" not in line and expected in line, line
    row = 2 if "symlinked" in edit else 3  # the manifest and the row (the header is line 1; every row of a
    assert f"{data / 'manifest.csv'}: line {row}" in line, (
        line
    )  # symlinked folder is outside, the first first)
    after = tree(tmp_path)
    assert {k: v for k, v in before.items() if k in after} == before
    assert not [k for k in after if k not in before and not k.endswith(".lock")], after.keys() - before.keys()
    assert victim.read_bytes() == b"the user's own file"


def test_a_pgan_history_naming_a_snapshot_outside_its_run_is_refused(tmp_path: Path) -> None:
    from synthseg.synth import select

    run = tmp_path / "run"
    run.mkdir()
    tiny_snapshot(tmp_path / "elsewhere.pt")
    (run / "swd.csv").write_text(
        "tick,kimg,resolution,alpha,snapshot,swd_avg\n1,1,16,1.0,../elsewhere.pt,3.0\n"
    )
    with pytest.raises(InputError, match=r"swd.csv: line 2: snapshot '../elsewhere.pt' goes up with '..'"):
        select.run(select.SelectSettings(run=run))


def test_an_id_made_from_a_file_name_is_checked_too(tmp_path: Path) -> None:
    import numpy as np

    from synthseg.data.masks import list_masks
    from synthseg.data.pngio import write_label8

    folder = tmp_path / "pngs"
    folder.mkdir()
    write_label8(folder / ("x" * 210 + ".png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="file name 'x+' is 210 bytes long"):
        list_masks(folder)


# ------------------------------------------------- the lock covers everything a run touches (issue 24, class 2)
@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_folder_that_appears_at_the_output_during_a_run_is_refused_not_deleted(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output is checked again, under the lock, just before the rename: what appeared there meanwhile (a
    user's folder, a sync tool's) is refused with one line and kept; it used to be moved aside and deleted."""
    import synthseg.utils.outputs as outputs

    command = COMMANDS[name](tmp_path / "in")
    output = tmp_path / "out" / "result"
    folder = command.written(output)
    real_write_marker = outputs.write_marker

    def meanwhile(tmp: Path, *args: Any, **kwargs: Any) -> None:
        if not folder.exists():  # the first completed folder of the run: now the user's folder appears
            folder.mkdir(parents=True)
            (folder / "thesis.tex").write_text("four years of work")
        real_write_marker(tmp, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_marker", meanwhile)
    with pytest.raises(InputError, match=f"{folder}: not empty and not written by synthseg {name}") as err:
        command.run(output, True)
    assert "\n" not in str(err.value)
    assert tree(folder) == {"thesis.tex": b"four years of work"}
    assert not [p.name for p in folder.parent.iterdir() if p.name.endswith((".partial", ".old"))]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_user_folders_named_like_leftovers_beside_the_output_are_kept(name: str, tmp_path: Path) -> None:
    """Leftovers are matched exactly (``.<name>.<8 hex>.partial``/``.old``): ``filter output=T/out`` used to delete
    ``T/.out.backup.old/`` and the live temporary folder of a concurrent ``demo-cohort output=T/out.v2``."""
    from synthseg.utils.outputs import output_lock

    command = COMMANDS[name](tmp_path / "in")
    output = tmp_path / "out" / "result"
    folder = command.written(output)
    folder.parent.mkdir(parents=True)
    for user in (".result.backup.old", ".result.x.old", ".result.mine.partial"):
        (folder.parent / user).mkdir()
        (folder.parent / user / "notes.txt").write_text("mine")
    other = folder.parent / f".{folder.name}.v2.1234abcd.partial"  # result.v2's run, writing now
    other.mkdir()
    (other / "half.png").write_bytes(b"x")
    before = tree(folder.parent)
    with output_lock(folder.parent / f"{folder.name}.v2"):
        command.run(output, False)
    after = tree(folder.parent)
    assert {k: v for k, v in before.items()} == {k: v for k, v in after.items() if k in before}
    assert (folder / MARKER).is_file()


def test_two_exports_of_one_dataset_id_under_two_names_cannot_both_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id check runs again under a lock on nnUNet_raw, just before the rename: the second export of id 501
    (another name) started before the first landed is refused, not written beside it."""
    import synthseg.utils.outputs as outputs
    from synthseg.synth import export

    source = write_dataset(tmp_path / "prepared", num_slices=10, size=16)
    raw = tmp_path / "nnUNet_raw"
    real_write_marker = outputs.write_marker

    def first_lands_meanwhile(tmp: Path, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(outputs, "write_marker", real_write_marker)
        export.run(export.ExportSettings(source=[source], output=raw, name="First", progress=False))
        real_write_marker(tmp, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_marker", first_lands_meanwhile)
    with pytest.raises(InputError, match=r"dataset id 501 is taken by Dataset501_First"):
        export.run(export.ExportSettings(source=[source], output=raw, name="Second", progress=False))
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".lock")) == ["Dataset501_First"]


# ---------------------------------------------------------------- two runs started together (real processes)
# command -> its command-line arguments for the inputs COMMANDS[command] made under ``in`` and the output ``out``
RACE_ARGS: dict[str, Callable[[Path, Path], list[str]]] = {
    "prepare": lambda i, o: [f"source={i / 'brats'}", f"output={o}", "size=8", "workers=1"],
    "generate-masks": lambda i, o: [f"checkpoint={i / 'pgan_run' / 'snapshot.pt'}", "count=3", f"output={o}",
                                    "device=cpu"],
    "filter": lambda i, o: [f"masks={i / 'masks'}", f"reference={i / 'reference'}", f"output={o}",
                            "threshold_quantile=1.0"],
    "generate-images": lambda i, o: [f"checkpoint={i / 'spade.pt'}", f"masks={i / 'masks'}", f"output={o}",
                                     "device=cpu"],
    "synthesize": lambda i, o: [f"pgan={i / 'pgan.pt'}", f"spade={i / 'spade.pt'}", f"reference={i / 'reference'}",
                                "count=3", f"output={o}", "threshold=1e9", "device=cpu"],
    "export": lambda i, o: [f"source={i / 'raw' / 'Dataset501_SynthSeg' / 'prepared'}", f"output={o}"],
    "report": lambda i, o: [f"runs={i / 'runs'}", f"output={o}", "bootstrap.samples=5", "figures.enabled=false"],
    "demo-cohort": lambda i, o: [f"output={o}", "cases=1", "montage=false"],
    "quality": lambda i, o: [f"synthetic={i / 'synthetic'}", f"real={i / 'real'}", f"output={o}", "extractor=null",
                             "pairs=5", "kid_subsets=2", "search_size=8", "device=cpu"],
}  # fmt: skip


def _start_together(commands: list[list[str]], cwd: Path) -> list[Any]:
    """Start every command at once (one ``synthseg`` process each) and wait for them all."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert sys.executable  # the venv's synthseg script runs under the same interpreter
    return done


def _synthseg() -> str:
    import sys

    return str(Path(sys.executable).parent / "synthseg")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RACE_ARGS))
def test_two_runs_into_one_output_started_together(name: str, tmp_path: Path) -> None:
    """One run writes the output; the other stops with one line (exit 2): the output is complete and every file
    in it is one its marker lists."""
    import json

    COMMANDS[name](tmp_path / "in")
    out = tmp_path / "out" / "result"
    args = [_synthseg(), name, *RACE_ARGS[name](tmp_path / "in", out), "progress=false"]
    if name == "report":
        args.remove("progress=false")
    if name == "quality":
        args.remove("progress=false")
    # synthesize: two seeds, so a run that took the other's masks shows (its work folder used to lie outside the
    # lock: the second run replaced the first one's kept masks before it was refused)
    second = [*args, "seed=1"] if name == "synthesize" else args
    results = _start_together([args, second], tmp_path)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [(r.returncode, r.stderr[-2000:]) for r in results]
    loser = next(r for r in results if r.returncode == 2)
    lines = loser.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"synthseg {name}: error: "), lines
    assert "another synthseg run is writing this output now" in lines[0] or "already exists" in lines[0], (
        lines
    )
    folder = out / "Dataset501_SynthSeg" if name == "export" else out
    marker = json.loads((folder / MARKER).read_text())
    assert sorted(tree(folder)) == sorted([*marker["files"], MARKER])
    assert not [p for p in folder.parent.iterdir() if p.name.endswith((".partial", ".old"))]
    if name == "synthesize":  # the dataset, its kept masks and its generated masks: all of the winner's seed
        seed = json.loads((out / "prepare.json").read_text())["synthesize"]["seed"]
        work = out.parent / "result.work"
        assert json.loads((work / "masks" / "prepare.json").read_text())["seed"] == seed
        assert tree(work / "kept" / "labels") == tree(out / "labels")


@pytest.mark.slow
def test_two_exports_of_one_id_under_two_names_started_together(tmp_path: Path) -> None:
    source = write_dataset(tmp_path / "prepared", num_slices=10, size=16)
    raw = tmp_path / "nnUNet_raw"
    base = [_synthseg(), "export", f"source={source}", f"output={raw}", "dataset_id=501", "progress=false"]
    results = _start_together([[*base, "name=First"], [*base, "name=Second"]], tmp_path)
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr[-2000:] for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert "dataset id 501 is taken by Dataset501_" in loser.stderr.strip().splitlines()[-1]
    assert len([p for p in raw.iterdir() if p.name.startswith("Dataset501_")]) == 1


# ``python train.py ARGS`` that first imports everything, then waits until both runs are ready and starts just
# after the same whole second: the two runs resolve their run folder's time in the same second.
_TRAIN_AT_THE_SAME_SECOND = """
import math, sys, time
from pathlib import Path
import synthseg.train
from synthseg.cli import quiet_progress_when_logged, run
ready = Path(sys.argv[1])
(ready / sys.argv[2]).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.005)
now = time.time()
time.sleep(math.ceil(now) - now + 0.02)
quiet_progress_when_logged()
run("train", sys.argv[3:])
"""


@pytest.mark.slow
def test_two_training_runs_started_in_the_same_second_get_their_own_run_folders(tmp_path: Path) -> None:
    """``for s in 0 1; do python train.py seed=$s & done``: two run folders, each complete, nothing shared (they
    used to share ``runs/<time>/``: one died after the other's clean-up deleted its checkpoint's temporary file,
    and the folder mixed both runs' events)."""
    import json
    import sys

    prepared = write_dataset(tmp_path / "prepared", num_slices=20, size=16)
    ready = tmp_path / "ready"
    ready.mkdir()
    common = ["model=unet", f"data.root={prepared}", "model.net.base_width=2", "data.batch_size=4", "trainer=cpu",
              "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path / 'logs'}",
              "logger=csv"]  # fmt: skip
    script = [sys.executable, "-c", _TRAIN_AT_THE_SAME_SECOND, str(ready)]
    results = _start_together(
        [[*script, "a", *common, "seed=0"], [*script, "b", *common, "seed=1"]], tmp_path
    )
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-3000:] for r in results]
    runs = sorted((tmp_path / "logs" / "unet" / "runs").iterdir())
    assert len(runs) == 2, runs
    seeds = set()
    for run in runs:
        seeds.add(json.loads((run / "results.json").read_text())["config"]["seed"])
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert len(list((run / "csv").rglob("metrics.csv"))) == 1  # its own log only
        assert not list(run.rglob("*.partial"))
    assert seeds == {0, 1}


# -------------------------------------------------------------------- messages that say what happened (class 5)
@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_empty_folder_is_filled_without_overwrite(name: str, tmp_path: Path) -> None:
    """``mkdir out; synthseg filter ... output=out`` said "out: already exists (pass overwrite=true ...)", though
    the output rule accepts an empty folder."""
    command = COMMANDS[name](tmp_path / "in")
    output = tmp_path / "out" / "result"
    command.written(output).mkdir(parents=True)
    command.run(output, False)
    assert (command.written(output) / MARKER).is_file()


def test_an_existing_file_as_the_output_says_it_is_a_file(tmp_path: Path) -> None:
    # export output=<a file> said "cannot write into .../file (permission denied)".
    command = _export(tmp_path / "in")
    afile = tmp_path / "nnUNet_raw"
    afile.write_text("not a folder")
    with pytest.raises(InputError, match=f"{afile}: is a file, not a folder") as err:
        command.run(afile, False)
    assert "\n" not in str(err.value) and afile.read_text() == "not a folder"


def test_a_demo_record_without_a_later_setting_resumes_at_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg.demo import DemoSynthetic

    out = _demo(tmp_path, monkeypatch)
    record = json.loads((out / "demo_settings.json").read_text())
    del record["synthetic"]["background"]  # a folder made before the key existed
    (out / "demo_settings.json").write_text(json.dumps(record))
    _demo(tmp_path, monkeypatch)  # its default is the behaviour of before: no refusal
    (out / "demo_settings.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"synthetic.background: keep -> zero"):
        _demo(tmp_path, monkeypatch, synthetic=DemoSynthetic(background="zero"))
    with pytest.raises(InputError, match="background must be one of keep, zero, got 'black'"):
        DemoSynthetic(background="black")
