"""The demo's Table 1 sweep: every row trains full_real's optimisation steps; precision and fast paths pass through."""

from __future__ import annotations

from pathlib import Path

from synthseg.data.manifest import read_manifest
from synthseg.pipeline import DemoSweep, row_slices, sweep_overrides
from tests.conftest import write_dataset


def _settings(overrides: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides)


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
        "bf16-mixed", "true", "true")  # fmt: skip
    plain = _settings(sweep_overrides(DemoSweep(channels_last=False), 100, 100))
    assert (plain["trainer.precision"], plain["model.compile"], plain["model.channels_last"]) == (
        "32-true", "false", "false")  # fmt: skip
