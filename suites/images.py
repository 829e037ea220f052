"""Image-file datasets: torchvision's dataset classes and local ``ImageFolder`` trees.

Each is read lazily (:class:`~tlbench.data.views.ImageView`): only the labels and the file list
are loaded when a task is built, images are decoded by DataLoader workers when a strategy
reads them. Files live under the suite's ``data_root``; when they are missing, one
line names the dataset, the path looked at, and how to get them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen
from tlbench.data.views import ImageView
from tlbench.suites.pools import DataAccess, DataPool, Dataset, NoArgs, name_list


class TorchvisionDataset(Dataset):
    """A torchvision dataset class with official splits.

    Class attributes: ``tv_class`` (the name in ``torchvision.datasets``), ``Args`` (its
    options, named as the class's keyword arguments), ``folder`` (what
    torchvision reads under the root: the path checked and named in errors), ``layout`` (the
    expected files, for the error), the keyword arguments of its ``train``, ``val`` and
    ``test`` splits (val and test None when the dataset has none), and ``subdir``: a
    folder of the data root to use as torchvision's root (for datasets that put their
    files directly in it).
    """

    tv_class: ClassVar[str]
    downloadable: ClassVar[bool] = True
    folder: ClassVar[str]
    layout: ClassVar[str]
    train: ClassVar[dict[str, Any]] = {"split": "train"}
    val: ClassVar[dict[str, Any] | None] = None
    test: ClassVar[dict[str, Any] | None] = {"split": "test"}
    subdir: ClassVar[str] = ""
    Args = NoArgs

    def root(self, data: DataAccess) -> Path:
        return data.root / self.subdir if self.subdir else data.root

    def locations(self, args: Frozen, data: DataAccess) -> list[Path]:
        return [self.root(data) / self.folder]

    def splits(self) -> list[dict[str, Any]]:
        return [s for s in (self.train, self.val, self.test) if s is not None]

    def extra(self, args: Frozen) -> dict[str, Any]:
        """Keyword arguments for every split: the ``args`` block, whose fields are named as
        the torchvision class's (``partition``, ``annotation_level``)."""
        return args.model_dump()

    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        missing = [p for p in self.locations(args, data) if not p.exists()]
        if missing:
            if not data.download:
                raise ConfigError(f"dataset {self.name}: not found at {missing[0]}; set `download: true` in the "
                                  f"suite, or place the files there ({self.layout})")
            try:
                for split in self.splits():  # some datasets fetch one file per split (SVHN)
                    self._open(data, args, split, download=True)
            except Exception as err:  # noqa: BLE001 - network and archive failures come in many types
                raise ConfigError(f"dataset {self.name}: download into {self.root(data)} failed ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:120] if str(err) else ''}); without network, "
                                  f"place the files at {missing[0]} ({self.layout})") from None
        train = self._open(data, args, self.train)
        val = self._open(data, args, self.val) if self.val else None
        test = self._open(data, args, self.test) if self.test else None
        return assemble(self.name, train, val, test, root=self.root(data),
                        names=self.class_names(train, labels_of(train)))

    def _open(self, data: DataAccess, args: Frozen, split: dict[str, Any] | None, *,
              download: bool = False) -> Any:
        import torchvision

        assert split is not None
        cls = getattr(torchvision.datasets, self.tv_class)
        try:
            return cls(str(self.root(data)), **split, **self.extra(args), download=download)
        except Exception as err:  # noqa: BLE001 - unreadable files raise many types (pickle, .mat, JSON, …)
            if download:
                raise
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            hint = " (a partial download? delete it and run again)" if data.download else ""
            raise ConfigError(f"dataset {self.name}: files at {self.locations(args, data)[0]} cannot "
                              f"be read ({reason}); expected {self.layout}{hint}") from None

    @staticmethod
    def class_names(ds: Any, labels: np.ndarray) -> tuple[str, ...]:
        """The dataset's class names when it has them, else "0".."k-1"."""
        names = getattr(ds, "classes", None) or getattr(ds, "categories", None)
        if names and len(names) > labels.max():
            return tuple(str(c) for c in names)
        return tuple(str(i) for i in range(int(labels.max()) + 1))


