"""How an image becomes the tensor a backbone reads: resizing and cropping (:class:`Preprocess`,
bound per backbone from its weights' transforms), flips drawn per example and seed, and
normalisation on the training device.

A batch arrives as uint8 pixels, from the image cache or from DataLoader workers, and is
flipped and normalised by the same code on the device (:func:`flip_where`, :func:`normalize`),
so the two paths give the model the same tensors wherever the preprocessing is deterministic.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Iterable, Literal

import numpy as np
import torch

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
    #: Both sides resized to ``crop`` (the aspect ratio not kept), no crop: ``Resize((224, 224))`` as
    #: the PEFT papers' VTAB-1k pipelines do (``image_resize: stretch``).
    stretch: bool = False

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

    def stretched(self, stretch: bool = True) -> "Preprocess":
        """This preprocessing resizing both sides to the crop size instead of resize + centre crop."""
        return replace(self, stretch=stretch) if stretch != self.stretch and not self.native else self

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
        elif self.stretch:
            head = [v2.Resize((self.crop, self.crop), interpolation=mode, antialias=True)]
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
        if self.stretch:
            out = {**out, "stretch": True}
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
