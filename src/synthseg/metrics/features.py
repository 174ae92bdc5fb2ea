"""Feature extractors for FD / KID / precision-recall that never download anything.

Default: the encoder of a U-Net trained on real data (``unet``): the four skip levels and the bridge, each
averaged over the image, concatenated. In-domain and already trained by the pipeline; its distances are named
``fd_unet`` / ``kid_unet`` so no one mistakes them for Inception FID. It reads every sequence the U-Net was
trained on at once, as its input channels. Optional: Inception-v3 through torchmetrics (``inception``), only
from a weights file the user placed on disk; it sees one gray image, so each sequence is measured on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthseg.checkpoint import CheckpointError, load_network, load_unet, read_unet_results
from synthseg.data.sequences import check_sequences
from synthseg.errors import InputError
from synthseg.networks.unet import UNet

EXTRACTORS = ("unet", "inception")
UNET_NORMS = ("paper", "zscore")  # the image_norm values a U-Net extractor reproduces
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


class UNetEncoderFeatures(nn.Module):
    """Globally average-pooled encoder features of a U-Net.

    Args:
        unet: a trained :class:`UNet` (its encoder layers are shared, not copied).

    Shapes:
        (B, in_channels, H, W), H and W multiples of 16 -> (B, 31 * base_width): w + 2w + 4w + 8w skip
        channels and the 16w bridge channels.
    """

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.encoders = unet.encoders
        self.pool = unet.pool
        self.bridge = unet.bridge
        width = int(unet.init_args["base_width"])
        self.num_features = 31 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for encoder in self.encoders:
            x = encoder(x)
            pooled.append(x.mean(dim=(2, 3)))
            x = self.pool(x)
        pooled.append(self.bridge(x).mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 (2048-d pool features) on gray images in [0, 1], from a local weights file.

    Shapes: (B, 1, H, W) float in [0, 1] -> (B, 2048).
    """

    def __init__(self, weights: str | os.PathLike[str] | None) -> None:
        super().__init__()
        if not weights or not Path(weights).is_file():
            raise InputError(
                f"extractor=inception needs a local weights file (never downloaded): place {INCEPTION_WEIGHTS} "
                f"(torch-fidelity's Inception-v3) on disk and pass extractor_weights=PATH (got {weights!r})"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except (ImportError, ModuleNotFoundError):
            raise InputError(
                'extractor=inception needs torch-fidelity: pip install -e ".[inception]"'
            ) from None
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=str(weights),
            )
        except (ModuleNotFoundError, ImportError):
            raise InputError(
                'extractor=inception needs torch-fidelity: pip install -e ".[inception]"'
            ) from None
        except (RuntimeError, OSError, KeyError) as err:
            raise InputError(f"extractor_weights={weights}: not Inception-v3 weights ({err})") from None
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
        return self.net(rgb).reshape(len(x), -1)


@dataclass
class Extractor:
    """A feature module and how images must be scaled for it.

    Attributes:
        name: ``unet`` or ``inception`` (the suffix of ``fd_<name>``).
        module: (B, C, H, W) -> (B, D), in eval mode (U-Net: C its input sequences; Inception: C = 1).
        norm: ``paper`` (image / max - mean per sequence, the U-Net's training input), ``zscore`` (each
            slice's own z-score over its brain, per sequence: a U-Net trained with ``data.image_norm=zscore``)
            or ``unit`` (image / max in [0, 1]).
        train_max, train_mean: the normalisation statistics (``paper``), one per sequence in ``sequences``
            order; None: from the real sample.
        source: where the weights came from, for quality.json.
        resolution: the side the network was trained at (images are block-averaged to it); None: as given.
        sequences: the U-Net's input sequences in channel order; None: not recorded (a bare snapshot; see
            :func:`measured_sequences`) or any (Inception, one sequence at a time).
        channels: the U-Net's input channels (None: Inception).
        segmenter: the whole U-Net in eval mode (its encoder is ``module``'s), for the label agreement
            (:mod:`synthseg.metrics.agreement`); None for Inception.
        classes: the U-Net's output classes (7, 4 or 2); None for Inception.
    """

    name: str
    module: nn.Module
    norm: str
    train_max: tuple[float, ...] | None
    train_mean: tuple[float, ...] | None
    source: str
    resolution: int | None = None
    sequences: tuple[str, ...] | None = None
    channels: int | None = None
    segmenter: nn.Module | None = None
    classes: int | None = None


def _per_sequence(value: object) -> tuple[float, ...] | None:
    """A statistic as recorded (a number for one sequence, a list for several, or absent) -> a tuple."""
    if value is None:
        return None
    return tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))


def _check_channels(
    named: str, net: nn.Module, sequences: tuple[str, ...] | None, stats: dict[str, tuple[float, ...] | None]
) -> int:
    """The U-Net's input channels; one line when its sequences or statistics do not match them."""
    channels = int(getattr(net, "init_args", {}).get("in_channels", 1))
    if sequences is not None and len(sequences) != channels:
        raise InputError(
            f"{named}: the U-Net has {channels} input channels but names the sequences {list(sequences)}"
        )
    for key, value in stats.items():
        if value is not None and len(value) != channels:
            raise InputError(
                f"{named}: {key} has {len(value)} values for a U-Net of {channels} input channels"
            )
    return channels


