"""What a demo folder's stages were made with: the settings record, and the check that a resume matches it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synthseg.errors import InputError
from synthseg.utils.atomic import write_text_atomic

SETTINGS_FILE = "demo_settings.json"
# Where and how fast the demo runs, not what it makes: free to change between a run and its resume.
NOT_RESULTS = ("output", "force", "workers", "budgets")


def check_resume(settings: Any, out: Path) -> None:
    """Refuse to resume ``out`` with settings other than those its stages were made with (a resume skips the
    completed stages, so their outputs would be reported under the new settings); record them otherwise.

    ``settings`` is the demo's ``DemoSettings``. More U-Net seeds (``sweep.seeds`` holding every seed the
    folder's rows were trained with) extend the sweep: the completed rows stay valid (the report, completed
    before the new rows, is made again: ``demo.is_current``). A key the record lacks (a setting added after the
    folder was made) counts as its default, which keeps the behaviour of before.
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
        if set(_seeds(old)) <= set(_seeds(new)):
            old["sweep.seeds"] = new.get("sweep.seeds")
        changed = [
            f"{k}: {old.get(k)} -> {new.get(k)}"
            for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)
        ]
        if changed:
            raise InputError(
                f"{out}: its stages were made with other settings ({'; '.join(changed)}); force=true re-runs "
                "every stage, or choose a new output folder"
            )
    write_text_atomic(path, json.dumps(current, indent=2))


def _seeds(flat: dict[str, Any]) -> list[Any]:
    """The U-Net seeds of the sweep's rows: ``sweep.seeds``, or the demo's own seed."""
    return list(flat.get("sweep.seeds") or []) or [flat.get("seed")]


def _flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """One level of nesting as dotted keys (``spade.switches``), as a user writes them."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat
