"""Two or more stores side by side: did a change help, and is the difference real?

The first store is the baseline. For every cell (task, backbone, strategy) that a later store shares
with it, the paired difference (later − baseline) of test (and shifted-test) accuracy over the
evaluation seeds both ran: seed ``s`` of a cell starts from the same initialisation and data order in
both stores when nothing else changed, so pairing by seed removes that noise. Each difference gets a
95% bootstrap interval of its mean (descriptive) and a paired t-test; one criterion decides, the
t-test Holm-corrected over the cells of a comparison, and every output says so.

What differs between the stores besides the results (settings, protocol, search spaces, code) is
listed; a shared cell tested on different data (its split fingerprint differs) makes the comparison
meaningless and is refused in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from tlbench.core.errors import ConfigError
from tlbench.reports import stats
from tlbench.reports.results import Results
from tlbench.reports.tables import SCALE, Table, TableCell, few_seeds_note, to_html, to_latex, to_markdown
from tlbench.store.settings import flatten, shown

METRICS = {"test_accuracy": "test accuracy", "shifted_test_accuracy": "shifted-test accuracy"}

#: The comparison frame's columns (``compare.parquet``): one row per (later store, metric, cell).
COLUMNS = ["baseline", "label", "metric", "task", "backbone", "strategy", "n", "baseline_mean", "mean", "diff",
           "low", "high", "p", "p_holm", "significant"]


@dataclass
class Side:
    """One store of a comparison: its label, its results and where it was read from."""

    label: str
    results: Results
    where: str = ""
    identity: str = ""  # which store it is (a journal's absolute path, a URL): two sides may not share one


@dataclass
class Comparison:
    """What :func:`compare` found: the paired differences, the cells only one side has, and what
    differs between the stores besides their results."""

    labels: list[str]
    frame: pd.DataFrame  # COLUMNS
    only: dict[str, list[str]] = field(default_factory=dict)  # label → cells only it has, against the baseline
    differences: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (what, label, [values per side])
    notes: list[str] = field(default_factory=list)


def _cell(task: str, backbone: str, strategy: str) -> str:
    return f"{task} / {backbone} / {strategy}"


def check_same_data(sides: Sequence[Side]) -> None:
    """Refuses, in one line, a comparison of a cell that the stores tested on different data: the
    records' split fingerprints (train, validation and test content and preprocessing) differ."""
    base = sides[0]
    prints = _fingerprints(base.results.runs)
    for other in sides[1:]:
        for key, theirs in _fingerprints(other.results.runs).items():
            ours = prints.get(key)
            if ours is not None and ours != theirs:
                raise ConfigError(
                    f"compare: {_cell(*key)}: {base.label} and {other.label} were tested on different data "
                    f"(split fingerprint {', '.join(sorted(ours))} vs {', '.join(sorted(theirs))}): their accuracies "
                    f"are not comparable; compare stores of the same tasks and splits")


def _fingerprints(runs: pd.DataFrame) -> dict[tuple[str, str, str], set[str]]:
    if runs.empty or "split_fingerprint" not in runs:
        return {}
    return {key: set(group.dropna()) for key, group in runs.groupby(["task", "backbone", "strategy"])["split_fingerprint"]}


def paired(baseline: pd.DataFrame, later: pd.DataFrame, metric: str, *, seed: int = 0) -> dict[str, Any]:
    """The paired difference (later − baseline) of one cell over the seeds both ran: n, both means
    over those seeds, the mean difference, its bootstrap interval and the paired t-test's p
    (a constant difference: p 0, or 1 when it is zero; fewer than two pairs: NaN)."""
    a = baseline.dropna(subset=[metric]).drop_duplicates("seed").set_index("seed")[metric]
    b = later.dropna(subset=[metric]).drop_duplicates("seed").set_index("seed")[metric]
    shared = sorted(set(a.index) & set(b.index))
    x, y = a.loc[shared].to_numpy(float), b.loc[shared].to_numpy(float)
    diff = y - x
    out = {"n": len(shared), "baseline_mean": float(x.mean()) if len(x) else math.nan,
           "mean": float(y.mean()) if len(y) else math.nan, "diff": float(diff.mean()) if len(diff) else math.nan,
           "low": math.nan, "high": math.nan, "p": math.nan}
    if len(diff) >= 2:
        out["low"], out["high"] = stats.bootstrap_ci(diff, seed=seed)
        if diff.std() > 0:
            out["p"] = float(scipy_stats.ttest_rel(y, x).pvalue)
        else:
            out["p"] = 1.0 if np.abs(diff).max() == 0 else 0.0
    return out


