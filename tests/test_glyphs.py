"""Tests for suites/glyphs.py (synthetic printed glyphs from matplotlib's fonts)."""

from __future__ import annotations

import pathlib
import random
import sys

import numpy as np
import pytest
import torch
from matplotlib.ft2font import FT2Font

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # allow running without an installed package / pytest pythonpath
    sys.path.insert(0, str(_ROOT))

from tlbench.suites.glyphs import GLYPH_CLASSES, font_paths, render_glyphs  # noqa: E402

DIGITS = "0123456789"


@pytest.fixture(scope="module")
def digit_train() -> tuple[torch.Tensor, torch.Tensor]:
    return render_glyphs(2000, classes=DIGITS, seed=10)


@pytest.fixture(scope="module")
def default_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return render_glyphs(620, seed=0)


def test_glyph_classes() -> None:
    assert GLYPH_CLASSES == DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    assert len(set(GLYPH_CLASSES)) == 62


def test_font_paths_have_every_glyph() -> None:
    paths = font_paths()
    assert paths, "no usable bundled fonts"
    assert paths == sorted(paths)
    for path in paths:
        assert path.suffix == ".ttf" and path.is_file()
        font = FT2Font(str(path))
        indices = [font.get_char_index(ord(c)) for c in GLYPH_CLASSES]
        assert all(i != 0 for i in indices), path.name
        assert len(set(indices)) == len(GLYPH_CLASSES), path.name  # no shared placeholder glyph
    names = {p.name for p in paths}
    for bad in ("cmex10.ttf", "cmsy10.ttf", "DejaVuSansDisplay.ttf", "LastResortHE-Regular.ttf"):
        assert bad not in names
    assert not any(n.startswith("STIXSiz") for n in names)


def test_shapes_dtypes_range(default_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = default_batch
    assert x.shape == (620, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (620,) and y.dtype == torch.int64
    assert torch.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x.max() == pytest.approx(1.0, abs=1e-4)  # fully inked blocks occur
    assert int(y.min()) >= 0 and int(y.max()) < len(GLYPH_CLASSES)

    x28, y28 = render_glyphs(5, size=28, seed=1)
    assert x28.shape == (5, 1, 28, 28) and y28.shape == (5,)
    assert x28.min() >= 0.0 and x28.max() <= 1.0

    x0, y0 = render_glyphs(0)
    assert x0.shape == (0, 1, 8, 8) and y0.shape == (0,)


def test_balanced_labels(default_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, y = default_batch
    counts = torch.bincount(y, minlength=len(GLYPH_CLASSES))
    assert (counts == 10).all()
    _, y = render_glyphs(25, classes=DIGITS, seed=3)
    counts = torch.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25
    assert not torch.equal(y, torch.arange(25) % 10)  # shuffled


def test_determinism_and_no_global_rng_use() -> None:
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    xa, ya = render_glyphs(200, seed=7)
    xb, yb = render_glyphs(200, seed=7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = render_glyphs(200, seed=8)
    assert not torch.equal(xa, xc)
    np_after = np.random.get_state()
    assert np_state[0] == np_after[0] and np.array_equal(np_state[1], np_after[1])
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_digit_subset_labels() -> None:
    x, y = render_glyphs(100, classes=DIGITS, seed=2)
    assert x.shape == (100, 1, 8, 8)
    assert set(y.tolist()) == set(range(10))


def test_every_image_has_ink(default_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = default_batch
    ink = x.flatten(1).sum(dim=1)
    assert (ink > 0.5).all()  # at least half a fully-inked pixel per image
    assert (x.flatten(1).amax(dim=1) > 0.2).all()


def test_images_differ_across_fonts() -> None:
    # With every augmentation disabled, the font is the only source of variation.
    n_fonts = len(font_paths())
    x, _ = render_glyphs(
        4 * n_fonts,
        size=16,
        classes="g",
        seed=0,
        max_rotation=0.0,
        stroke=(0, 0),
        blur=(0.0, 0.0),
        scale=(0.8, 0.8),
        max_shift=0.0,
    )
    distinct = {bytes(img.numpy().tobytes()) for img in x}
    assert len(distinct) >= min(10, n_fonts)


def _nearest_class_mean_accuracy(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
) -> float:
    means = torch.stack([x_train[y_train == k].flatten(1).mean(0) for k in range(10)])
    pred = torch.cdist(x_test.flatten(1), means).argmin(dim=1)
    return (pred == y_test).double().mean().item()


def test_nearest_class_mean_far_above_chance(digit_train: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Centred glyphs (no random shift, other augmentations at their defaults):
    # a nearest-class-mean classifier should do far better than 10% chance.
    x_train, y_train = render_glyphs(2000, classes=DIGITS, seed=10, max_shift=0.0)
    x_test, y_test = render_glyphs(500, classes=DIGITS, seed=11, max_shift=0.0)
    accuracy = _nearest_class_mean_accuracy(x_train, y_train, x_test, y_test)
    assert accuracy > 0.5, accuracy
    # With the default +-15% shift the (shift-sensitive) classifier is weaker but
    # still well above chance.
    x_train, y_train = digit_train
    x_test, y_test = render_glyphs(500, classes=DIGITS, seed=11)
    accuracy = _nearest_class_mean_accuracy(x_train, y_train, x_test, y_test)
    assert accuracy > 0.2, accuracy


def test_class_means_transfer_to_load_digits(digit_train: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Class means of rendered digits already classify real handwritten digits.
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x_target = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y_target = torch.tensor(digits.target, dtype=torch.int64)
    x_train, y_train = digit_train
    accuracy = _nearest_class_mean_accuracy(x_train, y_train, x_target, y_target)
    assert accuracy > 0.35, accuracy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"size": 0},
        {"classes": ""},
        {"classes": "00"},
        {"stroke": (2, 1)},
        {"blur": (-1.0, 1.0)},
        {"scale": (0.0, 0.5)},
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    n = kwargs.pop("n", 4)
    with pytest.raises(ValueError):
        render_glyphs(n, **kwargs)
