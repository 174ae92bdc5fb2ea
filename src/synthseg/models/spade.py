"""SPADE as a LightningModule: hinge + feature matching, TTUR, linear learning-rate decay, exact resume.

One training iteration follows the official order: a generator step (hinge ``GAN`` + ``GAN_Feat`` [+ ``KLD``])
then a discriminator step (``D_fake`` + ``D_real``) on a fresh, detached fake; real and fake go through the
discriminator together in one batch. The learning rate of both optimisers stays constant for ``niter`` epochs
and then falls linearly to zero over ``niter_decay`` epochs, as the official code does; it is a pure function
of the epoch, so a resumed run gets exactly the rate of an uninterrupted one.

Images arrive normalised to [-1, 1] with the training maximum of each sequence (``data.image_norm: tanh``);
one generator paints every sequence of ``data.sequences`` (one output channel each) from one label map, so
they stay co-registered. The maxima and the sequence names are kept in the checkpoint so generation maps
every output channel back to its own 16-bit range.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from synthseg.checkpoint import SPADE_CHECKPOINT_KEY, network_entry
from synthseg.data.labels import colorize
from synthseg.errors import InputError
from synthseg.losses.adversarial import SPADEObjective
from synthseg.models.common import ImageLogger, allow_unused_parameters, data_summary
from synthseg.models.segmenter import SegmenterLoss
from synthseg.networks.spade import ConvEncoder, MultiscaleDiscriminator, SPADEGenerator
from synthseg.utils.visual import grid

log = logging.getLogger(__name__)

CHECKPOINT_KEY = SPADE_CHECKPOINT_KEY  # the entry generate-images rebuilds the generator from


def lr_factor(epoch: int, niter: int, niter_decay: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: 1 for ``niter`` epochs, then linear decay.

    The official code lowers the rate by ``lr / niter_decay`` at the end of every epoch after ``niter``, so
    epoch ``niter + k`` (0-based, k = 0 .. niter_decay - 1) trains at ``1 - k / niter_decay``.
    """
    if niter_decay <= 0:
        return 1.0
    return max(0.0, 1.0 - max(0, epoch - niter) / niter_decay)


def split_epochs(max_epochs: int | None, niter: int, niter_decay: int | None = None) -> tuple[int, int]:
    """(``niter``, ``niter_decay``) of a run of ``max_epochs`` (``trainer.max_epochs``, the one place the epoch
    count is stored): the decay takes the epochs after ``niter``.

    An explicit ``niter_decay`` is kept (a run stopped early on purpose, to be resumed into the planned
    schedule), with a warning when the two disagree.
    """
    if niter_decay is not None:
        if max_epochs is not None and max_epochs >= 0 and niter + niter_decay != max_epochs:
            log.warning(
                "trainer.max_epochs=%s but model.niter + model.niter_decay = %s: the learning-rate schedule "
                "is laid out for the latter",
                max_epochs,
                niter + niter_decay,
            )
        return niter, niter_decay
    if max_epochs is None or max_epochs < 0:  # an open-ended run: no decay
        return niter, 0
    if max_epochs < niter:  # a short run (smoke test): constant rates, as planned for its epochs
        log.warning("trainer.max_epochs=%s is shorter than model.niter=%s: no decay", max_epochs, niter)
        return niter, 0
    return niter, max_epochs - niter


