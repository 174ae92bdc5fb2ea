"""The bad-input matrix (docs/bad_input.md): rows not already covered by a stage's own tests. Each bad input
gives one line that names the file (or the setting) and the problem, and leaves no half-written output."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from synthseg.cli import run as cli_run
from synthseg.data.datamodule import BraTSDataModule
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import write_image16, write_label8
from synthseg.errors import InputError
from synthseg.synth import export, generate_masks
from synthseg.synth import filter as zfilter
from synthseg.synth.generate_masks import GenerateMasksSettings
from synthseg.train import train
from tests.conftest import compose_train, tiny_snapshot, write_dataset

SIDE = 16


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("clean") / "prepared", num_slices=20, size=SIDE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filter's reference: another dataset than the masks (a copy of one as the other is refused)."""
    return write_dataset(tmp_path_factory.mktemp("reference") / "prepared", num_slices=20, size=SIDE, seed=3)


def no_dataset_left(raw: Path) -> bool:
    """Nothing but the dataset folder's lock file (which stays beside it by design) in nnUNet_raw."""
    return [p.name for p in raw.iterdir() if not p.name.endswith(".lock")] == []


def one_line(err: BaseException, *needles: str) -> str:
    line = str(err)
    assert "\n" not in line.strip(), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial outputs anywhere below ``folder``."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".partial", ".old", ".partial-resume"))]


# ------------------------------------------------------------------------ prepared-dataset PNG files
def _victim(root: Path, column: str) -> Path:
    return root / getattr(read_manifest(root), column)[2]


CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (manifest column of the damaged file, damage, expected problem)
    "unreadable image": ("image", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "not a readable PNG"),
    "truncated label": ("label", lambda p: p.write_bytes(p.read_bytes()[:40]), "not a readable PNG"),
    "zero-byte label": ("label", lambda p: p.write_bytes(b""), "not a readable PNG"),
    "8-bit image": ("image", lambda p: write_label8(p, np.zeros((SIDE, SIDE), np.uint8)), "expected a 16-bit PNG, found 8-bit"),
    "16-bit label": ("label", lambda p: write_image16(p, np.zeros((SIDE, SIDE), np.uint16)), "expected a 8-bit PNG, found 16-bit"),
    "label of another size": ("label", lambda p: write_label8(p, np.zeros((SIDE, SIDE + 4), np.uint8)), "expected size 16x16, found 16x20"),
    "image of another size": ("image", lambda p: write_image16(p, np.zeros((SIDE - 4, SIDE), np.uint16)), "12x16"),
    "label value 9": ("label", lambda p: write_label8(p, np.full((SIDE, SIDE), 9, np.uint8)), "label value 9"),
    "missing label": ("label", lambda p: p.unlink(), "file not found"),
}  # fmt: skip


def _damaged(clean: Path, tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    root = tmp_path / "prepared"
    shutil.copytree(clean, root)
    column, damage, problem = CORRUPTIONS[name]
    victim = _victim(root, column)
    damage(victim)
    return root, victim, problem


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_training_data_module_names_the_bad_file_and_leaves_no_cache(clean, tmp_path, name) -> None:
    root, victim, problem = _damaged(clean, tmp_path, name)
    with pytest.raises(InputError) as err:
        BraTSDataModule(str(root), batch_size=2, num_workers=0).setup("fit")
    line = one_line(err.value, problem)
    # The size error of an image can name its label partner instead; the pair is what is named.
    assert victim.stem in line, line
    assert not (root / "cache").exists() and leftovers(root) == []


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "image of another size"])
def test_export_names_the_bad_file_and_writes_nothing(clean, tmp_path, name) -> None:
    root, victim, problem = _damaged(clean, tmp_path, name)
    if name == "8-bit image":  # the export reads only the image's header
        problem = "expected a 16-bit single-channel grayscale PNG"
    with pytest.raises(InputError) as err:
        export.run(export.ExportSettings(source=[root], output=tmp_path / "raw", progress=False))
    one_line(err.value, problem, victim.name)
    assert not (tmp_path / "raw").exists() or no_dataset_left(tmp_path / "raw")


def test_export_image_of_another_size_names_the_pair(clean, tmp_path) -> None:
    root, victim, _ = _damaged(clean, tmp_path, "image of another size")
    with pytest.raises(InputError) as err:
        export.run(export.ExportSettings(source=[root], output=tmp_path / "raw", progress=False))
    one_line(err.value, victim.name, "expected size 12x16, found 16x16")
    assert not (tmp_path / "raw").exists() or no_dataset_left(tmp_path / "raw")


