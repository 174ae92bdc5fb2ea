"""One module owns the dataset folder: the stats writer, the format tag, the manifest reader/writer, mask listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthseg.data import manifest as folder
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
    items = folder.list_masks(root)
    assert [i.id for i in items] == [f"synth_{i:06d}" for i in range(6)]
    assert all(i.image == root / "images" / f"{i.id}.png" for i in items)

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("b", "a"):
        write_label8(plain / f"{name}.png", np.zeros((8, 8), np.uint8))
    assert [(i.id, i.image) for i in folder.list_masks(plain)] == [("a", None), ("b", None)]

    labels_only = tmp_path / "labels_only"
    (labels_only / "labels").mkdir(parents=True)
    write_label8(labels_only / "labels" / "x.png", np.zeros((8, 8), np.uint8))
    assert [i.label for i in folder.list_masks(labels_only)] == [labels_only / "labels" / "x.png"]

    with pytest.raises(InputError, match=r"^masks=.*nope: masks folder not found$"):
        folder.list_masks(tmp_path / "nope", "masks")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label PNGs found"):
        folder.list_masks(tmp_path / "empty")
