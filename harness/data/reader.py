"""Batches of a split on the device: :class:`Reader` yields the inputs of whatever batches of
positions the training loop asks for, so the loop's seeded batch order (and ``Batch.index``) is
the same for tensors and image views.

An image view is read from the image cache (:mod:`tlbench.data.imagecache`: decoded once into a
memory-mapped uint8 file) when :class:`Loading` has one, else from its files by DataLoader
workers; a :class:`Loading` given a set to note into (``Loading.noting``) collects, for a run's record,
how its images were produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from tlbench.data.preprocess import Augment, OutputPool, flip_draws, flip_where, normalize
from tlbench.data.views import ImageView, Inputs


class CachedInputs(Protocol):
    """A split's images held decoded (:class:`tlbench.data.imagecache.CachedSplit`)."""

    def pixels(self, positions: torch.Tensor, seeds: list[int] | None, *,
               device: torch.device) -> torch.Tensor: ...


class ImageStore(Protocol):
    """Where decoded images are kept (:class:`tlbench.data.imagecache.ImageCache`): the cached form
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
    #: Where readers note how their image splits were produced: ``"cache"`` (decoded images from the
    #: image cache) and/or ``"files"`` (decoded from their files); a run's record says so. None: nowhere.
    seen: set[str] | None = field(default=None, compare=False, repr=False)

    def noting(self, seen: set[str]) -> "Loading":
        """This loading, with readers noting into ``seen`` how they read."""
        return replace(self, seen=seen)


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
            if loading.seen is not None:
                loading.seen.add("cache" if self.cached is not None else "files")
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
