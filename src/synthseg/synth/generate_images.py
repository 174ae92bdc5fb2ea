"""``synthseg generate-images``: paint every trained sequence onto every label map of a folder with a SPADE.

The output folder has the prepared-dataset layout (docs/dataset_layout.md) of the generator's sequences:
``images/<id>.png`` for T1c alone, ``images/<seq>/<id>.png`` for several (16-bit grayscale with the prepared
images' properties), ``labels/<id>.png`` the input label maps, ``manifest.csv`` (``source=synthetic``,
``split=train``), ``stats.json`` and ``prepare.json`` (provenance). Each output channel in [-1, 1] goes back to
16 bits with its own sequence's training maximum recorded in the checkpoint, the inverse of the
DataModule's ``image / train_max * 2 - 1``.

Masks are read from a dataset folder (manifest order), from ``<masks>/labels/*.png`` or from ``<masks>/*.png``
(name order). Ids already of the form ``synth_<n>`` are kept, so images pair with filtered masks by name;
any other mask becomes ``synth_<index:06d>`` in input order (the source ids are listed in ``prepare.json``).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from synthseg import __version__
from synthseg.checkpoint import SPADE_CHECKPOINT_KEY, load_network, safe_load
from synthseg.data.labels import NUM_CLASSES, resize_labels
from synthseg.data.manifest import (
    MANIFEST,
    SPLITS,
    dataset_stats,
    image_relpath,
    manifest_writer,
    synthetic_row,
    write_provenance,
    write_stats,
)
from synthseg.data.masks import list_masks
from synthseg.data.pngio import read_png, write_image16, write_label8
from synthseg.errors import InputError
from synthseg.networks.spade import SPADEGenerator
from synthseg.settings import Settings, check_choice, check_device, check_positive, resolve_device
from synthseg.utils.atomic import check_free_space
from synthseg.utils.fastpath import autocast_dtype
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output

log = logging.getLogger(__name__)

SYNTH_ID = re.compile(r"^synth_\d+$")
# ``background``: keep SPADE's output everywhere (the paper), or zero it where no brain label lies within one
# pixel, as in the skull-stripped real slices (docs/spade.md, "The background beyond the brain").
BACKGROUNDS = ("keep", "zero")


def zero_background(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(B, S, H, W) images and (B, H, W) label maps -> the images with 0 at every pixel whose 3 x 3
    neighbourhood holds no brain label (class > 0). Real slices are skull-stripped at full size: downsampled,
    their only non-zero background pixels are the partial-volume ones next to the brain, which this keeps."""
    brain = torch.from_numpy(np.ascontiguousarray(labels) > 0).float()[:, None]
    near = F.max_pool2d(brain, kernel_size=3, stride=1, padding=1)[:, 0].numpy() > 0
    return np.where(near[:, None], images, 0).astype(images.dtype)


def tanh_to_uint16(images: torch.Tensor | np.ndarray, train_max: float) -> np.ndarray:
    """Generator outputs in [-1, 1] -> uint16 in [0, train_max]: the inverse of ``x / train_max * 2 - 1``.

    Computed in float64 and rounded, so every uint16 value ``v <= train_max`` survives the round trip
    ``v -> v / train_max * 2 - 1 (float32) -> v`` exactly.
    """
    if not 0 < train_max <= 65535:
        raise ValueError(f"train_max must be in (0, 65535], got {train_max}")
    x = (
        images.detach().cpu().double().numpy()
        if isinstance(images, torch.Tensor)
        else np.asarray(images, np.float64)
    )
    return np.clip(np.rint((x + 1.0) * 0.5 * train_max), 0, train_max).astype(np.uint16)


@dataclass(frozen=True)
class ImageGenerator:
    """A SPADE generator with what maps its outputs back to 16 bits: per output channel, the sequence name
    and that sequence's training maximum."""

    generator: SPADEGenerator
    sequences: tuple[str, ...]
    train_max: tuple[float, ...]


