"""Builders and presets shared by the tests (no tests here)."""
