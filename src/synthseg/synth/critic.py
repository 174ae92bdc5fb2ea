"""A trained PGAN critic as a filter of generated label maps (``synthseg filter method=critic``).

The paper's discussion proposes to "reuse the trained discriminator D of PGAN, by feeding it all of the images
that have been generated and discarding the images that are mapped to a value below a specific threshold".
Here the threshold is calibrated on real maps the critic never trained on: a mask is kept when its score is at
least the ``critic_quantile`` quantile of the scores of the real **validation** maps (non-empty ones: the PGAN
trained on non-empty maps, ``data.drop_empty``), so by construction about that fraction of real maps would be
discarded.

Where the critic comes from: a snapshot saved with ``model.snapshot_critic=true`` holds the critic of its own
tick (entry ``critic``); otherwise snapshots hold only the EMA generator, and the critic is the **final** one of
the run, in its ``checkpoints/last.ckpt`` (a later tick than the snapshot's, when the best-SWD snapshot was
chosen). :func:`find_critic` picks the snapshot's own when there is one, else the run's final one, and says
which.

How a mask is scored:

- reduced to the critic's resolution by majority vote (a 64x64 generator's masks, nearest-upsampled to the
  dataset's size, come back exactly) and encoded as the critic saw reals: class indices mapped to [-1, 1]
  (``index``) or exact one-hot maps (``onehot``); at the stage the critic was trained to (resolution, alpha);
  with a slice-conditional critic, at the mask's recorded position (reals: their own);
- the critic's minibatch-standard-deviation feature (the one input that mixes samples) is **held** at its mean
  over the real validation maps taken in consecutive groups of the critic's group size (4), so a mask's score
  depends on that mask alone, not on its neighbours in a batch, the batch size or the input order.

Nothing here imports Lightning: the critic is rebuilt from the checkpoint's weights with
:func:`synthseg.checkpoint.load_network`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from synthseg.checkpoint import CheckpointError, load_network, safe_load
from synthseg.data.labels import labels_to_net, labels_to_onehot, resize_labels
from synthseg.data.manifest import read_provenance
from synthseg.errors import InputError
from synthseg.networks.pgan import PGANDiscriminator

CRITIC_KEY = "critic"  # a snapshot's critic entry (model.snapshot_critic=true)
DISCRIMINATOR_PREFIX = "discriminator."  # the critic's weights in a PGAN training checkpoint's state_dict
METHODS = ("zscore", "critic", "both")


@dataclass
class Critic:
    """A PGAN critic ready to score label maps.

    Attributes:
        network: the critic (eval mode).
        resolution, alpha: the growing stage it was trained to, at which it scores.
        source: the file it came from.
        origin: ``snapshot`` (saved with the generator's snapshot, its tick) or ``final`` (the run's
            ``last.ckpt``: the critic at the end of training).
        tick, kimg: where training stood when it was saved.
        held_stddev: the value its minibatch-stddev feature is held at (:meth:`hold_stddev`), None before.
    """

    network: PGANDiscriminator
    resolution: int
    alpha: float
    source: str
    origin: str
    tick: int | None = None
    kimg: float | None = None
    held_stddev: float | None = None

    def describe(self) -> dict[str, Any]:
        net = self.network
        return {
            "source": self.source,
            "origin": self.origin,
            "tick": self.tick,
            "kimg": self.kimg,
            "resolution": self.resolution,
            "alpha": self.alpha,
            "label_encoding": net.label_encoding,
            "condition": net.condition,
            "index_order": net.index_order,
            "held_stddev": self.held_stddev,
        }

    def encode(self, masks: np.ndarray) -> Tensor:
        """(N, H, W) class indices -> the critic's input (N, C, r, r) at its resolution."""
        net = self.network
        labels = resize_labels(
            torch.from_numpy(np.asarray(masks, dtype=np.int64)), self.resolution, net.classes
        )
        if net.label_encoding == "onehot":
            return labels_to_onehot(labels, net.classes)
        return labels_to_net(labels, net.classes, net.index_order)

    def _call(self, masks: np.ndarray, positions: np.ndarray | None, device: torch.device) -> Tensor:
        x = self.encode(masks).to(device)
        if self.network.condition == "none":
            return self.network(x, self.alpha)
        if positions is None or not np.isfinite(positions).all():
            raise InputError(
                "the critic is slice-conditional: every mask needs an axial position (the manifest's position "
                "column, written by generate-masks from a conditional generator)"
            )
        return self.network(x, self.alpha, torch.as_tensor(positions, dtype=torch.float32, device=device))

    @torch.inference_mode()
    def hold_stddev(
        self, reals: Iterable[np.ndarray], positions: np.ndarray | None, device: torch.device
    ) -> float:
        """Hold the minibatch-stddev feature at its mean over consecutive groups of real maps; return it."""
        block = self.network.blocks["b4"]
        mbstd = block.mbstd
        group = int(mbstd.group_size)
        values: list[float] = []
        hook = mbstd.register_forward_hook(lambda _m, _i, out: values.append(float(out[0, -1, 0, 0])))
        try:
            for start, masks in _batches(reals, group):
                where = None if positions is None else positions[start : start + len(masks)]
                self._call(masks, where, device)
        finally:
            hook.remove()
        if not values:
            raise InputError("no real maps to calibrate the critic on")
        self.held_stddev = float(np.mean(values))
        block.mbstd = HeldStdDev(self.held_stddev)
        return self.held_stddev

    @torch.inference_mode()
    def scores(
        self,
        masks: Iterable[np.ndarray],
        positions: np.ndarray | None,
        device: torch.device,
        batch_size: int = 64,
    ) -> np.ndarray:
        """(N,) float64 scores of (H, W) masks in input order (after :meth:`hold_stddev`)."""
        if self.held_stddev is None:
            raise RuntimeError("hold_stddev() first: a mask's score must not depend on its batch")
        out: list[np.ndarray] = []
        for start, batch in _batches(masks, batch_size):
            where = None if positions is None else positions[start : start + len(batch)]
            out.append(self._call(batch, where, device).float().cpu().numpy().reshape(-1))
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0, dtype=np.float64)