def load_generator(path: str | Path) -> ImageGenerator:
    """The generator (eval mode, CPU), its sequences and their training maxima from a SPADE training checkpoint
    or snapshot.

    A training checkpoint (``last.ckpt``) carries all three; a network snapshot (``synthseg.checkpoint``) must
    carry ``train_max`` (and, for several outputs, ``sequences``) in its ``meta``. Checkpoints of synthseg 0.1
    record one number and no sequences: T1c. Everything loads with ``weights_only=True``.
    """
    path = Path(path)
    obj = safe_load(path)
    snapshot = "network" in obj and "init_args" in obj
    if not snapshot and not isinstance((obj.get(SPADE_CHECKPOINT_KEY) or {}).get("generator"), dict):
        raise InputError(f"{path}: not a SPADE training checkpoint (no {SPADE_CHECKPOINT_KEY!r} entry)")
    generator, meta = load_network(path, checkpoint=obj)
    # The kind of network first: a PGAN snapshot lacks train_max too, but that is not what is wrong with it.
    if not isinstance(generator, SPADEGenerator):
        name = type(generator).__name__
        if name.startswith("PGAN"):
            raise InputError(
                f"{path}: this is a PGAN snapshot ({name}); generate-images needs a SPADE checkpoint "
                f"(PGAN snapshots go to generate-masks)"
            )
        raise InputError(f"{path}: holds a {name}, not a SPADE generator")
    if not snapshot:
        for key in ("train_max", "sequences"):
            meta.setdefault(key, obj[SPADE_CHECKPOINT_KEY].get(key))
    if meta.get("train_max") is None:
        raise InputError(
            f"{path}: this network snapshot does not record the training maximum (meta.train_max)"
        )
    maxima = tuple(float(v) for v in np.atleast_1d(np.asarray(meta["train_max"], dtype=np.float64)))
    outputs = generator.output_nc
    sequences = tuple(meta.get("sequences") or (("t1c",) if outputs == 1 else ()))
    if len(maxima) != outputs or len(sequences) != outputs:
        raise InputError(
            f"{path}: the generator has {outputs} output channels, but the checkpoint records "
            f"{len(maxima)} training maxima and sequences {list(sequences)}"
        )
    for name, value in zip(sequences, maxima, strict=True):
        if not 0 < value <= 65535:
            raise InputError(
                f"{path}: recorded training maximum {value} of {name} is not a 16-bit intensity (1..65535)"
            )
    return ImageGenerator(generator.eval(), sequences, maxima)


def load_image_generator(path: str | Path) -> tuple[SPADEGenerator, float]:
    """The generator and the training maximum of a single-sequence SPADE (see :func:`load_generator`)."""
    loaded = load_generator(path)
    if len(loaded.sequences) != 1:
        raise InputError(
            f"{path}: the generator paints {len(loaded.sequences)} sequences {list(loaded.sequences)}; "
            "use load_generator for their training maxima"
        )
    return loaded.generator, loaded.train_max[0]


def output_ids(source_ids: list[str], keep_ids: bool = False) -> list[str]:
    """Keep ``synth_<n>`` ids (pairing with filtered masks), number everything else in input order.

    With ``keep_ids`` every input id is kept as it is (e.g. real test masks, to pair with their true images).
    """
    unique = len(set(source_ids)) == len(source_ids)
    if keep_ids:
        if not unique:
            raise InputError("keep_ids=true needs unique mask ids, but some masks share an id")
        return list(source_ids)
    if unique and all(SYNTH_ID.match(sid) for sid in source_ids):
        return list(source_ids)
    return [f"synth_{index:06d}" for index in range(len(source_ids))]


