"""Figures for the report, each saved as PNG (for HTML) and PDF (for papers).

Sized for a paper: one panel is about a column wide (3.3 in), fonts 8–9 pt, legends outside
the axes. Every strategy has one colour in every figure (:func:`palette`), fixed by its
position in the registry so two reports colour a strategy alike.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import math
import re
import string
from pathlib import Path
from typing import Sequence

import fontTools.ttLib
import matplotlib
import matplotlib.colors
import matplotlib.ft2font
import matplotlib.ticker
import PIL.Image
import PIL.PngImagePlugin
from matplotlib.transforms import Bbox

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from tlbench.reports import stats  # noqa: E402
from tlbench.reports.tables import column_labels  # noqa: E402

PANEL_W, PANEL_H = 3.3, 2.6
RC = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
      "legend.fontsize": 7, "pdf.fonttype": 42, "ps.fonttype": 42}


MARKERS = "osD^vP*Xphd<>"
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#b8860b", "#4b0082", "#006400"]  # tab10, then dark, distinct hues


def palette(strategies: Sequence[str], order: Sequence[str] = ()) -> dict[str, str]:
    """A colour per strategy, in ``order`` first (the registry's names: stable across
    reports), then the rest sorted; the dict's order is that order."""
    known = list(order)
    ordered = known + sorted(set(strategies) - set(known))
    return {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(ordered)}


def markers(colours: dict[str, str]) -> dict[str, str]:
    """A marker per strategy of a :func:`palette`, in its order (colour is not enough)."""
    return {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(colours)}


DPI = 200  # the PNGs' resolution (the PDFs are vector)
MARGIN_IN = 2.5  # what save_figure draws around the figure to find what sticks out of it (legends, notes)


