"""The data source contract: a :class:`Dataset` turns typed arguments and a
:class:`DataAccess` (where files live) into a :class:`DataPool`."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from harness.backbones import ArgsModel
from harness.data import Inputs


def default_data_root(cache_dir: Path | None = None) -> Path:
    """``$TLBENCH_DATA``, else ``data`` in the cache directory (``--cache-dir``, else
    :func:`~harness.runtime.default_cache_dir`)."""
    from harness.runtime import default_cache_dir

    if os.environ.get("TLBENCH_DATA"):
        return Path(os.environ["TLBENCH_DATA"]).expanduser()
    return (cache_dir or default_cache_dir()) / "data"


@dataclass(frozen=True)
class DataAccess:
    """Where image datasets live and whether missing ones may be downloaded."""

    root: Path = Path(".")
    download: bool = False

    @classmethod
    def of(cls, data_root: str | None, download: bool, *, suite_path: str = "",
           cache_dir: Path | None = None) -> "DataAccess":
        """A suite's setting: relative roots are relative to the suite file; without one,
        :func:`default_data_root`."""
        if data_root is None:
            return cls(default_data_root(cache_dir), download)
        root = Path(data_root).expanduser()
        return cls(root if root.is_absolute() else Path(suite_path).parent / root, download)


@dataclass(frozen=True)
class DataPool:
    """All examples of a dataset: a pool to split, the official test split if any, and the
    positions in the pool of the official validation split if any (``val_index``)."""

    x: Inputs
    y: torch.Tensor
    class_names: tuple[str, ...]
    test_x: Inputs | None = None
    test_y: torch.Tensor | None = None
    val_index: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Dataset(ABC):
    """A named data source with a typed argument block."""

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[ArgsModel]]

    @abstractmethod
    def load(self, args: ArgsModel, data: DataAccess) -> DataPool:
        """Materialises the data (deterministic for the arguments)."""

    def locations(self, args: ArgsModel, data: DataAccess) -> list[Path]:
        """Where the dataset's files are expected (none: bundled or generated); the first is
        the one error messages name."""
        return []


class NoArgs(ArgsModel):
    """The argument block of a dataset that takes none."""
