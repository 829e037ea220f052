"""The image cache against decoding JPEG files on every read, measured side by side in one run.

* images per second delivered to the training loop (``tlbench.data.reader.Reader``, 224-px inputs as
  ResNet-50's weights expect) for a deterministic read (resize 256 + centre crop 224, what
  evaluation and ``flip`` read) and for random resized crops + flip (``crop_flip``): the JPEG
  path with 2 DataLoader workers against the cache read in the training process; at 500x375
  (the most common ImageNet size) and at 320x256; with the cache's build time and disk size;
* a full fine-tuning epoch of a small backbone (MobileNetV3-small, 224 px) end to end, files
  against cache: on a CPU the decoding workers compete with training for the same cores;
* the accuracy of random resized crops from the cache against torchvision's PIL path over
  several seeds on a small image task (digits written as PNGs): the difference of the means
  must lie within the seeds' spread.

* opening a checked 1 GiB entry in a new process: its seal against rehashing it.

Run with ``pytest benchmarks/test_bench_imagecache.py -s``; the figures are printed. Every
comparison times each side as its own benchmarked function (``benchmarks/_sides.py``;
``--benchmark-json`` keeps their rounds) and takes the ratio of their medians; the crops'
accuracy is not a timing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _sides import median, ratio, time_side

from tlbench.data.imagecache import ImageCache, human
from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import Loading, Reader, sequential
from tlbench.data.views import ImageView
from tlbench.suites.datasets import DataAccess
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task
from tlbench.training.backbones import Classifier, build_backbone
from tlbench.training.loop import Execution, NullReporter, fit_epochs, predict_logits

CPU = torch.device("cpu")
N_IMAGES = 256
EVAL = Preprocess(resize=256, crop=224)


def write_jpegs(root: Path, size: tuple[int, int], n: int = N_IMAGES) -> Path:
    """``n`` photograph-like JPEGs (smooth noise, quality 90) of ``size`` in 4 classes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return root


def train_view(root: Path, preprocess: Preprocess, augment: str) -> ImageView:
    spec = TaskSpec(dataset="image_folder", args={"path": "train"}, split=SplitSpec(val_per_class=1))
    task = build_task("jpegs", spec, where="bench", data=DataAccess(root))
    view = task.bound(preprocess, augment).train.x
    assert isinstance(view, ImageView)
    return view


SIZES = {"500x375": (500, 375), "320x256": (320, 256)}
AUGMENTS = {"deterministic": "none", "random resized crop + flip": "crop_flip"}
_PREPARED: dict[str, tuple[Path, ImageCache, dict[str, float]]] = {}


def prepared(size: str, factory) -> tuple[Path, ImageCache, dict[str, float]]:
    """The JPEGs of one size and their cache entries (built once, the build timed per form)."""
    if size not in _PREPARED:
        root = write_jpegs(factory.mktemp(size) / "jpegs", SIZES[size])
        cache = ImageCache(root.parent / "cache", log=lambda line: None)
        built = {}
        for name, augment in AUGMENTS.items():
            start = time.perf_counter()
            assert cache.open(train_view(root, EVAL, augment), augment) is not None  # built now
            built[name] = time.perf_counter() - start
        _PREPARED[size] = root, cache, built
    return _PREPARED[size]


@pytest.mark.parametrize("side", ["files", "cache"])
@pytest.mark.parametrize("augment", list(AUGMENTS))
@pytest.mark.parametrize("size", list(SIZES))
def test_reading(benchmark, tmp_path_factory, size: str, augment: str, side: str) -> None:
    """One pass of a training Reader over the images (a new epoch each round: new crops and
    flips), from the JPEG files with 2 DataLoader workers (started each pass, as each epoch
    starts them) or from the cache in the training process."""
    root, cache, _ = prepared(size, tmp_path_factory)
    view = train_view(root, EVAL, AUGMENTS[augment])
    loading = Loading(workers=2) if side == "files" else Loading(images=cache)
    reader = Reader(view, device=CPU, loading=loading, train=True)
    batches = sequential(len(view), 64)

    def one_pass() -> None:
        n = 0
        for xb in reader(batches):
            assert xb.shape[1:] == (3, 224, 224) and xb.dtype == torch.float32
            n += len(xb)
        assert n == len(view)

    time_side(benchmark, f"read {size}, {augment}", side, one_pass, rounds=3 if side == "files" else 5)


