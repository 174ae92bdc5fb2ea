"""Where the project's own files live (Hydra configs)."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The Hydra config folder: ``$SYNTHSEG_CONFIG_DIR`` or ``conf/`` at the repository root."""
    override = os.environ.get("SYNTHSEG_CONFIG_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"synthseg configs not found in {path}: install the project with `pip install -e .` from its "
            "repository, or set SYNTHSEG_CONFIG_DIR to its conf/ folder"
        )
    return path