def to_display(image: torch.Tensor) -> np.ndarray:
    """(1, H, W) image in [-1, 1] -> (H, W, 3) uint8 on the fixed [-1, 1] scale (comparable across tiles)."""
    gray = ((image[0].float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).cpu().numpy()
    return np.repeat(gray[..., None], 3, axis=-1)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 (the global state seed_everything sets)
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy/python states as tensors and lists, so the checkpoint stays loadable with weights_only=True.
        "numpy": [
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class SPADEModule(pl.LightningModule):
    """Trains a :class:`SPADEGenerator` against a :class:`MultiscaleDiscriminator` (manual optimisation).

    Args:
        generator: the generator, built.
        discriminator: the multiscale discriminator, built (input: label channels + image channels).
        optimizer_g: partial optimizer for the generator (and encoder); TTUR: Adam lr 1e-4, betas (0, 0.9).
        optimizer_d: partial optimizer for the discriminator; TTUR: Adam lr 4e-4, betas (0, 0.9).
        encoder: the VAE image encoder when the generator has ``use_vae`` (else None).
        lambda_feat: feature-matching weight (10, divided among the discriminators).
        lambda_kld: KL weight with the VAE (0.05).
        lambda_l1: pixel L1 weight (0: the paper; beyond it, see :class:`SPADEObjective`).
        lambda_gan: weight of the generator's hinge term (1: the paper; beyond it, see :class:`SPADEObjective`).
        lambda_class: class-mean weight (0: the paper; beyond it, see :class:`SPADEObjective`).
        lambda_seg: weight of the segmenter term (0: the paper; beyond it, see
            :mod:`synthseg.models.segmenter`): a frozen real-data U-Net (``segmenter``) must find each
            generated image's label map (cross-entropy), logged as ``train/G_Seg``.
        segmenter: that U-Net: a full_real run folder or a U-Net snapshot (needed when ``lambda_seg`` > 0;
            read when training starts, never saved in SPADE's checkpoints).
        segmenter_balance: ``pixels`` (mean over pixels), ``sqrt`` or ``classes`` (each class in the batch
            counts alike); see :class:`~synthseg.models.segmenter.SegmenterLoss`.
        niter: epochs at the initial learning rate.
        niter_decay: epochs of linear decay to zero after ``niter``; default: the rest of
            ``trainer.max_epochs`` (see :func:`split_epochs`).
        num_val_images: validation label maps shown as (label | generated | real) rows in TensorBoard.
        channels_last: fast path: NHWC weights and activations (same values, faster convolutions).
        compile: fast path: run the generator and the discriminator through ``torch.compile`` (weights and
            checkpoints unchanged).

    Mixed precision comes from the trainer (``trainer.precision``): the networks run under autocast, the
    spectral-norm power iteration and every loss term stay in float32.
    """

    def __init__(
        self,
        generator: SPADEGenerator,
        discriminator: MultiscaleDiscriminator,
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        encoder: ConvEncoder | None = None,
        lambda_feat: float = 10.0,
        lambda_kld: float = 0.05,
        lambda_l1: float = 0.0,
        lambda_gan: float = 1.0,
        lambda_class: float = 0.0,
        lambda_seg: float = 0.0,
        segmenter: str | None = None,
        segmenter_balance: str = "pixels",
        niter: int = 50,
        niter_decay: int | None = None,
        num_val_images: int = 8,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "encoder", "optimizer_g", "optimizer_d"]
        )
        if niter < 0 or (niter_decay or 0) < 0:
            raise InputError(
                f"model.niter and model.niter_decay must be non-negative, got {niter} and {niter_decay}"
            )
        if not lambda_seg >= 0:  # NaN fails too
            raise InputError(f"model.lambda_seg must be non-negative, got {lambda_seg}")
        if lambda_seg > 0 and not segmenter:
            raise InputError("model.lambda_seg > 0 needs model.segmenter=RUN (a full_real U-Net run folder)")
        self.segmenter_loss: SegmenterLoss | None = None  # built when training starts (setup)
        if generator.use_vae != (encoder is not None):
            raise InputError("model.encoder must be given exactly when model.generator.use_vae is true")
        expected_d_input = generator.label_nc + generator.output_nc
        if discriminator.input_nc != expected_d_input:
            raise InputError(
                f"model.discriminator sees {discriminator.input_nc} channels, but label_nc + output_nc of the "
                f"generator is {expected_d_input}"
            )
        self.automatic_optimization = False
        if channels_last:
            generator = generator.to(memory_format=torch.channels_last)
            discriminator = discriminator.to(memory_format=torch.channels_last)
        self.generator = generator
        self.discriminator = discriminator
        self.encoder = encoder
        # Kept out of the module registry: the compiled wrappers share the networks' parameters, and
        # registering them would add a second set of state-dict keys.
        object.__setattr__(self, "run_generator", torch.compile(generator) if compile else generator)
        object.__setattr__(
            self, "run_discriminator", torch.compile(discriminator) if compile else discriminator
        )
        self.optimizer_g_factory = optimizer_g
        self.optimizer_d_factory = optimizer_d
        self.objective = SPADEObjective(
            lambda_feat=lambda_feat,
            lambda_kld=lambda_kld,
            lambda_l1=lambda_l1,
            lambda_gan=lambda_gan,
            lambda_class=lambda_class,
        )
        self.label_nc = generator.label_nc
        self.image_size = generator.image_size
        # The training maximum of each sequence's 16-bit images, recorded for generation (set from the
        # DataModule). Shape () with one sequence, so checkpoints written before 0.2.0 resume unchanged.
        outputs = generator.output_nc
        shape = () if outputs == 1 else (outputs,)
        self.register_buffer("train_max", torch.zeros(shape, dtype=torch.float64))
        # Sequence names, in output-channel order (from the DataModule; the paper's T1c without one).
        self.sequences: tuple[str, ...] = ("t1c",) if outputs == 1 else ()
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        # Per sequence as well when there are several (the overall values average over the channels).
        self.val_ssim_seq = torch.nn.ModuleList(
            [StructuralSimilarityIndexMeasure(data_range=1.0) for _ in range(outputs if outputs > 1 else 0)]
        )
        self.val_psnr_seq = torch.nn.ModuleList(
            [PeakSignalNoiseRatio(data_range=1.0) for _ in range(outputs if outputs > 1 else 0)]
        )
        self._val_grid: list[list[np.ndarray]] = []

    # ------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        allow_unused_parameters(self.trainer)
        data = data_summary(self.trainer)
        if data is None:
            return
        if data.image_norm != "tanh":
            raise InputError(
                f"model=spade needs data.image_norm=tanh (images in [-1, 1]), got {data.image_norm!r}"
            )
        if data.classes != self.label_nc:
            raise InputError(
                f"data.classes={data.classes}, but the SPADE generator has label_nc={self.label_nc}"
            )
        maxima = np.atleast_1d(np.asarray(data.train_max, dtype=np.float64))
        sequences = tuple(getattr(data, "sequences", None) or ("t1c",) * maxima.size)
        outputs = self.generator.output_nc
        if maxima.size != outputs or len(sequences) != outputs:
            raise InputError(
                f"data.sequences={list(sequences)} gives {len(sequences)} image channels, but the SPADE "
                f"generator has output_nc={outputs}: set model.generator.output_nc=null"
            )
        self.train_max.copy_(torch.from_numpy(maxima).reshape(self.train_max.shape))
        self.sequences = sequences
        if stage == "fit" and self.hparams.lambda_seg > 0 and self.segmenter_loss is None:
            self.segmenter_loss = SegmenterLoss(self.hparams.segmenter, self.hparams.segmenter_balance)
            self.segmenter_loss.check(self.image_size, sequences)

    def configure_callbacks(self) -> list[pl.Callback]:
        return [ImageLogger()]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        g_params = list(self.generator.parameters())
        if self.encoder is not None:
            g_params += list(self.encoder.parameters())
        opt_g = self.optimizer_g_factory(params=g_params)
        opt_d = self.optimizer_d_factory(params=self.discriminator.parameters())
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        return [opt_g, opt_d]

    # ------------------------------------------------------------------------------------------ helpers
    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        label, image = batch["label"], batch["image"]
        if label.dim() == 3:  # class indices: make them one-hot
            label = F.one_hot(label.long(), self.label_nc).permute(0, 3, 1, 2)
        label = label.to(image.dtype)
        if self.hparams.channels_last:
            label = label.contiguous(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        expected = (self.label_nc, self.image_size, self.image_size)
        if tuple(label.shape[1:]) != expected:
            raise InputError(
                f"batches of labels {tuple(label.shape[1:])} do not fit the generator's (label_nc, size, size) = "
                f"{expected}: check data.classes and data.resolution against model.generator"
            )
        return label, image

    def generate(
        self, label: torch.Tensor, real: torch.Tensor | None = None, *, compute_kld: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Fake images for ``label``; with the VAE the code comes from ``real`` through the encoder."""
        z = mu = logvar = None
        if self.encoder is not None and real is not None:
            mu, logvar = self.encoder(real)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        fake = self.run_generator(label, z)
        return fake, (mu if compute_kld else None), (logvar if compute_kld else None)

    def discriminate(
        self, label: torch.Tensor, fake: torch.Tensor, real: torch.Tensor
    ) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Real and fake through the discriminator in one batch (fake first), split back apart."""
        both = torch.cat([torch.cat([label, fake], dim=1), torch.cat([label, real], dim=1)], dim=0)
        outputs = self.run_discriminator(both)
        half = fake.shape[0]
        pred_fake = [[f[:half] for f in features] for features in outputs]
        pred_real = [[f[half:] for f in features] for features in outputs]
        return pred_fake, pred_real

    def _set_learning_rates(self) -> None:
        factor = lr_factor(self.current_epoch, *self.epochs)
        for opt in self.optimizers():
            for group in opt.optimizer.param_groups if hasattr(opt, "optimizer") else opt.param_groups:
                group["lr"] = group["initial_lr"] * factor

    # --------------------------------------------------------------------------------------------- train
    @property
    def epochs(self) -> tuple[int, int]:
        """(``niter``, ``niter_decay``) of this run: the decay is the rest of ``trainer.max_epochs``."""
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        return split_epochs(max_epochs, self.hparams.niter, self.hparams.niter_decay)

    def on_fit_start(self) -> None:
        self.epochs  # noqa: B018 (refuse an inconsistent epoch count before the first step)
        if self.segmenter_loss is not None:
            self.segmenter_loss.to(self.device)

    def on_train_epoch_start(self) -> None:
        self._set_learning_rates()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        label, real = self._inputs(batch)
        opt_g, opt_d = self.optimizers()

        self.toggle_optimizer(opt_g)
        fake, mu, logvar = self.generate(label, real, compute_kld=True)
        pred_fake, pred_real = self.discriminate(label, fake, real)
        g_terms = self.objective.generator_terms(pred_fake, pred_real, mu, logvar, fake, real, label)
        if self.segmenter_loss is not None:
            labels = batch["label"] if batch["label"].dim() == 3 else batch["label"].argmax(1)
            g_terms["Seg"] = self.hparams.lambda_seg * self.segmenter_loss(fake, self.train_max, labels)
        loss_g = self.objective.total(g_terms)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        with torch.no_grad():
            fake, _, _ = self.generate(label, real)
        pred_fake, pred_real = self.discriminate(label, fake.detach(), real)
        d_terms = self.objective.discriminator_terms(pred_fake, pred_real)
        loss_d = self.objective.total(d_terms)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        logs = {f"train/G_{k}": v.detach() for k, v in g_terms.items()}
        logs.update({f"train/{k}": v.detach() for k, v in d_terms.items()})
        logs["train/loss_G"] = loss_g.detach()
        logs["train/loss_D"] = loss_d.detach()
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=real.shape[0], sync_dist=True)
        self.log("train/lr_G", opt_g.param_groups[0]["lr"], on_step=False, on_epoch=True)
        self.log("train/lr_D", opt_d.param_groups[0]["lr"], on_step=False, on_epoch=True)

    # ---------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        label, real = self._inputs(batch)
        fake, _, _ = self.generate(label, real)
        fake01, real01 = (fake.float() + 1) / 2, (real.float() + 1) / 2
        self.val_ssim.update(fake01, real01)
        self.val_psnr.update(fake01, real01)
        for c, (ssim, psnr) in enumerate(zip(self.val_ssim_seq, self.val_psnr_seq, strict=True)):
            ssim.update(fake01[:, c : c + 1], real01[:, c : c + 1])
            psnr.update(fake01[:, c : c + 1], real01[:, c : c + 1])
        needed = self.hparams.num_val_images - len(self._val_grid)
        if needed > 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            indices = label.argmax(dim=1).cpu().numpy()
            channels = range(fake.shape[1])
            for i in range(min(needed, label.shape[0])):
                # label | generated of every sequence | real of every sequence
                row = [colorize(indices[i], self.label_nc)]
                row += [to_display(fake[i, c : c + 1]) for c in channels]
                row += [to_display(real[i, c : c + 1]) for c in channels]
                self._val_grid.append(row)

    def on_validation_epoch_end(self) -> None:
        self.log("val/ssim", self.val_ssim.compute(), sync_dist=False)
        self.log("val/psnr", self.val_psnr.compute(), sync_dist=False)
        self.val_ssim.reset()
        self.val_psnr.reset()
        names = self._sequence_names() if len(self.val_ssim_seq) else ()  # one sequence: the overall values
        for name, ssim, psnr in zip(names, self.val_ssim_seq, self.val_psnr_seq, strict=True):
            self.log(f"val/ssim_{name}", ssim.compute(), sync_dist=False)
            self.log(f"val/psnr_{name}", psnr.compute(), sync_dist=False)
            ssim.reset()
            psnr.reset()
        self._val_grid = []  # written (or not) by ImageLogger, which runs before this hook

    def _sequence_names(self) -> tuple[str, ...]:
        outputs = self.generator.output_nc
        return self.sequences if len(self.sequences) == outputs else tuple(f"c{c}" for c in range(outputs))

    def log_images(self) -> dict[str, np.ndarray]:
        """Rows: label map | generated | real (the paper's Fig. 7), on one fixed intensity scale; with several
        sequences: label map | generated, each sequence | real, each sequence."""
        return {"val/label_generated_real": grid(self._val_grid)} if self._val_grid else {}

    # ---------------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        maxima = [float(v) for v in self.train_max.reshape(-1)]
        meta = {"train_max": maxima, "sequences": list(self.sequences)}
        checkpoint[CHECKPOINT_KEY] = {
            "generator": network_entry(self.generator, meta=meta),
            # A number with one sequence, as synthseg 0.1 wrote and reads it.
            "train_max": maxima[0] if len(maxima) == 1 else maxima,
            "sequences": list(self.sequences),
            "rng": _rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY, {})
        if state.get("sequences"):
            self.sequences = tuple(state["sequences"])
        if "rng" in state:
            _set_rng_state(state["rng"])

    def forward(self, label: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Generate images (B, output_nc, H, W) in [-1, 1] from one-hot label maps (B, label_nc, H, W)."""
        return self.generator(label, z)
