"""Sliced Wasserstein distance (SWD) between two image sets, as the official PGAN code computes it.

The algorithm (Karras et al. 2018, section 5 and their ``sliced_wasserstein.py``), reproduced step by step:

1. Every image enters with 8-bit values (label maps through :func:`labels_to_uint8`) and is split into a
   Laplacian pyramid from full resolution down to ``min_resolution`` (256, 128, 64, 32, 16 at 256x256). The
   blur is the 5x5 kernel ``[1, 4, 6, 4, 1]^T [1, 4, 6, 4, 1] / 256`` of ``cv2.pyrDown``/``pyrUp``, with mirror
   boundaries (reflection about the edge pixel, scipy's ``mode='mirror'``); the coarsest level is the
   Gaussian level itself.
2. From every level of every image, ``descriptors_per_image`` (128) random 7x7 neighbourhoods, centres drawn
   uniformly so the neighbourhood lies inside the level. Grayscale counts as 3 identical channels, so a
   descriptor has 3 x 7 x 7 = 147 values.
3. Each set's descriptors of one level are normalised by their own per-channel mean and (population) std.
4. Per level, ``repeats`` (4) times ``directions`` (128) random unit directions in the 147-D descriptor
   space: both sets are projected, the projections sorted, and the mean absolute difference taken over
   descriptors and directions; the repeats are averaged.
5. The result is reported x1000 per level, plus the average over levels.

Grayscale is kept as one channel internally: with 3 identical channels the projection onto a 147-D direction
equals the projection of the 49-D descriptor onto the sum of the direction's three channel blocks, so the
directions are still drawn in 147 dimensions (the official distribution) while memory and time drop by 3.

Descriptors are accumulated per level from batches (:class:`SWDAccumulator`), so large sets (the official
evaluation uses 16,384 images per set) never need to be held in memory as images.

Command line (``synthseg swd a=DIR b=DIR``, config ``conf/swd.yaml``): :mod:`synthseg.metrics.swd` and
``docs/swd.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NHOOD_SIZE = 7
# The official descriptors are always RGB: grayscale is repeated to 3 channels before sampling.
DESCRIPTOR_CHANNELS = 3
# cv2.pyrDown's binomial kernel, separable: [1, 4, 6, 4, 1] / 16 along each axis.
_BINOMIAL = (1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0)

# Random streams derived from the one user seed, so that each set and the directions draw independently.
STREAM_A, STREAM_B, STREAM_DIRECTIONS = 0, 1, 2

LABEL_MAX = 6  # the 7 classes 0..6 are the dynamic range [0, 6] of the mask GAN


def _label_table() -> np.ndarray:
    """8-bit value of each class index 0..6, computed with the official float32 arithmetic.

    Class index -> [-1, 1] (scale 2/6, bias -1, float32 as the official ``adjust_dynamic_range``) ->
    ``x * 127.5 + 127.5`` -> round half to even -> clip to 0..255. Rounding follows float32 exactly, so
    class 1 (42.500008) becomes 43 while class 5 (212.5) becomes 212: [0, 43, 85, 128, 170, 212, 255].
    """
    scale = (np.float32(1.0) - np.float32(-1.0)) / (np.float32(LABEL_MAX) - np.float32(0.0))
    bias = np.float32(-1.0) - np.float32(0.0) * scale
    x = np.arange(LABEL_MAX + 1, dtype=np.float32) * scale + bias
    y = x * np.float32(127.5) + np.float32(127.5)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


LABEL_TO_UINT8 = _label_table()


def labels_to_uint8(labels: Tensor) -> Tensor:
    """Map 7-class label indices to the 8-bit scale the official SWD sees for masks of dynamic range [0, 6].

    Reals and generated masks (rounded and clipped to 0..6 first) must both go through this, so they are
    compared on one scale.

    Args:
        labels: (...) integer-valued tensor of class indices 0..6 (any dtype, any device).

    Returns:
        (...) uint8 tensor on the same device: 0, 43, 85, 128, 170, 212, 255 for classes 0..6.

    Raises:
        ValueError: when a value is not an integer in 0..6.
    """
    if labels.numel():
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError("labels_to_uint8 expects integer class indices; round the masks first")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > LABEL_MAX:
            raise ValueError(f"labels_to_uint8 expects class indices 0..{LABEL_MAX}, found {low}..{high}")
    table = torch.as_tensor(LABEL_TO_UINT8, device=labels.device)
    return table[labels.long()]


def level_resolutions(size: int, min_resolution: int = 16) -> list[int]:
    """Pyramid level sizes from ``size`` halving down to ``min_resolution`` (256 -> [256, 128, 64, 32, 16])."""
    if min_resolution < NHOOD_SIZE:
        raise ValueError(
            f"min_resolution must be at least {NHOOD_SIZE} (the neighbourhood), got {min_resolution}"
        )
    if size < min_resolution:
        raise ValueError(f"images of size {size} are smaller than min_resolution {min_resolution}")
    out = []
    while size >= min_resolution:
        out.append(size)
        size //= 2
    return out


# ------------------------------------------------------------------------------------------------ pyramid


def _taps(x: Tensor, dim: int, start: int, count: int) -> Tensor:
    """``x[start], x[start + 2], ...`` (``count`` samples) along ``dim`` (-1 or -2)."""
    index = slice(start, start + 2 * count - 1, 2)
    return x[..., index] if dim == -1 else x[..., index, :]


def pyr_down(x: Tensor) -> Tensor:
    """cv2.pyrDown: 5x5 binomial blur with mirror boundaries, then every second row and column.

    The blur is evaluated at the kept positions only, one axis at a time.

    Args:
        x: (B, C, H, W) float tensor, H and W >= 3.

    Returns:
        (B, C, ceil(H / 2), ceil(W / 2)) tensor.
    """
    h, w = (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2
    # torch's 'reflect' excludes the edge pixel, like scipy's 'mirror' and cv2's BORDER_REFLECT_101.
    p = F.pad(x, (2, 2, 2, 2), mode="reflect")
    k0, k1, k2 = _BINOMIAL[0], _BINOMIAL[1], _BINOMIAL[2]
    for dim, n in ((-1, w), (-2, h)):
        outer = _taps(p, dim, 0, n) + _taps(p, dim, 4, n)
        inner = _taps(p, dim, 1, n) + _taps(p, dim, 3, n)
        p = k0 * outer + k1 * inner + k2 * _taps(p, dim, 2, n)
    return p


def pyr_up(x: Tensor) -> Tensor:
    """cv2.pyrUp: zero-insertion upsampling, then the 5x5 binomial x4 with mirror boundaries.

    Computed in polyphase form, one axis at a time, without multiplying inserted zeros: even outputs are
    (x[i-1] + 6 x[i] + x[i+1]) / 8, odd outputs (x[i] + x[i+1]) / 2. Mirroring the zero-inserted signal about
    its last (zero) sample makes the missing neighbour x[-1] = x[1] on the left but x[n] = x[n-1] on the right.

    Args:
        x: (B, C, H, W) float tensor, H and W >= 2.

    Returns:
        (B, C, 2H, 2W) tensor.
    """
    b, c, h, w = x.shape
    p = F.pad(F.pad(x, (1, 0, 1, 0), mode="reflect"), (0, 1, 0, 1), mode="replicate")
    rows = x.new_empty(b, c, h + 2, 2 * w)
    left, centre, right = p[..., 0:w], p[..., 1 : w + 1], p[..., 2 : w + 2]
    rows[..., 0::2] = (left + 6.0 * centre + right) * 0.125
    rows[..., 1::2] = (centre + right) * 0.5
    out = x.new_empty(b, c, 2 * h, 2 * w)
    left, centre, right = rows[..., 0:h, :], rows[..., 1 : h + 1, :], rows[..., 2 : h + 2, :]
    out[..., 0::2, :] = (left + 6.0 * centre + right) * 0.125
    out[..., 1::2, :] = (centre + right) * 0.5
    return out


def laplacian_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """Laplacian pyramid, finest level first; the last level is the Gaussian level itself.

    Args:
        images: (B, C, H, W) float tensor; H and W divisible by 2**(levels - 1).
        levels: number of levels (>= 1).

    Returns:
        ``levels`` tensors of shape (B, C, H / 2**k, W / 2**k).
    """
    gauss = [images.float()]
    for _ in range(1, levels):
        gauss.append(pyr_down(gauss[-1]))
    return [gauss[k] - pyr_up(gauss[k + 1]) for k in range(levels - 1)] + [gauss[-1]]


# ------------------------------------------------------------------------------------------- random draws


def make_generator(seed: int, *key: int) -> torch.Generator:
    """CPU generator of one independent stream derived from the user's seed and a key.

    Keys used: ``(STREAM_A, level)`` and ``(STREAM_B, level)`` for the neighbourhood positions of each set at
    each pyramid level, ``(STREAM_DIRECTIONS,)`` for the directions. Draws happen on the CPU and move to the
    device afterwards, so a seed gives the same draws on any device.
    """
    state = np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)).generate_state(
        1, np.uint32
    )
    return torch.Generator().manual_seed(int(state[0]))


def draw_positions(generator: torch.Generator, batch: int, per_image: int, height: int, width: int) -> Tensor:
    """Neighbourhood centres for one level of one batch, uniform over the positions where a 7x7 fits.

    Returns:
        (batch, per_image, 2) int64 tensor of (x, y); x in [3, width - 3), y in [3, height - 3).
    """
    half = NHOOD_SIZE // 2
    low = torch.tensor([half, half])
    span = torch.tensor([width - 2 * half, height - 2 * half])
    # One call for both coordinates: drawing batch by batch from a level's own stream consumes it exactly as
    # one big draw would, so results do not depend on how a set is split into batches.
    u = torch.randint(0, 2**62, (batch, per_image, 2), generator=generator)
    return low + u % span


def draw_directions(generator: torch.Generator, count: int) -> Tensor:
    """``count`` random unit directions in the 147-D descriptor space (Gaussian, normalised in float64).

    Returns:
        (3, 49, count) float32 tensor: channel, 7x7 neighbourhood position, direction.
    """
    dims = DESCRIPTOR_CHANNELS * NHOOD_SIZE * NHOOD_SIZE
    dirs = torch.randn(dims, count, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.square().sum(dim=0, keepdim=True).sqrt()
    return dirs.float().reshape(DESCRIPTOR_CHANNELS, NHOOD_SIZE * NHOOD_SIZE, count)


# ------------------------------------------------------------------------------------------- descriptors


def extract_descriptors(level: Tensor, positions: Tensor) -> Tensor:
    """Gather the 7x7 neighbourhoods around ``positions`` from one pyramid level.

    Args:
        level: (B, C, h, w) float tensor.
        positions: (B, P, 2) int64 tensor of centres (x, y), at least 3 pixels from every edge.

    Returns:
        (B * P, C, 49) tensor, neighbourhood row-major (dy, dx), descriptors ordered image by image.
    """
    b, c, h, w = level.shape
    half = NHOOD_SIZE // 2
    device = level.device
    positions = positions.to(device)
    offs = torch.arange(-half, half + 1, device=device)
    nhood = (offs[:, None] * w + offs[None, :]).reshape(-1)  # (49,)
    chan = torch.arange(c, device=device) * (h * w)  # (C,)
    image = torch.arange(b, device=device) * (c * h * w)  # (B,)
    centre = positions[..., 1] * w + positions[..., 0] + image[:, None]  # (B, P)
    index = centre[:, :, None, None] + chan[None, None, :, None] + nhood[None, None, None, :]
    return level.reshape(-1)[index.reshape(-1)].reshape(-1, c, NHOOD_SIZE * NHOOD_SIZE)


def normalize_descriptors(desc: Tensor) -> Tensor:
    """Subtract the per-channel mean and divide by the per-channel population std over one set's descriptors.

    Args:
        desc: (M, C, 49) float tensor.

    Returns:
        (M, C * 49) float tensor (channel-major, as the official flattening).
    """
    var, mean = torch.var_mean(desc, dim=(0, 2), correction=0, keepdim=True)
    # A channel constant over the whole set (e.g. all-background masks) has std 0: the official code divides
    # anyway and produces NaN; keep the zero-centred values so such a level compares as a point mass.
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return ((desc - mean) / std).reshape(desc.shape[0], -1)


class SWDAccumulator:
    """Collects one set's descriptors per pyramid level from a stream of batches.

    Example:
        >>> acc = SWDAccumulator(seed=0)
        >>> for batch in batches:  # (B, 1 or 3, 256, 256), 8-bit values
        ...     acc.update(batch)
        >>> desc = acc.finalize()  # list of 5 (M, C * 49) tensors

    Args:
        seed: seed of this set's neighbourhood positions.
        stream: ``STREAM_A`` or ``STREAM_B``: two sets compared with one seed must use different streams,
            so their neighbourhoods are drawn independently.
        descriptors_per_image: random 7x7 neighbourhoods per image per level (official 128).
        min_resolution: coarsest level size (official 16).
        device: where the pyramid and descriptors are computed and kept (default: the batches' device).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        stream: int = STREAM_A,
        descriptors_per_image: int = 128,
        min_resolution: int = 16,
        device: torch.device | str | None = None,
    ) -> None:
        if descriptors_per_image < 1:
            raise ValueError(f"descriptors_per_image must be positive, got {descriptors_per_image}")
        self.descriptors_per_image = int(descriptors_per_image)
        self.min_resolution = int(min_resolution)
        self.device = torch.device(device) if device is not None else None
        self.seed = int(seed)
        self.stream = int(stream)
        self._generators: list[torch.Generator] = []
        self.shape: tuple[int, int, int] | None = None  # (C, H, W) of the first batch
        self.resolutions: list[int] = []
        self.num_images = 0
        self._parts: list[list[Tensor]] = []

    def update(self, images: Tensor) -> None:
        """Add a batch.

        Args:
            images: (B, C, H, W) tensor, C 1 (grayscale) or 3, with 8-bit values (any dtype); H and W
                divisible by 2**(levels - 1); every batch of a set must have the same C, H, W.
        """
        if images.ndim != 4 or images.shape[1] not in (1, DESCRIPTOR_CHANNELS):
            raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        _, c, h, w = images.shape
        if self.shape is None:
            self.resolutions = level_resolutions(h, self.min_resolution)
            factor = 1 << (len(self.resolutions) - 1)
            if h % factor or w % factor or w // factor < self.min_resolution:
                raise ValueError(f"image size {h}x{w} does not halve evenly down to {self.min_resolution}")
            self.shape = (c, h, w)
            self._parts = [[] for _ in self.resolutions]
            self._generators = [
                make_generator(self.seed, self.stream, k) for k in range(len(self.resolutions))
            ]
        elif (c, h, w) != self.shape:
            raise ValueError(
                f"all batches of a set must have shape (C, H, W) = {self.shape}, got {(c, h, w)}"
            )
        if images.shape[0] == 0:
            return
        if self.device is not None:
            images = images.to(self.device)
        with torch.no_grad():
            pyramid = laplacian_pyramid(images.float(), len(self.resolutions))
            for parts, gen, level in zip(self._parts, self._generators, pyramid, strict=True):
                pos = draw_positions(gen, level.shape[0], self.descriptors_per_image, *level.shape[-2:])
                parts.append(extract_descriptors(level, pos))
        self.num_images += images.shape[0]

    def finalize(self) -> list[Tensor]:
        """Normalised descriptors per level, finest first: ``len(resolutions)`` tensors (M, C * 49)."""
        if self.num_images == 0:
            raise ValueError("no images were added to the SWD accumulator")
        out = []
        for k, parts in enumerate(self._parts):
            desc = torch.cat(parts) if len(parts) > 1 else parts[0]
            self._parts[k] = [desc]  # keep one block, so finalize can be called again cheaply
            out.append(normalize_descriptors(desc))
        return out


