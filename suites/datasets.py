"""Datasets: the offline ones as in-memory tensors (sklearn digits, printed glyphs,
MNIST-1D), image files read lazily (:mod:`suites.images`).

A dataset turns validated arguments into a :class:`DataPool`; pools are memoised per
process so a source task and a target task built from the same data load it once.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, validate_block
from tlbench.core.paths import default_data_root
from tlbench.core.registry import Registry
from tlbench.suites.image_lists import ImageListDataset
from tlbench.suites.images import IMAGE_DATASETS
from tlbench.suites.pools import DataAccess, DataPool, Dataset, NoArgs

__all__ = ["DATASETS", "DataAccess", "DataPool", "Dataset", "data_access", "data_location", "load_pool"]



class Digits(Dataset):
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8, values 0..16."""

    name = "digits"
    description = "scikit-learn handwritten digits, 1,797 images 8x8, 10 classes (bundled)"
    Args = NoArgs
    generated = True  # bundled with scikit-learn: importing it is most of the cost

    def generator_version(self) -> str:
        return f"scikit-learn {_version('scikit-learn')}"

    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.int64)
        return DataPool(x, y, tuple(str(c) for c in bunch.target_names))


class GlyphArgs(Frozen):
    n: int = Field(20000, gt=0)
    size: int = Field(8, ge=4, le=64)
    classes: Literal["digits", "letters", "alnum", "upper", "lower", "symbols"] = "alnum"
    seed: int = Field(0, ge=0, lt=2**32)
    max_rotation: float = 15.0
    fonts: Literal["all", "sans", "serif", "mono"] = "all"  # a font family: sources that differ in style
    LATER_FIELDS = ("fonts",)


class Glyphs(Dataset):
    """Printed characters rendered from matplotlib's bundled TrueType fonts."""

    name = "glyphs"
    description = "printed digits/letters/symbols rendered offline from matplotlib's fonts (synthetic)"
    Args = GlyphArgs
    generated = True
    CHARSETS: ClassVar[dict[str, str]] = {
        "digits": "0123456789",
        "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "alnum": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "lower": "abcdefghijklmnopqrstuvwxyz",
        "symbols": "!#$%&*+-/<=>?@",
    }

    def generator_version(self) -> str:  # its fonts and rasteriser
        return f"matplotlib {_version('matplotlib')}"

    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        from tlbench.suites.glyphs import render_glyphs

        assert isinstance(args, GlyphArgs)
        chars = self.CHARSETS[args.classes]
        x, y = render_glyphs(args.n, size=args.size, classes=chars, seed=args.seed,
                             max_rotation=args.max_rotation, fonts=args.fonts)
        return DataPool(x, y, tuple(chars))


class Mnist1dArgs(Frozen):
    num_samples: int = Field(5000, ge=10)  # at least one example per class
    train_split: float = Field(0.8, gt=0, lt=1)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    seed: int = Field(42, ge=0, lt=2**32)


class Mnist1d(Dataset):
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (never downloaded)."""

    name = "mnist1d"
    description = "MNIST-1D signals (length 40, 10 classes) generated locally; generator args configurable"
    Args = Mnist1dArgs
    generated = True

    def generator_version(self) -> str:
        return f"mnist1d {_version('mnist1d')} numpy {np.__version__}"

    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        from mnist1d.data import get_dataset_args, get_templates, make_dataset

        assert isinstance(args, Mnist1dArgs)
        gen_args = get_dataset_args(as_dict=False)
        for key, value in args.model_dump().items():
            setattr(gen_args, key, value)
        # make_dataset reseeds Python's and NumPy's global RNGs: restore them afterwards.
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            data = make_dataset(gen_args, template=get_templates())
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

        def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.tensor(x, dtype=torch.float32).unsqueeze(1),
                    torch.tensor(y, dtype=torch.int64))

        x, y = as_tensors(data["x"], data["y"])
        tx, ty = as_tensors(data["x_test"], data["y_test"])
        return DataPool(x, y, tuple(str(i) for i in range(10)), tx, ty)


DATASETS: Registry[Dataset] = Registry("dataset", Dataset, plugin_kind="dataset")
for _cls in (Digits, Glyphs, Mnist1d, *IMAGE_DATASETS, ImageListDataset):
    DATASETS.add(_cls)

_POOLS: dict[str, DataPool] = {}


def load_pool(name: str, args: dict[str, Any], *, where: str = "", data: DataAccess | None = None) -> DataPool:
    """Validates ``args`` for dataset ``name`` and returns its (memoised) pool; image
    datasets are looked for under ``data.root`` (default: :func:`default_data_root`)."""
    cls = DATASETS.get(name, where=f"{where}.dataset" if where else "")
    parsed = validate_block(cls.Args, args, where=f"{where}.args")
    data = data or DataAccess(default_data_root())
    dataset = cls()
    key = json.dumps([name, parsed.model_dump(), [str(p) for p in dataset.locations(parsed, data)]],
                     sort_keys=True)
    if key not in _POOLS:
        try:
            _POOLS[key] = _kept(dataset, parsed, data, key)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}" if where else str(err)) from None
    return _POOLS[key]


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _kept(dataset: Dataset, args: Frozen, data: DataAccess, key: str) -> DataPool:
    """A generated dataset's pool from the on-disk pool cache (made and kept there on a miss); any other
    dataset's loaded. An entry is a file of tensors written atomically; a torn or foreign one is made again."""
    if not dataset.generated or data.pools is None:
        return dataset.load(args, data)
    from dataclasses import fields

    from tlbench.core.atomic import building, load_or_none, save_atomic
    from tlbench.core.codeversion import scoped_version

    code = scoped_version((type(dataset).__module__,), kinds=("dataset",))
    digest = hashlib.sha256(f"{key}|{code}|{dataset.generator_version()}".encode()).hexdigest()[:24]
    path = data.pools / f"{dataset.name}-{digest}.pt"
    names = [f.name for f in fields(DataPool)]

    def read() -> DataPool | None:
        kept = load_or_none(path)
        if not isinstance(kept, dict) or set(kept) != set(names):
            return None
        kept["class_names"] = tuple(kept["class_names"])
        return DataPool(**kept)

    if (pool := read()) is not None:
        return pool
    with building(path):  # workers missing it together make it once
        if (pool := read()) is not None:
            return pool
        pool = dataset.load(args, data)
        save_atomic({name: getattr(pool, name) for name in names}, path)
    return pool


def data_access(suite: Any) -> DataAccess:
    """A suite's data root and download setting (``data_root``, ``download``)."""
    return DataAccess.of(suite.data_root, suite.download, suite_path=suite.path)


def data_location(name: str, args: dict[str, Any], data: DataAccess) -> tuple[list[Path], list[Path]]:
    """Where dataset ``name``'s files are expected, and those absent (for dry runs)."""
    cls = DATASETS.get(name)
    paths = cls().locations(validate_block(cls.Args, args, where=name), data)
    return paths, [p for p in paths if not p.exists()]
