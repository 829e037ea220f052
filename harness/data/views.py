"""A split's image files, read lazily: :class:`ImageView` is a map-style dataset of PIL images
(any torchvision dataset or image folder), the positions of the split's examples in it, and the
preprocessing a backbone needs. ``Inputs`` — what a split holds — is a tensor (the offline
datasets, moved to the device once) or an image view.

Decoding lives here too: images are read as 8-bit RGB (16-bit images scaled, not clipped), and a
file that cannot be read says which and why in plain words (:func:`read_rgb`).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from tlbench.core.errors import ImageSizeMismatch, UnreadableData
from tlbench.data.preprocess import Augment, Preprocess, normalize


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
