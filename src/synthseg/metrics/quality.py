"""``synthseg quality synthetic=DIR real=DIR [unet=RUN] [extractor=unet|inception] output=DIR``.

How good, how diverse and how private a synthetic set is, beside the real training data it imitates:
FD / KID / precision-recall on the features of a trained U-Net's encoder (or a local Inception-v3), MS-SSIM
diversity within each set, label-map statistics (class areas, tumor fragmentation, the filter's discard rate),
the nearest real training slice of every synthetic pair and, with a U-Net, its label agreement (how well the
U-Net segments the synthetic images against their own label maps, beside the real test slices). Writes
``quality.json`` and PNG figures into ``output``. Every statistic runs on a seeded sample of ``max_images``
slices per set; the nearest-real search covers the whole real training split. With several MR sequences (t1,
t1c, t2, flair) every measure reads the sequences the U-Net was trained on (without an extractor: the
synthetic set's); both sets must hold them.
Nothing is downloaded. See docs/quality.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from synthseg.data.manifest import check_distinct
from synthseg.errors import InputError
from synthseg.metrics import baseline as baseline_figures
from synthseg.metrics import diversity, fidelity, intensity, labelmaps, memorisation
from synthseg.metrics.baseline import CaseSplit, split_by_case
from synthseg.metrics.sliced_wasserstein import labels_to_uint8, sliced_wasserstein
from synthseg.metrics.slices import (
    REAL_SPLITS,
    REFERENCE_EMPTY,
    DatasetSlices,
    RowView,
    common_size,
    recorded_range,
    reference_empty_rule,
)
from synthseg.settings import Settings, check_device, check_positive
from synthseg.utils.outputs import claim_output


def in_range(images: torch.Tensor, top: tuple[float, ...]) -> torch.Tensor:
    """(N, S, H, W) images in [0, 1] by one recorded maximum per sequence (``top``, the real dataset's; not the
    set's own, so no single voxel moves the scale): MS-SSIM's data range."""
    scale = torch.tensor(top, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (images / scale).clamp(0, 1)


def input_scaler(
    extractor: Any, real: torch.Tensor, top: tuple[float, ...]
) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    """How (N, S, H, W) images enter the extractor, per sequence: ``paper`` as the U-Net was trained
    (image / train_max - train_mean; without statistics in the U-Net's record, the real dataset's recorded
    maximum ``top`` and the real sample's mean), ``zscore`` each slice by its own brain's mean and std
    (``data.image_norm=zscore``), ``unit`` in [0, 1] by ``top``. The function returned scales the channels
    ``group`` of its input."""
    dims = (0, 2, 3)

    def per_sequence(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)

    real_max = per_sequence(top)

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
    return lambda x, group: (x[:, group] / real_max[:, group]).clamp(0, 1)


FIGURES = ("fd_inf", "fd", "kid", "precision", "recall")


def _named(key: str, name: str) -> str:
    """A figure's key with the extractor's name after the figure: ``kid_std`` -> ``kid_unet_std``,
    ``fd_inf_real_baseline`` -> ``fd_inf_unet_real_baseline``."""
    for figure in FIGURES:
        if key == figure or key.startswith(figure + "_"):
            return f"{figure}_{name}{key[len(figure) :]}"
    return key


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None) / len(values)


def extractor_metrics(
    extractor: Any, real: torch.Tensor, synthetic: torch.Tensor, *, top: tuple[float, ...], seed: int, k: int,
    subsets: int, batch_size: int | None, sequences: tuple[str, ...] = ("t1c",), fd_dims: int = 124,
    split: CaseSplit | None = None, lap: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """FD, FD∞, KID, precision and recall on the extractor's features of (N, S, H, W) images, keys suffixed with
    its name; with ``split``, each also for real half A against half B (``..._real_baseline``) and for the
    synthetic subsample against B (``..._at_baseline_n``).

    ``top``: the real dataset's recorded maximum per sequence (the range when the extractor needs one). The
    U-Net reads the S sequences together (its input channels): one feature vector per pair. Inception reads
    one gray image: with several sequences each is measured on its own (``by_sequence``) and the headline
    figures are the means over the sequences. ``lap(stage)`` is called after each stage (``features``,
    ``fd_kid``, ``precision_recall``, ``baseline_features``).
    """
    from synthseg.metrics.features import extract

    lap = lap or (lambda stage: None)
    scale = input_scaler(extractor, real, top)
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
    figures: list[dict[str, float | None]] = []
    dims = 0
    for group in groups:
        f_real = extract(extractor.module, scale(real, group), batch_size)
        f_syn = extract(extractor.module, scale(synthetic, group), batch_size)
        lap("features")
        found = fidelity.feature_distances(
            f_real, f_syn, seed=seed, k=k, subsets=subsets, dims=fd_dims, lap=lap
        )
        if split is not None:
            found |= baseline_figures.feature_baseline(
                f_real, f_syn, split, seed=seed, k=k, subsets=subsets, dims=fd_dims
            )
            lap("baseline_features")
        figures.append({_named(key, name): value for key, value in found.items()})
        dims = int(f_real.shape[1])
    result: dict[str, Any] = {
        "extractor": name,
        "extractor_source": extractor.source,
        "sequences": list(sequences),
        "feature_dim": dims,
        "fd_inf_dim": int(fidelity.pool_features(torch.zeros(1, dims), fd_dims).shape[1]) if dims else None,
        "feature_size": size // factor,
        **{key: _mean([f[key] for f in figures]) for key in figures[0]},
        "kid_subset_size": min(1000, len(real), len(synthetic)),
        "k": k,
    }
    if split is not None:
        result["baseline_n"] = split.n
    if len(figures) > 1:
        result["by_sequence"] = dict(zip(sequences, figures, strict=True))
        result["note"] = f"{name} reads one sequence at a time: the figures are means over {list(sequences)}"
    return result


def measure(settings: QualitySettings) -> Path:
    """Measure a synthetic set against the real training data; write ``quality.json`` and the figures into
    ``settings.output`` as it is (a folder the caller owns: the command's claimed one, synthesize's or the
    report's) and return the path of ``quality.json``.

    ``device`` runs the feature extractor (``auto``: CUDA when available); the rest runs on the CPU.
    ``extractor=None`` skips the feature-based metrics (FD, KID, precision, recall): what ``synthesize`` runs
    before any U-Net exists. ``reference_empty`` (``auto``, ``include``, ``exclude``): whether the real
    reference keeps its empty label maps (``auto``: as the PGAN that made the set trained,
    :func:`~synthseg.metrics.slices.reference_empty_rule`). ``baseline``: every synthetic-vs-real figure also
    for two real halves split by case, and for the synthetic set at their size (:mod:`synthseg.metrics.baseline`).
    ``fd_dims``: FD∞ reads the features pooled to at most this many dimensions.
    """
    s = settings
    synthetic, real, output, seed, pairs = s.synthetic, s.real, Path(s.output), s.seed, s.pairs
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
        from synthseg.settings import resolve_device

        feature_extractor.module.to(resolve_device(s.device))
    syn_set, real_set = (
        DatasetSlices(synthetic, key="synthetic"),
        DatasetSlices(real, s.real_split, key="real"),
    )
    reference = reference_empty_rule(synthetic, s.reference_empty)
    reference["empty_left_out"] = real_set.drop_empty() if reference["rule"] == "exclude" else 0
    # The sequences measured: the U-Net's (its input channels), else the synthetic set's; both sets hold them.
    sequences = measured_sequences(feature_extractor, syn_set.sequences, syn_set.named)
    why = (
        f"the U-Net {feature_extractor.source} reads {list(sequences)}"
        if feature_extractor is not None and feature_extractor.name == "unet"
        else f"the synthetic set {syn_set.root} holds {list(sequences)}"
    )
    syn_set.use(sequences, why)
    real_set.use(sequences, why)
    top = recorded_range(real_set)
    size = common_size(syn_set, real_set)
    syn_rows = syn_set.sample(s.max_images, seed)
    real_rows = real_set.sample(s.max_images, seed + 1)
    syn_labels, syn_images = syn_set.load(syn_rows, size)
    real_labels, real_images = real_set.load(real_rows, size)
    split = split_by_case(real_set.manifest.case[real_rows], len(syn_rows), seed + 2) if s.baseline else None
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
    syn_means = intensity.slice_class_means(syn_labels, syn_images)
    real_means = intensity.slice_class_means(real_labels, real_images)
    halves = None if split is None else (real_means[split.a], real_means[split.b])
    class_intensity = intensity.compare(
        intensity.class_levels(syn_means),
        intensity.class_levels(real_means),
        sequences,
        None if halves is None else (intensity.class_levels(halves[0]), intensity.class_levels(halves[1])),
        (
            intensity.wm_ratios(syn_means),
            intensity.wm_ratios(real_means),
            None if halves is None else (intensity.wm_ratios(halves[0]), intensity.wm_ratios(halves[1])),
        ),
    )
    lap("label_maps")
    # Per sequence, on the same pairs, both sets by the real dataset's recorded range; the set's figure is the
    # mean over its sequences.
    syn_unit, real_unit = in_range(syn_images, top), in_range(real_images, top)
    ms_syn, scales = diversity.ms_ssim_by_channel(syn_unit, pairs, seed)
    ms_real, _ = diversity.ms_ssim_by_channel(real_unit, pairs, seed)
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
        "reference_empty": reference,
        "intensity_range": {
            "train_max": dict(zip(sequences, top, strict=True)),
            "from": str(real_set.root / "stats.json"),
        },
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
            "note": f"mean MS-SSIM over {pairs} random pairs within each set, {scales} of 5 scales at {size}px, "
            "both sets in [0, 1] by the real dataset's recorded train_max"
            + ("" if len(sequences) == 1 else f", each of {list(sequences)} on its own, then their mean"),
        },
        "label_maps": {
            "swd": swd,
            "area_distance": areas,
            "fragmentation": frag,
            "filter_discard_rate": labelmaps.discard_rate(synthetic),
        },
        "class_intensity": class_intensity,
        "memorisation": memo,
    }
    if split is not None:
        result["baseline"] = {
            **baseline_figures.describe(split),
            **baseline_figures.label_map_baseline(real_labels, syn_labels, split, seed),
            **baseline_figures.diversity_baseline(real_unit, syn_unit, split, pairs, seed),
            **baseline_figures.nearest_baseline(
                real_labels, real_images, syn_labels, syn_images, split,
                *_case_rows(real_set, split.b_cases), search_size=s.search_size, candidates=s.candidates,
            ),
        }  # fmt: skip
        lap("baseline")
    else:
        result["baseline"] = None
    if feature_extractor is not None:
        result["features"] = extractor_metrics(
            feature_extractor, real_images, syn_images, top=top, seed=seed, k=s.k, subsets=s.kid_subsets,
            batch_size=s.batch_size, sequences=sequences, fd_dims=s.fd_dims, split=split, lap=lap,
        )  # fmt: skip
        if feature_extractor.segmenter is not None:
            scale = input_scaler(feature_extractor, real_images, top)
            result["label_agreement"] = _label_agreement(
                feature_extractor, (syn_labels, syn_images), syn_set, syn_rows, real_set, size, scale
            )
            lap("label_agreement")
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


def _label_agreement(
    extractor: Any, loaded: tuple[torch.Tensor, torch.Tensor], syn_set: DatasetSlices, syn_rows: np.ndarray,
    real_set: DatasetSlices, size: int, scale: Callable[[torch.Tensor, slice], torch.Tensor],
) -> dict[str, Any]:  # fmt: skip
    """The U-Net segments the synthetic sample (``loaded`` at ``size``: read again only when the U-Net trained
    at a smaller side) and, as the reference, the real dataset's test split (slices it did not train on), both
    at its training side (:mod:`synthseg.metrics.agreement`)."""
    from synthseg.metrics.agreement import label_agreement

    side = extractor.resolution if extractor.resolution and size % extractor.resolution == 0 else size
    test_rows = real_set.manifest.rows("test")
    found = label_agreement(
        extractor.segmenter, extractor.classes, lambda images: scale(images, slice(None)),
        loaded if side == size else syn_set.load(syn_rows, side),
        real_set.load(test_rows, side) if len(test_rows) else None,
    )  # fmt: skip
    found["size"] = side
    found["real_reference"] = (
        f"the test split of {real_set.root} ({len(test_rows)} slices)"
        if len(test_rows)
        else f"none: {real_set.root} has no test split"
    )
    return found


def _case_rows(real: DatasetSlices, cases: np.ndarray) -> tuple[RowView, RowView]:
    """Labels and images of every slice in use of ``cases`` (lazy views of the memory maps)."""
    rows = real.rows[np.isin(real.manifest.case[real.rows].astype(str), cases)]
    return RowView(real.labels, rows), RowView(real.images, rows)


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
    reference_empty: str = "auto"
    max_images: int = 2000
    seed: int = 0
    pairs: int = 500
    k: int = 3
    kid_subsets: int = 100
    fd_dims: int = 124
    baseline: bool = True
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
        if self.reference_empty not in REFERENCE_EMPTY:
            raise InputError(
                f"reference_empty must be one of {list(REFERENCE_EMPTY)}, got {self.reference_empty!r}"
            )
        for key in ("max_images", "pairs", "k", "kid_subsets", "fd_dims", "search_size", "candidates"):
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


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg quality`` (``conf/quality.yaml``)."""
    settings = QualitySettings.from_config(cfg)
    output = run(settings)
    result = json.loads((output / "quality.json").read_text())
    print(f"synthseg quality -> {settings.output}/quality.json")
    print(json.dumps(headline(result)))
    return output


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures ``synthseg quality`` prints on its last line: each synthetic-vs-real figure with, where the
    baseline ran, the same figure at the baseline's n and for two real halves (``_at_baseline_n``,
    ``_real_baseline``), and the class intensities in units of the real WM level."""
    feats = result.get("features", {})
    name = feats.get("extractor")
    line: dict[str, Any] = {}
    if name:
        for figure, short in (("fd", "fd"), ("fd_inf", "fd_inf"), ("kid", "kid"), ("precision", "precision"),
                              ("recall", "recall")):  # fmt: skip
            key = f"{figure}_{name}"
            label = f"{short}_{name}" if figure in ("fd", "fd_inf", "kid") else short
            line[label] = feats.get(key)
            if f"{key}_real_baseline" in feats:
                line[f"{label}_at_baseline_n"] = feats[f"{key}_at_baseline_n"]
                line[f"{label}_real_baseline"] = feats[f"{key}_real_baseline"]
    base = result.get("baseline") or {}
    line["ms_ssim_synthetic"] = result["diversity"]["ms_ssim_synthetic"]
    line["ms_ssim_real"] = result["diversity"]["ms_ssim_real"]
    if base:
        line["ms_ssim_synthetic_real_baseline"] = base["ms_ssim_synthetic_real_baseline"]
    line["nearest_real_dice_median"] = result["memorisation"]["dice"]["synthetic"]["median"]
    if base:
        for key in ("nearest_real_dice_median_at_baseline_n", "nearest_real_dice_median_real_baseline"):
            line[key] = base[key]
        line["baseline_n"] = base["n"]
    agreement = result.get("label_agreement")
    if agreement:
        line["label_agreement"] = agreement["mean_dice"]
        line["label_agreement_real"] = agreement["mean_dice_real"]
    line["class_intensity"] = {
        seq: {
            "distance_over_real_wm": {
                c: entry["classes"][c]["distance_over_real_wm"]
                for c in result["class_intensity"]["checked_classes"]
            },
            "order_real": entry["order_real"],
            "order_synthetic": entry["order_synthetic"],
            "target_met": entry["target_met"],
        }
        for seq, entry in result["class_intensity"]["by_sequence"].items()
    }
    line["seconds"] = result["seconds"]
    return line