def assemble(name: str, train: Any, val: Any | None, test: Any | None, *, root: Path,
             names: tuple[str, ...]) -> DataPool:
    """A lazy pool from a dataset's official splits: train and val concatenated (val's
    positions recorded as ``val_index``), test as the official test split."""
    parts = [train] + ([val] if val is not None else [])
    source = train if val is None else torch.utils.data.ConcatDataset(parts)
    y = torch.as_tensor(np.concatenate([labels_of(p) for p in parts]), dtype=torch.int64)
    identity = "|".join(identity_of(p, root) for p in parts)
    x = ImageView(source, torch.arange(len(y)), f"{name}:{identity}")
    val_index = torch.arange(len(train), len(y)) if val is not None else None
    if test is None:
        return DataPool(x, y, names, val_index=val_index)
    test_y = torch.as_tensor(labels_of(test), dtype=torch.int64)
    test_x = ImageView(test, torch.arange(len(test_y)), f"{name}:{identity_of(test, root)}")
    return DataPool(x, y, names, test_x, test_y, val_index)


def labels_of(ds: Any) -> np.ndarray:
    """A torchvision dataset's labels without decoding an image."""
    for attr in ("targets", "labels", "_labels", "y"):
        value = getattr(ds, attr, None)
        if value is not None:
            return np.asarray(value, dtype=np.int64).reshape(-1)
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    if samples is not None:
        return np.asarray([s[1] for s in samples], dtype=np.int64)
    raise ConfigError(f"{type(ds).__name__}: cannot read its labels without decoding every image")


def identity_of(ds: Any, root: Path) -> str:
    """What identifies a dataset's content, cheaply: its class (its ``identity_name`` if it
    has one), size and labels, plus its file list relative to ``root`` with each file's size
    and modification time (or its pixel array for datasets held in memory), so moving the data
    root (keeping times, as ``mv`` and ``cp -p`` do) does not change it and different files do."""
    digest = hashlib.sha256(getattr(ds, "identity_name", type(ds).__name__).encode())
    digest.update(labels_of(ds).tobytes())
    data = getattr(ds, "data", None)
    if isinstance(data, np.ndarray):
        digest.update(np.ascontiguousarray(data).tobytes())
    else:
        files = (getattr(ds, "_image_files", None) or getattr(ds, "_images", None) or getattr(ds, "samples", None)
                 or getattr(ds, "_samples", None) or [])
        if not files and getattr(ds, "categories", None) is not None and getattr(ds, "index", None) is not None:
            files = [Path(ds.root, "101_ObjectCategories", ds.categories[c], f"image_{i:04d}.jpg")
                     for c, i in zip(ds.y, ds.index)]  # Caltech101 keeps category + number, not paths
        for item in files:
            path = Path(item[0] if isinstance(item, tuple) else item)
            try:
                rel = path.relative_to(root)
            except ValueError:
                rel = path
            try:  # size and modification time stand in for the content (hashing it is too slow)
                st = path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "?"
            digest.update(f"{rel}|{stamp}\n".encode())
    return f"{len(ds)}:{digest.hexdigest()[:16]}"


class Cifar10(TorchvisionDataset):
    name = "cifar10"
    description = "CIFAR-10, 50k/10k images 32x32, 10 classes (torchvision)"
    tv_class, folder = "CIFAR10", "cifar-10-batches-py"
    layout = "cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta"
    train, test = {"train": True}, {"train": False}


class Cifar100(TorchvisionDataset):
    name = "cifar100"
    description = "CIFAR-100, 50k/10k images 32x32, 100 fine classes (torchvision)"
    tv_class, folder = "CIFAR100", "cifar-100-python"
    layout = "cifar-100-python/ with train, test and meta"
    train, test = {"train": True}, {"train": False}


class Svhn(TorchvisionDataset):
    name = "svhn"
    description = "SVHN cropped digits, 73k/26k images 32x32, 10 classes (torchvision)"
    tv_class, folder, subdir = "SVHN", "train_32x32.mat", "svhn"
    layout = "svhn/train_32x32.mat and svhn/test_32x32.mat"

    def locations(self, args: Frozen, data: DataAccess) -> list[Path]:
        return [self.root(data) / "train_32x32.mat", self.root(data) / "test_32x32.mat"]


class Stl10(TorchvisionDataset):
    name = "stl10"
    description = "STL-10 labelled images, 5k/8k at 96x96, 10 classes (torchvision)"
    tv_class, folder = "STL10", "stl10_binary"
    layout = "stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt"


class Flowers102(TorchvisionDataset):
    name = "flowers102"
    description = "Oxford Flowers-102, 1k train / 1k val / 6k test, 102 classes (torchvision)"
    tv_class, folder = "Flowers102", "flowers-102"
    layout = "flowers-102/ with jpg/, imagelabels.mat and setid.mat"
    val = {"split": "val"}


