"""The report notebook runs headless against a tiny report, and is kept in git without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import make_run, run_report, write_dataset

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "report.ipynb"


def test_the_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_notebook_walks_through_a_tiny_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = write_dataset(tmp_path / "prepared", num_slices=40, size=32)
    for i, (mix, error) in enumerate((("reduced_real", 0.2), ("reduced_syn4792", 0.18))):
        make_run(tmp_path / "runs" / str(i), mix=mix, classes=2, seed=0, dice_error=error, data_root=prepared)
    report = tmp_path / "report"
    run_report(
        {
            "runs": str(tmp_path / "runs"),
            "output": str(report),
            "bootstrap": {"samples": 50},
            "figures": {"segmentation_slices": 2, "pairs": 4},
        }
    )
    monkeypatch.setenv("SYNTHSEG_REPORT", str(report))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    def outputs(kind: str) -> list[str]:
        found = []
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if kind in data:
                    found.append(data[kind])
                if kind == "text/plain" and output.get("output_type") == "stream":
                    found.append(output["text"])
        return found

    text = "\n".join(outputs("text/plain") + outputs("text/markdown"))
    assert f"{report}: 2 runs, 2 cells of Table 1" in text
    assert "**18.00**" in text  # Table 1, the best reduced cell
    assert "reduced_syn4792 − reduced_real" in text  # Table 2's paired differences
    assert "fig10_segmentations_2class.png" in text and "not in this report: fig7_spade_test.png" in text
    # The bar chart and the two figures (Fig. 1 and Fig. 10).
    assert len(outputs("image/png")) == 3
