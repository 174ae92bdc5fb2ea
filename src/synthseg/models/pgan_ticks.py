"""PGAN's per-tick work as a callback: sample grid, EMA snapshot, SWD, ``swd.csv`` and the full checkpoint.

A tick ends after a group of minibatches once ``tick_kimg`` (by resolution) more images have been shown, and
at the end of training. At every tick, on global rank 0: a grid of EMA samples to the logger, a snapshot of the
EMA generator (``snapshots/network-snapshot-<kimg>.pt``, rebuilt by :func:`synthseg.checkpoint.load_network`),
with ``model.snapshot_critic`` the critic of that tick beside it (entry ``critic``),
the SWD of EMA samples against training reals (``swd/avg`` and per level, appended to ``swd.csv``); on every
rank, every ``checkpoint_ticks`` ticks, the full training checkpoint ``checkpoints/last.ckpt`` (older per-tick
checkpoints kept as configured). The tick counters and the SWD history live in the module (its checkpoint).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from synthseg.checkpoint import network_snapshot, save_network
from synthseg.models.common import write_images
from synthseg.progressive import GrowthStage, ProgressiveSchedule
from synthseg.utils.atomic import write_text_atomic


class TickedPGAN(Protocol):
    """What the tick callback reads and advances on the PGAN module (:class:`synthseg.models.pgan.PGAN`).

    The tick counters and the SWD history live in the module, so that they are in its checkpoint; the
    callback depends on this interface, not on the module, so the two files import in one direction only.
    """

    generator: Any
    generator_ema: Any
    discriminator: Any
    reals: Any
    schedule: ProgressiveSchedule
    classes: int
    label_encoding: str
    condition: str
    seed: int
    device: torch.device
    ema_decay: float
    swd_images: int
    swd_batch_size: int
    snapshot_ticks: int
    snapshot_critic: bool
    checkpoint_ticks: int
    keep_checkpoints: int
    group_done: bool
    stage_images: int
    images_seen: int
    total_images: int
    tick: int
    tick_start_images: int
    swd_history: list[dict[str, Any]]

    @property
    def run_dir(self) -> Path: ...

    def dataset_size(self) -> int | None: ...

    def generate_labels(
        self,
        count: int,
        stage: GrowthStage,
        seed: int,
        size: int | None = None,
        positions: Tensor | None = None,
    ) -> Iterator[Tensor]: ...

    def log_images(self, stage: GrowthStage | None = None) -> dict[str, Any]: ...

    def log(self, name: str, value: Any, **kwargs: Any) -> None: ...

    def log_dict(self, values: dict[str, Any], **kwargs: Any) -> None: ...


class PGANTicks(pl.Callback):
    """Ends PGAN's ticks and writes what each tick leaves behind (added by ``PGAN.configure_callbacks``)."""

    def __init__(self) -> None:
        self._wall_start = time.perf_counter()
        self._swd_warned = False

    def on_train_start(self, trainer: pl.Trainer, pgan: TickedPGAN) -> None:
        self._wall_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pgan: TickedPGAN, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not pgan.group_done:
            return
        # As the official loop: after each group, with the schedule the group was trained with.
        trained = pgan.schedule.at(pgan.stage_images)
        done = pgan.images_seen >= pgan.total_images
        if done or pgan.images_seen >= pgan.tick_start_images + round(trained.tick_kimg * 1000):
            self.tick(trainer, pgan, trained, done)

    def tick(self, trainer: pl.Trainer, pgan: TickedPGAN, stage: GrowthStage, done: bool) -> None:
        # Training time of this tick per kimg, without the previous tick's maintenance (as the official log).
        tick_seconds = time.perf_counter() - self._wall_start
        tick_kimg = (pgan.images_seen - pgan.tick_start_images) / 1000.0
        pgan.tick += 1
        pgan.tick_start_images = pgan.images_seen
        kimg = pgan.images_seen / 1000.0
        record: dict[str, Any] = {
            "tick": pgan.tick,
            "kimg": kimg,
            "resolution": stage.resolution,
            "alpha": stage.alpha,
            "sec_per_kimg": tick_seconds / tick_kimg if tick_kimg > 0 else None,
        }
        if trainer.is_global_zero:
            write_images(trainer, _AtStage(pgan, stage))
            if done or (pgan.snapshot_ticks > 0 and pgan.tick % pgan.snapshot_ticks == 0):
                path = pgan.run_dir / "snapshots" / f"network-snapshot-{int(kimg):06d}.pt"
                if path.exists():  # ticks shorter than 1 kimg (tests, demos) would share a name
                    path = path.with_name(f"network-snapshot-{int(kimg):06d}-tick{pgan.tick:04d}.pt")
                # With model.snapshot_critic, the critic of this tick too (synthseg filter method=critic).
                critic = {"critic": network_snapshot(pgan.discriminator)} if pgan.snapshot_critic else None
                save_network(pgan.generator_ema, path, meta=snapshot_meta(pgan, stage), extra=critic)
                record["snapshot"] = os.path.relpath(path, pgan.run_dir)
            swd = self.measure_swd(pgan, stage) if pgan.swd_images > 0 else None
            if swd is not None:
                record.update({f"swd_{k}": v for k, v in swd.items()})
                pgan.log_dict({f"swd/{k}": v for k, v in swd.items()}, rank_zero_only=True)
            pgan.swd_history.append(record)
            write_history(pgan)
            if record["sec_per_kimg"] is not None:
                pgan.log("timing/sec_per_kimg", record["sec_per_kimg"], rank_zero_only=True)
            rank_zero_info(
                f"tick {pgan.tick}  kimg {kimg:.3f}  res {stage.resolution}  alpha {stage.alpha:.3f}  "
                f"sec/kimg {record['sec_per_kimg'] or 0:.1f}" + (f"  swd avg {swd['avg']:.4f}" if swd else "")
            )
        if pgan.checkpoint_ticks > 0 and (done or pgan.tick % pgan.checkpoint_ticks == 0):
            save_full_checkpoint(trainer, pgan)
        self._wall_start = time.perf_counter()

    def measure_swd(self, pgan: TickedPGAN, stage: GrowthStage) -> dict[str, float] | None:
        """SWD (x1000) of EMA samples against training reals, both at the target resolution.

        Samples of earlier stages are nearest-upsampled to the target resolution, as the official networks
        output them, so the values of all ticks are on one scale and :mod:`synthseg.synth.select` can pick
        the best snapshot among all of them. Both sets hold ``swd_images`` images (official 16,384): reals
        beyond the training set's size repeat it from the start, as the official evaluation reads its
        repeating dataset in order (see :func:`swd_real_indices`). A slice-conditional generator makes each
        fake at the position of the real it is compared with.
        """
        size = pgan.generator.resolution
        train_set = pgan.reals
        try:
            from synthseg.metrics.sliced_wasserstein import labels_to_uint8, sliced_wasserstein_from_batches
        except ImportError:
            train_set = None
        if train_set is None or size < 16 or pgan.classes != 7:
            if not self._swd_warned:
                rank_zero_warn(
                    "PGAN: SWD skipped (needs the SWD metric, 7 classes, a DataModule with "
                    "train_set and a target resolution of at least 16)"
                )
                self._swd_warned = True
            return None
        count = pgan.swd_images
        order = swd_real_indices(len(train_set), count)
        batch = pgan.swd_batch_size

        def reals() -> Iterator[Tensor]:
            for start in range(0, count, batch):
                items = [train_set[(int(i), size)]["label"] for i in order[start : start + batch]]
                yield labels_to_uint8(torch.stack(items)[:, None])

        positions = None
        if pgan.condition != "none":
            positions = torch.tensor([train_set.slice_position(int(i)) for i in order], dtype=torch.float32)

        def fakes() -> Iterator[Tensor]:
            for labels in pgan.generate_labels(count, stage, pgan.seed + 2, size, positions):
                yield labels_to_uint8(labels[:, None])

        return sliced_wasserstein_from_batches(reals(), fakes(), seed=pgan.seed, device=pgan.device)


