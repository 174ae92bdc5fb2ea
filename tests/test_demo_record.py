"""The demo's resume by stage: what each stage reads of the settings, and what a changed setting makes again."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from synthseg.errors import InputError

# A valid other value for every setting a demo's results depend on (demo_record.NOT_RESULTS excepted).
OTHER: dict[str, Any] = {
    "cases": 11,
    "seed": 1,
    "resolution": 32,
    "sequences": ("t1", "t1c"),
    "pgan_switches": ("model.augment=ada",),
    "spade.epochs": 2,
    "spade.test_images": 9,
    "spade.switches": ("model.lambda_gan=0.1",),
    "spade.segmenter_weight": 10.0,
    "synthetic.count": 3000,
    "synthetic.threshold": 400.0,
    "synthetic.min_island": 0,
    "synthetic.background": "zero",
    "sweep.mixes": ("full_real", "full_syn23960"),
    "sweep.classes": (4, 2),  # without 7: a segmenter SPADE reads another row
    "sweep.epochs": 3,
    "sweep.same_steps": False,
    "sweep.precision": "32-true",
    "sweep.compile": True,
    "sweep.channels_last": False,
    "sweep.seeds": (0, 3),
}


def _changed(cfg: Any, key: str, value: Any) -> Any:
    if "." not in key:
        return dataclasses.replace(cfg, **{key: value})
    group, inner = key.split(".")
    return dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **{inner: value})})


def _calls(pipeline: Any, monkeypatch: pytest.MonkeyPatch, stage: Any, out: Path) -> list[str]:
    """What ``stage`` hands its command (settings objects, training overrides), with the stage's needs."""
    from synthseg.data.demo import demo_cohort
    from synthseg.data.prepare import prepare
    from synthseg.report import report
    from synthseg.synth import generate_images, synthesize

    seen: list[str] = [repr(stage.needs)]

    def record(name: str, returns: Any = None) -> Any:
        return lambda *args, **kwargs: seen.append(f"{name}{args!r}{kwargs!r}") or returns

    monkeypatch.setattr(pipeline, "_train", record("train"))
    monkeypatch.setattr(pipeline, "_real_test_masks", record("test masks", out / "masks"))
    monkeypatch.setattr(pipeline, "row_slices", lambda prepared, mix: (100 if "syn" in mix else 50, 50))
    monkeypatch.setattr(pipeline, "read_provenance", lambda folder: {})
    monkeypatch.setattr(demo_cohort, "run", record("cohort", out / "cohort"))
    monkeypatch.setattr(demo_cohort, "case_folders", lambda folder: [])
    monkeypatch.setattr(prepare, "run", record("prepare"))
    monkeypatch.setattr(prepare, "summarize", lambda provenance: "")
    monkeypatch.setattr(synthesize, "run", record("synthesize"))
    monkeypatch.setattr(generate_images, "run", record("generate"))
    monkeypatch.setattr(report, "run", record("report"))
    stage.run(out)
    return seen


