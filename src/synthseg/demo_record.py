"""A demo folder's stages and what they were made with: the settings record, and which completed stages a
resume with other settings would change (those are made again on ``update=true``, else the resume is refused)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthseg.errors import InputError
from synthseg.utils.atomic import write_text_atomic

SETTINGS_FILE = "demo_settings.json"
DONE = ".complete"  # a stage's completion marker (its seconds), written once its output is whole
# Where and how fast the demo runs, not what it makes: free to change between a run and its resume.
NOT_RESULTS = ("output", "force", "update", "workers", "budgets")


@dataclass
class Stage:
    """One step of the demo: ``run(out)`` writes ``output`` (relative to the demo folder)."""

    name: str
    output: str
    run: Callable[[Path], Any]
    budget_s: float
    # What the stage writes when it leaves no marker of its own (training runs): the clean-up may delete
    # these and refuses any other file (synthseg.utils.outputs.remove_own).
    own: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # outputs of the stages it reads; it starts once they are complete
    alone: bool = False  # nothing beside it: it runs worker processes of its own (cohort, prepare)
    # The demo settings it reads, as a user writes them ("seed", "spade.epochs"; "synthetic": every
    # synthetic.* key); None: every setting. A resume that changes one of them changes this stage.
    reads: tuple[str, ...] | None = None
    remake: bool = False  # made again without asking when it changes (the report: derived, a minute)
    seconds: float = field(default=0.0)
    skipped: bool = field(default=False)


def is_current(out: Path, stage: Stage) -> bool:
    """Complete, and completed after every stage it reads (so a resume that re-made one of them, say the
    sweep's rows of a new seed, or was stopped before this stage ran again, makes it again)."""
    done = out / stage.output / DONE
    if not done.is_file():
        return False
    when = done.stat().st_mtime_ns
    return all(
        not (out / need / DONE).is_file() or (out / need / DONE).stat().st_mtime_ns <= when
        for need in stage.needs
    )


def check_resume(settings: Any, out: Path, stages: list[Stage]) -> None:
    """Compare ``settings`` with those ``out``'s stages were made with and record them. The completed stages
    they change (each reads a changed setting, or reads a stage that changes) lose their marker
    (so they are made again, also after an interruption); a stage that is not ``remake`` needs
    ``settings.update``, else the resume is refused and nothing is touched. A change that no completed stage
    reads (a typo in ``pgan_switches`` that stopped the PGAN, more U-Net seeds) is taken as it is.

    ``settings`` is the demo's ``DemoSettings``. A key the record lacks (a setting added after the folder was
    made) counts as its default, which keeps the behaviour of before.
    """
    current = json.loads(json.dumps({k: v for k, v in asdict(settings).items() if k not in NOT_RESULTS}))
    path = out / SETTINGS_FILE
    if path.is_file() and not settings.force:
        try:
            recorded = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: unreadable ({error}); force=true re-runs every stage") from None
        old, new = _flatten(recorded), _flatten(current)
        defaults = _flatten(json.loads(json.dumps(asdict(type(settings)(output=settings.output)))))
        old |= {k: defaults.get(k) for k in new.keys() - old.keys()}
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        changed = changed_stages(stages, keys, lambda stage: is_current(out, stage))
        said = "; ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys)
        asked = [stage for stage in changed if not stage.remake]
        if asked and not settings.update:
            raise InputError(
                f"{out}: settings changed since its stages were made ({said}), and they change the completed "
                f"stages {_names(asked)}: update=true makes those again, force=true every stage; or choose "
                "a new output folder"
            )
        if keys:
            again = _names(changed) or "none: no completed stage reads them"
            print(f"Settings changed ({said}); completed stages made again: {again}", flush=True)
        for stage in changed:
            (out / stage.output / DONE).unlink()
    write_text_atomic(path, json.dumps(current, indent=2))


def _names(stages: list[Stage]) -> str:
    """The stages' names, those in a shared folder (the sweep's runs in ``table1/``) counted instead."""
    names = [stage.name for stage in stages if "/" not in stage.output]
    groups: dict[str, int] = {}
    for stage in stages:
        if "/" in stage.output:
            group = stage.output.split("/")[0]
            groups[group] = groups.get(group, 0) + 1
    return ", ".join([*names, *(f"{n} run{'s' * (n > 1)} in {group}/" for group, n in groups.items())])


def changed_stages(stages: list[Stage], keys: list[str], complete: Callable[[Stage], bool]) -> list[Stage]:
    """The ``complete`` stages that read one of the setting ``keys`` or a stage that changes (stages come
    after their needs)."""
    changing: set[str] = set()
    for stage in stages:
        if reads_any(stage, keys) or changing.intersection(stage.needs):
            changing.add(stage.output)
    return [stage for stage in stages if stage.output in changing and complete(stage)]


def reads_any(stage: Stage, keys: list[str]) -> bool:
    """Whether ``stage`` reads one of the dotted setting ``keys``."""
    if stage.reads is None:
        return bool(keys)
    return any(key == read or key.startswith(f"{read}.") for key in keys for read in stage.reads)


def _flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """One level of nesting as dotted keys (``spade.switches``), as a user writes them."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat
