"""Train one PGAN variant at the demo's sizes and measure its label maps (docs/masks.md).

    python benchmarks/bench_label_maps.py --data DIR --out DIR --name NAME [--kimg 20] [--count 1024] \\
        -- model.label_encoding=onehot model.onehot_fakes=straight_through ...

Trains ``experiment=pgan_demo`` (64x64, narrow networks, 2 + 2 kimg per resolution, majority-vote reals for
the index encoding) for ``--kimg`` kimg with the given overrides, then from the last snapshot (the EMA
generator at the last tick) generates ``--count`` masks and writes ``<out>/<name>.json`` with:

- ``swd``: the SWD (x1000, 256 images per set, as the demo measures it) of the last tick, and the mean of
  the last three ticks;
- ``edge_share``: the share of masks with a tumor pixel (class 1-3) 4-adjacent to background (class 0), and
  the same share among the real non-empty training maps at 64x64 (majority vote): the index encoding's
  rounding paints tumor classes along every brain edge;
- ``discard``: the Z-score filter's discard rate at the paper's threshold scaled to 64x64 (125), against
  every real training map (empty ones included, as the filter's default), without island removal;
- ``filters``: the discard rate of each filter, all with ``min_island=0``: ``zscore`` (as ``discard``),
  ``zscore_position`` (conditional runs: each mask against the reals within +-2 slices of its position,
  ``reference_by=position``) and ``critic`` (the run's final critic from ``checkpoints/last.ckpt``, keeping a
  score at least the 0.05 quantile of the non-empty real validation maps' scores, ``method=critic``), each
  with the fraction of reals the same threshold discards;
- ``nearest_real``: the median over masks of the Dice of each mask to its nearest real training map (mean over
  the classes present, :func:`synthseg.metrics.memorisation.dice_matrix`), and ``copies``, the share of masks
  whose nearest real map has a Dice of 0.95 or more; beside each, the real baseline: the non-empty real
  validation maps against the training maps of *other* cases (the issue's targets: median >= 0.6, copies no
  more frequent than among real slices of different cases);
- ``tumor_share``: the share of masks holding any tumor pixel (the reals' beside it);
- ``critic_wasserstein``: the critic's Wasserstein estimate D(real) - D(fake) averaged over the last tenth of
  the steps (TensorBoard ``train/wasserstein``): a critic that tells the fakes apart by something the
  generator cannot fix (the entropy of soft probabilities against exact one-hot reals) drives it up;
- ``ada``: ADA's last ``p`` and ``r_t`` and the largest ``p`` (with ``model.augment=ada``);
- ``seconds``: training time.

A slice-conditional generator makes each mask at the position of a real training slice drawn at random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def tumor_at_background(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) class indices -> (N, H, W) bool: class 1-3 pixels with a 4-neighbour of class 0."""
    tumor = (masks >= 1) & (masks <= 3)
    background = masks == 0
    touch = np.zeros_like(tumor)
    touch[:, 1:] |= tumor[:, 1:] & background[:, :-1]
    touch[:, :-1] |= tumor[:, :-1] & background[:, 1:]
    touch[:, :, 1:] |= tumor[:, :, 1:] & background[:, :, :-1]
    touch[:, :, :-1] |= tumor[:, :, :-1] & background[:, :, 1:]
    return touch


def tumor_touches_background(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) class indices -> (N,) bool: a class 1-3 pixel has a 4-neighbour of class 0."""
    return tumor_at_background(masks).reshape(len(masks), -1).any(axis=1)


def real_maps(root: Path, size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real label maps of a split at ``size`` (majority vote), their axial positions and cases."""
    from synthseg.data.labels import resize_labels
    from synthseg.data.manifest import read_manifest
    from synthseg.data.pngio import read_png

    manifest = read_manifest(root)
    rows = manifest.rows(split)
    labels = np.stack([resize_labels(read_png(root / manifest.label[r]), size) for r in rows])
    return labels, manifest.positions()[rows], manifest.case[rows]


