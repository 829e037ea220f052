"""Inputs of a split as the training loop reads them: in-memory tensors, or images decoded
and preprocessed lazily.

An in-memory split (the offline datasets) is one tensor moved to the device once and
indexed per batch. An image split (torchvision datasets, image folders) is an
:class:`ImageView`: a map-style dataset of PIL images, the positions of the split's
examples in it, and the preprocessing a backbone needs. Both are read through a
:class:`Reader`, which yields the inputs of whatever batches of positions the loop asks
for, so the loop's seeded batch order (and ``Batch.index``) is the same for both.

An image view is read from the image cache (:mod:`tlbench.imagecache`: decoded once into
a memory-mapped uint8 file) when :class:`Loading` has one, else from its files by DataLoader
workers. Either way a batch arrives as uint8 pixels and is flipped (``flip``) and
normalised on the training device by the same code, so the two paths give the model the
same tensors wherever the preprocessing is deterministic.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tlbench.errors import ImageSizeMismatch, UnreadableData

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
    #: Images at their own size: no resize, no crop (``image_size: native``); ``resize`` and
    #: ``crop`` are then 0.
    native: bool = False

    @classmethod
    def from_transforms(cls, transforms: Any) -> "Preprocess":
        """From a torchvision weights enum's ``transforms()`` (an ``ImageClassification``)."""
        return cls(resize=int(transforms.resize_size[0]), crop=int(transforms.crop_size[0]),
                   mean=tuple(float(v) for v in transforms.mean), std=tuple(float(v) for v in transforms.std),
                   interpolation=str(transforms.interpolation.value))

    def at(self, size: "int | Literal['native'] | None") -> "Preprocess":
        """The same preprocessing at crop size ``size`` (the resize keeps its ratio), or at
        the images' own size (``"native"``)."""
        if size == "native":
            return replace(self, resize=0, crop=0, native=True)
        if size is None or size == self.crop:
            return self
        return replace(self, resize=max(size, round(size * self.resize / self.crop)), crop=size)

    def pixels(self, augment: Augment = "none") -> Any:
        """PIL image → uint8 CHW tensor: resize + centre crop (or, for ``crop_flip``, the
        random resized crop and flip), as the files are read; ``flip`` and normalisation are
        applied per batch (:func:`flip_draws`, :func:`normalize`)."""
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(self.interpolation)
        if augment == "crop_flip":  # Inception-style random resized crop, as in ImageNet training
            crop = _OwnSizeCrop(mode) if self.native else v2.RandomResizedCrop(self.crop, interpolation=mode,
                                                                                antialias=True)
            head = [crop, v2.RandomHorizontalFlip()]
        elif self.native:
            head = []
        else:  # resizing the PIL image (before ToImage) is what torchvision's presets do
            head = [v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(self.crop)]
        return v2.Compose([*head, v2.ToImage()])

    def transform(self, augment: Augment = "none") -> Any:
        """The whole torchvision pipeline on one PIL image (float, normalised): the reference
        the batched path (:meth:`pixels` + :func:`normalize`) is tested against."""
        from torchvision.transforms import v2

        head = [self.pixels(augment)] + ([v2.RandomHorizontalFlip()] if augment == "flip" else [])
        return v2.Compose([*head, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))])

    def describe(self) -> dict[str, Any]:
        out = {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
               "interpolation": self.interpolation}
        return {**out, "native": True} if self.native else out


class _OwnSizeCrop:
    """``RandomResizedCrop`` to the image's own size (``image_size: native``)."""

    def __init__(self, mode: Any) -> None:
        self.mode = mode

    def __call__(self, image: Any) -> Any:
        from torchvision.transforms import v2

        width, height = image.size
        return v2.RandomResizedCrop((height, width), interpolation=self.mode, antialias=True)(image)