def swd_real_indices(available: int, count: int) -> list[int]:
    """Indices of the ``count`` training reals an SWD evaluation compares with: the first ``count`` in order,
    repeating from the start when the set is smaller.

    The official evaluation (``util_scripts.evaluate_metrics``) reads its TFRecord dataset unshuffled and
    repeating, so the paper's reduced instance (4,404 reals) was measured against 16,384 reals, each one
    three or four times; SWD values of sets of different size are not comparable.
    """
    if available <= 0:
        raise ValueError("no training reals to measure the SWD against")
    return [i % available for i in range(count)]


class _AtStage:
    """``pgan.log_images`` bound to the stage the tick's group was trained with."""

    def __init__(self, pgan: TickedPGAN, stage: GrowthStage) -> None:
        self.pgan, self.stage = pgan, stage

    def log_images(self) -> dict[str, Any]:
        return self.pgan.log_images(self.stage)


def snapshot_meta(pgan: TickedPGAN, stage: GrowthStage) -> dict[str, Any]:
    """What a snapshot records besides the weights: where training stood, and the stage to run it at."""
    return {
        "tick": pgan.tick,
        "kimg": pgan.images_seen / 1000.0,
        "resolution": stage.resolution,
        "alpha": stage.alpha,
        "classes": pgan.classes,
        "label_encoding": pgan.label_encoding,  # also in the generator's init_args: how to read its output
        "condition": pgan.condition,
        "index_order": pgan.generator.index_order,
        "dataset_size": pgan.dataset_size() or pgan.generator.resolution,
        "ema_decay": pgan.ema_decay,
    }


def write_history(pgan: TickedPGAN) -> None:
    """Rewrite ``swd.csv`` (one row per tick, the union of the rows' columns) atomically."""
    keys: list[str] = []
    for row in pgan.swd_history:
        keys += [k for k in row if k not in keys]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(pgan.swd_history)
    write_text_atomic(pgan.run_dir / "swd.csv", text.getvalue())


def save_full_checkpoint(trainer: pl.Trainer, pgan: TickedPGAN) -> None:
    """The full training state (for resume) to ``checkpoints/last.ckpt``, keeping ``keep_checkpoints`` older."""
    folder = pgan.run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".last.{pgan.tick}.ckpt.partial"
    trainer.save_checkpoint(tmp, weights_only=False)
    if not trainer.is_global_zero:
        return
    keep = pgan.keep_checkpoints
    if keep > 0:
        kept = folder / f"tick-{pgan.tick:04d}.ckpt"
        try:
            os.link(tmp, kept)  # a second name for the same file: no extra disk space
        except OSError:
            shutil.copyfile(tmp, kept)
        for path in sorted(folder.glob("tick-*.ckpt"))[:-keep]:
            path.unlink(missing_ok=True)
    os.replace(tmp, folder / "last.ckpt")
