"""Shared fixtures: tiny datasets in the dataset-folder layout (docs/dataset_layout.md), made in the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from synthseg.checkpoint import save_network
from synthseg.data.manifest import (
    COUNT_COLUMNS,
    dataset_stats,
    image_columns,
    image_relpath,
    write_manifest,
    write_stats,
)
from synthseg.data.pngio import write_image16, write_label8
from synthseg.networks.pgan import PGANGenerator
from synthseg.networks.unet import UNet


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


# Mean intensity per class (background, necrosis, edema, enhancing, WM, GM, CSF) of each test sequence: a
# different function of the labels each, so a mixed-up channel shows.
SEQUENCE_MEANS = {
    "t1": (0, 250, 500, 600, 1100, 750, 200),
    "t1c": (0, 300, 900, 1500, 1200, 800, 250),
    "t2": (0, 1400, 1600, 1000, 500, 700, 1800),
    "flair": (0, 900, 1500, 1100, 600, 800, 150),
}


def sequence_image(label: np.ndarray, seq: str, rng: np.random.Generator) -> np.ndarray:
    """A noisy image of ``label`` in sequence ``seq`` (see :data:`SEQUENCE_MEANS`), 0 outside the head."""
    image = np.asarray(SEQUENCE_MEANS[seq], np.float64)[label] + rng.normal(0, 40, label.shape)
    image[label == 0] = 0
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_dataset(
    root: Path,
    *,
    num_slices: int = 40,
    size: int = 32,
    source: str = "real",
    seed: int = 0,
    empty_every: int = 7,
    labels: Sequence[np.ndarray] | None = None,
    images: Sequence[np.ndarray] | None = None,
    ids: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    reduced: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    slices: Sequence[int] | None = None,
    sequences: Sequence[str] = ("t1c",),
) -> Path:
    """The one test writer of a dataset folder (docs/dataset_layout.md), through the project's own writer.

    Without ``labels``, ``num_slices`` plausible slices of ``size`` x ``size`` are made from ``seed`` (every
    ``empty_every``-th one empty), split 80/10/10 paper-style (synthetic: all train), the first 20 % of the training
    rows reduced, ids in the BraTS 2018 style (synthetic: ``synth_<n>``). With ``labels`` (and optionally
    ``images``; none: the ``image`` column is empty), those are written; ``ids``, ``splits``, ``reduced``, ``cases``
    and ``slices`` override the per-row defaults.

    ``sequences`` other than ``("t1c",)`` write the multi-sequence layout (``images/<seq>/<id>.png``, format /2);
    made images are then one per sequence (:func:`sequence_image`; T1c as for a T1c-only dataset) and given
    ``images`` are (S, H, W) arrays in ``sequences`` order.
    """
    sequences = tuple(sequences)
    if labels is None:
        rng = np.random.default_rng(seed)
        pairs = [synthetic_slice(rng, size) for _ in range(num_slices)]
        others = np.random.default_rng(seed + 1000)
        images = []
        for i, (image, label) in enumerate(pairs):
            if empty_every and i % empty_every == empty_every - 1:
                image[:], label[:] = 0, 0
            made = [image if seq == "t1c" else sequence_image(label, seq, others) for seq in sequences]
            images.append(np.stack(made))
        labels = [label for _, label in pairs]
    elif images is not None:
        images = [np.asarray(image).reshape(len(sequences), *np.shape(image)[-2:]) for image in images]
    n = len(labels)
    synthetic = source == "synthetic"
    if splits is None:
        n_train = n if synthetic else int(n * 0.8)
        n_val = (n - n_train) // 2
        splits = ["train" if i < n_train else ("val" if i < n_train + n_val else "test") for i in range(n)]
    if reduced is None:
        n_reduced = max(1, int(0.2 * splits.count("train")))
        reduced = [int(split == "train" and i < n_reduced) for i, split in enumerate(splits)]
    if ids is None:
        ids = [f"synth_{i:06d}" if synthetic else f"Brats18_T_{i // 5}_1_{i % 5:03d}" for i in range(n)]
    if cases is None:
        cases = ["synthetic" if synthetic else f"Brats18_T_{i // 5}_1" for i in range(n)]
    if slices is None:
        slices = [-1 if synthetic else i % 5 for i in range(n)]
    (root / "labels").mkdir(parents=True)
    if images is not None:
        for seq in sequences:
            (root / image_relpath("x", seq, sequences)).parent.mkdir(parents=True, exist_ok=True)
    rows, counts_train = [], np.zeros(7, np.int64)
    max_train, sum_train = np.zeros(len(sequences), np.int64), np.zeros(len(sequences))
    for i, (sid, label) in enumerate(zip(ids, labels, strict=True)):
        write_label8(root / "labels" / f"{sid}.png", label.astype(np.uint8))
        counts = np.bincount(label.ravel(), minlength=7)
        if images is not None:
            for s, seq in enumerate(sequences):
                write_image16(root / image_relpath(sid, seq, sequences), images[i][s])
        if splits[i] == "train":
            counts_train += counts
            if images is not None:
                max_train = np.maximum(max_train, images[i].reshape(len(sequences), -1).max(axis=1))
                sum_train += images[i].reshape(len(sequences), -1).sum(axis=1, dtype=np.float64)
        paths = {
            col: image_relpath(sid, seq, sequences) if images is not None else ""
            for col, seq in zip(image_columns(sequences), sequences, strict=True)
        }
        rows.append(
            {
                "id": sid,
                "case": cases[i],
                "slice": slices[i],
                "split": splits[i],
                "source": source,
                "reduced": reduced[i],
                "empty": int(not label.any()),
                **paths,
                "label": f"labels/{sid}.png",
                **{col: int(c) for col, c in zip(COUNT_COLUMNS, counts, strict=True)},
            }
        )
    write_manifest(root, rows, sequences=sequences)
    n_train = splits.count("train")
    image_stats = (
        {
            "train_max": [int(m) for m in max_train],
            "train_mean": [
                float(t) / max(int(m), 1) / (n_train * size * size)
                for m, t in zip(max_train, sum_train, strict=True)
            ],
        }
        if images is not None
        else {}
    )
    write_stats(
        root,
        dataset_stats(
            source=source,
            size=int(labels[0].shape[0]),
            splits={split: splits.count(split) for split in ("train", "val", "test")},
            class_counts=counts_train,
            sequences=sequences,
            **image_stats,
        ),
    )
    return root


@pytest.fixture(autouse=True, scope="session")
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The per-user cache folder (``synthseg.paths.user_cache_dir``) lives in the session's temporary folder:
    tests never write to, nor read choices from, the user's own cache (subprocesses inherit it)."""
    import os

    path = tmp_path_factory.mktemp("user_cache")
    os.environ["SYNTHSEG_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def make_dataset() -> Callable[..., Path]:
    """:func:`write_dataset` as a fixture, for tests that take their helpers as arguments."""
    return write_dataset


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors gain nothing from threads, and on a busy machine thread hand-offs dominate.

    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may download (quality metrics, feature weights): any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


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


def measure_quality(**options: Any) -> dict[str, Any]:
    """The quality measures from Python (what ``synthseg quality`` writes into its folder): a
    :class:`~synthseg.metrics.quality.QualitySettings` and :func:`~synthseg.metrics.quality.measure`; the
    ``quality.json`` it wrote."""
    from synthseg.metrics.quality import QualitySettings, measure

    return json.loads(measure(QualitySettings(**options)).read_text())


def run_report(cfg: dict[str, Any]) -> dict[str, Any]:
    """``synthseg report`` from Python with some keys of ``conf/report.yaml`` (the others at their defaults):
    its settings object and run; the summary it wrote (``report.json``)."""
    from synthseg.report import report
    from synthseg.report.settings import ReportSettings

    folder = report.run(ReportSettings.from_config(cfg, partial=True))
    return json.loads((folder / "report.json").read_text())


# ------------------------------------------------------------------- fake runs and snapshots (report, reliability)
# Two test subjects of a 2-class problem (background, tumor); regions: WT only.
SUBJECT_A = {"soft": ([90, 8], [200, 20]), "hard": ([92, 8], [200, 20]), "region": ([8], [20])}
SUBJECT_B = {"soft": ([95, 3], [200, 10]), "hard": ([96, 3], [200, 10]), "region": ([3], [10])}
WEIGHTS_2 = [0.25, 0.75]


def case_sums(
    subject: dict[str, tuple[list[float], list[float]]], scale: float = 1.0
) -> dict[str, list[float]]:
    return {
        "soft_intersection": [v * scale for v in subject["soft"][0]],
        "soft_total": subject["soft"][1],
        "hard_intersection": [v * scale for v in subject["hard"][0]],
        "hard_total": subject["hard"][1],
        "region_intersection": [v * scale for v in subject["region"][0]],
        "region_total": subject["region"][1],
    }


def make_run(
    folder: Path,
    *,
    mix: str,
    classes: int,
    seed: int,
    dice_error: float,
    data_root: Path,
    per_case: dict[str, Any] | None = None,
    favour: int | None = None,
    resolution: int | None = 16,
    sequences: Sequence[str] = ("t1c",),
) -> Path:
    """A fake run folder: results.json plus a tiny U-Net checkpoint (``favour``: always predict that class).

    ``sequences``: the U-Net's input sequences (``data.sequences``; one input channel each, with per-sequence
    ``train_max`` / ``train_mean`` lists in ``data_stats`` when there are several, as the DataModule writes).
    """
    folder.mkdir(parents=True)
    sequences = tuple(sequences)
    one = len(sequences) == 1
    net = UNet(len(sequences), classes, base_width=2)
    if favour is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.arange(classes) == favour)
    ckpt = folder / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    if per_case is None:
        per_case = {"Brats18_T_7_1": case_sums(SUBJECT_A if classes == 2 else _multi_class(classes))}
    results = {
        "config": {
            "mix_name": mix,
            "seed": seed,
            "data": {
                "classes": classes,
                "root": str(data_root),
                "resolution": resolution,
                "image_norm": "paper",
                **({} if sequences == ("t1c",) else {"sequences": list(sequences)}),
            },
            "model": {
                "net": {
                    "_target_": "synthseg.networks.unet.UNet",
                    "in_channels": len(sequences),
                    "num_classes": classes,
                    "base_width": 2,
                }
            },  # fmt: skip
        },
        "data_stats": {
            "num_real": 32,
            "num_synthetic": 0,
            "train_max": 1500.0 if one else [1500.0 + 100 * i for i in range(len(sequences))],
            "train_mean": 0.1 if one else [0.1] * len(sequences),
        },
        "best_checkpoint": str(ckpt),
        "metrics": {"test/dice_error": dice_error},
        "real_class_weights": WEIGHTS_2 if classes == 2 else [1 / classes] * classes,
        "regions": ["WT"] if classes == 2 else ["WT", "TC", "ET"],
        "per_case": per_case,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def _multi_class(classes: int) -> dict[str, tuple[list[float], list[float]]]:
    inter = [90.0, *range(1, classes)]
    total = [200.0] + [10.0] * (classes - 1)
    return {"soft": (inter, total), "hard": (inter, total), "region": ([6, 4, 3], [30, 20, 10])}


def tiny_spade_snapshot(path: Path) -> Path:
    """A tiny SPADE generator snapshot (7 classes, 32x32, untrained) at ``path``."""
    from synthseg.networks.spade import SPADEGenerator

    torch.manual_seed(0)
    generator = SPADEGenerator(label_nc=7, ngf=4, image_size=32, hidden_channels=8)
    save_network(generator.eval(), path, meta={"train_max": 1500.0})
    return path


def tiny_snapshot(path: Path, size: int = 32) -> Path:
    torch.manual_seed(0)
    gen = PGANGenerator(resolution=16, latent_dim=8, fmap_base=32, fmap_max=8)
    with torch.no_grad():  # spread the outputs over all classes
        gen.to_rgb["b16"].bias.fill_(0.0)
        gen.to_rgb["b16"].weight.mul_(3.0)
    save_network(gen.eval(), path, meta={"tick": 1, "kimg": 1.0, "dataset_size": size, "resolution": 16})
    return path


def kill_when(
    command: list[str],
    ready: Callable[[], bool],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    poll: float = 0.005,
) -> None:
    """Start ``command``, SIGKILL it as soon as ``ready()`` holds, and check that it really was killed (it must
    not have finished by then). One thread (``OMP_NUM_THREADS=1``) unless ``env`` says otherwise."""
    env = env if env is not None else {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the command finished before it could be killed"
