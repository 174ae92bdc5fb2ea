"""The report: Table 1 (and its companion with per-class Dice and confidence intervals) and the figures.

``synthseg report runs=DIR output=DIR`` collects the ``results.json`` of a Table 1 sweep (docs/table1.md).
"""
