"""The slice's axial position as a network input: an embedding for conditional GANs (``condition=slice``).

A slice's normalised axial position ``p`` in [0, 1] (0 the case's first slice, 1 its last) becomes a vector:
Fourier features of ``p`` (so the embedding can change quickly with position, as anatomy does), then two
dense layers with the equalized learning rate of the progressive GAN (weights stored N(0, 1) and scaled at
run time by ``gain / sqrt(fan_in)``). The PGAN generator concatenates it to its normalised latent; the
discriminator either projects its last features on it (Miyato & Koyama 2018) or concatenates it to them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONDITIONS = ("none", "slice")
CONDITION_STYLES = ("projection", "concat")


class PositionEmbedding(nn.Module):
    """Normalised axial position (N,) in [0, 1] -> embedding (N, ``dim``).

    Args:
        dim: size of the embedding.
        frequencies: Fourier features ``sin(pi k p), cos(pi k p)`` for k = 1 .. ``frequencies``, beside
            ``2p - 1`` itself.

    Shapes: (N,) or (N, 1) -> (N, dim).
    """

    def __init__(self, dim: int, frequencies: int = 4) -> None:
        super().__init__()
        if dim < 1 or frequencies < 0:
            raise ValueError(f"dim must be positive and frequencies >= 0, got {dim}, {frequencies}")
        features = 1 + 2 * frequencies
        self.weight0 = nn.Parameter(torch.randn(dim, features))
        self.bias0 = nn.Parameter(torch.zeros(dim))
        self.weight1 = nn.Parameter(torch.randn(dim, dim))
        self.bias1 = nn.Parameter(torch.zeros(dim))
        self.scale0 = math.sqrt(2) / math.sqrt(features)
        self.scale1 = 1.0 / math.sqrt(dim)
        self.register_buffer("freqs", torch.arange(1, frequencies + 1, dtype=torch.float32) * math.pi, False)
        self.dim = dim

    def features(self, position: Tensor) -> Tensor:
        """(N,) positions -> (N, 1 + 2 * frequencies) Fourier features."""
        p = position.reshape(-1, 1).float()
        angles = p * self.freqs.reshape(1, -1)
        return torch.cat([2.0 * p - 1.0, torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, position: Tensor) -> Tensor:
        x = self.features(position).to(self.weight0.dtype)
        x = F.leaky_relu(F.linear(x, self.weight0 * self.scale0, self.bias0), 0.2)
        return F.linear(x, self.weight1 * self.scale1, self.bias1)


def uniform_positions_from_latents(z: Tensor) -> Tensor:
    """Positions for a conditional generator called without any: uniform on [0, 1], one per latent (N,).

    The latent's squared length is chi-squared with ``latent_dim`` degrees of freedom, so its distribution
    function maps it to a uniform number; pixel norm discards that length, so with ``normalize_latents`` (the
    default) the position is independent of everything else the generator sees, and a mask's position is
    fixed by its latent (``generate-masks``' masks depend only on seed and index).
    """
    d = z.shape[1]
    return torch.special.gammainc(
        torch.tensor(d / 2.0, dtype=torch.float64), z.double().square().sum(1) / 2
    ).to(z.dtype)


def check_positions(position: Tensor | None, count: int) -> Tensor:
    """``position`` as (count,): one per sample, else a ValueError naming what came."""
    if position is None or position.numel() != count:
        shape = None if position is None else tuple(position.shape)
        raise ValueError(f"a conditional network needs one position per sample ({count}), got {shape}")
    return position.reshape(count)


def conditional_score(block: nn.Module, h: Tensor, embedding: Tensor, style: str) -> Tensor:
    """A PGAN critic's last block (minibatch stddev, conv, dense0, dense1) scoring with a position.

    Args:
        block: the critic's 4x4 output block (``mbstd``, ``conv``, ``dense0``, ``dense1``).
        h: its input features (N, C, 4, 4).
        embedding: the positions' embeddings (N, E): E = the hidden width (``projection``) or the extra
            inputs of ``dense0`` (``concat``).
        style: ``projection`` adds ``<dense0 features, embedding> / sqrt(E)`` to the score (Miyato & Koyama
            2018); ``concat`` appends the embedding to the flattened features before ``dense0``.

    Returns: the scores (N, 1).
    """
    x = F.leaky_relu(block.conv(block.mbstd(h)), 0.2).flatten(1)
    if style == "concat":
        x = torch.cat([x, embedding], dim=1)
    features = F.leaky_relu(block.dense0(x), 0.2)
    score = block.dense1(features)
    if style == "projection":
        score = score + (features * embedding).sum(dim=1, keepdim=True) / math.sqrt(embedding.shape[1])
    return score


def check_condition(condition: str, style: str = "concat") -> None:
    """Raise a ValueError naming an unknown ``condition`` or conditioning ``style``."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if style not in CONDITION_STYLES:
        raise ValueError(f"condition_style must be one of {CONDITION_STYLES}, got {style!r}")