def save_figure(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """PNG and PDF, cropped to what is drawn plus ``savefig.pad_inches``.

    The crop comes from the PNG's own pixels: the figure is drawn once into a canvas
    ``MARGIN_IN`` larger on every side, the box of its non-background pixels is the drawn
    extent, and the PNG is that box cut out; the PDF is drawn with the same box. Asking
    Matplotlib for the tight box instead (``get_tightbbox`` or ``bbox_inches="tight"``) lays the
    whole figure out once more, a fifth of a figure's cost. When something reaches the margin's
    edge (a drawing larger than the margin), the tight box is asked for after all."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    _drop_hidden_minor_ticks(fig)
    pad = plt.rcParams["savefig.pad_inches"]
    box = _draw_cropped_png(fig, paths[0], pad)
    if box is None:
        box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(pad)
        fig.savefig(paths[0], dpi=DPI, bbox_inches=box)
    with _shared_font_subsets():
        fig.savefig(paths[1], bbox_inches=box, metadata={"CreationDate": None})  # the same figure, the same bytes
    plt.close(fig)
    return paths


# Glyphs every PDF's font subset holds besides those it uses, so that most figures ask for the same
# subset: printable ASCII and the signs Matplotlib and the captions use (minus, ellipsis, dashes, ...).
COMMON_CHARACTERS = frozenset(string.printable.strip() + " −×±≤≥…–—·αβγδεθλμσ²³⁻ﬁﬂ")  # ﬁ, ﬂ: shaped ligatures
_SUBSETS: dict[tuple[str, int, frozenset[int]], tuple[bytes, dict[int, int]]] = {}


@contextlib.contextmanager
def _shared_font_subsets():
    """While it is open, the PDF backend's font subsets (TrueType, ``pdf.fonttype`` 42: fonts a
    paper's publisher accepts) are made once per process and font, for the glyphs used plus
    :data:`COMMON_CHARACTERS`, and reused by every later PDF whose glyphs that subset holds.
    Subsetting parses the font's layout tables each time: about half of a PDF's cost. The embedded
    font then holds a few dozen more glyphs than the figure draws (a few kB). A Matplotlib whose
    subsetting function is not the one this expects is left as it is."""
    try:
        from matplotlib.backends import _backend_pdf_ps as pdf_ps
        original = pdf_ps.get_glyphs_subset
        expected = list(inspect.signature(original).parameters) == ["fontfile", "glyphs"] and hasattr(
            pdf_ps.SubsetResults, "_as_cm")
    except (ImportError, AttributeError, TypeError, ValueError):
        expected = False
    if not expected or getattr(original, "shared", False):
        yield
        return

    def shared(fontfile, glyphs):
        face = getattr(fontfile, "face_index", 0)
        wanted = frozenset(glyphs) | _common_glyphs(str(fontfile), face)
        key = (str(fontfile), face, wanted)
        if key not in _SUBSETS:
            with original(fontfile, set(wanted)) as made:
                _SUBSETS[key] = (pdf_ps.font_as_file(made.font).getvalue(), dict(made.glyph_index_map))
        data, index_map = _SUBSETS[key]
        font = fontTools.ttLib.TTFont(io.BytesIO(data), recalcTimestamp=False)  # as subsetting does: no clock
        return pdf_ps.SubsetResults(font, dict(index_map))._as_cm()

    shared.shared = True
    pdf_ps.get_glyphs_subset = shared
    try:
        yield
    finally:
        pdf_ps.get_glyphs_subset = original


@functools.lru_cache(maxsize=None)
def _common_glyphs(path: str, face: int) -> frozenset[int]:
    """The glyph indices of :data:`COMMON_CHARACTERS` in a font file (once per font and process)."""
    charmap = matplotlib.ft2font.FT2Font(path, face_index=face).get_charmap()
    return frozenset(gid for code, gid in charmap.items() if chr(code) in COMMON_CHARACTERS)


def _draw_cropped_png(fig: plt.Figure, path: Path, pad: float) -> Bbox | None:
    """Draws ``fig`` at :data:`DPI` with :data:`MARGIN_IN` around it, writes the drawn part
    (plus ``pad`` inches) to ``path`` as PNG and returns that part's box in inches; None
    (nothing written) when the drawing reaches the canvas's edge or the pixels are not
    what was asked for."""
    width_in, height_in = fig.get_size_inches()
    cols = math.ceil(width_in * DPI) + 2 * round(MARGIN_IN * DPI)
    rows = math.ceil(height_in * DPI) + 2 * round(MARGIN_IN * DPI)
    # half a pixel more, so the renderer's int() of the size is cols and rows whatever the rounding
    canvas = Bbox.from_bounds(-MARGIN_IN, height_in + MARGIN_IN - (rows + 0.5) / DPI, (cols + 0.5) / DPI,
                              (rows + 0.5) / DPI)
    raw = io.BytesIO()
    fig.savefig(raw, format="rgba", dpi=DPI, bbox_inches=canvas)
    if raw.getbuffer().nbytes != rows * cols * 4:
        return None
    pixels = np.frombuffer(raw.getbuffer(), np.uint8).reshape(rows, cols, 4)
    background = np.round(np.array(matplotlib.colors.to_rgba(fig.get_facecolor())) * 255).astype(np.uint8)
    ink = pixels.view(np.uint32)[..., 0] != background.view(np.uint32)[0]  # a pixel as one number: 4× less work
    ink_rows, ink_cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(ink_rows) or ink_rows[0] == 0 or ink_cols[0] == 0 or ink_rows[-1] == rows - 1 \
            or ink_cols[-1] == cols - 1 or not _within(fig, canvas):
        return None
    margin = round(pad * DPI)
    top, bottom = max(0, ink_rows[0] - margin), min(rows, ink_rows[-1] + 1 + margin)
    left, right = max(0, ink_cols[0] - margin), min(cols, ink_cols[-1] + 1 + margin)
    png_image(pixels[top:bottom, left:right]).save(path, format="png", dpi=(DPI, DPI), pnginfo=_png_info())
    # row 0 is the canvas's top (the half pixel is cut off at the bottom), column 0 its left edge
    return Bbox.from_extents(canvas.x0 + left / DPI, canvas.y1 - bottom / DPI, canvas.x0 + right / DPI,
                             canvas.y1 - top / DPI)


def png_image(pixels: np.ndarray) -> PIL.Image.Image:
    """RGBA pixels as the image a PNG is written from: RGB when every pixel is opaque (the report's
    figures, on white), the same pixels in 9% fewer bytes and a quarter less time to encode; RGBA
    otherwise."""
    if (pixels[..., 3] == 255).all():
        return PIL.Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB")
    return PIL.Image.fromarray(pixels, "RGBA")


def _within(fig: plt.Figure, canvas: Bbox) -> bool:
    """Whether the figure's own texts and legends (what is placed outside its box: notes,
    legends beside it) lie inside ``canvas`` (inches), so that none was left out of the drawing
    whole, without touching its edge."""
    renderer = fig.canvas.get_renderer()
    to_inches = fig.dpi_scale_trans.inverted()
    for artist in [*fig.texts, *fig.legends]:
        if artist.get_visible():
            box = artist.get_window_extent(renderer).transformed(to_inches)
            if box.x0 < canvas.x0 or box.y0 < canvas.y0 or box.x1 > canvas.x1 or box.y1 > canvas.y1:
                return False
    return True


def _png_info() -> PIL.PngImagePlugin.PngInfo:
    """The PNG text chunk Matplotlib writes (``Software``), so the files say what drew them."""
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("Software", f"Matplotlib version{matplotlib.__version__}, https://matplotlib.org/")
    return info


def _drop_hidden_minor_ticks(fig: plt.Figure) -> None:
    """Removes minor ticks that draw nothing (no mark, no label, no grid line: the style hides
    them, as on a log axis here) so that the drawing does not make and lay out a Tick for each;
    the picture is the same."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_minor_locator(), matplotlib.ticker.NullLocator):
                continue
            tick = axis.get_minor_ticks(1)[0]
            marks = any(line.get_visible() and line.get_markersize() > 0 for line in (tick.tick1line, tick.tick2line))
            labels = (tick.label1.get_visible() or tick.label2.get_visible()) and not isinstance(
                axis.get_minor_formatter(), matplotlib.ticker.NullFormatter)
            if not (marks or labels or tick.gridline.get_visible()):
                axis.set_minor_locator(matplotlib.ticker.NullLocator())