@pytest.mark.parametrize("name", [n for n, c in CORRUPTIONS.items() if c[0] == "label"])
def test_filter_names_the_bad_mask_and_writes_nothing(clean, reference, tmp_path, name) -> None:
    root, victim, problem = _damaged(clean, tmp_path, name)
    if name == "label value 9":
        problem = "label value 9 is not one of the 7 classes"
    with pytest.raises(InputError) as err:
        zfilter.run(
            zfilter.FilterSettings(
                masks=root,
                reference=reference,
                output=tmp_path / "filtered",
                threshold_quantile=1.0,
                progress=False,
            )
        )
    one_line(err.value, problem, victim.name)
    assert not (tmp_path / "filtered").exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------ config values that cannot work
TRAIN_CONFIGS = [
    (["model=unet", "data.classes=3"], "data.classes must be one of 2, 4, 7, got 3"),
    (["model=unet", "data.resolution=12"], "data.resolution must be a power of two >= 4, got 12"),
    (["model=unet", "data.real=-5"], "data.real must not be negative, got -5"),
    (["model=unet", "data.batch_size=0"], "data.batch_size must be positive, got 0"),
    (["model=pgan", "model.generator.resolution=48", "model.generator.fmap_base=16"],
     "model.generator: resolution must be a power of two from 8 to 1024, got 48"),
    (["model=unet", "+data.synthetic={root: SYN, count: -2}"], "data.synthetic.count must not be negative, got -2"),
    (["model=unet", "+data.synthetic={root: SYN, count: 21}"],
     "data.synthetic.count=21 asks for 21 slices, but only 20"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), TRAIN_CONFIGS)
def test_training_settings_that_cannot_work_are_one_line(clean, tmp_path, overrides, message) -> None:
    synthetic = tmp_path / "synthetic"
    if any("SYN" in o for o in overrides):
        write_dataset(synthetic, num_slices=20, size=SIDE, source="synthetic", seed=1, empty_every=0)
    overrides = [o.replace("SYN", str(synthetic)) for o in overrides]
    width = ["model.net.base_width=2"] if "model=unet" in overrides else []
    cfg = compose_train([f"data.root={clean}", *width, "trainer.max_epochs=1", *overrides], tmp_path)
    with pytest.raises(InputError) as err:
        train(cfg)
    one_line(err.value, message)
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_train_command_prints_one_line_for_a_setting_that_cannot_work(clean, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_run("train", ["model=unet", f"data.root={clean}", "data.classes=5", f"paths.log_dir={tmp_path}",
                          f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "synthseg train: error: data.classes must be one of 2, 4, 7, got 5"
    assert not any("Traceback" in line or "InstantiationException" in line for line in err)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -5}, "count must be a positive number of masks, got -5"),
        ({"count": 4, "size": 48}, "size=48: must be a power of two"),
        ({"count": 4, "batch_size": -1}, "batch_size must be positive, got -1"),
    ],
)
def test_generate_masks_settings_that_cannot_work(tmp_path, kwargs, message) -> None:
    snap = tiny_snapshot(tmp_path / "snap.pt")
    with pytest.raises(InputError) as err:
        generate_masks.run(
            GenerateMasksSettings(checkpoint=snap, output=tmp_path / "masks", progress=False, **kwargs)
        )
    one_line(err.value, message)
    assert not any(p.name.startswith(("masks", ".masks")) for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit -1 is not between 0 and"),
        ({"split": "nonsense"}, "unknown split"),
    ],
)
def test_export_settings_that_cannot_work(clean, tmp_path, kwargs, message) -> None:
    with pytest.raises(InputError) as err:
        export.run(export.ExportSettings(source=[clean], output=tmp_path / "raw", progress=False, **kwargs))
    one_line(err.value, message)
    assert not (tmp_path / "raw").exists() or no_dataset_left(tmp_path / "raw")


def test_filter_manifest_naming_a_missing_file(clean, reference, tmp_path) -> None:
    root = tmp_path / "masks"
    shutil.copytree(clean, root)
    victim = _victim(root, "label")
    victim.unlink()
    with pytest.raises(InputError) as err:
        zfilter.run(
            zfilter.FilterSettings(
                masks=root,
                reference=reference,
                output=tmp_path / "filtered",
                threshold_quantile=1.0,
                progress=False,
            )
        )
    one_line(err.value, victim.name)
    assert not (tmp_path / "filtered").exists() and leftovers(tmp_path) == []


