"""Sliced Wasserstein distance: agreement with a plain reference, statistical behaviour, and the command."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import scipy.ndimage
import torch

from synthseg.cli import main as cli_main
from synthseg.data.pngio import write_image16, write_label8
from synthseg.metrics.sliced_wasserstein import (
    STREAM_A,
    STREAM_B,
    STREAM_DIRECTIONS,
    SWDAccumulator,
    draw_directions,
    draw_positions,
    labels_to_uint8,
    laplacian_pyramid,
    level_resolutions,
    make_generator,
    sliced_wasserstein,
    sliced_wasserstein_descriptors,
)

# --------------------------------------------------------------------------- a slow, plain reference
# Written from the description of the official algorithm: scipy convolutions for the pyramid, Python loops
# for the neighbourhoods and the projections, grayscale tiled to 3 channels before anything else.

GAUSS = (np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0).astype(np.float32)[None, None]


def ref_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    pyramid = [images.astype(np.float32)]
    for _ in range(1, levels):
        down = scipy.ndimage.convolve(pyramid[-1], GAUSS, mode="mirror")[:, :, ::2, ::2]
        n, c, h, w = down.shape
        up = np.zeros((n, c, 2 * h, 2 * w), np.float32)
        up[:, :, ::2, ::2] = down
        pyramid[-1] = pyramid[-1] - scipy.ndimage.convolve(up, GAUSS * 4.0, mode="mirror")
        pyramid.append(down)
    return pyramid


def ref_descriptors(level: np.ndarray, positions: np.ndarray) -> np.ndarray:
    out = []
    for i in range(level.shape[0]):
        for x, y in positions[i]:
            out.append(level[i, :, int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4])
    desc = np.stack(out).astype(np.float64)
    for c in range(desc.shape[1]):
        desc[:, c] = (desc[:, c] - desc[:, c].mean()) / desc[:, c].std()
    return desc.reshape(desc.shape[0], -1)


def ref_swd(a: np.ndarray, b: np.ndarray, dirs_per_repeat: list[np.ndarray]) -> float:
    repeats = []
    for dirs in dirs_per_repeat:
        dists = []
        for j in range(dirs.shape[1]):
            pa = np.sort(a @ dirs[:, j])
            pb = np.sort(b @ dirs[:, j])
            dists.append(np.mean(np.abs(pa - pb)))
        repeats.append(np.mean(dists))
    return float(np.mean(repeats)) * 1000.0


def reference(
    a: np.ndarray, b: np.ndarray, *, seed: int, per_image: int, directions: int, repeats: int, min_res: int
) -> dict[str, float]:
    """The reference on the same random draws (each level's positions from its own stream, in one draw)."""
    resolutions = level_resolutions(a.shape[2], min_res)
    descs = []
    for stream, images in ((STREAM_A, a), (STREAM_B, b)):
        images = np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images
        levels = ref_pyramid(images, len(resolutions))
        descs.append(
            [
                ref_descriptors(
                    level,
                    draw_positions(
                        make_generator(seed, stream, k), len(images), per_image, *level.shape[-2:]
                    ),
                )
                for k, level in enumerate(levels)
            ]
        )
    gen = make_generator(seed, STREAM_DIRECTIONS)
    out = {}
    for k, res in enumerate(resolutions):
        dirs = [draw_directions(gen, directions).reshape(147, -1).double().numpy() for _ in range(repeats)]
        out[str(res)] = ref_swd(descs[0][k], descs[1][k], dirs)
    out["avg"] = float(np.mean([out[str(r)] for r in resolutions]))
    return out


# --------------------------------------------------------------------------------- synthetic label maps


def label_maps(n: int, size: int, sigma: float, seed: int) -> torch.Tensor:
    """(n, 1, size, size) int64 label maps 0..6: smooth random fields cut into 7 bands; sigma sets the scale."""
    rng = np.random.default_rng(seed)
    field = scipy.ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, sigma, sigma))
    field /= field.std(axis=(1, 2), keepdims=True)
    classes = np.digitize(field, [-1.2, -0.7, -0.25, 0.25, 0.7, 1.2])
    return torch.from_numpy(classes[:, None]).long()


# ------------------------------------------------------------------------------------------------ tests


def test_labels_to_uint8_follows_the_official_float32_mapping():
    # Official: dynamic range [0, 6] -> [-1, 1] in float32, then x * 127.5 + 127.5, round half even, clip.
    k = np.arange(7, dtype=np.float32)
    scale = np.float32(2.0) / np.float32(6.0)
    x = k * scale + np.float32(-1.0)
    expected = np.clip(np.rint(x * np.float32(127.5) + np.float32(127.5)), 0, 255)
    got = labels_to_uint8(torch.arange(7).view(1, 7))
    assert got.dtype == torch.uint8
    assert got.flatten().tolist() == expected.astype(int).tolist()
    assert np.all(np.abs(got.flatten().numpy() - k * 42.5) <= 0.5)
    assert labels_to_uint8(torch.tensor([[6.0, 0.0]])).tolist() == [[255, 0]]