class MaskFolder(Dataset):
    """Label-map PNGs checked for size and class range; items are (position, label (H, W) int64).

    With ``resize`` a square mask of another size is brought to ``size`` as the DataModule does
    (``data.labels.resize_labels``: majority vote down, nearest up)."""

    def __init__(self, paths: list[Path], size: int, label_nc: int, resize: bool = False):
        self.paths, self.size, self.label_nc, self.resize = paths, size, label_nc, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        path = self.paths[index]
        mask = read_png(path, bitdepth=8)
        square = mask.ndim == 2 and mask.shape[0] == mask.shape[1]
        side = mask.shape[0]
        # what resize_labels can do: whole blocks down, whole repeats up
        fits = square and side > 0 and (side % self.size == 0 if side > self.size else self.size % side == 0)
        if mask.shape != (self.size, self.size) and not (self.resize and fits):
            if not self.resize:
                hint = " (resize=true resizes a square mask)"
            elif not square:
                hint = "; resize takes square masks only"
            else:
                hint = f"; resize needs a side that divides {self.size} or is a multiple of it"
            raise InputError(
                f"{path}: mask is {'x'.join(map(str, mask.shape))}, the generator was trained at "
                f"{self.size}x{self.size}{hint}"
            )
        if mask.size and int(mask.max()) >= self.label_nc:
            raise InputError(
                f"{path}: label value {int(mask.max())} is outside the generator's classes 0..{self.label_nc - 1}"
            )
        return index, torch.from_numpy(resize_labels(mask.astype(np.int64), self.size))


@dataclass(frozen=True)
class GenerateImagesSettings(Settings):
    """``conf/generate_images.yaml``; the keys are described there and in :func:`run`."""

    REQUIRED = {"checkpoint": "FILE", "masks": "DIR", "output": "DIR"}

    checkpoint: str  # SPADE training checkpoint or generator snapshot
    masks: str  # folder of label maps (see the module docstring)
    output: str  # dataset folder to write (atomically: the whole folder appears at the end)
    batch_size: int = 16  # masks per generator call
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    num_workers: int = 0  # DataLoader workers reading the masks
    autocast: str | None = None  # bf16 or fp16 to generate under autocast (GPU), None for float32
    seed: int = 0  # the latent codes of a VAE generator (without VAE the output does not depend on it)
    keep_ids: bool = False  # name every output after its mask's id (default: synth_<n> ids)
    split: str | None = None  # only a dataset folder's rows of this split (train | val | test)
    resize: bool = False  # square masks of another size resized to the generator's (as the DataModule does)
    background: str = "keep"  # keep | zero (0 beyond one pixel of the brain, as the real slices): BACKGROUNDS
    overwrite: bool = False  # replace an output this command wrote earlier (never a foreign folder)
    progress: bool = True

    def check(self) -> None:
        check_device("device", self.device)
        check_positive("batch_size", self.batch_size)
        check_positive("num_workers", self.num_workers, allow_zero=True)
        check_choice("background", self.background, BACKGROUNDS)
        if self.split is not None:
            check_choice("split", self.split, SPLITS)
        autocast_dtype(self.autocast)