def normalize(x: torch.Tensor, preprocess: Preprocess, *, channels_last: bool = False,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """A batch of uint8 images (N, C, H, W; any strides) → float32, scaled to [0, 1] and
    normalised with ``preprocess``'s mean and std, on ``x``'s device: two passes over the
    batch (a converting copy and one fused multiply-add), within 1e-6 of torchvision's
    ``ToDtype(scale=True)`` + ``Normalize``. ``channels_last`` picks the output layout;
    ``out`` (float32, that shape and layout) is written instead of a new tensor."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
    out.copy_(x)
    return torch.addcmul(-mean / std, out, 1.0 / (255.0 * std), out=out)


class OutputPool:
    """Float batches a Reader hands out on the CPU, reused once nothing else holds them.

    A fresh tensor over 32 MB (a batch of 64 images at 224 px is 38.5 MB) is mapped anew by
    glibc's allocator, and the first write to each of its pages faults: that alone cut the
    rate at which batches are normalised by about three. A buffer is handed out again only
    when this pool holds its only reference (no variable, view, autograd graph or array
    refers to it or its memory), so a batch still in use is never overwritten.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size  # the batch being made, the one the caller still holds, and one spare
        self.buffers: list[torch.Tensor] = []

    def get(self, shape: tuple[int, ...], *, channels_last: bool) -> torch.Tensor:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for i in range(len(self.buffers)):
            if self.buffers[i].shape == shape and self.buffers[i].is_contiguous(memory_format=fmt) \
                    and self._free(i):
                return self.buffers[i]
        buffer = torch.empty(shape, dtype=torch.float32, memory_format=fmt)
        self.buffers = [*self.buffers[-(self.size - 1):], buffer] if self.size > 1 else [buffer]
        return buffer

    def _free(self, i: int) -> bool:
        """Whether only the pool refers to buffer ``i``: its Python object (the list's
        reference and getrefcount's own), its tensor (autograd and views hold it) and its
        memory (other tensors over the same storage)."""
        buffer = self.buffers[i]  # a third reference while this runs
        return (sys.getrefcount(buffer) == 3 and buffer._use_count() == 1
                and torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) == 2)


_GOLDEN, _MASK = np.uint64(0x9E3779B97F4A7C15), (1 << 64) - 1