class Pets(TorchvisionDataset):
    name = "oxford_iiit_pet"
    description = "Oxford-IIIT Pet, 3.7k trainval / 3.7k test, 37 breeds (torchvision)"
    tv_class, folder = "OxfordIIITPet", "oxford-iiit-pet"
    layout = "oxford-iiit-pet/ with images/ and annotations/trainval.txt, test.txt"
    train = {"split": "trainval"}


class DtdArgs(Frozen):
    partition: int = Field(1, ge=1, le=10)


class Dtd(TorchvisionDataset):
    name = "dtd"
    description = "Describable Textures, 1.9k train / 1.9k val / 1.9k test, 47 classes (torchvision)"
    tv_class, folder = "DTD", "dtd/dtd"
    layout = "dtd/dtd/ with images/<class>/*.jpg and labels/train1.txt, val1.txt, test1.txt"
    val = {"split": "val"}
    Args = DtdArgs


class Food101(TorchvisionDataset):
    name = "food101"
    description = "Food-101, 75.75k/25.25k images, 101 classes (torchvision)"
    tv_class, folder = "Food101", "food-101"
    layout = "food-101/ with images/<class>/*.jpg and meta/train.json, test.json"


class Caltech101(TorchvisionDataset):
    name = "caltech101"
    description = "Caltech-101, 8.7k images, 101 classes, no official split (torchvision)"
    tv_class, folder = "Caltech101", "caltech101/101_ObjectCategories"
    layout = "caltech101/101_ObjectCategories/<class>/*.jpg and caltech101/Annotations/"
    train, test = {"target_type": "category"}, None


class EuroSat(TorchvisionDataset):
    name = "eurosat"
    description = "EuroSAT RGB, 27k Sentinel-2 images 64x64, 10 classes, no official split (torchvision)"
    tv_class, folder = "EuroSAT", "eurosat/2750"
    layout = "eurosat/2750/<class>/*.jpg"
    train, test = {}, None


class AircraftArgs(Frozen):
    annotation_level: Literal["variant", "family", "manufacturer"] = "variant"


class Aircraft(TorchvisionDataset):
    name = "fgvc_aircraft"
    description = "FGVC-Aircraft, 3.3k train / 3.3k val / 3.3k test, 100 variants (torchvision)"
    tv_class, folder = "FGVCAircraft", "fgvc-aircraft-2013b"
    layout = "fgvc-aircraft-2013b/data/ with images/ and images_variant_{train,val,test}.txt"
    val = {"split": "val"}
    Args = AircraftArgs


class Cars(TorchvisionDataset):
    name = "stanford_cars"
    description = "Stanford Cars, 8.1k/8.0k images, 196 classes (torchvision; manual download)"
    tv_class, folder = "StanfordCars", "stanford_cars"
    downloadable = False
    layout = ("stanford_cars/ with cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat "
              "(the original host is gone: torchvision cannot download it)")


class FolderArgs(Frozen):
    path: str
    val: str | None = None
    test: str | None = None


def is_hidden(name: str) -> bool:
    """Whether a file or folder of an image tree is never read: a hidden name (a leading dot:
    ``.ipynb_checkpoints``, ``.DS_Store``, the ``._*`` files macOS writes on other disks) or
    the ``__MACOSX`` folder of a zip archive made on macOS."""
    return name.startswith(".") or name == "__MACOSX"


