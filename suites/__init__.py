"""Suites: offline datasets, task split protocols and the YAML suite schema."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent


def bundled_suites() -> dict[str, Path]:
    """Suite files shipped with tlbench, by name (``quick`` → ``suites/quick.yaml``)."""
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.yaml"))}
