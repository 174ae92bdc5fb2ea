"""``synthseg quality synthetic=DIR real=DIR [unet=RUN] [extractor=unet|inception] output=DIR``.

How good, how diverse and how private a synthetic set is, beside the real training data it imitates:
FD / KID / precision-recall on the features of a trained U-Net's encoder (or a local Inception-v3), MS-SSIM
diversity within each set, label-map statistics (class areas, tumor fragmentation, the filter's discard rate)
and the nearest real training slice of every synthetic pair. Writes ``quality.json`` and PNG figures into
``output``. Every statistic runs on a seeded sample of ``max_images`` slices per set; the nearest-real search
covers the whole real training split. With several MR sequences (t1, t1c, t2, flair) every measure reads the
sequences the U-Net was trained on (without an extractor: the synthetic set's); both sets must hold them.
Nothing is downloaded. See docs/quality.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from synthseg.data.cache import open_cache
from synthseg.data.manifest import check_distinct, read_manifest
from synthseg.errors import InputError
from synthseg.metrics import diversity, fidelity, labelmaps, memorisation
from synthseg.metrics.sliced_wasserstein import labels_to_uint8, sliced_wasserstein
from synthseg.settings import Settings, check_device, check_positive
from synthseg.utils.outputs import claim_output

REAL_SPLITS = ("train", "reduced")


class DatasetSlices:
    """A dataset folder's training slices: memory-mapped arrays and the rows in use (manifest order).

    :meth:`use` picks the sequences measured and opens the slice cache (built then if needed).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", key: str = "") -> None:
        if split not in REAL_SPLITS:
            raise InputError(f"real_split={split!r}: expected one of {list(REAL_SPLITS)}")
        self.root = Path(root)
        self.named = f"{key}={self.root}" if key else str(self.root)
        manifest = read_manifest(self.root)
        rows = manifest.rows("train")
        if split == "reduced":
            rows = rows[manifest.reduced[rows]]
        if len(rows) < 2:
            raise InputError(f"{self.root}: fewer than 2 training slices ({len(rows)})")
        self.manifest = manifest
        self.sequences = manifest.sequences
        self.rows = rows
        self.ids = manifest.ids

    def use(self, sequences: tuple[str, ...], why: str) -> None:
        """Read only ``sequences``, in that order; one line naming the folder when it lacks one (``why``: who
        asks for them), before any cache is built."""
        missing = [s for s in sequences if s not in self.sequences]
        if missing:
            raise InputError(
                f"{self.named}: holds the sequences {list(self.sequences)}, not {missing} ({why})"
            )
        channels = [self.sequences.index(s) for s in sequences]
        paths = self.manifest.images[self.rows][:, channels]
        if (paths == "").any():
            raise InputError(
                f"{self.named}: its manifest lists label maps without images; quality needs pairs"
            )
        images, self.labels = open_cache(self.root, self.manifest)
        whole = channels == list(range(len(self.sequences)))
        # (N, S, H, W) of the sequences measured, read lazily from the memory map.
        self.images = RowView(images, channels=None if whole else np.asarray(channels))
        self.sequences = tuple(sequences)
        self.size = int(self.labels.shape[-1])

    def sample(self, count: int, seed: int) -> np.ndarray:
        """At most ``count`` rows, drawn without replacement with ``seed``, in manifest order."""
        if len(self.rows) <= count:
            return self.rows
        return np.sort(np.random.default_rng(seed).choice(self.rows, size=count, replace=False))

    def load(self, rows: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels (N, size, size) int64 majority-downsampled, images (N, S, size, size) float32 block means)."""
        return memorisation.read_rows(self.labels, self.images, rows, size)


class RowView:
    """Rows ``rows`` (None: all) and channels ``channels`` (None: all) of a (memory-mapped) array, indexed
    lazily: the whole real split is never loaded at once."""

    def __init__(
        self, array: np.ndarray | RowView, rows: np.ndarray | None = None, channels: np.ndarray | None = None
    ) -> None:
        self.array, self.rows, self.channels = array, rows, channels
        rest = array.shape[1:] if channels is None else (len(channels), *array.shape[2:])
        self.shape: tuple[int, ...] = (len(array) if rows is None else len(rows), *rest)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        picked = np.asarray(self.array[index if self.rows is None else self.rows[index]])
        return picked if self.channels is None else picked[:, self.channels]


def _common_size(synthetic: DatasetSlices, real: DatasetSlices) -> int:
    small, large = sorted((synthetic.size, real.size))
    if large % small:
        raise InputError(
            f"synthetic slices are {synthetic.size} px, real ones {real.size} px: one must divide the other"
        )
    return small


def _unit(images: torch.Tensor) -> torch.Tensor:
    """(N, S, H, W) images scaled to [0, 1] by the set's maximum of each sequence (MS-SSIM's data range)."""
    return images / images.amax(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)


def _scaler(extractor: Any, real: torch.Tensor) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    """How (N, S, H, W) images enter the extractor, per sequence: ``paper`` as the U-Net was trained
    (image / train_max - train_mean; without recorded statistics, those of the real sample), ``zscore`` each
    slice by its own brain's mean and std (``data.image_norm=zscore``), ``unit`` in [0, 1]
    by the real sample's maximum. The function returned scales the channels ``group`` of its input."""
    dims = (0, 2, 3)
    real_max = real.amax(dim=dims, keepdim=True)

    def per_sequence(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)

    if extractor.norm == "zscore":
        from synthseg.data.dataset import zscore_brain

        return lambda x, group: torch.from_numpy(zscore_brain(x[:, group].numpy()))
    if extractor.norm == "paper":
        top = per_sequence(extractor.train_max) if extractor.train_max else real_max
        top = torch.where(top > 0, top, real_max)  # a recorded 0 (no signal) falls back to the sample's
        if extractor.train_mean is not None:
            mean = per_sequence(extractor.train_mean)
        else:
            mean = (real / top).mean(dim=dims, keepdim=True)
        return lambda x, group: x[:, group] / top[:, group] - mean[:, group]
    top = real_max.clamp_min(1e-12)
    return lambda x, group: (x[:, group] / top[:, group]).clamp(0, 1)