def panels(n: int, *, height: float = PANEL_H, sharey: bool = True) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``n`` panels, at most three to a row, the unused places of the last row hidden."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_W * cols, height * rows), squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _legend(fig: plt.Figure, strategies: Sequence[str], colours: dict, *, marker: str = "o",
            shapes: dict[str, str] | None = None) -> None:
    handles = [plt.Line2D([], [], color=colours[s], marker=(shapes or {}).get(s, marker),
                          linestyle="none" if shapes else "-", markersize=4) for s in strategies]
    fig.legend(handles, strategies, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title="strategy")


def _note(fig: plt.Figure, note: str) -> None:
    """A caveat printed under the figure, so it travels with the PNG and PDF into a paper."""
    if note:
        fig.text(0.0, -0.02, note, ha="left", va="top", fontsize=6.5, style="italic", wrap=True)


def accuracy_figure(summary: pd.DataFrame, out: Path, *, metric_label: str, name: str,
                    colours: dict, note: str = "") -> list[Path]:
    """Per task, each strategy's mean with its 95% bootstrap interval (horizontal, so long
    strategy names never overlap); ``note``: a caveat printed under it (few seeds)."""
    with plt.rc_context(RC), sns.axes_style("whitegrid"):
        columns = sorted(summary["column"].unique(), key=stats.natural_key)
        order = (summary.groupby("strategy")["mean"].mean().sort_values(ascending=False).index.tolist())
        fig, axes = panels(len(columns), height=0.22 * len(order) + 0.9)
        for ax, column in zip(axes.flat, columns):
            part = summary[summary["column"] == column].set_index("strategy")
            for y, strategy in enumerate(order):
                if strategy not in part.index:
                    continue
                r = part.loc[strategy]
                lo, hi = r["mean"] - r["low"], r["high"] - r["mean"]
                err = None if math.isnan(r["low"]) else [[lo * 100], [hi * 100]]
                ax.errorbar(r["mean"] * 100, y, xerr=err, fmt="o", color=colours[strategy], markersize=4,
                            capsize=2, linewidth=1)
            ax.set_yticks(range(len(order)), order)
            ax.invert_yaxis()
            ax.set_title(column)
            ax.set_xlabel(f"{metric_label} (%)")
        fig.tight_layout()
        _note(fig, note)
        return save_figure(fig, out, name)


