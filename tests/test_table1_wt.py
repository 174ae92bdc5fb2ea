"""Table 1 shows the whole-tumor Dice beside the Dice error, and says when the two rank rows differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_run, run_report, write_dataset


def _runs(tmp_path: Path, cells: dict[tuple[str, int], tuple[float, float]]) -> Path:
    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    runs = tmp_path / "runs"
    for n, ((mix, classes), (error, wt)) in enumerate(cells.items()):
        folder = make_run(
            runs / str(n), mix=mix, classes=classes, seed=0, dice_error=error, data_root=prepared
        )
        results = json.loads((folder / "results.json").read_text())
        results["metrics"]["test/dice_WT"] = wt
        (folder / "results.json").write_text(json.dumps(results))
    return runs


def _table(tmp_path: Path, cells: dict[tuple[str, int], tuple[float, float]]) -> str:
    out = tmp_path / "report"
    run_report({"runs": str(_runs(tmp_path, cells)), "output": str(out), "figures": {"enabled": False}})
    return (out / "table1.md").read_text()


def test_wt_dice_beside_the_dice_error_and_a_sentence_when_they_disagree(tmp_path: Path) -> None:
    # The case: the synthetic row's Dice error is far lower while its tumor was not segmented.
    md = _table(tmp_path, {("reduced_real", 2): (0.8351, 0.31), ("reduced_syn20832", 2): (0.2453, 0.006)})
    assert "| WT Dice |" in md
    row = next(line for line in md.splitlines() if line.startswith("| reduced | reduced_syn20832 |"))
    assert row.split(" | ")[-1].strip(" |") == "0.6"  # WT Dice %, one decimal
    assert "**24.53**" in row
    note = next(line for line in md.splitlines() if line.startswith("2 classes, reduced half"))
    assert "reduced_syn20832's (24.53)" in note and "reduced_real's (31.0 against 0.6)" in note
    assert "disagree" in note


@pytest.mark.parametrize("wt_of_best", [0.9, 0.31])
def test_no_sentence_when_the_lowest_error_also_has_the_highest_wt_dice(
    tmp_path: Path, wt_of_best: float
) -> None:
    md = _table(
        tmp_path, {("reduced_real", 2): (0.8351, 0.31), ("reduced_syn20832", 2): (0.2453, wt_of_best)}
    )
    assert "disagree" not in md  # a tie is no disagreement
