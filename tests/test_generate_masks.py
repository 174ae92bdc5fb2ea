"""``synthseg select`` and ``synthseg generate-masks``: best snapshot by SWD, mask files, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from synthseg.checkpoint import CheckpointError, network_entry, save_network
from synthseg.cli import run as cli_run
from synthseg.data.labels import net_to_labels
from synthseg.data.manifest import read_manifest, read_provenance
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.synth import generate_masks, select
from synthseg.synth.generate_masks import (
    LATENT_BLOCK,
    GenerateMasksSettings,
    latents,
    load_mask_generator,
    remove_islands,
)
from synthseg.synth.select import SelectSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def run_masks(checkpoint: Path, count: int, output: Path, **options: Any) -> dict[str, Any]:
    """generate-masks from Python: its settings object and run; the provenance it wrote (prepare.json)."""
    settings = GenerateMasksSettings(checkpoint=checkpoint, count=count, output=output, **options)
    return read_provenance(generate_masks.run(settings)) or {}


def run_select(run: Path, **options: Any) -> dict[str, Any]:
    return select.run(SelectSettings(run=run, **options))


def tiny_generator(seed: int = 0) -> PGANGenerator:
    torch.manual_seed(seed)
    gen = PGANGenerator(resolution=16, latent_dim=8, fmap_base=32, fmap_max=8)
    with torch.no_grad():  # spread the outputs over all classes
        gen.to_rgb["b16"].bias.fill_(0.0)
        gen.to_rgb["b16"].weight.mul_(3.0)
    return gen.eval()


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "snap.pt"
    save_network(tiny_generator(), path, meta={"tick": 3, "kimg": 1.5, "dataset_size": 32, "resolution": 16})
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "labels").glob("*.png"))}


def test_masks_have_the_prepared_label_properties_and_a_consistent_manifest(snapshot: Path, tmp_path: Path):
    out = tmp_path / "masks"
    info = run_masks(snapshot, 10, out, batch_size=4, progress=False)
    files = sorted((out / "labels").glob("*.png"))
    assert [p.stem for p in files] == [f"synth_{i:06d}" for i in range(10)]
    manifest = read_manifest(out)
    assert list(manifest.ids) == [p.stem for p in files]
    assert set(manifest.source) == {"synthetic"} and set(manifest.split) == {"train"}
    total = np.zeros(7, np.int64)
    for i, path in enumerate(files):
        mask = read_png(path, bitdepth=8, shape=(32, 32))  # upsampled to the training data's 32x32
        assert mask.dtype == np.uint8 and mask.max() <= 6
        # Nearest upsampling from 16x16: every 2x2 block holds one value.
        assert np.array_equal(mask, np.repeat(np.repeat(mask[::2, ::2], 2, 0), 2, 1))
        counts = np.bincount(mask.ravel(), minlength=7)
        assert manifest.counts[i].tolist() == counts.tolist()
        assert manifest.empty[i] == (counts[1:].sum() == 0)
        total += counts
    assert len(np.flatnonzero(total)) >= 3  # the masks are not constant
    stats = json.loads((out / "stats.json").read_text())
    assert stats["class_counts"] == total.tolist() and stats["size"] == 32 and stats["num_slices"] == 10
    provenance = json.loads((out / "prepare.json").read_text())
    assert provenance["tick"] == 3 and provenance["kimg"] == 1.5 and provenance["seed"] == 0
    assert info["count"] == 10 and info["size"] == 32


def test_masks_equal_the_generator_output_for_the_documented_latents(snapshot: Path, tmp_path: Path):
    run_masks(snapshot, 3, tmp_path / "m", size=16, progress=False)
    with torch.no_grad():
        expected = net_to_labels(tiny_generator()(latents(0, 0, 3, 8)), 7).numpy()
    for i in range(3):
        assert np.array_equal(read_png(tmp_path / "m" / "labels" / f"synth_{i:06d}.png"), expected[i])


def test_autocast_generation_is_recorded_and_moves_labels_by_at_most_one_class(
    snapshot: Path, tmp_path: Path
):
    info = run_masks(snapshot, 6, tmp_path / "bf16", size=16, autocast="bf16", progress=False)
    assert info["autocast"] == "bf16"
    with torch.no_grad():
        values = tiny_generator()(latents(0, 0, 6, 8))
    exact = net_to_labels(values, 7).numpy().astype(int)
    mixed = np.stack([read_png(tmp_path / "bf16" / "labels" / f"synth_{i:06d}.png") for i in range(6)])
    # bf16 keeps 8 bits of mantissa: a pixel changes class only by rounding across the nearest boundary.
    assert np.abs(mixed.astype(int) - exact).max() <= 1
    assert (mixed == exact).mean() > 0.5


def test_same_seed_same_masks_whatever_the_batch_size(snapshot: Path, tmp_path: Path):
    run_masks(snapshot, 9, tmp_path / "a", batch_size=2, progress=False)
    run_masks(snapshot, 9, tmp_path / "b", batch_size=9, progress=False)
    run_masks(snapshot, 9, tmp_path / "c", batch_size=4, seed=1, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_latents_do_not_depend_on_how_they_are_split():
    whole = latents(5, 0, 2 * LATENT_BLOCK + 10, 4)
    parts = torch.cat(
        [
            latents(5, 0, 700, 4),
            latents(5, 700, LATENT_BLOCK + 3, 4),
            latents(5, LATENT_BLOCK + 3, 2 * LATENT_BLOCK + 10, 4),
        ]
    )
    assert torch.equal(whole, parts)
    assert not torch.equal(latents(6, 0, 10, 4), whole[:10])


def test_full_training_checkpoint_gives_the_ema_generator(tmp_path: Path):
    ema = tiny_generator(seed=1)
    live = tiny_generator(seed=2)
    state = {f"generator_ema.{k}": v for k, v in ema.state_dict().items()}
    state.update({f"generator.{k}": v for k, v in live.state_dict().items()})
    path = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": state, "pgan": {"generator_init_args": ema.init_args, "images_seen": 4000, "tick": 2}},
        path,
    )
    net, meta = load_mask_generator(path)
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(z), ema(z))
    assert meta["kimg"] == 4.0 and meta["tick"] == 2


def _run_folder(tmp_path: Path, rows: list[tuple[int, float, float | str, bool]]) -> Path:
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    with open(run / "swd.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tick", "kimg", "resolution", "alpha", "snapshot", "swd_16", "swd_avg"])
        for tick, kimg, swd, exists in rows:
            snap = f"snapshots/network-snapshot-{int(kimg):06d}.pt"
            writer.writerow([tick, kimg, 16, 1.0, snap, swd, swd])
            if exists:
                save_network(tiny_generator(seed=tick), run / snap, meta={"tick": tick, "kimg": kimg})
    return run


def test_select_picks_lowest_average_swd_among_existing_snapshots(tmp_path: Path):
    run = _run_folder(
        tmp_path,
        [
            (1, 40.0, 9.5, True),
            (2, 80.0, 3.2, False),
            (3, 120.0, 4.1, True),
            (4, 160.0, "nan", True),
            (5, 200.0, 4.7, True),
        ],
    )
    best = run_select(run)
    # Tick 2 is lower but its snapshot is gone; tick 4 has no finite value.
    assert (best["tick"], best["kimg"], best["swd_avg"]) == (3, 120.0, 4.1)
    assert best["snapshot"].endswith("network-snapshot-000120.pt") and best["ticks_scored"] == 3
    assert best["swd"] == {"16": 4.1}
    assert run_select(tmp_path)["tick"] == 3  # a folder above the run works too


def test_select_prefers_full_resolution_snapshots(tmp_path: Path):
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    rows = [(1, 8, 1.0, 1.5), (2, 16, 0.5, 2.0), (3, 16, 1.0, 6.0), (4, 16, 1.0, 5.0)]
    with open(run / "swd.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tick", "kimg", "resolution", "alpha", "snapshot", "swd_avg"])
        for tick, resolution, alpha, swd in rows:
            snap = f"snapshots/network-snapshot-{tick:06d}.pt"
            writer.writerow([tick, tick, resolution, alpha, snap, swd])
            save_network(tiny_generator(seed=tick), run / snap)
    # Ticks 1 (8x8) and 2 (still fading in) score lower but make upsampled masks.
    assert run_select(run, full_resolution_only=True)["tick"] == 4
    # The default, as the paper: the lowest SWD among all saved ticks.
    assert run_select(run)["tick"] == 1


def test_run_folder_as_checkpoint_uses_the_selected_snapshot(tmp_path: Path):
    run = _run_folder(tmp_path, [(1, 40.0, 5.0, True), (2, 80.0, 2.0, True)])
    net, meta = load_mask_generator(run)
    assert meta["selected"]["tick"] == 2 and meta["kimg"] == 80.0
    z = torch.randn(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(z), tiny_generator(seed=2)(z))


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda s, t: run_masks(s, 0, t / "x", progress=False), InputError),
        (lambda s, t: run_masks(s, 2, t, progress=False), InputError),  # exists, no overwrite
        (lambda s, t: run_masks(s, 2, t / "x", size=12, progress=False), InputError),
        (lambda s, t: run_masks(s, 2, t / "x", device="tpu:9", progress=False), InputError),
        (lambda s, t: run_masks(s, 2, t / "x", autocast="fp8", progress=False), InputError),
        (lambda s, t: run_masks(t / "missing.pt", 2, t / "x", progress=False), InputError),
        (lambda s, t: run_select(t / "nowhere"), InputError),
        (lambda s, t: run_select(t), InputError),  # no swd.csv below
    ],
)
def test_bad_input_is_one_clear_error(snapshot: Path, tmp_path: Path, call, error):
    with pytest.raises(error):
        call(snapshot, tmp_path)


def test_snapshot_of_another_network_is_refused(tmp_path: Path):
    path = tmp_path / "disc.pt"
    save_network(PGANDiscriminator(resolution=8, fmap_base=16, fmap_max=4), path)
    with pytest.raises(CheckpointError, match="not a PGAN generator"):
        load_mask_generator(path)


def test_commands_from_the_command_line(snapshot: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path, [(1, 40.0, 5.0, True), (2, 80.0, 2.5, True)])
    cli_run("select", [f"run={run}"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["tick"], result["kimg"], result["swd_avg"]) == (2, 80.0, 2.5)
    cli_run(
        "generate-masks", [f"checkpoint={run}", "count=5", f"output={tmp_path / 'out'}", "progress=false"]
    )
    assert len(list((tmp_path / "out" / "labels").glob("*.png"))) == 5
    with pytest.raises(SystemExit) as stop:
        cli_run("generate-masks", [f"checkpoint={run}", "count=5", f"output={tmp_path / 'out'}"])
    assert stop.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_snapshot_of_an_early_stage_runs_at_that_stage(tmp_path: Path):
    gen = tiny_generator()
    save_network(gen, tmp_path / "early.pt", meta={"resolution": 8, "alpha": 0.5, "dataset_size": 16})
    run_masks(tmp_path / "early.pt", 2, tmp_path / "m", progress=False)
    with torch.no_grad():
        coarse = net_to_labels(gen(latents(0, 0, 2, 8), 8, 0.5), 7).numpy()
    for i in range(2):
        mask = read_png(tmp_path / "m" / "labels" / f"synth_{i:06d}.png", shape=(16, 16))
        assert np.array_equal(mask, np.repeat(np.repeat(coarse[i], 2, 0), 2, 1))


def test_full_checkpoint_runs_at_the_stage_of_its_schedule(tmp_path: Path):
    ema = tiny_generator()
    path = tmp_path / "mid.ckpt"
    hparams = {"initial_resolution": 4, "stable_kimg": 1.0, "transition_kimg": 1.0}
    state = {f"generator_ema.{k}": v for k, v in ema.state_dict().items()}
    # 2,500 images into a schedule of 1 + 1 kimg: 8x8 is stable (2,000..3,000), 16x16 not started.
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": hparams,
            "pgan": {
                "generator_init_args": ema.init_args,
                "images_seen": 2500,
                "tick": 5,
                "dataset_size": 64,
            },
        },
        path,
    )
    _, meta = load_mask_generator(path)
    assert (meta["resolution"], meta["alpha"], meta["kimg"], meta["dataset_size"]) == (8, 1.0, 2.5, 64)


def test_full_checkpoint_runs_at_its_recorded_stage(tmp_path: Path):
    ema = tiny_generator()
    path = tmp_path / "recorded.ckpt"
    state = {f"generator_ema.{k}": v for k, v in ema.state_dict().items()}
    # The schedule would say 8x8 stable at 2,500 images; the recorded stage (what 0.2.0 writes) wins.
    recorded = {"tick": 5, "kimg": 2.5, "resolution": 16, "alpha": 0.25, "dataset_size": 64}
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {"initial_resolution": 4, "stable_kimg": 1.0, "transition_kimg": 1.0},
            "pgan": {"images_seen": 2500, "tick": 5, "generator": network_entry(ema, meta=recorded)},
        },
        path,
    )
    _, meta = load_mask_generator(path)
    assert (meta["resolution"], meta["alpha"], meta["kimg"], meta["dataset_size"]) == (16, 0.25, 2.5, 64)


def test_remove_islands_clears_small_islands_only():
    masks = np.zeros((2, 12, 12), np.uint8)
    masks[0, 4:8, 4:8] = 4  # 16 px: kept
    masks[0, 8, 8] = 1  # touches the block diagonally: part of its island, kept
    masks[0, 0, 0] = 6  # 1 px corner speckle: removed
    masks[0, 0, 10:12] = [1, 2]  # 2 px, two classes, one island: removed
    masks[1, 0:3, 0:3] = 3  # 9 px in the second mask: kept (islands never join across masks)
    masks[1, 11, 11] = 5  # 1 px: removed
    cleaned, removed = remove_islands(masks, 8)
    expected = masks.copy()
    expected[0, 0, 0] = 0
    expected[0, 0, 10:12] = 0
    expected[1, 11, 11] = 0
    assert np.array_equal(cleaned, expected) and removed == 4
    assert masks[0, 0, 0] == 6  # the input is not changed in place
    same, none = remove_islands(masks, 0)
    assert same is masks and none == 0
    assert remove_islands(masks, 17)[0][0, 5, 5] == 4  # the 17 px island is kept at 17
    assert not remove_islands(masks, 18)[0][0].any()  # and removed at 18


def test_generated_masks_can_be_cleared_of_islands(snapshot: Path, tmp_path: Path):
    run_masks(snapshot, 6, tmp_path / "raw", size=16, progress=False)
    info = run_masks(snapshot, 6, tmp_path / "clean", size=16, min_island=5, progress=False)
    raw = np.stack([read_png(p) for p in sorted((tmp_path / "raw" / "labels").glob("*.png"))])
    clean = np.stack([read_png(p) for p in sorted((tmp_path / "clean" / "labels").glob("*.png"))])
    expected, removed = remove_islands(raw, 5)
    assert removed > 0 and np.array_equal(clean, expected)
    provenance = json.loads((tmp_path / "clean" / "prepare.json").read_text())
    assert (
        provenance["min_island"] == 5
        and provenance["island_pixels_removed"] == removed == info["island_pixels_removed"]
    )
    counts = read_manifest(tmp_path / "clean").counts
    assert counts.tolist() == [np.bincount(m.ravel(), minlength=7).tolist() for m in clean]
    with pytest.raises(InputError, match="min_island"):
        run_masks(snapshot, 2, tmp_path / "bad", min_island=-1, progress=False)