def _unet_run(path: Path) -> Extractor:
    """A U-Net run folder (results.json) or a network snapshot -> the ``unet`` extractor."""
    results_path = path / "results.json" if path.is_dir() else path
    sequences: tuple[str, ...] | None
    if results_path.name == "results.json":
        if not results_path.is_file():
            raise InputError(f"unet={path}: no results.json (pass a U-Net run folder or a network snapshot)")
        results = read_unet_results(results_path)
        if results is None:
            raise InputError(f"{results_path}: not a tested U-Net run")
        stats = results.get("data_stats", {})
        data = results["config"].get("data", {})
        norm = data.get("image_norm", "paper")
        if norm not in UNET_NORMS:
            raise InputError(
                f"{results_path}: image_norm={norm!r}; the quality extractor supports {UNET_NORMS}"
            )
        # Before 0.2.0 a run had no data.sequences: T1c alone.
        sequences = check_sequences(
            tuple(data.get("sequences") or ("t1c",)), f"{results_path}: data.sequences"
        )
        # As the DataModule normalised the U-Net's input: per sequence, image / train_max - train_mean
        # (or each slice's own z-score).
        train_max = _per_sequence(stats.get("train_max", [1.0] * len(sequences)))
        train_mean = _per_sequence(stats.get("train_mean", [0.0] * len(sequences)))
        net = load_unet(results_path, results)
        named = str(results_path)
        resolution = data.get("resolution")
    else:
        try:
            net, meta = load_network(path)
        except CheckpointError as err:  # the loader's message names the file already
            raise InputError(f"unet=: {err} (pass the U-Net run folder or a network snapshot)") from None
        named = f"unet={path}"
        recorded = meta.get("sequences")
        sequences = check_sequences(recorded, f"{named}: meta.sequences") if recorded is not None else None
        train_max, train_mean = _per_sequence(meta.get("train_max")), _per_sequence(meta.get("train_mean"))
        resolution = meta.get("resolution")
        norm = meta.get("image_norm", "paper")
        if norm not in UNET_NORMS:
            raise InputError(
                f"{named}: meta.image_norm={norm!r}; the quality extractor supports {UNET_NORMS}"
            )
    if not isinstance(net, UNet):
        raise InputError(f"{named}: holds a {type(net).__name__}, not a U-Net")
    channels = _check_channels(named, net, sequences, {"train_max": train_max, "train_mean": train_mean})
    return Extractor(
        "unet", UNetEncoderFeatures(net).eval(), norm, train_max, train_mean, str(results_path),
        int(resolution) if resolution else None, sequences, channels, net.eval(),
        int(net.init_args["num_classes"]),
    )  # fmt: skip


def measured_sequences(
    extractor: Extractor | None, available: tuple[str, ...], named: str
) -> tuple[str, ...]:
    """The sequences a quality measurement reads: the U-Net's, else those of the synthetic set (``available``).

    A U-Net snapshot that does not record its sequences (``meta.sequences``) reads the synthetic set's when
    their number matches its input channels, else the first one when it has one channel (the behaviour before
    several sequences); anything else is one line naming the snapshot and ``named`` (the synthetic folder).
    """
    if extractor is None or extractor.name != "unet":
        return available
    if extractor.sequences is not None:
        return extractor.sequences
    channels = extractor.channels or 1
    if channels == len(available):
        return available
    if channels == 1:
        return available[:1]
    raise InputError(
        f"unet={extractor.source}: a U-Net of {channels} input channels that records no meta.sequences, and "
        f"{named} holds {list(available)}: save the snapshot with meta={{'sequences': [...]}}"
    )


def build_extractor(kind: str, unet: str | os.PathLike[str] | None, weights: str | None = None) -> Extractor:
    """The feature extractor ``kind`` (``unet`` needs ``unet=RUN``; ``inception`` needs ``weights``)."""
    if kind == "unet":
        if not unet:
            raise InputError("extractor=unet needs unet=RUN (the full_real U-Net run folder or a snapshot)")
        path = Path(unet)
        if not path.exists():
            raise InputError(f"unet={path}: not found")
        return _unet_run(path)
    if kind == "inception":
        return Extractor("inception", InceptionFeatures(weights).eval(), "unit", None, None, str(weights))
    raise InputError(f"extractor={kind!r}: expected one of {list(EXTRACTORS)}")


EXTRACT_PIXELS = 1 << 18  # image pixels per extractor batch: 4 slices at 256x256, 64 at 64x64


@torch.inference_mode()
def extract(module: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Features of (N, C, H, W) float images in batches on the module's device -> (N, D) float64 on CPU.

    ``batch_size`` None: as many images as make ``EXTRACT_PIXELS`` pixels (at most 64). A width-64 U-Net's
    first activations are 16 MiB per 256x256 image; batches of 64 peaked 3.3 GiB and ran slower on 2 CPU
    threads than batches of 4 (0.53 GiB; benchmarks/bench_quality_memory.py).
    """
    if batch_size is None:
        batch_size = max(1, min(64, EXTRACT_PIXELS // max(images.shape[-2] * images.shape[-1], 1)))
    device = next(module.parameters()).device
    out = [
        module(images[i : i + batch_size].to(device)).double().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, getattr(module, "num_features", 0), dtype=torch.float64)
