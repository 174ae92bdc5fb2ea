"""synthseg: brain tumor label-map and MR image synthesis (PGAN + SPADE) with a U-Net evaluation."""

from __future__ import annotations

__version__ = "0.3.0"

from synthseg.settings import register_resolvers  # noqa: E402  (after __version__, which modules import)

register_resolvers()  # the configs' ${len:...} interpolations resolve wherever synthseg is imported
