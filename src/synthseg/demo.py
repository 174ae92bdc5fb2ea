"""``synthseg demo``: the whole flow on the built-in demo cohort, in one output folder.

Each stage reads only what the stages it names in ``needs`` wrote, starts once they are complete (``workers``
stages at a time, :mod:`synthseg.utils.graph`), and is skipped when its output is already complete, so an
interrupted demo resumes where it stopped. Each stage is its command's ``run`` on a settings object (the keys
it does not set at their YAML defaults; training: the composed ``conf/train.yaml`` with the demo's overrides).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, open_dict

from synthseg.data.manifest import read_provenance
from synthseg.data.sequences import check_sequences
from synthseg.demo_record import DONE, Stage, check_resume, is_current
from synthseg.demo_sweep import (
    ROW_KEYS,
    DemoSweep,
    collect_results,
    row_slices,
    run_folder,
    sweep_overrides,
    sweep_runs,
)
from synthseg.errors import InputError
from synthseg.paths import compose_config
from synthseg.settings import Settings, check_choice, check_positive
from synthseg.utils.atomic import write_text_atomic
from synthseg.utils.outputs import TRAIN_RUN_FILES, claim_folder, claim_output, output_lock, remove_own

log = logging.getLogger(__name__)
SWEEP = "table1"  # the demo's Table 1 runs, one folder each


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """A train config writing into ``output_dir`` (no Hydra run folder involved)."""
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg


def _train(overrides: list[str], output_dir: Path) -> Path:
    from synthseg.train import TrainSettings
    from synthseg.train import run as train

    cfg = compose_train([*overrides, "trainer.enable_model_summary=false"], output_dir)
    return train(TrainSettings.from_config(cfg))


def _spade_checkpoint(out: Path) -> Path:
    return out / "spade" / "checkpoints" / "last.ckpt"


def check_switches(name: str, switches: tuple[str, ...]) -> None:
    """Model overrides beyond the paper (``pgan_switches``, ``spade.switches``): each ``model.KEY=VALUE``."""
    for switch in switches:
        if not isinstance(switch, str) or not switch.startswith("model.") or "=" not in switch:
            raise InputError(f"{name}: expected model.KEY=VALUE overrides, got {switch!r}")


@dataclass(frozen=True)
class DemoSpade(Settings):
    epochs: int = 1
    test_images: int = 18
    # SPADE overrides beyond the paper (docs/spade.md); () = experiment=spade_demo as it is
    switches: tuple[str, ...] = ()
    # > 0: model.lambda_seg with the sweep's full_real U-Net as the segmenter (SPADE waits for it)
    segmenter_weight: float = 0.0

    def check(self) -> None:
        check_positive("epochs", self.epochs)
        check_positive("test_images", self.test_images)
        check_positive("spade.segmenter_weight", self.segmenter_weight, allow_zero=True)
        check_switches("spade.switches", self.switches)


@dataclass(frozen=True)
class DemoSynthetic(Settings):
    count: int = 4000
    threshold: float = 500.0
    min_island: int = 8
    background: str = "keep"  # synthesize background: keep (the paper) | zero (docs/spade.md)

    def check(self) -> None:
        check_positive("count", self.count)
        check_positive("min_island", self.min_island, allow_zero=True)
        from synthseg.synth.generate_images import BACKGROUNDS

        check_choice("background", self.background, BACKGROUNDS)


# One-hot classes, the slice position and ADA (its speed set for a 40-kimg run): the combination the study at
# the demo's sizes chose (docs/masks.md), the switches of experiment=pgan_full_masks. Not the demo's default: in
# the demo its masks lost the tumor bodies and CSF (docs/demo.md).
MASK_SWITCHES = (
    "model.label_encoding=onehot",
    "model.condition=slice",
    "model.augment=ada",
    "model.ada_kimg=10",
)


@dataclass(frozen=True)
class DemoBudgets(Settings):
    """Seconds per stage; going over is reported, not fatal."""

    cohort: float = 60
    prepare: float = 90
    pgan: float = 300
    spade: float = 240
    synthetic: float = 60
    spade_test: float = 20
    sweep: float = 480
    report: float = 60


@dataclass(frozen=True)
class DemoSettings(Settings):
    """``conf/demo.yaml``."""

    REQUIRED = {"output": "DIR"}

    output: str
    force: bool = False
    update: bool = False  # resume with changed settings: make again the completed stages they change
    cases: int = 10
    seed: int = 0
    workers: int = 2
    resolution: int = 64
    sequences: tuple[str, ...] = ("t1c",)
    # PGAN overrides beyond the paper (e.g. MASK_SWITCHES, docs/masks.md); () = the paper's PGAN
    pgan_switches: tuple[str, ...] = ()
    spade: DemoSpade = field(default_factory=DemoSpade)
    synthetic: DemoSynthetic = field(default_factory=DemoSynthetic)
    sweep: DemoSweep = field(default_factory=DemoSweep)
    budgets: DemoBudgets = field(default_factory=DemoBudgets)

    def check(self) -> None:
        check_positive("cases", self.cases)
        check_positive("workers", self.workers)
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise InputError(f"resolution must be a power of two >= 4, got {self.resolution}")
        object.__setattr__(self, "sequences", check_sequences(self.sequences, "sequences"))
        check_switches("pgan_switches", self.pgan_switches)


def _sequences(cfg: DemoSettings) -> str:
    # The same setting for every command: prepare writes them, SPADE paints them, the U-Net reads them.
    return f"[{','.join(cfg.sequences)}]"


# The stages are module-level functions of (settings, demo folder): a worker process runs them from a pickle.
# Each builds its command's settings (the other keys at their defaults, which are the YAML's) and calls its run.
def _cohort(cfg: DemoSettings, out: Path) -> None:
    from synthseg.data.demo import demo_cohort as cohort

    settings = cohort.DemoCohortSettings(
        output=str(out / "cohort"), cases=cfg.cases, seed=cfg.seed, overwrite=True, workers=cfg.workers
    )
    folder = cohort.run(settings)
    print(f"demo cohort: {len(cohort.case_folders(folder))} cases in {folder / 'HGG'}", flush=True)


def _prepare(cfg: DemoSettings, out: Path) -> None:
    from synthseg.data.prepare import prepare
    from synthseg.data.prepare.settings import PrepareSettings

    settings = PrepareSettings(
        source=str(out / "cohort"), output=str(out / "prepared"), sequences=cfg.sequences, seed=cfg.seed,
        workers=cfg.workers, overwrite=True,
    )  # fmt: skip
    print(prepare.summarize(read_provenance(prepare.run(settings)) or {}), flush=True)


def _pgan(cfg: DemoSettings, out: Path) -> None:
    overrides = ["experiment=pgan_demo", *cfg.pgan_switches]
    _train([*overrides, f"data.root={out / 'prepared'}", f"seed={cfg.seed}"], out / "pgan")


def _spade(cfg: DemoSettings, out: Path) -> None:
    overrides = [
        "experiment=spade_demo",
        f"data.root={out / 'prepared'}",
        f"data.sequences={_sequences(cfg)}",
        f"seed={cfg.seed}",
        f"trainer.max_epochs={cfg.spade.epochs}",
        f"model.niter={cfg.spade.epochs}",
        "model.niter_decay=0",
        *cfg.spade.switches,
    ]
    if cfg.spade.segmenter_weight > 0:
        overrides += [
            f"model.lambda_seg={cfg.spade.segmenter_weight}",
            f"model.segmenter={out / _segmenter(cfg)}",
        ]
    _train(overrides, out / "spade")


def _segmenter(cfg: DemoSettings) -> str:
    """The sweep's full_real U-Net at its most classes and the demo's seed: ``spade.segmenter_weight``'s U-Net."""
    if "full_real" not in cfg.sweep.mixes:
        raise InputError("spade.segmenter_weight > 0 needs the full_real rows in sweep.mixes (its U-Net)")
    return f"{SWEEP}/{run_folder('full_real', max(cfg.sweep.classes), cfg.seed, cfg.seed)}"


