"""Diversity: mean MS-SSIM over random pairs within one image set (torchmetrics).

A synthetic set much more self-similar (higher MS-SSIM) than the real one has collapsed. At 256x256 the
standard 5 scales fit; smaller images get fewer scales (the first weights of the standard five, renormalised),
and the number used is reported beside the value. With several sequences each is measured on its own, on the
same pairs (:func:`ms_ssim_by_channel`); the set's figure is their mean.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL = 11


def ms_ssim_scales(size: int, kernel_size: int = KERNEL) -> int:
    """The most MS-SSIM scales (<= 5) an image of side ``size`` allows (torchmetrics' size rules)."""
    for scales in range(len(BETAS), 0, -1):
        divisor = max(1, scales - 1) ** 2
        if (
            size >= 2**scales
            and size // divisor > kernel_size - 1
            and size // 2 ** (scales - 1) >= kernel_size
        ):
            return scales
    raise ValueError(f"images of side {size} are too small for MS-SSIM with an {kernel_size}-pixel window")


def random_pairs(n: int, count: int, seed: int) -> torch.Tensor:
    """(count, 2) index pairs i != j drawn with a seeded generator."""
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images, got {n}")
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, n, (count,), generator=gen)
    # An offset in 1..n-1 makes the second index differ from the first.
    second = (first + torch.randint(1, n, (count,), generator=gen)) % n
    return torch.stack([first, second], dim=1)


@torch.inference_mode()
def ms_ssim_by_channel(
    images: torch.Tensor, pairs: int = 500, seed: int = 0, batch_size: int = 64
) -> tuple[list[float], int]:
    """Mean MS-SSIM over ``pairs`` random pairs of (N, C, H, W) images in [0, 1], per channel.

    Every channel (sequence) is compared on its own, on the same pairs (the pairs depend on N and ``seed``
    only).

    Returns:
        (C mean MS-SSIM values, number of scales used).
    """
    scales = ms_ssim_scales(min(images.shape[-2:]))
    weights = torch.tensor(BETAS[:scales])
    betas = tuple((weights / weights.sum()).tolist())
    index = random_pairs(len(images), pairs, seed)
    channels, side = images.shape[1], images.shape[-2:]
    values = []
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        # Channels become batch entries: (B, C, H, W) -> (B C, 1, H, W), one MS-SSIM each.
        first = images[chunk[:, 0]].float().reshape(-1, 1, *side)
        second = images[chunk[:, 1]].float().reshape(-1, 1, *side)
        values.append(
            multiscale_structural_similarity_index_measure(
                first, second, data_range=1.0, betas=betas, kernel_size=KERNEL, reduction="none",
            ).reshape(-1, channels)
        )  # fmt: skip
    return [float(v) for v in torch.cat(values).mean(0)], scales


def mean_ms_ssim(
    images: torch.Tensor, pairs: int = 500, seed: int = 0, batch_size: int = 64
) -> tuple[float, int]:
    """Mean MS-SSIM over ``pairs`` random pairs of (N, C, H, W) images scaled to [0, 1], averaged over the
    C channels (one channel: the plain mean).

    Returns:
        (mean MS-SSIM, number of scales used).
    """
    values, scales = ms_ssim_by_channel(images, pairs, seed, batch_size)
    return sum(values) / len(values), scales