# ---------------------------------------------------------------------------------------------- distance


def _fold(directions: Tensor, channels: int) -> Tensor:
    """Directions (3, 49, D) as seen by descriptors with ``channels`` channels: (channels * 49, D).

    A grayscale descriptor stands for 3 identical channels, so its effective direction is the sum of the
    three channel blocks.
    """
    if channels == DESCRIPTOR_CHANNELS:
        return directions.reshape(-1, directions.shape[-1])
    return directions.sum(dim=0)


def _sorted_projections(desc: Tensor, dirs: Tensor) -> Tensor:
    """Project (M, K) descriptors on (K, D) directions and sort each direction: (D, M)."""
    proj = torch.mm(dirs.T.contiguous(), desc.T)
    if proj.device.type == "cpu":
        # numpy's sort is an order of magnitude faster than torch's on CPU for these sizes.
        proj.numpy().sort(axis=1)
        return proj
    return torch.sort(proj, dim=1).values


def sliced_wasserstein_descriptors(
    desc_a: Sequence[Tensor],
    desc_b: Sequence[Tensor],
    resolutions: Sequence[int],
    *,
    seed: int = 0,
    directions: int = 128,
    repeats: int = 4,
    generator: torch.Generator | None = None,
    chunk_elements: int = 1 << 25,
) -> dict[str, float]:
    """SWD x1000 per level (keys: resolutions as strings) and ``"avg"``, from normalised descriptors.

    Args:
        desc_a: per level, (M, C_a * 49) descriptors of set A (:meth:`SWDAccumulator.finalize`).
        desc_b: per level, (M, C_b * 49) descriptors of set B; the same M as A at every level.
        resolutions: level sizes, finest first.
        seed: seed of the random directions (a separate stream from the positions).
        directions: directions per repeat (official 128).
        repeats: repeats of the direction draw (official 4).
        generator: explicit CPU generator for the directions, overriding ``seed``.
        chunk_elements: bound on projected values held at once (memory control only).
    """
    if not (len(desc_a) == len(desc_b) == len(resolutions)):
        raise ValueError("both descriptor sets need one entry per pyramid level")
    if directions < 1 or repeats < 1:
        raise ValueError(f"directions and repeats must be positive, got {directions} and {repeats}")
    gen = generator if generator is not None else make_generator(seed, STREAM_DIRECTIONS)
    result: dict[str, float] = {}
    for res, a, b in zip(resolutions, desc_a, desc_b, strict=True):
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"level {res}: the two sets have {a.shape[0]} and {b.shape[0]} descriptors; "
                "SWD compares sets of the same number of images"
            )
        chunk = max(1, min(directions, chunk_elements // max(1, a.shape[0])))
        total = 0.0
        for _ in range(repeats):
            dirs = draw_directions(gen, directions).to(a.device)
            dist = torch.zeros((), dtype=torch.float64, device=a.device)
            for start in range(0, directions, chunk):
                d = dirs[..., start : start + chunk]
                pa = _sorted_projections(a, _fold(d, a.shape[1] // 49))
                pb = _sorted_projections(b, _fold(d, b.shape[1] // 49))
                # Per-direction float32 sums (pairwise, accurate), accumulated in float64.
                dist += (pa - pb).abs_().sum(dim=1).double().sum()
            total += float(dist) / (a.shape[0] * directions)
        result[str(res)] = total / repeats * 1e3
    result["avg"] = float(np.mean([result[str(r)] for r in resolutions]))
    return result


def sliced_wasserstein_from_batches(
    batches_a: Iterable[Tensor],
    batches_b: Iterable[Tensor],
    *,
    seed: int = 0,
    descriptors_per_image: int = 128,
    directions: int = 128,
    repeats: int = 4,
    min_resolution: int = 16,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """SWD between two sets given as iterators of (B, 1 or 3, H, W) batches with 8-bit values.

    Only the descriptors (125 KB per grayscale image at 256x256: 5 levels x 128 x 49 float32) are kept, never the images. The two
    sets draw their neighbourhoods from independent streams of ``seed``, as the official code draws reals
    and fakes one after the other from one generator.
    """
    accs = []
    for stream, batches in ((STREAM_A, batches_a), (STREAM_B, batches_b)):
        acc = SWDAccumulator(
            descriptors_per_image=descriptors_per_image,
            min_resolution=min_resolution,
            device=device,
            seed=seed,
            stream=stream,
        )
        for batch in batches:
            acc.update(batch)
        accs.append(acc)
    acc_a, acc_b = accs
    if acc_a.shape is None or acc_b.shape is None:
        raise ValueError("both sets need at least one image")
    if acc_a.shape[1:] != acc_b.shape[1:]:
        raise ValueError(f"the two sets have different image sizes: {acc_a.shape[1:]} and {acc_b.shape[1:]}")
    if acc_a.num_images != acc_b.num_images:
        raise ValueError(
            f"the two sets have {acc_a.num_images} and {acc_b.num_images} images; SWD compares equal counts"
        )
    return sliced_wasserstein_descriptors(
        acc_a.finalize(),
        acc_b.finalize(),
        acc_a.resolutions,
        directions=directions,
        repeats=repeats,
        seed=seed,
    )


def _batches(images: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    *,
    seed: int = 0,
    descriptors_per_image: int = 128,
    directions: int = 128,
    repeats: int = 4,
    min_resolution: int = 16,
    batch_size: int = 256,
) -> dict[str, float]:
    """Sliced Wasserstein distance between two image sets, official PGAN algorithm, x1000.

    Args:
        a: (N, 1 or 3, H, W) tensor with 8-bit values (uint8 or any dtype holding 0..255; label maps through
            :func:`labels_to_uint8` first). Grayscale counts as 3 identical channels.
        b: (N, 1 or 3, H, W) tensor, same N, H, W as ``a``.
        seed: one seed for everything random (positions of A, positions of B, directions: separate streams).
        descriptors_per_image: 7x7 neighbourhoods per image per level (official 128).
        directions: random directions per repeat (official 128).
        repeats: direction draws per level (official 4).
        min_resolution: coarsest pyramid level (official 16).
        batch_size: images per pyramid batch (memory control only; the result does not depend on it).

    Returns:
        ``{"256": ..., "128": ..., "64": ..., "32": ..., "16": ..., "avg": ...}`` (keys follow H), all x1000.
        The same images on both sides give the estimator's floor, not 0, because the two sets sample their
        neighbourhoods independently (as the official code does for reals and fakes).
    """
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 4 or x.shape[1] not in (1, DESCRIPTOR_CHANNELS):
            raise ValueError(f"{name}: expected shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"the sets must have the same N, H, W: got {tuple(a.shape)} and {tuple(b.shape)}")
    return sliced_wasserstein_from_batches(
        _batches(a, batch_size),
        _batches(b, batch_size),
        seed=seed,
        descriptors_per_image=descriptors_per_image,
        directions=directions,
        repeats=repeats,
        min_resolution=min_resolution,
    )
