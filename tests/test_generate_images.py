"""generate-images: the 16-bit round trip, the dataset layout of the output, determinism and bad masks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest
import torch

from synthseg.checkpoint import save_network
from synthseg.data.datamodule import BraTSDataModule
from synthseg.data.dataset import SliceDataset
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png, write_label8
from synthseg.errors import InputError
from synthseg.models.spade import CHECKPOINT_KEY
from synthseg.networks.spade import SPADEGenerator
from synthseg.synth import generate_images
from synthseg.synth.generate_images import (
    GenerateImagesSettings,
    load_image_generator,
    output_ids,
    tanh_to_uint16,
)

TRAIN_MAX = 1500.0


def datamodule_tanh(values: np.ndarray, train_max: float) -> np.ndarray:
    """The DataModule's own normalisation of raw uint16 values (image_norm=tanh), in float32 as it runs."""
    dataset = SliceDataset(
        [], np.zeros((0, 2)), classes=7, image_norm="tanh", train_max=train_max, train_mean=0.0
    )
    return dataset.normalize(values.astype(np.float32))


@pytest.mark.parametrize("train_max", [65535, 4095, 1234, 1])
def test_round_trip_of_every_16_bit_value_is_exact(train_max):
    values = np.arange(train_max + 1, dtype=np.uint16)
    normalized = datamodule_tanh(values, train_max)
    assert normalized.dtype == np.float32
    assert np.array_equal(tanh_to_uint16(torch.from_numpy(normalized), train_max), values)


def test_conversion_by_hand():
    # (x + 1) / 2 * 4095: -1 -> 0, 0 -> 2047.5 -> 2048 (round half to even), 1 -> 4095; outside range clipped.
    out = tanh_to_uint16(np.array([-1.0, 0.0, 1.0, -1.5, 1.5]), 4095)
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 2048, 4095, 0, 4095]
    with pytest.raises(ValueError):
        tanh_to_uint16(np.zeros(2), 0)


def test_output_ids():
    assert output_ids(["synth_000004", "synth_000009"]) == ["synth_000004", "synth_000009"]
    assert output_ids(["Brats18_A_1_1_010", "synth_000001"]) == ["synth_000000", "synth_000001"]
    assert output_ids(["synth_000001", "synth_000001"]) == ["synth_000000", "synth_000001"]
    assert output_ids(["Brats18_A_1_1_010", "x"], keep_ids=True) == ["Brats18_A_1_1_010", "x"]
    with pytest.raises(InputError, match="unique"):
        output_ids(["a", "a"], keep_ids=True)


def tiny_generator() -> SPADEGenerator:
    torch.manual_seed(0)
    return SPADEGenerator(label_nc=7, output_nc=1, ngf=2, image_size=32, hidden_channels=4).eval()


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "generator.pt"
    save_network(tiny_generator(), path, meta={"train_max": TRAIN_MAX})
    return path


def training_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint shaped like SPADEModule's (Lightning state_dict + our entry)."""
    generator = tiny_generator()
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"generator.{k}": v for k, v in generator.state_dict().items()},
            CHECKPOINT_KEY: {"generator": {"init_args": generator.init_args}, "train_max": TRAIN_MAX},
        },
        path,
    )
    return path


def png_properties(path: Path) -> dict:
    width, height, _, info = png.Reader(filename=str(path)).read()
    return {
        "size": (width, height),
        **{k: info[k] for k in ("bitdepth", "greyscale", "alpha", "planes", "interlace")},
    }


