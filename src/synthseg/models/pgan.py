"""The progressive-growing mask GAN as a LightningModule: schedule in kimg, WGAN-GP, EMA, ticks.

Training follows the official progressive GAN (Karras et al. 2018) with its one-GPU defaults:

- The schedule counts images shown (kimg), not steps. Starting at 4x4, each resolution trains stable for
  ``stable_kimg`` and then the next one fades in for ``transition_kimg`` (600 + 600 by default), until
  ``total_kimg`` (12,000). The minibatch and the tick length depend on the current resolution.
- One critic step then one generator step per minibatch (manual optimization), WGAN-GP with the drift term
  (:class:`synthseg.losses.wgan.WGANGPLoss`), Adam with its state reset whenever a resolution starts or ends
  its fade-in.
- A generator copy with exponential moving average of the weights (decay 0.999) makes every sample,
  snapshot and metric.
- At every tick (:class:`synthseg.models.pgan_ticks.PGANTicks`): a grid of EMA samples, an EMA snapshot,
  the SWD against training reals (``swd.csv``) and a full training checkpoint ``checkpoints/last.ckpt``.

Label maps (``label_encoding``): ``index`` (official) maps class indices 0..C-1 linearly to [-1, 1] and back
(rounded and clipped; the networks' ``index_order=anatomical`` orders the classes otherwise on that line);
``onehot`` gives each class a channel, the generator's softmax against one-hot reals, a mask being the argmax
(:mod:`synthseg.models.pgan_reals`, with the remedies against an entropy-reading critic). Low-resolution
reals (``lowres_labels``): ``average`` (the official default) takes the full-resolution label maps and makes
each lower level of detail as the official ``dataset_tool.py`` does (the block mean, rounded for ``index``:
its TFRecords hold uint8; class fractions for ``onehot``), fading in with the unrounded 2x2 mean,
nearest-upsampled (official ``process_reals``). ``majority`` (the documented improvement: averaging class
indices invents classes at boundaries, 0 and 6 average to 3) takes the DataModule's majority-vote labels
(:func:`synthseg.data.labels.resize_labels`) and fades in with their majority-vote half-resolution copy,
nearest-upsampled, as the generator blends its previous stage.

Beyond the paper, off by default: ``condition=slice`` shows both networks the slice's normalised axial
position (the reals' own positions; the fakes of a minibatch get the same ones), and ``augment`` applies
DiffAugment or ADA (:mod:`synthseg.models.pgan_augment`) to everything the critic sees.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from synthseg.checkpoint import network_entry
from synthseg.data.datamodule import DataSummary
from synthseg.data.labels import LOWRES_LABELS, colorize, net_to_labels, resize_labels
from synthseg.errors import InputError
from synthseg.losses.wgan import WGANGPLoss
from synthseg.models.common import allow_unused_parameters, data_summary
from synthseg.models.pgan_augment import AdaptiveProbability, LabelAugment
from synthseg.models.pgan_reals import (
    check_label_settings,
    fakes_for_critic,
    index_reals,
    onehot_reals,
    soften_reals,
)
from synthseg.models.pgan_ticks import PGANTicks
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.progressive import PAPER_BATCH_SIZES, PAPER_TICK_KIMG, GrowthStage, ProgressiveSchedule
from synthseg.utils.atomic import write_text_atomic
from synthseg.utils.visual import grid


# ------------------------------------------------------------------------------------------------ model
class PGAN(pl.LightningModule):
    """Trains a :class:`PGANGenerator` on label maps against a :class:`PGANDiscriminator`.

    Args:
        generator: the generator, built (its ``resolution`` is the target resolution).
        discriminator: the discriminator, built, same resolution and channels.
        optimizer_g, optimizer_d: partial optimizers (Adam lr 1e-3, betas (0, 0.99), eps 1e-8 officially).
        loss: the WGAN-GP objective (default: lambda 10, target 1, drift 0.001).
        classes: label classes (7); class indices 0..classes-1 map linearly onto [-1, 1].
        initial_resolution, stable_kimg, transition_kimg: the schedule (see :class:`ProgressiveSchedule`).
        total_kimg: training stops after this many thousand images.
        batch_sizes: global minibatch per resolution (official one-GPU preset by default).
        tick_kimg: tick length per resolution (official by default).
        ema_decay: decay of the generator's moving average (0.999).
        minibatch_repeats: minibatches per evaluation of the schedule (official 4): resolution, alpha,
            minibatch, Adam resets, ticks and the end of training change only between groups of this many.
        lowres_labels: how reals below full resolution are made: ``average`` (official block means) or
            ``majority`` (majority vote per block; see the module docstring).
        swd_images: generated and real images per SWD evaluation at every tick (official 16,384; 0 turns SWD
            off). With fewer training reals, the reals repeat in order, as the official dataset does.
        swd_batch_size: images per batch while generating and measuring SWD.
        grid_size: (rows, columns) of the sample grid.
        snapshot_ticks: save an EMA snapshot every this many ticks (0: never; the last tick always).
        snapshot_critic: each snapshot also holds the critic of its tick (entry ``critic``; for
            ``synthseg filter method=critic``); off: snapshots hold the generator alone.
        checkpoint_ticks: write the full checkpoint ``checkpoints/last.ckpt`` every this many ticks (0: never).
        keep_checkpoints: besides ``last.ckpt``, keep this many per-tick full checkpoints (0: none).
        seed: seed of latents and mixing factors (the training RNG stream, saved in checkpoints).
        output_dir: where snapshots, ``swd.csv`` and checkpoints go (default: the trainer's root dir).
        channels_last: fast path: NHWC weights and activations (same values, faster convolutions).
        label_encoding: ``index`` (official) or ``onehot``; the networks must be built for it.
        onehot_fakes, onehot_reals, onehot_temperature, real_noise: ``onehot``'s remedies against a critic
            that reads entropy (:mod:`synthseg.models.pgan_reals`); ignored with ``index``.
        condition: ``none`` (official) or ``slice`` (the networks must be built for it; the DataModule
            delivers ``slice_position`` with every label map).
        augment: ``none`` (official), ``diffaugment`` or ``ada`` (:mod:`synthseg.models.pgan_augment`).
        ada_target, ada_kimg, ada_interval: ADA's r_t target, kimg for p to move from 0 to 1, minibatches
            between adjustments (Karras et al. 2020: 0.6, 500, 4).

    Mixed precision comes from the trainer (``trainer.precision=bf16-mixed`` or ``16-mixed``): the networks
    run under autocast, pixel norm and minibatch standard deviation stay in float32, and the gradient
    penalty is computed with the GradScaler's scale (see :meth:`WGANGPLoss.discriminator`).
    """

    def __init__(
        self,
        generator: PGANGenerator,
        discriminator: PGANDiscriminator,
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        loss: WGANGPLoss | None = None,
        classes: int = 7,
        initial_resolution: int = 4,
        stable_kimg: float = 600.0,
        transition_kimg: float = 600.0,
        total_kimg: float = 12000.0,
        batch_sizes: Mapping[int, int] | None = None,
        tick_kimg: Mapping[int, float] | None = None,
        ema_decay: float = 0.999,
        minibatch_repeats: int = 4,
        lowres_labels: str = "average",
        swd_images: int = 16384,
        swd_batch_size: int = 64,
        grid_size: tuple[int, int] | list[int] = (4, 8),
        snapshot_ticks: int = 1,
        snapshot_critic: bool = False,
        checkpoint_ticks: int = 1,
        keep_checkpoints: int = 0,
        seed: int = 0,
        output_dir: str | None = None,
        channels_last: bool = False,
        label_encoding: str = "index",
        onehot_fakes: str = "softmax",
        onehot_reals: str = "noise",
        onehot_temperature: float = 1.0,
        real_noise: float = 0.1,
        condition: str = "none",
        augment: str = "none",
        ada_target: float = 0.6,
        ada_kimg: float = 500.0,
        ada_interval: int = 4,
    ) -> None:
        super().__init__()
        # Primitive copies before save_hyperparameters, so checkpoints load with weights_only=True.
        batch_sizes = {int(k): int(v) for k, v in (batch_sizes or PAPER_BATCH_SIZES).items()}
        tick_kimg = {int(k): float(v) for k, v in (tick_kimg or PAPER_TICK_KIMG).items()}
        grid_size = [int(v) for v in grid_size]
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer_g", "optimizer_d", "loss"])
        if generator.resolution != discriminator.resolution or generator.channels != discriminator.channels:
            raise ValueError("generator and discriminator must have the same resolution and channels")
        if generator.channels != 1:
            raise ValueError(f"label maps have one channel, the generator makes {generator.channels}")
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        check_label_settings(
            (generator, discriminator), label_encoding, condition, classes,
            onehot_fakes, onehot_reals, onehot_temperature, real_noise,
        )  # fmt: skip
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if lowres_labels not in LOWRES_LABELS:
            raise ValueError(f"lowres_labels must be one of {LOWRES_LABELS}, got {lowres_labels!r}")
        if minibatch_repeats < 1:
            raise ValueError(f"minibatch_repeats must be >= 1, got {minibatch_repeats}")
        if total_kimg <= 0:
            raise ValueError(f"total_kimg must be positive, got {total_kimg}")
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be (rows, columns) >= 1, got {grid_size}")
        self.automatic_optimization = False
        self.total_images = round(float(total_kimg) * 1000)
        self.ema_decay = float(ema_decay)
        self.minibatch_repeats = int(minibatch_repeats)
        self.lowres_labels = lowres_labels
        self.swd_images = int(swd_images)
        self.swd_batch_size = int(swd_batch_size)
        self.grid_size = (grid_size[0], grid_size[1])
        self.snapshot_ticks, self.snapshot_critic = int(snapshot_ticks), bool(snapshot_critic)
        self.checkpoint_ticks = int(checkpoint_ticks)
        self.keep_checkpoints = int(keep_checkpoints)
        self.seed = int(seed)
        self.output_dir = output_dir
        if channels_last:
            generator = generator.to(memory_format=torch.channels_last)
            discriminator = discriminator.to(memory_format=torch.channels_last)
        self.channels_last = bool(channels_last)
        self.generator = generator
        self.discriminator = discriminator
        # No batch norm or dropout: train/eval mode makes no difference to the EMA copy.
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False)
        self.optimizer_g_factory = optimizer_g
        self.optimizer_d_factory = optimizer_d
        self.loss = loss or WGANGPLoss()
        self.classes = int(classes)
        self.label_encoding, self.condition = label_encoding, condition
        self.onehot_fakes, self.onehot_reals = onehot_fakes, onehot_reals
        self.onehot_temperature, self.real_noise = float(onehot_temperature), float(real_noise)
        self.augment = LabelAugment(augment)
        self.ada = AdaptiveProbability(ada_target, ada_kimg, ada_interval)
        self.schedule = ProgressiveSchedule(
            generator.resolution, initial_resolution, stable_kimg, transition_kimg, batch_sizes, tick_kimg
        )
        # Training state (all of it goes into checkpoints; see on_save_checkpoint).
        self.images_seen = 0
        self.steps = 0  # minibatches trained
        self.stage_images = 0  # images shown when the schedule was last evaluated
        self.tick = 0
        self.tick_start_images = 0
        self.last_phase: tuple[int, int] | None = None
        self.swd_history: list[dict[str, Any]] = []
        self.rng = torch.Generator().manual_seed(int(seed))
        self.empty_fraction: float | None = None
        self._served: tuple[int, int] | None = None
        self.data: DataSummary | None = None
        self.reals: Any = None  # the training set (SWD reals), from setup()
        self._feed: Any = None  # the DataModule that serves the schedule's resolution and minibatch

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or self.trainer.default_root_dir)

    def setup(self, stage: str) -> None:
        allow_unused_parameters(self.trainer)
        if self.trainer.world_size > 1:
            # Each process draws its own latents.
            self.rng.manual_seed(self.seed + 1_000_003 * self.global_rank)
        self.data = data_summary(self.trainer)
        # The one other place the DataModule is touched: training reals for the SWD, and the schedule's
        # resolution and minibatch (see _serve).
        datamodule = getattr(self.trainer, "datamodule", None)
        self.reals = getattr(datamodule, "train_set", None)
        self._feed = datamodule if hasattr(datamodule, "set_resolution") else None
        if self.data is None:
            return
        if self.data.size % self.generator.resolution:
            raise InputError(
                f"model.generator.resolution={self.generator.resolution} does not divide the dataset's "
                f"slice size {self.data.size}: train at a resolution the slices can be reduced to"
            )
        self.empty_fraction = self.data.empty_fraction
        excluded = "excluded" if self.data.drop_empty else "NOT excluded (data.drop_empty)"
        rank_zero_info(
            f"PGAN: {self.data.empty_label_maps} of {self.data.train_label_maps} training label maps are empty "
            f"({100 * self.empty_fraction:.2f} %), {excluded}"
        )

    def configure_callbacks(self) -> list[pl.Callback]:
        # This module writes full checkpoints at ticks (the schedule is in kimg; an endless epoch never
        # ends). A ModelCheckpoint that saves nothing replaces any configured or default one, so no second
        # writer competes for checkpoints/last.ckpt.
        return [ModelCheckpoint(save_top_k=0, save_last=False, monitor=None), PGANTicks()]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            self.optimizer_g_factory(params=self.generator.parameters()),
            self.optimizer_d_factory(params=self.discriminator.parameters()),
        ]

    @property
    def group_done(self) -> bool:
        """True between groups of ``minibatch_repeats`` minibatches, where the schedule is evaluated."""
        return self.steps % self.minibatch_repeats == 0

    @property
    def stage(self) -> GrowthStage:
        """The stage of the current group of minibatches (the next one's between groups)."""
        return self.schedule.at(self.images_seen if self.group_done else self.stage_images)

    def on_train_start(self) -> None:
        self._serve(self.stage)
        if self.trainer.is_global_zero:
            info = {
                "target_resolution": self.generator.resolution,
                "classes": self.classes,
                "empty_fraction": self.empty_fraction,
                "num_train": self.data.num_train if self.data is not None else None,
                "started_at_kimg": self.images_seen / 1000.0,
            }
            write_text_atomic(self.run_dir / "pgan_run.json", json.dumps(info, indent=2))

    def _serve(self, stage: GrowthStage) -> None:
        """Ask the DataModule for reals at the stage's resolution and global minibatch (following batches).

        Block means need the full-resolution label maps: with ``average`` the DataModule serves the target
        resolution throughout, and :meth:`_prepare_reals` reduces them (class fractions with ``onehot``).
        """
        resolution = self.generator.resolution if self.lowres_labels == "average" else stage.resolution
        wanted = (resolution, stage.batch_size)
        if wanted == self._served or self._feed is None:
            return
        self._feed.set_resolution(resolution)
        self._feed.set_batch_size(stage.batch_size)
        self._served = wanted

    # ------------------------------------------------------------------------------------------ helpers
    def _latents(self, count: int) -> Tensor:
        return torch.randn(count, self.generator.latent_dim, generator=self.rng).to(self.device)

    def _optimizers(self) -> tuple[LightningOptimizer, LightningOptimizer]:
        opt_g, opt_d = cast(list[LightningOptimizer], self.optimizers())
        return opt_g, opt_d

    def _reset_optimizers(self) -> None:
        for opt in self._optimizers():
            opt.optimizer.state.clear()

    def _prepare_reals(self, labels: Tensor, stage: GrowthStage) -> Tensor:
        """Class indices (N, h, w) -> faded network values (N, C, r, r) at the stage's resolution, as the
        critic sees them before augmentation (:mod:`synthseg.models.pgan_reals`)."""
        if self.label_encoding == "onehot":
            reals = onehot_reals(labels, stage, self.classes, self.lowres_labels)
            reals = soften_reals(reals, self.onehot_reals, self.real_noise, self.rng)
        else:
            reals = index_reals(labels, stage, self.classes, self.lowres_labels, self.generator.index_order)
        return reals.contiguous(memory_format=torch.channels_last) if self.channels_last else reals

    def _for_critic(self, x: Tensor, fakes: bool) -> Tensor:
        """Generated values through ``onehot``'s remedy, then everything through the augmentation."""
        if fakes and self.label_encoding == "onehot":
            x = fakes_for_critic(x, self.onehot_fakes, self.onehot_temperature, self.rng)
        return self.augment(x, self.ada.p, self.rng)

    def _positions(self, batch: dict[str, Tensor], count: int) -> Tensor | None:
        """The minibatch's slice positions (``condition=slice``), else None."""
        if self.condition == "none":
            return None
        if "slice_position" not in batch:
            raise InputError("model.condition=slice: the data deliver no slice_position with the label maps")
        positions = batch["slice_position"][:count].to(self.device, torch.float32)
        if not torch.isfinite(positions).all():
            raise InputError("model.condition=slice: a training slice has no axial position (synthetic?)")
        return positions

    def _penalty_grad_scale(self) -> float:
        """The fp16 GradScaler's current scale (1 without loss scaling: fp32 and bf16)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.ema_decay
        for ema, live in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            ema.lerp_(live, 1.0 - decay)

    # ------------------------------------------------------------------------------------------- train
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.group_done:
            self.stage_images = self.images_seen
        stage = self.stage
        if stage.phase != self.last_phase:
            if self.last_phase is not None:
                self._reset_optimizers()
            self.last_phase = stage.phase
        opt_g, opt_d = self._optimizers()
        world = self.trainer.world_size
        # A batch prefetched before the schedule shrank the minibatch is cut to the scheduled size.
        reals = self._prepare_reals(batch["label"][: max(1, stage.batch_size // world)], stage)
        count = reals.shape[0]
        res, alpha = stage.resolution, stage.alpha
        positions = self._positions(batch, count)

        def critic(x: Tensor) -> Tensor:
            if positions is None:
                return self.discriminator(x, alpha)
            return self.discriminator(x, alpha, positions)

        # Critic step.
        self.toggle_optimizer(opt_d)
        with torch.no_grad():
            fakes = self.generator(self._latents(count), res, alpha, positions)
            fakes = self._for_critic(fakes, fakes=True)
        reals = self._for_critic(reals, fakes=False)
        mixing = torch.rand(count, 1, 1, 1, generator=self.rng).to(self.device)
        scale = self._penalty_grad_scale()
        d_terms = self.loss.discriminator(critic, reals, fakes, mixing, grad_scale=scale)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_terms["loss"])
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator step, on fresh latents.
        self.toggle_optimizer(opt_g)
        fakes = self._for_critic(self.generator(self._latents(count), res, alpha, positions), fakes=True)
        g_terms = self.loss.generator(critic, fakes)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_terms["loss"])
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self._update_ema()
        self.images_seen += count * world
        self.steps += 1
        if self.augment.mode == "ada":  # every step: r_t is a mean over all of them
            signs = self.trainer.strategy.reduce(d_terms["D_real_sign"] * count, reduce_op="sum")
            self.ada.accumulate(float(signs), count * world)
        if not self._logs_written():
            return
        if self.augment.mode == "ada":
            self.log_dict(self.ada.metrics(), prog_bar=False)
        self.log_dict(
            {
                "train/loss_D": d_terms["loss"].detach(),
                "train/loss_G": g_terms["loss"].detach(),
                "train/D_real": d_terms["D_real"],
                "train/D_fake": d_terms["D_fake"],
                "train/wasserstein": d_terms["wasserstein"],
                "train/gradient_penalty": d_terms["gradient_penalty"],
                "train/drift": d_terms["drift"],
            },
            prog_bar=False,
        )
        self.log_dict(
            {"train/kimg": self.images_seen / 1000.0, "train/resolution": float(res), "train/alpha": alpha},
            prog_bar=True,
        )

    def _logs_written(self) -> bool:
        """Whether this step's values reach the logger (every ``log_every_n_steps`` and the last step; logging
        the others cost a sixth of a profiled demo PGAN run on CPU)."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None) if trainer is not None else None
        written = getattr(connector, "should_update_logs", True)
        return bool(written) or (self.group_done and self.images_seen >= self.total_images)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After each group (the tick, if one was due, was written by PGANTicks just before this hook).
        if not self.group_done:
            return
        if self.images_seen >= self.total_images:
            self.trainer.should_stop = True
        else:
            self._serve(self.stage)

    def dataset_size(self) -> int | None:
        """Side length of the training slices on disk (None without a DataModule summary)."""
        return self.data.size if self.data is not None else None

    @torch.no_grad()
    def generate_labels(
        self,
        count: int,
        stage: GrowthStage,
        seed: int,
        size: int | None = None,
        positions: Tensor | None = None,
    ) -> Iterator[Tensor]:
        """EMA samples as class indices (B, size, size) uint8 in batches, from a fixed latent seed, for either
        label encoding. ``positions`` (count,): the slices' axial positions in [0, 1] (``condition=slice``;
        None: uniform, drawn from the latents' lengths)."""
        gen = torch.Generator().manual_seed(seed)
        batch = self.swd_batch_size
        for start in range(0, count, batch):
            n = min(batch, count - start)
            z = torch.randn(n, self.generator.latent_dim, generator=gen).to(self.device)
            where = None if positions is None else positions[start : start + n].to(self.device)
            if self.condition == "none":  # the official generator's call
                x = self.generator_ema(z, stage.resolution, stage.alpha)
            else:
                x = self.generator_ema(z, stage.resolution, stage.alpha, where)
            labels = net_to_labels(x, self.classes, self.generator.index_order)
            yield resize_labels(labels, size or stage.resolution, self.classes)

    def log_images(self, stage: GrowthStage | None = None) -> dict[str, np.ndarray]:
        """A grid of EMA samples at ``stage`` (default: the current one), in the paper's colours."""
        stage = stage or self.stage
        rows, cols = self.grid_size
        tile = max(stage.resolution, 64)  # small stages are enlarged so they stay visible
        # A conditional generator's grid sweeps the axial positions, first to last, row by row.
        positions = torch.linspace(0, 1, rows * cols) if self.condition != "none" else None
        labels = torch.cat(list(self.generate_labels(rows * cols, stage, self.seed + 1, tile, positions)))
        tiles = [colorize(t.cpu().numpy(), min(self.classes, 7)) for t in labels]
        return {"samples/ema": grid([tiles[r * cols : (r + 1) * cols] for r in range(rows)])}

    # ----------------------------------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pgan"] = {
            "images_seen": int(self.images_seen),
            "steps": int(self.steps),
            "stage_images": int(self.stage_images),
            "tick": int(self.tick),
            "tick_start_images": int(self.tick_start_images),
            "last_phase": list(self.last_phase) if self.last_phase is not None else None,
            "rng_state": self.rng.get_state(),
            "swd_history": [dict(row) for row in self.swd_history],
            "dataset_size": self.dataset_size(),
            "augment": self.ada.state_dict(),
        }
        # Lets generate-masks rebuild the EMA generator (state_dict "generator_ema.*") at the stage it
        # was trained to, without re-running the schedule.
        reached = self.schedule.at(self.images_seen)
        checkpoint["pgan"]["generator"] = network_entry(
            self.generator,
            meta={
                "tick": int(self.tick),
                "kimg": self.images_seen / 1000.0,
                "resolution": reached.resolution,
                "alpha": reached.alpha,
                "dataset_size": checkpoint["pgan"]["dataset_size"],
                **{k: getattr(self.generator, k) for k in ("label_encoding", "condition", "index_order")},
            },
        )
        # ... and the critic (state_dict "discriminator.*") for synthseg filter method=critic, at the same stage.
        checkpoint["pgan"]["discriminator"] = network_entry(
            self.discriminator, meta=checkpoint["pgan"]["generator"]["meta"]
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("pgan")
        if state is None:
            return
        self.images_seen = int(state["images_seen"])
        self.steps = int(state["steps"])
        self.stage_images = int(state["stage_images"])
        self.tick = int(state["tick"])
        self.tick_start_images = int(state["tick_start_images"])
        self.last_phase = tuple(state["last_phase"]) if state["last_phase"] is not None else None
        self.rng.set_state(state["rng_state"])
        if self._trainer is not None and self._trainer.world_size > 1:
            # The saved stream is rank 0's; every process continues on its own, still reproducibly.
            self.rng.manual_seed(self.seed + 1_000_003 * self.global_rank + self.images_seen)
        self.swd_history = [dict(row) for row in state["swd_history"]]
        if isinstance(state.get("augment"), dict):  # 0.2.0 checkpoints have none: ADA starts at p = 0
            self.ada.load_state_dict(state["augment"])

    def results_details(self) -> dict[str, Any]:
        """Extra entries for the run's results.json."""
        scored = [row for row in self.swd_history if "swd_avg" in row and "snapshot" in row]
        best = min(scored, key=lambda row: row["swd_avg"]) if scored else None
        return {
            "pgan": {
                "kimg": self.images_seen / 1000.0,
                "ticks": self.tick,
                "empty_fraction": self.empty_fraction,
                "best_snapshot": best,
            }
        }

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` EMA label maps (count, H, W) uint8 at the current stage (notebooks, tests)."""
        return torch.cat(list(self.generate_labels(count, self.stage, seed))).cpu().numpy()
