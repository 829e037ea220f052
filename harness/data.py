"""Inputs of a split as the training loop reads them: in-memory tensors, or images decoded
and preprocessed lazily by DataLoader workers.

An in-memory split (the offline datasets) is one tensor moved to the device once and
indexed per batch. An image split (torchvision datasets, image folders) is an
:class:`ImageView`: a map-style dataset of PIL images, the positions of the split's
examples in it, and the preprocessing a backbone needs. Both are read through a
:class:`Reader`, which yields the inputs of whatever batches of positions the loop asks
for, so the loop's seeded batch order (and ``Batch.index``) is the same for both.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Literal, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tlbench.errors import UnreadableData

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Augment = Literal["none", "flip", "crop_flip"]


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) → centre crop → [0, 1] → normalise, as torchvision's
    ``ImageClassification`` presets do; training may add augmentation."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def from_transforms(cls, transforms: Any) -> "Preprocess":
        """From a torchvision weights enum's ``transforms()`` (an ``ImageClassification``)."""
        return cls(resize=int(transforms.resize_size[0]), crop=int(transforms.crop_size[0]),
                   mean=tuple(float(v) for v in transforms.mean), std=tuple(float(v) for v in transforms.std),
                   interpolation=str(transforms.interpolation.value))

    def at(self, size: int | None) -> "Preprocess":
        """The same preprocessing at crop size ``size`` (the resize keeps its ratio)."""
        if size is None or size == self.crop:
            return self
        return replace(self, resize=max(size, round(size * self.resize / self.crop)), crop=size)

    def transform(self, augment: Augment = "none") -> Any:
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(self.interpolation)
        # Resizing the PIL image (before ToImage) is what torchvision's presets do.
        tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        if augment == "crop_flip":  # Inception-style random resized crop, as in ImageNet training
            head = [v2.RandomResizedCrop(self.crop, interpolation=mode, antialias=True),
                    v2.RandomHorizontalFlip()]
        else:
            head = [v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(self.crop)]
            if augment == "flip":
                head.append(v2.RandomHorizontalFlip())
        return v2.Compose([*head, *tail])

    def describe(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}


class ImageSource(Protocol):
    """A torchvision-style map-style dataset: ``source[i]`` is ``(PIL image, label)``."""

    def __getitem__(self, index: int) -> tuple[Any, Any]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, eq=False)
class ImageView:
    """Examples ``indices`` of an image ``source``, preprocessed lazily.

    Indexing with a tensor of positions (or a boolean mask) gives a sub-view, as indexing a
    tensor would; ``identity`` names the source's content and ``preprocess`` is bound per
    backbone (:meth:`bound`) before anything is read.
    """

    source: ImageSource
    indices: torch.Tensor
    identity: str
    preprocess: Preprocess | None = None
    augment: Augment = "none"
    _fingerprint: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.identity.encode())
        digest.update(self.indices.to(torch.int64).numpy().tobytes())
        if self.preprocess is not None:  # augmentation is a training setting, not content
            digest.update(json.dumps(self.preprocess.describe()).encode())
        object.__setattr__(self, "_fingerprint", digest.hexdigest()[:16])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: torch.Tensor | slice) -> "ImageView":
        return replace(self, indices=self.indices[index])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, 3, crop, crop): every image is read as RGB and centre-cropped."""
        crop = self.preprocess.crop if self.preprocess else 0
        return (len(self), 3, crop, crop)

    def bound(self, preprocess: Preprocess, augment: Augment = "none") -> "ImageView":
        return replace(self, preprocess=preprocess, augment=augment)

    def dataset(self, *, train: bool) -> "_Images":
        if self.preprocess is None:
            raise RuntimeError("ImageView read before a backbone's preprocessing was bound to it")
        augment = self.augment if train else "none"
        return _Images(self.source, self.indices.tolist(), self.preprocess.transform(augment),
                       random=augment != "none")

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` inputs, preprocessed without augmentation (for shape checks)."""
        images = self.dataset(train=False)
        return torch.stack([images[i] for i in range(min(n, len(self)))])


class _Images(Dataset):
    """``(sample seed, position)`` → preprocessed tensor; runs in DataLoader workers.

    A random transform (augmentation) draws from a generator seeded per sample by the
    Reader, so the crops and flips of a run depend on its seed, epoch and the example, not
    on the number of workers or on what else used the global random state.
    """

    def __init__(self, source: ImageSource, indices: list[int], transform: Any, *, random: bool = False) -> None:
        self.source, self.indices, self.transform, self.random = source, indices, transform, random

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> torch.Tensor:
        sample_seed, position = item if isinstance(item, tuple) else (0, item)
        index = self.indices[position]
        try:
            image = self.source[index][0]
            if getattr(image, "mode", "RGB") != "RGB":  # grayscale / palette / CMYK files
                image = image.convert("RGB")
        except Exception as err:  # noqa: BLE001 - PIL and the dataset classes raise many types
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise UnreadableData(f"cannot read {describe_example(self.source, index)}: {reason}; fix or remove "
                                 f"the file and run again (finished work is kept)") from None
        if not self.random:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):  # torchvision's v2 transforms draw from torch's RNG
            torch.manual_seed(sample_seed)
            return self.transform(image)