def test_the_cache_against_the_files(tmp_path_factory) -> None:
    for size in SIZES:
        root, cache, built = prepared(size, tmp_path_factory)
        n = len(train_view(root, EVAL, "none"))
        parts = []
        for augment in AUGMENTS:
            group = f"read {size}, {augment}"
            files, cached = n / median(group, "files"), n / median(group, "cache")
            parts.append(f"{augment}: files (2 workers) {files:.0f} img/s, cache {cached:.0f} img/s "
                         f"({ratio(group, 'files', 'cache'):.1f}x)")
        disk = human(sum(p.stat().st_size for p in cache.directory.rglob("*") if p.is_file()))
        print(f"\nJPEG {size} -> 224 px, {n} training images: " + "; ".join(parts)
              + f"; cache built in {built['deterministic']:.2f} s + {built['random resized crop + flip']:.2f} s, "
              f"{disk} on disk")


EPOCH = "one MobileNetV3-small epoch at 224 px: JPEG files (2 workers) against the cache"


@pytest.fixture(scope="module")
def epoch_inputs(tmp_path_factory) -> tuple[ImageView, torch.Tensor, ImageCache]:
    """256 JPEGs of 500x375 in 4 classes, with their cache entries built."""
    root = write_jpegs(tmp_path_factory.mktemp("epoch") / "jpegs", (500, 375))
    view = train_view(root, EVAL, "crop_flip")
    cache = ImageCache(root.parent / "cache", log=lambda line: None)
    cache.open(view, "crop_flip")
    cache.open(view.bound(EVAL, "none"), "none")
    return view, torch.arange(len(view)) % 4, cache


@pytest.mark.parametrize("side", ["files", "cache"])
def test_a_fine_tuning_epoch(benchmark, epoch_inputs, side: str) -> None:
    """One epoch of MobileNetV3-small (random init; 224-px random resized crops + flip) on 256
    JPEGs of 500x375, then scoring them: files with 2 workers against the cache."""
    view, y, cache = epoch_inputs
    loading = Loading(workers=2) if side == "files" else Loading(images=cache)

    def epoch() -> None:
        torch.manual_seed(0)
        backbone = build_backbone("mobilenet_v3", {"variant": "mobilenet_v3_small"})
        model = Classifier(backbone, backbone.new_head(4))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fit_epochs(model, opt, (view, y), (view.bound(EVAL, "none"), y), epochs=1, batch_size=32, seed=0,
                   device=CPU, reporter=NullReporter(), execution=Execution(loading=loading))

    time_side(benchmark, EPOCH, side, epoch, rounds=2)


def test_the_cache_speeds_up_a_fine_tuning_epoch() -> None:
    files, cached = median(EPOCH, "files"), median(EPOCH, "cache")
    print(f"\nMobileNetV3-small, one epoch of 256 images at 224 px (train + val pass): files with 2 "
          f"workers {files:.1f} s, cache {cached:.1f} s ({ratio(EPOCH, 'files', 'cache'):.2f}x)")