def cd_diagram(test: stats.RankTest, out: Path, *, colours: dict, name: str = "cd_diagram") -> list[Path]:
    """Demšar's (2006) critical-difference diagram: average ranks on an axis (best left),
    the CD as a bar, and thick lines joining strategies whose ranks differ by less than CD."""
    ranks = test.ranks.sort_values()
    k = len(ranks)
    with plt.rc_context(RC):
        height = 0.9 + 0.2 * math.ceil(k / 2)
        fig, ax = plt.subplots(figsize=(2 * PANEL_W, height))
        lo, hi = 1, max(k, 2)
        ax.set_xlim(lo - 0.5, hi + 0.5)
        ax.set_ylim(-(math.ceil(k / 2) + 1) * 0.25, 0.75)
        ax.axis("off")
        ax.hlines(0, lo, hi, color="black", linewidth=0.8)
        for r in range(lo, hi + 1):
            ax.vlines(r, 0, 0.06, color="black", linewidth=0.8)
            ax.text(r, 0.1, str(r), ha="center", va="bottom")
        half = math.ceil(k / 2)
        for i, (strategy, rank) in enumerate(ranks.items()):
            left = i < half
            level = -(i + 1 if left else k - i) * 0.25
            x_text = lo - 0.45 if left else hi + 0.45
            ax.plot([rank, rank, x_text], [0, level, level], color=colours[strategy], linewidth=1)
            ax.text(x_text, level, f"{strategy} ({rank:.2f})", ha="right" if left else "left", va="center",
                    color=colours[strategy])
        if test.cd is not None and test.rejects:
            end = min(lo + test.cd, hi)  # a CD wider than the axis is drawn to its end
            ax.hlines(0.45, lo, end, color="black", linewidth=1.5)
            ax.vlines([lo, end], 0.41, 0.49, color="black", linewidth=1.5)
            ax.text(end + 0.1, 0.45, f"CD = {test.cd:.2f}", ha="left", va="center")
            groups = stats.cliques(ranks, test.cd)
            step = 0.2 / (len(groups) + 1)  # all bars between the axis and the first label row
            for g, members in enumerate(groups):
                ax.hlines(-step * (g + 1), ranks[members[0]] - 0.03, ranks[members[-1]] + 0.03, color="black",
                          linewidth=min(2.5, 60 * step))
            caption = (f"average rank (1 = best) over {test.n_tasks} tasks; Friedman p = {test.p:.3g}; bars join "
                       f"strategies within the Nemenyi CD (α = {stats.ALPHA})")
        elif test.cd is not None:
            caption = (f"average rank (1 = best) over {test.n_tasks} tasks; Friedman p = {test.p:.3g}: not "
                       f"significant, so no pairwise comparison")
        else:
            caption = f"average rank (1 = best) over {test.n_tasks} tasks; no critical difference: {test.reason}"
        ax.set_title(caption, fontsize=8, pad=2)
        return save_figure(fig, out, name)


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points no other point beats on both lower ``x`` and higher ``y``, sorted by ``x``."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    front, best = [], -math.inf
    for row in ordered.itertuples(index=False):
        value = getattr(row, y)
        if value > best:
            front.append(row)
            best = value
    return pd.DataFrame(front, columns=points.columns)