def compare(sides: Sequence[Side], *, seed: int = 0, alpha: float = stats.ALPHA) -> Comparison:
    """Every later side against the first (see the module's docstring)."""
    if len(sides) < 2:
        raise ConfigError("compare: give at least two stores")
    labels = [s.label for s in sides]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare: labels must differ (got {', '.join(labels)}); name them LABEL=STORE")
    check_same_data(sides)
    base = sides[0]
    rows: list[dict[str, Any]] = []
    only: dict[str, list[str]] = {}
    keys = ["task", "backbone", "strategy"]
    base_cells = {k: g for k, g in base.results.runs.groupby(keys)} if not base.results.empty else {}
    for other in sides[1:]:
        other_cells = {k: g for k, g in other.results.runs.groupby(keys)} if not other.results.empty else {}
        only[f"{base.label}, not {other.label}"] = [_cell(*k) for k in sorted(set(base_cells) - set(other_cells))]
        only[f"{other.label}, not {base.label}"] = [_cell(*k) for k in sorted(set(other_cells) - set(base_cells))]
        for metric in METRICS:
            part = []
            for key in sorted(set(base_cells) & set(other_cells), key=lambda k: (stats.natural_key(k[0]), k[1:])):
                a, b = base_cells[key], other_cells[key]
                if metric not in a or metric not in b or a[metric].isna().all() or b[metric].isna().all():
                    continue
                part.append({"baseline": base.label, "label": other.label, "metric": metric,
                             **dict(zip(keys, key)), **paired(a, b, metric, seed=seed)})
            adjusted = stats.holm([r["p"] for r in part])
            for r, p_holm in zip(part, adjusted):
                r["p_holm"] = float(p_holm)
                r["significant"] = None if math.isnan(p_holm) else bool(p_holm < alpha)
            rows += part
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if not frame.empty:
        frame["significant"] = frame["significant"].astype("boolean")
        frame["n"] = frame["n"].astype(int)
    comparison = Comparison(labels, frame, {k: v for k, v in only.items() if v}, differences(sides))
    if frame.empty:
        comparison.notes.append("No cell is in both stores with results: nothing to compare.")
    elif (frame["n"] == 0).any():
        comparison.notes.append("Some shared cells have no evaluation seed in common (–): nothing to pair.")
    return comparison


# ------------------------------------------------------------------ what else differs


def differences(sides: Sequence[Side]) -> list[tuple[str, str, list[str]]]:
    """What differs between the stores besides their results, as (what, field, [value per side]):
    the suite's settings (field by field, where the stores recorded them), the tuning protocol,
    each strategy's search space, the code (tlbench version, git commit, torch, a plugin's origin)
    and the device."""
    out: list[tuple[str, str, list[str]]] = []

    def add(what: str, values: list[dict[str, str]], absent: str = "–") -> None:
        for name in sorted(set().union(*values)):
            seen = [shown(v[name]) if name in v else absent for v in values]
            if len(set(seen)) > 1:
                out.append((what, name, seen))

    recorded = [s.results.settings for s in sides]
    if all(recorded):  # a field left out of one store's settings is at its default there
        add("settings", [flatten(r) for r in recorded], absent="default")
    elif any(recorded):
        out.append(("settings", "(not recorded)", ["recorded" if r else "not recorded (an older store)"
                                                   for r in recorded]))
    add("protocol", [flatten(s.results.protocol.model_dump(mode="json")) if s.results.protocol else {}
                     for s in sides])
    add("search space", [{f"{strategy}.{param}": text for strategy, space in s.results.search_spaces.items()
                          for param, text in space.items()} for s in sides])
    provenance = ("tlbench_version", "git_commit", "torch_version", "device", "suite_fingerprint")
    add("provenance", [{column: ", ".join(sorted(map(str, s.results.runs[column].dropna().unique())))
                        for column in provenance if column in s.results.runs} for s in sides])
    add("strategy origin", [{strategy: origin for strategy, origin in
                             s.results.runs.drop_duplicates("strategy")[["strategy", "strategy_origin"]]
                             .itertuples(index=False)} if "strategy_origin" in s.results.runs else {}
                            for s in sides])
    return out


