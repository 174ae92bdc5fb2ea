"""The one entry-point pattern: every command's typed settings are checked once, before any work or write, and a
bad value is one line naming the key."""

from __future__ import annotations

import importlib
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from synthseg.cli import COMMANDS
from synthseg.cli import main as cli_main
from synthseg.errors import InputError
from synthseg.paths import config_dir
from synthseg.settings import Settings

# command -> its Settings class, "module:Class" (docs/contributing.md: YAML -> settings -> main -> run).
SETTINGS = {
    "train": "synthseg.train:TrainSettings",
    "demo": "synthseg.demo:DemoSettings",
    "demo-cohort": "synthseg.data.demo.demo_cohort:DemoCohortSettings",
    "prepare": "synthseg.data.prepare.prepare:PrepareSettings",
    "swd": "synthseg.metrics.swd:SWDSettings",
    "select": "synthseg.synth.select:SelectSettings",
    "generate-masks": "synthseg.synth.generate_masks:GenerateMasksSettings",
    "generate-images": "synthseg.synth.generate_images:GenerateImagesSettings",
    "filter": "synthseg.synth.filter:FilterSettings",
    "synthesize": "synthseg.synth.synthesize:SynthesizeSettings",
    "export": "synthseg.synth.export:ExportSettings",
    "report": "synthseg.report.report:ReportSettings",
    "quality": "synthseg.metrics.quality:QualitySettings",
}


def _settings_class(command: str) -> type[Settings]:
    module, _, name = SETTINGS[command].partition(":")
    return getattr(importlib.import_module(module), name)