@pytest.mark.parametrize("bad", [torch.tensor([7]), torch.tensor([-1]), torch.tensor([1.5])])
def test_labels_to_uint8_rejects_non_class_values(bad):
    with pytest.raises(ValueError):
        labels_to_uint8(bad)


def test_laplacian_pyramid_matches_scipy_and_collapses_back():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 3, 32, 48)).astype(np.float32)
    ours = laplacian_pyramid(torch.from_numpy(images), 3)
    ref = ref_pyramid(images, 3)
    assert [tuple(level.shape) for level in ours] == [(2, 3, 32, 48), (2, 3, 16, 24), (2, 3, 8, 12)]
    for mine, theirs in zip(ours, ref, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs, atol=2e-3)
    # Collapsing a Laplacian pyramid (upsample, add the detail) must give the image back.
    from synthseg.metrics.sliced_wasserstein import pyr_up

    image = ours[-1]
    for detail in reversed(ours[:-1]):
        image = pyr_up(image) + detail
    np.testing.assert_allclose(image.numpy(), images, atol=2e-3)


@pytest.mark.parametrize(
    ("channels", "size", "min_res", "batch_size"),
    [(1, 32, 16, 2), (3, 32, 8, 5), (1, 64, 16, 64)],
)
def test_vectorised_agrees_with_plain_reference(channels, size, min_res, batch_size):
    rng = np.random.default_rng(channels + size)
    a = rng.integers(0, 256, (5, channels, size, size)).astype(np.uint8)
    b = np.clip(a.astype(int) // 2 + rng.integers(0, 60, a.shape), 0, 255).astype(np.uint8)
    kwargs = {"per_image": 12, "directions": 9, "repeats": 2, "min_res": min_res}
    expected = reference(a, b, seed=7, **kwargs)
    # batch_size smaller than the set also checks that batching does not change the draws.
    got = sliced_wasserstein(
        torch.from_numpy(a),
        torch.from_numpy(b),
        seed=7,
        descriptors_per_image=12,
        directions=9,
        repeats=2,
        min_resolution=min_res,
        batch_size=batch_size,
    )
    assert list(got) == [str(r) for r in level_resolutions(size, min_res)] + ["avg"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key
    assert got["avg"] > 1.0  # the sets differ: a vacuous agreement at 0 would not count


def test_same_descriptors_give_zero_and_same_images_give_a_small_floor():
    x = labels_to_uint8(label_maps(32, 32, 2.0, seed=0))
    acc = SWDAccumulator(seed=3, descriptors_per_image=64)
    acc.update(x)
    desc = acc.finalize()
    same = sliced_wasserstein_descriptors(desc, desc, acc.resolutions, directions=32)
    assert all(value == 0.0 for value in same.values())
    # The two sets draw their neighbourhoods independently, so the same images give the sampling floor.
    floor = sliced_wasserstein(x, x, descriptors_per_image=64, directions=32)
    assert 0.0 < floor["avg"]


def test_independent_draws_sit_at_a_floor_and_different_sets_clearly_above():
    kwargs = {"descriptors_per_image": 64, "directions": 64, "repeats": 2}
    a1 = labels_to_uint8(label_maps(48, 64, 3.0, seed=1))
    a2 = labels_to_uint8(label_maps(48, 64, 3.0, seed=2))
    coarse = labels_to_uint8(label_maps(48, 64, 6.0, seed=3))
    floor = sliced_wasserstein(a1, a2, **kwargs)
    self_floor = sliced_wasserstein(a1, a1, **kwargs)
    apart = sliced_wasserstein(a1, coarse, **kwargs)
    assert floor["avg"] < 2.0 * self_floor["avg"]
    assert apart["avg"] > 2.5 * floor["avg"]
    assert all(apart[key] > 1.5 * floor[key] for key in ("64", "32", "16"))


def test_streaming_accumulators_give_the_one_call_result():
    a = labels_to_uint8(label_maps(7, 32, 2.0, seed=15))
    b = labels_to_uint8(label_maps(7, 32, 3.0, seed=16))
    kwargs = {"directions": 16, "repeats": 2}
    accs = []
    for stream, images, sizes in ((STREAM_A, a, (3, 4)), (STREAM_B, b, (1, 5, 1))):
        acc = SWDAccumulator(seed=4, stream=stream, descriptors_per_image=16)
        for part in torch.split(images, list(sizes)):
            acc.update(part)
        accs.append(acc)
    assert accs[0].num_images == 7 and accs[0].resolutions == [32, 16]
    streamed = sliced_wasserstein_descriptors(
        accs[0].finalize(), accs[1].finalize(), accs[0].resolutions, seed=4, **kwargs
    )
    assert streamed == sliced_wasserstein(a, b, seed=4, descriptors_per_image=16, **kwargs)


def test_seed_makes_it_repeatable_and_matters():
    a = labels_to_uint8(label_maps(8, 32, 2.0, seed=4))
    b = labels_to_uint8(label_maps(8, 32, 2.0, seed=5))
    kwargs = {"descriptors_per_image": 16, "directions": 16, "repeats": 1}
    assert sliced_wasserstein(a, b, seed=1, **kwargs) == sliced_wasserstein(a, b, seed=1, **kwargs)
    assert sliced_wasserstein(a, b, seed=1, **kwargs) != sliced_wasserstein(a, b, seed=2, **kwargs)


def test_per_set_normalisation_makes_a_gain_and_offset_irrelevant():
    a = labels_to_uint8(label_maps(8, 32, 2.0, seed=6)).float()
    b = labels_to_uint8(label_maps(8, 32, 2.0, seed=7)).float()
    kwargs = {"descriptors_per_image": 16, "directions": 16, "repeats": 1}
    plain = sliced_wasserstein(a, b, **kwargs)
    scaled = sliced_wasserstein(a * 37.0 + 500.0, b, **kwargs)
    for key in plain:
        assert scaled[key] == pytest.approx(plain[key], rel=1e-3)


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [
        ((4, 1, 32, 32), (5, 1, 32, 32)),
        ((4, 1, 32, 32), (4, 1, 64, 64)),
        ((4, 2, 32, 32), (4, 2, 32, 32)),
        ((4, 1, 8, 8), (4, 1, 8, 8)),
        ((4, 1, 33, 33), (4, 1, 33, 33)),  # 33 does not halve
        ((4, 1, 64, 16), (4, 1, 64, 16)),  # too narrow for the levels its height implies
        ((4, 32, 32), (4, 32, 32)),
    ],
)
def test_impossible_inputs_raise(shape_a, shape_b):
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.zeros(shape_a), torch.zeros(shape_b))


