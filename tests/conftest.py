"""Shared fixtures: tiny datasets in the dataset-folder layout (docs/dataset_layout.md), made in the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.data.labels import class_weights_from_counts
from synthseg.data.manifest import COUNT_COLUMNS, REQUIRED_COLUMNS
from synthseg.data.pngio import write_image16, write_label8


def synthetic_slice(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A disc-shaped 'brain' (WM/GM/CSF rings) with a tumor blob; image intensity follows the labels."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(yy, xx) / (size / 2)
    label = np.zeros((size, size), np.uint8)
    label[radius < 0.9] = 6
    label[radius < 0.8] = 5
    label[radius < 0.6] = 4
    if rng.random() < 0.8:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = np.hypot(np.arange(size)[:, None] - cy, np.arange(size)[None, :] - cx)
        scale = size / 16
        label[r < 2.5 * scale] = 2
        label[r < 1.6 * scale] = 3
        label[r < 0.9 * scale] = 1
    means = np.array([0, 300, 900, 1500, 1200, 800, 250], np.float64)
    image = means[label] + rng.normal(0, 40, label.shape)
    image[label == 0] = 0
    return np.clip(image, 0, 65535).astype(np.uint16), label


def write_dataset(
    root: Path,
    *,
    num_slices: int = 40,
    size: int = 32,
    source: str = "real",
    seed: int = 0,
    empty_every: int = 7,
) -> Path:
    """Write a small dataset folder: 80/10/10 paper-style splits, the first 20 % of train rows reduced."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    n_train = num_slices if source == "synthetic" else int(num_slices * 0.8)
    n_val = (num_slices - n_train) // 2
    rows, counts_train, max_train, sum_train = [], np.zeros(7, np.int64), 0, 0.0
    for i in range(num_slices):
        image, label = synthetic_slice(rng, size)
        if empty_every and i % empty_every == empty_every - 1:
            image[:], label[:] = 0, 0
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        sid = f"synth_{i:06d}" if source == "synthetic" else f"Brats18_T_{i // 5}_1_{i % 5:03d}"
        write_image16(root / "images" / f"{sid}.png", image)
        write_label8(root / "labels" / f"{sid}.png", label)
        counts = np.bincount(label.ravel(), minlength=7)
        if split == "train":
            counts_train += counts
            max_train = max(max_train, int(image.max()))
            sum_train += float(image.sum())
        rows.append(
            {
                "id": sid,
                "case": "synthetic" if source == "synthetic" else f"Brats18_T_{i // 5}_1",
                "slice": -1 if source == "synthetic" else i % 5,
                "split": split,
                "source": source,
                "reduced": int(split == "train" and i < max(1, int(0.2 * n_train))),
                "empty": int(not label.any()),
                "image": f"images/{sid}.png",
                "label": f"labels/{sid}.png",
                **{col: int(c) for col, c in zip(COUNT_COLUMNS, counts, strict=True)},
            }
        )
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REQUIRED_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    stats = {
        "format": "synthseg-dataset/1",
        "source": source,
        "size": size,
        "num_slices": num_slices,
        "train_max": max_train,
        "train_mean": sum_train / max(max_train, 1) / (n_train * size * size),
        "class_counts": counts_train.tolist(),
        "class_weights": class_weights_from_counts(counts_train).tolist(),
    }
    (root / "stats.json").write_text(json.dumps(stats))
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors gain nothing from threads, and on a busy machine thread hand-offs dominate.

    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "prepared")


@pytest.fixture
def tiny_synthetic(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "synthetic", num_slices=20, source="synthetic", seed=1, empty_every=0)


def compose_train(overrides: list[str], tmp_path: Path):
    """The real composed ``train`` config, shrunk for tests: CPU, outputs under ``tmp_path``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from synthseg.paths import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    GlobalHydra.instance().clear()
    return cfg