def test_output_has_the_prepared_layout_and_loads_as_synthetic_data(tiny_dataset, snapshot, tmp_path):
    out = tmp_path / "synthetic"
    generate_images.run(
        GenerateImagesSettings(
            checkpoint=snapshot, masks=tiny_dataset, output=out, batch_size=7, device="cpu", progress=False
        )
    )
    source = read_manifest(tiny_dataset)
    manifest = read_manifest(out)
    assert len(manifest) == len(source)
    assert list(manifest.ids) == [f"synth_{i:06d}" for i in range(len(source))]
    assert set(manifest.source) == {"synthetic"} and set(manifest.split) == {"train"}
    prepared_png = png_properties(tiny_dataset / source.image[0])
    generator = tiny_generator()
    for i in (0, len(source) - 1):
        image_path, label_path = out / manifest.image[i], out / manifest.label[i]
        # Exactly the prepared images' PNG properties: 16-bit grayscale, no alpha, same size.
        assert png_properties(image_path) == prepared_png
        mask = read_png(tiny_dataset / source.label[i])
        assert np.array_equal(read_png(label_path), mask)
        assert manifest.counts[i].tolist() == np.bincount(mask.ravel(), minlength=7).tolist()
        assert manifest.empty[i] == (not mask.any())
        # The image is the generator's output for this mask, mapped back with the recorded training max.
        indices = torch.from_numpy(mask.astype(np.int64))
        one_hot = torch.nn.functional.one_hot(indices, 7).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected = tanh_to_uint16(generator(one_hot.float())[0, 0], TRAIN_MAX)
        image = read_png(image_path)
        assert image.dtype == np.uint16 and image.max() <= TRAIN_MAX
        assert np.abs(image.astype(np.int64) - expected.astype(np.int64)).max() <= 1  # batch vs single call
    assert (out / "stats.json").is_file() and (out / "prepare.json").is_file()

    dm = BraTSDataModule(
        str(tiny_dataset), synthetic={"root": str(out), "count": 5}, image_norm="tanh", one_hot=True
    )
    dm.setup("fit")
    assert dm.stats["num_synthetic"] == 5


