"""Which classes touch in real label maps, and which order of the index coding passes the fewest tumor pixels.

For the training maps of a prepared dataset at ``--size`` (majority vote, as the PGAN sees them) it counts every
4-adjacent pair of different classes, then scores each of the 720 orders of the 7 classes that start with
background: an edge between two classes that a generator draws smoothly decodes to every class placed between
them on the index coding's line, so an order's cost is the adjacent pairs times the classes between them (and,
apart, the tumor classes between them). Prints the adjacency table, the best orders and the paper's and
``anatomical``'s costs (docs/masks.md, "The index coding in anatomical order").

    python benchmarks/bench_label_order.py --data prepared --size 64
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from synthseg.data.labels import CLASS_NAMES, INDEX_ORDERS, NUM_CLASSES, TUMOR_CLASSES, resize_labels
from synthseg.data.manifest import read_manifest
from synthseg.data.pngio import read_png


def class_adjacency(data: Path, size: int, split: str = "train") -> np.ndarray:
    """(7, 7) symmetric counts of 4-adjacent pixel pairs of two different classes over a split's maps."""
    manifest = read_manifest(data)
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for r in manifest.rows(split):
        labels = resize_labels(
            torch.from_numpy(read_png(data / manifest.label[r]).astype(np.int64))[None], size
        )
        lab = labels[0].numpy()
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            differ = a != b
            np.add.at(counts, (a[differ], b[differ]), 1)
    return counts + counts.T


def order_cost(adjacency: np.ndarray, order: tuple[int, ...]) -> tuple[int, int]:
    """(classes passed, tumor classes passed) by the smooth edges of every adjacent pair, for ``order``."""
    place = {c: k for k, c in enumerate(order)}
    passed = tumor = 0
    for i, j in itertools.combinations(range(NUM_CLASSES), 2):
        lo, hi = sorted((place[i], place[j]))
        between = order[lo + 1 : hi]
        passed += int(adjacency[i, j]) * len(between)
        tumor += int(adjacency[i, j]) * sum(1 for c in between if c in TUMOR_CLASSES)
    return passed, tumor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    adjacency = class_adjacency(args.data, args.size)
    short = ["BG", "NCR", "ED", "ET", "WM", "GM", "CSF"]
    print("4-adjacent pairs of different classes (training maps):")
    print("      " + "".join(f"{n:>9}" for n in short))
    for i, name in enumerate(short):
        print(f"{name:>5} " + "".join(f"{int(v):9d}" for v in adjacency[i]))
    orders = [o for o in itertools.permutations(range(NUM_CLASSES)) if o[0] == 0]
    ranked = sorted(orders, key=lambda o: order_cost(adjacency, o)[::-1])
    print(f"\nbest {args.top} of {len(orders)} orders (tumor classes passed, all classes passed):")
    for o in ranked[: args.top]:
        passed, tumor = order_cost(adjacency, o)
        print(f"  {', '.join(CLASS_NAMES[c] for c in o)}: {tumor:,} / {passed:,}")
    for name, o in INDEX_ORDERS.items():
        passed, tumor = order_cost(adjacency, o)
        print(f"{name}: {tumor:,} / {passed:,}")


if __name__ == "__main__":
    main()