def class_folders(path: Path) -> list[str]:
    """The class folders of an image tree: its subfolders (links followed) that are not
    hidden (:func:`is_hidden`), sorted by name as torchvision sorts them."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if not is_hidden(e.name) and e.is_dir())


def image_extensions() -> tuple[str, ...]:
    """The file extensions read as images (torchvision's ``IMG_EXTENSIONS``; any case)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def open_image(path: str) -> Any:
    """An image file as PIL decodes it, in its own mode. torchvision's loader converts to RGB
    here, which clips 16-bit images (``I;16``) at 255; :func:`tlbench.data.views.to_rgb` converts
    them when they are read, scaling 16 bits to 8."""
    from PIL import Image

    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    return image


def _make_visible_image_folder() -> type:
    """Defines :class:`VisibleImageFolder`. Subclassing torchvision's ``ImageFolder`` imports
    torchvision, which would add about a second to every command if this module did it."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class VisibleImageFolder(ImageFolder):
        """torchvision's ``ImageFolder`` without hidden entries (:func:`is_hidden`): they are
        neither classes nor images, at any depth of a class folder. A class folder without
        images is kept (``allow_empty``) for the caller to name every such folder."""

        #: What :func:`identity_of` hashes in place of the class name: a tree without hidden
        #: entries keeps the identity (and the caches and results keyed on it) that plain
        #: ``ImageFolder`` gave it.
        identity_name = "ImageFolder"

        def __init__(self, root: str) -> None:
            self._skip = len(os.path.join(os.path.expanduser(root), ""))  # as torchvision expands it
            super().__init__(root, loader=open_image, is_valid_file=self.is_image, allow_empty=True)

        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            classes = class_folders(Path(directory))
            if not classes:
                raise FileNotFoundError(f"no class folders in {directory}")
            return classes, {name: i for i, name in enumerate(classes)}

        def is_image(self, path: str) -> bool:
            """An image file by its extension (any case), with no hidden name below the root."""
            return (not any(is_hidden(part) for part in path[self._skip:].split(os.sep))
                    and has_file_allowed_extension(path, tuple(IMG_EXTENSIONS)))

    # pickled by its module and name (DataLoader workers that spawn), found there by __getattr__
    VisibleImageFolder.__module__, VisibleImageFolder.__qualname__ = __name__, "VisibleImageFolder"
    return VisibleImageFolder


def visible_image_folder() -> type:
    """The class :class:`VisibleImageFolder`, defined on first use."""
    cls = globals().get("VisibleImageFolder")
    if cls is None:
        cls = globals()["VisibleImageFolder"] = _make_visible_image_folder()
    return cls


def __getattr__(name: str) -> Any:
    """``VisibleImageFolder`` on first access (PEP 562): how pickle finds it by name."""
    if name == "VisibleImageFolder":
        return visible_image_folder()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ImageFolderDataset(Dataset):
    """A local tree ``<path>/<class>/<image>`` (torchvision's ``ImageFolder``, hidden files
    and folders skipped); optional ``val`` and ``test`` trees with the same class folders are
    the official splits. Relative paths are under the data root."""

    name = "image_folder"
    description = "a local tree <path>/<class>/*.jpg|png (+ optional val/test trees) read lazily"
    Args = FolderArgs

    def locations(self, args: Frozen, data: DataAccess) -> list[Path]:
        assert isinstance(args, FolderArgs)
        return [data.root / p for p in (args.path, args.val, args.test) if p]

    def load(self, args: Frozen, data: DataAccess) -> DataPool:
        assert isinstance(args, FolderArgs)
        train = self._open(data.root / args.path, "path", None)
        classes = list(train.classes)
        val = self._open(data.root / args.val, "val", classes) if args.val else None
        test = self._open(data.root / args.test, "test", classes) if args.test else None
        return assemble(self.name, train, val, test, root=data.root, names=tuple(classes))

    def _open(self, path: Path, field: str, classes: list[str] | None) -> Any:
        """The tree at ``path`` (``args.<field>``); ``classes``: the training tree's, which a
        val or test tree must have too."""
        where = f"dataset image_folder: args.{field}: {path}"
        accepted = image_extensions()
        layout = f"one folder per class holding images ({', '.join(accepted)}; any case)"
        if not path.is_dir():
            raise ConfigError(f"{where} is not a folder; expected {layout}")
        try:
            found = class_folders(path)
        except OSError as err:
            raise ConfigError(f"{where} cannot be read ({type(err).__name__}: {err.strerror or err}); "
                              f"expected {layout}") from None
        if not found:
            with os.scandir(path) as entries:
                loose = sum(1 for e in entries if not is_hidden(e.name) and e.name.lower().endswith(accepted))
            hint = f" ({loose} images lie directly in it, outside any class folder)" if loose else ""
            raise ConfigError(f"{where} has no class folders{hint}; hidden folders are skipped; expected {layout}")
        if classes is not None and found != classes:
            here, there = set(found), set(classes)
            lacks = [c for c in classes if c not in here]
            extra = [c for c in found if c not in there]
            diff = [f"lacks classes {name_list(lacks)}"] if lacks else []
            diff += [f"has extra {name_list(extra)}"] if extra else []
            raise ConfigError(f"{where} {' and '.join(diff)} compared with the training tree args.path; the trees "
                              f"need the same class folders")
        try:
            ds = visible_image_folder()(str(path))
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"{where} cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else ''}); expected {layout}") from None
        used = set(ds.targets)
        empty = [name for i, name in enumerate(ds.classes) if i not in used]
        if empty:
            raise ConfigError(f"{where}: class folder(s) {name_list(empty)} hold no images; files with other "
                              f"extensions and hidden files are not read; expected {layout}")
        return ds


IMAGE_DATASETS: tuple[type[Dataset], ...] = (Cifar10, Cifar100, Svhn, Stl10, Flowers102, Pets, Dtd, Food101,
                                             Caltech101, EuroSat, Aircraft, Cars, ImageFolderDataset)
