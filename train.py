"""Train a model: ``python train.py model=unet data.root=DIR`` (same as ``synthseg train ...``)."""

import sys

from synthseg.cli import run

if __name__ == "__main__":
    run("train", sys.argv[1:])
