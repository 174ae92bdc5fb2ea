"""Augmentation of label maps before PGAN's critic: DiffAugment (Zhao et al. 2020) and ADA (Karras et al. 2020).

Only geometric transforms that keep a label map a label map: horizontal flips, 90-degree rotations, integer
translations (the pixels moved in are background) and cutout in class space (a square set to background).
They work on the networks' values (N, C, r, r) of either label encoding (index: background is -1; onehot:
background is the first class's one-hot vector), so class fractions and probabilities stay on the simplex
and index values stay class values. Every transform gathers or masks pixels, so it is differentiable with
respect to the generator's output; the critic sees reals and fakes through the same transforms, in both
steps and in the gradient penalty's interpolates.

- ``diffaugment``: every sample, every step: a translation of up to 1/8 of the side and a cutout of half the
  side (DiffAugment's ``translation,cutout`` policy).
- ``ada``: each of flip, rotation, translation and cutout applied to each sample with probability ``p``,
  which :class:`AdaptiveProbability` adjusts from the critic's overfitting heuristic
  ``r_t = E[sign(D(real))]`` (target 0.6; ``p`` can move from 0 to 1 in ``speed_kimg`` = 500 kimg).

The random parameters come from the module's training generator (a CPU ``torch.Generator`` saved in the
checkpoint), so a resumed run augments exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

AUGMENTS = ("none", "diffaugment", "ada")
TRANSLATION = 0.125  # the largest shift, as a fraction of the side (DiffAugment and ADA)
CUTOUT = 0.5  # the cutout square's side, as a fraction of the side (DiffAugment)


def background(channels: int) -> Tensor:
    """The background class in network values (1, C, 1, 1): -1 (index, one channel) or e_0 (one-hot)."""
    if channels == 1:
        return torch.full((1, 1, 1, 1), -1.0)
    value = torch.zeros(1, channels, 1, 1)
    value[:, 0] = 1.0
    return value


def xflip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the samples where ``flip`` (N,) bool is set, left-right."""
    return torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)


