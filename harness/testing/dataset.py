"""The dataset contract, one property per check: what splitting a task from it relies on.

- it has a registrable ``name`` and a one-line ``description``;
- its ``Args`` take the arguments given (a suite's ``args``);
- ``load`` gives a :class:`~tlbench.suites.pools.DataPool`: inputs and integer labels of one length,
  labels 0 … C−1 for C class names, at least two examples of each class;
- an official test split, if any, has inputs and labels of one length and the pool's classes;
- loading again gives the same examples in the same order (tasks are seeded on positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tlbench.core.frozen import Frozen, validate_block
from tlbench.data.splits import tensor_fingerprint
from tlbench.data.views import ImageView
from tlbench.suites.pools import DataAccess, DataPool, Dataset
from tlbench.testing.report import (
    CheckFailed,
    CheckReport,
    Unchecked,
    check_name_and_description,
    one_line,
    properties,
    run_properties,
)


@dataclass
class DatasetContext:
    cls: type[Dataset]
    args: dict[str, Any]
    data: DataAccess
    _pool: DataPool | None = field(default=None, repr=False)

    def parsed(self) -> Frozen:
        return validate_block(self.cls.Args, self.args, where=f"dataset {getattr(self.cls, 'name', '?')}.args")

    def pool(self) -> DataPool:
        if self._pool is None:
            try:
                parsed = self.parsed()
            except Exception as err:  # noqa: BLE001 - said as why the property could not be checked
                raise Unchecked(f"not checked: its arguments are refused ({one_line(err)})") from None
            self._pool = self.cls().load(parsed, self.data)
        return self._pool


def _identity(x: Any) -> str:
    if isinstance(x, ImageView):
        return x.fingerprint
    return tensor_fingerprint(x)


def _name_and_description(c: DatasetContext) -> None:
    check_name_and_description(c.cls, named_by="the dataset suites name", listed_by="tlbench list datasets")


def _args(c: DatasetContext) -> None:
    c.parsed()


def _labels(x: Any, y: Any, classes: int, what: str) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
        raise CheckFailed(f"{what} labels must be a 1-D integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if len(x) != len(y):
        raise CheckFailed(f"{what} has {len(x)} inputs but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise CheckFailed(f"{what} labels must lie in 0 … {classes - 1} (one per class name), got "
                          f"{int(y.min())} … {int(y.max())}")


def _pool(c: DatasetContext) -> None:
    pool = c.pool()
    if not isinstance(pool, DataPool):
        raise CheckFailed(f"load must return a tlbench.DataPool, got {type(pool).__name__}")
    if not pool.class_names or len(set(pool.class_names)) != len(pool.class_names):
        raise CheckFailed("class_names must name each class once")
    _labels(pool.x, pool.y, pool.num_classes, "the pool")
    counts = torch.bincount(pool.y.long(), minlength=pool.num_classes)
    thin = [pool.class_names[i] for i, n in enumerate(counts.tolist()) if n < 2]
    if thin and pool.test_y is None:
        raise CheckFailed(f"classes with fewer than two examples cannot be split: {', '.join(map(str, thin[:5]))}")
    if pool.val_index is not None and (pool.val_index.dim() != 1 or int(pool.val_index.max(initial=0)) >= len(pool.y)):
        raise CheckFailed("val_index must be positions in the pool")


def _test_split(c: DatasetContext) -> None:
    pool = c.pool()
    if pool.test_x is None and pool.test_y is None:
        return
    if pool.test_x is None or pool.test_y is None:
        raise CheckFailed("an official test split needs both test_x and test_y")
    _labels(pool.test_x, pool.test_y, pool.num_classes, "the official test split")


def _deterministic(c: DatasetContext) -> None:
    first = c.pool()
    again = c.cls().load(c.parsed(), c.data)
    if _identity(first.x) != _identity(again.x) or not torch.equal(first.y, again.y):
        raise CheckFailed("loading twice gave other examples or another order: tasks are drawn from positions, "
                          "so the pool must be the same for the same arguments")


DATASET_PROPERTIES: dict[str, Callable[[DatasetContext], None]] = properties({
    "has a name and a one-line description": _name_and_description,
    "its Args take the arguments given": _args,
    "loads a pool of labelled examples": _pool,
    "an official test split is consistent": _test_split,
    "loads the same examples in the same order": _deterministic,
})


def dataset_context(cls: type[Dataset], *, args: dict[str, Any] | None = None,
                    data: DataAccess | Path | str | None = None) -> DatasetContext:
    access = data if isinstance(data, DataAccess) else DataAccess(Path(data) if data is not None else Path("."))
    return DatasetContext(cls, dict(args or {}), access)


def check_dataset(cls: type[Dataset], *, args: dict[str, Any] | None = None,
                  data: DataAccess | Path | str | None = None) -> CheckReport:
    """Checks every property of the dataset contract (module docstring) for ``cls`` with ``args``
    (default: its ``Args`` defaults), reading files under ``data`` (a DataAccess or a folder; default:
    the current folder)."""
    report = CheckReport(str(getattr(cls, "name", None) or cls.__name__), kind="dataset")
    context = dataset_context(cls, args=args, data=data)
    run_properties(report, DATASET_PROPERTIES, context)
    return report
