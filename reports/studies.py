"""What a report shows of a suite's studies: sweeps (accuracy against a swept task field, and
where transfer stops paying off) and sensitivity studies (accuracy against one or two
hyperparameters around the tuned configuration)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from tlbench.reports import stats
from tlbench.reports.figures import RC, markers, panels, plt, readable_log_axis, save_figure, sns
from tlbench.reports.tables import SCALE, Table, TableCell

SCRATCH = "scratch"


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text))


# ------------------------------------------------------------------ sweeps


def swept_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of swept tasks with ``family``, ``field`` and ``value`` columns (from each
    record's task facts); empty when the suite sweeps nothing."""
    if runs.empty or "task_info" not in runs:
        return runs.iloc[0:0].assign(family=[], field=[], value=[])
    sweep = runs["task_info"].map(lambda info: info.get("sweep") if isinstance(info, dict) else None)
    keep = sweep.notna()
    part = runs[keep].copy()
    part["family"] = [s["family"] for s in sweep[keep]]
    part["field"] = [s["field"] for s in sweep[keep]]
    part["value"] = [float(s["value"]) for s in sweep[keep]]
    return part


def sweep_summary(runs: pd.DataFrame, metric: str = "test_accuracy", *, seed: int = 0) -> pd.DataFrame:
    """Per family, backbone, strategy and swept value: mean, 95% bootstrap interval, n."""
    part = swept_runs(runs).dropna(subset=[metric])
    rows = []
    for (family, field, backbone, strategy, value), group in part.groupby(
            ["family", "field", "backbone", "strategy", "value"]):
        values = group[metric].to_numpy(float)
        low, high = stats.bootstrap_ci(values, seed=seed)
        rows.append({"family": family, "field": field, "backbone": backbone, "strategy": strategy, "value": value,
                     "mean": values.mean(), "low": low, "high": high, "n": len(values)})
    return pd.DataFrame(rows, columns=["family", "field", "backbone", "strategy", "value", "mean", "low", "high",
                                       "n"])


def _log_axis(values: np.ndarray) -> bool:
    return bool(len(values) >= 2 and (values > 0).all() and values.max() / values.min() >= 10)


def sweep_figures(summary: pd.DataFrame, out: Path, *, colours: dict) -> list[Path]:
    """One figure per swept family: accuracy (mean and 95% interval) against the swept
    value, one line per strategy, a panel per backbone."""
    files: list[Path] = []
    shapes = markers(colours)
    for (family, field), part in summary.groupby(["family", "field"]):
        backbones = sorted(part["backbone"].unique())
        with plt.rc_context(RC), sns.axes_style("whitegrid"):
            fig, axes = panels(len(backbones))
            for ax, backbone in zip(axes.flat, backbones):
                for strategy, line in part[part["backbone"] == backbone].groupby("strategy"):
                    line = line.sort_values("value")
                    x = line["value"].to_numpy(float)
                    ax.plot(x, line["mean"] * SCALE, marker=shapes.get(strategy, "o"), markersize=3.5,
                            color=colours[strategy], label=strategy, linewidth=1.2)
                    if line["low"].notna().any():
                        ax.fill_between(x, line["low"] * SCALE, line["high"] * SCALE, color=colours[strategy],
                                        alpha=0.15, linewidth=0)
                values = np.sort(part["value"].unique())
                if _log_axis(values):
                    ax.set_xscale("log")
                ax.set_xticks(values, [f"{v:g}" for v in values])
                ax.minorticks_off()
                ax.set_xlabel(field)
                ax.set_ylabel("test accuracy (%)")
                ax.set_title(f"{family} / {backbone}" if len(backbones) > 1 else family)
            handles, labels = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                       title="strategy")
            fig.tight_layout()
            files += save_figure(fig, out, f"sweep_{_file_part(family)}")
    return files


CROSSOVER_COLUMNS = ["family", "field", "backbone", "value", "best", "best_mean", "scratch_mean", "gap", "low",
                     "high", "n", "p", "worse"]