def readable_log_axis(ax: plt.Axes, which: str = "x") -> None:
    """Makes ``ax``'s ``which`` axis a log axis whose labels never collide: ticks at 1, 2 and 5 per decade,
    labelled as plain numbers (``0.2``, ``5``, ``100``) when the data span less than three decades, else
    at the decades only; no minor labels (Matplotlib labels the minor ticks of a range shorter than a
    decade, and they overlap)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    ax.autoscale_view()
    low, high = ax.get_xlim() if which == "x" else ax.get_ylim()
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    subs = (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def cost_figure(runs: pd.DataFrame, out: Path, *, colours: dict, name: str = "cost_accuracy") -> list[Path]:
    """Per task: test accuracy against training seconds (log scale, reused models included),
    one point per strategy (mean over seeds), the Pareto front as a dashed staircase."""
    label = "training time per run (s, log)"
    if "feature_seconds" in runs and runs["feature_seconds"].notna().any():  # part of what a probe costs
        runs = runs.assign(train_seconds=runs["train_seconds"] + runs["feature_seconds"].fillna(0.0))
        label = "training time per run (s, log; feature pass included)"
    means = (runs.groupby(["column", "strategy"])[["train_seconds", "test_accuracy"]].mean().reset_index())
    columns = sorted(means["column"].unique(), key=stats.natural_key)
    strategies = sorted(means["strategy"].unique())
    with plt.rc_context(RC), sns.axes_style("whitegrid"):
        fig, axes = panels(len(columns), sharey=False)
        for ax, column in zip(axes.flat, columns):
            part = means[means["column"] == column]
            front = pareto_front(part, "train_seconds", "test_accuracy")
            ax.step(front["train_seconds"], front["test_accuracy"] * 100, where="post", color="grey",
                    linestyle="--", linewidth=0.8, zorder=1)
            on_front = set(front["strategy"])
            shapes = markers(colours)
            for row in part.itertuples():
                ax.scatter(row.train_seconds, row.test_accuracy * 100, color=colours[row.strategy], s=24,
                           marker=shapes[row.strategy], edgecolor="black" if row.strategy in on_front else "none",
                           linewidth=0.8, zorder=2)
            readable_log_axis(ax)
            ax.set_title(column)
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
        _legend(fig, strategies, colours, shapes=markers(colours))
        fig.tight_layout()
        return save_figure(fig, out, name)


def tuning_figure(curves: pd.DataFrame, out: Path, *, colours: dict, name: str = "tuning_curves") -> list[Path]:
    """Expected best validation accuracy (± one std) after n trials, against n and against
    the compute n trials cost (Dodge et al. 2019): backbone epochs when the store counted them,
    else seconds; one column per task."""
    columns = sorted(curves["column"].unique(), key=stats.natural_key)
    cost = "epochs" if "epochs" in curves and curves["epochs"].notna().all() else "seconds"
    strategies = sorted(curves["strategy"].unique())
    with plt.rc_context(RC), sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(2, len(columns), figsize=(PANEL_W * len(columns), 2 * PANEL_H), squeeze=False)
        for j, column in enumerate(columns):
            for i, x in enumerate(("trials", cost)):
                ax = axes[i, j]
                for strategy in strategies:
                    c = curves[(curves["column"] == column) & (curves["strategy"] == strategy)]
                    if c.empty:
                        continue
                    ax.plot(c[x], c["expected_max"] * 100, color=colours[strategy], linewidth=1.1)
                    ax.fill_between(c[x], ((c["expected_max"] - c["std"]) * 100).clip(0, 100),
                                    ((c["expected_max"] + c["std"]) * 100).clip(0, 100), color=colours[strategy],
                                    alpha=0.06, linewidth=0)
                ax.set_xlabel({"trials": "completed tuning trials", "seconds": "tuning compute (s, log)",
                               "epochs": "tuning compute (backbone epochs, log)"}[x])
                if x != "trials":
                    readable_log_axis(ax)
                else:
                    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.set_ylabel("expected best val. acc. (%)")
                ax.set_title(column if i == 0 else "")
        _legend(fig, strategies, colours, marker="")
        fig.tight_layout()
        return save_figure(fig, out, name)


def _heatmap(data: pd.DataFrame, out: Path, name: str, *, size: tuple[float, float], xlabel: str, ylabel: str,
             note: str = "", **heatmap: object) -> list[Path]:
    """An annotated heatmap with slanted column labels, saved as PNG and PDF."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=size)
        sns.heatmap(data, ax=ax, vmin=0, vmax=1, annot=True, fmt=".2f", annot_kws={"size": 6}, linewidths=0.3,
                    **heatmap)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        fig.tight_layout()
        _note(fig, note)
        return save_figure(fig, out, name)


def importance_figure(importances: pd.DataFrame, out: Path, *, name: str = "importances") -> list[Path]:
    """Hyperparameter importance (fANOVA, mean over tasks) as a strategies × parameters heatmap."""
    wide = importances.groupby(["strategy", "param"])["importance"].mean().unstack("param")
    size = (max(PANEL_W, 0.45 * wide.shape[1] + 1.8), 0.28 * wide.shape[0] + 1.2)
    return _heatmap(wide, out, name, size=size, xlabel="hyperparameter", ylabel="strategy", cmap="viridis",
                    cbar_kws={"label": "importance (fANOVA)"})


def improvement_figure(matrix: pd.DataFrame, out: Path, *, name: str = "improvement", note: str = "") -> list[Path]:
    """P(row strategy's run beats column strategy's run), averaged over tasks, every pair;
    ``note``: a caveat printed under it (few seeds)."""
    side = 0.42 * len(matrix) + 1.6
    return _heatmap(matrix, out, name, size=(side + 0.8, side), xlabel="column strategy", ylabel="row strategy",
                    note=note, cmap="RdBu_r", center=0.5, square=True, cbar_kws={"label": "P(row > column)"})


