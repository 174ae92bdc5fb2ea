"""The bad-input matrix, part two (issue 12, findings 8, 10 and 11; docs/bad_input.md "Settings and inputs
refused up front"): input that used to be accepted silently, tracebacks where one line is promised, and
messages that misled. Each row runs the real command in-process (``synthseg.cli.run``) and asserts exit status
2, one ``synthseg <command>: error: ...`` line naming the key or file, no traceback, and nothing written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.cli import run as cli_run
from synthseg.data.manifest import read_manifest
from synthseg.errors import InputError
from tests.conftest import compose_train, tiny_snapshot, write_dataset
from tests.helpers.cohort import make_case, make_cohort

pytestmark = pytest.mark.usefixtures("single_thread")

SIDE = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input a row needs, made once: the rows never change them."""
    base = tmp_path_factory.mktemp("inputs")
    prep = write_dataset(base / "prep", num_slices=20, size=SIDE)
    brats = base / "brats"
    make_cohort(brats, 2, shape=(6, 5, 4))
    odd = write_dataset(base / "prep250", num_slices=10, size=250)
    synthetic32 = write_dataset(
        base / "syn32", num_slices=10, size=32, source="synthetic", seed=1, empty_every=0
    )
    snap = tiny_snapshot(base / "snap.pt")
    truncated = base / "truncated.pt"
    truncated.write_bytes(snap.read_bytes()[:300])
    masks_only = base / "masks_only"
    shutil.copytree(prep / "labels", masks_only / "labels")
    (base / "a_file").write_text("not a folder")
    return {
        "prep": prep, "brats": brats, "prep250": odd, "syn32": synthetic32, "snap": snap,
        "truncated": truncated, "masks_only": masks_only, "file": base / "a_file", "base": base,
    }  # fmt: skip


def _ambiguous(tmp: Path, inputs: dict[str, Path]) -> Path:
    source = tmp / "src"
    shutil.copytree(inputs["brats"], source)
    case = next((source / "HGG").iterdir())
    gz = case / f"{case.name}_t1ce.nii.gz"
    nib.save(nib.load(str(gz)), str(case / f"{case.name}_t1ce.nii"))  # the same volume, uncompressed
    return source


def _broken_link(tmp: Path, inputs: dict[str, Path]) -> Path:
    source = tmp / "src"
    shutil.copytree(inputs["brats"], source)
    (source / "HGG" / "Brats18_T_9_1").symlink_to(tmp / "unmounted_disk" / "Brats18_T_9_1")
    return source


def _manifest_edit(edit: Callable[[list[str]], list[str]], encoding: str = "utf-8") -> Callable[..., Path]:
    def make(tmp: Path, inputs: dict[str, Path]) -> Path:
        root = tmp / "edited"
        shutil.copytree(inputs["prep"], root)
        manifest = root / "manifest.csv"
        lines = manifest.read_text().splitlines()
        manifest.write_text("\n".join(edit(lines)) + "\n", encoding=encoding)
        return root

    return make


def _duplicate_id(lines: list[str]) -> list[str]:
    # Row 3 takes row 2's id: two slices under one name.
    first_id = lines[1].split(",")[0]
    cells = lines[2].split(",")
    return [*lines[:2], ",".join([first_id, *cells[1:]]), *lines[3:]]


def _short_row(lines: list[str]) -> list[str]:
    return [*lines[:2], ",".join(lines[2].split(",")[:5]), *lines[3:]]


