"""Synthetic data: mask generation, the Z-score filter, image generation, export."""