class HeldStdDev(nn.Module):
    """Stands in for the critic's minibatch standard deviation: appends one map holding a fixed value.

    Shapes: (N, C, H, W) -> (N, C + 1, H, W).
    """

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = float(value)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        return torch.cat([x, x.new_full((n, 1, h, w), self.value)], dim=1)


def _batches(masks: Iterable[np.ndarray], size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start index, (B, H, W) stack) of consecutive masks, ``size`` at a time."""
    buffer: list[np.ndarray] = []
    start = 0
    for mask in masks:
        buffer.append(np.asarray(mask))
        if len(buffer) == size:
            yield start, np.stack(buffer)
            start += size
            buffer = []
    if buffer:
        yield start, np.stack(buffer)


def critic_threshold(real_scores: np.ndarray, quantile: float) -> float:
    """The score a mask needs to be kept: the ``quantile`` quantile of the real scores (numpy's linear
    interpolation between order statistics)."""
    if real_scores.size == 0:
        raise InputError("no real scores to calibrate the critic's threshold on")
    return float(np.quantile(np.asarray(real_scores, dtype=np.float64), quantile))


def _inferred_spec(obj: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Candidate critic entries of a checkpoint written before the critic's own entry (0.3.0): the generator's
    constructor arguments give everything but ``mbstd_group_size`` (the default, 4) and ``condition_style``
    (both are tried; the weights tell them apart)."""
    generator = (obj.get("pgan") or {}).get("generator") or {}
    args = dict(generator.get("init_args") or (obj.get("pgan") or {}).get("generator_init_args") or {})
    if not args:
        raise CheckpointError(f"{path}: a PGAN checkpoint without its networks' constructor arguments")
    keep = ("resolution", "channels", "fmap_base", "fmap_max", "fused_scale", "label_encoding", "classes",
            "index_order")  # fmt: skip
    base = {k: args[k] for k in keep if k in args}
    base["condition"] = args.get("condition", "none")
    if base["condition"] == "none":
        styles = ["concat"]
    else:
        base["condition_dim"] = args.get("condition_dim", 32)
        styles = ["concat", "projection"]
    network = f"{PGANDiscriminator.__module__}.{PGANDiscriminator.__qualname__}"
    return [{"network": network, "init_args": {**base, "condition_style": s}} for s in styles]


def load_critic(path: str | os.PathLike[str]) -> Critic:
    """The critic of a snapshot saved with ``model.snapshot_critic=true``, of a PGAN training checkpoint
    (``last.ckpt``: the critic at the end of training), or of a run folder (its ``checkpoints/last.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    obj = safe_load(path)
    if isinstance(obj.get(CRITIC_KEY), dict):
        net, _ = load_network(path, network_key=CRITIC_KEY, checkpoint=obj)
        meta = dict(obj.get("meta") or {})
        origin = "snapshot"
    elif isinstance(obj.get("pgan"), dict):
        entry = obj["pgan"].get("discriminator")
        candidates = [entry] if isinstance(entry, dict) else _inferred_spec(obj, path)
        failure: CheckpointError | None = None
        for spec in candidates:
            try:
                net, _ = load_network(path, spec=spec, weights_prefix=DISCRIMINATOR_PREFIX, checkpoint=obj)
                break
            except CheckpointError as err:
                failure = failure or err
        else:
            assert failure is not None
            raise failure
        meta = dict((obj["pgan"].get("generator") or {}).get("meta") or {})
        meta.setdefault("tick", obj["pgan"].get("tick"))
        origin = "final"
    else:
        raise CheckpointError(
            f"{path}: holds no PGAN critic (snapshots hold only the generator unless trained with "
            "model.snapshot_critic=true): give critic=<run>/checkpoints/last.ckpt"
        )
    if not isinstance(net, PGANDiscriminator):
        raise CheckpointError(f"{path}: holds a {type(net).__name__}, not a PGAN critic")
    resolution = int(meta.get("resolution") or net.resolution)
    if resolution not in net.resolutions:
        raise CheckpointError(f"{path}: stage {resolution}x{resolution} does not fit the critic")
    return Critic(
        network=net,
        resolution=resolution,
        alpha=float(meta.get("alpha", 1.0)),
        source=str(path),
        origin=origin,
        tick=meta.get("tick"),
        kimg=meta.get("kimg"),
    )


def find_critic(masks: str | os.PathLike[str]) -> Path:
    """The critic for masks made by ``generate-masks`` (read from their ``prepare.json``): the generator's own
    file when it holds a critic (a snapshot saved with ``model.snapshot_critic=true``, or a training
    checkpoint), else its run's ``checkpoints/last.ckpt`` (the final critic)."""
    record = read_provenance(masks) or {}
    checkpoint = record.get("checkpoint") or (record.get("input") or {}).get("checkpoint")
    if not checkpoint:
        raise InputError(
            f"masks={masks}: no prepare.json naming the PGAN that made them: give critic=PATH (the run's "
            "checkpoints/last.ckpt)"
        )
    source = Path(checkpoint)
    if source.is_file():
        if source.suffix == ".ckpt" or CRITIC_KEY in safe_load(source):
            return source
    last = source.parent.parent / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise InputError(
            f"masks={masks}: made by {source}, whose run has no checkpoints/last.ckpt (and the snapshot holds no "
            "critic): give critic=PATH"
        )
    return last