def write_digits(root: Path) -> None:
    """sklearn's digits as 32-px RGB PNGs: 60% train, 40% test, per class folder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        split = "test" if rng.random() < 0.4 else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")


SEEDS = 8
EPOCHS = 20


def crop_statistics(task, loading: Loading, epochs: int = 3) -> torch.Tensor:
    """Per training crop (3 epochs of random resized crops + flips): its mean, its contrast
    (standard deviation) and its sharpness (mean absolute horizontal gradient), normalised."""
    reader = Reader(task.train.x, device=CPU, loading=loading, train=True, seed=0)
    rows = []
    for _ in range(epochs):
        for xb in reader(sequential(len(task.train.x), 256)):
            sharpness = (xb[..., 1:] - xb[..., :-1]).abs().mean((1, 2, 3))
            rows.append(torch.stack([xb.mean((1, 2, 3)), xb.std((1, 2, 3)), sharpness], 1))
    return torch.cat(rows)


def test_random_resized_crops_from_the_cache_learn_as_the_pil_path_does(tmp_path: Path) -> None:
    """The same small CNN trained on the same split with the same seeds (init, batch order), its
    random resized crops cut by torchvision from PIL images or by the cache from stored uint8:
    the crops' statistics side by side, and the test accuracy over ``SEEDS`` seeds (paired)."""
    write_digits(tmp_path / "digits")
    spec = TaskSpec(dataset="image_folder", args={"path": "train", "test": "test"}, split=SplitSpec(val_per_class=5))
    task = build_task("digits", spec, where="bench", data=DataAccess(tmp_path / "digits"))
    task = task.bound(Preprocess(resize=32, crop=28), "crop_flip")
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    pil_stats, cache_stats = crop_statistics(task, Loading()), crop_statistics(task, Loading(images=cache))

    def accuracy(seed: int, loading: Loading) -> float:
        torch.manual_seed(seed)
        backbone = build_backbone("cnn2d", {"in_channels": 3, "width": 16, "depth": 3})
        model = Classifier(backbone, backbone.new_head(10))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = EPOCHS * -(-len(task.train) // 64)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        execution = Execution(loading=loading)
        fit_epochs(model, opt, (task.train.x, task.train.y), (task.val.x, task.val.y), epochs=EPOCHS,
                   batch_size=64, seed=seed, device=CPU, reporter=NullReporter(), scheduler=schedule,
                   execution=execution)
        logits = predict_logits(model, task.test.x, device=CPU, execution=execution)
        return float((logits.argmax(1) == task.test.y).float().mean())

    pil = [accuracy(s, Loading()) for s in range(SEEDS)]
    cached = [accuracy(s, Loading(images=cache)) for s in range(SEEDS)]
    diffs = [c - p for c, p in zip(cached, pil)]
    half = 2.365 * statistics.stdev(diffs) / SEEDS ** 0.5  # t(0.975, 7): the paired difference's 95% interval
    spread = max(statistics.stdev(pil), statistics.stdev(cached))
    names = ("mean", "contrast", "sharpness")
    print("\ndigits as 32-px PNGs, random resized crop 28 + flip: training crops (3 epochs), PIL path vs cache: "
          + ", ".join(f"{n} {a:.4f} vs {b:.4f}" for n, a, b in zip(names, pil_stats.mean(0), cache_stats.mean(0))))
    print(f"test accuracy over {SEEDS} seeds: PIL path {100 * statistics.mean(pil):.2f} ± "
          f"{100 * statistics.stdev(pil):.2f} %, cache {100 * statistics.mean(cached):.2f} ± "
          f"{100 * statistics.stdev(cached):.2f} % (mean ± sd); paired difference {100 * statistics.mean(diffs):+.2f} "
          f"± {100 * half:.2f} points (95% interval); seeds' spread {100 * spread:.2f}")
    assert abs(statistics.mean(diffs)) <= spread, (pil, cached)
    assert torch.allclose(pil_stats.mean(0), cache_stats.mean(0), atol=0.02, rtol=0.02)


# ------------------------------------------------------------------ opening an entry: seal against digest

SEAL_BYTES = 1 << 30  # a 1 GiB entry; the full check scales with size, the seal does not
OPENING = "image cache: open a checked 1 GiB entry"


@pytest.fixture(scope="module")
def big_entry(tmp_path_factory) -> tuple[ImageCache, str]:
    """A 1 GiB entry of 224-px images (about 7,100), written as the cache writes one, and sealed."""
    import hashlib
    import json as _json

    cache = ImageCache(tmp_path_factory.mktemp("seal") / "cache", log=lambda line: None)
    key = "ab" + "0" * 30
    data, index = cache.paths(key)
    data.parent.mkdir(parents=True)
    shape, per = (224, 224), 224 * 224 * 3
    count = SEAL_BYTES // per
    digest, block = hashlib.sha256(), np.random.default_rng(0).integers(0, 256, per * 64, dtype=np.uint8).tobytes()
    with open(data, "wb") as f:
        written = 0
        while written < count * per:
            chunk = block[: min(len(block), count * per - written)]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    index.write_text(_json.dumps({"format": 1, "key": key, "count": count, "fixed": True, "shape": list(shape),
                                  "nbytes": count * per, "sha256": digest.hexdigest()}))
    ImageCache(cache.directory, log=lambda line: None)._load(key)  # the one full check, which seals it
    assert cache.seal_path(key).is_file()
    return cache, key


@pytest.mark.parametrize("verify", ["full", "seal"])
def test_opening_a_checked_entry(benchmark, big_entry, verify: str) -> None:
    """Opening a checked 1 GiB entry in a new process: its digest in full against its seal.
    The file is in the page cache, so the full check is the CPU's SHA-256 rate (from disk it is
    slower still)."""
    cache, key = big_entry

    def open_once() -> None:
        fresh = ImageCache(cache.directory, log=lambda line: None, verify=verify)  # type: ignore[arg-type]
        assert fresh._load(key) is not None
        assert (fresh.usage.sealed_opens, fresh.usage.full_checks) == ((1, 0) if verify == "seal" else (0, 1))

    time_side(benchmark, OPENING, verify, open_once, rounds=5 if verify == "full" else 50)


def test_the_seal_saves_the_full_check() -> None:
    """The ratio of the two measurements above, from their medians (run with them: ``-k "opening or
    seal"``); the JSON record (``--benchmark-json``) holds both sides' rounds."""
    full, seal = median(OPENING, "full"), median(OPENING, "seal")
    faster = ratio(OPENING, "full", "seal")
    print(f"\nopening a checked 1 GiB entry: full digest {full:.3f} s, seal {seal * 1000:.2f} ms "
          f"({faster:.0f}x); per 100 GiB about {full * 100:.0f} s against {seal * 1000:.0f} ms")
    assert faster > 20