def uniforms(seeds: Iterable[int], n: int) -> np.ndarray:
    """``n`` uniform draws in [0, 1) per seed (shape (len(seeds), n)): splitmix64 of the seed
    and the draw's number. A counter-based stream: the draws of an example depend on its seed
    only, not on the batch, the device or the order examples are read in."""
    s = np.asarray([int(v) & _MASK for v in seeds], dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        z = s + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64).reshape(1, -1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


#: Which draw of an example's stream decides its flip (the random resized crop uses draws 0..39).
FLIP_DRAW = 40


def flip_draws(seeds: Iterable[int]) -> torch.Tensor:
    """Whether each example (by its sample seed) is flipped horizontally: probability 1/2."""
    seeds = list(seeds)
    if not seeds:
        return torch.zeros(0, dtype=torch.bool)
    return torch.from_numpy(uniforms(seeds, FLIP_DRAW + 1)[:, FLIP_DRAW] < 0.5)


def flip_where(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with the images where ``flips`` is set mirrored left-right, in
    place (callers pass a batch they own) and returned."""
    if bool(flips.any()):
        where = flips.nonzero().flatten().to(x.device)  # index_select/index_copy_: ~10x boolean masks
        x.index_copy_(0, where, x.index_select(0, where).flip(-1))
    return x


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
        """(N, 3, crop, crop): every image is read as RGB and centre-cropped (native size:
        the first image's)."""
        if self.preprocess is not None and self.preprocess.native and len(self):
            return (len(self), *self.head(1).shape[1:])
        crop = self.preprocess.crop if self.preprocess else 0
        return (len(self), 3, crop, crop)

    def bound(self, preprocess: Preprocess, augment: Augment = "none") -> "ImageView":
        return replace(self, preprocess=preprocess, augment=augment)

    def dataset(self, *, train: bool) -> "_Images":
        if self.preprocess is None:
            raise RuntimeError("ImageView read before a backbone's preprocessing was bound to it")
        augment = self.augment if train else "none"
        size = None
        if self.preprocess.native and len(self):  # every image must have the first's size
            first = read_rgb(self.source, int(self.indices[0]))
            size = (first.height, first.width)
        return _Images(self.source, self.indices.tolist(), self.preprocess.pixels(augment),
                       random=augment == "crop_flip", size=size)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` inputs, preprocessed without augmentation (for shape checks)."""
        assert self.preprocess is not None
        images = self.dataset(train=False)
        return normalize(torch.stack([images[i] for i in range(min(n, len(self)))]), self.preprocess)


class _Images(Dataset):
    """``(sample seed, position)`` → uint8 tensor; runs in DataLoader workers.

    A random transform (the random resized crop) draws from a generator seeded per sample
    by the Reader, so the crops and flips of a run depend on its seed, epoch and the
    example, not on the number of workers or on what else used the global random state.
    """

    def __init__(self, source: ImageSource, indices: list[int], transform: Any, *, random: bool = False,
                 size: tuple[int, int] | None = None) -> None:
        self.source, self.indices, self.transform, self.random = source, indices, transform, random
        self.size = size  # (height, width) every image must have (``image_size: native``)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> torch.Tensor:
        sample_seed, position = item if isinstance(item, tuple) else (0, item)
        image = read_rgb(self.source, self.indices[position])
        if self.size is not None:
            check_native_size(self.source, self.indices[position], (image.height, image.width), self.size,
                              self.indices[0])
        if not self.random:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):  # torchvision's v2 transforms draw from torch's RNG
            torch.manual_seed(sample_seed)
            return self.transform(image)


def check_native_size(source: ImageSource, index: int, size: tuple[int, int], first: tuple[int, int],
                      first_index: int) -> None:
    """``image_size: native`` reads every image at its own size, so all must have the size of the
    first (example ``first_index``, ``first`` as (height, width)); :class:`ImageSizeMismatch` names
    the first image that does not, and the one it was compared with."""
    if tuple(size) != tuple(first):
        raise ImageSizeMismatch(
            f"image_size: native needs images of one size; {describe_example(source, index)} is "
            f"{size[1]}x{size[0]}, but the first, {describe_example(source, first_index)}, is {first[1]}x{first[0]} "
            f"(width x height); set image_size to a number of pixels instead")


def read_rgb(source: ImageSource, index: int) -> Any:
    """Example ``index`` of ``source`` decoded as an 8-bit RGB PIL image (:func:`to_rgb`);
    a file that cannot be read raises :class:`UnreadableData` naming it."""
    try:
        return to_rgb(source[index][0])
    except Exception as err:  # noqa: BLE001 - PIL and the dataset classes raise many types
        where = describe_example(source, index)
        raise UnreadableData(f"cannot read {where}: {why_unreadable(err, where)}; fix or remove "
                             f"the file and run again (finished work is kept)") from None


def why_unreadable(err: Exception, where: str) -> str:
    """Why an image could not be read, in plain words: Pillow's own message names an open file
    object (``cannot identify image file <_io.BufferedReader name=…>``), not what is wrong."""
    from PIL import UnidentifiedImageError

    try:
        size: int | None = os.path.getsize(where)
    except OSError:
        size = None
    if size == 0:
        return "the file is empty (0 bytes)"
    if isinstance(err, UnidentifiedImageError):
        head = b""
        with contextlib.suppress(OSError):
            with open(where, "rb") as f:
                head = f.read(12)
        begins = f", beginning {head!r}" if head else ""
        bytes_ = f"its {size:,} bytes" if size is not None else "it"
        return f"not an image: Pillow recognises no image format in {bytes_}{begins}"
    text = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    if "truncated" in text.lower():
        return f"the image is cut off ({size:,} bytes; the rest of the file is missing)" if size else \
            "the image is cut off"
    return text


#: PIL modes of more than 8 bits per sample, read as 16-bit values (PNG's 16-bit grayscale
#: opens as ``I;16`` or, in older Pillow, ``I``).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Any) -> Any:
    """An image as 8-bit RGB. 16-bit grayscale (and 32-bit integer ``I``, read as 16-bit)
    is scaled from its full range, 65,535 → 255, rather than clipped at 255 as PIL's
    ``convert`` does (which turns most of a 16-bit image white); palette, grayscale, CMYK
    and alpha images convert as PIL converts them (alpha dropped)."""
    from PIL import Image

    mode = getattr(image, "mode", "RGB")
    if mode == "RGB":
        return image
    if mode in WIDE_MODES:
        wide = np.asarray(image, dtype=np.float64)
        eight = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB")
    return image.convert("RGB")


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


class CachedInputs(Protocol):
    """A split's images held decoded (:class:`tlbench.imagecache.CachedSplit`)."""

    def pixels(self, positions: torch.Tensor, seeds: list[int] | None, *,
               device: torch.device) -> torch.Tensor: ...


class ImageStore(Protocol):
    """Where decoded images are kept (:class:`tlbench.imagecache.ImageCache`): the cached form
    of a view, or None to read its files."""

    def open(self, view: "ImageView", augment: Augment) -> CachedInputs | None: ...


@dataclass(frozen=True)
class Loading:
    """How image splits are read: from the image cache when there is one (``images``),
    else by DataLoader worker processes (persistent across the epochs of one fit), with
    pinned host memory for asynchronous copies to a GPU."""

    workers: int = 0
    pin_memory: bool = False
    prefetch: int = 4
    images: ImageStore | None = field(default=None, compare=False)


_SEEN: list[set[str]] = []


@contextmanager
def inputs_seen() -> Iterator[set[str]]:
    """Collects how the image splits read inside the block were produced: ``"cache"``
    (decoded images from the image cache) and/or ``"files"`` (decoded from their files)."""
    seen: set[str] = set()
    _SEEN.append(seen)
    try:
        yield seen
    finally:
        _SEEN.remove(seen)


def _saw(how: str) -> None:
    for seen in _SEEN:
        seen.add(how)


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
        loading: the image cache and worker settings (image views only).
        train: apply the view's training augmentation.
        seed: seeds the augmentation: each pass (epoch) and example gets its own stream.
        channels_last: the layout of image batches (what the model runs in).
    """

    def __init__(self, x: Inputs, *, device: torch.device, loading: Loading = Loading(),
                 train: bool = False, seed: int = 0, channels_last: bool = False) -> None:
        self.device, self.channels_last = device, channels_last
        self.seed, self.passes = seed, 0
        self.outputs = OutputPool()
        self.tensor: torch.Tensor | None = None
        self.loader: DataLoader | None = None
        self.cached: CachedInputs | None = None
        if isinstance(x, ImageView):
            assert x.preprocess is not None, "ImageView read before a backbone's preprocessing was bound to it"
            self.preprocess = x.preprocess
            self.augment: Augment = x.augment if train else "none"
            self.cached = loading.images.open(x, self.augment) if loading.images is not None else None
            _saw("cache" if self.cached is not None else "files")
            if self.cached is None:
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
        base = (self.seed * 1_000_003 + self.passes) * 10_000_019
        self.passes += 1
        batches = [idx.cpu() for idx in batches]
        seeds = [[(base + p) % 2**63 for p in idx.tolist()] for idx in batches]
        if self.cached is not None:
            for idx, s in zip(batches, seeds):
                pixels = self.cached.pixels(idx, s if self.augment != "none" else None, device=self.device)
                yield self._normalized(pixels)
            return
        assert self.loader is not None
        self.sampler.batches = [list(zip(s, idx.tolist())) for idx, s in zip(batches, seeds)]
        for xb, s in zip(self.loader, seeds):
            xb = xb.to(self.device, non_blocking=True)
            if self.augment == "flip":
                xb = flip_where(xb, flip_draws(s))
            yield self._normalized(xb)

    def _normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        out = (self.outputs.get(tuple(pixels.shape), channels_last=self.channels_last)
               if pixels.device.type == "cpu" else None)
        return normalize(pixels, self.preprocess, channels_last=self.channels_last, out=out)


def sequential(n: int, batch_size: int) -> list[torch.Tensor]:
    """Positions 0..n-1 in batches of ``batch_size`` (inference order)."""
    return [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def read_all(x: Inputs, *, device: torch.device, loading: Loading = Loading(),
             batch_size: int = 512, channels_last: bool = False) -> Iterator[torch.Tensor]:
    """Every input of a split in order, in batches (no augmentation)."""
    if isinstance(x, torch.Tensor):  # slices are views: no index copy
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size].to(device, non_blocking=True)
        return
    yield from Reader(x, device=device, loading=loading, channels_last=channels_last)(sequential(len(x), batch_size))


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
    #: The classes' names in label order ("0".."k-1" when the dataset has none).
    class_names: tuple[str, ...] = ()

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
                    bind(self.shifted_test), info, self.class_names)

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
