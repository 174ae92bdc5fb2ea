"""The ``synthseg`` console script: every subcommand is a Hydra app with its config under ``conf/``.

    synthseg <command> key=value ...      (e.g. ``synthseg prepare source=DIR output=DIR``)

``python train.py ...`` at the repository root is the same as ``synthseg train ...``.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

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


class UsageError(Exception):
    """A mistake the user can fix, reported as ``synthseg <command>: error: <one line>`` with exit status 2."""


def fail(command: str, line: object) -> NoReturn:
    """Print the one error line of ``command`` and exit with status 2."""
    print(f"synthseg {command}: error: {line}", file=sys.stderr)
    sys.exit(2)


# What the operating system says about a user's output, not about a bug: one line with the file and a hint.
OS_ERRORS = {
    errno.ENOSPC: "no space left on the disk; free some or choose an output on another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or choose an output elsewhere",
    errno.EROFS: "read-only file system; choose an output on a writable disk",
    errno.ENAMETOOLONG: "file name too long; choose a shorter output name or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_line(err: OSError) -> str | None:
    """The one line of an OS error a user can fix (:data:`OS_ERRORS`), or None for any other."""
    if err.errno not in OS_ERRORS:
        return None
    named = err.filename if err.filename is not None else ""
    return f"{named}: {OS_ERRORS[err.errno]}" if named else OS_ERRORS[err.errno]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def hydra_error_line(err: BaseException) -> str:
    """One line for what Hydra or OmegaConf reports about the command line or the configs (their own messages
    span several lines and end in advice about environment variables)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        # `colour=red` without `+`: the same line as `+colour=red` (Settings.from_config) gives
        return f"unknown setting(s): {getattr(cause, 'full_key', None) or _first_line(str(err))}"
    if isinstance(err, MissingConfigException):
        options = [
            line.strip() for line in str(err).splitlines() if line.startswith("\t") and "=" not in line
        ]
        return _first_line(str(err)) + (f" (choose one of: {', '.join(options)})" if options else "")
    if isinstance(err, OverrideParseException):
        return f"cannot read the command line: {_first_line(str(err))}"
    if isinstance(err, OmegaConfBaseException):
        message = _first_line(str(err))
        for prefix in (
            "KeyError raised while resolving interpolation: ",
            "raised while resolving interpolation: ",
        ):
            message = message.split(prefix, 1)[-1]
        key = getattr(err, "full_key", None)
        return f"{key}: cannot resolve its value: {message.strip(chr(34))}" if key else message
    line = _first_line(str(err))
    if cause is not None and _first_line(str(cause)) not in line:
        line = f"{line} ({_first_line(str(cause))})"
    return line


def _first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job: each sweep (``seed=0,1,2``, ``range(3)``) at its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    first = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            first.append(override.input_line)
            continue
        try:
            value = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 -- a sweep over config files (glob): left to Hydra's own run
            continue
        first.append(f"{override.get_key_element()}={value}")
    return first


def precheck(command: str, overrides: list[str]) -> None:
    """Compose and resolve the command's config as Hydra will, before Hydra runs anything.

    Hydra reports a misspelt key, a missing config file, an unreadable override or an unresolvable interpolation
    in several lines (exit 1), and for ``train`` only after it made the run folder; here each is one line. For
    ``train`` the settings and their inputs are checked too (``TrainSettings``), so a refused run leaves no run
    or log folder. A multirun is checked with each command-line sweep at its first value. ``--help``, ``--cfg``
    and Hydra's other informational flags run as they are.

    Raises:
        UsageError: one line.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from synthseg.errors import InputError
    from synthseg.paths import config_dir

    try:
        args = get_args_parser().parse_args(overrides)
    except SystemExit:
        return  # not Hydra's flags either: Hydra prints its usage
    informational = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.config_path,
                     args.config_name, args.config_dir, args.experimental_rerun)  # fmt: skip
    if any(informational):
        return
    try:
        given = _first_job(args.overrides) if args.multirun else list(args.overrides)
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(COMMANDS[command][0], overrides=given, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.job.num = 0
            if args.multirun:
                run_dir = f"{OmegaConf.select(cfg, 'hydra.sweep.dir')}/{OmegaConf.select(cfg, 'hydra.sweep.subdir')}"
            else:
                run_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))
            cfg.hydra.runtime.output_dir = os.path.abspath(run_dir)
        HydraConfig.instance().set_config(cfg)
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        OmegaConf.to_container(job, resolve=True)
        if command == "train":
            from pathlib import Path

            from synthseg.utils.outputs import check_writable

            # Lightning gives its logger a handler of its own when it is imported before any logging is set
            # up; imported here, before Hydra's logging, its lines would bypass Hydra's format and log file.
            root = logging.getLogger()
            placeholder = logging.NullHandler()
            root.addHandler(placeholder)
            try:
                from synthseg.train import TrainSettings
            finally:
                root.removeHandler(placeholder)
            TrainSettings.from_config(job).check_inputs()
            check_writable(Path(run_dir).resolve())
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(hydra_error_line(err)) from None
    except InputError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        raise UsageError(line) from None


def run(command: str, overrides: list[str]) -> Any:
    """Run subcommand ``command`` as a Hydra app with ``overrides`` (``key=value`` strings, Hydra flags).

    The config is composed and resolved first (:func:`precheck`); inside the app, bad input
    (:class:`~synthseg.errors.InputError`) and the OS errors a user can fix (:data:`OS_ERRORS`) are one line each.
    Every such line is ``synthseg <command>: error: <line>``, exit status 2.
    """
    import hydra
    from omegaconf.errors import OmegaConfBaseException

    from synthseg.errors import InputError
    from synthseg.paths import config_dir

    config_name, target = COMMANDS[command]
    try:
        precheck(command, overrides)
    except UsageError as err:
        fail(command, err)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def app(cfg: Any) -> Any:
        try:
            return _resolve(target)(cfg)
        except InputError as err:
            # Bad input is the user's to fix: one clear line, no traceback.
            fail(command, err)
        except OmegaConfBaseException as err:  # a sweep's job whose own values do not resolve
            fail(command, hydra_error_line(err))
        except OSError as err:
            line = os_error_line(err)
            if line is None:
                raise
            fail(command, line)

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
