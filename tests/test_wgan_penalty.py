"""WGANGPLoss's gradient penalty: its own method, and the penalty_subbatch switch (off by default)."""

from __future__ import annotations

import pytest
import torch

from synthseg.losses.wgan import WGANGPLoss


def _critic(x: torch.Tensor) -> torch.Tensor:
    # Per sample and non-linear: the input gradient of sample i is 2 * w * x_i + w, a norm that differs per sample.
    w = torch.linspace(-1.0, 1.0, x[0].numel()).reshape(x.shape[1:])
    return ((x.square() + x) * w).flatten(1).sum(1, keepdim=True)


def _batch():
    gen = torch.Generator().manual_seed(0)
    reals, fakes = torch.randn(4, 1, 3, 3, generator=gen), torch.randn(4, 1, 3, 3, generator=gen)
    return reals, fakes, torch.rand(4, 1, 1, 1, generator=gen)


def test_penalty_by_hand_and_default_loss_uses_the_whole_batch():
    reals, fakes, mixing = _batch()
    loss = WGANGPLoss()
    assert loss.penalty_subbatch is None
    penalty, norm = loss.gradient_penalty(_critic, reals, fakes, mixing)
    mixed = reals + (fakes - reals) * mixing
    w = torch.linspace(-1.0, 1.0, 9).reshape(1, 3, 3)
    by_hand = (2 * w * mixed + w).flatten(1).norm(dim=1)
    torch.testing.assert_close(norm, by_hand)
    torch.testing.assert_close(penalty, 10 * (by_hand - 1).square())
    terms = loss.discriminator(_critic, reals, fakes, mixing)
    real, fake = _critic(reals).flatten(), _critic(fakes).flatten()
    expected = (fake - real + 10 * (by_hand - 1).square() + 0.001 * real.square()).mean()
    torch.testing.assert_close(terms["loss"], expected)


def test_penalty_subbatch_takes_the_first_k_interpolates():
    reals, fakes, mixing = _batch()
    full_penalty, _ = WGANGPLoss().gradient_penalty(_critic, reals, fakes, mixing)
    sub = WGANGPLoss(penalty_subbatch=2)
    penalty, _ = sub.gradient_penalty(_critic, reals, fakes, mixing)
    torch.testing.assert_close(penalty, full_penalty[:2])
    real, fake = _critic(reals).flatten(), _critic(fakes).flatten()
    expected = (fake - real + 0.001 * real.square()).mean() + full_penalty[:2].mean()
    torch.testing.assert_close(sub.discriminator(_critic, reals, fakes, mixing)["loss"], expected)
    # A sub-batch as large as the batch is the default.
    whole = WGANGPLoss(penalty_subbatch=4).discriminator(_critic, reals, fakes, mixing)["loss"]
    torch.testing.assert_close(whole, WGANGPLoss().discriminator(_critic, reals, fakes, mixing)["loss"])


@pytest.mark.parametrize("bad", [0, -1, True])
def test_bad_penalty_subbatch_raises(bad):
    with pytest.raises(ValueError, match="penalty_subbatch"):
        WGANGPLoss(penalty_subbatch=bad)