def test_training_checkpoint_and_snapshot_give_identical_files(tiny_dataset, snapshot, tmp_path):
    checkpoint = training_checkpoint(tmp_path)
    generator, train_max = load_image_generator(checkpoint)
    assert train_max == TRAIN_MAX and generator.image_size == 32
    a, b = tmp_path / "a", tmp_path / "b"
    generate_images.run(
        GenerateImagesSettings(
            checkpoint=checkpoint,
            masks=tiny_dataset / "labels",
            output=a,
            batch_size=16,
            device="cpu",
            progress=False,
        )
    )
    generate_images.run(
        GenerateImagesSettings(
            checkpoint=snapshot,
            masks=tiny_dataset / "labels",
            output=b,
            batch_size=16,
            device="cpu",
            progress=False,
        )
    )
    files = sorted(p.relative_to(a) for p in (a / "images").iterdir())
    assert files and files == sorted(p.relative_to(b) for p in (b / "images").iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def bad_mask_folder(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    folder = tmp_path / f"masks_{kind}"
    folder.mkdir()
    write_label8(folder / "synth_000000.png", np.zeros((32, 32), np.uint8))
    bad = folder / "synth_000001.png"
    if kind == "value":
        mask = np.zeros((32, 32), np.uint8)
        mask[3, 4] = 7
        write_label8(bad, mask)
    else:
        write_label8(bad, np.zeros((64, 64), np.uint8))
    return folder, bad


@pytest.mark.parametrize("kind, match", [("value", "label value 7 is outside"), ("size", "trained at 32x32")])
def test_bad_masks_name_the_file_and_leave_no_output(snapshot, tmp_path, kind, match):
    folder, bad = bad_mask_folder(tmp_path, kind)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match) as info:
        generate_images.run(
            GenerateImagesSettings(
                checkpoint=snapshot, masks=folder, output=out, batch_size=1, device="cpu", progress=False
            )
        )
    assert str(bad) in str(info.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.glob(".out*")] == [".out.lock"]  # no temporary folder left behind


def test_existing_output_needs_overwrite(tiny_dataset, snapshot, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is filled (issue 24: it used to be "already exists")
    settings = GenerateImagesSettings(
        checkpoint=snapshot, masks=tiny_dataset, output=out, device="cpu", progress=False
    )
    generate_images.run(settings)
    with pytest.raises(InputError, match="already exists"):
        generate_images.run(settings)


@pytest.mark.slow
def test_cli_reports_a_bad_mask_in_one_line(snapshot, tmp_path):
    folder, bad = bad_mask_folder(tmp_path, "value")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from synthseg.cli import main; main()",
            "generate-images",
            f"checkpoint={snapshot}",
            f"masks={folder}",
            f"output={tmp_path / 'out'}",
            "progress=false",
            "device=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "label value 7" in lines[0]


def test_zero_background_keeps_the_brain_and_its_one_pixel_rim() -> None:
    labels = np.zeros((1, 6, 6), np.uint8)
    labels[0, 2:4, 2:4] = 4  # a 2 x 2 brain
    images = np.full((1, 1, 6, 6), 7, np.uint16)
    out = generate_images.zero_background(images, labels)
    rim = np.zeros((6, 6), bool)
    rim[1:5, 1:5] = True  # the brain and every pixel touching it (8-neighbourhood)
    assert np.array_equal(out[0, 0] == 7, rim) and out.dtype == np.uint16
    assert generate_images.zero_background(images, np.zeros((1, 6, 6), np.uint8)).max() == 0


def test_background_zero_writes_zeros_only_far_from_the_brain(tiny_dataset, snapshot, tmp_path):
    kept, zeroed = tmp_path / "keep", tmp_path / "zero"
    for out, background in ((kept, "keep"), (zeroed, "zero")):
        generate_images.run(
            GenerateImagesSettings(checkpoint=snapshot, masks=tiny_dataset, output=out, device="cpu",
                                   progress=False, background=background)
        )  # fmt: skip
    manifest = read_manifest(kept)
    changed = 0
    for i in range(len(manifest)):
        before, after = read_png(kept / manifest.image[i]), read_png(zeroed / manifest.image[i])
        labels = read_png(kept / manifest.label[i])[None]
        expected = generate_images.zero_background(before[None, None], labels)[0, 0]
        assert np.array_equal(after, expected)
        changed += int((after != before).sum())
    assert changed > 0  # the tiny generator paints the background: the switch changed pixels
    with pytest.raises(InputError, match="background"):
        GenerateImagesSettings(checkpoint=snapshot, masks=tiny_dataset, output=zeroed, background="black")


def test_split_and_resize_paint_a_prepared_datasets_real_masks(snapshot, tmp_path):
    """SPADE on the real label maps of one split of a prepared dataset at another size (docs/demo.md, "Where
    the gap comes from"): only that split's rows, each mask reduced as the DataModule reduces it."""
    from synthseg.data.labels import resize_labels
    from tests.conftest import write_dataset

    prepared = write_dataset(tmp_path / "prepared64", size=64)
    source = read_manifest(prepared)
    out = tmp_path / "train_only"
    generate_images.run(
        GenerateImagesSettings(checkpoint=snapshot, masks=prepared, output=out, device="cpu", progress=False,
                               split="train", resize=True, keep_ids=True)
    )  # fmt: skip
    written = read_manifest(out)
    train = source.rows("train")
    assert list(written.ids) == [source.ids[i] for i in train] and len(train) < len(source)
    for i, row in enumerate(train):
        expected = resize_labels(read_png(prepared / source.label[row]), 32)
        assert np.array_equal(read_png(out / written.label[i]), expected)
    assert read_png(out / written.image[0]).shape == (32, 32)
    refusals = {
        "no resize": ({}, r"mask is 64x64, the generator was trained at 32x32 \(resize=true resizes"),
        "split of a plain folder": (
            {"masks": prepared / "labels", "split": "test"},
            "needs a dataset folder",
        ),
        "an empty split": (
            {
                "masks": write_dataset(tmp_path / "train_only_set", num_slices=4, splits=["train"] * 4),
                "split": "val",
            },
            "its manifest has no val rows",
        ),
    }
    for name, (changed, message) in refusals.items():
        settings = {"checkpoint": snapshot, "masks": prepared, "output": tmp_path / name, "device": "cpu",
                    "progress": False, **changed}  # fmt: skip
        with pytest.raises(InputError, match=message):
            generate_images.run(GenerateImagesSettings(**settings))
        assert not (tmp_path / name).exists()
    for side in (48, 24):  # neither a multiple of 32 nor a divisor: resize_labels cannot reach 32
        odd = tmp_path / f"odd{side}"
        odd.mkdir()
        write_label8(odd / "a.png", np.zeros((side, side), np.uint8))
        match = f"a.png: mask is {side}x{side}.*resize needs a side that divides 32 or is a multiple of it"
        with pytest.raises(InputError, match=match):
            generate_images.run(GenerateImagesSettings(checkpoint=snapshot, masks=odd, output=tmp_path / f"o{side}",
                                                       device="cpu", progress=False, resize=True))  # fmt: skip
        assert not (tmp_path / f"o{side}").exists()
    with pytest.raises(InputError, match="split must be one of train, val, test"):
        GenerateImagesSettings(checkpoint=snapshot, masks=prepared, output=out, split="training")