def nearest_dice(masks: np.ndarray, reals: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """(N,) the Dice of each mask to its nearest real map; ``exclude`` (N, M) True: a pair not to consider."""
    from synthseg.metrics.memorisation import dice_matrix

    best = np.zeros(len(masks))
    for start in range(0, len(masks), 256):
        part = torch.from_numpy(masks[start : start + 256].reshape(-1, masks[0].size).astype(np.int64))
        dice = dice_matrix(part, torch.from_numpy(reals.reshape(len(reals), -1).astype(np.int64))).numpy()
        if exclude is not None:
            dice[exclude[start : start + 256]] = -1.0
        best[start : start + 256] = dice.max(axis=1)
    return best


def filter_rates(
    run: Path, masks: np.ndarray, positions: np.ndarray | None, data: Path, size: int, threshold: float
) -> dict[str, object]:
    """The discard rate of each filter with min_island=0 (docstring): Z-score against all reals and by
    position, and the run's final critic."""
    from synthseg.synth.critic import critic_threshold, load_critic
    from synthseg.synth.zscore import reference_statistics, zscore_norms
    from synthseg.synth.zscore_position import PositionReference, slice_span, zscore_norms_by_position

    reals, real_pos, cases = real_maps(data, size)
    stats = reference_statistics(list(reals))
    real_norms = zscore_norms(list(reals), stats)
    out: dict[str, object] = {
        "zscore": {
            "fraction": float((zscore_norms(list(masks), stats) > threshold).mean()),
            "real_fraction": float((real_norms > threshold).mean()),
            "threshold": threshold,
        }
    }
    if positions is not None:
        from synthseg.data.manifest import read_manifest

        manifest = read_manifest(data)
        half = 2.0 / slice_span(manifest.case, manifest.slice)
        reference = PositionReference(zip(reals, real_pos, strict=True), half)
        norms, _ = zscore_norms_by_position(reference, positions, lambda idx: masks[list(idx)])
        real_by, _ = zscore_norms_by_position(reference, real_pos, lambda idx: reals[list(idx)])
        out["zscore_position"] = {
            "fraction": float((norms > threshold).mean()),
            "real_fraction": float((real_by > threshold).mean()),
            "threshold": threshold,
            "position_window_slices": 2.0,
        }
    critic = load_critic(run)
    val, val_pos, _ = real_maps(data, size, "val")
    keep = val.reshape(len(val), -1).any(axis=1)
    val, val_pos = val[keep], val_pos[keep]
    conditional = critic.network.condition != "none"
    device = torch.device("cpu")
    critic.hold_stddev(list(val), val_pos if conditional else None, device)
    real_scores = critic.scores(list(val), val_pos if conditional else None, device)
    cut = critic_threshold(real_scores, 0.05)
    scores = critic.scores(list(masks), positions if conditional else None, device)
    out["critic"] = {
        "fraction": float((scores < cut).mean()),
        "real_fraction": float((real_scores < cut).mean()),
        "quantile": 0.05,
        "threshold": cut,
        "origin": critic.origin,
        "tick": critic.tick,
    }
    return out


def train_variant(data: Path, out: Path, kimg: float, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from synthseg.paths import config_dir
    from synthseg.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["experiment=pgan_demo", f"data.root={data}", f"model.total_kimg={kimg}", *overrides],
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.torch_threads = 1
    train(cfg)


def scalars(run: Path, tag: str) -> np.ndarray:
    """A TensorBoard scalar of the run, in step order (empty when it was not logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run.rglob("events.out.tfevents.*"))
    if not files:
        return np.zeros(0)
    events = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0}).Reload()
    if tag not in events.Tags()["scalars"]:
        return np.zeros(0)
    return np.array([e.value for e in events.Scalars(tag)])


def measure(run: Path, data: Path, count: int, seed: int = 123) -> dict[str, object]:
    import csv

    from synthseg.data.labels import NUM_CLASSES, net_to_labels
    from synthseg.synth.generate_masks import latents, load_mask_generator
    from synthseg.synth.zscore import reference_statistics, scaled_threshold, zscore_norms

    rows = list(csv.DictReader(open(run / "swd.csv")))
    swd = [float(r["swd_avg"]) for r in rows]
    generator, meta = load_mask_generator(
        sorted((run / "snapshots").glob("*.pt"), key=lambda p: p.stat().st_mtime)[-1]
    )
    size = generator.resolution
    reals, positions, cases = real_maps(data, size)
    z = latents(seed, 0, count, generator.latent_dim)
    where = None
    with torch.inference_mode():
        if generator.condition == "none":
            x = generator(z, int(meta["resolution"]), float(meta["alpha"]))
        else:
            nonempty_rows = reals.reshape(len(reals), -1).any(axis=1) & np.isfinite(positions)
            where = torch.from_numpy(
                np.random.default_rng(seed).choice(positions[nonempty_rows], count)
            ).float()
            x = generator(z, int(meta["resolution"]), float(meta["alpha"]), where)
        masks = net_to_labels(x, NUM_CLASSES, generator.index_order).numpy()
    nonempty_rows = reals.reshape(len(reals), -1).any(axis=1)
    nonempty = reals[nonempty_rows]
    val, _, val_cases = real_maps(data, size, "val")
    keep = val.reshape(len(val), -1).any(axis=1)
    val, val_cases = val[keep], val_cases[keep]
    synthetic_near = nearest_dice(masks, nonempty)
    real_near = nearest_dice(val, nonempty, exclude=val_cases[:, None] == cases[nonempty_rows][None, :])
    stats = reference_statistics(list(reals))
    norms = zscore_norms(list(masks), stats)
    threshold = scaled_threshold(500.0, size)
    wasserstein = scalars(run, "train/wasserstein")
    ada_p, ada_rt = scalars(run, "train/ada_p"), scalars(run, "train/ada_rt")
    return {
        "kimg": float(rows[-1]["kimg"]),
        "snapshot_tick": meta.get("tick"),
        "swd": {"last": swd[-1], "last3_mean": float(np.mean(swd[-3:])), "per_tick": swd},
        "edge_share": {
            "synthetic": float(tumor_touches_background(masks).mean()),
            "real": float(tumor_touches_background(nonempty).mean()),
            "pixels_synthetic": float(tumor_at_background(masks).sum() / count),  # per mask
            "pixels_real": float(tumor_at_background(nonempty).sum() / len(nonempty)),
        },
        "discard": {"threshold": threshold, "fraction": float((norms > threshold).mean())},
        "filters": filter_rates(run, masks, None if where is None else where.numpy(), data, size, threshold),
        "nearest_real": {
            "dice_median": float(np.median(synthetic_near)),
            "dice_median_real_baseline": float(np.median(real_near)),
            "copies": float((synthetic_near >= 0.95).mean()),
            "copies_real_baseline": float((real_near >= 0.95).mean()),
            "copy_dice": 0.95,
        },
        "tumor_share": {
            "synthetic": float(((masks >= 1) & (masks <= 3)).reshape(count, -1).any(axis=1).mean()),
            "real": float(((nonempty >= 1) & (nonempty <= 3)).reshape(len(nonempty), -1).any(axis=1).mean()),
        },
        "empty_share": float((masks.reshape(count, -1) == 0).all(axis=1).mean()),
        "critic_wasserstein": float(wasserstein[-max(1, len(wasserstein) // 10) :].mean()),
        "ada": {"p": float(ada_p[-1]), "rt": float(ada_rt[-1]), "p_max": float(ada_p.max())}
        if ada_p.size
        else None,
        "masks": count,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared demo dataset")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and records")
    parser.add_argument("--name", required=True, help="the variant's name")
    parser.add_argument("--kimg", type=float, default=20.0)
    parser.add_argument("--count", type=int, default=1024, help="masks generated for the measures")
    parser.add_argument("overrides", nargs="*", help="train config overrides of the variant")
    args = parser.parse_args(argv)
    run = args.out / args.name
    started = time.perf_counter()
    if not (run / "swd.csv").is_file():
        train_variant(args.data.resolve(), run, args.kimg, args.overrides)
    seconds = time.perf_counter() - started
    previous = args.out / f"{args.name}.json"
    if seconds < 60 and previous.is_file():  # measured again only: keep the training time of the record
        seconds = json.loads(previous.read_text()).get("seconds", seconds)
    record = {
        "name": args.name,
        "overrides": args.overrides,
        "seconds": seconds,
        **measure(run, args.data, args.count),
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    summary = {
        k: record[k]
        for k in (
            "name",
            "kimg",
            "swd",
            "edge_share",
            "discard",
            "filters",
            "nearest_real",
            "tumor_share",
            "critic_wasserstein",
            "ada",
            "seconds",
        )
    }
    summary["swd"] = {k: v for k, v in record["swd"].items() if k != "per_tick"}  # type: ignore[union-attr]
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