# ------------------------------------------------------------------ outputs


def _points(fraction: float) -> str:
    """A difference of accuracies in signed points, one decimal; a difference that rounds to zero is
    ``+0.0`` (never ``-0.0``)."""
    text = f"{fraction * SCALE:+.1f}"
    return "+0.0" if text == "-0.0" else text


def tables(comparison: Comparison) -> list[Table]:
    """One table per later store and metric: each shared cell's means, paired difference with its
    interval, p (Holm-adjusted) and the verdict; then what else differs."""
    out = []
    frame = comparison.frame
    for (label, metric), part in frame.groupby(["label", "metric"], sort=False):
        base = part["baseline"].iloc[0]
        rows = []
        for r in part.to_dict("records"):
            if r["n"] == 0:
                rows.append([TableCell(r["task"]), TableCell(r["backbone"]), TableCell(r["strategy"]), TableCell("0"),
                             TableCell("–"), TableCell("–"), TableCell("–"), TableCell("–"), TableCell("no shared seed")])
                continue
            ci = "" if math.isnan(r["low"]) else f" [{_points(r['low'])}, {_points(r['high'])}]"
            verdict = {None: "untestable", True: "better" if r["diff"] > 0 else "worse",
                       False: "no significant difference"}[None if pd.isna(r["significant"]) else bool(r["significant"])]
            rows.append([TableCell(r["task"]), TableCell(r["backbone"]), TableCell(r["strategy"]),
                         TableCell(str(r["n"])), TableCell(f"{r['baseline_mean'] * SCALE:.1f}"),
                         TableCell(f"{r['mean'] * SCALE:.1f}"),
                         TableCell(f"{_points(r['diff'])}{ci}", bold=bool(r["significant"] is True)),
                         TableCell("–" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}"), TableCell(verdict)])
        fewest = int(part.loc[part["n"] > 0, "n"].min()) if (part["n"] > 0).any() else 0
        notes = [f"{label} − {base}, per cell, over the evaluation seeds both ran (n): means over those seeds, the mean "
                 f"paired difference in points with its 95% bootstrap interval (descriptive, not corrected). One "
                 f"criterion decides: the paired t-test over those seeds, Holm-corrected over the {len(part)} cells "
                 f"of this table (p: adjusted); bold and better/worse where it rejects at α = {stats.ALPHA}. A "
                 f"difference that is the same on every seed has p = 0 (or 1 when it is zero)."]
        if 0 < fewest < stats.MIN_SEEDS:
            notes.append(few_seeds_note(fewest, "the tests have little power and the intervals are too narrow: read "
                                                "them as descriptive."))
        out.append(Table(["task", "backbone", "strategy", "n", f"{base} (%)", f"{label} (%)", "difference (points)",
                          "p (Holm)", "verdict"], rows, f"{label} vs {base}: {METRICS[metric]}", notes,
                         align="lllrrrrrl"))
    if comparison.differences:
        rows = [[TableCell(what), TableCell(name), *(TableCell(v) for v in values)]
                for what, name, values in comparison.differences]
        out.append(Table(["what", "field", *comparison.labels], rows, "What else differs between the stores",
                         ["Settings are compared field by field where every store recorded them (runs of this release "
                          "do); default: the field's default value; – : not recorded or not set. Each store's tuned "
                          "configuration per cell is in its report's selected hyperparameters."],
                         align="ll" + "l" * len(comparison.labels)))
    if comparison.only:
        rows = [[TableCell(side), TableCell(", ".join(cells))] for side, cells in comparison.only.items()]
        out.append(Table(["cells of", "cells"], rows, "Cells not in both stores (not compared)", [], align="ll"))
    return out


def figure(comparison: Comparison, out: Path, *, name: str = "compare") -> list[Path]:
    """The paired difference per cell with its interval, one panel per later store and metric;
    filled markers where the corrected test rejects."""
    from tlbench.reports.figures import RC, plt, save_figure

    groups = [(k, g[g["n"] > 0]) for k, g in comparison.frame.groupby(["label", "metric"], sort=False)]
    groups = [(k, g) for k, g in groups if not g.empty]
    if not groups:
        return []
    tallest = max(len(g) for _, g in groups)
    with plt.rc_context(RC):
        cells = [list(zip(g["task"], g["backbone"], g["strategy"])) for _, g in groups]
        same = all(c == cells[0] for c in cells)  # one set of row labels, on the left
        fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 0.8 + 0.22 * tallest), squeeze=False,
                                 sharey=same)
        for i, (ax, ((label, metric), g)) in enumerate(zip(axes[0], groups)):
            y = np.arange(len(g))[::-1]
            diff = g["diff"].to_numpy(float) * SCALE
            low = np.where(g["low"].isna(), diff, g["low"].to_numpy(float) * SCALE)
            high = np.where(g["high"].isna(), diff, g["high"].to_numpy(float) * SCALE)
            ax.errorbar(diff, y, xerr=[diff - low, high - diff], fmt="none", ecolor="0.4", elinewidth=1, capsize=2)
            significant = g["significant"].fillna(False).to_numpy(bool)
            ax.scatter(diff[significant], y[significant], color="C0", zorder=3, s=18, label="significant (Holm)")
            ax.scatter(diff[~significant], y[~significant], facecolor="white", edgecolor="C0", zorder=3, s=18,
                       label="not significant")
            ax.axvline(0, color="0.2", linewidth=0.8, linestyle="--")
            if i == 0 or not same:
                ax.set_yticks(y, [f"{t} / {s}" if g["backbone"].nunique() == 1 else f"{t} / {b} / {s}"
                                  for t, b, s in zip(g["task"], g["backbone"], g["strategy"])])
            ax.set_xlabel(f"{label} − {g['baseline'].iloc[0]} ({METRICS[metric]}, points)")
        axes[0][0].legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, fontsize=6, frameon=False)
        fig.tight_layout()
        return save_figure(fig, out, name)