# ------------------------------------------------ every check before any work (issue 24, class 3)
def _copy_of(clean: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy_of_prepared"
    shutil.copytree(clean, copy)
    return copy


# name: (overrides with {clean}, {copy} and {syn} placeholders, expected part of the line)
CHECKED_FIRST = {
    "max_epochs=0": (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    "max_steps=0": (["+trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
    "the real dataset again as synthetic": (["+data.synthetic={root: {clean}, count: 4}"],
                                            "data.synthetic.root={clean} is the same folder as data.root={clean}"),
    "a copy of the real dataset as synthetic": (["+data.synthetic={root: {copy}, count: 4}"],
                                                "holds the same manifest.csv as data.root={clean} (a copy"),
    "lr=nan": (["model.optimizer.lr=nan"], "model.optimizer.lr must be a finite number, got nan"),
    "PGAN total_kimg=inf": (["model=pgan", "model.total_kimg=inf"], "model.total_kimg must be a finite number, got inf"),
    "batch_size=0": (["data.batch_size=0"], "data.batch_size must be positive, got 0"),
    "a deleted image": (["data.root={damaged}"], "file not found"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CHECKED_FIRST))
def test_training_checks_its_inputs_before_any_work(name, clean, tmp_path) -> None:
    overrides, message = CHECKED_FIRST[name]
    damaged = _copy_of(clean, tmp_path / "d")
    (damaged / read_manifest(damaged).image[3]).unlink()
    values = {"clean": str(clean), "copy": str(_copy_of(clean, tmp_path)), "damaged": str(damaged)}
    overrides = [o.format(**values) if "{" in o and "root:" not in o else _fill(o, values) for o in overrides]
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=unet", "model.net.base_width=2"]
    root = [] if any(o.startswith("data.root=") for o in overrides) else [f"data.root={clean}"]
    cfg = compose_train([*root, *model, "trainer.max_epochs=1", *overrides], tmp_path)
    with pytest.raises(InputError) as err:
        train(cfg)
    one_line(err.value, _fill(message, values))
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"{{{key}}}", value)
    return text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": float("nan")}, "threshold must be a finite number, got nan"),
        ({"threshold": float("inf")}, "threshold must be a finite number, got inf"),
        ({"threshold": -5.0}, "threshold must be non-negative, got -5.0"),
        ({"threshold_quantile": float("nan")}, "threshold_quantile must be a finite number, got nan"),
    ],
)
def test_filter_thresholds_that_cannot_work(clean, reference, tmp_path, kwargs, message) -> None:
    # threshold=nan used to keep 0 of 64 masks and write "threshold": NaN (not JSON), exit 0.
    with pytest.raises(InputError) as err:
        zfilter.run(
            zfilter.FilterSettings(
                masks=clean, reference=reference, output=tmp_path / "out", progress=False, **kwargs
            )
        )
    one_line(err.value, message)
    assert not (tmp_path / "out").exists()


def test_filter_refuses_a_dataset_with_a_deleted_image(clean, reference, tmp_path) -> None:
    # It used to exit 0 with no images/ folder at all: every image dropped because one was missing.
    root = _copy_of(clean, tmp_path)
    victim = root / read_manifest(root).image[5]
    victim.unlink()
    with pytest.raises(InputError) as err:
        zfilter.run(
            zfilter.FilterSettings(masks=root, reference=reference, output=tmp_path / "out", progress=False)
        )
    one_line(err.value, f"{victim}: file not found (named by {root / 'manifest.csv'})")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_filter_refuses_the_reference_as_its_masks(clean, tmp_path) -> None:
    with pytest.raises(InputError) as err:
        zfilter.run(
            zfilter.FilterSettings(masks=clean, reference=clean, output=tmp_path / "o", progress=False)
        )
    one_line(err.value, f"reference={clean} is the same folder as masks={clean}")


def test_synthesize_refuses_a_mask_size_its_spade_cannot_paint_before_any_mask(tmp_path) -> None:
    # mask_size=64 with a SPADE trained at 32: refused only after every mask was generated and filtered.
    from synthseg.synth import synthesize
    from tests.conftest import tiny_spade_snapshot

    reference = write_dataset(tmp_path / "prepared", num_slices=10, size=64)
    settings = synthesize.SynthesizeSettings(
        pgan=tiny_snapshot(tmp_path / "pgan.pt", size=64), spade=tiny_spade_snapshot(tmp_path / "spade.pt"),
        reference=reference, count=6, output=tmp_path / "synthetic", mask_size=64, device="cpu", progress=False,
    )  # fmt: skip
    with pytest.raises(InputError) as err:
        synthesize.run(settings)
    one_line(err.value, "mask_size=64: the SPADE", "paints 32x32 label maps; set mask_size=32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pgan.pt", "prepared", "spade.pt"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["data.resolution=8"], "trained with data.resolution=16, the config asks for data.resolution=8"),
        (["data.batch_size=2"], "trained with data.batch_size=4, the config asks for data.batch_size=2"),
        (["data.classes=4"], "trained with data.classes=7, the config asks for data.classes=4"),
    ],
)
def test_a_resume_that_changes_what_shaped_training_is_refused(clean, tmp_path, change, message) -> None:
    """``ckpt_path=last data.resolution=64 data.batch_size=4`` after a run at 32 / 8 trained at 32 / 8 while its
    config and results.json said 64 / 4, exit 0."""
    base = [f"data.root={clean}", "model=unet", "model.net.base_width=2", "data.batch_size=4",
            "data.resolution=16", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1", "test=false", "logger=csv"]  # fmt: skip
    train(compose_train(base, tmp_path / "first"))
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(InputError) as err:
        train(compose_train([*base, f"ckpt_path={last}", *change], tmp_path / "second"))
    one_line(err.value, f"ckpt_path={last}: the checkpoint was {message}")
    assert not (tmp_path / "second" / "run").exists()
    train(compose_train([*base, f"ckpt_path={last}", "trainer.max_epochs=2"], tmp_path / "third"))  # resumes


def test_a_resume_from_a_checkpoint_without_the_record_compares_what_its_data_module_saved(
    clean, tmp_path
) -> None:
    import torch

    old = tmp_path / "old.ckpt"  # a 0.2 checkpoint: no synthseg_training record, the sampler's state
    torch.save({"state_dict": {}, "BraTSDataModule": {"epoch": 0, "position": 8, "batch_size": 8,
                                                      "resolution": 32}}, old)  # fmt: skip
    cfg = compose_train([f"data.root={clean}", "model=unet", "data.batch_size=4", "data.resolution=16",
                         f"ckpt_path={old}"], tmp_path)  # fmt: skip
    with pytest.raises(InputError) as err:
        train(cfg)
    one_line(err.value, "trained with data.batch_size=8, the config asks for data.batch_size=4")


# ------------------------------------------------ one line for what Hydra or the OS reports (issue 24, class 4)
def _cli(command: str, overrides: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run ``synthseg <command>`` in this process; its exit status and its stderr lines."""
    try:
        cli_run(command, overrides)
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()


def _one_error_line(code: int, err: list[str], command: str, *needles: str) -> str:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"synthseg {command}: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")

# name: (command, overrides with {clean}/{snap}/{tmp}, expected parts of the line)
HYDRA_AND_OS_ROWS = {
    "an unset environment variable": ("prepare", ["source={tmp}", "output=${{oc.env:SCRATCH_NOT_SET}}/prep"],
                                      ["output: cannot resolve its value", "'SCRATCH_NOT_SET' not found"]),
    "an interpolation of itself": ("generate-masks", ["checkpoint={snap}", "output={tmp}/m", "count=${{count}}"],
                                   ["count: cannot resolve its value", "Recursive interpolation"]),
    "a misspelt key without +": ("filter", ["masks={clean}", "reference={clean}", "output={tmp}/f", "colour=red"],
                                 ["unknown setting(s): colour"]),
    "a misspelt training key": ("train", ["data.root={clean}", "colour=red"], ["unknown setting(s): colour"]),
    "a config file that does not exist": ("train", ["data.root={clean}", "trainer=nonexist"],
                                          ["Could not find 'trainer/nonexist'", "choose one of: cpu,"]),
    "an unreadable override": ("prepare", ["source={tmp}", "output={tmp}/p", "size=[1,"],
                               ["cannot read the command line"]),
    "an unknown device": ("generate-images", ["checkpoint={snap}", "masks={clean}", "output={tmp}/g",
                                              "device=banana"], ["device='banana': not a device name"]),
    "PGAN total_kimg=inf": ("train", ["data.root={clean}", "model=pgan", "model.total_kimg=inf"],
                            ["model.total_kimg must be a finite number, got inf"]),
    "data.batch_size=0 (no run folder)": ("train", ["data.root={clean}", "data.batch_size=0"],
                                         ["data.batch_size must be positive, got 0"]),
}  # fmt: skip
GPU_ROWS = {
    "swd device=cuda": ("swd", ["a={clean}", "b={clean}", "device=cuda"], ["device=cuda: no CUDA GPU on this machine"]),
    "trainer=gpu": ("train", ["data.root={clean}", "trainer=gpu"], ["trainer.accelerator=gpu: no CUDA GPU"]),
}  # fmt: skip


@pytest.mark.parametrize("name", [*HYDRA_AND_OS_ROWS, *(pytest.param(n, marks=NO_GPU) for n in GPU_ROWS)])
def test_hydra_and_device_mistakes_are_one_line_before_anything_is_written(
    name, clean, tmp_path, capsys, monkeypatch
) -> None:
    command, overrides, expected = {**HYDRA_AND_OS_ROWS, **GPU_ROWS}[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    snap = tiny_snapshot(tmp_path / "snap.pt")
    values = {"clean": clean, "snap": snap, "tmp": tmp_path}
    extra = [f"paths.log_dir={tmp_path / 'logs'}"] if command == "train" else []
    code, err = _cli(command, [o.format(**values) for o in overrides] + extra, capsys)
    _one_error_line(code, err, command, *expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.pt"]  # no run, log or output folder


def test_a_240_character_output_name_works_and_a_256_byte_one_is_one_line(clean, reference, tmp_path) -> None:
    # The temporary name added 18 characters: ENAMETOOLONG after all the work.
    long = tmp_path / ("f" * 240)
    zfilter.run(zfilter.FilterSettings(masks=clean, reference=reference, output=long, progress=False))
    assert (long / "filter.json").is_file()
    with pytest.raises(InputError) as err:
        zfilter.run(
            zfilter.FilterSettings(
                masks=clean, reference=reference, output=tmp_path / ("g" * 256), progress=False
            )
        )
    one_line(err.value, "is 256 bytes long; file systems allow 255")


def test_an_os_error_a_user_can_fix_is_one_line(clean, reference, tmp_path, capsys, monkeypatch) -> None:
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f" / "labels" / "x.png"))

    monkeypatch.setattr(zfilter, "_write_kept", full)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    args = [f"masks={clean}", f"reference={reference}", f"output={tmp_path / 'f'}", "progress=false"]
    code, err = _cli("filter", args, capsys)
    _one_error_line(code, err, "filter", "labels/x.png: no space left on the disk")
    assert not (tmp_path / "f").exists() and leftovers(tmp_path) == []


def test_demo_cohort_estimates_its_disk_space_first(tmp_path, capsys, monkeypatch) -> None:
    import shutil as shutil_module
    from collections import namedtuple

    import synthseg.utils.atomic as atomic

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    assert shutil_module.disk_usage is atomic.shutil.disk_usage
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    code, err = _cli("demo-cohort", [f"output={tmp_path / 'cohort'}", "cases=2", "progress=false"], capsys)
    _one_error_line(code, err, "demo-cohort", "not enough disk space for 2 demo cases")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` read-only for this user (as root, which writes anywhere, by what os.access reports)."""
    import os

    import synthseg.data.cache as cache

    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int) -> bool:
        if mode & os.W_OK and (Path(path) == folder or folder in Path(path).parents):
            return False
        return real_access(path, mode)

    monkeypatch.setattr(cache.os, "access", access)


@pytest.mark.slow
def test_a_read_only_dataset_trains_with_its_cache_in_the_user_cache_folder(
    clean, tmp_path, capsys, monkeypatch, user_cache
) -> None:
    """``train`` and ``quality`` died on ``<dataset>/.cache.lock`` with [Errno 30]."""
    from synthseg.metrics.quality import QualitySettings, measure

    data = _copy_of(clean, tmp_path)
    shutil.rmtree(data / "cache", ignore_errors=True)  # a dataset with no cache of its own
    synthetic = write_dataset(tmp_path / "synthetic", num_slices=6, size=SIDE, source="synthetic", seed=4)
    _read_only(data, monkeypatch)
    before = {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    try:
        cfg = compose_train([f"data.root={data}", "model=unet", "model.net.base_width=2", "trainer.max_epochs=1",
                             "test=false"], tmp_path)  # fmt: skip
        train(cfg)
        options = {"extractor": None, "pairs": 5, "kid_subsets": 2, "search_size": 8, "device": "cpu"}
        measure(QualitySettings(synthetic=synthetic, real=data, output=tmp_path / "quality", **options))
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()} == before  # nothing written there
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "read-only for this user" in line]
    assert len(lines) == 1 and str(user_cache / "slices") in lines[0], err
    assert list((user_cache / "slices").glob("copy_of_prepared-*/cache/images.npy"))


def test_a_read_only_dataset_with_a_current_cache_of_its_own_uses_it(clean, tmp_path, monkeypatch) -> None:
    from synthseg.data.cache import build_cache, cache_folder

    data = _copy_of(clean, tmp_path)
    build_cache(data, progress=False)
    _read_only(data, monkeypatch)
    before = {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    try:
        assert cache_folder(data) == data / "cache"
        BraTSDataModule(str(data), batch_size=2).setup("fit")
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