def run(settings: GenerateImagesSettings) -> Path:
    """Generate one 16-bit image per mask into the dataset folder ``settings.output`` and return it; its
    ``prepare.json`` records the provenance (checkpoint, generator, sequences, training maxima, speed, settings).
    """
    checkpoint, masks, overwrite, seed = (
        settings.checkpoint,
        settings.masks,
        settings.overwrite,
        settings.seed,
    )
    amp_dtype = autocast_dtype(settings.autocast)
    inputs = [checkpoint, masks]
    output = check_output(settings.output, command="generate-images", inputs=inputs, overwrite=overwrite)
    start = time.time()
    loaded = load_generator(checkpoint)
    generator, sequences, train_max = loaded.generator, loaded.sequences, loaded.train_max
    items = list_masks(masks, "masks", settings.split)
    ids = output_ids([item.id for item in items], settings.keep_ids)
    size, label_nc = generator.image_size, generator.label_nc
    # Upper bound: uncompressed 16-bit images + 8-bit label per slice.
    check_free_space(output.parent, len(items) * size * size * (2 * len(sequences) + 1), "generated images")
    dev = resolve_device(settings.device)
    generator.to(dev)
    latent_gen = torch.Generator(device="cpu").manual_seed(seed)
    loader = DataLoader(
        MaskFolder([item.label for item in items], size, label_nc, settings.resize),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
    )
    written = 0
    class_counts = np.zeros(NUM_CLASSES, np.int64)
    maximum, total = np.zeros(len(sequences), np.int64), np.zeros(len(sequences), np.float64)
    with claim_output(
        output, command="generate-images", inputs=inputs, overwrite=overwrite, later=DATASET_LATER
    ) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for seq in sequences:
            (tmp / image_relpath("x", seq, sequences)).parent.mkdir(parents=True, exist_ok=True)
        # Manifest rows are written as they come, so memory does not grow with the number of masks.
        # A conditional PGAN's masks keep their axial positions (the manifest's position column).
        located = any(item.position is not None for item in items)
        with (
            manifest_writer(tmp / MANIFEST, sequences=sequences, position=located) as writer,
            torch.inference_mode(),
        ):
            bar = tqdm(total=len(items), desc="generate-images", unit="img", disable=not settings.progress)
            for positions, labels in loader:
                one_hot = F.one_hot(labels, label_nc).permute(0, 3, 1, 2).float().to(dev)
                z = None
                if generator.use_vae:
                    z = torch.randn(labels.shape[0], generator.z_dim, generator=latent_gen).to(dev)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    fake = generator(one_hot, z)
                # (B, S, H, W): channel c back to 16 bits with sequence c's training maximum
                images = np.stack(
                    [tanh_to_uint16(fake.float()[:, c], top) for c, top in enumerate(train_max)], axis=1
                )
                masks_np = labels.numpy().astype(np.uint8)
                if settings.background == "zero":
                    images = zero_background(images, masks_np)
                for position, image, mask in zip(positions.tolist(), images, masks_np, strict=True):
                    sid = ids[position]
                    for c, seq in enumerate(sequences):
                        write_image16(tmp / image_relpath(sid, seq, sequences), image[c])
                    write_label8(tmp / "labels" / f"{sid}.png", mask)
                    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
                    class_counts += counts
                    maximum = np.maximum(maximum, image.reshape(len(sequences), -1).max(axis=1))
                    total += image.reshape(len(sequences), -1).sum(axis=1, dtype=np.float64)
                    written += 1
                    at = items[position].position
                    writer.writerow(
                        synthetic_row(sid, counts, has_image=True, sequences=sequences, position=at)
                    )
                bar.update(len(positions))
            bar.close()
        pixels = max(written, 1) * size * size
        stats = dataset_stats(
            source="synthetic",
            size=size,
            splits={"train": written},
            class_counts=class_counts,
            split_mode="synthetic",
            seed=seed,
            reduced_fraction=0.0,
            sequences=sequences,
            train_max=[int(m) for m in maximum],
            train_mean=[float(t / m / pixels) if m else 0.0 for m, t in zip(maximum, total, strict=True)],
        )
        write_stats(tmp, stats)
        elapsed = time.time() - start
        record = {
            "command": "generate-images",
            "version": __version__,
            "checkpoint": str(Path(checkpoint).resolve()),
            "masks": str(Path(masks).resolve()),
            "generator": dict(generator.init_args),
            "sequences": list(sequences),
            "checkpoint_train_max": train_max[0] if len(train_max) == 1 else list(train_max),
            "device": str(dev),
            "host": platform.node(),
            "seconds": round(elapsed, 3),
            "images_per_second": round(written / elapsed, 3) if elapsed > 0 else None,
            "config": dataclasses.asdict(settings),
            "source_ids": [item.id for item in items] if ids != [item.id for item in items] else None,
        }
        write_provenance(tmp, record)
    log.info("wrote %d images to %s (%.1f images/s)", written, output, written / max(elapsed, 1e-9))
    return output


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg generate-images checkpoint=FILE masks=DIR output=DIR``."""
    return run(GenerateImagesSettings.from_config(cfg))
