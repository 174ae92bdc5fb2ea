"""The demo's Table 1 sweep: every row trains full_real's optimisation steps; precision and fast paths pass through."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthseg.data.manifest import read_manifest
from synthseg.demo_sweep import DemoSweep, row_slices, sweep_overrides
from tests.conftest import write_dataset


def _settings(overrides: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides)


@pytest.mark.slow
def test_every_row_trains_as_many_steps_as_full_real(tmp_path: Path) -> None:
    prepared = write_dataset(tmp_path / "prepared", num_slices=60)
    manifest = read_manifest(prepared)
    train = manifest.rows("train")
    full, reduced = len(train), int(manifest.reduced[train].sum())
    # the mixes' own counts: all real, the reduced fifth, and synthetic fractions of the full real split
    assert row_slices(prepared, "full_real") == (full, full)
    assert row_slices(prepared, "reduced_real") == (reduced, full)
    assert row_slices(prepared, "full_syn23960") == (full + round(0.920122887865 * full), full)
    assert row_slices(prepared, "reduced_syn20832") == (reduced + round(0.8 * full), full)
    sweep = DemoSweep(epochs=3)
    factor = round(full / reduced)
    assert factor > 1
    rows = {mix: _settings(sweep_overrides(sweep, *row_slices(prepared, mix))) for mix in (
        "full_real", "reduced_real", "full_syn23960", "reduced_syn20832")}  # fmt: skip
    # epochs x reduced slices = epochs of all slices; validation as often in steps as the full rows'.
    assert (rows["reduced_real"]["trainer.max_epochs"], rows["reduced_real"]["trainer.check_val_every_n_epoch"]) == (
        str(round(3 * full / reduced)), str(factor))  # fmt: skip
    assert (
        rows["full_real"]["trainer.max_epochs"],
        rows["full_real"]["trainer.check_val_every_n_epoch"],
    ) == ("3", "1")
    # about twice the slices: half the epochs (rounded), validated every epoch
    assert rows["full_syn23960"]["trainer.max_epochs"] == str(round(3 * full / (full + round(0.92 * full))))
    assert rows["full_syn23960"]["trainer.check_val_every_n_epoch"] == "1"
    fixed = DemoSweep(epochs=3, same_steps=False)
    for mix in rows:  # the paper's rule: the same epochs for every row
        assert _settings(sweep_overrides(fixed, *row_slices(prepared, mix)))["trainer.max_epochs"] == "3"


def test_precision_and_fast_paths_reach_the_runs() -> None:
    fast = _settings(sweep_overrides(DemoSweep(precision="bf16-mixed", compile=True), 100, 100))
    assert (fast["trainer.precision"], fast["model.compile"], fast["model.channels_last"]) == (
        "bf16-mixed", "true", "auto")  # fmt: skip
    measured = _settings(
        sweep_overrides(DemoSweep(), 100, 100)
    )  # the demo's default: measured on the machine
    assert (measured["trainer.precision"], measured["model.channels_last"]) == ("auto", "auto")
    plain = _settings(sweep_overrides(DemoSweep(precision="32-true", channels_last=False), 100, 100))
    assert (plain["trainer.precision"], plain["model.compile"], plain["model.channels_last"]) == (
        "32-true", "false", "false")  # fmt: skip


@pytest.mark.slow
def test_the_real_rows_train_beside_the_gans_and_the_report_waits_for_everything(tmp_path: Path) -> None:
    from synthseg import demo as pipeline

    cfg = pipeline.DemoSettings.from_config(pipeline.compose_config("demo", [f"output={tmp_path}"]))
    stages = {stage.output: stage for stage in pipeline.build_stages(cfg)}
    runs = [name for name in stages if name.startswith("table1/")]
    assert len(runs) == len(cfg.sweep.mixes) * len(cfg.sweep.classes) == 12
    for name in runs:
        synthetic = "_syn" in name
        assert stages[name].needs == (("prepared", "synthetic") if synthetic else ("prepared",)), name
        assert stages[name].budget_s == cfg.budgets.sweep * cfg.workers / len(runs)
    assert set(stages["report"].needs) >= {*runs, "synthetic", "spade_test"}
    assert [name for name, stage in stages.items() if stage.alone] == ["cohort", "prepared", "report"]
    order = list(stages)  # preferred order: the real-only rows come before the rows that wait for the GANs
    assert max(order.index(n) for n in runs if "_syn" not in n) < min(
        order.index(n) for n in runs if "_syn" in n
    )


def test_a_segmenter_spade_waits_for_the_full_real_unet_it_reads(tmp_path: Path, monkeypatch) -> None:
    from synthseg import demo as pipeline
    from synthseg.errors import InputError

    def settings(*overrides: str) -> pipeline.DemoSettings:
        return pipeline.DemoSettings.from_config(
            pipeline.compose_config("demo", [f"output={tmp_path}", *overrides])
        )

    plain = {stage.output: stage for stage in pipeline.build_stages(settings())}
    assert plain["spade"].needs == ("prepared",)  # the default: SPADE trains beside the U-Nets
    cfg = settings("spade.segmenter_weight=30")
    stages = {stage.output: stage for stage in pipeline.build_stages(cfg)}
    assert stages["spade"].needs == ("prepared", "table1/full_real_classes7")
    trained: list[list[str]] = []
    monkeypatch.setattr(pipeline, "_train", lambda overrides, folder: trained.append(overrides))
    pipeline._spade(cfg, tmp_path)
    pipeline._spade(settings(), tmp_path)
    assert trained[0][-2:] == [
        "model.lambda_seg=30.0",
        f"model.segmenter={tmp_path / 'table1/full_real_classes7'}",
    ]
    assert not any(o.startswith("model.lambda_seg") for o in trained[1])
    with pytest.raises(InputError, match="needs the full_real rows"):
        pipeline.build_stages(settings("spade.segmenter_weight=1", "sweep.mixes=[full_syn23960]"))


def _stand_in(name: str, out: Path) -> None:
    import json
    import os

    import torch

    (out / name).mkdir(parents=True)
    (out / name / "ran.json").write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))


@pytest.mark.slow
def test_the_demo_runs_its_stages_in_worker_processes_and_marks_each(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import json
    import os
    from functools import partial

    from synthseg import demo as pipeline

    stages = [
        pipeline.Stage("first", "first", partial(_stand_in, "first"), 10.0, alone=True),
        pipeline.Stage("a", "table1/a", partial(_stand_in, "table1/a"), 10.0, needs=("first",)),
        pipeline.Stage("b", "table1/b", partial(_stand_in, "table1/b"), 10.0, needs=("first",)),
        pipeline.Stage(
            "last", "last", partial(_stand_in, "last"), 10.0, needs=("table1/a", "table1/b"), alone=True
        ),
    ]
    monkeypatch.setattr(pipeline, "build_stages", lambda cfg: stages)
    monkeypatch.setattr(pipeline, "collect_results", lambda out, folders: [])
    out = tmp_path / "demo"
    pipeline.run(pipeline.DemoSettings(output=str(out), workers=2))
    ran = {s.output: json.loads((out / s.output / "ran.json").read_text()) for s in stages}
    assert ran["first"]["pid"] == ran["last"]["pid"] == os.getpid()
    assert os.getpid() not in (ran["table1/a"]["pid"], ran["table1/b"]["pid"])
    assert ran["table1/a"]["threads"] == pipeline.stage_threads(2)
    assert all((out / s.output / ".complete").is_file() for s in stages)
    printed = capsys.readouterr().out
    assert "[2/4] a: done in" in printed and "[3/4] b: done in" in printed
    # a second run finds every stage complete and runs nothing
    for s in stages:
        (out / s.output / "ran.json").unlink()
    pipeline.run(pipeline.DemoSettings(output=str(out), workers=2))
    assert not any((out / s.output / "ran.json").exists() for s in stages)


@pytest.mark.slow
def test_sweep_seeds_train_every_row_once_per_seed_and_the_report_waits_for_all(
    tmp_path: Path, monkeypatch
) -> None:
    from synthseg import demo as pipeline
    from synthseg.errors import InputError

    seeds = "sweep.seeds=[0,3]"
    cfg = pipeline.DemoSettings.from_config(pipeline.compose_config("demo", [f"output={tmp_path}", seeds]))
    stages = {stage.output: stage for stage in pipeline.build_stages(cfg)}
    runs = sorted(name for name in stages if name.startswith("table1/"))
    # the demo's own seed keeps the folder name it had before seeds; another seed gets a suffix
    assert runs == sorted(
        f"table1/{mix}_classes{classes}{suffix}"
        for mix in cfg.sweep.mixes
        for classes in cfg.sweep.classes
        for suffix in ("", "_seed3")
    )
    assert set(stages["report"].needs) >= set(runs)
    seen: list[tuple[list[str], Path]] = []
    monkeypatch.setattr(pipeline, "_train", lambda overrides, out: seen.append((list(overrides), out)))
    monkeypatch.setattr(pipeline, "row_slices", lambda prepared, mix: (100, 100))
    stages["table1/full_real_classes7_seed3"].run(tmp_path)
    stages["table1/full_real_classes7"].run(tmp_path)
    (second, second_dir), (first, first_dir) = seen
    assert "seed=3" in second and second_dir == tmp_path / "table1" / "full_real_classes7_seed3"
    assert "seed=0" in first and first_dir == tmp_path / "table1" / "full_real_classes7"
    # without sweep.seeds: one run per row at the demo's seed, as before
    plain = pipeline.DemoSettings.from_config(
        pipeline.compose_config("demo", [f"output={tmp_path}", "seed=5"])
    )
    names = [s.output for s in pipeline.build_stages(plain) if s.output.startswith("table1/")]
    assert len(names) == 12 and not any("_seed" in name for name in names)
    for bad, message in (
        ("[1,1]", "each seed once"),
        ("[0.5]", r"sweep.seeds must be a list of \(an integer\)"),
    ):
        with pytest.raises(InputError, match=message):
            pipeline.DemoSettings.from_config(
                pipeline.compose_config("demo", [f"output={tmp_path}", f"sweep.seeds={bad}"])
            )


@pytest.mark.slow
def test_a_stage_runs_again_when_a_stage_it_reads_was_made_after_it(tmp_path: Path, monkeypatch) -> None:
    import os
    from functools import partial

    from synthseg import demo as pipeline

    def stage(name: str, needs: tuple[str, ...] = (), alone: bool = False) -> object:
        return pipeline.Stage(name, name, partial(_stand_in, name), 10.0, ("ran.json",), needs, alone)

    stages = [
        stage("first", alone=True),
        stage("table1/a", ("first",)),
        stage("table1/b", ("first",)),
        stage("last", ("table1/a", "table1/b"), alone=True),
    ]
    monkeypatch.setattr(pipeline, "build_stages", lambda cfg: stages)
    monkeypatch.setattr(pipeline, "collect_results", lambda out, folders: [])
    out = tmp_path / "demo"

    def run_and_see() -> list[str]:
        for s in stages:
            (out / s.output / "ran.json").unlink(missing_ok=True)
        pipeline.run(pipeline.DemoSettings(output=str(out), workers=2))
        return [s.output for s in stages if (out / s.output / "ran.json").exists()]

    assert run_and_see() == ["first", "table1/a", "table1/b", "last"]
    # a row made again (a new seed's row in the demo): what reads it is made again after it, nothing else
    (out / "table1/a/.complete").unlink()
    assert run_and_see() == ["table1/a", "last"]
    # a resume stopped after the row and before the report: the report's marker is older than the row's
    newer = (out / "last/.complete").stat().st_mtime_ns + 1_000_000_000
    os.utime(out / "table1/a/.complete", ns=(newer, newer))
    assert run_and_see() == ["last"]
    assert run_and_see() == []


def _demo_settings(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from synthseg.demo import DemoSettings
    from synthseg.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return DemoSettings.from_config(compose("demo", overrides=overrides))


def test_the_long_profile_changes_the_gans_and_seeds_and_keeps_the_table1_recipe() -> None:
    from synthseg.demo import DemoSettings

    default, long = _demo_settings([]), _demo_settings(["profile=long"])
    # the default profile changes nothing of conf/demo.yaml
    assert default == _demo_settings(["profile=default"]) == DemoSettings(output="demo_output")
    # the recipe every row trains under stays the default demo's, so a difference comes from the pairs
    for key in ("mixes", "classes", "epochs", "same_steps", "precision", "compile", "channels_last"):
        assert getattr(long.sweep, key) == getattr(default.sweep, key), key
    assert (long.cases, long.seed, long.resolution, long.sequences) == (
        default.cases,
        default.seed,
        default.resolution,
        default.sequences,
    )
    assert long.synthetic.count == default.synthetic.count and long.spade.epochs == default.spade.epochs
    # what it changes: the GANs, three seeds, its own folder and budgets
    assert "model.generator.index_order=anatomical" in long.pgan_switches
    assert "model.total_kimg=80" in long.pgan_switches
    assert long.spade.segmenter_weight == 30 and long.synthetic == default.synthetic
    assert long.sweep.seeds == (0, 1, 2) and long.output != default.output
    assert long.budgets.pgan > default.budgets.pgan and long.budgets.sweep == 3 * default.budgets.sweep
    # a key given after the profile wins
    assert _demo_settings(["profile=long", "sweep.seeds=[4]"]).sweep.seeds == (4,)
