"""The data source contract: a :class:`Dataset` turns typed arguments and a
:class:`DataAccess` (where files live) into a :class:`DataPool`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from tlbench.core.frozen import Frozen
from tlbench.core.paths import default_data_root
from tlbench.data.views import Inputs


@dataclass(frozen=True)
class DataAccess:
    """Where image datasets live and whether missing ones may be downloaded."""

    root: Path = Path(".")
    download: bool = False
    #: Where generated datasets' pools are kept across processes (:attr:`Dataset.generated`); None: not kept.
    pools: Path | None = None

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
    Args: ClassVar[type[Frozen]]
    #: Whether ``download: true`` can fetch missing files (a local folder cannot be downloaded).
    downloadable: ClassVar[bool] = False
    #: A dataset computed from its arguments alone (no files), in memory: its pool is kept on disk in the cache
    #: directory, keyed by its arguments, the code that makes it and :meth:`generator_version`, so later processes
    #: (each worker of a launch, every run after the first) read it instead of generating it again.
    generated: ClassVar[bool] = False

    def generator_version(self) -> str:
        """What else a generated pool depends on (the versions of the libraries that make it)."""
        return ""

    @abstractmethod
    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        """Materialises the data (deterministic for the arguments)."""

    def locations(self, args: Frozen, data: DataAccess) -> list[Path]:
        """Where the dataset's files are expected (none: bundled or generated); the first is
        the one error messages name."""
        return []


class NoArgs(Frozen):
    """The argument block of a dataset that takes none."""


def name_list(names: Sequence[str], limit: int = 20) -> str:
    """``names`` for a one-line error: all of them as a list when there are at most ``limit``,
    else the first ``limit`` and how many more."""
    shown = list(names)
    if len(shown) <= limit:
        return repr(shown)
    return f"{shown[:limit]!r} and {len(shown) - limit} more"
