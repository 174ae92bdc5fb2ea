"""Where the project's own files live (Hydra configs) and its per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


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


def user_cache_dir() -> Path:
    """The one per-user cache folder: ``$SYNTHSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/synthseg``, else
    ``~/.cache/synthseg``; created on first use.

    It holds what synthseg keeps between runs that belongs to no dataset or run folder: slice caches of
    datasets it may not write into (read-only folders) and the fast-path choices measured on this machine.
    """
    override = os.environ.get("SYNTHSEG_CACHE_DIR")
    if override:
        path = Path(override).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base).expanduser() / "synthseg"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``, inside or outside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)
