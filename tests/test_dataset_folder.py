"""One module owns the dataset folder: the stats writer, the format tag, the manifest reader/writer, mask listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthseg.data import manifest as folder
from synthseg.data import masks
from synthseg.data.pngio import write_label8
from synthseg.errors import InputError
from tests.conftest import write_dataset

SRC = Path(__file__).resolve().parents[1] / "src" / "synthseg"


def test_the_format_tag_is_spelled_out_in_one_file() -> None:
    tag = folder.DATASET_FORMAT.rpartition("/")[0] + "/"
    holders = [p for p in sorted(SRC.rglob("*.py")) if tag in p.read_text()]
    assert holders == [SRC / "data" / "manifest.py"]


def test_stats_hold_the_common_keys_then_the_details_then_the_class_statistics() -> None:
    stats = folder.dataset_stats(
        source="synthetic", size=8, splits={"train": 3}, class_counts=[6, 1, 1, 0, 0, 0, 0], train_max=9
    )
    assert list(stats) == [
        "format", "source", "size", "num_slices", "splits", "train_max", "class_counts", "class_frequencies",
        "class_weights",
    ]  # fmt: skip
    assert stats["splits"] == {"train": 3, "val": 0, "test": 0} and stats["num_slices"] == 3
    assert stats["class_frequencies"] == [0.75, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0]
    empty = folder.dataset_stats(source="synthetic", size=8, splits={"train": 0}, class_counts=[0] * 7)
    assert "class_weights" not in empty and empty["class_frequencies"] == [0.0] * 7


def test_written_stats_read_back(tmp_path: Path) -> None:
    stats = folder.dataset_stats(source="real", size=4, splits={"train": 1}, class_counts=[1] * 7)
    folder.write_stats(tmp_path, stats)
    assert folder.read_stats(tmp_path) == json.loads(json.dumps(stats))
    assert (tmp_path / folder.STATS).read_text().endswith("}\n")


def test_manifest_files_read_only_the_columns_they_need(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", num_slices=10, size=8)
    manifest = folder.read_manifest(root)
    train = [root / manifest.label[i] for i in manifest.rows("train")]
    assert folder.manifest_files(root, "label", "train") == train
    assert folder.manifest_files(root, "image", "val") == [
        root / manifest.image[i] for i in manifest.rows("val")
    ]
    (root / folder.MANIFEST).write_text("id,split\na,train\n")
    with pytest.raises(InputError, match=r"manifest.csv: missing columns \['label'\]"):
        folder.manifest_files(root, "label")


def test_list_masks_of_a_dataset_a_labels_folder_and_a_plain_folder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", num_slices=6, size=8, source="synthetic")
    items = masks.list_masks(root)
    assert [i.id for i in items] == [f"synth_{i:06d}" for i in range(6)]
    assert all(i.image == root / "images" / f"{i.id}.png" for i in items)

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("b", "a"):
        write_label8(plain / f"{name}.png", np.zeros((8, 8), np.uint8))
    assert [(i.id, i.image) for i in masks.list_masks(plain)] == [("a", None), ("b", None)]

    labels_only = tmp_path / "labels_only"
    (labels_only / "labels").mkdir(parents=True)
    write_label8(labels_only / "labels" / "x.png", np.zeros((8, 8), np.uint8))
    assert [i.label for i in masks.list_masks(labels_only)] == [labels_only / "labels" / "x.png"]

    with pytest.raises(InputError, match=r"^masks=.*nope: masks folder not found$"):
        masks.list_masks(tmp_path / "nope", "masks")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label PNGs found"):
        masks.list_masks(tmp_path / "empty")


# ------------------------------------------------------------------------------- sequences (issue 16)
FOUR = ("t1", "t1c", "t2", "flair")


def test_check_sequences_keeps_the_order_and_refuses_unknown_repeated_or_none() -> None:
    from synthseg.data.sequences import SEQUENCES, check_sequences

    assert SEQUENCES == FOUR
    assert check_sequences(["flair", "t1c"], "data.sequences") == ("flair", "t1c")
    assert check_sequences("t2") == ("t2",)
    with pytest.raises(
        InputError, match=r"^data.sequences=\[t1ce\]: unknown sequence \['t1ce'\] .*t1ce is t1c\)$"
    ):
        check_sequences(["t1ce"], "data.sequences")
    with pytest.raises(InputError, match=r"^sequences=\[t1,t2,t1\]: sequence \['t1'\] named more than once$"):
        check_sequences(["t1", "t2", "t1"], "sequences")
    with pytest.raises(InputError, match="name at least one sequence"):
        check_sequences([], "sequences")


def test_a_t1c_dataset_keeps_the_flat_layout_and_format_1(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", num_slices=10, size=8)
    manifest = folder.read_manifest(root)
    header = (root / folder.MANIFEST).read_text().splitlines()[0].split(",")
    assert header == list(folder.REQUIRED_COLUMNS) == list(folder.manifest_columns(("t1c",)))
    assert manifest.sequences == ("t1c",) and manifest.images.shape == (10, 1)
    assert list(manifest.image) == list(manifest.images[:, 0]) == [f"images/{i}.png" for i in manifest.ids]
    stats = folder.read_stats(root)
    assert stats["format"] == folder.DATASET_FORMAT and "sequences" not in stats
    assert isinstance(stats["train_max"], int) and isinstance(stats["train_mean"], float)
    assert folder.dataset_sequences(root) == ("t1c",)
    assert folder.image_relpath("a", "t1c", ("t1c",)) == "images/a.png"


def test_a_multi_sequence_dataset_has_a_folder_and_a_column_per_sequence(tmp_path: Path) -> None:
    from synthseg.data.pngio import read_png

    order = ("flair", "t1c", "t1")
    root = write_dataset(tmp_path / "d", num_slices=10, size=8, sequences=order)
    manifest = folder.read_manifest(root)
    header = (root / folder.MANIFEST).read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("image")] == ["image_flair", "image_t1c", "image_t1"]
    assert manifest.sequences == order and manifest.images.shape == (10, 3)
    for i, sid in enumerate(manifest.ids):
        assert list(manifest.images[i]) == [f"images/{s}/{sid}.png" for s in order]
        assert all((root / p).is_file() for p in manifest.images[i])
    assert not (root / "images" / f"{manifest.ids[0]}.png").exists()
    stats = folder.read_stats(root)
    assert stats["format"] == folder.DATASET_FORMAT_MULTI and stats["sequences"] == list(order)
    assert len(stats["train_max"]) == len(stats["train_mean"]) == 3
    train = manifest.rows("train")
    for s in range(3):  # per-sequence statistics, in the dataset's order
        assert stats["train_max"][s] == max(int(read_png(root / manifest.images[i, s]).max()) for i in train)
    assert folder.dataset_sequences(root) == order
    items = masks.list_masks(root)
    assert items[0].images == tuple(root / p for p in manifest.images[0]) and items[0].sequences == order


def test_a_synthetic_row_names_one_image_per_sequence() -> None:
    counts = np.array([10, 0, 0, 0, 1, 0, 0])
    row = folder.synthetic_row("s1", counts, has_image=True, sequences=("t1c", "t2"))
    assert (
        row["image_t1c"] == "images/t1c/s1.png"
        and row["image_t2"] == "images/t2/s1.png"
        and "image" not in row
    )
    assert list(row) == list(folder.manifest_columns(("t1c", "t2")))
    assert folder.synthetic_row("s1", counts, has_image=True)["image"] == "images/s1.png"
    assert folder.synthetic_row("s1", counts, has_image=False, sequences=FOUR)["image_t2"] == ""


def test_stats_of_several_sequences_are_lists_in_their_order() -> None:
    stats = folder.dataset_stats(
        source="real", size=8, splits={"train": 1}, class_counts=[1] * 7, sequences=("t2", "t1"),
        split_mode="paper", train_max=[7, 9], train_mean=[0.5, 0.25],
    )  # fmt: skip
    assert list(stats)[:9] == [
        "format", "source", "size", "num_slices", "splits", "split_mode", "sequences", "train_max", "train_mean",
    ]  # fmt: skip
    assert stats["train_max"] == [7, 9] and stats["sequences"] == ["t2", "t1"]
    flat = folder.dataset_stats(source="real", size=8, splits={}, class_counts=[1] * 7, train_max=[7])
    assert flat["train_max"] == 7 and flat["format"] == folder.DATASET_FORMAT
    with pytest.raises(ValueError, match="train_max has 1 values for 2 sequences"):
        folder.dataset_stats(
            source="real", size=8, splits={}, class_counts=[1] * 7, sequences=FOUR[:2], train_max=1
        )


def test_a_newer_format_is_one_line_asking_for_an_update(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", num_slices=10, size=8)
    stats = folder.read_stats(root)
    stats["format"] = folder.DATASET_FORMAT.rpartition("/")[0] + "/3"
    folder.write_stats(root, stats)
    expected = r"stats.json: format synthseg-dataset/3 is newer than this synthseg reads \(.*/2 at most\): update synthseg$"
    for reader in (folder.read_stats, folder.read_manifest, folder.dataset_sequences, masks.list_masks):
        with pytest.raises(InputError, match=expected):
            reader(root)


def test_a_manifest_without_image_columns_is_one_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", num_slices=10, size=8)
    text = (root / folder.MANIFEST).read_text().replace(",image,", ",picture,", 1)
    (root / folder.MANIFEST).write_text(text)
    with pytest.raises(InputError, match=r"manifest.csv: missing columns \['image'\]$"):
        folder.read_manifest(root)
