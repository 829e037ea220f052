"""Suites: offline datasets, task split protocols and the YAML suite schema."""

from __future__ import annotations

from pathlib import Path

from tlbench.core.errors import ConfigError

BUNDLED_DIR = Path(__file__).resolve().parent


def bundled_suites() -> dict[str, Path]:
    """Suite files shipped with tlbench, by name (``quick`` → ``suites/quick.yaml``)."""
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.yaml"))}


def resolve_suite_path(arg: str) -> Path:
    """A suite file path, or the name of a bundled suite (``quick``)."""
    path = Path(arg)
    if path.is_file():
        return path
    bundled = bundled_suites()
    if arg in bundled:
        return bundled[arg]
    raise ConfigError(f"{arg}: suite file not found; bundled suites: {', '.join(bundled)}")