def _synthetic(cfg: DemoSettings, out: Path) -> None:
    from synthseg.synth import synthesize
    from synthseg.train import stdout_is_terminal

    try:
        synthesize.run(
            synthesize.SynthesizeSettings(
                pgan=str(out / "pgan"),
                spade=str(_spade_checkpoint(out)),
                reference=str(out / "prepared"),
                output=str(out / "synthetic"),
                count=cfg.synthetic.count,
                threshold=cfg.synthetic.threshold,
                min_island=cfg.synthetic.min_island,
                background=cfg.synthetic.background,
                full_resolution_only=True,  # a demo-length run can score blocky early ticks lowest (DEMO_CHOICES)
                mask_size=cfg.resolution,
                seed=cfg.seed,
                progress=stdout_is_terminal(),  # no bar redrawn over another stage's lines
            )
        )
    except synthesize.FilterKeptNothing as err:
        # A weak demo PGAN: the rows that need synthetic pairs are skipped by the sweep, said there too.
        print(f"  no synthetic pairs: {err}", flush=True)
        (out / "synthetic").mkdir(exist_ok=True)


def _spade_test(cfg: DemoSettings, out: Path) -> None:
    # The paper's Fig. 7: SPADE applied to real test label maps, beside the true images.
    from synthseg.synth import generate_images

    masks = _real_test_masks(
        out / "prepared", out / "spade_test.masks", cfg.resolution, cfg.spade.test_images
    )
    settings = generate_images.GenerateImagesSettings(
        checkpoint=str(_spade_checkpoint(out)), masks=str(masks), output=str(out / "spade_test"),
        seed=cfg.seed, keep_ids=True, overwrite=True,
    )  # fmt: skip
    generate_images.run(settings)


