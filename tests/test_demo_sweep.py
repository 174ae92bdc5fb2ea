"""The demo's Table 1 sweep: reduced_real gets full_real's optimisation steps; precision and compile pass through."""

from __future__ import annotations

from pathlib import Path

from synthseg.data.manifest import read_manifest
from synthseg.pipeline import DemoSweep, reduced_epoch_factor, sweep_overrides
from tests.conftest import write_dataset


def _settings(overrides: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides)


def test_reduced_real_trains_as_many_steps_as_full_real(tmp_path: Path) -> None:
    prepared = write_dataset(tmp_path / "prepared", num_slices=60)
    manifest = read_manifest(prepared)
    train = manifest.rows("train")
    factor = reduced_epoch_factor(prepared)
    assert factor == round(len(train) / manifest.reduced[train].sum()) and factor > 1
    sweep = DemoSweep(epochs=3)
    reduced = _settings(sweep_overrides(sweep, "reduced_real", factor))
    # epochs x reduced slices = epochs of all slices; validation as often in steps as the full rows'.
    assert reduced["trainer.max_epochs"] == str(3 * factor)
    assert reduced["trainer.check_val_every_n_epoch"] == str(factor)
    for mix in (
        "full_real",
        "full_syn23960",
        "reduced_syn20832",
    ):  # the synthetic pairs fill the reduced row up
        full = _settings(sweep_overrides(sweep, mix, factor))
        assert (full["trainer.max_epochs"], full["trainer.check_val_every_n_epoch"]) == ("3", "1")
    fixed = _settings(sweep_overrides(DemoSweep(epochs=3, same_steps=False), "reduced_real", factor))
    assert fixed["trainer.max_epochs"] == "3"  # the paper's rule: the same epochs for every row


def test_precision_and_compile_reach_the_runs() -> None:
    fast = _settings(sweep_overrides(DemoSweep(precision="bf16-mixed", compile=True), "full_real", 5))
    assert (fast["trainer.precision"], fast["model.compile"]) == ("bf16-mixed", "true")
    plain = _settings(sweep_overrides(DemoSweep(), "full_real", 5))
    assert (plain["trainer.precision"], plain["model.compile"]) == ("32-true", "false")