def crossover_frame(runs: pd.DataFrame, metric: str = "test_accuracy", *, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Per swept family (and backbone) with a ``scratch`` strategy, one row per swept value: the
    best transfer strategy (highest mean), its mean and scratch's, the gap (mean of the paired
    differences best − scratch over the seeds both share) with its ``1 − alpha`` paired t interval,
    the paired t-test's p and ``worse``: whether scratch is significantly worse (None: untestable).
    One criterion decides, the paired t-test, and the interval is that test's own, so an interval
    that excludes zero and a p above ``alpha`` cannot disagree."""
    part = swept_runs(runs).dropna(subset=[metric])
    rows = []
    for (family, field, backbone), group in part.groupby(["family", "field", "backbone"]):
        if SCRATCH not in set(group["strategy"]) or group["strategy"].nunique() < 2:
            continue
        for value, at in sorted(group.groupby("value"), key=lambda kv: kv[0]):
            means = at.groupby("strategy")[metric].mean()
            transfer = means.drop(SCRATCH, errors="ignore")
            if SCRATCH not in means or transfer.empty:
                continue
            best = transfer.idxmax()
            wide = at.pivot(index="seed", columns="strategy", values=metric)[[best, SCRATCH]].dropna()
            gap = (wide[best] - wide[SCRATCH]).to_numpy(float)
            p = low = high = math.nan
            if len(gap) >= 2 and gap.std() > 0:
                test = scipy_stats.ttest_rel(wide[best], wide[SCRATCH])
                p = float(test.pvalue)
                low, high = (float(x) for x in test.confidence_interval(1 - alpha))
            elif len(gap) >= 2:  # the same difference on every seed: none at all, or a sure one
                p = 1.0 if np.abs(gap).max() == 0 else 0.0
                low = high = float(gap[0])
            worse = None if math.isnan(p) else bool(p < alpha and gap.mean() > 0)
            rows.append({"family": family, "field": field, "backbone": backbone, "value": float(value),
                         "best": best, "best_mean": float(transfer[best]), "scratch_mean": float(means[SCRATCH]),
                         "gap": float(gap.mean()) if len(gap) else math.nan, "low": low, "high": high,
                         "n": len(gap), "p": p, "worse": worse})
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


def crossover_tables(runs: pd.DataFrame, metric: str = "test_accuracy", *, alpha: float = stats.ALPHA,
                     seed: int = 0) -> list[Table]:
    """Per swept family (and backbone) with a ``scratch`` strategy: at each value, the best
    transfer strategy against scratch (:func:`crossover_frame`), and the smallest value from
    which scratch is no longer significantly worse — where transfer stops paying off.
    (``seed`` is accepted for symmetry with the other tables; the paired t interval needs none.)"""
    frame = crossover_frame(runs, metric, alpha=alpha)
    tables = []
    several = frame["backbone"].nunique() > 1
    for (family, field, backbone), group in frame.groupby(["family", "field", "backbone"], sort=False):
        rows = []
        for r in group.to_dict("records"):
            ci = "" if math.isnan(r["low"]) else f" [{r['low'] * SCALE:.1f}, {r['high'] * SCALE:.1f}]"
            worse = r["worse"]
            rows.append([TableCell(f"{r['value']:g}"), TableCell(r["best"]), TableCell(f"{r['best_mean'] * SCALE:.1f}"),
                         TableCell(f"{r['scratch_mean'] * SCALE:.1f}"), TableCell(f"{r['gap'] * SCALE:+.1f}{ci}"),
                         TableCell("–" if math.isnan(r["p"]) else f"{r['p']:.3g}"),
                         TableCell({None: "untestable", True: "yes", False: "no"}[worse], bold=worse is False)])
        testable = [(r["value"], r["worse"]) for r in group.to_dict("records") if r["worse"] is not None]
        crossover = next((v for v, w in testable if not w), None)
        if not testable:
            verdict = "Not testable: fewer than two seeds shared by scratch and the best transfer strategy."
        elif crossover is None:
            verdict = f"Scratch is significantly worse at every {field} tested: transfer pays off throughout."
        else:
            later = [v for v, w in testable if v > crossover and w]
            verdict = (f"Transfer stops paying off at {field} = {crossover:g}: the smallest value at which scratch "
                       f"is no longer significantly worse than the best transfer strategy"
                       + (f" (though it is again at {', '.join(f'{v:g}' for v in later)})." if later else "."))
        notes = [verdict, f"One criterion decides, the paired t-test over the seeds both share (α = {alpha} at each "
                          f"value on its own, not corrected across the {len(rows)} values): scratch is worse when "
                          f"p < {alpha} and the gap is positive. Gap: mean of the paired differences (best transfer "
                          f"strategy − scratch), in points, with that test's {100 * (1 - alpha):g}% interval, "
                          f"which excludes zero exactly when p < {alpha}."]
        if (group["n"] < stats.MIN_SEEDS).any():
            notes.append(f"Some values have fewer than {stats.MIN_SEEDS} shared seeds: the tests have little power; "
                         f"read the crossover as descriptive.")
        title = f"Where transfer stops paying off: {family}" + (f" / {backbone}" if several else "")
        tables.append(Table([field, "best transfer", "its acc. (%)", "scratch (%)", "gap (points)", "p",
                             "scratch worse?"], rows, title, notes, align="rlrrrrl"))
    return tables


# ------------------------------------------------------------------ sensitivity studies


def sensitivity_summary(frame: pd.DataFrame, metric: str = "test_accuracy", *, seed: int = 0) -> pd.DataFrame:
    """Per cell and varied hyperparameter(s): each value's (or pair's) mean, interval and n,
    and the tuned value(s)."""
    if frame.empty:
        return pd.DataFrame(columns=["task", "backbone", "strategy", "params", "x", "y", "mean", "low", "high", "n",
                                     "tuned_x", "tuned_y"])
    varied_cols = [c for c in frame.columns if c.startswith("varied:")]
    rows = []
    for keys, group in frame.groupby(["task", "backbone", "strategy"]):
        present = [c for c in varied_cols if group[c].notna().any()]
        by_params = group.groupby(group[present].notna().apply(lambda r: tuple(c for c in present if r[c]), axis=1))
        for params, sub in by_params:
            names = [c.removeprefix("varied:") for c in params]
            for point, at in sub.groupby(list(params), dropna=True):
                point = point if isinstance(point, tuple) else (point,)
                values = at[metric].to_numpy(float)
                low, high = stats.bootstrap_ci(values, seed=seed)
                tuned = [at[f"tuned:{n}"].iloc[0] if f"tuned:{n}" in at else None for n in names]
                rows.append({"task": keys[0], "backbone": keys[1], "strategy": keys[2], "params": tuple(names),
                             "x": point[0], "y": point[1] if len(point) > 1 else None, "mean": values.mean(),
                             "low": low, "high": high, "n": len(values), "tuned_x": tuned[0],
                             "tuned_y": tuned[1] if len(tuned) > 1 else None})
    return pd.DataFrame(rows)


def _numbers(values: pd.Series) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def sensitivity_figures(summary: pd.DataFrame, out: Path, *, colours: dict) -> list[Path]:
    """Per strategy and varied hyperparameter(s): a curve (one) or heatmap (two) of test
    accuracy, a panel per task, the tuned value marked."""
    files: list[Path] = []
    if summary.empty:
        return files
    for (strategy, params), part in summary.groupby(["strategy", "params"]):
        cells = sorted({(t, b) for t, b in zip(part["task"], part["backbone"])})
        with plt.rc_context(RC), sns.axes_style("whitegrid"):
            fig, axes = panels(len(cells), sharey=len(params) == 1)
            for ax, (task, backbone) in zip(axes.flat, cells):
                sub = part[(part["task"] == task) & (part["backbone"] == backbone)]
                title = task if part["backbone"].nunique() == 1 else f"{task} / {backbone}"
                if len(params) == 1:
                    _curve(ax, sub, params[0], colours[strategy])
                else:
                    _heatmap(ax, fig, sub, params)
                ax.set_title(title)
            fig.suptitle(f"{strategy}: sensitivity to {' × '.join(params)}", fontsize=9)
            fig.tight_layout()
            files += save_figure(fig, out, f"sensitivity_{_file_part(strategy)}_{_file_part('-'.join(params))}")
    return files


def _curve(ax: plt.Axes, sub: pd.DataFrame, name: str, colour: str) -> None:
    sub = sub.sort_values("x") if _numbers(sub["x"]) else sub
    numeric = _numbers(sub["x"])
    x = sub["x"].to_numpy(float) if numeric else np.arange(len(sub))
    ax.plot(x, sub["mean"] * SCALE, marker="o", markersize=3.5, color=colour, linewidth=1.2)
    if sub["low"].notna().any():
        ax.fill_between(x, sub["low"] * SCALE, sub["high"] * SCALE, color=colour, alpha=0.15, linewidth=0)
    tuned = sub["tuned_x"].iloc[0]
    if numeric:
        if _log_axis(np.asarray(x)):
            readable_log_axis(ax)
        if tuned is not None:
            ax.axvline(float(tuned), color="#444", linestyle="--", linewidth=0.9, label=f"tuned {tuned:.3g}")
            ax.legend(loc="best", frameon=False)
    else:
        ax.set_xticks(x, [str(v) for v in sub["x"]])
    ax.set_xlabel(name)
    ax.set_ylabel("test accuracy (%)")


def _heatmap(ax: plt.Axes, fig: plt.Figure, sub: pd.DataFrame, params: tuple[str, ...]) -> None:
    grid = sub.pivot_table(index="y", columns="x", values="mean") * SCALE
    image = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [f"{v:.3g}" if isinstance(v, float) else str(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:.3g}" if isinstance(v, float) else str(v) for v in grid.index])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid.iat[i, j]
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color="white")
    tx, ty = sub["tuned_x"].iloc[0], sub["tuned_y"].iloc[0]
    if tx in list(grid.columns) and ty in list(grid.index):
        ax.add_patch(plt.Rectangle((list(grid.columns).index(tx) - 0.5, list(grid.index).index(ty) - 0.5), 1, 1,
                                   fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlabel(params[0])
    ax.set_ylabel(params[1])
    fig.colorbar(image, ax=ax, label="test accuracy (%)")


SWEEP_CAPTION = ("Test accuracy (mean and 95% bootstrap interval over evaluation seeds) against the swept task "
                 "field, one line per strategy.")
SENSITIVITY_CAPTION = ("Test accuracy (mean and 95% bootstrap interval over the study's seeds) with one "
                       "hyperparameter of the tuned configuration set to each value (dashed: the tuned value), or "
                       "two (heatmap of means; red: the tuned pair). The other hyperparameters keep their tuned "
                       "values.")


def _interval(mean: float, low: float, high: float, n: int) -> str:
    """``mean ± half-width`` in percent (the mean alone without an interval)."""
    return f"{mean * SCALE:.1f}" + ("" if n < 2 or math.isnan(low) else f" ± {(high - low) / 2 * SCALE:.1f}")


def _seeds_note(fewest: int, what: str) -> list[str]:
    from tlbench.reports.tables import few_seeds_note

    if 2 <= fewest < stats.MIN_SEEDS:
        return [few_seeds_note(fewest, f"the intervals {what} are too narrow: read them as descriptive.")]
    if fewest == 1:
        return ["Values without ± have one seed: no interval from one seed."]
    return []


def sweep_tables(summary: pd.DataFrame) -> list[Table]:
    """The numbers behind each sweep figure: per family (and backbone), a row per swept value and a
    column per strategy, mean ± half-width of the 95% bootstrap interval; the best per row in bold."""
    tables = []
    several = summary["backbone"].nunique() > 1
    for (family, field, backbone), part in summary.groupby(["family", "field", "backbone"]):
        strategies = sorted(part["strategy"].unique())
        rows = []
        for value, at in sorted(part.groupby("value"), key=lambda kv: kv[0]):
            cells = at.set_index("strategy")
            best = cells["mean"].max()
            row = [TableCell(f"{value:g}")]
            for strategy in strategies:
                if strategy not in cells.index:
                    row.append(TableCell("–"))
                    continue
                r = cells.loc[strategy]
                row.append(TableCell(_interval(r["mean"], r["low"], r["high"], int(r["n"])),
                                     bold=math.isclose(r["mean"], best, rel_tol=0, abs_tol=1e-12)))
            rows.append(row)
        notes = [f"Test accuracy (%) at each {field}: mean over evaluation seeds ± half-width of the 95% bootstrap "
                 f"interval of the mean; bold: the best mean at that value (a point estimate, not a test: the "
                 f"crossover table tests scratch against the best)."]
        notes += _seeds_note(int(part["n"].min()), "of this sweep")
        title = f"Sweep of {field}: {family}" + (f" / {backbone}" if several else "")
        tables.append(Table([field, *strategies], rows, title, notes, align="r" * (len(strategies) + 1)))
    return tables


def sensitivity_tables(summary: pd.DataFrame) -> list[Table]:
    """The numbers behind each sensitivity figure: per strategy and varied hyperparameter(s), a row per
    cell and value (or pair), mean ± half-width and seeds; the tuned value marked."""
    tables = []
    for (strategy, params), part in summary.groupby(["strategy", "params"]):
        names = list(params)
        rows = []
        records = part.to_dict("records")  # cells in natural order (shots2 before shots10), values as given
        for r in sorted(records, key=lambda r: (stats.natural_key(r["task"]), str(r["backbone"]))):
            point = [r["x"]] + ([r["y"]] if len(names) > 1 else [])
            tuned = [r["tuned_x"]] + ([r["tuned_y"]] if len(names) > 1 else [])
            is_tuned = all(a == b for a, b in zip(point, tuned))
            rows.append([TableCell(r["task"]), TableCell(r["backbone"]),
                         *(TableCell(f"{v:.3g}" if isinstance(v, float) else str(v), bold=is_tuned) for v in point),
                         TableCell(_interval(r["mean"], r["low"], r["high"], int(r["n"])), bold=is_tuned),
                         TableCell(str(int(r["n"])))])
        notes = [f"Test accuracy (%) with {' and '.join(names)} set to each value, every other hyperparameter at its "
                 f"tuned value: mean over the study's seeds ± half-width of the 95% bootstrap interval. Bold: the "
                 f"tuned value."]
        notes += _seeds_note(int(part["n"].min()), "of this study")
        tables.append(Table(["task", "backbone", *names, "test acc. (%)", "seeds"], rows,
                            f"Sensitivity of {strategy} to {' × '.join(names)}", notes,
                            align="ll" + "l" * len(names) + "rr"))
    return tables


def study_captions(files: list[Path], sweep: pd.DataFrame, sensitivity: pd.DataFrame) -> dict[str, str]:
    """Each study figure's caption (file stem → text), with the low-seed note where that figure's
    fewest seeds per point call for it."""
    from tlbench.reports.tables import few_seeds_note

    fewest: dict[str, tuple[str, int]] = {}  # stem → (caption, fewest seeds behind a point)
    if not sweep.empty:
        for (family, _), part in sweep.groupby(["family", "field"]):
            fewest[f"sweep_{_file_part(family)}"] = (f"{family}: {SWEEP_CAPTION}", int(part["n"].min()))
    if not sensitivity.empty:
        for (strategy, params), part in sensitivity.groupby(["strategy", "params"]):
            fewest[f"sensitivity_{_file_part(strategy)}_{_file_part('-'.join(params))}"] = (
                f"{strategy}, {' × '.join(params)}: {SENSITIVITY_CAPTION}", int(part["n"].min()))
    captions = {}
    for path in files:
        if path.suffix == ".png" and path.stem in fewest:
            text, n = fewest[path.stem]
            if 2 <= n < stats.MIN_SEEDS:
                text += " " + few_seeds_note(n, "the intervals are descriptive (too narrow).")
            elif n == 1:
                text += " Some points have one seed: no interval from one seed."
            captions[path.stem] = text
    return captions


def studies_section(runs: pd.DataFrame, sensitivity: pd.DataFrame, out: Path, *, colours: dict,
                    seed: int = 0, draw: bool = True
                    ) -> tuple[list[tuple[str, Table]], list[Path], dict[str, str]]:
    """The report's tables (with LaTeX labels: the sweeps' numbers, where transfer stops paying off, the
    sensitivity studies' numbers), figures (unless not ``draw``) and their captions (file stem → text)
    for a suite's sweeps and sensitivity studies; nothing when it has neither."""
    summary = sweep_summary(runs, seed=seed)
    sens = sensitivity_summary(sensitivity, seed=seed) if not sensitivity.empty else pd.DataFrame()
    tables = [(f"tab:sweep{i or ''}", t) for i, t in enumerate(sweep_tables(summary) if not summary.empty else [])]
    tables += [(f"tab:crossover{i or ''}", t) for i, t in enumerate(crossover_tables(runs, seed=seed))]
    tables += [(f"tab:sensitivity{i or ''}", t) for i, t in enumerate(sensitivity_tables(sens) if not sens.empty
                                                                        else [])]
    files: list[Path] = []
    if not draw:
        return tables, files, {}
    if not summary.empty:
        files += sweep_figures(summary, out, colours=colours)
    if not sens.empty:
        files += sensitivity_figures(sens, out, colours=colours)
    return tables, files, study_captions(files, summary, sens)
