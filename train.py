"""Train a model: ``python train.py model=unet data.root=DIR`` (same as ``synthseg train ...``)."""

import sys

from synthseg.cli import quiet_progress_when_logged, run

if __name__ == "__main__":
    quiet_progress_when_logged()
    run("train", sys.argv[1:])
