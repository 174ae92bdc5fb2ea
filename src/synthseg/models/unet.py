"""The U-Net segmentation model: weighted Dice loss, best-validation checkpoints, the paper's test metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.segmentation import DiceScore

from synthseg.data.datamodule import DataSummary
from synthseg.data.labels import class_names, colorize
from synthseg.errors import InputError
from synthseg.losses.dice import weighted_dice_loss
from synthseg.metrics.dice_error import EvalDiceError
from synthseg.metrics.hausdorff import EMPTY_RULES, HD95Accumulator, hd95_per_case
from synthseg.metrics.hausdorff import UNIT as HD95_UNIT
from synthseg.models.common import ImageLogger, data_summary
from synthseg.utils.visual import grid, to_gray_rgb

CE_CLASS_WEIGHTS = ("dice", "sqrt", "none")

# BraTS evaluation regions in the 7-/4-class convention: whole tumor, tumor core, enhancing tumor.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def region_masks(labels: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """Boolean masks of the BraTS regions present in a ``classes``-class label map (2 classes: WT only)."""
    if classes == 2:
        return {"WT": labels == 1}
    return {
        name: torch.isin(labels, torch.tensor(members, device=labels.device))
        for name, members in REGIONS.items()
    }


class UNetModule(pl.LightningModule):
    """Trains :class:`synthseg.networks.unet.UNet` with the paper's weighted Dice loss.

    Class weights come from the training set in use (``DataSummary.class_weights``, synthetic slices
    included as in the paper); a second, fixed set from the whole real training split
    (``real_class_weights``) gives a Dice error that is comparable between rows of Table 1.

    Args:
        net: the U-Net, built.
        optimizer: partial optimizer (``torch.optim.Adam`` with lr 1e-4 in the paper).
        num_image_rows: validation slices shown in the TensorBoard grid.
        channels_last: keep activations in NHWC memory format (faster convolutions on GPUs and on CPU).
        compile: run the network through ``torch.compile`` (the weights and checkpoints are unchanged).
        eval_reduction: how validation loss and test Dice errors reduce over the set: ``batch_mean`` (the
            paper's Keras ``evaluate``: the mean of per-batch losses, weighted by batch size) or ``dataset``
            (one weighted Dice over every slice). See :mod:`synthseg.metrics.dice_error`.
        eval_batch_size: slices per batch of the ``batch_mean`` reduction (Keras' default 32), independent of
            the DataLoader's batch size.
        ce_weight: 0 (the paper): the training loss is the weighted Dice loss alone; > 0 adds this much
            cross-entropy (Dice + CE, as nnU-Net trains). Validation loss, checkpoint choice and every test
            figure stay the paper's weighted Dice.
        ce_class_weights: the cross-entropy's class weights: ``dice`` (the Dice loss's, inverse class
            frequency), ``sqrt`` (their square roots, normalised to sum 1: a milder balance) or ``none``
            (plain cross-entropy, as nnU-Net).
        hd95_empty: the test HD95's figure for a region empty on one side only (:mod:`synthseg.metrics.hausdorff`):
            ``brats`` (BraTS' 373.13) or ``diagonal`` (the image's or the stacked volume's diagonal).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_image_rows: int = 4,
        channels_last: bool = False,
        compile: bool = False,
        eval_reduction: str = "batch_mean",
        eval_batch_size: int = 32,
        ce_weight: float = 0.0,
        hd95_empty: str = "brats",
        ce_class_weights: str = "dice",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        if ce_class_weights not in CE_CLASS_WEIGHTS:
            raise ValueError(f"ce_class_weights must be one of {CE_CLASS_WEIGHTS}, got {ce_class_weights!r}")
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        # Kept out of the module registry: the compiled wrapper shares self.net's parameters, and registering
        # it would duplicate every weight in the state_dict under a second name.
        object.__setattr__(self, "run_net", torch.compile(self.net) if compile else self.net)
        self.optimizer_factory = optimizer
        self.num_classes = int(net.init_args["num_classes"])
        self.register_buffer("class_weights", torch.full((self.num_classes,), 1.0 / self.num_classes))
        self.register_buffer("real_class_weights", torch.full((self.num_classes,), 1.0 / self.num_classes))
        ones = torch.ones(self.num_classes)
        self.val_dice_error = EvalDiceError(ones, eval_reduction, eval_batch_size)
        self.test_dice_error = EvalDiceError(ones, eval_reduction, eval_batch_size)
        self.test_dice_error_fixed = EvalDiceError(ones, eval_reduction, eval_batch_size)
        self.test_class_dice = DiceScore(
            num_classes=self.num_classes, average="none", aggregation_level="global", input_format="index"
        )
        self.case_stats: dict[str, dict[str, np.ndarray]] = {}
        self._val_rows: list[list[np.ndarray]] = []
        if hd95_empty not in EMPTY_RULES:
            raise ValueError(f"hd95_empty must be one of {list(EMPTY_RULES)}, got {hd95_empty!r}")
        self.hd95_empty = hd95_empty
        self.hd95 = HD95Accumulator()
        self.hd95_mode = "none"
        self.data: DataSummary | None = None

    # ------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        data = data_summary(self.trainer)
        if data is None:
            return
        self.data = data
        if data.classes != self.num_classes:
            raise ValueError(f"data.classes={data.classes} but the U-Net has {self.num_classes} outputs")
        sequences = tuple(getattr(data, "sequences", None) or ("t1c",))
        in_channels = int(self.net.init_args.get("in_channels", 1))
        if len(sequences) != in_channels:
            raise InputError(
                f"data.sequences={list(sequences)} gives {len(sequences)} input channels, but the U-Net has "
                f"in_channels={in_channels}: set model.net.in_channels=null"
            )
        self.class_weights.copy_(torch.tensor(data.class_weights))
        self.real_class_weights.copy_(torch.tensor(data.real_class_weights))

    def configure_callbacks(self) -> list[pl.Callback]:
        return [ImageLogger()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(params=self.parameters())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.run_net(image)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(logits, probabilities, one-hot target, weighted Dice loss) of a batch."""
        logits = self(batch["image"]).float()
        probs = torch.softmax(logits, dim=1)
        target = nn.functional.one_hot(batch["label"], self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        return logits, probs, target, weighted_dice_loss(probs, target, self.class_weights)

    # --------------------------------------------------------------------------------------------- train
    def ce_class_weights(self) -> torch.Tensor | None:
        """The cross-entropy's class weights (``ce_class_weights``; None: unweighted)."""
        mode = self.hparams.ce_class_weights
        if mode == "none":
            return None
        if mode == "sqrt":
            root = self.class_weights.sqrt()
            return root / root.sum()
        return self.class_weights

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, _, _, loss = self._step(batch)
        if self.hparams.ce_weight:
            self.log("train/dice_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["image"]))
            ce = nn.functional.cross_entropy(logits, batch["label"], weight=self.ce_class_weights())
            loss = loss + self.hparams.ce_weight * ce
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"])
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_dice_error.weights.copy_(self.class_weights.double())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, probs, target, _ = self._step(batch)
        self.val_dice_error.update(probs, target, batch["index"])
        # The paper's validation metric is its training loss over the validation set (eval_reduction).
        self.log(
            "val/loss", self.val_dice_error, prog_bar=True, on_epoch=True, batch_size=len(batch["image"])
        )
        if batch_idx == 0 and not self.trainer.sanity_checking:
            pred = probs.argmax(1)
            images = batch["image"].float().cpu().numpy()
            self._val_rows = [
                [
                    *(to_gray_rgb(channel) for channel in images[i]),  # every input sequence
                    colorize(batch["label"][i].cpu().numpy(), self.num_classes),
                    colorize(pred[i].cpu().numpy(), self.num_classes),
                ]
                for i in range(min(self.hparams.num_image_rows, len(pred)))
            ]

    def log_images(self) -> dict[str, np.ndarray]:
        """Rows of the first validation batch: image (each sequence) | truth | prediction (written by ImageLogger)."""
        rows, self._val_rows = self._val_rows, []
        return {"val/image_truth_prediction": grid(rows)} if rows else {}

    # ---------------------------------------------------------------------------------------------- test
    def on_test_epoch_start(self) -> None:
        self.test_dice_error.weights.copy_(self.class_weights.double())
        self.test_dice_error_fixed.weights.copy_(self.real_class_weights.double())
        self.case_stats = {}
        self.hd95 = HD95Accumulator()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, probs, target, _ = self._step(batch)
        pred = probs.argmax(1)
        n = len(pred)
        self.test_dice_error.update(probs, target, batch["index"])
        self.test_dice_error_fixed.update(probs, target, batch["index"])
        self.test_class_dice.update(pred, batch["label"])
        self.log("test/dice_error", self.test_dice_error, on_epoch=True, batch_size=n)
        self.log("test/dice_error_fixed", self.test_dice_error_fixed, on_epoch=True, batch_size=n)
        self._accumulate_cases(batch, probs, target, pred)

    def _accumulate_cases(
        self, batch: dict[str, torch.Tensor], probs: torch.Tensor, target: torch.Tensor, pred: torch.Tensor
    ) -> None:
        """Per-subject sufficient statistics, so the report can bootstrap over test subjects."""
        cases = batch["case"]
        pred_onehot = nn.functional.one_hot(pred, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        soft_inter = (probs * target).sum((2, 3)).double().cpu().numpy()
        soft_total = (probs + target).sum((2, 3)).double().cpu().numpy()
        hard_inter = (pred_onehot * target).sum((2, 3)).double().cpu().numpy()
        hard_total = (pred_onehot + target).sum((2, 3)).double().cpu().numpy()
        truth_regions = region_masks(batch["label"], self.num_classes)
        pred_regions = region_masks(pred, self.num_classes)
        region_inter = np.stack(
            [(pred_regions[r] & truth_regions[r]).sum((1, 2)).cpu().numpy() for r in truth_regions], 1
        )
        region_total = np.stack(
            [
                (pred_regions[r].sum((1, 2)) + truth_regions[r].sum((1, 2))).cpu().numpy()
                for r in truth_regions
            ],
            1,
        )
        # HD95 needs the masks themselves: kept bit-packed per subject until the epoch ends.
        self.hd95.add(cases, batch["slice"], torch.stack(list(pred_regions.values()), 1),
                      torch.stack(list(truth_regions.values()), 1))  # fmt: skip
        for i, case in enumerate(cases):
            stats = self.case_stats.setdefault(
                str(case),
                {
                    "soft_intersection": np.zeros(self.num_classes),
                    "soft_total": np.zeros(self.num_classes),
                    "hard_intersection": np.zeros(self.num_classes),
                    "hard_total": np.zeros(self.num_classes),
                    "region_intersection": np.zeros(len(truth_regions)),
                    "region_total": np.zeros(len(truth_regions)),
                },
            )
            stats["soft_intersection"] += soft_inter[i]
            stats["soft_total"] += soft_total[i]
            stats["hard_intersection"] += hard_inter[i]
            stats["hard_total"] += hard_total[i]
            stats["region_intersection"] += region_inter[i]
            stats["region_total"] += region_total[i]

    def on_test_epoch_end(self) -> None:
        per_class = self.test_class_dice.compute()
        for name, value in zip(class_names(self.num_classes), per_class, strict=True):
            self.log(f"test/dice_{name.replace('/', '_')}", value)
        self.test_class_dice.reset()
        names = list(region_masks(torch.zeros(1, dtype=torch.long), self.num_classes))
        inter = sum(s["region_intersection"] for s in self.case_stats.values())
        total = sum(s["region_total"] for s in self.case_stats.values())
        for j, name in enumerate(names):
            if total is not None and np.ndim(total) and total[j] > 0:
                self.log(f"test/dice_{name}", float(2 * inter[j] / total[j]))
        self._finish_hd95(names)

    def _finish_hd95(self, names: list[str]) -> None:
        """HD95 per subject and BraTS region into ``per_case[case]["hd95"]``; the mean over subjects logged."""
        if self.data is None:  # tested without a DataModule: no subjects to measure
            return
        found = hd95_per_case(
            self.hd95, volume=self.data.split_by_subject, native_size=self.data.size, empty=self.hd95_empty
        )
        self.hd95_mode = found.mode
        for case, hd in found.values.items():
            self.case_stats[case]["hd95"] = np.asarray(hd)
            self.case_stats[case]["hd95_one_side_empty"] = np.asarray(found.one_side_empty[case])
        if found.values:
            means = np.mean(list(found.values.values()), axis=0)
            for j, name in enumerate(names):
                self.log(f"test/hd95_{name}", float(means[j]))
        self.hd95 = HD95Accumulator()

    def results_details(self) -> dict[str, Any]:
        """Per-case statistics and the weights used, for results.json (primitives only)."""
        return {
            "class_weights": self.class_weights.tolist(),
            "real_class_weights": self.real_class_weights.tolist(),
            "regions": list(region_masks(torch.zeros(1, dtype=torch.long), self.num_classes)),
            "hd95_mode": self.hd95_mode,
            "hd95_empty": self.hd95_empty,
            "hd95_unit": HD95_UNIT,
            "per_case": {
                case: {k: v.tolist() for k, v in stats.items()} for case, stats in self.case_stats.items()
            },
        }
