"""Label agreement (``metrics.agreement``): a real-data U-Net segments the synthetic images against their own
label maps, beside the real test slices (issue 26: do the images paint what their labels say)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthseg.checkpoint import save_network
from synthseg.data.pngio import read_png
from synthseg.metrics.agreement import class_dice, confusion, label_agreement, summarize
from synthseg.networks.unet import UNet
from tests.conftest import measure_quality, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")


class ReadsTheClass(nn.Module):
    """A 'segmenter' that calls each pixel the class nearest its value: images equal to labels segment
    perfectly, and a changed pixel is a known error."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.levels = nn.Parameter(torch.arange(classes, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x[:, :1] - self.levels) ** 2)


def test_confusion_and_dice_match_a_hand_count() -> None:
    labels = torch.tensor([[[0, 0, 1, 1], [0, 4, 4, 1]], [[0, 0, 0, 0], [5, 5, 4, 0]]])
    images = labels[:, None].float().clone()
    images[0, 0, 0, 2] = 4  # one NCR/NET pixel read as WM
    images[1, 0, 1, 0] = 0  # one GM pixel read as background
    counts = confusion(ReadsTheClass(7), images, labels, classes=7, batch_size=1)
    expected = np.zeros((7, 7), np.int64)
    expected[0, 0], expected[1, 1], expected[1, 4], expected[4, 4] = 8, 2, 1, 3
    expected[5, 5], expected[5, 0] = 1, 1
    np.testing.assert_array_equal(counts, expected)
    dice = class_dice(counts)
    # background 2*8/(8+9), NCR/NET 2*2/(3+2), WM 2*3/(3+4), GM 2*1/(2+1); edema never seen nor predicted
    np.testing.assert_allclose(dice[[0, 1, 4, 5]], [16 / 17, 4 / 5, 6 / 7, 2 / 3])
    assert math.isnan(dice[2])
    found = summarize(counts)
    # the mean over the foreground classes the labels hold: NCR/NET, WM, GM
    assert found["mean_dice"] == pytest.approx((4 / 5 + 6 / 7 + 2 / 3) / 3)
    assert found["classes_in_labels"] == ["NCR/NET", "WM", "GM"] and found["dice"]["edema"] is None


def test_a_class_predicted_but_absent_from_the_labels_stays_out_of_the_mean() -> None:
    labels = torch.tensor([[[0, 4], [4, 4]]])
    images = torch.tensor([[[[0.0, 4.0], [4.0, 6.0]]]])  # one WM pixel read as CSF
    found = summarize(confusion(ReadsTheClass(7), images, labels, classes=7))
    assert found["dice"]["CSF"] == 0.0 and found["classes_in_labels"] == ["WM"]
    assert found["mean_dice"] == pytest.approx(2 * 2 / (3 + 2))


def test_a_two_class_segmenter_is_scored_against_the_reduced_labels() -> None:
    # 7-class labels: edema (2) and enhancing (3) are tumor, WM (4) and GM (5) background for 2 classes.
    labels = torch.tensor([[[2, 3], [4, 5]]])
    images = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # the segmenter finds one of the two tumor pixels
    result = label_agreement(ReadsTheClass(2), 2, lambda x: x, (labels, images), None)
    assert result["synthetic"]["confusion"] == [[2, 0], [1, 1]]
    assert result["mean_dice"] == pytest.approx(2 / 3) and result["mean_dice_real"] is None
    assert result["real_count"] == 0 and result["classes"] == 2


def test_the_scale_is_what_the_segmenter_sees() -> None:
    labels = torch.tensor([[[1, 1], [0, 0]]])
    stored = torch.tensor([[[[100.0, 100.0], [0.0, 0.0]]]])  # 16-bit units: class 1 only after / 100
    scaled = label_agreement(ReadsTheClass(7), 7, lambda x: x / 100, (labels, stored), (labels, stored))
    raw = label_agreement(ReadsTheClass(7), 7, lambda x: x, (labels, stored), None)
    assert scaled["mean_dice"] == 1.0 and scaled["mean_dice_real"] == 1.0 and raw["mean_dice"] == 0.0


def test_quality_scores_a_copy_of_the_real_test_slices_as_the_real_reference(tmp_path: Path) -> None:
    """The synthetic set holds exactly the real test pairs: the U-Net agrees with it as with the reference."""
    real = write_dataset(tmp_path / "real", num_slices=60, size=32)
    rows = [line.split(",") for line in (real / "manifest.csv").read_text().splitlines()]
    header, body = rows[0], rows[1:]
    split, image, label = header.index("split"), header.index("image"), header.index("label")
    test = [row for row in body if row[split] == "test"]
    assert len(test) >= 4
    synthetic = write_dataset(
        tmp_path / "synthetic", source="synthetic",
        labels=[read_png(real / row[label]) for row in test], images=[read_png(real / row[image]) for row in test],
    )  # fmt: skip
    torch.manual_seed(0)
    unet = tmp_path / "unet.pt"
    save_network(UNet(1, 7, base_width=2), unet)
    result = measure_quality(
        synthetic=synthetic, real=real, output=tmp_path / "q", unet=unet, pairs=10, kid_subsets=2,
        search_size=8, max_images=1000,
    )  # fmt: skip
    found = result["label_agreement"]
    assert found["synthetic_count"] == found["real_count"] == len(test) and found["classes"] == 7
    assert found["synthetic"]["confusion"] == found["real"]["confusion"]
    assert found["mean_dice"] == found["mean_dice_real"] and 0 <= found["mean_dice"] <= 1
    assert f"test split of {real}" in found["real_reference"] and found["size"] == 32