# ------------------------------------------------------------------------------------------ the command


def _write_labels(folder, maps: torch.Tensor, prefix: str = "m") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, m in enumerate(maps[:, 0].numpy().astype(np.uint8)):
        write_label8(folder / f"{prefix}_{i:03d}.png", m)
        names.append(f"{prefix}_{i:03d}.png")
    return names


def _run_cli(monkeypatch, capsys, *overrides: str):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli_main(["swd", "progress=false", "descriptors_per_image=16", "directions=16", "repeats=1", *overrides])
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_cli_prints_json_on_its_last_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_labels(tmp_path / "a", label_maps(6, 32, 2.0, seed=8))
    _write_labels(tmp_path / "b", label_maps(9, 32, 4.0, seed=9))
    result = _run_cli(monkeypatch, capsys, f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}")
    assert list(result) == ["32", "16", "avg"]
    assert result["avg"] == pytest.approx((result["32"] + result["16"]) / 2, rel=1e-5)
    assert result["avg"] > 0


def test_cli_reads_the_training_labels_of_a_prepared_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "prepared"
    train = _write_labels(root / "labels", label_maps(6, 32, 2.0, seed=10), prefix="train")
    # Validation labels that are not label maps at all: reading them would be an error.
    val = _write_labels(root / "labels", label_maps(3, 32, 2.0, seed=11) + 100, prefix="val")
    (root / "images").mkdir()
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "split", "image", "label"])
        for split, names in (("train", train), ("val", val)):
            for name in names:
                writer.writerow([name[:-4], split, f"images/{name}", f"labels/{name}"])
    result = _run_cli(monkeypatch, capsys, f"a={root}", f"b={root}", "seed=1")
    assert set(result) == {"32", "16", "avg"}
    # The same folder with the official pairing of independent draws: a small but non-zero floor.
    assert result["avg"] > 0


def test_cli_compares_16_bit_images(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(12)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            write_image16(tmp_path / name / f"{i}.png", rng.integers(0, 4096, (32, 32)).astype(np.uint16))
    result = _run_cli(monkeypatch, capsys, f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "num_images=3")
    assert set(result) == {"32", "16", "avg"}


def test_cli_bad_input_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_labels(tmp_path / "a", label_maps(2, 32, 2.0, seed=13))
    _write_labels(tmp_path / "b", label_maps(2, 32, 2.0, seed=14) + 50)  # 8-bit, but not classes 0..6
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["swd", "progress=false", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not a 7-class label map" in err and "Traceback" not in err


def test_cli_without_a_folder_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["swd", f"b={tmp_path}"])
    assert exit_info.value.code == 2
    assert "a=DIR is required" in capsys.readouterr().err
