"""The segmenter term of SPADE (``model.lambda_seg``, beyond the paper): a frozen real-data U-Net must find
each generated image's label map; it reads the images exactly as it read its training slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthseg.checkpoint import save_network
from synthseg.data.dataset import zscore_brain
from synthseg.errors import InputError
from synthseg.models.segmenter import SegmenterLoss, zscore_brain_torch
from synthseg.networks.unet import UNet
from synthseg.synth.generate_images import tanh_to_uint16
from synthseg.train import train
from tests.helpers.presets import compose_spade as compose_cfg
from tests.helpers.presets import unet_snapshot

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")


def test_the_torch_z_score_is_the_datamodules() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 3000, size=(3, 2, 16, 16)).astype(np.float32)
    images[:, :, :4] = 0  # background
    images[2] = 0  # an empty slice stays 0
    expected = zscore_brain(images)
    np.testing.assert_allclose(zscore_brain_torch(torch.from_numpy(images)).numpy(), expected, atol=1e-5)


def test_the_unet_sees_the_generated_image_as_it_would_read_the_written_png(tmp_path: Path) -> None:
    loss = SegmenterLoss(unet_snapshot(tmp_path / "unet.pt"))
    torch.manual_seed(1)
    fake = torch.rand(2, 1, 32, 32) * 2 - 1
    fake[:, :, :8] = -1  # background: 0 in 16 bits
    top = torch.tensor(3448.0, dtype=torch.float64)
    written = tanh_to_uint16(fake, 3448.0).astype(np.float32)  # what generate-images writes
    expected = zscore_brain(written)  # what the U-Net's DataModule serves from it
    got = loss.unet_input(fake, top).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)  # the PNG's rounding to whole 16-bit units only


def test_a_paper_norm_unet_sees_image_over_its_max_minus_its_mean(tmp_path: Path) -> None:
    loss = SegmenterLoss(
        unet_snapshot(tmp_path / "unet.pt", norm="paper", train_max=[2000.0], train_mean=[0.3])
    )
    fake = torch.rand(2, 1, 32, 32) * 2 - 1
    top = torch.tensor(3448.0, dtype=torch.float64)
    units = (fake + 1) * 0.5 * 3448.0
    np.testing.assert_allclose(loss.unet_input(fake, top).numpy(), (units / 2000.0 - 0.3).numpy(), rtol=1e-5)
    with pytest.raises(InputError, match="records no train_max / train_mean"):
        SegmenterLoss(unet_snapshot(tmp_path / "bare.pt", norm="paper"))


def test_the_term_is_the_cross_entropy_and_trains_the_image_not_the_unet(tmp_path: Path) -> None:
    loss = SegmenterLoss(unet_snapshot(tmp_path / "unet.pt"))
    fake = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    labels = torch.randint(0, 7, (2, 32, 32))
    top = torch.tensor(1000.0, dtype=torch.float64)
    value = loss(fake, top, labels)
    with torch.no_grad():
        expected = F.cross_entropy(loss.net(loss.unet_input(fake, top)), labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.net.parameters())
    assert not loss.net.training
    # A 2-class U-Net is scored against the reduced labels: only the tumor classes are class 1.
    save_network(
        UNet(1, 2, base_width=2), tmp_path / "u2.pt", meta={"image_norm": "zscore", "resolution": 32}
    )
    two = SegmenterLoss(tmp_path / "u2.pt")
    tumor = torch.tensor([[[0, 2], [4, 6]]]).repeat_interleave(16, 1).repeat_interleave(16, 2)
    with torch.no_grad():
        logits = two.net(two.unet_input(fake, top)[:1])
    assert two(fake[:1], top, tumor).item() == pytest.approx(
        F.cross_entropy(logits, (tumor == 2).long()).item(), rel=1e-6
    )


def test_a_segmenter_that_cannot_read_the_images_is_one_line(tmp_path: Path) -> None:
    loss = SegmenterLoss(unet_snapshot(tmp_path / "unet.pt", resolution=64))
    with pytest.raises(InputError, match="trained at 64 px, the generator paints 32 px"):
        loss.check(32, ("t1c",))
    with pytest.raises(InputError, match=r"reads \['t1c'\], the generator paints \['flair'\]"):
        SegmenterLoss(unet_snapshot(tmp_path / "u32.pt")).check(32, ("flair",))


def test_the_term_trains_through_train_and_stays_out_of_the_checkpoint(tiny_dataset, tmp_path):
    unet = unet_snapshot(tmp_path / "unet.pt")
    with pytest.raises(InputError, match="needs model.segmenter"):
        train(compose_cfg(tiny_dataset, tmp_path / "none", "model.lambda_seg=1"))
    plain = train(compose_cfg(tiny_dataset, tmp_path / "plain", "model.lambda_l1=1"))
    seg = train(
        compose_cfg(tiny_dataset, tmp_path / "seg", "model.lambda_l1=1", "model.lambda_seg=2",
                    f"model.segmenter={unet}")
    )  # fmt: skip
    assert "train/G_Seg" not in plain and seg["train/G_Seg"] > 0
    assert seg["train/loss_G"] == pytest.approx(
        seg["train/G_Seg"] + seg["train/G_L1"] + seg["train/G_GAN"] + seg["train/G_GAN_Feat"], rel=1e-5
    )
    keys = {
        name: set(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
        for name in ("plain", "seg")
    }
    assert keys["plain"] == keys["seg"]  # the U-Net's weights are never saved with SPADE's


def test_balanced_classes_average_each_class_mean_cross_entropy(tmp_path: Path) -> None:
    path = unet_snapshot(tmp_path / "unet.pt")
    plain, balanced = SegmenterLoss(path), SegmenterLoss(path, balance="classes")
    torch.manual_seed(2)
    fake = torch.rand(2, 1, 32, 32) * 2 - 1
    labels = torch.full((2, 32, 32), 4)
    labels[0, :2, :2] = 3  # 4 enhancing pixels among 2,044 of WM
    top = torch.tensor(1000.0, dtype=torch.float64)
    with torch.no_grad():
        per_pixel = F.cross_entropy(plain.net(plain.unet_input(fake, top)), labels, reduction="none")
    by_hand = (per_pixel[labels == 3].mean() + per_pixel[labels == 4].mean()) / 2
    assert balanced(fake, top, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert plain(fake, top, labels).item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)
    # sqrt: each pixel weighted 1 / sqrt(its class's count): 4 enhancing pixels weigh 1/2, 2,044 of WM 1/sqrt(2044)
    w3, w4 = 1 / 2, 1 / 2044**0.5
    by_hand = (w3 * per_pixel[labels == 3].sum() + w4 * per_pixel[labels == 4].sum()) / (4 * w3 + 2044 * w4)
    assert SegmenterLoss(path, balance="sqrt")(fake, top, labels).item() == pytest.approx(
        by_hand.item(), rel=1e-5
    )
    with pytest.raises(InputError, match="segmenter_balance"):
        SegmenterLoss(path, balance="tumor")
