"""Image loading: how fast tlbench's lazy image splits decode and preprocess JPEG files.

A GPU needs its images at the rate it trains (a ResNet-50 in bf16: thousands of images per
second on a current GPU, not measured here); this measures the rate of the reading path
(``tlbench.data.reader.Reader`` over an ``ImageFolder`` of
JPEGs, 224 px crops as ResNet-50's weights expect) with 0 and 2 DataLoader workers, side by
side in one run, so the docs can say how many workers a given GPU needs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import Loading, Reader, sequential
from tlbench.suites.datasets import DataAccess
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task

N_IMAGES = 384


@pytest.fixture(scope="module")
def jpeg_view(tmp_path_factory: pytest.TempPathFactory):
    """384 JPEGs of 320x256 (about ImageNet's average size after its usual resize) in 4 classes."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / "train" / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth noise compresses like a photograph, not like white noise
        small = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 256), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    spec = TaskSpec(dataset="image_folder", args={"path": "train"}, split=SplitSpec(val_per_class=1))
    task = build_task("jpegs", spec, where="bench", data=DataAccess(root))
    return task.bound(Preprocess(resize=232, crop=224), "crop_flip").train.x


def _rate(view, workers: int, rounds: int = 2) -> float:
    reader = Reader(view, device=torch.device("cpu"), loading=Loading(workers=workers), train=True)
    batches = sequential(len(view), 64)
    for _ in reader(batches[:1]):  # start the workers
        pass
    start = time.perf_counter()
    n = 0
    for _ in range(rounds):
        for xb in reader(batches):
            assert xb.shape[1:] == (3, 224, 224)
            n += len(xb)
    assert n == rounds * len(view)  # every image of every pass was read
    return n / (time.perf_counter() - start)


def test_jpeg_reading_rate(benchmark, jpeg_view) -> None:
    inline = _rate(jpeg_view, 0)
    two = _rate(jpeg_view, 2)
    benchmark.extra_info.update({"inline_img_per_s": round(inline), "two_workers_img_per_s": round(two),
                                 "speedup": round(two / inline, 2)})
    benchmark.pedantic(lambda: _rate(jpeg_view, 2, rounds=1), rounds=1, iterations=1)
    print(f"\nJPEG 320x256 -> random resized crop 224 + flip: inline {inline:.0f} img/s, "
          f"2 workers {two:.0f} img/s ({two / inline:.2f}x)")