# name: (command, overrides with {placeholders}, maker of the {made} input or None, expected parts of the line)
ROWS: dict[str, tuple[str, list[str], Callable[..., Path] | None, list[str]]] = {
    # ---- finding 8: accepted silently
    "8 count=1.5": ("generate-masks", ["checkpoint={snap}", "count=1.5", "output={out}"], None,
                    ["count must be an integer, got 1.5"]),
    "8 t1ce.nii and t1ce.nii.gz": ("prepare", ["source={made}", "output={out}", "size=8"], _ambiguous,
                                   ["_t1ce.nii.gz and ", "_t1ce.nii exist", "ambiguous"]),
    "8 broken-symlink case folder": ("prepare", ["source={made}", "output={out}", "size=8"], _broken_link,
                                     ["Brats18_T_9_1: broken symbolic link"]),
    "8 duplicate manifest ids (export)": ("export", ["source={made}", "output={out}"], _manifest_edit(_duplicate_id),
                                          ["manifest.csv: id ", "is listed twice"]),
    "8 duplicate manifest ids (filter)": ("filter", ["masks={made}", "reference={prep}", "output={out}"],
                                          _manifest_edit(_duplicate_id), ["manifest.csv: id ", "is listed twice"]),
    "8 the same source exported twice": ("export", ["source=[{prep},{prep}]", "output={out}"], None,
                                         ["source lists", "more than once"]),
    "8 prepare size=250": ("prepare", ["source={brats}", "output={out}", "size=250"], None,
                           ["size must be a power of two >= 4 (e.g. 256), got 250"]),
    # ---- finding 10: a traceback where one line is promised
    "10 short manifest row": ("export", ["source={made}", "output={out}"], _manifest_edit(_short_row),
                              ["manifest.csv: line 3 has 5 fields, the header has 16"]),
    "10 count=abc": ("generate-masks", ["checkpoint={snap}", "count=abc", "output={out}"], None,
                     ["count must be an integer, got 'abc'"]),
    "10 seed=-1": ("generate-masks", ["checkpoint={snap}", "count=4", "seed=-1", "output={out}"], None,
                   ["seed must be between 0 and 4294967295, got -1"]),
    "10 seed=-1 (prepare)": ("prepare", ["source={brats}", "output={out}", "size=8", "seed=-1"], None,
                             ["seed must be between 0 and 4294967295, got -1"]),
    # ---- finding 11: misleading messages
    "11 masks-only root to swd": ("swd", ["a={prep}", "b={masks_only}"], None,
                                  ["masks_only: no manifest.csv and no PNG files of its own", "masks_only/labels"]),
    "11 a file as source": ("prepare", ["source={file}", "output={out}", "size=8"], None,
                            ["a_file: is a file, not a folder"]),
    "11 PGAN snapshot to generate-images": ("generate-images", ["checkpoint={snap}", "masks={prep}", "output={out}"],
                                            None, ["snap.pt: this is a PGAN snapshot",
                                                   "generate-images needs a SPADE checkpoint"]),
    "11 truncated snapshot (generate-masks)": ("generate-masks", ["checkpoint={truncated}", "count=4", "output={out}"],
                                               None, ["truncated.pt: not a readable PyTorch checkpoint: truncated or corrupt (300 bytes"]),
    "11 truncated snapshot (generate-images)": ("generate-images",
                                                ["checkpoint={truncated}", "masks={prep}", "output={out}"], None,
                                                ["truncated.pt: not a readable PyTorch checkpoint: truncated or corrupt (300 bytes"]),
}  # fmt: skip


