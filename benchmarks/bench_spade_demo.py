"""SPADE at the demo's size: does it paint what its labels say, and what does a setting cost (docs/spade.md).

Two measurements, each a subcommand; every variant is ``experiment=spade_demo`` as the demo runs it (its
epochs, constant rate) plus the variant's overrides. ``--old`` (:data:`OLD_DEMO`) is the demo's SPADE before
0.3.0: 4 epochs of a quarter of the training slices at the paper's rates (G 1e-4, D 4e-4).

    python benchmarks/bench_spade_demo.py time --data DIR --rounds 8 --steps 8 \
        old="$OLD" demo="" ngf16="model.generator.ngf=16" ...
    python benchmarks/bench_spade_demo.py train --data DIR --out DIR --name NAME -- OVERRIDES...

``time``: the cost of a training setting as a ratio to the first variant's (the 0.2.0 demo's: pass the
overrides of :data:`OLD_DEMO`). For each variant (``name="overrides"``) the
networks and optimisers are built from the composed config and timed for ``--steps`` training iterations
(generator step, then discriminator step, as ``SPADEModule.training_step``; random one-hot masks and images at
the config's batch and size), one variant after the other, ``--rounds`` times round-robin, one thread: on a
loaded machine the alternation puts every variant under the same load. A variant's time is its median
seconds per iteration times its iterations (training slices the DataModule serves / batch, times epochs);
its ratio to the first variant's is the figure to read (validation and data loading left out: they are a
small, equal share).

``train``: trains one variant (one thread), then paints every non-empty real test label map of the dataset at
the training size and writes ``<out>/<name>.json`` with the **label-conditional intensity check**: for each
class the median over slices of the mean image value inside that class, in the prepared 16-bit units, of the
synthetic images and of the real test images at the same size (area-reduced, as the DataModule serves them);
the distance of each over the real WM level (the target: at most 0.15 for WM, GM, CSF and enhancing tumor),
and the order of enhancing tumor, WM, GM, CSF in both (real T1c: enhancing rim > WM > GM > CSF). Also the
training wall time (on a shared machine: read the ``time`` ratios instead), and a montage of 8 synthetic
images over their real ones (``<out>/<name>.png``). With ``--unet RUN`` (a full_real U-Net run folder of the
same data) also the **label agreement**: that U-Net segments the painted images and the real ones of the same
label maps, mean Dice over the foreground classes (synthseg.metrics.agreement). A variant already trained in
``<out>`` is only measured again (its training time kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKED = {"enhancing": 3, "WM": 4, "GM": 5, "CSF": 6}
NAMES = ("background", "NCR/NET", "edema", "enhancing", "WM", "GM", "CSF")
TOLERANCE = 0.15
DEMO = ["experiment=spade_demo", "model.niter_decay=0"]  # as the demo trains it (demo.py: _spade)
# The demo's SPADE before 0.3.0, as overrides of today's experiment=spade_demo.
OLD_DEMO = [
    "data.real=0.25",
    "trainer.max_epochs=4",
    "model.niter=4",
    "model.optimizer_g.lr=1e-4",
    "model.optimizer_d.lr=4e-4",
]


def compose(data: Path, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from synthseg.paths import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[*DEMO, f"data.root={data}", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def iterations(cfg: Any) -> int:
    """Training iterations of the composed run: the slices its DataModule serves / batch, times epochs."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("fit")
    per_epoch = -(-len(dm.train_set) // int(cfg.data.batch_size))
    return per_epoch * int(cfg.trainer.max_epochs)


def step_timer(cfg: Any) -> Any:
    """A function running one training iteration of the composed SPADE on random inputs."""
    from hydra.utils import instantiate

    module = instantiate(cfg.model)
    opt_g = module.optimizer_g_factory(params=module.generator.parameters())
    opt_d = module.optimizer_d_factory(params=module.discriminator.parameters())
    b, s = int(cfg.data.batch_size), int(cfg.data.resolution)
    gen = torch.Generator().manual_seed(0)
    label = torch.nn.functional.one_hot(torch.randint(0, 7, (b, s, s), generator=gen), 7)
    label = label.permute(0, 3, 1, 2).float()
    real = torch.rand(b, 1, s, s, generator=gen) * 2 - 1
    objective = module.objective

    def step() -> None:
        module.discriminator.requires_grad_(False)
        fake = module.generate(label)[0]
        terms = objective.generator_terms(*module.discriminate(label, fake, real), fake=fake, real=real)
        loss = objective.total(terms)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        module.discriminator.requires_grad_(True)
        module.generator.requires_grad_(False)
        with torch.no_grad():
            fake = module.generate(label)[0]
        loss = objective.total(objective.discriminator_terms(*module.discriminate(label, fake, real)))
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        module.generator.requires_grad_(True)

    return step


def time_variants(data: Path, variants: dict[str, list[str]], rounds: int, steps: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    cfgs = {name: compose(data, overrides) for name, overrides in variants.items()}
    counts = {name: iterations(cfg) for name, cfg in cfgs.items()}
    timers = {name: step_timer(cfg) for name, cfg in cfgs.items()}
    for timer in timers.values():  # warm-up
        timer()
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, timer in timers.items():
            started = time.perf_counter()
            for _ in range(steps):
                timer()
            per_step[name].append((time.perf_counter() - started) / steps)
    base = next(iter(variants))
    medians = {name: statistics.median(values) for name, values in per_step.items()}
    total = {name: medians[name] * counts[name] for name in variants}
    return {
        name: {
            "overrides": variants[name],
            "iterations": counts[name],
            "sec_per_iteration": medians[name],
            "sec_per_iteration_rounds": per_step[name],
            "training_seconds_estimate": total[name],
            "ratio_to_first": total[name] / total[base],
        }
        for name in variants
    }


def train_variant(data: Path, out: Path, overrides: list[str]) -> None:
    from omegaconf import open_dict

    from synthseg.train import train

    cfg = compose(data, overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.torch_threads = 1
    train(cfg)


def test_masks(data: Path, folder: Path, size: int) -> list[str]:
    """Every non-empty real test label map at ``size`` (majority vote), as PNGs named by id."""
    from synthseg.data.labels import resize_labels
    from synthseg.data.manifest import read_manifest
    from synthseg.data.pngio import read_png, write_label8

    manifest = read_manifest(data)
    rows = [r for r in manifest.rows("test") if not manifest.empty[r]]
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        mask = resize_labels(read_png(data / manifest.label[r]), size)
        write_label8(folder / f"{manifest.ids[r]}.png", np.asarray(mask, dtype=np.uint8))
    return [str(manifest.ids[r]) for r in rows]


def class_levels(labels: list[np.ndarray], images: list[np.ndarray]) -> list[float | None]:
    """Per class: the median over slices holding it of the mean image value inside it (None: no slice)."""
    means: list[list[float]] = [[] for _ in NAMES]
    for label, image in zip(labels, images, strict=True):
        for c in range(len(NAMES)):
            inside = label == c
            if inside.any():
                means[c].append(float(image[inside].mean()))
    return [float(np.median(m)) if m else None for m in means]


def intensity_check(synthetic: list[float | None], real: list[float | None]) -> dict[str, Any]:
    unit = real[CHECKED["WM"]]
    assert unit, "the real test images hold no white matter"
    classes = {}
    for name, c in CHECKED.items():
        s, r = synthetic[c], real[c]
        distance = abs(s - r) / unit if s is not None and r is not None else None
        classes[name] = {
            "synthetic": s,
            "real": r,
            "distance_over_real_wm": distance,
            "within": distance is not None and distance <= TOLERANCE,
        }

    def order(levels: list[float | None]) -> list[str]:
        present = [n for n, c in CHECKED.items() if levels[c] is not None]
        return sorted(present, key=lambda n: -float(levels[CHECKED[n]] or 0.0))

    same = order(synthetic) == order(real)
    within = all(v["within"] for v in classes.values())
    return {
        "classes": classes,
        "all_classes": {
            "synthetic": dict(zip(NAMES, synthetic, strict=True)),
            "real": dict(zip(NAMES, real, strict=True)),
        },
        "order_synthetic": order(synthetic),
        "order_real": order(real),
        "same_order": same,
        "within_tolerance": within,
        "target_met": same and within,
        "worst_distance": max(v["distance_over_real_wm"] or 0.0 for v in classes.values()),
    }


def label_agreement(
    unet: Path, labels: list[np.ndarray], synthetic: list[np.ndarray], real: list[np.ndarray]
) -> dict[str, Any]:
    """The real-data U-Net ``unet`` segments the painted images and the real ones of the same label maps
    (synthseg.metrics.agreement: SPADE's own evaluation); its confusion matrices are left out of the record."""
    from synthseg.metrics.agreement import label_agreement as agreement
    from synthseg.metrics.features import build_extractor
    from synthseg.metrics.quality import input_scaler

    extractor = build_extractor("unet", unet)
    maps = torch.from_numpy(np.stack(labels).astype(np.int64))
    painted = torch.from_numpy(np.stack(synthetic)[:, None]).float()
    reals = torch.from_numpy(np.stack(real)[:, None]).float()
    scale = input_scaler(extractor, reals, (float(reals.max()),))
    found = agreement(
        extractor.segmenter, int(extractor.classes or 7), lambda x: scale(x, slice(None)), (maps, painted),
        (maps, reals),
    )  # fmt: skip
    return {
        "unet": str(unet),
        "mean_dice": found["mean_dice"],
        "mean_dice_real": found["mean_dice_real"],
        "dice": found["synthetic"]["dice"],
        "dice_real": found["real"]["dice"],
    }


def measure(
    run: Path, data: Path, size: int, name: str, out: Path, unet: Path | None = None
) -> dict[str, Any]:
    from synthseg.data.dataset import downsample_image
    from synthseg.data.pngio import read_png
    from synthseg.synth import generate_images

    masks = out / f"{name}.masks"
    ids = test_masks(data, masks, size)
    painted = out / f"{name}.images"
    generate_images.run(
        generate_images.GenerateImagesSettings(
            checkpoint=str(run / "checkpoints" / "last.ckpt"),
            masks=str(masks),
            output=str(painted),
            keep_ids=True,
            overwrite=True,
            progress=False,
            device="cpu",
        )
    )
    labels = [read_png(painted / "labels" / f"{i}.png") for i in ids]
    synthetic = [read_png(painted / "images" / f"{i}.png").astype(np.float64) for i in ids]
    real = []
    for i in ids:
        image = read_png(data / "images" / f"{i}.png").astype(np.float64)
        real.append(downsample_image(image, image.shape[0] // size))
    check = intensity_check(class_levels(labels, synthetic), class_levels(labels, real))
    montage(out / f"{name}.png", synthetic[:8], real[:8])
    found = {"slices": len(ids), "size": size, "class_intensity": check}
    if unet is not None:
        found["label_agreement"] = label_agreement(unet, labels, synthetic, real)
    return found


def montage(path: Path, synthetic: list[np.ndarray], real: list[np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = float(np.quantile(np.concatenate([r.ravel() for r in real]), 0.999))
    fig, axes = plt.subplots(2, len(real), figsize=(1.6 * len(real), 3.4), dpi=80, squeeze=False)
    for i, (s, r) in enumerate(zip(synthetic, real, strict=True)):
        axes[0, i].imshow(s, cmap="gray", vmin=0, vmax=top)
        axes[1, i].imshow(r, cmap="gray", vmin=0, vmax=top)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    timing = sub.add_parser("time", help="seconds per iteration of each variant, alternating")
    timing.add_argument("--data", type=Path, required=True)
    timing.add_argument("--rounds", type=int, default=5)
    timing.add_argument("--steps", type=int, default=8)
    timing.add_argument("--json", type=Path)
    timing.add_argument("variants", nargs="+", help='name="overrides" (the first is the reference)')
    training = sub.add_parser("train", help="train one variant and check its class intensities")
    training.add_argument("--data", type=Path, required=True)
    training.add_argument("--out", type=Path, required=True)
    training.add_argument("--name", required=True)
    training.add_argument("--unet", type=Path, help="a full_real U-Net run folder: also the label agreement")
    training.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "time":
        variants = {}
        for item in args.variants:
            name, _, text = item.partition("=")
            variants[name] = text.split()
        result = time_variants(args.data.resolve(), variants, args.rounds, args.steps)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        for name, r in result.items():
            print(
                f"{name}: {r['iterations']} iterations x {r['sec_per_iteration']:.3f} s = "
                f"{r['training_seconds_estimate']:.0f} s, ratio {r['ratio_to_first']:.2f}",
                file=sys.stderr,
            )
        return
    run = args.out / args.name
    started = time.perf_counter()
    if not (run / "checkpoints" / "last.ckpt").is_file():
        train_variant(args.data.resolve(), run, args.overrides)
    seconds = time.perf_counter() - started
    cfg = compose(args.data.resolve(), args.overrides)
    record = {
        "name": args.name,
        "overrides": args.overrides,
        "seconds": seconds,
        **measure(run, args.data.resolve(), int(cfg.data.resolution), args.name, args.out, args.unet),
    }
    previous = args.out / f"{args.name}.json"
    if seconds < 30 and previous.is_file():  # measured again only: keep the training time of the record
        record["seconds"] = json.loads(previous.read_text()).get("seconds", seconds)
    previous.write_text(json.dumps(record, indent=2))
    check = record["class_intensity"]
    line = {n: round(v["distance_over_real_wm"] or -1, 3) for n, v in check["classes"].items()}
    agreed = record.get("label_agreement", {}).get("mean_dice")
    print(
        json.dumps({"name": args.name, "distance": line, "order": check["order_synthetic"],
                    "target_met": check["target_met"], "seconds": round(record["seconds"]),
                    "label_agreement": None if agreed is None else round(agreed, 3)}),
        file=sys.stderr,
    )  # fmt: skip


if __name__ == "__main__":
    main()
