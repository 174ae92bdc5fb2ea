"""BraTSDataModule: selection by counts, class reduction, statistics, caching, and the resumable sampler."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.data.cache import build_cache, cache_is_current
from synthseg.data.datamodule import BraTSDataModule
from synthseg.data.dataset import downsample_image
from synthseg.data.labels import resize_labels
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png, write_label8
from synthseg.data.sampler import ResumableBatchSampler
from synthseg.errors import InputError


def make(root: Path, **kwargs) -> BraTSDataModule:
    dm = BraTSDataModule(str(root), **kwargs)
    dm.setup("fit")
    return dm


def test_batches_have_documented_shapes_and_reduced_classes(tiny_dataset: Path) -> None:
    for classes, top in [(7, 6), (4, 3), (2, 1)]:
        dm = make(tiny_dataset, classes=classes, batch_size=32, seed=1)
        batch = next(iter(dm.train_dataloader()))
        assert batch["image"].shape == (32, 1, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (32, 32, 32) and batch["label"].dtype == torch.int64
        assert int(batch["label"].max()) == top


def test_class_reduction_matches_png_labels(tiny_dataset: Path) -> None:
    dm = make(tiny_dataset, classes=4, batch_size=4)
    manifest = read_manifest(tiny_dataset)
    item = dm.train_set[0]
    raw = read_png(tiny_dataset / manifest.label[0])
    expected = np.where(raw >= 4, 0, raw)
    assert np.array_equal(item["label"].numpy(), expected)


def test_one_hot_labels(tiny_dataset: Path) -> None:
    dm = make(tiny_dataset, classes=7, one_hot=True)
    item = dm.train_set[0]
    assert item["label"].shape == (7, 32, 32)
    assert torch.all(item["label"].sum(0) == 1)


def test_paper_normalization_uses_training_statistics(tiny_dataset: Path) -> None:
    dm = make(tiny_dataset)
    manifest = read_manifest(tiny_dataset)
    train = [read_png(tiny_dataset / p).astype(np.float64) for p in manifest.image[manifest.split == "train"]]
    maximum = max(float(im.max()) for im in train)
    mean = float(np.mean([im / maximum for im in train]))
    assert dm.stats["train_max"] == maximum
    assert dm.stats["train_mean"] == pytest.approx(mean, rel=1e-9)
    raw = read_png(tiny_dataset / manifest.image[0]).astype(np.float32)
    assert np.allclose(dm.train_set[0]["image"][0].numpy(), raw / maximum - mean, atol=1e-6)


def test_summary_is_the_typed_contract_models_receive(tiny_dataset: Path) -> None:
    import dataclasses

    dm = make(tiny_dataset, classes=4, image_norm="tanh", reduced=True, resolution=16)
    manifest = read_manifest(tiny_dataset)
    data = dm.summary()
    assert (data.classes, data.sequences, data.image_norm, data.size, data.resolution) == (
        4,
        ("t1c",),
        "tanh",
        32,
        16,
    )
    assert data.train_max == (dm.stats["train_max"],) and data.train_mean == (dm.stats["train_mean"],)
    assert list(data.class_weights) == dm.stats["class_weights"] and len(data.class_weights) == 4
    assert list(data.real_class_weights) == dm.stats["real_class_weights"]
    considered = (manifest.split == "train") & manifest.reduced
    assert data.num_train == dm.stats["num_train"] == int(considered.sum())
    assert data.train_label_maps == int(considered.sum())
    assert data.empty_label_maps == int((considered & manifest.empty).sum())
    assert data.empty_fraction == data.empty_label_maps / data.train_label_maps
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.classes = 7  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="setup"):
        BraTSDataModule(str(tiny_dataset)).summary()


def test_test_batches_carry_the_case_id(tiny_dataset: Path) -> None:
    dm = make(tiny_dataset, batch_size=4, eval_batch_size=5)
    manifest = read_manifest(tiny_dataset)
    batch = next(iter(dm.test_dataloader()))
    rows = dm.test_set.items[batch["index"].numpy(), 1]
    assert list(batch["case"]) == [str(c) for c in manifest.case[rows]] and len(rows) > 1
    assert "case" in dm.val_set[0]


def test_counts_fractions_and_mixing(tiny_dataset: Path, tiny_synthetic: Path) -> None:
    dm = make(tiny_dataset, real=10, synthetic={"root": str(tiny_synthetic), "count": 0.25})
    # 32 real training slices: the fraction 0.25 of them is 8 synthetic slices.
    assert (dm.stats["num_real"], dm.stats["num_synthetic"], len(dm.train_set)) == (10, 8, 18)
    assert (dm.train_set.items[:10, 0] == 0).all() and (dm.train_set.items[10:, 0] == 1).all()
    # Real slices are the first training rows in manifest (shuffled) order.
    assert list(dm.train_set.items[:10, 1]) == list(range(10))
    # Class weights are computed over the mixed set (the paper), real_class_weights over real data only.
    real_only = make(tiny_dataset, real=10)
    assert dm.stats["class_weights"] != real_only.stats["class_weights"]
    assert dm.stats["real_class_weights"] == real_only.stats["real_class_weights"]
    real_stats = make(
        tiny_dataset, real=10, synthetic={"root": str(tiny_synthetic), "count": 8}, stats_from="real"
    )
    assert real_stats.stats["class_weights"] == pytest.approx(real_only.stats["class_weights"])
    assert real_stats.stats["train_max"] == real_only.stats["train_max"]


def test_synthetic_only_training_set(tiny_dataset: Path, tiny_synthetic: Path) -> None:
    dm = make(tiny_dataset, real=0, synthetic={"root": str(tiny_synthetic), "count": 20})
    assert (dm.stats["num_real"], dm.stats["num_synthetic"]) == (0, 20)


def test_reduced_and_drop_empty(tiny_dataset: Path) -> None:
    manifest = read_manifest(tiny_dataset)
    reduced = make(tiny_dataset, reduced=True)
    assert list(reduced.train_set.items[:, 1]) == list(np.flatnonzero(manifest.reduced))
    dropped = make(tiny_dataset, drop_empty=True)
    rows = dropped.train_set.items[:, 1]
    assert not manifest.empty[rows].any()
    assert len(rows) == int(((manifest.split == "train") & ~manifest.empty).sum())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 5}, "data.classes"),
        ({"resolution": 48}, "power of two"),
        ({"image_norm": "minmax"}, "image_norm"),
        ({"real": -1}, "must not be negative"),
        ({"real": 1000}, "only 32 are available"),
        ({"real": 0}, "training set is empty"),
    ],
)
def test_bad_settings_get_clear_errors(tiny_dataset: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        make(tiny_dataset, **kwargs)


def test_too_many_synthetic_slices(tiny_dataset: Path, tiny_synthetic: Path) -> None:
    with pytest.raises(InputError, match="data.synthetic.count=21 asks for 21 slices, but only 20"):
        make(tiny_dataset, synthetic={"root": str(tiny_synthetic), "count": 21})


def test_missing_root_and_missing_file(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(InputError, match="folder not found"):
        make(tmp_path / "nowhere")
    victim = tiny_dataset / read_manifest(tiny_dataset).label[3]
    victim.unlink()
    with pytest.raises(InputError, match=f"{victim}: file not found"):
        make(tiny_dataset)
    assert not (tiny_dataset / "cache").exists()  # nothing half-built left behind


def test_wrong_bit_depth_label_is_named(tiny_dataset: Path) -> None:
    victim = tiny_dataset / read_manifest(tiny_dataset).image[2]
    write_label8(victim, np.zeros((32, 32), np.uint8))  # an 8-bit file where a 16-bit image belongs
    with pytest.raises(InputError, match=f"{victim}: expected a 16-bit PNG, found 8-bit"):
        make(tiny_dataset)


def test_cache_is_reused_and_rebuilt_when_manifest_changes(tiny_dataset: Path) -> None:
    cache = build_cache(tiny_dataset, progress=False)
    stamp = (cache / "images.npy").stat().st_mtime_ns
    assert build_cache(tiny_dataset, progress=False) == cache
    assert (cache / "images.npy").stat().st_mtime_ns == stamp
    with open(tiny_dataset / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(tiny_dataset / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
    assert not cache_is_current(tiny_dataset)
    assert (
        len(np.load(build_cache(tiny_dataset, progress=False) / "images.npy", mmap_mode="r")) == len(rows) - 1
    )


def test_downsampling_majority_and_area() -> None:
    labels = np.array([[1, 1, 0, 6], [1, 0, 6, 6], [2, 3, 4, 4], [3, 2, 5, 5]], np.uint8)
    # blocks: [1,1,1,0] -> 1; [0,6,6,6] -> 6; [2,3,3,2] tie -> 3 (higher class); [4,4,5,5] tie -> 5
    assert resize_labels(labels, labels.shape[-1] // 2).tolist() == [[1, 6], [3, 5]]
    image = np.arange(16, dtype=np.uint16).reshape(4, 4)
    assert downsample_image(image, 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_resolution_option(tiny_dataset: Path) -> None:
    dm = make(tiny_dataset, resolution=8, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 8, 8) and batch["label"].shape == (4, 8, 8)
    dm.set_resolution(16)
    dm.set_batch_size(6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (6, 1, 16, 16)


def _consume(sampler: ResumableBatchSampler, n: int) -> list[list[int]]:
    out: list[list[int]] = []
    while len(out) < n:  # a finite sampler ends each epoch; iterate again for the next one
        for batch in sampler:
            sampler.mark_consumed(batch[0][2], batch[0][3])
            out.append([key[0] for key in batch])
            if len(out) == n:
                break
    return out


def test_sampler_resumes_mid_epoch_exactly() -> None:
    reference = ResumableBatchSampler(10, 3, seed=5)
    uninterrupted = _consume(reference, 4) + _consume(reference, 4)
    first = ResumableBatchSampler(10, 3, seed=5)
    part = _consume(first, 2)
    resumed = ResumableBatchSampler(10, 3, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert part + _consume(resumed, 6) == uninterrupted
    epoch0 = sorted(i for batch in uninterrupted[:4] for i in batch)
    assert epoch0 == list(range(10))  # one epoch covers every item once
    assert uninterrupted[:4] != uninterrupted[4:]  # the next epoch is a new permutation


def test_an_epoch_cut_short_is_followed_by_a_fresh_epoch() -> None:
    sampler = ResumableBatchSampler(10, 2, seed=1)
    first = _consume(sampler, 2)  # a consumer that stops after 2 of 5 batches (limit_train_batches)
    second = _consume(sampler, 5)
    assert sorted(i for b in second for i in b) == list(range(10))  # a whole epoch, not the rest of one
    assert second[:2] != first


def test_endless_sampler_crosses_epochs_with_full_batches() -> None:
    sampler = ResumableBatchSampler(5, 4, seed=0, endless=True)
    batches = _consume(sampler, 5)
    assert all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    with pytest.raises(TypeError):
        len(sampler)
    small = ResumableBatchSampler(3, 8, seed=0, endless=True)  # fewer items than one batch
    batches = _consume(small, 3)
    assert [len(b) for b in batches] == [8, 8, 8]
    flat = [i for b in batches for i in b]
    assert all(sorted(flat[k : k + 3]) == [0, 1, 2] for k in range(0, 24, 3))  # whole epochs, in order


def test_sampler_shards_global_batches_over_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    single = _consume(ResumableBatchSampler(12, 4, seed=3), 3)
    shards = []
    for rank in range(2):
        monkeypatch.setattr(ResumableBatchSampler, "_rank_world", staticmethod(lambda r=rank: (r, 2)))
        shards.append(_consume(ResumableBatchSampler(12, 4, seed=3), 3))
    for whole, a, b in zip(single, *shards, strict=True):
        assert sorted(a + b) == sorted(whole) and len(a) == len(b) == 2


def test_zscore_normalises_each_channel_over_its_brain_pixels_and_zeroes_the_rest() -> None:
    from synthseg.data.dataset import zscore_brain

    image = np.zeros((2, 4, 4), np.float32)
    image[0, :2, :2] = [[1, 3], [5, 7]]  # mean 4, population std sqrt(5)
    image[1, 3, :] = [10, 10, 10, 10]  # constant brain: std 0, floored, so (x - mean) / floor = 0
    out = zscore_brain(image)
    assert out.dtype == np.float32
    expected = (np.array([[1, 3], [5, 7]]) - 4) / np.sqrt(5)
    assert np.allclose(out[0, :2, :2], expected)
    assert np.all(out[0][image[0] == 0] == 0) and np.all(out[1] == 0)
    assert np.all(zscore_brain(np.zeros((1, 3, 3), np.float32)) == 0)  # a slice without brain stays 0


def test_zscore_datamodule_serves_zero_mean_unit_std_brains(tiny_dataset: Path) -> None:
    dm = make(tiny_dataset, classes=7, batch_size=4, image_norm="zscore")
    item = next(i for i in (dm.train_set[k] for k in range(len(dm.train_set))) if (i["image"] != 0).sum() > 8)
    brain = item["image"] != 0
    assert abs(float(item["image"][brain].mean())) < 1e-4
    assert abs(float(item["image"][brain].std(unbiased=False)) - 1) < 1e-3


@pytest.mark.parametrize("image_norm", ["paper", "zscore", "raw"])
def test_memoised_resized_slices_serve_exactly_what_a_fresh_read_does(tiny_dataset: Path, image_norm) -> None:
    dm = make(tiny_dataset, classes=4, batch_size=4, resolution=8, image_norm=image_norm)
    fresh = make(tiny_dataset, classes=4, batch_size=4, resolution=8, image_norm=image_norm)
    fresh.train_set._memo = None  # the uncached path
    assert dm.train_set._memo == {} and dm.val_set._memo == {}
    for _ in range(2):  # the second pass is served from the memo
        for k in range(len(dm.train_set)):
            a, b = dm.train_set[k], fresh.train_set[k]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert len(dm.train_set._memo) == len(dm.train_set)
    dm.train_set[0]["image"].add_(1.0)  # a consumer writing into a batch does not reach the memo
    assert torch.equal(dm.train_set[0]["image"], fresh.train_set[0]["image"])
    # a smaller per-sample resolution (PGAN's growing stages) is memoised per (slice, side) and served as read
    for _ in range(2):
        a, b = dm.train_set[(1, 4)], fresh.train_set[(1, 4)]
        assert a["image"].shape[-1] == 4 and a["label"].shape[-1] == 4
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert (1, 4) in dm.train_set._memo and (1, 8) in dm.train_set._memo


def test_no_memo_with_augmentation_native_size_or_over_the_byte_cap(tiny_dataset: Path) -> None:
    assert make(tiny_dataset, classes=4, resolution=8, augment=True).train_set._memo is None
    assert make(tiny_dataset, classes=4).train_set._memo is None  # native size: nothing to resize
    from synthseg.data.dataset import SliceDataset

    ds = make(tiny_dataset, classes=4, resolution=8).train_set
    small = SliceDataset(
        ds.sources,
        ds.items,
        classes=4,
        image_norm="paper",
        train_max=1.0,
        train_mean=0.0,
        resolution=8,
        memo_bytes=10,
    )
    assert small._memo is None


@pytest.mark.parametrize("factor", [2, 4, 8, 64])
def test_majority_vote_equals_a_per_block_count_with_ties_to_the_higher_class(factor: int) -> None:
    rng = np.random.default_rng(factor)
    labels = rng.integers(0, 7, (3, 64, 64)).astype(np.uint8)
    labels[:, :32] = rng.integers(0, 2, (3, 32, 64))  # two classes: many tied blocks
    out = resize_labels(labels, 64 // factor)
    assert out.dtype == np.uint8 and out.shape == (3, 64 // factor, 64 // factor)
    for n, i, j in np.ndindex(out.shape):
        block = labels[n, i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
        counts = np.bincount(block.ravel(), minlength=7)
        assert out[n, i, j] == np.flatnonzero(counts == counts.max()).max()
    assert torch.equal(resize_labels(torch.from_numpy(labels), 8), torch.from_numpy(resize_labels(labels, 8)))


def test_majority_vote_refuses_a_label_outside_the_classes() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[3, 3] = 7
    with pytest.raises(ValueError, match=r"0\.\.6, found 0\.\.7"):
        resize_labels(labels, 4)


def test_majority_vote_in_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthseg.data import labels as labels_module

    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 7, (5, 16, 16)).astype(np.uint8))
    whole = resize_labels(labels, 4)
    monkeypatch.setattr(labels_module, "_VOTE_PIXELS", 2 * 16 * 16)  # chunks of 2, 2 and 1 slices
    assert torch.equal(resize_labels(labels, 4), whole)


def test_dataloader_workers_do_not_memoise(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthseg.data import dataset as dataset_module

    dm = make(tiny_dataset, classes=4, resolution=8)
    monkeypatch.setattr(dataset_module, "get_worker_info", lambda: object())  # as inside a worker process
    dm.train_set[0]
    assert dm.train_set._memo == {}
    monkeypatch.setattr(dataset_module, "get_worker_info", lambda: None)
    dm.train_set[0]
    assert list(dm.train_set._memo) == [(0, 8)]
