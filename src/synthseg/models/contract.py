"""The model side of the model–data contract: models learn about their data from one typed summary."""

from __future__ import annotations

from typing import Any

from synthseg.data.datamodule import DataSummary


def data_summary(trainer: Any) -> DataSummary | None:
    """The trainer's DataModule summary, read once in a model's ``setup()``; None when the model is used
    without a DataModule that provides one (a bare ``trainer.fit(model, dataloader)``, notebooks)."""
    datamodule = getattr(trainer, "datamodule", None)
    summary = getattr(datamodule, "summary", None)
    return summary() if callable(summary) else None