def _sweep_run(cfg: DemoSettings, mix: str, classes: int, seed: int, out: Path) -> None:
    """One U-Net of Table 1; a mix asking for more synthetic pairs than the filter kept is skipped, said."""
    slices, full = row_slices(out / "prepared", mix)
    overrides = [
        "experiment=table1_demo",
        f"mix={mix}",
        f"data.classes={classes}",
        f"data.root={out / 'prepared'}",
        f"data.sequences={_sequences(cfg)}",
        f"paths.synthetic_full={out / 'synthetic'}",
        f"paths.synthetic_reduced={out / 'synthetic'}",
        f"seed={seed}",
        *sweep_overrides(cfg.sweep, slices, full),
    ]
    run_dir = out / SWEEP / run_folder(mix, classes, seed, cfg.seed)
    try:
        _train(overrides, run_dir)
    except InputError as err:
        remove_own(run_dir, patterns=TRAIN_RUN_FILES)
        print(f"  {mix}, {classes} classes: skipped ({err})", flush=True)


def _report(cfg: DemoSettings, out: Path) -> None:
    from synthseg.report import report
    from synthseg.report.settings import FigureSettings, ReportSettings

    synthetic = out / "synthetic"
    figures = FigureSettings(
        real=str(out / "prepared"),
        masks_full=str(out / "synthetic.work" / "masks"),
        spade_test=(str(out / "spade_test"),),
        # absent when the filter kept no mask
        synthetic_full=str(synthetic) if (synthetic / "manifest.csv").is_file() else None,
    )
    # this sweep's rows only: rows of other settings may be left in table1/ (they are not deleted)
    rows = tuple(row for row in _rows(cfg) if (out / SWEEP / row).is_dir())
    report.run(
        ReportSettings(runs=str(out / SWEEP), output=str(out / "report"), figures=figures, include=rows)
    )


def _rows(cfg: DemoSettings) -> list[str]:
    """The run folders of the sweep's rows under ``table1/``."""
    return [
        run_folder(mix, classes, seed, cfg.seed) for mix, classes, seed in sweep_runs(cfg.sweep, cfg.seed)
    ]


def _uses_synthetic(mix: str) -> bool:
    data = compose_config("train", ["experiment=table1_demo", f"mix={mix}"]).data
    return bool(data.get("synthetic") and data.synthetic.get("count"))