def _distances(
    name: str, f_real: torch.Tensor, f_syn: torch.Tensor, *, seed: int, k: int, subsets: int,
    lap: Callable[[str], None],
) -> dict[str, float]:  # fmt: skip
    """FD, KID (mean, std), precision and recall of two feature sets, keys suffixed with ``name``."""
    fd = fidelity.frechet_distance(f_real, f_syn)
    kid, kid_std = fidelity.kernel_distance(f_real, f_syn, subset_size=1000, subsets=subsets, seed=seed)
    lap("fd_kid")
    precision, recall = fidelity.precision_recall(f_real, f_syn, k=k)
    lap("precision_recall")
    return {
        f"fd_{name}": fd, f"kid_{name}": kid, f"kid_{name}_std": kid_std, f"precision_{name}": precision,
        f"recall_{name}": recall,
    }  # fmt: skip


def extractor_metrics(
    extractor: Any, real: torch.Tensor, synthetic: torch.Tensor, *, seed: int, k: int, subsets: int,
    batch_size: int | None, sequences: tuple[str, ...] = ("t1c",), lap: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """FD, KID, precision and recall on the extractor's features of (N, S, H, W) images, keys suffixed with its
    name.

    The U-Net reads the S sequences together (its input channels): one feature vector per pair. Inception reads
    one gray image: with several sequences each is measured on its own (``by_sequence``) and the headline
    figures are the means over the sequences. ``lap(stage)`` is called after each stage (``features``,
    ``fd_kid``, ``precision_recall``).
    """
    from synthseg.metrics.features import extract

    lap = lap or (lambda stage: None)
    scale = _scaler(extractor, real)
    size = real.shape[-1]
    factor = size // extractor.resolution if extractor.resolution and size % extractor.resolution == 0 else 1
    if factor > 1:
        # The U-Net saw its training resolution: its features mean most there.
        real, synthetic = F.avg_pool2d(real, factor), F.avg_pool2d(synthetic, factor)
    name = extractor.name
    groups = (
        [slice(None)]
        if name == "unet" or real.shape[1] == 1
        else [slice(c, c + 1) for c in range(real.shape[1])]
    )
    figures, dims = [], 0
    for group in groups:
        f_real = extract(extractor.module, scale(real, group), batch_size)
        f_syn = extract(extractor.module, scale(synthetic, group), batch_size)
        lap("features")
        figures.append(_distances(name, f_real, f_syn, seed=seed, k=k, subsets=subsets, lap=lap))
        dims = int(f_real.shape[1])
    result: dict[str, Any] = {
        "extractor": name,
        "extractor_source": extractor.source,
        "sequences": list(sequences),
        "feature_dim": dims,
        "feature_size": size // factor,
        **{key: sum(f[key] for f in figures) / len(figures) for key in figures[0]},
        "kid_subset_size": min(1000, len(real), len(synthetic)),
        "k": k,
    }
    if len(figures) > 1:
        result["by_sequence"] = dict(zip(sequences, figures, strict=True))
        result["note"] = f"{name} reads one sequence at a time: the figures are means over {list(sequences)}"
    return result


@dataclass(frozen=True)
class QualitySettings(Settings):
    """``conf/quality.yaml``; the keys are described there. ``overwrite`` is the output rule's
    (docs/reliability.md)."""

    REQUIRED = {"synthetic": "DIR", "real": "DIR", "output": "DIR"}

    synthetic: str
    real: str
    output: str
    unet: str | None = None
    extractor: str | None = "unet"
    extractor_weights: str | None = None
    real_split: str = "train"
    max_images: int = 2000
    seed: int = 0
    pairs: int = 500
    k: int = 3
    kid_subsets: int = 100
    search_size: int = 32
    candidates: int = 8
    dice_threshold: float = 0.95
    correlation_threshold: float = 0.98
    batch_size: int | None = None
    device: str = "auto"
    overwrite: bool = False

    def check_inputs(self) -> None:
        """The synthetic and the real set are two datasets (the same one twice measures nothing)."""
        check_distinct({"synthetic": self.synthetic, "real": self.real})

    def check(self) -> None:
        check_device("device", self.device)
        if self.extractor not in (None, "unet", "inception"):
            raise InputError(f"extractor must be unet, inception or null, got {self.extractor!r}")
        if self.real_split not in REAL_SPLITS:
            raise InputError(f"real_split must be one of {list(REAL_SPLITS)}, got {self.real_split!r}")
        for key in ("max_images", "pairs", "k", "kid_subsets", "search_size", "candidates"):
            check_positive(key, getattr(self, key))
        if self.batch_size is not None:
            check_positive("batch_size", self.batch_size)
        for key in ("dice_threshold", "correlation_threshold"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise InputError(f"{key} must be in (0, 1], got {getattr(self, key)}")


def run(settings: QualitySettings) -> Path:
    """``synthseg quality``: :func:`measure` into ``settings.output``, claimed and written atomically by the output
    rule (docs/reliability.md); return the folder."""
    settings.check_inputs()
    inputs = [settings.synthetic, settings.real, settings.unet, settings.extractor_weights]
    with claim_output(settings.output, command="quality", inputs=inputs, overwrite=settings.overwrite) as tmp:
        measure(dataclasses.replace(settings, output=str(tmp)))
    return Path(settings.output)


def measure(settings: QualitySettings) -> Path:
    """Measure a synthetic set against the real training data; write ``quality.json`` and the figures into
    ``settings.output`` as it is (a folder the caller owns: the command's claimed one, synthesize's or the
    report's) and return the path of ``quality.json``.

    ``device`` runs the feature extractor (``auto``: CUDA when available); the rest runs on the CPU.
    ``extractor=None`` skips the feature-based metrics (FD, KID, precision, recall): what ``synthesize`` runs
    before any U-Net exists.
    """
    s = settings
    synthetic, real, output, seed = s.synthetic, s.real, Path(s.output), s.seed
    from synthseg.metrics.features import build_extractor, measured_sequences

    started = time.perf_counter()
    laps: dict[str, float] = {}
    last = [started]

    def lap(stage: str) -> None:  # a stage met twice (Inception per sequence) adds up
        now = time.perf_counter()
        laps[stage] = laps.get(stage, 0.0) + now - last[0]
        last[0] = now

    # The extractor first: a missing weights file or run is one line before minutes of work.
    feature_extractor = build_extractor(s.extractor, s.unet, s.extractor_weights) if s.extractor else None
    if feature_extractor is not None:
        from synthseg.metrics.features import resolve_device

        feature_extractor.module.to(resolve_device(s.device))
    syn_set, real_set = (
        DatasetSlices(synthetic, key="synthetic"),
        DatasetSlices(real, s.real_split, key="real"),
    )
    # The sequences measured: the U-Net's (its input channels), else the synthetic set's; both sets hold them.
    sequences = measured_sequences(feature_extractor, syn_set.sequences, syn_set.named)
    why = (
        f"the U-Net {feature_extractor.source} reads {list(sequences)}"
        if feature_extractor is not None and feature_extractor.name == "unet"
        else f"the synthetic set {syn_set.root} holds {list(sequences)}"
    )
    syn_set.use(sequences, why)
    real_set.use(sequences, why)
    size = _common_size(syn_set, real_set)
    syn_rows = syn_set.sample(s.max_images, seed)
    real_rows = real_set.sample(s.max_images, seed + 1)
    syn_labels, syn_images = syn_set.load(syn_rows, size)
    real_labels, real_images = real_set.load(real_rows, size)
    lap("load")

    syn_areas, real_areas = labelmaps.class_areas(syn_labels), labelmaps.class_areas(real_labels)
    areas = labelmaps.area_distance(syn_areas, real_areas)
    frag = labelmaps.fragmentation(
        labelmaps.components_per_slice(syn_labels.numpy()),
        labelmaps.components_per_slice(real_labels.numpy()),
    )
    n = min(len(syn_labels), len(real_labels))
    swd = sliced_wasserstein(
        labels_to_uint8(syn_labels[:n])[:, None], labels_to_uint8(real_labels[:n])[:, None], seed=seed,
        min_resolution=min(16, size),
    )  # fmt: skip
    lap("label_maps")
    # Per sequence, on the same pairs; the set's figure is the mean over its sequences.
    pairs = s.pairs
    ms_syn, scales = diversity.ms_ssim_by_channel(_unit(syn_images), pairs, seed)
    ms_real, _ = diversity.ms_ssim_by_channel(_unit(real_images), pairs, seed)
    lap("diversity")

    # Nearest real training slice: the sample against the whole real split (memory-mapped, in chunks).
    all_labels, all_images = RowView(real_set.labels, real_set.rows), RowView(real_set.images, real_set.rows)
    # Image agreement with several sequences: the mean of the per-sequence Pearson correlations.
    # One pass over the real split for both query sets: synthetic slices, then the real sample (the baseline,
    # each excluding its own row; -1 excludes nothing).
    position = np.searchsorted(real_set.rows, real_rows)
    near = memorisation.nearest_real(
        torch.cat([syn_labels, real_labels]), torch.cat([syn_images, real_images]), all_labels, all_images,
        exclude=np.concatenate([np.full(len(syn_rows), -1), position]), search_size=s.search_size,
        candidates=s.candidates,
    )  # fmt: skip
    near_syn, near_real = near.split(len(syn_rows))
    memo = memorisation.summarize(near_syn, near_real, s.dice_threshold, s.correlation_threshold)
    lap("memorisation")

    result: dict[str, Any] = {
        "synthetic": str(synthetic),
        "real": str(real),
        "real_split": s.real_split,
        "size": size,
        "synthetic_count": len(syn_rows),
        "real_count": len(real_rows),
        "real_search_count": len(real_set.rows),
        "seed": seed,
        "sequences": list(sequences),
        "diversity": {
            "ms_ssim_synthetic": sum(ms_syn) / len(ms_syn),
            "ms_ssim_real": sum(ms_real) / len(ms_real),
            "pairs": pairs,
            "scales": scales,
            "by_sequence": {
                seq: {"ms_ssim_synthetic": a, "ms_ssim_real": b}
                for seq, a, b in zip(sequences, ms_syn, ms_real, strict=True)
            },
            "note": f"mean MS-SSIM over {pairs} random pairs within each set, {scales} of 5 scales at {size}px"
            + ("" if len(sequences) == 1 else f", each of {list(sequences)} on its own, then their mean"),
        },
        "label_maps": {
            "swd": swd,
            "area_distance": areas,
            "fragmentation": frag,
            "filter_discard_rate": labelmaps.discard_rate(synthetic),
        },
        "memorisation": memo,
    }
    if feature_extractor is not None:
        result["features"] = extractor_metrics(
            feature_extractor, real_images, syn_images, seed=seed, k=s.k, subsets=s.kid_subsets,
            batch_size=s.batch_size, sequences=sequences, lap=lap,
        )  # fmt: skip
    # The caller's claimed temporary folder (the command's, synthesize's or the report's): atomic there.
    output.mkdir(parents=True, exist_ok=True)
    labelmaps.plot_areas(output / "class_areas.png", syn_areas, real_areas, areas)
    real_small = real_set.load(real_set.rows[np.unique(near_syn.dice_index)], size)
    lookup = {int(r): i for i, r in enumerate(np.unique(near_syn.dice_index))}
    shown = memorisation.closest_pairs_figure(
        output / "closest_pairs.png",
        syn_labels.numpy(),
        syn_images[:, 0].numpy(),
        real_small[0].numpy(),
        real_small[1][:, 0].numpy(),
        memorisation.Nearest(near_syn.dice, np.array([lookup[int(i)] for i in near_syn.dice_index]),
                             near_syn.corr, near_syn.corr_index),
    )  # fmt: skip
    memo["closest"] = [
        {
            "synthetic": str(syn_set.ids[syn_rows[i]]),
            "real": str(real_set.ids[real_set.rows[near_syn.dice_index[i]]]),
            "dice": float(near_syn.dice[i]),
        }
        for i in shown
    ]
    result["figures"] = {"class_areas": "class_areas.png", "closest_pairs": "closest_pairs.png"}
    lap("figures")
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["seconds_by_stage"] = {stage: round(seconds, 2) for stage, seconds in laps.items()}
    (output / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    return output / "quality.json"


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg quality`` (``conf/quality.yaml``)."""
    settings = QualitySettings.from_config(cfg)
    output = run(settings)
    result = json.loads((output / "quality.json").read_text())
    feats = result.get("features", {})
    name = feats.get("extractor")
    line = {
        **({f"fd_{name}": feats[f"fd_{name}"], f"kid_{name}": feats[f"kid_{name}"],
            "precision": feats[f"precision_{name}"], "recall": feats[f"recall_{name}"]} if name else {}),
        "ms_ssim_synthetic": result["diversity"]["ms_ssim_synthetic"],
        "ms_ssim_real": result["diversity"]["ms_ssim_real"],
        "nearest_real_dice_median": result["memorisation"]["dice"]["synthetic"]["median"],
        "seconds": result["seconds"],
    }  # fmt: skip
    print(f"synthseg quality -> {settings.output}/quality.json")
    print(json.dumps(line))
    return output
