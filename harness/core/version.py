"""tlbench's release version (the distribution's version in pyproject.toml)."""

__version__ = "0.1.0"