def build_stages(cfg: DemoSettings) -> list[Stage]:
    """The demo's stages, each the same code path as its command, in the order they are preferred.

    Each U-Net of the sweep is a stage of its own, so that the real-data rows train beside the GANs.
    """
    budgets = cfg.budgets
    uses_synthetic = {mix: _uses_synthetic(mix) for mix in cfg.sweep.mixes}
    runs = [
        (mix, classes, seed, uses_synthetic[mix]) for mix, classes, seed in sweep_runs(cfg.sweep, cfg.seed)
    ]
    # The sweep's budget spread over its runs, as many at a time as there are workers.
    run_budget = budgets.sweep * min(cfg.workers, len(runs)) / max(1, len(runs))
    # What each stage reads of the settings (Stage.reads; tests/test_demo_record.py checks every key)
    row_reads = ("sequences", "seed", *(f"sweep.{k}" for k in ROW_KEYS))
    spade_reads = ("sequences", "seed", "spade.epochs", "spade.switches", "spade.segmenter_weight")
    if cfg.spade.segmenter_weight > 0:  # which row is its U-Net
        spade_reads += ("sweep.mixes", "sweep.classes")
    return [
        Stage(
            "demo cohort",
            "cohort",
            partial(_cohort, cfg),
            budgets.cohort,
            alone=True,
            reads=("cases", "seed"),
        ),
        Stage(
            "prepare",
            "prepared",
            partial(_prepare, cfg),
            budgets.prepare,
            needs=("cohort",),
            alone=True,
            reads=("sequences", "seed"),
        ),
        Stage(
            "PGAN (label maps)",
            "pgan",
            partial(_pgan, cfg),
            budgets.pgan,
            TRAIN_RUN_FILES,
            needs=("prepared",),
            reads=("pgan_switches", "seed"),
        ),
        Stage(
            f"SPADE (label map -> {'+'.join(cfg.sequences)})",
            "spade",
            partial(_spade, cfg),
            budgets.spade,
            TRAIN_RUN_FILES,
            needs=("prepared", _segmenter(cfg)) if cfg.spade.segmenter_weight > 0 else ("prepared",),
            reads=spade_reads,
        ),
        Stage(
            "synthetic pairs",
            "synthetic",
            partial(_synthetic, cfg),
            budgets.synthetic,
            needs=("pgan", "spade"),
            reads=("synthetic", "resolution", "seed"),
        ),
        Stage(
            "SPADE on real test masks",
            "spade_test",
            partial(_spade_test, cfg),
            budgets.spade_test,
            needs=("spade",),
            reads=("spade.test_images", "resolution", "seed"),
        ),
        *[
            Stage(
                f"Table 1: {mix}, {classes} classes{'' if seed == cfg.seed else f', seed {seed}'} (U-Net)",
                f"{SWEEP}/{run_folder(mix, classes, seed, cfg.seed)}",
                partial(_sweep_run, cfg, mix, classes, seed),
                run_budget,
                TRAIN_RUN_FILES,
                needs=("prepared", "synthetic") if synthetic else ("prepared",),
                reads=row_reads,
            )
            # real-only rows first: they can start while the GANs train
            for mix, classes, seed, synthetic in sorted(runs, key=lambda r: r[3])
        ],
        Stage(
            "report",
            "report",
            partial(_report, cfg),
            budgets.report,
            needs=("prepared", "synthetic", "spade_test", *(f"{SWEEP}/{row}" for row in _rows(cfg))),
            alone=True,
            reads=("seed", "sweep.mixes", "sweep.classes", "sweep.seeds"),  # which rows it reports
            remake=True,
        ),
    ]


def _real_test_masks(prepared: Path, folder: Path, size: int, count: int) -> Path:
    """The first ``count`` non-empty real test label maps, reduced to ``size`` like the DataModule does."""
    import numpy as np

    from synthseg.data.labels import resize_labels
    from synthseg.data.manifest import read_manifest
    from synthseg.data.pngio import read_png, write_label8

    manifest = read_manifest(prepared)
    rows = [r for r in manifest.rows("test") if not manifest.empty[r]][:count]
    with claim_output(folder, command="demo-test-masks", inputs=[prepared], overwrite=True) as tmp:
        for row in rows:
            label = read_png(prepared / manifest.label[row])
            write_label8(
                tmp / f"{manifest.ids[row]}.png",
                resize_labels(label, size).astype(np.uint8),
            )
    return folder


# What the demo does differently from the paper's experiments besides its sizes (docs/fidelity.md).
DEMO_CHOICES = (
    "Demo improvements over the paper's settings (docs/fidelity.md): PGAN low-resolution reals by majority "
    "vote (model.lowres_labels=majority), SWD on 256 images per tick (model.swd_images), best snapshot among "
    "full-resolution ticks only (full_resolution_only=true), generated masks cleared of foreground islands "
    "under 8 pixels (synthetic.min_island) before the filter; U-Net inputs z-scored per slice "
    "(data.image_norm=zscore) and trained on Dice + class-weighted cross-entropy (model.ce_weight=1; its "
    "validation and Table 1 stay the paper's Dice); sizes, widths, schedules and the U-Net's learning rate "
    "(30x) are demo-sized; memory layout and precision are measured on this machine (auto: fp32 on CPU)."
)