CAPTION = ("Paired difference per cell (later store − baseline) over the seeds both ran, with the 95% bootstrap "
           "interval of its mean; filled: the Holm-corrected paired t-test rejects at α = 0.05.")


def write_comparison(comparison: Comparison, out: Path, *, title: str, draw: bool = True) -> list[Path]:
    """compare.md/.tex/.html, compare.parquet/.csv (:data:`COLUMNS`) and figures/compare.png/.pdf in ``out``."""
    import html as html_lib

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, write in (("compare.parquet", lambda p: comparison.frame.to_parquet(p, index=False)),
                        ("compare.csv", lambda p: comparison.frame.to_csv(p, index=False))):
        write(out / name)
        made.append(out / name)
    found = tables(comparison)
    notes = "".join(f"\n_{n}_\n" for n in comparison.notes)
    (out / "compare.md").write_text(f"# {title}\n\n" + "\n".join(to_markdown(t) for t in found) + notes)
    (out / "compare.tex").write_text("% tlbench compare tables; needs \\usepackage{booktabs}\n"
                                     + "\n".join(to_latex(t, label=f"tab:compare{i}") for i, t in enumerate(found)))
    made += [out / "compare.md", out / "compare.tex"]
    figures = figure(comparison, out / "figures") if draw else []
    made += figures
    image = ""
    if figures:
        import base64

        data = base64.b64encode(figures[0].read_bytes()).decode()
        image = (f'<figure><img src="data:image/png;base64,{data}" alt="{html_lib.escape(CAPTION)}">'
                 f"<figcaption>{html_lib.escape(CAPTION)}</figcaption></figure>")
    from tlbench.reports.build import CSS

    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html_lib.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html_lib.escape(title)}</h1>"
            + "".join(f"<p class=\"note\">{html_lib.escape(n)}</p>" for n in comparison.notes)
            + "".join(to_html(t) for t in found) + image + "</body></html>\n")
    (out / "compare.html").write_text(page)
    made.append(out / "compare.html")
    return made
