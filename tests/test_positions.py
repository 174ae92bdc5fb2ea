"""Axial positions of generated masks: generate-masks draws them (real, uniform, a range) and records them in
the manifest's position column; the Z-score filter compares each mask with the reals of nearby positions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.checkpoint import save_network
from synthseg.data.manifest import (
    POSITION_COLUMN,
    dataset_stats,
    read_manifest,
    synthetic_row,
    write_manifest,
    write_stats,
)
from synthseg.data.masks import list_masks
from synthseg.data.pngio import read_png, write_label8
from synthseg.errors import InputError
from synthseg.networks.pgan import PGANGenerator
from synthseg.synth import filter as zfilter
from synthseg.synth import generate_masks as gm
from synthseg.synth.zscore_position import PositionReference, slice_span
from tests.conftest import tiny_snapshot, write_dataset


def conditional_snapshot(path: Path, size: int = 32) -> Path:
    torch.manual_seed(0)
    gen = PGANGenerator(resolution=16, latent_dim=8, fmap_base=32, fmap_max=8, condition="slice")
    with torch.no_grad():
        gen.to_rgb["b16"].weight.mul_(3.0)
    save_network(gen.eval(), path, meta={"tick": 1, "kimg": 1.0, "dataset_size": size, "resolution": 16})
    return path


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "prepared", num_slices=40, size=32)  # 8 cases of 5 slices


def generate(tmp_path: Path, checkpoint: Path, name: str, **options) -> Path:
    settings = gm.GenerateMasksSettings(
        checkpoint=str(checkpoint), count=40, output=str(tmp_path / name), progress=False, **options
    )
    return gm.run(settings)


def test_conditional_masks_record_real_positions_and_follow_them(tmp_path: Path, prepared: Path) -> None:
    snapshot = conditional_snapshot(tmp_path / "cond.pt")
    out = generate(tmp_path, snapshot, "masks", reference=str(prepared), batch_size=16)
    manifest = read_manifest(out)
    assert manifest.recorded_position is not None
    pool = gm.real_positions(prepared)
    # non-empty real training slices only (write_dataset empties every 7th slice)
    m = read_manifest(prepared)
    train = m.rows("train")
    assert len(pool) == int((~m.empty[train]).sum())
    assert set(np.round(manifest.recorded_position, 6)) <= set(np.round(pool, 6))
    assert np.array_equal(manifest.positions(), manifest.recorded_position)
    # the masks are the generator's output at the recorded positions, whatever the batch size
    again = generate(tmp_path, snapshot, "again", reference=str(prepared), batch_size=7)
    assert np.array_equal(read_manifest(again).recorded_position, manifest.recorded_position)
    gen = PGANGenerator(resolution=16, latent_dim=8, fmap_base=32, fmap_max=8, condition="slice")
    gen.load_state_dict(torch.load(snapshot, weights_only=True)["state_dict"])
    z = gm.latents(0, 0, 40, 8)
    where = torch.from_numpy(gm.mask_positions(0, 0, 40, "real", pool))
    assert torch.allclose(where, torch.from_numpy(manifest.recorded_position), atol=1e-7)
    with torch.inference_mode():
        from synthseg.data.labels import net_to_labels, resize_labels

        expected = resize_labels(net_to_labels(gen.eval()(z, 16, 1.0, where), 7), 32).numpy()
    for i in (0, 17, 39):
        assert np.array_equal(read_png(out / "labels" / f"synth_{i:06d}.png"), expected[i])
    assert [item.position for item in list_masks(out)] == pytest.approx(manifest.recorded_position.tolist())


@pytest.mark.parametrize(("positions", "lo", "hi"), [("uniform", 0.0, 1.0), ((0.2, 0.4), 0.2, 0.4)])
def test_uniform_and_range_positions(tmp_path: Path, positions, lo: float, hi: float) -> None:
    out = generate(tmp_path, conditional_snapshot(tmp_path / "cond.pt"), "masks", positions=positions)
    recorded = read_manifest(out).recorded_position
    assert recorded.min() >= lo and recorded.max() <= hi and np.unique(recorded).size == 40


def test_position_rules_are_one_line_each(tmp_path: Path, prepared: Path) -> None:
    cond = conditional_snapshot(tmp_path / "cond.pt")
    with pytest.raises(InputError, match="positions=real: .* give reference=DIR"):
        generate(tmp_path, cond, "a")
    plain = tiny_snapshot(tmp_path / "plain.pt")
    with pytest.raises(InputError, match="not slice-conditional"):
        generate(tmp_path, plain, "b", positions="uniform")
    with pytest.raises(InputError, match="positions must be"):
        gm.GenerateMasksSettings(checkpoint="x", count=1, output="y", positions=(0.5, 0.2))
    with pytest.raises(InputError, match="positions must be one of"):
        gm.GenerateMasksSettings(checkpoint="x", count=1, output="y", positions="top")
    # an unconditional generator ignores the default: no position column, as before 0.3.0
    out = generate(tmp_path, plain, "c", reference=str(prepared))
    header = (out / "manifest.csv").read_text().splitlines()[0].split(",")
    assert POSITION_COLUMN not in header
    assert read_manifest(out).recorded_position is None
    assert np.isnan(read_manifest(out).positions()).all()


# ----------------------------------------------------------------------------------------------- filter


def masks_with_positions(root: Path, masks: list[np.ndarray], positions: list[float]) -> Path:
    (root / "labels").mkdir(parents=True)
    rows = []
    for i, (mask, p) in enumerate(zip(masks, positions, strict=True)):
        write_label8(root / "labels" / f"synth_{i:06d}.png", mask)
        rows.append(
            synthetic_row(
                f"synth_{i:06d}", np.bincount(mask.ravel(), minlength=7), has_image=False, position=p
            )
        )
    write_manifest(root, rows, position=True)
    write_stats(
        root,
        dataset_stats(
            source="synthetic", size=mask.shape[0], splits={"train": len(rows)}, class_counts=np.zeros(7)
        ),
    )
    return root


def hand_norm(mask: np.ndarray, reals: np.ndarray) -> float:
    mean, std = reals.astype(np.float64).mean(0), reals.astype(np.float64).std(0)
    n = len(reals)
    std = np.where(std == 0, np.sqrt(n - 1) / n, std)
    return float(np.sqrt((((mask - mean) / std) ** 2).sum()))


def test_zscore_by_position_equals_a_hand_computation(tmp_path: Path, prepared: Path) -> None:
    m = read_manifest(prepared)
    train = m.rows("train")
    reals = np.stack([read_png(prepared / m.label[r]) for r in train])
    real_pos = m.positions()[train]
    assert slice_span(m.case, m.slice) == 4.0  # cases of slices 0..4: one slice is 0.25
    rng = np.random.default_rng(1)
    synthetic = [reals[3], reals[10], rng.integers(0, 7, (32, 32)).astype(np.uint8), reals[20]]
    positions = [0.5, 0.0, 0.75, 1.0]
    masks = masks_with_positions(tmp_path / "masks", synthetic, positions)
    settings = zfilter.FilterSettings(
        masks=str(masks), reference=str(prepared), output=str(tmp_path / "out"), reference_by="position",
        position_window=1.0, threshold_quantile=0.9, progress=False,
    )  # fmt: skip
    out = zfilter.run(settings)
    _, norms, kept = zfilter.read_norms(out)
    for mask, p, norm in zip(synthetic, positions, norms, strict=True):
        window = reals[np.abs(real_pos - p) <= 0.25 + 1e-9]  # +-1 slice of 4 steps
        assert norm == pytest.approx(hand_norm(mask, window), rel=1e-12)
    summary = zfilter.read_summary(out)
    assert summary["reference_by"] == "position" and summary["position_window_normalised"] == 0.25
    assert summary["windows_widened"] == 0
    # the real calibration norms: each real against its own window; the threshold is their 0.9 quantile
    real_norms = [
        hand_norm(r, reals[np.abs(real_pos - p) <= 0.25 + 1e-9]) for r, p in zip(reals, real_pos, strict=True)
    ]
    assert summary["threshold"] == pytest.approx(float(np.quantile(real_norms, 0.9)), rel=1e-12)
    assert kept.tolist() == [n <= summary["threshold"] for n in norms]
    # the kept masks keep their positions in the output manifest
    kept_positions = read_manifest(out).recorded_position
    assert kept_positions.tolist() == pytest.approx([p for p, k in zip(positions, kept, strict=True) if k])


def test_a_window_with_one_real_grows_to_the_nearer_neighbour() -> None:
    masks = [np.full((2, 2), v, np.uint8) for v in (1, 2, 4)]
    reference = PositionReference(zip(masks, [0.0, 0.5, 0.6], strict=True), half_width=0.05)
    window = reference.window(0.0)  # only the real at 0 lies within +-0.05; 0.5 is nearer than 0.6
    assert window.widened and (window.lo, window.hi) == (0, 2)
    stats = reference.statistics(window)
    assert stats.count == 2 and np.allclose(stats.mean, 1.5) and np.allclose(stats.std, 0.5)
    assert not reference.window(0.55).widened


def test_masks_without_positions_are_refused_by_position(tmp_path: Path, prepared: Path) -> None:
    masks = write_dataset(tmp_path / "masks", num_slices=4, size=32, source="synthetic")
    settings = zfilter.FilterSettings(
        masks=str(masks),
        reference=str(prepared),
        output=str(tmp_path / "out"),
        reference_by="position",
        progress=False,
    )
    with pytest.raises(InputError, match="has no axial position .* use reference_by=all"):
        zfilter.run(settings)


def test_manifests_without_the_column_still_load(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "old", num_slices=5, size=8, source="synthetic")
    with open(root / "manifest.csv", newline="") as handle:
        assert POSITION_COLUMN not in next(csv.reader(handle))
    assert read_manifest(root).recorded_position is None
    assert all(item.position is None for item in list_masks(root))


def test_synthesize_carries_the_positions_to_the_synthetic_dataset(tmp_path: Path, prepared: Path) -> None:
    from synthseg.synth import synthesize
    from tests.conftest import tiny_spade_snapshot

    settings = synthesize.SynthesizeSettings(
        pgan=conditional_snapshot(tmp_path / "cond.pt"), spade=tiny_spade_snapshot(tmp_path / "spade.pt"),
        reference=prepared, count=8, output=tmp_path / "synthetic", threshold=1e9, reference_by="position",
        device="cpu", progress=False, quality=False,
    )  # fmt: skip
    out = synthesize.run(settings)
    generated = read_manifest(tmp_path / "synthetic.work" / "masks").recorded_position
    final = read_manifest(out)
    assert final.recorded_position is not None and len(final) == 8
    assert final.recorded_position.tolist() == pytest.approx(generated.tolist())
    assert zfilter.read_summary(tmp_path / "synthetic.work" / "kept")["reference_by"] == "position"
