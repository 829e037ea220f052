"""The image cache: each image split decoded and resized once, read by every later epoch,
trial, seed and strategy from a memory-mapped file of uint8 pixels.

An entry holds the images of one split (an :class:`~tlbench.data.views.ImageView`: its source's
identity and positions) in one *stored form* (:class:`StoredForm`):

- ``crop`` — resized and centre-cropped exactly as the file path does it (PIL, the weights'
  resize, crop and interpolation): evaluation, and training with ``flip`` or no augmentation.
  The pixels the model sees are the file path's, bit for bit before normalisation.
- ``bounded`` — for ``crop_flip``: each image with its shorter side at most
  :data:`BOUND_FACTOR` × the crop size (never enlarged), aspect ratio kept. The random resized
  crop (torchvision's scale and ratio ranges), the flip and the normalisation run per batch on
  the training device from these uint8 pixels, with parameters drawn per run seed, epoch
  and example (:func:`crop_boxes`).
- ``native`` — the images as decoded (``image_size: native``); all of one size.

An entry is two files under the cache directory: ``<key>.u8`` (the pixels, image after image,
HWC) and ``<key>.json`` (the index: count, shapes, size and SHA-256 of the pixels). The key
hashes the source's identity (its files' paths, sizes and modification times), the
positions, the stored form and the code that produces the pixels (this module,
:mod:`tlbench.data.views` and :mod:`tlbench.data.preprocess`, Pillow's and torchvision's versions): a
changed file, preprocessing or pixel code makes a new key. Entries are written to a temporary file and renamed (the
index last), built under a lock (:func:`tlbench.core.atomic.building`) so that of two workers
missing the same entry one builds it and the other waits and reads it, and checked against
their index (size and digest) before a process first reads them: a corrupt entry is
rebuilt, never trusted.

Checking an entry's digest reads all of it (about 140 s per 100 GiB on the development machine),
so a full check leaves a *seal* beside the entry (``<key>.seal``): the data file's size, inode,
device, modification and change times (``st_ctime`` moves on every write and every ``utime``; no
program can set it back) and the digests of :data:`SEAL_WINDOWS` windows of :data:`SEAL_WINDOW` bytes spread over the file,
its first and last bytes included. A later process that finds the seal matching the file's
metadata and the windows' bytes trusts the entry after reading a few hundred KiB; anything else
(no seal, a moved, rewritten or touched file, a window whose bytes changed underneath unchanged
metadata) costs a full check, and a full check that fails rebuilds the entry. ``verify="full"``
(``--image-cache-verify full``) ignores seals and checks every entry in full.

The disk the cache uses is bounded (:class:`ImageCache` ``limit``): an entry that would
cross the limit is not built, and its split is read from its files, with one line saying so.
On a GPU, an entry that fits in ``device_share`` of the device's memory is copied there once
and batches are indexed from it; a larger one is streamed from the memory map through
pinned host memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tlbench.core.atomic import building
from tlbench.core.codeversion import digest_of
from tlbench.core.errors import ConfigError
from tlbench.core.processes import core_count
from tlbench.data.preprocess import Augment, Preprocess, flip_draws, flip_where, uniforms
from tlbench.data.views import ImageSource, ImageView, check_native_size, read_rgb

#: Stored shorter side for random resized crops, as a multiple of the crop size (336 px for
#: 224-px crops). FFCV's ImageNet recipes store at most ~256 px for crops of 160–192 px
#: (1.3–1.6×); 1.5× keeps the largest crops (scale ~1, 224 px out of a ~336 px side)
#: downsampled, as from the original files, and the smallest (scale 0.08: ~95 px of 336)
#: upsampled from about as many pixels as a 375-px photograph gives (~106 px).
BOUND_FACTOR = 1.5
#: The entry format; part of every key.
FORMAT = 1
#: torchvision's ``RandomResizedCrop`` defaults (scale of the area, aspect ratio w/h).
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
#: Attempts before the centre-crop fallback, as in torchvision.
ATTEMPTS = 10
#: The default disk limit (``auto``): half of the free space of the cache's file system
#: plus what the cache already holds, at most this much.
AUTO_LIMIT_MAX = 100 * 2**30
DEFAULT_DEVICE_SHARE = 0.25
#: A seal's sampled windows (first and last included) and their size in bytes.
SEAL_WINDOWS = 33
SEAL_WINDOW = 1 << 16


def pixel_code_version() -> str:
    """What the stored pixels depend on besides the data: the entry format, the sources of
    this module and of :mod:`tlbench.data.views` and :mod:`tlbench.data.preprocess` (decoding,
    resizing), and the versions of Pillow and torchvision (their resize filters)."""
    import PIL
    import torchvision

    code = code_digest(["tlbench.data.preprocess", "tlbench.data.views", __name__])
    return f"{FORMAT}|{PIL.__version__}|{torchvision.__version__}|{code}"


def source_code(source: ImageSource) -> list[str]:
    """tlbench's modules that define how ``source`` decodes its images (its class and its
    ``loader``; each part of a concatenation), so that changing them — such as how an image
    folder opens 16-bit files — changes the keys of the entries they built."""
    names: set[str] = set()
    for part in getattr(source, "datasets", None) or [source]:
        for owner in [*type(part).__mro__, getattr(part, "loader", None)]:
            name = getattr(owner, "__module__", None) or ""
            if name.startswith("tlbench.") and getattr(sys.modules.get(name), "__file__", None):
                names.add(name)
    return sorted(names)


def code_digest(modules: list[str]) -> str:
    """:func:`tlbench.core.codeversion.digest_of` over these modules' sources (each file read once
    per process)."""
    return digest_of({name: _module_source(name) for name in modules})


@functools.lru_cache(maxsize=None)
def _module_source(name: str) -> bytes:
    return Path(sys.modules[name].__file__ or "").read_bytes()


@dataclass(frozen=True)
class StoredForm:
    """How a split's images are stored (see the module docstring)."""

    kind: Literal["crop", "bounded", "native"]
    resize: int = 0
    crop: int = 0
    bound: int = 0
    interpolation: str = "bilinear"

    @classmethod
    def of(cls, preprocess: Preprocess, augment: Augment) -> "StoredForm":
        if preprocess.native:
            return cls("native")
        if augment == "crop_flip":
            return cls("bounded", crop=preprocess.crop, bound=round(BOUND_FACTOR * preprocess.crop),
                       interpolation=preprocess.interpolation)
        return cls("crop", resize=preprocess.resize, crop=preprocess.crop, interpolation=preprocess.interpolation)

    @property
    def fixed(self) -> bool:
        """Whether every image has the same shape."""
        return self.kind != "bounded"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "resize": self.resize, "crop": self.crop, "bound": self.bound,
                "interpolation": self.interpolation}

    def label(self) -> str:
        if self.kind == "crop":
            return f"resized to {self.resize}, centre crop {self.crop}x{self.crop}"
        if self.kind == "bounded":
            return f"shorter side at most {self.bound} px, for random {self.crop}-px crops"
        return "native size"

    def apply(self, image: Any) -> np.ndarray:
        """An RGB PIL image → its stored uint8 HWC pixels (PIL ops, as the file path)."""
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(self.interpolation)
        if self.kind == "crop":
            image = v2.CenterCrop(self.crop)(v2.Resize(self.resize, interpolation=mode, antialias=True)(image))
        elif self.kind == "bounded" and min(image.size) > self.bound:
            image = v2.Resize(self.bound, interpolation=mode, antialias=True)(image)
        return np.asarray(image, dtype=np.uint8).reshape(image.size[1], image.size[0], 3)

    def out_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) a batch of this form is read at."""
        return (self.crop, self.crop) if self.kind != "native" else shape


class _Decode(Dataset):
    """Position → stored pixels; runs in DataLoader workers while an entry is built."""

    def __init__(self, source: ImageSource, indices: list[int], form: StoredForm) -> None:
        self.source, self.indices, self.form = source, indices, form

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> np.ndarray:
        return self.form.apply(read_rgb(self.source, self.indices[position]))


def _listed(batch: list[np.ndarray]) -> list[np.ndarray]:
    return batch


class Corrupt(Exception):
    """An entry whose files do not agree with their index."""


@dataclass
class Entry:
    """One built entry, memory-mapped (read only; copy-on-write so torch can wrap it)."""

    key: str
    path: Path
    index: dict[str, Any]
    data: np.ndarray
    shapes: np.ndarray  # (N, 2): h, w
    offsets: np.ndarray  # (N + 1,): byte offsets
    _device: dict[str, torch.Tensor | None] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    @property
    def fixed(self) -> bool:
        return bool(self.index["fixed"])

    def images(self) -> torch.Tensor:
        """(N, H, W, 3) uint8 over the memory map (fixed-shape entries)."""
        h, w = (int(v) for v in self.shapes[0]) if self.count else (0, 0)
        return torch.from_numpy(self.data).view(self.count, h, w, 3)

    def on(self, device: torch.device, share: float) -> torch.Tensor | None:
        """The whole entry (flat uint8) on ``device`` when it fits in ``share`` of its
        memory (copied once per process), else None (stream it)."""
        name = str(device)
        if name not in self._device:
            fits = False
            if device.type == "cuda":
                free, total = torch.cuda.mem_get_info(device)
                fits = self.nbytes <= share * total and self.nbytes < 0.8 * free
            self._device[name] = torch.from_numpy(self.data).to(device) if fits else None
        return self._device[name]


def crop_boxes(shapes: np.ndarray, seeds: list[int]) -> np.ndarray:
    """Random resized crop boxes (top, left, height, width) for images of ``shapes`` (N, 2),
    one stream per sample seed: torchvision's ``RandomResizedCrop.get_params`` (scale
    U(0.08, 1) of the area, log-uniform aspect ratio in [3/4, 4/3], up to 10 attempts, then
    the centre crop of the clamped ratio), vectorised over the batch."""
    n = len(seeds)
    u = uniforms(seeds, 4 * ATTEMPTS)
    height, width = shapes[:, 0].astype(np.float64), shapes[:, 1].astype(np.float64)
    area = height * width
    boxes = np.zeros((n, 4), dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for attempt in range(ATTEMPTS):
        a, r, ti, tj = (u[:, 4 * attempt + k] for k in range(4))
        target = area * (SCALE[0] + a * (SCALE[1] - SCALE[0]))
        aspect = np.exp(log_ratio[0] + r * (log_ratio[1] - log_ratio[0]))
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        ok = ~done & (w > 0) & (h > 0) & (w <= width) & (h <= height)
        top = np.floor(ti * (height - h + 1))
        left = np.floor(tj * (width - w + 1))
        boxes[ok] = np.stack([top, left, h, w], 1)[ok].astype(np.int64)
        done |= ok
    if not done.all():  # the fallback: the whole image at the nearest allowed ratio, centred
        rest = ~done
        hh, ww = height[rest], width[rest]
        ratio = ww / hh
        w = np.where(ratio < RATIO[0], ww, np.where(ratio > RATIO[1], np.rint(hh * RATIO[1]), ww))
        h = np.where(ratio < RATIO[0], np.rint(ww / RATIO[0]), hh)
        boxes[rest] = np.stack([(hh - h) // 2, (ww - w) // 2, h, w], 1).astype(np.int64)
    return boxes


@dataclass
class CachedSplit:
    """A split read from its entry (what :class:`tlbench.data.reader.Reader` reads)."""

    entry: Entry
    form: StoredForm
    preprocess: Preprocess
    augment: Augment
    device_share: float
    reads: list[int]

    def pixels(self, positions: torch.Tensor, seeds: list[int] | None, *, device: torch.device) -> torch.Tensor:
        """The uint8 batch (B, 3, H, W) of ``positions`` on ``device``, augmented with
        ``seeds`` when training; the Reader normalises it as it does batches from files."""
        self.reads[0] += len(positions)
        if self.augment == "crop_flip":
            assert seeds is not None
            return self._crops(positions, seeds, device)
        x = self._fixed(positions, device)
        if self.augment == "flip" and seeds is not None:
            x = flip_where(x, flip_draws(seeds))
        return x

    def _fixed(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 3, H, W) uint8 (an NHWC tensor seen as NCHW) on ``device``."""
        resident = self.entry.on(device, self.device_share)
        count, (h, w) = self.entry.count, (int(v) for v in self.entry.shapes[0])
        if resident is not None:
            return torch.index_select(resident.view(count, h, w, 3), 0, positions.to(device)).permute(0, 3, 1, 2)
        batch = torch.empty((len(positions), h, w, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
        torch.index_select(self.entry.images(), 0, positions, out=batch)  # ~10x indexing's rate
        if device.type == "cuda":
            batch = batch.to(device, non_blocking=True)
        return batch.permute(0, 3, 1, 2)

    def _crops(self, positions: torch.Tensor, seeds: list[int], device: torch.device) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        index = positions.numpy()
        shapes, starts = self.entry.shapes[index], self.entry.offsets[index]
        boxes = crop_boxes(shapes, seeds)
        out_h, out_w = self.form.out_size((int(shapes[0][0]), int(shapes[0][1])) if len(index) else (0, 0))
        resident = self.entry.on(device, self.device_share)
        if resident is not None:
            flat = resident
        elif device.type != "cuda":  # crops are cut from the memory map itself
            flat = torch.from_numpy(self.entry.data)
        else:  # gather this batch's images into one pinned buffer, copied to the device at once
            sizes = shapes[:, 0] * shapes[:, 1] * 3
            local = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            pinned = torch.empty(int(sizes.sum()), dtype=torch.uint8).pin_memory()
            buffer = pinned.numpy()
            for k, (start, size) in enumerate(zip(starts, sizes)):
                buffer[local[k]:local[k] + size] = self.entry.data[start:start + size]
            flat, starts = pinned.to(device, non_blocking=True), local
        mode = InterpolationMode(self.preprocess.interpolation)
        out = torch.empty((len(index), 3, out_h, out_w), dtype=torch.uint8, device=device)
        jobs = list(zip(range(len(index)), shapes.tolist(), starts.tolist(), boxes.tolist(),
                        flip_draws(seeds).tolist()))

        direct = device.type == "cpu" and mode in (InterpolationMode.BILINEAR, InterpolationMode.NEAREST)

        def crop(part: list[tuple[int, list[int], int, list[int], bool]]) -> None:
            for k, (h, w), start, (top, left, bh, bw), flip in part:
                image = flat[start:start + h * w * 3].view(1, h, w, 3).permute(0, 3, 1, 2)  # NHWC: fast uint8 path
                if direct:  # what torchvision runs for uint8 on the CPU, without its ~0.1 ms of dispatch per call
                    image = cpu_resized_crop(image, top, left, bh, bw, (out_h, out_w), mode.value)
                else:
                    image = F.resized_crop(image, top, left, bh, bw, [out_h, out_w], interpolation=mode,
                                           antialias=True)
                out[k] = image[0].flip(-1) if flip else image[0]

        threads = _crop_threads() if device.type == "cpu" else 1
        if threads > 1 and len(jobs) > 1:  # one image's resize runs on one core: share the batch out
            list(_pool(threads).map(crop, [jobs[i::threads] for i in range(threads)]))
        else:
            crop(jobs)
        return out


def cpu_resized_crop(image: torch.Tensor, top: int, left: int, height: int, width: int, size: tuple[int, int],
                     mode: str) -> torch.Tensor:
    """torchvision's ``resized_crop`` of a uint8 (1, C, H, W) image on the CPU, antialiased,
    for ``bilinear`` and ``nearest``: the crop is a view, the resize torch's uint8 kernel
    (a test checks it equals torchvision's output)."""
    region = image[:, :, top:top + height, left:left + width]
    if mode == "nearest":
        return torch.nn.functional.interpolate(region, size=list(size), mode="nearest")
    return torch.nn.functional.interpolate(region, size=list(size), mode="bilinear", align_corners=False,
                                           antialias=True)


def _crop_threads() -> int:
    """Threads that cut the crops of a batch on the CPU: as many as torch's intra-op threads
    (each crop is one small resize that torch runs on one core)."""
    return max(1, torch.get_num_threads())


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="tlbench-crops")
    return _POOLS[threads]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``"20GB"``, ``"500MiB"``, ``"1.5T"``, ``"123456"`` → bytes (decimal and binary units)."""
    units = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
             "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("KMGTIB")
    unit = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1
    if unit not in units or amount < 0 or not math.isfinite(amount):
        raise ConfigError(f"--image-cache-limit {text!r}: allowed: auto, or a size such as 20GB, 500MiB, 1.5TB")
    return int(amount * units[unit])


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass
class Usage:
    """What the cache did in this process: entries built (and how long they took), images
    read from it, and the decode time those reads would have cost from the files."""

    built: int = 0
    built_bytes: int = 0
    build_seconds: float = 0.0
    images_read: int = 0
    decode_seconds_saved: float = 0.0
    fallbacks: int = 0
    full_checks: int = 0
    sealed_opens: int = 0


class ImageCache:
    """Decoded images on disk (see the module docstring).

    Args:
        directory: where entries live.
        limit: the most bytes the cache may hold (None: ``auto``, half of the free space
            plus what is held, at most :data:`AUTO_LIMIT_MAX`).
        device_share: the share of a GPU's memory an entry may take to be kept on it.
        workers: DataLoader workers that decode while an entry is built (0: the cores this
            process may use).
        log: where lines go (building, fallbacks, corrupt entries).
        verify: ``seal`` (default: an entry checked in full once is trusted while its seal
            holds) or ``full`` (every process checks every entry's digest in full).
    """

    def __init__(self, directory: Path, *, limit: int | None = None, device_share: float = DEFAULT_DEVICE_SHARE,
                 workers: int = 0, log: Callable[[str], None] = _stderr, progress_every: float = 10.0,
                 verify: Literal["seal", "full"] = "seal") -> None:
        if verify not in ("seal", "full"):
            raise ConfigError(f"image cache verify: {verify!r} is not one of: seal, full")
        self.verify = verify
        self.directory = Path(directory)
        self.limit, self.device_share, self.workers = limit, device_share, workers
        self.log, self.progress_every = log, progress_every
        self._entries: dict[str, Entry | None] = {}
        self._reads: dict[str, list[int]] = {}
        self._seconds_per_image: dict[str, float] = {}
        self.usage = Usage()

    # ------------------------------------------------------------------ reading

    def open(self, view: ImageView, augment: Augment) -> CachedSplit | None:
        """``view`` as stored for ``augment`` (built now when missing), or None when it is
        read from its files instead (the disk limit; said once per entry)."""
        assert view.preprocess is not None
        form = StoredForm.of(view.preprocess, augment)
        key = self.key(view, form)
        if key not in self._entries:
            self._entries[key] = self._entry(view, form, key)
        entry = self._entries[key]
        if entry is None:
            return None
        reads = self._reads.setdefault(key, [0])
        return CachedSplit(entry, form, view.preprocess, augment, self.device_share, reads)

    @staticmethod
    def key(view: ImageView, form: StoredForm) -> str:
        digest = hashlib.sha256(view.identity.encode())
        digest.update(view.indices.to(torch.int64).numpy().tobytes())
        digest.update(json.dumps(form.describe(), sort_keys=True).encode())
        digest.update(pixel_code_version().encode())
        digest.update(code_digest(source_code(view.source)).encode())  # how the source opens its images
        return digest.hexdigest()[:32]

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.directory / key[:2]
        return folder / f"{key}.u8", folder / f"{key}.json"

    def _entry(self, view: ImageView, form: StoredForm, key: str) -> Entry | None:
        try:
            found = self._load(key)
        except Corrupt:
            found = None  # rebuilt below, under the lock, after a second look
        if found is not None:
            return found
        data_path, _ = self.paths(key)
        with building(data_path):  # of several workers missing it, one builds; the others wait here
            try:
                found = self._load(key)
            except Corrupt as err:
                self.log(f"image cache: entry {data_path} is corrupt ({err}); rebuilding it")
                self._remove(key)
            if found is not None:
                return found
            return self._build(view, form, key)

    def _load(self, key: str) -> Entry | None:
        data_path, index_path = self.paths(key)
        if not index_path.is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
            shapes = np.asarray(index["shapes"] if not index["fixed"] else [index["shape"]] * index["count"],
                                dtype=np.int64).reshape(-1, 2)
            nbytes, digest = int(index["nbytes"]), str(index["sha256"])
            if index.get("key") != key or index.get("format") != FORMAT or len(shapes) != int(index["count"]):
                raise Corrupt("its index does not match its key")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise Corrupt(f"unreadable index: {type(err).__name__}") from None
        if not data_path.is_file() or data_path.stat().st_size != nbytes:
            size = data_path.stat().st_size if data_path.is_file() else "no"
            raise Corrupt(f"{size} bytes of pixels, the index says {nbytes}")
        if not (self.verify == "seal" and _sealed(data_path, self.seal_path(key), digest)):
            if _sha256(data_path) != digest:
                raise Corrupt("its pixels do not match the digest in its index")
            self.usage.full_checks += 1
            _seal(data_path, self.seal_path(key), digest)
        else:
            self.usage.sealed_opens += 1
        offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)]).astype(np.int64)
        if int(offsets[-1]) != nbytes:
            raise Corrupt("its shapes do not add up to its size")
        data = np.memmap(data_path, dtype=np.uint8, mode="c", shape=(nbytes,)) if nbytes else np.zeros(0, np.uint8)
        self._seconds_per_image[key] = float(index.get("seconds_per_image", 0.0))
        return Entry(key, data_path, index, data, shapes, offsets)

    def seal_path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.seal"

    def _remove(self, key: str) -> None:
        for path in (*self.paths(key), self.seal_path(key)):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ building

    def used(self) -> int:
        """Bytes of pixels the cache holds (every entry, any process's)."""
        if not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("*/*.u8") if p.is_file())

    def allowed(self) -> int:
        """The disk limit in bytes (``auto`` resolved now)."""
        if self.limit is not None:
            return self.limit
        self.directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        return min(AUTO_LIMIT_MAX, free // 2 + self.used())

    def _build(self, view: ImageView, form: StoredForm, key: str) -> Entry | None:
        n = len(view)
        name = view.identity.split(":")[0]
        low = n * 3 * form.crop * form.crop if form.kind == "crop" else 0  # exact; the others are known as built
        used, limit = self.used(), self.allowed()
        if used + low > limit:
            return self._fallback(f"{n} images of {name} need at least {human(low)} and the cache holds "
                                  f"{human(used)} of its {human(limit)} limit")
        data_path, index_path = self.paths(key)
        workers = self.workers or core_count()
        workers = workers if workers > 1 and n >= 64 else 0
        loader = DataLoader(_Decode(view.source, view.indices.tolist(), form), batch_size=32,
                            num_workers=workers, collate_fn=_listed)
        fd, tmp = tempfile.mkstemp(dir=data_path.parent, suffix=".u8.tmp")
        digest, written, shapes = hashlib.sha256(), 0, []
        start = last = time.perf_counter()
        try:
            with os.fdopen(fd, "wb") as f:
                for batch in loader:
                    for pixels in batch:
                        if form.kind == "native" and shapes:
                            check_native_size(view.source, int(view.indices[len(shapes)]), pixels.shape[:2],
                                              shapes[0], int(view.indices[0]))
                        shapes.append(tuple(pixels.shape[:2]))
                        raw = pixels.tobytes()
                        f.write(raw)
                        digest.update(raw)
                        written += len(raw)
                    if used + written > limit:
                        raise _OverLimit()
                    if len(shapes) == len(batch):  # said once the first batch fits, so a fallback is one line
                        self.log(f"image cache: decoding {n} images of {name} ({form.label()}) into "
                                 f"{data_path.parent} …")
                    now = time.perf_counter()
                    if self.progress_every >= 0 and now - last >= self.progress_every and len(shapes) < n:
                        last = now
                        self.log(f"image cache: {len(shapes)}/{n} images of {name} "
                                 f"({len(shapes) / (now - start):.0f} img/s)")
                f.flush()
                os.fsync(f.fileno())
            seconds = time.perf_counter() - start
            os.replace(tmp, data_path)
        except _OverLimit:
            Path(tmp).unlink(missing_ok=True)
            return self._fallback(f"{n} images of {name} passed {human(written)} and would take the cache over "
                                  f"its {human(limit)} limit")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        index = {"format": FORMAT, "key": key, "count": n, "fixed": form.fixed, "nbytes": written,
                 "sha256": digest.hexdigest(), "form": form.describe(), "source": view.identity,
                 "seconds": seconds, "seconds_per_image": seconds / max(1, n), "created": time.time()}
        if form.fixed:
            index["shape"] = list(shapes[0]) if shapes else [0, 0]
        else:
            index["shapes"] = [list(s) for s in shapes]
        _write_json(index, index_path)
        self.usage.built += 1
        self.usage.built_bytes += written
        self.usage.build_seconds += seconds
        self.log(f"image cache: {n} images of {name} decoded in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} img/s), "
                 f"{human(written)}; the cache holds {human(used + written)} of its {human(limit)} limit")
        return self._load(key)

    def _fallback(self, why: str) -> None:
        self.usage.fallbacks += 1
        self.log(f"image cache: not caching: {why}; reading these images from their files "
                 f"(raise --image-cache-limit, or free space in {self.directory})")
        return None

    def summary(self) -> Usage:
        """This process's usage, with the images read from the cache and the decode time
        they saved (at each entry's measured build rate)."""
        usage = Usage(**{k: getattr(self.usage, k) for k in ("built", "built_bytes", "build_seconds", "fallbacks",
                                                          "full_checks", "sealed_opens")})
        for key, reads in self._reads.items():
            usage.images_read += reads[0]
            usage.decode_seconds_saved += reads[0] * self._seconds_per_image.get(key, 0.0)
        return usage


class _OverLimit(Exception):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _windows(size: int) -> list[int]:
    """The offsets of a seal's windows in a file of ``size`` bytes (first and last included)."""
    if size <= SEAL_WINDOWS * SEAL_WINDOW:
        return list(range(0, size, SEAL_WINDOW))
    last = size - SEAL_WINDOW
    return sorted({round(i * last / (SEAL_WINDOWS - 1)) for i in range(SEAL_WINDOWS)})


def _sample(path: Path, offsets: list[int]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            digest.update(f.read(SEAL_WINDOW))
    return digest.hexdigest()


def _metadata(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "inode": st.st_ino, "device": st.st_dev, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _seal(data_path: Path, seal_path: Path, digest: str) -> None:
    """Records that ``data_path`` was checked in full against ``digest`` (best effort: a
    read-only cache is simply checked in full again next time)."""
    try:
        before = _metadata(data_path)
        sample = _sample(data_path, _windows(before["size"]))
        if _metadata(data_path) != before:
            return  # changed while sealing; no seal
        _write_json({"sha256": digest, **before, "windows": SEAL_WINDOWS, "window": SEAL_WINDOW,
                     "sample": sample}, seal_path)
    except OSError:
        pass


def _sealed(data_path: Path, seal_path: Path, digest: str) -> bool:
    """Whether ``data_path`` still is what a full check against ``digest`` sealed."""
    try:
        seal = json.loads(seal_path.read_text())
        now = _metadata(data_path)
        if (seal.get("sha256") != digest or any(seal.get(k) != v for k, v in now.items())
                or seal.get("windows") != SEAL_WINDOWS or seal.get("window") != SEAL_WINDOW):
            return False
        return bool(_sample(data_path, _windows(now["size"])) == seal.get("sample"))
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _write_json(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