@pytest.mark.parametrize("segmenter", [0.0, 30.0])
def test_every_setting_a_stage_hands_its_command_is_one_it_declares_it_reads(
    segmenter: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change each setting alone: a stage whose command gets other arguments (or other needs) must declare the
    setting in ``Stage.reads``, else a resume would keep its output made with the old value."""
    from synthseg import demo as pipeline
    from synthseg.demo_record import NOT_RESULTS, _flatten, reads_any

    base = pipeline.DemoSettings(output=str(tmp_path), spade=pipeline.DemoSpade(segmenter_weight=segmenter))
    keys = set(_flatten(dataclasses.asdict(base))) - {k for k in _flatten(dataclasses.asdict(base)) if
                                                        k.split(".")[0] in NOT_RESULTS}  # fmt: skip
    assert keys == set(OTHER)  # a new setting needs a value here
    out = tmp_path / "demo"
    for folder in {f"table1/{name}" for cfg in (base, *(_changed(base, k, v) for k, v in OTHER.items()))
                   for name in pipeline._rows(cfg)}:  # fmt: skip
        (out / folder).mkdir(parents=True, exist_ok=True)  # the report reads the rows that are there
    before = {s.output: _calls(pipeline, monkeypatch, s, out) for s in pipeline.build_stages(base)}
    for key, value in OTHER.items():
        for stage in pipeline.build_stages(_changed(base, key, value)):
            if stage.output in before and _calls(pipeline, monkeypatch, stage, out) != before[stage.output]:
                assert reads_any(stage, [key]), f"{stage.name} reads {key} but does not declare it"
    # and the declarations are no wider than that: the report is the only stage the seeds change
    stages = pipeline.build_stages(base)
    assert [s.output for s in stages if reads_any(s, ["sweep.seeds"])] == ["report"]
    assert [s.output for s in stages if s.remake] == ["report"]


def _stand_in(name: str, out: Path) -> None:
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "made.txt").write_text(name)
    with open(out.parent / "made.log", "a") as log:  # outside the stage's folder, which a re-make clears
        log.write(f"{name}\n")


def _made(out: Path, names: list[str]) -> dict[str, int]:
    made = (out.parent / "made.log").read_text().split()
    return {name: made.count(name) for name in names}


def test_update_makes_again_the_stages_a_change_reaches_and_a_stop_midway_resumes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg import demo as pipeline
    from synthseg.demo_record import _names
    from synthseg.demo_sweep import DemoSweep

    def stage(name: str, needs: tuple[str, ...], reads: tuple[str, ...], remake: bool = False) -> Any:
        return pipeline.Stage(name, name, partial(_stand_in, name), 10.0, ("made.txt",), needs, reads=reads,
                              remake=remake)  # fmt: skip

    stages = [
        stage("cohort", (), ("cases",)),
        stage("pgan", ("cohort",), ("pgan_switches",)),
        stage("spade", ("cohort",), ("spade",)),
        stage("synthetic", ("pgan", "spade"), ("synthetic",)),
        stage("report", ("synthetic",), ("sweep.seeds",), remake=True),
    ]
    names = [s.output for s in stages]
    monkeypatch.setattr(pipeline, "build_stages", lambda cfg: stages)
    monkeypatch.setattr(pipeline, "collect_results", lambda out, folders: [])
    out = tmp_path / "demo"

    def demo(**settings: Any) -> dict[str, int]:
        pipeline.run(pipeline.DemoSettings(output=str(out), workers=1, **settings))
        return _made(out, names)

    assert demo() == dict.fromkeys(names, 1)
    # a setting only the report reads: the report is made again without asking
    assert demo(sweep=DemoSweep(seeds=(0, 1))) == {**dict.fromkeys(names, 1), "report": 2}
    ada = ("model.augment=ada",)
    with pytest.raises(InputError, match=r"change the completed stages pgan, synthetic: update=true") as err:
        demo(sweep=DemoSweep(seeds=(0, 1)), pgan_switches=ada)
    assert "report" not in str(err.value) and "\n" not in str(err.value)
    rows = [pipeline.Stage(f"row {n}", f"table1/{n}", print, 1.0) for n in "ab"]
    assert _names([stages[1], *rows]) == "pgan, 2 runs in table1/"  # the sweep's runs counted, not listed
    assert _made(out, names) == {**dict.fromkeys(names, 1), "report": 2}  # refused: nothing made again
    # update=true: the PGAN and what reads it; cohort and SPADE stay
    made = demo(sweep=DemoSweep(seeds=(0, 1)), pgan_switches=ada, update=True)
    assert made == {"cohort": 1, "pgan": 2, "spade": 1, "synthetic": 2, "report": 3}
    # a run with update stopped before the synthetic stage: the next resume, without update, finishes it
    monkeypatch.setattr(stages[3], "run", lambda out: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        demo(sweep=DemoSweep(seeds=(0, 1)), pgan_switches=(), update=True)
    monkeypatch.setattr(stages[3], "run", partial(_stand_in, "synthetic"))
    made = demo(sweep=DemoSweep(seeds=(0, 1)))
    assert made == {"cohort": 1, "pgan": 3, "spade": 1, "synthetic": 3, "report": 4}
    assert json.loads((out / "demo_settings.json").read_text())["pgan_switches"] == []


def test_the_report_and_the_summary_read_only_the_rows_of_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg import demo as pipeline
    from synthseg.demo_sweep import DemoSweep, collect_results
    from synthseg.report import report
    from synthseg.report.settings import ReportSettings

    cfg = pipeline.DemoSettings(output=str(tmp_path), sweep=DemoSweep(mixes=("full_real",), classes=(7, 2)))
    for row in ("full_real_classes7", "full_real_classes2", "full_real_classes4", "full_real_classes7_seed2"):
        (tmp_path / "table1" / row).mkdir(parents=True)  # the last two: rows of earlier settings
        results = {"config": {"mix_name": "full_real", "data": {"classes": int(row[17])}, "seed": 0},
                   "data_stats": {}, "metrics": {"test/dice_error": 0.1, "test/dice_error_fixed": 0.1}}  # fmt: skip
        (tmp_path / "table1" / row / "results.json").write_text(json.dumps(results))
    seen: list[ReportSettings] = []
    monkeypatch.setattr(report, "run", seen.append)
    pipeline._report(cfg, tmp_path)
    assert seen[0].include == ("full_real_classes7", "full_real_classes2")
    rows = collect_results(tmp_path, pipeline._rows(cfg))
    assert [row["classes"] for row in rows] == [2, 7]
