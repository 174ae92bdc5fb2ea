"""``synthseg select run=DIR``: the PGAN snapshot with the lowest average SWD of a training run.

Training logs one row per tick to ``<run>/swd.csv`` (tick, kimg, resolution, alpha, snapshot, ``swd_avg`` and
one ``swd_<level>`` per pyramid level). The paper kept the snapshot with the lowest average SWD (tick 86,
7,240 kimg, SWD 3.2130 on the full data); this command finds it the same way and says where it came from.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from synthseg.data.names import DatasetPaths
from synthseg.errors import InputError
from synthseg.settings import Settings

HISTORY = "swd.csv"


def find_history(run: str | os.PathLike[str]) -> Path:
    """``<run>/swd.csv``, or the only ``swd.csv`` below ``run``; ``run`` may also be the file itself."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise InputError(f"run={run}: folder not found")
    if (run / HISTORY).is_file():
        return run / HISTORY
    found = sorted(run.rglob(HISTORY))
    if not found:
        raise InputError(f"run={run}: no {HISTORY} found (was the run trained with model.swd_images > 0?)")
    if len(found) > 1:
        listed = ", ".join(str(p.parent) for p in found[:3])
        raise InputError(
            f"run={run}: {len(found)} runs with {HISTORY} below it ({listed}...); name one of them"
        )
    return found[0]


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``swd.csv`` with numbers parsed (missing or non-finite values become None)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "swd_avg" not in reader.fieldnames:
            raise InputError(f"{path}: not an SWD history (no swd_avg column)")
        rows = []
        paths = DatasetPaths(path.parent)  # a snapshot named by the history lies inside its run folder
        for raw in reader:
            snapshot = paths.check(raw.get("snapshot") or "", f"{path}: line {reader.line_num}", "snapshot")
            row: dict[str, Any] = {"snapshot": snapshot or None}
            for key, value in raw.items():
                if key != "snapshot":
                    row[key] = _number(value)
            rows.append(row)
    return rows


@dataclass(frozen=True)
class SelectSettings(Settings):
    """``conf/select.yaml``."""

    REQUIRED = {"run": "DIR"}

    run: str
    full_resolution_only: bool = False


def run(settings: SelectSettings) -> dict[str, Any]:
    """The snapshot with the lowest average SWD among the ticks of ``settings.run`` whose snapshot file exists.

    By default every tick is a candidate, as in the paper (the lowest SWD among all saved ticks). With
    ``full_resolution_only`` only ticks at the run's final resolution with the fade-in complete are: a
    snapshot still growing makes masks upsampled from a lower resolution, and a short run (the demo) can score
    such blocky masks below its noisy first full-resolution ones. In the paper's run every early tick scored
    far worse than tick 86 (just after reaching 256x256), so the switch does not change its choice.

    Returns:
        What the command prints (it writes no file): ``{"snapshot": absolute path, "tick": int, "kimg": float,
        "resolution": int, "swd_avg": float, "swd": {level: value}, "history": path of swd.csv,
        "ticks_scored": int, "missing_better": [paths]}``.
    """
    full_resolution_only = settings.full_resolution_only
    history = find_history(settings.run)
    rows = read_history(history)
    listed = [row for row in rows if row["snapshot"] and row.get("swd_avg") is not None]
    scored = [row for row in listed if (history.parent / row["snapshot"]).is_file()]
    if full_resolution_only:
        final = max((row["resolution"] for row in scored if row.get("resolution")), default=None)

        def eligible(row: dict[str, Any]) -> bool:
            return final is None or (row.get("resolution") == final and (row.get("alpha") or 1.0) >= 1.0)

        scored = [row for row in scored if eligible(row)]
        listed = [row for row in listed if eligible(row)]
    if not scored:
        raise InputError(f"{history}: no tick has both an SWD value and a snapshot file on disk")

    def rank(row: dict[str, Any]) -> tuple[float, float]:
        return (row["swd_avg"], row.get("tick") or 0)

    best = min(scored, key=rank)
    # A better tick whose snapshot was deleted is passed over: say so, it changes which snapshot is used.
    missing = [
        str(history.parent / row["snapshot"])
        for row in sorted(listed, key=rank)
        if rank(row) < rank(best) and not (history.parent / row["snapshot"]).is_file()
    ]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        print(
            f"warning: {missing[0]}{more}: snapshot of a lower-SWD tick is missing on disk; "
            f"selected the best snapshot still present",
            file=sys.stderr,
        )
    levels = {
        key.removeprefix("swd_"): value
        for key, value in best.items()
        if key.startswith("swd_") and key != "swd_avg" and value is not None
    }
    return {
        "snapshot": str((history.parent / best["snapshot"]).resolve()),
        "tick": int(best["tick"]) if best.get("tick") is not None else None,
        "kimg": best.get("kimg"),
        "resolution": int(best["resolution"]) if best.get("resolution") is not None else None,
        "swd_avg": best["swd_avg"],
        "swd": levels,
        "history": str(history),
        "ticks_scored": len(scored),
        "missing_better": missing,
    }


def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry (``conf/select.yaml``): print the choice, and the result as JSON on the last line."""
    result = run(SelectSettings.from_config(cfg))
    print(
        f"best snapshot: {result['snapshot']}\n"
        f"  tick {result['tick']}, {result['kimg']} kimg, resolution {result['resolution']}, "
        f"average SWD {result['swd_avg']:.4f} (x1000; lowest of {result['ticks_scored']} ticks)"
    )
    print(json.dumps(result))
    return result