def rotate90(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate each sample by ``turns`` (N,) int x 90 degrees (square maps)."""
    out = x
    for k in (1, 2, 3):
        out = torch.where((turns == k).reshape(-1, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), out)
    return out


def translate(x: Tensor, shifts: Tensor, fill: Tensor) -> Tensor:
    """Shift each sample by whole pixels ``shifts`` (N, 2) (rows, columns); pixels moved in are ``fill``.

    Args:
        x: (N, C, H, W).
        shifts: (N, 2) int, each at most the side in magnitude.
        fill: (1, C, 1, 1) value of the pixels moved in (the background class).
    """
    n, c, h, w = x.shape
    pad = int(shifts.abs().max()) if shifts.numel() else 0
    if pad == 0:
        return x
    padded = fill.to(x.device, x.dtype).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    shifts = shifts.to(x.device)
    rows = torch.arange(h, device=x.device)[None] + pad - shifts[:, :1]  # (N, H)
    cols = torch.arange(w, device=x.device)[None] + pad - shifts[:, 1:]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: Tensor, centres: Tensor, size: int, apply: Tensor, fill: Tensor) -> Tensor:
    """Set a ``size`` x ``size`` square around ``centres`` (N, 2) to ``fill`` where ``apply`` (N,) is set."""
    n, _, h, w = x.shape
    centres = centres.to(x.device)
    rows = torch.arange(h, device=x.device)[None] - centres[:, :1] + size // 2  # (N, H)
    cols = torch.arange(w, device=x.device)[None] - centres[:, 1:] + size // 2
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    mask = (inside & apply.to(x.device).reshape(-1, 1, 1))[:, None].to(x.dtype)  # (N, 1, H, W)
    return x * (1 - mask) + fill.to(x.device, x.dtype) * mask


class LabelAugment:
    """Augment label maps in network values before the critic (see the module docstring).

    Args:
        mode: ``none``, ``diffaugment`` or ``ada``.
        translation: the largest shift as a fraction of the side.
        cutout_size: the cutout square's side as a fraction of the side.
    """

    def __init__(self, mode: str, translation: float = TRANSLATION, cutout_size: float = CUTOUT) -> None:
        if mode not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {mode!r}")
        if not 0 <= translation <= 1 or not 0 <= cutout_size <= 1:
            raise ValueError(
                f"translation and cutout_size must lie in [0, 1], got {translation}, {cutout_size}"
            )
        self.mode = mode
        self.translation = float(translation)
        self.cutout_size = float(cutout_size)

    def __call__(self, x: Tensor, p: float, rng: torch.Generator) -> Tensor:
        """Augmented ``x`` (N, C, H, W); ``p`` is ADA's probability (ignored by ``diffaugment``)."""
        if self.mode == "none" or (self.mode == "ada" and p <= 0):
            return x
        n, c, side = x.shape[0], x.shape[1], x.shape[-1]
        fill = background(c)
        always = self.mode == "diffaugment"

        def chosen() -> Tensor:
            return torch.ones(n, dtype=torch.bool) if always else torch.rand(n, generator=rng) < p

        if not always:
            flip = chosen() & (torch.rand(n, generator=rng) < 0.5)
            turns = torch.where(chosen(), torch.randint(0, 4, (n,), generator=rng), 0)
            x = rotate90(xflip(x, flip.to(x.device)), turns.to(x.device))
        reach = self.translation * side
        shifts = torch.round((torch.rand(n, 2, generator=rng) * 2 - 1) * reach).long()
        x = translate(x, torch.where(chosen()[:, None], shifts, 0), fill)
        size = max(1, int(round(self.cutout_size * side)))
        centres = torch.randint(0, side, (n, 2), generator=rng)
        return cutout(x, centres, size, chosen(), fill)


class AdaptiveProbability:
    """ADA's augmentation probability ``p`` and its adjustment (Karras et al. 2020).

    Every ``interval`` minibatches: ``r_t`` = the mean of sign(D(real)) over those minibatches, and ``p`` moves
    by ``sign(r_t - target) * images / (speed_kimg * 1000)`` (clipped to [0, 1]): from 0 to 1 in
    ``speed_kimg`` kimg at the most.

    Args:
        target: the ``r_t`` to hold (0.6).
        speed_kimg: kimg for ``p`` to move from 0 to 1 (500).
        interval: minibatches between adjustments (4).
        p: the initial probability.
    """

    def __init__(self, target: float = 0.6, speed_kimg: float = 500.0, interval: int = 4, p: float = 0.0):
        if not -1 <= target <= 1 or speed_kimg <= 0 or interval < 1 or not 0 <= p <= 1:
            raise ValueError(
                f"ADA needs target in [-1, 1], speed_kimg > 0, interval >= 1 and p in [0, 1], got {target}, "
                f"{speed_kimg}, {interval}, {p}"
            )
        self.target, self.speed_kimg, self.interval = float(target), float(speed_kimg), int(interval)
        self.p = float(p)
        self.rt: float | None = None  # the last interval's r_t
        self.sign_sum = 0.0
        self.count = 0
        self.minibatches = 0

    def accumulate(self, sign_sum: float, count: int) -> None:
        """Add one minibatch: the sum of sign(D(real)) over its ``count`` reals (all processes together)."""
        self.sign_sum += float(sign_sum)
        self.count += int(count)
        self.minibatches += 1
        if self.minibatches >= self.interval:
            self.rt = self.sign_sum / max(self.count, 1)
            step = math.copysign(1.0, self.rt - self.target) if self.rt != self.target else 0.0
            self.p = min(1.0, max(0.0, self.p + step * self.count / (self.speed_kimg * 1000)))
            self.sign_sum, self.count, self.minibatches = 0.0, 0, 0

    def metrics(self) -> dict[str, float]:
        """What goes to TensorBoard: ``train/ada_p`` and, once an interval has ended, ``train/ada_rt``."""
        return {"train/ada_p": self.p} | ({"train/ada_rt": self.rt} if self.rt is not None else {})

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "rt": self.rt,
            "sign_sum": self.sign_sum,
            "count": self.count,
            "minibatches": self.minibatches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.rt = None if state.get("rt") is None else float(state["rt"])
        self.sign_sum = float(state["sign_sum"])
        self.count = int(state["count"])
        self.minibatches = int(state["minibatches"])
