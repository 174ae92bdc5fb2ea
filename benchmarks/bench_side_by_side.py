"""The demo's U-Net training step: one process with every thread against one process per core side by side.

    python benchmarks/bench_side_by_side.py [--threads 2] [--steps 150] [--rounds 3] [--json PATH]

Why the demo runs its stages as a graph, two at a time with one thread each (``synthseg demo workers=2``):
at its sizes (64x64, U-Net width 8, batch 8) a second intra-op thread adds little to one step. Each round
times ``--steps`` steps (after warm-up) of (a) one process with ``--threads`` threads and (b) ``--threads``
processes with one thread each, started together behind a barrier. Throughput is steps per second over all
processes (b: their steps over the slowest one's time); the ratio b / a is taken per round, and medians are
printed. Peak RSS is per process (each holds its own network and batch).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from pathlib import Path
from typing import Any


def _steps(threads: int, steps: int, args: dict[str, int], barrier: Any | None) -> dict[str, float]:
    """Time ``steps`` training steps of the demo's U-Net (Dice + weighted CE, Adam) with ``threads`` threads."""
    import torch
    import torch.nn.functional as F

    from synthseg.losses.dice import weighted_dice_loss
    from synthseg.networks.unet import UNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size, classes, batch = args["size"], args["classes"], args["batch_size"]
    net = UNet(in_channels=1, num_classes=classes, base_width=args["base_width"])
    images = torch.randn(batch, 1, size, size)
    labels = torch.randint(0, classes, (batch, size, size))
    target = F.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    weights = torch.rand(classes) + 0.1
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = net(images)
        loss = weighted_dice_loss(torch.softmax(logits, 1), target, weights)
        (loss + F.cross_entropy(logits, labels, weight=weights)).backward()
        optimizer.step()

    for _ in range(10):
        step()
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _worker(threads: int, steps: int, args: dict[str, int], barrier: Any, results: Any) -> None:
    results.put(_steps(threads, steps, args, barrier))


def _run(processes: int, threads: int, steps: int, args: dict[str, int]) -> dict[str, float]:
    """``processes`` spawned processes of ``threads`` threads each, ``steps`` steps each, started together."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_worker, args=(threads, steps, args, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    measured = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    slowest = max(m["seconds"] for m in measured)
    return {
        "steps_per_s": processes * steps / slowest,
        "ms_per_step_each": 1000 * statistics.median(m["seconds"] for m in measured) / steps,
        "peak_rss_gib": max(m["peak_rss_gib"] for m in measured),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="cores to use: a's threads, b's processes")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sizes = {k: getattr(args, k) for k in ("size", "base_width", "batch_size", "classes")}
    rounds = []
    for index in range(args.rounds):
        together = _run(1, args.threads, args.steps, sizes)
        side_by_side = _run(args.threads, 1, args.steps, sizes)
        ratio = side_by_side["steps_per_s"] / together["steps_per_s"]
        rounds.append({"one_process": together, "side_by_side": side_by_side, "ratio": ratio})
        print(
            f"round {index + 1}: 1 process x {args.threads} threads {together['steps_per_s']:.2f} steps/s "
            f"({together['ms_per_step_each']:.1f} ms/step); {args.threads} processes x 1 thread "
            f"{side_by_side['steps_per_s']:.2f} steps/s ({side_by_side['ms_per_step_each']:.1f} ms/step each); "
            f"ratio {ratio:.2f}",
            flush=True,
        )
    summary = {
        "config": {**sizes, "threads": args.threads, "steps": args.steps, "rounds": args.rounds},
        "rounds": rounds,
        "median_one_process_steps_per_s": statistics.median(r["one_process"]["steps_per_s"] for r in rounds),
        "median_side_by_side_steps_per_s": statistics.median(
            r["side_by_side"]["steps_per_s"] for r in rounds
        ),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "peak_rss_gib_per_process": max(r["side_by_side"]["peak_rss_gib"] for r in rounds),
    }
    print(
        f"median: side by side / one process = {summary['median_ratio']:.2f}x the steps per second "
        f"({summary['median_side_by_side_steps_per_s']:.2f} vs {summary['median_one_process_steps_per_s']:.2f}); "
        f"peak RSS {summary['peak_rss_gib_per_process']:.2f} GiB per process"
    )
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
