"""How a figure becomes its PNG and PDF (``reports.figures.save_figure``): the crop found in the PNG's pixels,
minor ticks that draw nothing left out, and PDF font subsets shared between figures."""

from __future__ import annotations

import io
import re
import zlib

import numpy as np
import PIL.Image
import pytest
from fontTools.ttLib import TTFont

from tlbench.reports import figures
from tlbench.reports.figures import plt


def _figure(note: str = "a caveat printed under the figure", far: bool = False) -> plt.Figure:
    """A panel in the report's style with a legend outside on the right and a note below: both
    outside the figure's box."""
    with plt.rc_context(figures.RC), figures.sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(3.3, 2.6))
        ax.plot([1, 20, 300], [3, 1, 2], label="full_finetune")
        figures.readable_log_axis(ax)  # minor ticks without labels, as in the report
        ax.set_title("digits-2shot")
        fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="strategy")
        fig.text(0.0, -0.02, note, ha="left", va="top", fontsize=6.5)
        if far:  # further out than the margin drawn around the figure
            fig.text(0.5 + figures.MARGIN_IN / 3.3 + 1.0, 0.5, "far away")
    return fig


def _ink(pixels: np.ndarray) -> np.ndarray:
    """The part of an RGBA image that is not white background."""
    ink = (pixels != 255).any(axis=2)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def test_the_png_is_what_is_drawn_plus_the_pad(tmp_path) -> None:
    fig = _figure()
    pad = plt.rcParams["savefig.pad_inches"]
    box = figures._draw_cropped_png(fig, tmp_path / "f.png", pad)
    assert box is not None and box.x1 > 3.3 + 0.5 and box.y0 < 0  # the legend and the note are outside the figure
    ours = np.asarray(PIL.Image.open(tmp_path / "f.png"))
    reference = io.BytesIO()  # what Matplotlib's own tight crop draws
    fig.savefig(reference, format="png", dpi=figures.DPI, bbox_inches="tight")
    theirs = _ink(np.asarray(PIL.Image.open(reference)))
    drawn = _ink(ours)
    # nothing cut off: the same drawing (to a pixel: the two crops start at different fractions of one)
    assert abs(drawn.shape[0] - theirs.shape[0]) <= 1 and abs(drawn.shape[1] - theirs.shape[1]) <= 1
    assert abs(int((drawn != 255).any(axis=2).sum()) - int((theirs != 255).any(axis=2).sum())) < 0.03 * drawn.size
    margin = round(pad * figures.DPI)  # and the pad around it, all background
    assert ours.shape[:2] == (drawn.shape[0] + 2 * margin, drawn.shape[1] + 2 * margin)
    assert (ours[:margin] == 255).all() and (ours[-margin:] == 255).all()
    assert (ours[:, :margin] == 255).all() and (ours[:, -margin:] == 255).all()
    # the PDF's box is the PNG's, no larger than Matplotlib's padded tight box
    assert (box.width, box.height) == pytest.approx((ours.shape[1] / figures.DPI, ours.shape[0] / figures.DPI))
    tight = fig.get_tightbbox(fig.canvas.get_renderer()).padded(pad)
    px = 1 / figures.DPI
    assert tight.x0 - px <= box.x0 and box.x1 <= tight.x1 + px and tight.y0 - px <= box.y0 and box.y1 <= tight.y1 + px
    image = PIL.Image.open(tmp_path / "f.png")
    assert image.info["dpi"] == pytest.approx((figures.DPI, figures.DPI), abs=0.01)
    assert "Matplotlib" in image.info["Software"]
    plt.close(fig)


def test_an_opaque_drawing_is_written_as_rgb_with_the_same_pixels_and_a_transparent_one_as_rgba(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    image = figures.png_image(pixels)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels[..., :3])
    pixels[3, 2, 3] = 254  # one pixel not quite opaque: every channel kept
    image = figures.png_image(pixels)
    assert image.mode == "RGBA" and np.array_equal(np.asarray(image), pixels)
    fig = _figure()  # the report's figures are opaque: written as RGB
    figures._draw_cropped_png(fig, tmp_path / "f.png", 0.05)
    plt.close(fig)
    assert PIL.Image.open(tmp_path / "f.png").mode == "RGB"
    fig = _figure()
    fig.patch.set_alpha(0.0)
    figures._draw_cropped_png(fig, tmp_path / "t.png", 0.05)
    plt.close(fig)
    assert PIL.Image.open(tmp_path / "t.png").mode == "RGBA"