def run_cli(command: str, overrides: list[str], tmp: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``synthseg <command>``; assert exit status 2 and one error line without a traceback; return it."""
    with pytest.raises(SystemExit) as exit_info:
        cli_run(command, [*overrides, "progress=false", f"hydra.run.dir={tmp / 'hydra'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"synthseg {command}: error: "), err
    assert not any("Traceback" in line or "Error:" in line.split(": error: ")[0] for line in err), err
    return err[-1]


def written(tmp: Path) -> list[str]:
    """What the command left in its output area: nothing but a lock file beside the output."""
    area = tmp / "area"
    return sorted(str(p.relative_to(area)) for p in area.rglob("*") if not p.name.endswith(".lock"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_line_and_writes_nothing(name, inputs, tmp_path, capsys) -> None:
    command, overrides, maker, expected = ROWS[name]
    if command in ("generate-images", "generate-masks", "swd"):
        overrides = [*overrides, "device=cpu"]
    if command == "prepare":
        overrides = [*overrides, "workers=1"]
    values = {k: str(v) for k, v in inputs.items()}
    values["out"] = str(tmp_path / "area" / "output")
    if maker is not None:
        values["made"] = str(maker(tmp_path, inputs))
    (tmp_path / "area").mkdir()
    line = run_cli(command, [o.format(**values) for o in overrides], tmp_path, capsys)
    for part in expected:
        assert part in line, (part, line)
    assert written(tmp_path) == []


# ------------------------------------------------------------------------ training: checked before anything
TRAIN_ROWS = [
    ("10 lr=abc", ["model=unet", "model.optimizer.lr=abc"], "model.optimizer.lr must be a positive number, got 'abc'"),
    ("10 lr=-1", ["model=unet", "model.optimizer.lr=-1"], "model.optimizer.lr must be a positive number, got -1"),
    ("10 SPADE lr_g=0", ["model=spade", "model.optimizer_g.lr=0"], "model.optimizer_g.lr must be a positive number, got 0"),
    ("10 PGAN lr_d=abc", ["model=pgan", "model.optimizer_d.lr=abc"],
     "model.optimizer_d.lr must be a positive number, got 'abc'"),
    ("10 batch_size=abc", ["model=unet", "data.batch_size=abc"], "data.batch_size must be an integer, got 'abc'"),
    ("10 resolution=512", ["model=unet", "data.resolution=512"],
     "data.resolution=512 is larger than the 16x16 slices of data.root={prep}"),
    ("10 prepared size 250", ["model=unet", "data.root={prep250}"],
     "data.root={prep250}: slices are 250x250; training needs a power of two (re-run `synthseg prepare` with size=256"),
    ("10 synthetic 32 with real 16 at native size", ["model=unet", "+data.synthetic={root: {syn32}, count: 4}"],
     "training slices differ in size (data.root={prep} is 16x16, data.synthetic.root={syn32} is 32x32)"),
    ("10 seed=-1", ["model=unet", "seed=-1"], "seed must be an integer between 0 and 4294967295, got -1"),
    ("8 U-Net max_epochs=-1", ["model=unet", "trainer.max_epochs=-1"],
     "trainer.max_epochs=-1 would train UNetModule forever"),
    ("8 SPADE max_epochs=-1", ["model=spade", "trainer.max_epochs=-1"],
     "trainer.max_epochs=-1 would train SPADEModule forever"),
]  # fmt: skip


def fill(text: str, inputs: dict[str, Path]) -> str:
    """``text`` with ``{name}`` replaced by the path of input ``name`` (other braces are Hydra's)."""
    for key, path in inputs.items():
        text = text.replace(f"{{{key}}}", str(path))
    return text


@pytest.mark.slow
@pytest.mark.parametrize(("name", "overrides", "message"), TRAIN_ROWS, ids=[r[0] for r in TRAIN_ROWS])
def test_training_config_is_checked_before_anything(name, overrides, message, inputs, tmp_path) -> None:
    from synthseg.train import train

    overrides = [fill(o, inputs) for o in overrides]
    root = [] if any(o.startswith("data.root=") for o in overrides) else [f"data.root={inputs['prep']}"]
    cfg = compose_train([*root, "trainer.max_epochs=1", *overrides], tmp_path)
    with pytest.raises(InputError) as err:
        train(cfg)
    line = str(err.value)
    assert "\n" not in line
    assert fill(message, inputs) in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()


def test_pgan_keeps_max_epochs_minus_one(inputs, tmp_path) -> None:
    from synthseg.train import TrainSettings

    cfg = compose_train([f"data.root={inputs['prep']}", "model=pgan"], tmp_path)
    assert cfg.trainer.max_epochs == -1
    TrainSettings.from_config(cfg)  # PGAN stops itself at total_kimg: its checks pass


def test_the_train_command_prints_the_check_as_one_line(inputs, tmp_path, capsys) -> None:
    overrides = ["model=unet", f"data.root={inputs['prep']}", "model.optimizer.lr=abc",
                 f"paths.log_dir={tmp_path / 'logs'}"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli_run("train", [*overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "synthseg train: error: model.optimizer.lr must be a positive number, got 'abc'"
    assert not (tmp_path / "logs").exists()


def test_a_directory_as_ckpt_path_says_so(inputs, tmp_path) -> None:
    from synthseg.train import train

    cfg = compose_train([f"data.root={inputs['prep']}", "model=unet", f"ckpt_path={tmp_path}"], tmp_path)
    with pytest.raises(InputError, match=f"ckpt_path={tmp_path}: is a folder, not a checkpoint file"):
        train(cfg)


# ------------------------------------------------------------------------ manifests
def test_a_manifest_with_a_byte_order_mark_is_read(inputs, tmp_path) -> None:
    root = _manifest_edit(lambda lines: lines, encoding="utf-8-sig")(tmp_path, inputs)
    assert (root / "manifest.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert list(read_manifest(root).ids) == list(read_manifest(inputs["prep"]).ids)


def test_a_case_name_with_a_comma_survives_the_manifest(tmp_path) -> None:
    from synthseg.data.prepare import prepare
    from synthseg.data.prepare.settings import PrepareSettings

    make_case(tmp_path / "src", "Brats18_T,1_1", 1, shape=(6, 5, 4))
    make_case(tmp_path / "src", "Brats18_T_2_1", 2, shape=(6, 5, 4))
    settings = PrepareSettings(source=str(tmp_path / "src"), output=str(tmp_path / "out"), size=8, workers=1,
                               progress=False)  # fmt: skip
    prepare.run(settings)
    manifest = read_manifest(tmp_path / "out")
    assert "Brats18_T,1_1" in set(manifest.case)
    assert all((tmp_path / "out" / p).is_file() for p in manifest.image)


def test_masks_only_folder_as_training_data_says_what_is_missing(inputs, tmp_path) -> None:
    from synthseg.train import train

    cfg = compose_train([f"data.root={inputs['masks_only']}", "model=unet"], tmp_path)
    with pytest.raises(InputError) as err:
        train(cfg)
    line = str(err.value)
    assert (
        "manifest.csv: manifest not found" in line and "not a prepared or synthetic dataset folder" in line
    ), line


# ------------------------------------------------------------------------ prepare: header pass, skip, read-only
def test_ambiguous_case_is_skipped_with_on_error_skip(inputs, tmp_path) -> None:
    from synthseg.data.manifest import read_provenance
    from synthseg.data.prepare import prepare
    from synthseg.data.prepare.settings import PrepareSettings

    source = _ambiguous(tmp_path, inputs)
    settings = PrepareSettings(source=str(source), output=str(tmp_path / "out"), size=8, workers=1,
                               progress=False, on_error="skip")  # fmt: skip
    record = read_provenance(prepare.run(settings)) or {}
    assert [s["case"] for s in record["skipped"]] == ["Brats18_T_0_1"]
    assert "ambiguous" in record["skipped"][0]["reason"]


def test_a_volume_larger_than_size_stops_before_any_case_is_processed(inputs, tmp_path, capsys) -> None:
    # Power of two, but smaller than the 6x5 volumes: refused in the header pass, nothing written.
    (tmp_path / "area").mkdir()
    overrides = [f"source={inputs['brats']}", f"output={tmp_path / 'area' / 'out'}", "size=4", "workers=1"]
    line = run_cli("prepare", overrides, tmp_path, capsys)
    assert "in-plane size 6x5 is larger than size=4" in line
    assert written(tmp_path) == []


READ_ONLY = {
    "prepare": ["source={brats}", "size=8", "workers=1"],
    "generate-masks": ["checkpoint={snap}", "count=4", "device=cpu"],
    "export": ["source={prep}"],
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_a_read_only_parent_is_one_line(command, inputs, tmp_path, capsys, monkeypatch) -> None:
    import synthseg.utils.outputs as outputs

    locked = tmp_path / "area" / "readonly"
    locked.mkdir(parents=True)
    if os.geteuid() != 0:  # root writes anywhere: pretend the folder is read-only for it
        locked.chmod(0o555)
    else:
        real_access = os.access
        monkeypatch.setattr(outputs.os, "access", lambda p, m: Path(p) != locked and real_access(p, m))
    try:
        overrides = [fill(o, inputs) for o in READ_ONLY[command]] + [f"output={locked / 'out'}"]
        line = run_cli(command, overrides, tmp_path, capsys)
    finally:
        locked.chmod(0o755)
    assert f"cannot write into {locked} (permission denied)" in line
    assert written(tmp_path) == ["readonly"]


# ------------------------------------------------------------------------ select, NIfTI precision
def test_select_says_when_a_better_snapshot_was_deleted(tmp_path, capsys) -> None:
    from synthseg.synth import select

    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    rows = ["tick,kimg,resolution,alpha,snapshot,swd_avg"]
    for tick, swd in ((1, 5.0), (2, 3.0), (3, 4.0)):
        name = f"snapshots/network-snapshot-{tick:06d}.pt"
        (run / name).write_bytes(b"x")
        rows.append(f"{tick},{tick},16,1.0,{name},{swd}")
    (run / "swd.csv").write_text("\n".join(rows) + "\n")
    (run / "snapshots" / "network-snapshot-000002.pt").unlink()
    best = select.run(select.SelectSettings(run=run))
    assert best["tick"] == 3
    assert best["missing_better"] == [str(run / "snapshots" / "network-snapshot-000002.pt")]
    err = capsys.readouterr().err
    assert "network-snapshot-000002.pt: snapshot of a lower-SWD tick is missing on disk" in err


def test_fractional_label_values_are_printed_with_their_precision(tmp_path) -> None:
    from synthseg.data.sources.nifti import read_labels

    seg = np.zeros((4, 4, 2), np.float32)
    seg[1, 1, 0] = np.float32(4.0000005)
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(path))
    with pytest.raises(InputError, match=r"\(e\.g\. 4\.0000005\)"):
        read_labels(path)


def test_an_ambiguous_sequence_stops_only_the_runs_that_read_it(inputs, tmp_path) -> None:
    from synthseg.data.sources.brats import check_case, find_cases
    from synthseg.data.sources.releases import PRESETS

    source = tmp_path / "src"
    shutil.copytree(inputs["brats"], source)
    case_dir = next((source / "HGG").iterdir())
    t1c = nib.load(str(case_dir / f"{case_dir.name}_t1ce.nii.gz"))
    for ext in (".nii", ".nii.gz"):
        nib.save(t1c, str(case_dir / f"{case_dir.name}_flair{ext}"))
    case = next(c for c in find_cases(source, PRESETS["brats2018"]) if c.name == case_dir.name)
    check_case(case, PRESETS["brats2018"])  # a T1c-only run does not read the FLAIR
    with pytest.raises(
        InputError, match=r"_flair: both .*_flair\.nii\.gz and .*_flair\.nii exist \(ambiguous"
    ):
        check_case(case, PRESETS["brats2018"], sequences=("t1c", "flair"))