def slice_figure(trials: pd.DataFrame, strategy: str, out: Path, *, scales: dict[str, str] | None = None,
                 internal: frozenset[str] = frozenset({"reuses"})) -> list[Path]:
    """Validation accuracy against each hyperparameter over one strategy's tuning trials
    (Optuna's slice plot): one panel per hyperparameter that varied, one colour per task;
    completed trials solid, pruned ones faded at the accuracy where they stopped (a shorter
    run's, so not the same quantity). Log-scale ranges get a log axis, categorical ones
    (and any non-numeric value) a category axis. No files when nothing varied."""
    scales = scales or {}
    data = trials[(trials["strategy"] == strategy) & trials["state"].isin(["COMPLETE", "PRUNED"])]
    data = data.dropna(subset=["value"])
    if data.empty:
        return []
    data = data.assign(column=column_labels(data))
    parsed = [json.loads(p) if isinstance(p, str) else dict(p or {}) for p in data["params"]]
    names = sorted({k for p in parsed for k in p if k not in internal})
    varied = [n for n in names if len({json.dumps(p.get(n), sort_keys=True, default=str) for p in parsed
                                       if n in p}) > 1]
    if not varied:
        return []
    columns = sorted(data["column"].unique(), key=stats.natural_key)
    colours = {c: COLOURS[i % len(COLOURS)] for i, c in enumerate(columns)}
    values = data["value"].to_numpy(float) * 100
    complete = (data["state"] == "COMPLETE").to_numpy()
    with plt.rc_context(RC), sns.axes_style("whitegrid"):
        fig, axes = panels(len(varied))
        for i, (ax, name) in enumerate(zip(axes.flat, varied)):
            xs = [p.get(name) for p in parsed]
            have = np.array([x is not None for x in xs])
            numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, h in zip(xs, have) if h)
            scale = scales.get(name) or _family_scale(name, scales) or ("linear" if numeric else "categorical")
            if scale == "categorical" or not numeric:
                categories = sorted({str(x) for x, h in zip(xs, have) if h})
                jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(xs))
                position = np.array([categories.index(str(x)) + j if h else np.nan
                                     for x, h, j in zip(xs, have, jitter)])
                ax.set_xticks(range(len(categories)), categories)
            else:
                position = np.array([float(x) if h else np.nan for x, h in zip(xs, have)])
                if scale == "log" and np.nanmin(position) > 0:
                    ax.set_xscale("log")  # labelled by readable_log_axis once the points are in
                elif all(isinstance(x, int) for x, h in zip(xs, have) if h):
                    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            for column in columns:
                in_column = (data["column"] == column).to_numpy() & have
                for done, alpha, face in ((True, 0.85, colours[column]), (False, 0.3, "none")):
                    pick = in_column & (complete == done)
                    if pick.any():
                        ax.scatter(position[pick], values[pick], s=14, alpha=alpha, facecolor=face,
                                   edgecolor=colours[column], linewidth=0.8)
            if ax.get_xscale() == "log":
                readable_log_axis(ax)
            ax.set_xlabel(name + (" (log)" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel("validation accuracy (%)" if i % axes.shape[1] == 0 else "")
        handles = [plt.Line2D([], [], color=colours[c], marker="o", linestyle="none", markersize=4) for c in columns]
        handles.append(plt.Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="none",
                                  markersize=4, alpha=0.5))
        fig.legend(handles, [*columns, "pruned"], loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   title="task")
        fig.suptitle(f"{strategy}: tuning trials", fontsize=9)
        # Fixed spacing instead of tight_layout, which lays every panel out once more (a third of the
        # figure's cost); save_figure crops the outer margins.
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15 / axes.shape[0], top=1 - 0.12 / axes.shape[0],
                            wspace=0.12, hspace=0.5)
        return save_figure(fig, out, slice_name(strategy))


def _family_scale(name: str, scales: dict[str, str]) -> str | None:
    """The scale of a parameter the search space declares per variant: a strategy's ``lr`` is
    drawn as ``lr_sgd`` or ``lr_adamw`` (one per optimizer), both on a log scale."""
    family = {scale for key, scale in scales.items() if key.startswith(name + "_")}
    return family.pop() if len(family) == 1 else None


def slice_name(strategy: str) -> str:
    """The file stem of a strategy's slice figure (a plugin's name may hold any character)."""
    return "slice_" + re.sub(r"[^A-Za-z0-9_.-]", "_", strategy)

