"""``python -m synthseg <command> key=value ...``: the same as the ``synthseg`` console script."""

from __future__ import annotations

from synthseg.cli import main

if __name__ == "__main__":
    main()
