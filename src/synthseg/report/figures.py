"""The paper's figures as PNG grids: real pairs (Fig. 1), generated masks (2-3), synthetic pairs (5-6),
SPADE on real test masks (7) and the segmentations of every Table 1 configuration (8-10).

Each figure is written only when its input is there; tiles keep the slices' pixel size (no resampling), so
what the figure shows is what the networks saw. Datasets of several MR sequences show every sequence: pairs
stack them above the label map, Fig. 7 puts one column per sequence side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import png
import torch

from synthseg.checkpoint import CheckpointError, load_unet
from synthseg.data.dataset import SliceDataset
from synthseg.data.labels import colorize
from synthseg.data.manifest import Manifest, dataset_sequences, image_relpath, read_manifest
from synthseg.data.masks import list_masks
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.report.runs import Run, mix_order
from synthseg.report.settings import FigureSettings
from synthseg.utils.visual import grid, to_gray_rgb

log = logging.getLogger(__name__)

SEGMENTATION_FIGURES = {7: "fig8_segmentations_7class.png", 4: "fig9_segmentations_4class.png",
                        2: "fig10_segmentations_2class.png"}  # fmt: skip


def write_rgb_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an RGB PNG of exactly that pixel size."""
    h, w, _ = image.shape
    with open(path, "wb") as handle:
        png.Writer(width=w, height=h, greyscale=False, bitdepth=8).write_array(handle, image.reshape(-1))


def _rows(tiles: list[np.ndarray], columns: int) -> list[list[np.ndarray]]:
    return [tiles[i : i + columns] for i in range(0, len(tiles), columns)]


def _pair_tile(images: np.ndarray, label: np.ndarray, classes: int = 7) -> np.ndarray:
    """MR images (S, H, W), one above the other, above their colour-coded label map (the paper's 'rectangle')."""
    return np.concatenate([*(to_gray_rgb(image) for image in images), colorize(label, classes)], axis=0)


def _pick(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(rows) <= count:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=count, replace=False))


