"""``BraTSDataModule``: the one LightningDataModule the U-Net, PGAN and SPADE share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from synthseg.data.cache import build_cache, open_cache
from synthseg.data.dataset import IMAGE_NORMS, SliceDataset
from synthseg.data.labels import class_weights_from_counts, reduce_labels
from synthseg.data.manifest import Manifest, read_manifest
from synthseg.data.sampler import ResumableBatchSampler
from synthseg.data.sequences import DEFAULT_SEQUENCES, check_sequences
from synthseg.errors import InputError

STATS_FROM = ("train", "real")


@dataclass(frozen=True)
class DataSummary:
    """What a model needs to know about its data: fixed once the DataModule is set up, handed to the models
    once in their ``setup()`` (:meth:`BraTSDataModule.summary`), so no model reaches into the DataModule.

    Attributes:
        classes: label classes served (7, 4 or 2).
        sequences: the image channels, in order (``data.sequences``).
        image_norm: how images are normalised ("paper", "tanh", "raw" or "zscore").
        size: side of the slices on disk.
        resolution: side of the slices served (the configured one, else ``size``).
        train_max, train_mean: the normalisation statistics of the training set in use, one per sequence
            (single-sequence code takes ``[0]``).
        class_weights: weighted-Dice weights of the training set in use.
        real_class_weights: fixed weights of the whole real training split (comparable across runs).
        num_train: training slices served.
        train_label_maps: real training label maps considered (the reduced set if ``reduced``), empties included.
        empty_label_maps: how many of those are all background.
        drop_empty: whether empty label maps are left out of training.
        split_by_subject: no test subject has a slice in the training split (3-D per-subject metrics apply).
    """

    classes: int
    sequences: tuple[str, ...]
    image_norm: str
    size: int
    resolution: int
    train_max: tuple[float, ...]
    train_mean: tuple[float, ...]
    class_weights: tuple[float, ...]
    real_class_weights: tuple[float, ...]
    num_train: int
    train_label_maps: int
    empty_label_maps: int
    drop_empty: bool
    split_by_subject: bool = False

    @property
    def empty_fraction(self) -> float:
        """Share of empty label maps among the real training label maps considered."""
        return self.empty_label_maps / self.train_label_maps if self.train_label_maps else 0.0


def resolve_count(value: int | float | None, full: int, available: int, what: str) -> int:
    """Turn a count setting into a number of slices.

    ``None`` means all ``available``; an int is an absolute count; a float is a fraction of ``full`` (the
    size of the whole real training split), so the paper's mixes carry over to datasets of any size.
    """
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{what} must be a count or a fraction, got {value!r}")
    if value < 0:
        raise InputError(f"{what} must not be negative, got {value}")
    count = int(value) if isinstance(value, int) else int(round(float(value) * full))
    if count > available:
        raise InputError(f"{what}={value} asks for {count} slices, but only {available} are available")
    return count


def reduce_counts(counts: np.ndarray, classes: int) -> np.ndarray:
    """Per-class pixel counts (..., 7) summed into the 7-, 4- or 2-class problem (..., classes)."""
    table = reduce_labels(np.arange(7, dtype=np.uint8), classes)
    out = np.zeros((*counts.shape[:-1], classes), dtype=np.int64)
    for src, dst in enumerate(table):
        out[..., dst] += counts[..., src]
    return out


class BraTSDataModule(pl.LightningDataModule):
    """Real (prepared) slices, optionally mixed with a synthetic dataset of the same layout.

    Args:
        root: prepared dataset folder (docs/dataset_layout.md).
        sequences: the MR sequences served as image channels, in this order (any the dataset holds; a
            synthetic dataset must hold them too); default ``[t1c]``.
        classes: 7, 4 or 2 (reduced on read).
        real: real training slices to use: None (all), a count, or a fraction of the real training split;
            taken from the start of the (shuffled) training rows.
        synthetic: ``{"root": DIR, "count": N or fraction}`` or None.
        reduced: use only the reduced training set (the first 20 % of shuffled training slices).
        drop_empty: drop training slices whose label map is all background (the GANs never see them).
        resolution: output size (None: native); labels are downsampled by majority vote, images by area.
        batch_size: global training batch size.
        eval_batch_size: validation/test batch size (default: batch_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        one_hot: labels as float one-hot (C, H, W).
        image_norm: "paper", "tanh", "raw" or "zscore" (each slice by its own brain; see SliceDataset), per sequence.
        stats_from: "train" computes normalization and class weights over the whole training set in use,
            synthetic included (the paper); "real" over its real slices only.
        seed: seed of the per-epoch shuffling.
        endless: the training loader never ends (PGAN's schedule is counted in images).
        augment: classical augmentation of training slices (flips, small rotations and scaling, elastic
            deformation; synthseg.data.augment) — the control arm the paper's discussion asks for.

    Every item carries ``slice_position``, the slice's normalised axial position in its case
    (:meth:`synthseg.data.manifest.Manifest.positions`; NaN for synthetic slices), for slice-conditional GANs.
    """

    def __init__(
        self,
        root: str,
        classes: int = 7,
        real: int | float | None = None,
        synthetic: Mapping[str, Any] | None = None,
        reduced: bool = False,
        drop_empty: bool = False,
        resolution: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        one_hot: bool = False,
        image_norm: str = "paper",
        stats_from: str = "train",
        seed: int = 0,
        endless: bool = False,
        augment: bool = False,
        sequences: Sequence[str] | str = DEFAULT_SEQUENCES,
    ) -> None:
        super().__init__()
        self.sequences = check_sequences(sequences, "data.sequences")
        if int(classes) not in (2, 4, 7):
            raise InputError(f"data.classes must be one of 2, 4, 7, got {classes}")
        if image_norm not in IMAGE_NORMS:
            raise InputError(f"data.image_norm must be one of {IMAGE_NORMS}, got {image_norm!r}")
        if stats_from not in STATS_FROM:
            raise InputError(f"data.stats_from must be one of {STATS_FROM}, got {stats_from!r}")
        if resolution is not None and (resolution < 4 or resolution & (resolution - 1)):
            raise InputError(f"data.resolution must be a power of two >= 4, got {resolution}")
        if batch_size <= 0:
            raise InputError(f"data.batch_size must be positive, got {batch_size}")
        self.root = Path(root)
        self.classes = int(classes)
        self.real = real
        self.synthetic = dict(synthetic) if synthetic else None
        self.reduced = reduced
        self.drop_empty = drop_empty
        self.resolution = resolution
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.one_hot = one_hot
        self.image_norm = image_norm
        self.stats_from = stats_from
        self.seed = seed
        self.endless = endless
        self.augment = augment
        self.stats: dict[str, Any] = {}
        self.sampler: ResumableBatchSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self._ready = False

    # ----------------------------------------------------------------------------------------- selection
    def _training_rows(self, manifest: Manifest, *, real_source: bool) -> np.ndarray:
        keep = manifest.split == "train"
        if real_source and self.reduced:
            keep &= manifest.reduced
        if self.drop_empty:
            keep &= ~manifest.empty
        return np.flatnonzero(keep)

    def _roots(self) -> list[Path]:
        """The dataset folders this module reads: ``root``, then the synthetic one when any of it is used."""
        roots = [self.root]
        if self.synthetic and self.synthetic.get("count", 0):
            roots.append(Path(self.synthetic["root"]))
        return roots

    def prepare_data(self) -> None:
        # Lightning runs this once per node before setup() on every rank: the caches are built here so that
        # processes never race to build the same one. Every manifest is read (and its ids and paths checked)
        # before any cache is built: a bad synthetic manifest costs no build of the real cache.
        roots = [root for root in self._roots() if root.is_dir()]
        for root in roots:
            read_manifest(root)
        for root in roots:
            build_cache(root)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if not self.root.is_dir():
            raise InputError(f"data.root={self.root}: folder not found (run `synthseg prepare` first)")
        manifest = read_manifest(self.root)
        self.manifest = manifest
        sources = [open_cache(self.root, manifest)]
        channels = [self._channels(manifest, f"data.root={self.root}")]
        positions = [manifest.positions()]
        full_train = int((manifest.split == "train").sum())
        real_rows = self._training_rows(manifest, real_source=True)
        n_real = resolve_count(self.real, full_train, len(real_rows), "data.real")
        real_rows = real_rows[:n_real]
        items = [np.stack([np.zeros_like(real_rows), real_rows], axis=1)]
        counts = [manifest.counts[real_rows]]
        n_synth = 0
        if self.synthetic and self.synthetic.get("count", 0):
            synth_root = Path(self.synthetic["root"])
            synth_manifest = read_manifest(synth_root)
            channels.append(self._channels(synth_manifest, f"data.synthetic.root={synth_root}"))
            sources.append(open_cache(synth_root, synth_manifest))
            positions.append(synth_manifest.positions())
            synth_rows = self._training_rows(synth_manifest, real_source=False)
            n_synth = resolve_count(
                self.synthetic["count"], full_train, len(synth_rows), "data.synthetic.count"
            )
            synth_rows = synth_rows[:n_synth]
            items.append(np.stack([np.ones_like(synth_rows), synth_rows], axis=1))
            counts.append(synth_manifest.counts[synth_rows])
        train_items = np.concatenate(items)
        if len(train_items) == 0:
            raise InputError("the training set is empty: data.real and data.synthetic.count are both 0")
        if self.stats_from == "train":
            stat_items, stat_counts = train_items, np.concatenate(counts)
        elif n_real:
            stat_items, stat_counts = items[0], counts[0]
        else:
            # Real-only statistics of a synthetic-only run: take the whole real training split.
            rows = manifest.rows("train")
            stat_items, stat_counts = np.stack([np.zeros_like(rows), rows], axis=1), manifest.counts[rows]
        train_max, train_mean = self._intensity_stats(sources, stat_items, channels)
        one = len(self.sequences) == 1  # results.json keeps today's scalars for one sequence
        class_counts = reduce_counts(stat_counts.sum(axis=0), self.classes)
        real_counts = reduce_counts(manifest.counts[manifest.split == "train"].sum(axis=0), self.classes)
        self.stats = {
            "sequences": list(self.sequences),
            "train_max": train_max[0] if one else list(train_max),
            "train_mean": train_mean[0] if one else list(train_mean),
            "class_counts": class_counts.tolist(),
            "class_weights": class_weights_from_counts(class_counts).tolist(),
            # Fixed weights from the whole real training split, so runs with different training sets are
            # comparable on one scale.
            "real_class_weights": class_weights_from_counts(real_counts).tolist(),
            "num_real": int(n_real),
            "num_synthetic": int(n_synth),
            "num_train": int(len(train_items)),
            "num_val": int((manifest.split == "val").sum()),
            "num_test": int((manifest.split == "test").sum()),
        }
        common = dict(
            classes=self.classes,
            image_norm=self.image_norm,
            train_max=train_max,
            train_mean=train_mean,
            resolution=self.resolution,
            one_hot=self.one_hot,
        )
        augmentation = None
        if self.augment:
            from synthseg.data.augment import ClassicalAugmentation

            augmentation = ClassicalAugmentation()
        self.train_set = SliceDataset(
            sources,
            train_items,
            augment=augmentation,
            seed=self.seed,
            channels=channels,
            positions=positions,
            **common,
        )

        def eval_items(split: str) -> np.ndarray:
            rows = manifest.rows(split)
            return np.stack([np.zeros_like(rows), rows], axis=1)

        cases, slices = [manifest.case], [manifest.slice]
        real = dict(cases=cases, slices=slices, channels=channels[:1], positions=positions[:1], **common)
        self.val_set = SliceDataset(sources[:1], eval_items("val"), **real)
        self.test_set = SliceDataset(sources[:1], eval_items("test"), **real)
        considered = manifest.split == "train"
        if self.reduced:
            considered = considered & manifest.reduced
        size = int(sources[0][1].shape[-1])
        self._summary = DataSummary(
            classes=self.classes,
            sequences=self.sequences,
            image_norm=self.image_norm,
            size=size,
            resolution=int(self.resolution or size),
            train_max=train_max,
            train_mean=train_mean,
            class_weights=tuple(self.stats["class_weights"]),
            real_class_weights=tuple(self.stats["real_class_weights"]),
            num_train=int(len(train_items)),
            train_label_maps=int(considered.sum()),
            empty_label_maps=int((considered & manifest.empty).sum()),
            drop_empty=bool(self.drop_empty),
            split_by_subject=not set(manifest.case[manifest.split == "test"])
            & set(manifest.case[manifest.split == "train"]),
        )
        self.sampler = ResumableBatchSampler(
            len(self.train_set),
            self.batch_size,
            seed=self.seed,
            endless=self.endless,
            resolution=self.resolution or 0,
        )
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
        self._ready = True

    def summary(self) -> DataSummary:
        """The typed summary models receive in their ``setup()`` (available after :meth:`setup`)."""
        if not self._ready:
            raise RuntimeError("BraTSDataModule.summary() needs setup() first")
        return self._summary

    def _channels(self, manifest: Manifest, named: str) -> np.ndarray:
        """Indices of ``data.sequences`` among a dataset's sequences; one line when it lacks one."""
        missing = [s for s in self.sequences if s not in manifest.sequences]
        if missing:
            raise InputError(
                f"{named}: the dataset holds the sequences {list(manifest.sequences)}, not {missing} "
                f"(data.sequences=[{','.join(self.sequences)}]; prepare it with sequences=[...])"
            )
        return np.array([manifest.sequences.index(s) for s in self.sequences], dtype=np.int64)

    def _intensity_stats(
        self, sources: list[tuple[np.ndarray, np.ndarray]], items: np.ndarray, channels: list[np.ndarray]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per sequence: training max and the mean of the max-scaled training pixels (the paper's
        normalization)."""
        n = len(self.sequences)
        maximum, total, pixels = np.zeros(n, np.int64), np.zeros(n, np.float64), 0
        for src in np.unique(items[:, 0]):
            images = sources[src][0]
            rows = np.sort(items[items[:, 0] == src, 1])
            for start in range(0, len(rows), 256):
                chunk = np.asarray(images[rows[start : start + 256]])[:, channels[src]]  # (n, S, H, W)
                maximum = np.maximum(maximum, chunk.max(axis=(0, 2, 3), initial=0))
                total += chunk.sum(axis=(0, 2, 3), dtype=np.float64)
                pixels += chunk[:, 0].size
        if not maximum.all():
            zero = [s for s, m in zip(self.sequences, maximum, strict=True) if not m]
            named = "" if n == 1 else f" ({', '.join(zero)})"
            raise InputError(
                f"every training image is all zero{named}: cannot normalise by the training maximum"
            )
        return (
            tuple(float(m) for m in maximum),
            tuple(float(t) / float(m) / pixels for t, m in zip(total, maximum, strict=True)),
        )

    # ------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset: SliceDataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.sampler is not None, "call setup() first"
        return self._loader(self.train_set, batch_sampler=self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, batch_size=self.eval_batch_size, shuffle=False)

    # ---------------------------------------------------------------------------- progressive training
    def set_batch_size(self, batch_size: int) -> None:
        """Change the global batch size of the following training batches."""
        self.batch_size = batch_size
        if self.sampler is not None:
            self.sampler.set_batch_size(batch_size)

    def set_resolution(self, resolution: int) -> None:
        """Change the resolution of the following training batches."""
        self.resolution = resolution
        if self.sampler is not None:
            self.sampler.set_resolution(resolution)

    # ------------------------------------------------------------------------------------- resume state
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if isinstance(batch, dict) and "position" in batch and self.sampler is not None:
            if trainer is None or trainer.training:
                epoch, position = (int(v) for v in batch["position"][-1])
                self.sampler.mark_consumed(epoch, position)
            batch = {k: v for k, v in batch.items() if k != "position"}
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:
            return dict(self._pending_state or {})
        state = self.sampler.state_dict()
        trainer = self.trainer
        if trainer is not None and not self.endless and state["position"]:
            # A checkpoint at the end of an epoch that its consumer cut short (limit_train_batches): the resumed
            # run must start a fresh epoch, as the uninterrupted one does, not finish the permutation.
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                state = {**state, "epoch": state["epoch"] + 1, "position": 0}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict)
        if self.sampler is not None:
            self.sampler.load_state_dict(state_dict)
            self.batch_size = self.sampler.batch_size
            self.resolution = self.sampler.resolution or self.resolution