def _compose(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


def test_every_command_has_settings() -> None:
    assert set(SETTINGS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_every_command_is_main_then_run_of_its_settings(command: str) -> None:
    """One shape: ``main(cfg)`` builds the settings and hands the object to ``run(settings)``."""
    import inspect

    module = importlib.import_module(COMMANDS[command][1].partition(":")[0])
    cls = _settings_class(command)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert callable(module.main) and callable(module.run)
    parameters = list(inspect.signature(module.run).parameters.values())
    assert [p.name for p in parameters] == ["settings"], command
    assert parameters[0].annotation in (cls.__name__, cls), command
    assert "from_config" in inspect.getsource(module.main) and "run(" in inspect.getsource(module.main)


@pytest.mark.parametrize("command", sorted(set(SETTINGS) - {"train"}))
def test_python_callers_get_the_yaml_defaults(command: str) -> None:
    """A settings object built in Python (the demo's stages, synthesize's) is the command run with its YAML."""
    cls = _settings_class(command)
    given = {key: "X" for key in cls.REQUIRED}
    if "count" in given:
        given["count"] = 4
    composed = cls.from_config(_compose(COMMANDS[command][0], [f"{k}={v}" for k, v in given.items()]))
    assert cls(**given) == composed


def test_the_len_resolver_is_registered_once_and_again_after_a_clear() -> None:
    from synthseg.settings import register_resolvers

    register_resolvers()
    register_resolvers()  # idempotent
    node = OmegaConf.create({"data": {"sequences": ["t1", "t2"]}, "n": "${len:${data.sequences}}"})
    assert node.n == 2
    OmegaConf.clear_resolver("len")  # as a test or an app clearing it would
    register_resolvers()
    assert OmegaConf.create({"s": "t1c", "n": "${len:${s}}"}).n == 1  # a bare string is one sequence


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_the_yaml_and_the_settings_hold_the_same_keys(command: str) -> None:
    cls = _settings_class(command)
    cfg = _compose(COMMANDS[command][0])
    assert set(cfg.keys()) == {f.name for f in fields(cls)}
    # Every key the YAML leaves as ??? is one the settings require, named in the error.
    missing = {key for key in cfg.keys() if OmegaConf.is_missing(cfg, key)}
    assert missing <= set(cls.REQUIRED)


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_the_yaml_defaults_pass_the_checks(command: str, tmp_path: Path) -> None:
    cls = _settings_class(command)
    cfg = _compose(COMMANDS[command][0], [f"{key}={tmp_path}" for key in cls.REQUIRED if key != "count"])
    if command == "train":  # the run folder is Hydra's; the config alone names none
        cfg.paths.output_dir = str(tmp_path / "run")
    if "count" in cls.REQUIRED:
        cfg.count = 4
    settings = cls.from_config(cfg)
    assert isinstance(settings, cls)


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        ("filter", ["masks=M", "reference=R", "output=O", "threshold=high"], "threshold must be a number, got 'high'"),
        ("filter", ["masks=M", "reference=R", "output=O", "zero_std=zero"], "zero_std must be one of ('floor', 'exclude')"),
        ("filter", ["reference=R", "output=O"], "masks=DIR is required"),
        ("swd", ["a=A", "b=B", "num_images=0"], "num_images must be positive, got 0"),
        ("swd", ["a=A", "b=B", "progress=maybe"], "progress must be true/false, got 'maybe'"),
        ("prepare", ["source=S", "output=O", "workers=0"], "workers must be at least 1, got 0"),
        ("prepare", ["source=S", "output=O", "size=big"], "size must be an integer, got 'big'"),
        ("generate-masks", ["checkpoint=C", "output=O", "count=-5"], "count must be a positive number of masks, got -5"),
        ("generate-images", ["checkpoint=C", "masks=M", "output=O", "batch_size=0"], "batch_size must be positive, got 0"),
        ("export", ["source=S", "output=O", "classes=3"], "classes"),
        ("export", ["source=S", "output=O", "limit=[1,x]"], "limit must be"),
        ("report", ["runs=R", "output=O", "bootstrap.level=2"], "bootstrap.level must be in (0, 1), got 2.0"),
        ("report", ["runs=R", "output=O", "figures.pairs=x"], "figures.pairs must be an integer, got 'x'"),
        ("demo", ["sweep.classes=[7,3]"], "sweep.classes must be one of 2, 4, 7, got 3"),
        ("demo", ["+colour=red"], "unknown setting(s): colour"),
        ("synthesize", ["pgan=P", "spade=S", "reference=R", "output=O", "reference_split=val"], "reference_split"),
        ("select", ["run=R", "full_resolution_only=1"], "full_resolution_only must be true/false, got 1"),
        ("demo-cohort", ["output=O", "cases=many"], "cases must be an integer, got 'many'"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_one_line_naming_the_key(command: str, overrides: list[str], message: str) -> None:
    cls = _settings_class(command)
    with pytest.raises(InputError) as err:
        cls.from_config(_compose(COMMANDS[command][0], overrides))
    line = str(err.value)
    assert "\n" not in line and message in line, line


def test_a_bad_setting_stops_the_command_before_it_writes(tmp_path: Path, capsys, monkeypatch) -> None:
    # The masks folder does not exist, but the bad threshold is what is reported: settings come first.
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["filter", f"masks={tmp_path / 'nope'}", f"reference={tmp_path}", f"output={out}", "montage=-1"]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "synthseg filter: error: montage must be non-negative, got -1"
    assert not out.exists()


def test_python_callers_may_give_some_keys() -> None:
    from synthseg.report.report import ReportSettings

    settings = ReportSettings.from_config(
        {"runs": "R", "output": "O", "bootstrap": {"samples": 5}}, partial=True
    )
    assert settings.bootstrap.samples == 5 and settings.bootstrap.level == 0.95 and settings.figures.enabled
    with pytest.raises(InputError, match="setting bootstrap is missing"):
        ReportSettings.from_config({"runs": "R", "output": "O", "overwrite": True, "figures": {}})


def test_command_help_lists_the_command_keys_not_the_training_groups(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    out = capsys.readouterr().out
    assert "dataset_id: 501" in out
    for group in ("trainer", "model", "experiment", "callbacks", "Configuration groups"):
        assert group not in out, group


def test_command_configs_share_one_hydra_block() -> None:
    for name, _ in COMMANDS.values():
        text = (config_dir() / f"{name}.yaml").read_text()
        if name == "train":
            continue
        assert "- hydra: command" in text and "\nhydra:" not in text, name


def test_resolve_device_is_the_one_device_parser() -> None:
    import torch

    from synthseg.settings import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match=r"device='banana': not a device name"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"critic_device=cuda: no CUDA GPU"):
            resolve_device("cuda", key="critic_device")
