"""The demo's Table 1 sweep: which runs, and how long each trains (``synthseg demo``'s ``sweep`` settings).

Every row trains about as many optimisation steps as ``full_real`` (``same_steps``): the paper's fixed epoch
count would give ``reduced_real`` a fifth of the steps at demo size and the rows with synthetic pairs more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthseg.errors import InputError
from synthseg.paths import compose_config
from synthseg.settings import Settings, check_choice, check_positive

# What every row reads of ``DemoSweep``; mixes, classes and seeds say which rows there are.
ROW_KEYS = ("epochs", "same_steps", "precision", "compile", "channels_last")


@dataclass(frozen=True)
class DemoSweep(Settings):
    mixes: tuple[str, ...] = ("full_real", "full_syn23960", "reduced_real", "reduced_syn20832")
    classes: tuple[int, ...] = (7, 4, 2)
    epochs: int = 6
    # every row as many optimisation steps as full_real (more epochs of fewer slices, fewer of more)
    same_steps: bool = True
    precision: str = "auto"
    compile: bool = False
    channels_last: bool | str = "auto"
    # U-Net seeds of every row (Table 1: mean and std over them); () = the demo's own seed only
    seeds: tuple[int, ...] = ()

    def check(self) -> None:
        for classes in self.classes:
            check_choice("classes", classes, (2, 4, 7))
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"sweep.seeds: each seed once, got {list(self.seeds)}")
        check_positive("epochs", self.epochs)
        check_choice("precision", self.precision, ("auto", "32-true", "bf16-mixed"))
        check_choice("channels_last", self.channels_last, ("auto", True, False))


def row_slices(prepared: Path, mix: str) -> tuple[int, int]:
    """(training slices of ``mix``, real training slices of ``full_real``) on the prepared dataset.

    From the mix's own settings (``conf/mix/<mix>.yaml``: ``data.real``, ``data.reduced``,
    ``data.synthetic.count``) and the manifest, as the DataModule resolves them.
    """
    from synthseg.data.datamodule import resolve_count
    from synthseg.data.manifest import read_manifest

    data = compose_config("train", ["experiment=table1_demo", f"mix={mix}"]).data
    manifest = read_manifest(prepared)
    train = manifest.rows("train")
    full = len(train)
    pool = int(manifest.reduced[train].sum()) if data.reduced else full
    real = resolve_count(data.real, full, pool, "data.real")
    count = data.synthetic.get("count") if data.synthetic else None
    synthetic = resolve_count(count, full, 1 << 62, "data.synthetic.count") if count else 0
    return real + synthetic, full


def sweep_overrides(cfg: DemoSweep, slices: int, full: int) -> list[str]:
    """The demo's per-run settings: epochs for a row of ``slices`` training slices, precision, fast paths.

    With ``same_steps`` every row trains about the steps of ``cfg.epochs`` epochs of the ``full`` real slices,
    and validates as often in steps: the paper's fixed epoch count would give ``reduced_real`` a fifth of the
    steps at demo size (untrained rather than short of data) and the rows with synthetic pairs more.
    """
    epochs, every = cfg.epochs, 1
    if cfg.same_steps and slices:
        ratio = full / slices
        epochs, every = max(1, round(cfg.epochs * ratio)), max(1, round(ratio))
    return [
        f"trainer.max_epochs={epochs}",
        f"trainer.check_val_every_n_epoch={every}",
        f"trainer.precision={cfg.precision}",
        f"model.compile={str(cfg.compile).lower()}",
        f"model.channels_last={str(cfg.channels_last).lower()}",
        "fastpath.reduced_precision=true",  # on a GPU auto may pick bf16/fp16 (CPU: fp32 always)
    ]


def sweep_seeds(cfg: DemoSweep, demo_seed: int) -> tuple[int, ...]:
    """The U-Net seeds of every row: ``sweep.seeds``, or the demo's own seed."""
    return tuple(cfg.seeds) or (demo_seed,)


def sweep_runs(cfg: DemoSweep, demo_seed: int) -> list[tuple[str, int, int]]:
    """(mix, classes, U-Net seed) of every row, in the order of the settings."""
    seeds = sweep_seeds(cfg, demo_seed)
    return [(mix, classes, seed) for mix in cfg.mixes for classes in cfg.classes for seed in seeds]


def run_folder(mix: str, classes: int, seed: int, demo_seed: int) -> str:
    """A row's run folder under ``table1/``: the demo's own seed keeps the plain name (as before seeds)."""
    return f"{mix}_classes{classes}" + ("" if seed == demo_seed else f"_seed{seed}")


def collect_results(out: Path, folders: list[str]) -> list[dict[str, Any]]:
    """One row per U-Net run of the sweep in ``folders`` (names under ``table1/``; another settings' rows left
    in the folder are not the sweep's): mix, classes, counts, the paper's Dice error and the WT Dice (%)."""
    rows = []
    for path in sorted(out / "table1" / folder / "results.json" for folder in folders):
        if not path.is_file():  # a row skipped for want of synthetic pairs
            continue
        results = json.loads(path.read_text())
        rows.append(
            {
                "mix": results["config"].get("mix_name"),
                "classes": results["config"]["data"]["classes"],
                "seed": results["config"].get("seed"),
                "sequences": results["config"]["data"].get("sequences", ["t1c"]),
                "real": results["data_stats"].get("num_real"),
                "synthetic": results["data_stats"].get("num_synthetic"),
                "dice_error_percent": 100 * results["metrics"]["test/dice_error"],
                "dice_error_fixed_percent": 100 * results["metrics"]["test/dice_error_fixed"],
                "dice_WT_percent": 100 * results["metrics"].get("test/dice_WT", float("nan")),
                "results": str(path),
            }
        )
    return rows
