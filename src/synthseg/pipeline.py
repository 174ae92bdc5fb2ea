"""``synthseg demo``: the whole flow on the built-in demo cohort, in one output folder.

Each stage reads only what the stage before it wrote and is skipped when its output already exists, so an
interrupted demo resumes where it stopped. Stages are the same functions the individual commands run,
called on configs composed from ``conf/`` with the demo's overrides.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from synthseg.paths import config_dir
from synthseg.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``, inside or outside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """A train config writing into ``output_dir`` (no Hydra run folder involved)."""
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg


@dataclass
class Stage:
    """One step of the demo: ``run(out)`` writes ``output`` (relative to the demo folder)."""

    name: str
    output: str
    run: Callable[[Path], Any]
    budget_s: float
    seconds: float = field(default=0.0)
    skipped: bool = field(default=False)


def _stage_cohort(cfg: DictConfig) -> Callable[[Path], Any]:
    def run(out: Path) -> None:
        from synthseg.data.demo_cohort import main as cohort_main

        cohort_main(
            compose_config(
                "demo_cohort", [f"output={out / 'cohort'}", f"cases={cfg.cases}", f"seed={cfg.seed}"]
            )
        )

    return run


def _stage_prepare(cfg: DictConfig) -> Callable[[Path], Any]:
    def run(out: Path) -> None:
        from synthseg.data.prepare import main as prepare_main

        prepare_main(
            compose_config(
                "prepare",
                [
                    f"source={out / 'cohort'}",
                    f"output={out / 'prepared'}",
                    f"seed={cfg.seed}",
                    f"workers={cfg.workers}",
                ],
            )
        )

    return run


def _stage_unet(cfg: DictConfig) -> Callable[[Path], Any]:
    def run(out: Path) -> None:
        from synthseg.train import train

        for classes in cfg.unet.classes:
            overrides = [
                "model=unet",
                "experiment=demo",
                f"data.root={out / 'prepared'}",
                f"data.classes={classes}",
                f"seed={cfg.seed}",
                f"trainer.max_epochs={cfg.unet.epochs}",
                f"data.resolution={cfg.resolution}",
                "trainer.enable_model_summary=false",
            ]
            train(compose_train(overrides, out / "unet" / f"classes{classes}"))

    return run


def build_stages(cfg: DictConfig) -> list[Stage]:
    budgets = cfg.budgets
    return [
        Stage("demo cohort", "cohort", _stage_cohort(cfg), budgets.cohort),
        Stage("prepare", "prepared", _stage_prepare(cfg), budgets.prepare),
        Stage("U-Net (real data)", "unet", _stage_unet(cfg), budgets.unet),
    ]


def collect_results(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(out.glob("unet/*/results.json")):
        results = json.loads(path.read_text())
        rows.append(
            {
                "run": path.parent.name,
                "classes": results["config"]["data"]["classes"],
                "real": results["data_stats"].get("num_real"),
                "synthetic": results["data_stats"].get("num_synthetic"),
                "dice_error_percent": 100 * results["metrics"]["test/dice_error"],
                "results": str(path),
            }
        )
    return rows


def run_demo(cfg: DictConfig) -> dict[str, Any]:
    """Run every stage of the demo into ``cfg.output``; print and return a summary."""
    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = build_stages(cfg)
    start = time.perf_counter()
    for index, stage in enumerate(stages, 1):
        target = out / stage.output
        if target.exists() and not cfg.force:
            stage.skipped = True
            print(f"[{index}/{len(stages)}] {stage.name}: {target} exists, skipped")
            continue
        print(f"[{index}/{len(stages)}] {stage.name} (budget {stage.budget_s:.0f} s) -> {target}", flush=True)
        t0 = time.perf_counter()
        stage.run(out)
        stage.seconds = time.perf_counter() - t0
        over = " — over budget" if stage.seconds > stage.budget_s else ""
        print(f"[{index}/{len(stages)}] {stage.name}: done in {stage.seconds:.0f} s{over}", flush=True)
    summary = {
        "output": str(out),
        "total_seconds": time.perf_counter() - start,
        "stages": [
            {
                "name": s.name,
                "output": str(out / s.output),
                "seconds": round(s.seconds, 1),
                "skipped": s.skipped,
            }
            for s in stages
        ],
        "results": collect_results(out),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    print("\nDemo finished in {:.0f} s. Files:".format(summary["total_seconds"]))
    for s in summary["stages"]:
        print(f"  {s['name']:<22} {s['output']}  ({s['seconds']:.0f} s{', skipped' if s['skipped'] else ''})")
    print(f"  {'summary':<22} {out / 'summary.json'}")
    print("\nTest Dice error (%), the paper's weighted Dice loss over the test set:")
    for row in summary["results"]:
        print(
            f"  {row['classes']} classes, real {row['real']}, synthetic {row['synthetic']}: {row['dice_error_percent']:.2f}"
        )
    return summary
