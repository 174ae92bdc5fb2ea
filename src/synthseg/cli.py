"""The ``synthseg`` console script: every subcommand is a Hydra app with its config under ``conf/``.

    synthseg <command> key=value ...      (e.g. ``synthseg prepare source=DIR output=DIR``)

``python train.py ...`` at the repository root is the same as ``synthseg train ...``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

# command -> (config name under conf/, "module:main", the entry taking the composed DictConfig)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "synthseg.train:main"),
    "demo": ("demo", "synthseg.demo:main"),
    "demo-cohort": ("demo_cohort", "synthseg.data.demo.demo_cohort:main"),
    "prepare": ("prepare", "synthseg.data.prepare.prepare:main"),
    "swd": ("swd", "synthseg.metrics.swd:main"),
    "select": ("select", "synthseg.synth.select:main"),
    "generate-masks": ("generate_masks", "synthseg.synth.generate_masks:main"),
    "generate-images": ("generate_images", "synthseg.synth.generate_images:main"),
    "filter": ("filter", "synthseg.synth.filter:main"),
    "synthesize": ("synthesize", "synthseg.synth.synthesize:main"),
    "export": ("export", "synthseg.synth.export:main"),
    "report": ("report", "synthseg.report.report:main"),
    "quality": ("quality", "synthseg.metrics.quality:main"),
}


def _resolve(target: str) -> Callable[[Any], Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run(command: str, overrides: list[str]) -> Any:
    """Run subcommand ``command`` as a Hydra app with ``overrides`` (``key=value`` strings, Hydra flags)."""
    import hydra

    from synthseg.errors import InputError
    from synthseg.paths import config_dir

    config_name, target = COMMANDS[command]

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def app(cfg: Any) -> Any:
        try:
            return _resolve(target)(cfg)
        except InputError as err:
            # Bad input is the user's to fix: one clear line, no traceback.
            print(f"synthseg {command}: error: {err}", file=sys.stderr)
            sys.exit(2)

    # Lightning's DDP launcher restarts the other ranks from sys.argv[0]: for training it must be a script.
    program = str(config_dir().parent / "train.py") if command == "train" else f"synthseg {command}"
    sys.argv = [program, *overrides]
    return app()


def quiet_progress_when_logged(seconds: int = 30) -> None:
    """Progress bars redraw every 0.1 s; sent to a file, each redraw is kept. Then redraw every ``seconds``.

    tqdm (4.66+) reads ``TQDM_*`` defaults when it is imported, so this runs before anything imports it; a
    ``TQDM_MININTERVAL`` the user set wins.
    """
    isatty = getattr(sys.stderr, "isatty", None)
    if not (isatty and isatty()):
        os.environ.setdefault("TQDM_MININTERVAL", str(seconds))


def _usage() -> str:
    names = "\n".join(f"  {name}" for name in COMMANDS)
    return f"usage: synthseg <command> [key=value ...]\n\ncommands:\n{names}\n\n`synthseg <command> --help` shows its config."


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        sys.exit(0 if argv else 2)
    command, *overrides = argv
    quiet_progress_when_logged()
    if command not in COMMANDS:
        print(f"synthseg: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    run(command, overrides)