def run(settings: DemoSettings) -> Path:
    """Run every stage of the demo into ``settings.output``; print a summary and return the folder, whose
    ``summary.json`` holds it (stages with their seconds, the Table 1 rows, the settings).

    A stage whose output carries the completion marker is skipped (so an interrupted demo resumes); an
    output without it is left over from an interrupted stage and is replaced, when everything in it is the
    stage's own (else the demo stops, naming the foreign file). Changed settings make again the completed
    stages that read them, or are refused (``demo_record.check_resume``). ``out`` itself must be new, empty or
    a demo folder, and one demo at a time writes it.
    """
    out = Path(settings.output).resolve()
    claim_folder(out, "demo")
    with output_lock(out):
        stages = build_stages(settings)
        check_resume(settings, out, stages)
        _run_stages(settings, out, stages)
    return out


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg demo`` (``conf/demo.yaml``)."""
    return run(DemoSettings.from_config(cfg))


def stage_threads(workers: int) -> int:
    """torch threads for each of ``workers`` stages running side by side: the cores shared out."""
    import torch

    return max(1, torch.get_num_threads() // max(1, workers))


def _run_stages(cfg: DemoSettings, out: Path, stages: list[Stage]) -> None:
    start = time.perf_counter()
    print(
        "One GAN pair (PGAN + SPADE) is trained, on all training slices; at demo size the reduced rows of Table 1 "
        "use the same synthetic pairs instead of a second pair trained on the reduced 20 %. The paper trained "
        "every row a fixed 150 epochs; here every row trains about as many steps as full_real (reduced_real more "
        "epochs of its fewer slices, full_syn23960 fewer of its more), so that the rows compare data, not "
        "training time.",
        flush=True,
    )
    print(DEMO_CHOICES, flush=True)
    switches = " ".join(cfg.pgan_switches) or "none (the paper's one channel of class indices)"
    print(f"PGAN label-map switches beyond the paper (pgan_switches; docs/masks.md): {switches}", flush=True)
    spade = list(cfg.spade.switches)
    if cfg.spade.segmenter_weight > 0:
        spade.append(f"spade.segmenter_weight={cfg.spade.segmenter_weight}")
    if cfg.synthetic.background != "keep":
        spade.append(f"synthetic.background={cfg.synthetic.background}")
    switches = " ".join(spade) or "none (the paper's losses)"
    print(f"SPADE switches beyond the paper (docs/spade.md): {switches}", flush=True)
    from synthseg.train import share_stdout
    from synthseg.utils.graph import Job, run_graph

    number = {stage.output: f"[{i}/{len(stages)}] {stage.name}" for i, stage in enumerate(stages, 1)}
    by_output = {stage.output: stage for stage in stages}
    jobs = []
    # stages that run: what needs them runs after them (stages come after their needs)
    again: set[str] = set()
    for stage in stages:
        target = out / stage.output
        if not cfg.force and not again.intersection(stage.needs) and is_current(out, stage):
            stage.skipped = True
            print(f"{number[stage.output]}: {target} is complete, skipped")
        else:
            again.add(stage.output)
            jobs.append(Job(stage.output, partial(stage.run, out), stage.needs, stage.alone))

    def started(job: Job) -> None:
        stage, target = by_output[job.key], out / job.key
        remove_own(target, patterns=stage.own)
        print(f"{number[job.key]} (budget {stage.budget_s:.0f} s) -> {target}", flush=True)

    def finished(job: Job, seconds: float) -> None:
        stage, target = by_output[job.key], out / job.key
        stage.seconds = seconds
        if not target.is_dir():  # a sweep run without enough synthetic pairs: said by the run, left unmarked
            return
        (target / DONE).write_text(f"{seconds:.1f}\n")
        over = " - over its budget" if seconds > stage.budget_s else ""
        print(f"{number[job.key]}: done in {seconds:.0f} s{over}", flush=True)

    run_graph(
        jobs,
        cfg.workers,
        threads=stage_threads(cfg.workers),
        initializer=share_stdout,
        on_start=started,
        on_done=finished,
    )
    summary = {
        "output": str(out),
        "total_seconds": round(time.perf_counter() - start, 1),
        "stages": [
            {
                "name": s.name,
                "output": str(out / s.output),
                "seconds": round(s.seconds, 1),
                "skipped": s.skipped,
            }
            for s in stages
        ],
        "results": collect_results(out, _rows(cfg)),
        "config": asdict(cfg),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    print(f"\nDemo finished in {summary['total_seconds']:.0f} s. Files:")
    for s in summary["stages"]:
        print(f"  {s['name']:<26} {s['output']}  ({s['seconds']:.0f} s{', skipped' if s['skipped'] else ''})")
    print(f"  {'summary':<26} {out / 'summary.json'}")
    table = out / "report" / "table1.md"
    if table.is_file():
        print(f"\nTable 1 at demo size ({table}):\n")
        print(table.read_text())
