"""synthseg: brain tumor label-map and MR image synthesis (PGAN + SPADE) with a U-Net evaluation."""

from __future__ import annotations

__version__ = "0.3.0"
