"""Image datasets given as list files — one ``<relative image path> <integer label>`` per line — in
the layout the parameter-efficient fine-tuning papers distribute VTAB-1k in (VPT, NOAH, SSF, …):
per dataset a folder with ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and
``test.txt`` beside the images.

The train and val lists become the pool (val's positions recorded as the official validation
split), the test list the official test split; ``split: {protocol: official}`` then gives exactly
train800 / val200 / test, and ``split.final_fit: train+val`` trains the evaluation runs on
train800val200 (checked to be train800 ∪ val200, line for line). Labels are taken as given.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, Int
from tlbench.suites.images import assemble, open_image
from tlbench.suites.pools import DataAccess, DataPool, Dataset

LINE = "'<relative image path> <integer label>'"


class ImageListArgs(Frozen):
    #: The dataset's folder (relative to the data root, or absolute); list files and image paths are relative to it.
    path: str
    train: str = "train800.txt"
    val: str = "val200.txt"
    test: str = "test.txt"
    #: The list the papers' final model trains on; when the file exists it must hold exactly the train and
    #: val lists' lines (in any order). None: not checked.
    train_val: str | None = "train800val200.txt"
    #: Labels must lie in 0..num_classes-1; None: 0..the largest label any list gives.
    num_classes: Int | None = Field(None, gt=0)


class ListedImages:
    """A map-style dataset of the images a list file names: ``(PIL image, label)``; ``samples`` and
    ``targets`` as torchvision's folders have them (what content identities hash)."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return open_image(path), label


def read_list(folder: Path, name: str, field: str) -> list[tuple[str, int]]:
    """The (absolute path, label) lines of list file ``name`` in ``folder``, refused in one line when
    a line is malformed or names a missing image (``field``: the argument that named the file)."""
    file = folder / name
    where = f"dataset image_list: args.{field}: {file}"
    if not file.is_file():
        raise ConfigError(f"{where} does not exist; expected a list file of {LINE} lines")
    samples, missing = [], []
    for number, raw in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            shown = line if len(line) <= 80 else line[:79] + "…"
            raise ConfigError(f"{where} line {number}: expected {LINE}, got {shown!r}")
        relative, label = parts[0], int(parts[1])
        path = folder / relative
        if not path.is_file():
            missing.append((number, relative))
        samples.append((str(path), label))
    if missing:
        number, relative = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{where} line {number}: image {relative!r} does not exist under {folder}{more}")
    if not samples:
        raise ConfigError(f"{where} lists no images; expected {LINE} lines")
    return samples


class ImageListDataset(Dataset):
    """Images named by list files (:mod:`suites.image_lists`): the PEFT papers' VTAB-1k layout by default."""

    name = "image_list"
    description = "images named by list files '<path> <label>' (the PEFT papers' VTAB-1k: train800/val200/test)"
    Args = ImageListArgs

    def locations(self, args: Frozen, data: DataAccess) -> list[Path]:
        assert isinstance(args, ImageListArgs)
        return [data.root / args.path]

    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        assert isinstance(args, ImageListArgs)
        folder = data.root / args.path
        if not folder.is_dir():
            raise ConfigError(f"dataset image_list: args.path: {folder} is not a folder; expected one holding "
                              f"{args.train}, {args.val}, {args.test} and the images they name")
        lists = {field: read_list(folder, getattr(args, field), field) for field in ("train", "val", "test")}
        largest = max(label for samples in lists.values() for _, label in samples)
        classes = args.num_classes if args.num_classes is not None else largest + 1
        for field, samples in lists.items():
            for number, (path, label) in enumerate(samples, start=1):
                if not 0 <= label < classes:
                    allowed = f"0..{classes - 1}" + (" (args.num_classes)" if args.num_classes is not None else "")
                    raise ConfigError(f"dataset image_list: args.{field}: {folder / getattr(args, field)}: label "
                                      f"{label} of {Path(path).relative_to(folder)} is out of range; allowed: {allowed}")
        if args.train_val is not None and (folder / args.train_val).is_file():
            union = read_list(folder, args.train_val, "train_val")
            if Counter(union) != Counter(lists["train"] + lists["val"]):
                extra = Counter(union) - Counter(lists["train"] + lists["val"])
                lacking = Counter(lists["train"] + lists["val"]) - Counter(union)
                first = next(iter(extra or lacking))
                how = "lists" if extra else "lacks"
                raise ConfigError(f"dataset image_list: args.train_val: {folder / args.train_val} is not exactly "
                                  f"{args.train} + {args.val}: it {how} {Path(first[0]).relative_to(folder)} "
                                  f"{first[1]} ({sum(extra.values())} extra, {sum(lacking.values())} missing line(s))")
        names = tuple(str(i) for i in range(classes))
        return assemble(self.name, ListedImages(lists["train"]), ListedImages(lists["val"]),
                        ListedImages(lists["test"]), root=data.root, names=names)