def test_a_drawing_larger_than_the_margin_falls_back_to_the_tight_box(tmp_path) -> None:
    fig = _figure(far=True)
    assert figures._draw_cropped_png(fig, tmp_path / "f.png", 0.1) is None
    assert not (tmp_path / "f.png").exists()
    png, pdf = figures.save_figure(_figure(far=True), tmp_path, "far")
    width, _ = PIL.Image.open(png).size
    assert width / figures.DPI > 3.3 + figures.MARGIN_IN + 1.0  # "far away" is in the picture
    assert pdf.read_bytes().startswith(b"%PDF")


def test_minor_ticks_that_draw_nothing_are_left_out_and_the_picture_is_the_same(tmp_path, monkeypatch) -> None:
    kept = figures.save_figure(_figure(), tmp_path / "kept", "f")
    fig = _figure()
    figures._drop_hidden_minor_ticks(fig)
    assert fig.axes[0].xaxis.get_minorticklocs().size == 0  # the log axis's 2, 3, … 9 have no mark here
    plt.close(fig)
    monkeypatch.setattr(figures, "_drop_hidden_minor_ticks", lambda fig: None)
    every = figures.save_figure(_figure(), tmp_path / "every", "f")
    assert np.array_equal(np.asarray(PIL.Image.open(kept[0])), np.asarray(PIL.Image.open(every[0])))
    fig, ax = plt.subplots()  # Matplotlib's own style: minor ticks with marks, which stay
    ax.set_xscale("log")
    ax.plot([1, 100], [0, 1])
    figures._drop_hidden_minor_ticks(fig)
    assert ax.xaxis.get_minorticklocs().size > 0
    plt.close(fig)


def _embedded_fonts(pdf: bytes) -> list[TTFont]:
    """The TrueType fonts (``/FontFile2`` streams) a PDF embeds."""
    fonts = []
    for raw in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            data = zlib.decompress(raw)
        except zlib.error:
            continue
        if data[:4] in (b"\x00\x01\x00\x00", b"true"):
            fonts.append(TTFont(io.BytesIO(data)))
    return fonts


def _pdf(text: str, out, name: str):
    """A figure with ``text`` saved as the report saves one (TrueType fonts: ``pdf.fonttype`` 42)."""
    with plt.rc_context(figures.RC):
        fig = plt.figure(figsize=(2, 1))
        fig.text(0.1, 0.5, text)
        return figures.save_figure(fig, out, name)[1]


def test_pdf_font_subsets_are_shared_and_hold_every_character_drawn(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(figures, "_SUBSETS", {})
    from matplotlib.backends import _backend_pdf_ps as pdf_ps

    original = pdf_ps.get_glyphs_subset
    texts = {"a": "accuracy (%) 0.5 − 1e-05", "b": "Zebra quiz: ×2 … jumps"}
    first = {name: _pdf(text, tmp_path / "first", name) for name, text in texts.items()}
    assert pdf_ps.get_glyphs_subset is original  # put back after each PDF
    assert len(figures._SUBSETS) == 1  # both figures' glyphs are among the common ones: one subset
    for name, text in texts.items():
        (font,) = _embedded_fonts(first[name].read_bytes())
        mapped = set(font.getBestCmap())
        assert {ord(c) for c in text if not c.isspace()} <= mapped, name
        assert {ord(c) for c in "ABCxyz019()%"} <= mapped  # the common characters ride along
    # the bytes do not depend on whether the subset was made or found made, nor on the clock
    monkeypatch.setattr(figures, "_SUBSETS", {})
    monkeypatch.setattr("fontTools.ttLib.tables._h_e_a_d.timestampNow", lambda: 12345)
    again = _pdf(texts["b"], tmp_path / "again", "b")
    assert again.read_bytes() == first["b"].read_bytes()
    # a glyph outside the common ones makes a subset of its own, which holds it
    rare = _pdf("ŵ", tmp_path / "rare", "r")
    assert ord("ŵ") in _embedded_fonts(rare.read_bytes())[0].getBestCmap() and len(figures._SUBSETS) == 2