Inputs = torch.Tensor | ImageView


def describe_example(source: Any, index: int) -> str:
    """The file behind example ``index`` of a torchvision-style dataset, when it says."""
    if isinstance(source, torch.utils.data.ConcatDataset):
        part = bisect.bisect_right(source.cumulative_sizes, index)
        start = source.cumulative_sizes[part - 1] if part else 0
        return describe_example(source.datasets[part], index - start)
    for attr in ("samples", "_samples", "_image_files", "_images"):
        files = getattr(source, attr, None)
        if files is not None and index < len(files):
            item = files[index]
            return str(item[0] if isinstance(item, tuple) else item)
    return f"example {index} of {type(source).__name__}"


@dataclass(frozen=True)
class Loading:
    """How image splits are read: DataLoader worker processes (persistent across the epochs
    of one fit) and pinned host memory for asynchronous copies to a GPU."""

    workers: int = 0
    pin_memory: bool = False
    prefetch: int = 4


class _Batches(Sampler[list[tuple[int, int]]]):
    """A batch sampler whose batches of ``(sample seed, position)`` are set before each pass
    (one epoch's seeded order)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Reader:
    """Yields the inputs of batches of positions, on ``device``.

    Args:
        x: the split's inputs.
        device: where batches go.
        loading: worker settings (image views only).
        train: apply the view's training augmentation.
        seed: seeds the augmentation: each pass (epoch) and example gets its own stream.
    """

    def __init__(self, x: Inputs, *, device: torch.device, loading: Loading = Loading(),
                 train: bool = False, seed: int = 0) -> None:
        self.device = device
        self.seed, self.passes = seed, 0
        self.tensor: torch.Tensor | None = None
        self.loader: DataLoader | None = None
        if isinstance(x, ImageView):
            self.sampler = _Batches()
            workers = loading.workers
            self.loader = DataLoader(x.dataset(train=train), batch_sampler=self.sampler, num_workers=workers,
                                     pin_memory=loading.pin_memory and device.type == "cuda",
                                     persistent_workers=workers > 0,
                                     prefetch_factor=loading.prefetch if workers > 0 else None)
        else:
            self.tensor = x.to(device)

    def __call__(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        if self.tensor is not None:
            for idx in batches:
                yield self.tensor[idx.to(self.device)]
            return
        assert self.loader is not None
        base = (self.seed * 1_000_003 + self.passes) * 10_000_019
        self.passes += 1
        self.sampler.batches = [[((base + p) % 2**63, p) for p in idx.tolist()] for idx in batches]
        for xb in self.loader:
            yield xb.to(self.device, non_blocking=True)


def sequential(n: int, batch_size: int) -> list[torch.Tensor]:
    """Positions 0..n-1 in batches of ``batch_size`` (inference order)."""
    return [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def read_all(x: Inputs, *, device: torch.device, loading: Loading = Loading(),
             batch_size: int = 512) -> Iterator[torch.Tensor]:
    """Every input of a split in order, in batches (no augmentation)."""
    if isinstance(x, torch.Tensor):  # slices are views: no index copy
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size].to(device, non_blocking=True)
        return
    yield from Reader(x, device=device, loading=loading)(sequential(len(x), batch_size))


@dataclass(frozen=True)
class Split:
    """One split of a task; ``fingerprint`` identifies its exact content (for image views:
    the files' identity, the positions and the preprocessing)."""

    x: Inputs
    y: torch.Tensor
    fingerprint: str

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    shifted_test: Split | None = None
    info: dict[str, object] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def lazy(self) -> bool:
        """Whether the inputs are image files read on demand (they need preprocessing)."""
        return isinstance(self.train.x, ImageView)

    def bound(self, preprocess: Preprocess, augment: Augment = "none") -> "Task":
        """This task with its image views preprocessed for a backbone (the train split also
        augmented when training); a task of tensors is returned as is."""
        if not self.lazy:
            return self

        def bind(split: Split | None, aug: Augment = "none") -> Split | None:
            if split is None or not isinstance(split.x, ImageView):
                return split
            return split_of(split.x.bound(preprocess, aug), split.y)

        info = {**self.info, "preprocess": preprocess.describe(), "augment": augment}
        return Task(self.name, bind(self.train, augment), bind(self.val), bind(self.test), self.num_classes,
                    bind(self.shifted_test), info)

    @property
    def fingerprint(self) -> str:
        parts = [self.train.fingerprint, self.val.fingerprint, self.test.fingerprint]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def split_of(x: Inputs, y: torch.Tensor) -> Split:
    if isinstance(x, ImageView):
        return Split(x, y, hashlib.sha256(f"{x.fingerprint}|{tensor_fingerprint(y)}".encode()).hexdigest()[:16])
    return Split(x, y, tensor_fingerprint(x, y))