def _read_pair(
    manifest: Manifest, row: int, sequences: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images (S, H, W) of ``sequences`` (None: all of the dataset's), label (H, W)) of one slice."""
    root = manifest.root
    columns = [manifest.sequences.index(seq) for seq in (sequences or manifest.sequences)]
    images = np.stack([read_png(root / manifest.images[row, c]) for c in columns])
    return images, read_png(root / manifest.label[row])


def real_pairs_figure(root: Path, count: int, seed: int, columns: int = 8) -> np.ndarray:
    """Fig. 1: ``count`` random non-empty training slices of a prepared dataset, its sequences over labels."""
    manifest = read_manifest(root)
    rows = np.flatnonzero((manifest.split == "train") & ~manifest.empty)
    if len(rows) == 0:
        raise InputError(f"{root}: no non-empty training slices to show")
    tiles = [_pair_tile(*_read_pair(manifest, int(r))) for r in _pick(rows, count, seed)]
    return grid(_rows(tiles, columns))


def synthetic_pairs_figure(root: Path, count: int, seed: int, columns: int = 8) -> np.ndarray:
    """Figs. 5-6: ``count`` random synthetic pairs (SPADE images, each sequence, over the PGAN mask)."""
    manifest = read_manifest(root)
    rows = np.flatnonzero(~manifest.empty) if (~manifest.empty).any() else np.arange(len(manifest))
    tiles = [_pair_tile(*_read_pair(manifest, int(r))) for r in _pick(rows, count, seed)]
    return grid(_rows(tiles, columns))


def _mask_files(folder: Path) -> list[Path]:
    """Mask PNGs of a dataset folder or of a plain folder of PNGs, in name order (the figures' draw order)."""
    return sorted((item.label for item in list_masks(folder)), key=lambda path: path.name)


def masks_figure(folder: Path, count: int, seed: int, columns: int = 8) -> np.ndarray:
    """Figs. 2-3: ``count`` generated masks, colour-coded."""
    files = _mask_files(folder)
    chosen = _pick(np.arange(len(files)), count, seed)
    tiles = [colorize(read_png(files[i], bitdepth=8)) for i in chosen]
    return grid(_rows(tiles, columns))


def spade_test_figure(folders: list[Path], real_root: Path, count: int, columns: int = 6) -> np.ndarray:
    """Fig. 7: images SPADE made from real test masks (one row per SPADE instance), the true image below;
    with several sequences, one such column per sequence side by side.

    Each folder holds its images named by the real slice id whose mask was the input (``images/<id>.png``, or
    ``images/<seq>/<id>.png`` for several sequences); the sequences are the first folder's.
    """
    manifest = read_manifest(real_root)
    row_of = {str(i): r for r, i in enumerate(manifest.ids)}
    sequences = dataset_sequences(folders[0]) if (folders[0] / "stats.json").is_file() else ("t1c",)
    missing = [seq for seq in sequences if seq not in manifest.sequences]
    if missing:
        raise InputError(f"{real_root}: holds no {missing} to show beside the images of {folders[0]}")
    first = folders[0] / image_relpath("x", sequences[0], sequences)
    names = sorted(p.stem for p in first.parent.glob("*.png"))
    files = {n: [[f / image_relpath(n, seq, sequences) for seq in sequences] for f in folders] for n in names}
    names = [n for n in names if n in row_of and all(p.is_file() for per in files[n] for p in per)]
    if not names:
        raise InputError(f"{folders[0]}: no generated images matching a slice of {real_root}")
    tiles = []
    for name in names[:count]:
        real_images, _ = _read_pair(manifest, row_of[name], sequences)
        columns_of_tile = []
        for c in range(len(sequences)):
            real = to_gray_rgb(real_images[c])
            size = real.shape[:2]
            generated = [to_gray_rgb(read_png(per[c])) for per in files[name]]
            generated = [g if g.shape[:2] == size else _resize_nearest(g, size) for g in generated]
            columns_of_tile.append(np.concatenate([*generated, real], axis=0))
        tiles.append(np.concatenate(columns_of_tile, axis=1))
    return grid(_rows(tiles, columns))


def _resize_nearest(tile: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    ys = np.arange(size[0]) * tile.shape[0] // size[0]
    xs = np.arange(size[1]) * tile.shape[1] // size[1]
    return tile[ys][:, xs]


# --------------------------------------------------------------------------------------- Figs. 8-10
def first_test_rows(manifest: Manifest, count: int) -> np.ndarray:
    """The first ``count`` test slices with a non-empty label map (then empty ones, if too few)."""
    test = manifest.rows("test")
    ordered = np.concatenate([test[~manifest.empty[test]], test[manifest.empty[test]]])
    return ordered[:count]


def segment(run: Run, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment raw slices with a run's U-Net, normalised and resized as in that run.

    Args:
        run: the run.
        images: (N, S, H, W) uint16 raw slices of the run's sequences, in its order ((N, H, W): one).
        labels: (N, H, W) uint8 7-class label maps.

    Returns:
        (images (N, h, w) float32 of the first sequence as the network saw it, truth (N, h, w), prediction
        (N, h, w)), labels in the run's class count.
    """
    data = run.config["data"]
    stats = run.results.get("data_stats", {})
    if images.ndim == 3:
        images = images[:, None]
    dataset = SliceDataset(
        [(images, labels)],
        np.stack([np.zeros(len(images), np.int64), np.arange(len(images))], axis=1),
        classes=run.classes,
        image_norm=data.get("image_norm", "paper"),
        train_max=np.asarray(stats.get("train_max", 1.0), np.float64),  # one per sequence (a number for one)
        train_mean=np.asarray(stats.get("train_mean", 0.0), np.float64),
        resolution=data.get("resolution"),
    )
    batch = [dataset[i] for i in range(len(dataset))]
    x = torch.stack([b["image"] for b in batch])
    truth = torch.stack([b["label"] for b in batch]).numpy()
    with torch.no_grad():
        pred = load_unet(run.path, run.results)(x).argmax(1).numpy()
    return x[:, 0].numpy(), truth, pred


def segmentations_figure(runs: list[Run], count: int) -> tuple[np.ndarray, list[str]]:
    """Figs. 8-10: rows of test slices; columns: the MR image, each run's segmentation, the ground truth.

    All runs must share one class count; the test slices come from the first run's ``data.root``.
    """
    root = Path(str(runs[0].config["data"]["root"]))
    manifest = read_manifest(root)
    rows = first_test_rows(manifest, count)
    if len(rows) == 0:
        raise InputError(f"{root}: the dataset has no test slices")
    pairs = [_read_pair(manifest, int(r)) for r in rows]  # every sequence; each run takes its own
    images = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs])
    classes = runs[0].classes
    columns: list[list[np.ndarray]] = []
    shown, truth = None, None
    for run in runs:
        missing = [seq for seq in run.sequences if seq not in manifest.sequences]
        if missing:
            raise InputError(f"{root}: holds no {missing} for the run {run.path}")
        channels = [manifest.sequences.index(seq) for seq in run.sequences]
        seen, truth, pred = segment(run, images[:, channels], labels)
        shown = seen if shown is None else shown
        columns.append([colorize(p, classes) for p in pred])
    assert shown is not None and truth is not None
    table = [[to_gray_rgb(shown[i]), *(col[i] for col in columns), colorize(truth[i], classes)]
             for i in range(len(rows))]  # fmt: skip
    return grid(table), [r.mix for r in runs]


# ------------------------------------------------------------------------------------------- driver
def write_figures(
    folder: Path, groups: Mapping[tuple[str, int], list[Run]], options: FigureSettings
) -> tuple[list[dict[str, str]], list[str]]:
    """Write every figure whose input is available into ``folder``.

    Args:
        folder: output folder.
        groups: runs by (mix, classes), each sorted by seed (the lowest seed's run is shown).
        options: the report's ``figures`` settings (conf/report.yaml).

    Returns:
        (written files with captions, descriptions of the figures left out).
    """
    if not options.enabled:
        return [], ["all figures (figures.enabled=false)"]
    seed = options.seed
    written: list[dict[str, str]] = []
    skipped: list[str] = []

    def save(name: str, image: np.ndarray, caption: str) -> None:
        write_rgb_png(folder / name, image)
        written.append({"file": name, "caption": caption})

    any_run = next(iter(groups.values()))[0]
    real = options.real or any_run.config.get("data", {}).get("root")
    if real and Path(str(real)).is_dir():
        save("fig1_real_pairs.png", real_pairs_figure(Path(str(real)), options.pairs, seed),
             "Fig. 1: random non-empty real training slices, each sequence above its colour-coded labels")  # fmt: skip
    else:
        skipped.append("fig1_real_pairs.png (no real dataset: figures.real)")
    for key, name, what in (("masks_full", "fig2_masks_full.png", "all training slices"),
                            ("masks_reduced", "fig3_masks_reduced.png", "the reduced training set")):  # fmt: skip
        if getattr(options, key):
            image = masks_figure(Path(str(getattr(options, key))), options.masks, seed)
            save(name, image, f"Fig. {name[3]}: masks generated by the PGAN trained on {what}")
        else:
            skipped.append(f"{name} (figures.{key} not given)")
    for key, name, what in (("synthetic_full", "fig5_synthetic_full.png", "all training slices"),
                            ("synthetic_reduced", "fig6_synthetic_reduced.png", "the reduced set")):  # fmt: skip
        if getattr(options, key):
            image = synthetic_pairs_figure(Path(str(getattr(options, key))), options.pairs, seed)
            save(name, image, f"Fig. {name[3]}: synthetic pairs (GANs trained on {what}), SPADE image above "
                 "its PGAN mask")  # fmt: skip
        else:
            skipped.append(f"{name} (figures.{key} not given)")
    spade = options.spade_test
    if spade and real:
        folders = [Path(str(f)) for f in ([spade] if isinstance(spade, str) else spade)]
        image = spade_test_figure(folders, Path(str(real)), options.spade_examples)
        names = ", ".join(f.name for f in folders)
        save("fig7_spade_test.png", image,
             f"Fig. 7: SPADE images from real test masks ({names}, top to bottom), the true image below")  # fmt: skip
    else:
        skipped.append("fig7_spade_test.png (figures.spade_test not given)")
    count = options.segmentation_slices
    for classes, name in SEGMENTATION_FIGURES.items():
        mixes = mix_order({m for m, c in groups if c == classes})
        if not mixes or count <= 0:
            continue
        runs = [groups[(m, classes)][0] for m in mixes]
        try:
            image, columns = segmentations_figure(runs, count)
        except CheckpointError:
            raise  # a refused or foreign checkpoint is the user's to know about, not a figure left out
        except InputError as err:
            skipped.append(f"{name} ({err})")
            continue
        number = {7: 8, 4: 9, 2: 10}[classes]
        save(name, image, f"Fig. {number}: {classes}-class segmentations of test slices; columns: MR image, "
             f"{', '.join(columns)}, ground truth")  # fmt: skip
    return written, skipped
