"""Synthetic printed-glyph images rendered offline from matplotlib's bundled fonts.

The dataset is meant as a *source* pretraining task for small handwritten-digit
targets such as scikit-learn's ``load_digits`` (8x8 images whose values count the
on-pixels of 4x4 blocks of a 32x32 bitmap).  Glyphs are rasterised with
:class:`matplotlib.ft2font.FT2Font` (FreeType) directly -- no figures, no
network, no font files outside the matplotlib installation -- onto a canvas four
times the requested output size, then thickened, blurred and block-averaged
down to the output size in batched torch code.

Example:
    >>> x, y = render_glyphs(1000, classes="0123456789", seed=1)
    >>> x.shape, x.dtype, y.shape, y.dtype
    (torch.Size([1000, 1, 8, 8]), torch.float32, torch.Size([1000]), torch.int64)
"""

from __future__ import annotations

import functools
import math
import pathlib

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font, LoadFlags

__all__ = ["GLYPH_CLASSES", "font_paths", "render_glyphs"]

GLYPH_CLASSES: str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""The 62 glyph classes; a label is the position of its character in this string."""

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_REF_PT = 100.0  # point size (at 72 dpi, i.e. pixels per em) used to measure glyph extents
_DOWNSAMPLE = 4  # canvas side = _DOWNSAMPLE * size, like load_digits' 4x4 block counting
_CHUNK = 4096  # samples per batched torch post-processing step (bounds peak memory)


def _expected_glyph_name(char: str) -> str | None:
    """Returns the standard (Adobe glyph list) name of ``char``, or None if unknown."""
    if char.isascii() and char.isdigit():
        return _DIGIT_NAMES[int(char)]
    if char.isascii() and char.isalpha():
        return char
    return None


def _font_has_glyphs(font: FT2Font, chars: str) -> bool:
    """Checks that ``font`` has a genuine, distinct glyph for every character.

    A non-zero ``get_char_index`` alone is not enough for matplotlib's bundled
    fonts: the TeX symbol fonts (cmex10, cmsy10) map ASCII code points to
    unrelated symbols, cmmi10 maps digits to old-style figures and
    LastResortHE maps every code point to the same placeholder glyph.  So, in
    addition, glyph indices must be pairwise distinct and, where the font stores
    glyph names, the name must be the standard one (``zero``, ``A``, ``a``, ...).

    Args:
        font: An open font.
        chars: Characters that must all be present.

    Returns:
        True if every character maps to its own, correctly named glyph.
    """
    indices = [font.get_char_index(ord(c)) for c in chars]
    if any(i == 0 for i in indices) or len(set(indices)) != len(set(chars)):
        return False
    for char, index in zip(chars, indices):
        expected = _expected_glyph_name(char)
        if expected is None:
            continue
        name = font.get_glyph_name(index)
        # Fonts without a name table get synthetic "uniXXXX"-style names; accept those.
        if name and name != expected and not name.startswith(("uni", "glyph")):
            return False
    return True


@functools.lru_cache(maxsize=None)
def _usable_fonts(chars: str) -> tuple[pathlib.Path, ...]:
    """Returns the sorted bundled .ttf files that have glyphs for all of ``chars``."""
    ttf_dir = pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    usable = []
    for path in sorted(ttf_dir.glob("*.ttf")):
        try:
            font = FT2Font(str(path))
        except (OSError, RuntimeError, ValueError):  # unreadable font file
            continue
        if _font_has_glyphs(font, chars):
            usable.append(path)
    return tuple(usable)


def font_paths() -> list[pathlib.Path]:
    """Lists the matplotlib-bundled TrueType fonts usable for rendering glyphs.

    Fonts lacking a genuine glyph for any character of :data:`GLYPH_CLASSES` are
    excluded (with matplotlib 3.11: DejaVu*Display, LastResortHE, the STIX
    NonUnicode and Sizes fonts, cmex10, cmsy10, and cmmi10, whose digits are
    old-style figures).

    Returns:
        Sorted list of absolute paths to ``.ttf`` files in
        ``matplotlib.get_data_path()/fonts/ttf``.
    """
    return list(_usable_fonts(GLYPH_CLASSES))


#: Font families a glyph set can be drawn from, by the bundled files' names (``all``: every usable font).
FONT_SETS: dict[str, tuple[str, ...]] = {
    "sans": ("DejaVuSans.", "DejaVuSans-", "cmss10"),
    "serif": ("DejaVuSerif", "STIXGeneral", "cmr10", "cmb10", "cmti10"),
    "mono": ("DejaVuSansMono", "cmtt10"),
}


def font_set(paths: tuple[pathlib.Path, ...], fonts: str) -> tuple[pathlib.Path, ...]:
    """The fonts of ``paths`` in family ``fonts`` (a key of :data:`FONT_SETS`, or ``all``)."""
    if fonts == "all":
        return paths
    if fonts not in FONT_SETS:
        raise ValueError(f"fonts must be 'all' or one of {sorted(FONT_SETS)}, got {fonts!r}")
    return tuple(p for p in paths if p.name.startswith(FONT_SETS[fonts]))


def _ink_bbox(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """Returns (row0, row1, col0, col1) of the non-zero pixels (half-open), or None."""
    rows = np.flatnonzero(img.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(img.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _rasterise(font: FT2Font, char: str, ptsize: float, angle: float) -> np.ndarray:
    """Renders one anti-aliased glyph at ``ptsize`` pixels per em; returns uint8 HxW."""
    font.clear()
    font.set_size(ptsize, 72.0)
    font.set_text(char, angle, flags=LoadFlags.NO_HINTING)  # faithful outlines at any size/angle
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.asarray(font.get_image())


def _dilate(x: torch.Tensor, radius: np.ndarray) -> torch.Tensor:
    """Thickens strokes with a square max-pool dilation of per-sample radius.

    Args:
        x: Images of shape (m, 1, H, W); modified in place.
        radius: Array of m integer radii in pixels; 0 leaves a sample unchanged.

    Returns:
        ``x``, dilated.
    """
    for r in np.unique(radius):
        r = int(r)
        if r <= 0:
            continue
        idx = torch.from_numpy(np.flatnonzero(radius == r))
        k = 2 * r + 1
        # A square structuring element is separable: rows, then columns.
        sel = F.max_pool2d(x[idx], kernel_size=(k, 1), stride=1, padding=(r, 0))
        x[idx] = F.max_pool2d(sel, kernel_size=(1, k), stride=1, padding=(0, r))
    return x


def _blur_downsample(x: torch.Tensor, sigma: np.ndarray, factor: int) -> torch.Tensor:
    """Gaussian blur (per-sample ``sigma``, zero padding) then ``factor`` block averaging.

    Both steps are linear and separable, so they are fused into one strided 1-D
    filter per axis (the Gaussian convolved with a box of width ``factor``),
    which is several times cheaper than blurring at full resolution.

    Args:
        x: Images of shape (m, 1, H, W) with H and W divisible by ``factor``.
        sigma: Array of m standard deviations in pixels of ``x``; values near 0
            mean no blur.
        factor: Downsampling factor.

    Returns:
        Images of shape (m, 1, H // factor, W // factor).
    """
    smax = float(sigma.max(initial=0.0))
    if smax < 1e-3:
        return F.avg_pool2d(x, kernel_size=factor)
    radius = max(1, math.ceil(3.0 * smax))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = torch.from_numpy(np.maximum(sigma, 1e-3)).to(torch.float64)[:, None]
    gauss = torch.exp(-0.5 * (taps[None, :] / s) ** 2)
    gauss = gauss / gauss.sum(dim=1, keepdim=True)  # (m, 2*radius+1)
    width = 2 * radius + factor
    kernel = torch.zeros((len(sigma), width), dtype=torch.float64)
    for q in range(factor):
        kernel[:, q : q + 2 * radius + 1] += gauss / factor
    kernel = kernel.to(x.dtype)[:, :, None, None, None]  # (m, width, 1, 1, 1)

    h, w = x.shape[-2] // factor, x.shape[-1] // factor
    span = factor * (h - 1) + 1
    xp = F.pad(x, (0, 0, radius, radius))
    rows = xp[:, :, 0:span:factor, :] * kernel[:, 0]
    for t in range(1, width):
        rows.add_(xp[:, :, t : t + span : factor, :] * kernel[:, t])
    span = factor * (w - 1) + 1
    xp = F.pad(rows, (radius, radius, 0, 0))
    out = xp[:, :, :, 0:span:factor] * kernel[:, 0]
    for t in range(1, width):
        out.add_(xp[:, :, :, t : t + span : factor] * kernel[:, t])
    return out


def render_glyphs(
    n: int,
    *,
    size: int = 8,
    classes: str = GLYPH_CLASSES,
    seed: int = 0,
    max_rotation: float = 15.0,
    stroke: tuple[int, int] = (0, 2),
    blur: tuple[float, float] = (0.0, 1.0),
    scale: tuple[float, float] = (0.6, 0.95),
    max_shift: float = 0.15,
    fonts: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders ``n`` randomly augmented printed glyphs.

    Each sample picks a font uniformly from :func:`font_paths` (restricted to
    fonts having all of ``classes``), and a uniform random scale, rotation and
    shift. The glyph is rasterised with FreeType onto a ``4*size`` square canvas
    so that the larger side of its (unrotated) ink bounding box is ``scale`` times
    the canvas side, rotated counter-clockwise by up to ``max_rotation`` degrees,
    centred (by ink bounding box) with an offset of up to ``max_shift * 4*size``
    pixels per axis and cropped at the canvas border. Then, batched in torch:
    strokes are thickened by a square max-pool dilation of integer radius in
    ``stroke`` (canvas pixels), blurred with a Gaussian of sigma in ``blur``
    (canvas pixels), and 4x4 blocks are averaged down to ``size`` x ``size``, so a
    fully inked block is 1.0 (as ``load_digits / 16``; values are not quantised).

    Note that every glyph is size-normalised, so case pairs like ``o``/``O`` or
    ``s``/``S`` differ only in shape details.

    Randomness comes solely from ``numpy.random.default_rng(seed)``; global
    RNGs (numpy, torch, random) are neither used nor modified, and the output
    is identical for identical arguments.

    Args:
        n: Number of samples (>= 0).
        size: Output side length in pixels; the canvas is ``4 * size``.
        classes: Characters to render; label ``i`` means ``classes[i]``.
        seed: Seed for ``numpy.random.default_rng``.
        max_rotation: Maximum absolute rotation in degrees.
        stroke: Inclusive (min, max) dilation radius in canvas pixels.
        blur: (min, max) Gaussian sigma in canvas pixels.
        scale: (min, max) glyph extent as a fraction of the canvas side.
        max_shift: Maximum offset from the centre as a fraction of the canvas side.
        fonts: Draw from every usable font (``all``) or one family of :data:`FONT_SETS`
            (``sans``, ``serif``, ``mono``). Characters outside :data:`GLYPH_CLASSES`
            (symbols) are drawn only from Unicode text fonts (DejaVu, STIX): TeX's
            ``cm*`` fonts map ASCII punctuation to other shapes.

    Returns:
        A tuple ``(x, y)``: ``x`` float32 of shape (n, 1, size, size) with values in
        [0, 1] (ink is high, background 0), and ``y`` int64 of shape (n,) with
        labels indexing ``classes``. Classes are balanced: before a seeded shuffle,
        sample ``i`` has label ``i % len(classes)``.

    Raises:
        ValueError: If an argument is out of range, ``classes`` is empty or has
            duplicates, or no bundled font has glyphs for all of ``classes``.
    """
    n = int(n)
    size = int(size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be non-empty without duplicates, got {classes!r}")
    s_lo, s_hi = int(stroke[0]), int(stroke[1])
    b_lo, b_hi = float(blur[0]), float(blur[1])
    c_lo, c_hi = float(scale[0]), float(scale[1])
    if not 0 <= s_lo <= s_hi:
        raise ValueError(f"stroke must satisfy 0 <= min <= max, got {stroke}")
    if not 0.0 <= b_lo <= b_hi:
        raise ValueError(f"blur must satisfy 0 <= min <= max, got {blur}")
    if not 0.0 < c_lo <= c_hi:
        raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
    if max_rotation < 0 or max_shift < 0:
        raise ValueError("max_rotation and max_shift must be >= 0")

    if all(c in GLYPH_CLASSES for c in classes):
        paths = _usable_fonts(GLYPH_CLASSES)
    else:  # TeX's fonts map ASCII punctuation to other shapes (cmr10's "<" is "¡"): Unicode text fonts only
        text = {p for p in _usable_fonts(GLYPH_CLASSES) if not p.name.startswith("cm")}
        paths = tuple(p for p in _usable_fonts("".join(sorted(set(classes)))) if p in text)
    paths = font_set(paths, fonts)
    if not paths:
        raise ValueError(f"no bundled {'' if fonts == 'all' else fonts + ' '}font has glyphs for all of {classes!r}")

    canvas = _DOWNSAMPLE * size
    n_classes = len(classes)

    # All per-sample randomness, drawn up front in a fixed order.
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % n_classes)
    font_idx = rng.integers(0, len(paths), size=n)
    extent = rng.uniform(c_lo, c_hi, size=n)
    angle = rng.uniform(-max_rotation, max_rotation, size=n)
    shift = rng.uniform(-max_shift, max_shift, size=(n, 2)) * canvas
    radius = rng.integers(s_lo, s_hi, size=n, endpoint=True)
    sigma = rng.uniform(b_lo, b_hi, size=n)

    fonts: dict[int, FT2Font] = {}
    ref_extent: dict[tuple[int, int], float] = {}  # (font, class) -> max ink side at _REF_PT

    def glyph_extent(f: int, c: int) -> float:
        key = (f, c)
        if key not in ref_extent:
            bbox = _ink_bbox(_rasterise(fonts[f], classes[c], _REF_PT, 0.0))
            ref_extent[key] = 0.0 if bbox is None else float(max(bbox[1] - bbox[0], bbox[3] - bbox[2]))
        return ref_extent[key]

    out = torch.empty((n, 1, size, size), dtype=torch.float32)
    buf = np.zeros((min(n, _CHUNK), canvas, canvas), dtype=np.uint8)
    half = canvas / 2.0
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        m = stop - start
        buf[:m] = 0
        for j in range(m):
            i = start + j
            f, c = int(font_idx[i]), int(labels[i])
            if f not in fonts:
                fonts[f] = FT2Font(str(paths[f]))
            ref = glyph_extent(f, c)
            if ref <= 0.0:
                continue  # glyph without ink (e.g. a space): leave blank
            ptsize = _REF_PT * extent[i] * canvas / ref
            img = _rasterise(fonts[f], classes[c], ptsize, float(angle[i]))
            bbox = _ink_bbox(img)
            if bbox is None:
                continue
            r0, r1, c0, c1 = bbox
            top = int(round(half + shift[i, 0] - (r0 + r1) / 2.0)) - r0  # canvas row of img row 0
            left = int(round(half + shift[i, 1] - (c0 + c1) / 2.0)) - c0
            y0, y1 = max(top + r0, 0), min(top + r1, canvas)
            x0, x1 = max(left + c0, 0), min(left + c1, canvas)
            if y0 < y1 and x0 < x1:
                buf[j, y0:y1, x0:x1] = img[y0 - top : y1 - top, x0 - left : x1 - left]

        x = torch.from_numpy(buf[:m]).to(torch.float32).div_(255.0).unsqueeze(1)
        x = _dilate(x, radius[start:stop])
        x = _blur_downsample(x, sigma[start:stop], _DOWNSAMPLE)
        out[start:stop] = x.clamp_(0.0, 1.0)

    return out, torch.from_numpy(labels)
