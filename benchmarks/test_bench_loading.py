"""Image loading: how fast tlbench's lazy image splits decode and preprocess JPEG files.

A GPU needs its images at the rate it trains (a ResNet-50 in bf16: thousands of images per
second on a current GPU, not measured here); this measures the rate of the reading path
(``tlbench.data.reader.Reader`` over an ``ImageFolder`` of
JPEGs, 224 px crops as ResNet-50's weights expect) with 0 and 2 DataLoader workers, side by
side in one run, so the docs can say how many workers a given GPU needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sides import median, ratio, time_side
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


READING = "JPEG 320x256 -> random resized crop 224 + flip: one pass over the images"
WORKERS = {"inline": 0, "2 workers": 2}


@pytest.mark.parametrize("side", list(WORKERS))
def test_jpeg_reading(benchmark, jpeg_view, side: str) -> None:
    """One pass of a training Reader over the JPEGs (a new epoch each round: new crops), read in
    the main process or by 2 DataLoader workers; each round starts its workers, as an epoch does."""
    reader = Reader(jpeg_view, device=torch.device("cpu"), loading=Loading(workers=WORKERS[side]), train=True)
    batches = sequential(len(jpeg_view), 64)

    def one_pass() -> None:
        n = 0
        for xb in reader(batches):
            assert xb.shape[1:] == (3, 224, 224)
            n += len(xb)
        assert n == len(jpeg_view)  # every image was read

    time_side(benchmark, READING, side, one_pass, rounds=3)


def test_two_workers_against_reading_inline(jpeg_view) -> None:
    inline, two, n = median(READING, "inline"), median(READING, "2 workers"), len(jpeg_view)
    print(f"\n{READING}: inline {n / inline:.0f} img/s, 2 workers {n / two:.0f} img/s "
          f"({ratio(READING, 'inline', '2 workers'):.2f}x)")
