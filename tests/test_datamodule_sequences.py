"""Several MR sequences through the cache and the DataModule (issue 16): channels, order, per-sequence norm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthseg.data.augment import ClassicalAugmentation
from synthseg.data.cache import build_cache, open_cache
from synthseg.data.datamodule import BraTSDataModule
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from tests.conftest import write_dataset

FOUR = ("t1", "t1c", "t2", "flair")


@pytest.fixture
def four(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "four", sequences=FOUR)


def make(root: Path, **kwargs) -> BraTSDataModule:
    dm = BraTSDataModule(str(root), **kwargs)
    dm.setup("fit")
    return dm


def test_the_cache_has_a_sequence_axis_in_the_dataset_order(four: Path) -> None:
    images, labels = open_cache(four)
    manifest = read_manifest(four)
    assert images.shape == (len(manifest), 4, 32, 32) and images.dtype == np.uint16
    assert labels.shape == (len(manifest), 32, 32)
    for s in range(4):
        np.testing.assert_array_equal(images[3, s], read_png(four / manifest.images[3, s]))
    meta = json.loads((four / "cache" / "meta.json").read_text())
    assert meta["axes"] == "NSHW" and meta["sequences"] == list(FOUR)


def test_a_changed_second_sequence_rebuilds_the_cache_naming_it(four: Path) -> None:
    build_cache(four, progress=False)
    from synthseg.data.cache import stale_reason

    victim = four / read_manifest(four).images[2, 2]
    victim.unlink()
    assert stale_reason(four) == f"{victim}: changed since the cache was built"


def test_batches_have_one_channel_per_requested_sequence_normalised_each(four: Path) -> None:
    order = ("flair", "t1c")
    dm = make(four, sequences=list(order), batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 2, 32, 32)
    manifest = read_manifest(four)
    train = manifest.rows("train")
    stats = json.loads((four / "stats.json").read_text())
    for c, seq in enumerate(order):
        s = FOUR.index(seq)
        slices = [read_png(four / manifest.images[i, s]).astype(np.float64) for i in train]
        top = max(float(x.max()) for x in slices)
        mean = float(np.mean([x / top for x in slices]))
        assert dm.summary().train_max[c] == top == stats["train_max"][s]
        assert dm.summary().train_mean[c] == pytest.approx(mean, rel=1e-9)
        raw = read_png(four / manifest.images[0, s]).astype(np.float32)
        np.testing.assert_allclose(dm.train_set[0]["image"][c].numpy(), raw / top - mean, atol=1e-6)
    assert dm.summary().sequences == order and dm.stats["train_max"] == list(dm.summary().train_max)
    # the channels differ: FLAIR's CSF is dark where T1c's is not
    assert not np.allclose(dm.train_set[0]["image"][0].numpy(), dm.train_set[0]["image"][1].numpy())


def test_one_sequence_of_a_four_sequence_dataset_equals_a_t1c_only_dataset(
    four: Path, tmp_path: Path
) -> None:
    t1c = write_dataset(tmp_path / "t1c")  # same seed: the same T1c slices and labels
    a, b = make(four, batch_size=4, seed=3), make(t1c, batch_size=4, seed=3)
    assert a.summary().train_max == b.summary().train_max and a.summary().sequences == ("t1c",)
    batch_a, batch_b = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert batch_a["image"].shape == (4, 1, 32, 32)
    assert (batch_a["image"] == batch_b["image"]).all() and (batch_a["label"] == batch_b["label"]).all()


def test_a_missing_sequence_is_one_line_naming_the_dataset(four: Path, tmp_path: Path) -> None:
    t1c = write_dataset(tmp_path / "t1c")
    with pytest.raises(
        InputError, match=r"^data.root=.*t1c: the dataset holds the sequences \['t1c'\], not \['t2'\]"
    ):
        make(t1c, sequences=["t1c", "t2"])
    synthetic = write_dataset(tmp_path / "syn", num_slices=8, source="synthetic", sequences=("t1c", "t2"))
    with pytest.raises(InputError, match=r"^data.synthetic.root=.*syn: the dataset holds .*not \['flair'\]"):
        make(four, sequences=["t2", "flair"], synthetic={"root": str(synthetic), "count": 4})
    with pytest.raises(InputError, match=r"^data.sequences=\[T2\]: unknown sequence"):
        BraTSDataModule(str(four), sequences=["T2"])


def test_real_and_synthetic_mix_by_counts_with_the_requested_channels(four: Path, tmp_path: Path) -> None:
    synthetic = write_dataset(tmp_path / "syn", num_slices=8, source="synthetic", sequences=("t2", "t1c"))
    dm = make(four, real=6, sequences=["t1c", "t2"], synthetic={"root": str(synthetic), "count": 8})
    assert (dm.stats["num_real"], dm.stats["num_synthetic"]) == (6, 8)
    item = dm.train_set[6]  # the first synthetic slice: channels taken in the requested order
    manifest = read_manifest(synthetic)
    raw = read_png(synthetic / manifest.images[0, 1]).astype(np.float32)  # its t1c
    top, mean = dm.summary().train_max[0], dm.summary().train_mean[0]
    np.testing.assert_allclose(item["image"][0].numpy(), raw / top - mean, atol=1e-6)


def test_augmentation_moves_every_sequence_together() -> None:
    rng = np.random.default_rng(0)
    one = rng.random((16, 16)).astype(np.float32)
    stack = np.stack([one, one * 2])
    label = (one > 0.5).astype(np.uint8)
    aug = ClassicalAugmentation(rotate_prob=1.0, elastic_prob=1.0)
    out, out_label = aug(stack, label, np.random.default_rng(5))
    single, single_label = aug(one, label, np.random.default_rng(5))
    assert out.shape == (2, 16, 16)
    np.testing.assert_allclose(out[0], single, atol=1e-6)
    np.testing.assert_allclose(out[1], 2 * single, atol=1e-5)
    assert (out_label == single_label).all()


def test_a_v1_dataset_and_a_v2_cache_from_before_sequences_still_serve(tiny_dataset: Path) -> None:
    from synthseg.data.cache import stale_reason

    stats = json.loads((tiny_dataset / "stats.json").read_text())
    assert stats["format"].endswith("/1") and "sequences" not in stats  # as every dataset written before
    cache = build_cache(tiny_dataset, progress=False)
    old = np.load(cache / "images.npy")[:, 0]  # the previous cache: (N, H, W), format /2
    np.save(cache / "images.npy", old)
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "format": "synthseg-cache/2", "axes": "NHW"}))
    assert stale_reason(tiny_dataset) == f"{cache}: built by an older version"
    images, _ = open_cache(tiny_dataset)
    assert images.shape == (len(old), 1, *old.shape[1:]) and (images[:, 0] == old).all()
    dm = make(tiny_dataset, batch_size=4)
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 1, 32, 32) and dm.summary().sequences == (
        "t1c",
    )
