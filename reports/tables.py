"""Tables from the tidy runs frame, built once as :class:`Table` and rendered to Markdown,
LaTeX (booktabs) and HTML, so the three always agree."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tlbench.reports import stats

SCALE = 100.0  # accuracies are shown in percent


def column_labels(runs: pd.DataFrame) -> pd.Series:
    """A task's column is its name, or ``task / backbone`` when it has several backbones,
    prefixed by ``suite:`` when the frame holds several suites (they may share task names
    and seeds, and must never be pooled)."""
    n_backbones = runs.groupby("task")["backbone"].transform("nunique")
    labels = runs["task"].where(n_backbones == 1, runs["task"] + " / " + runs["backbone"])
    if "suite" in runs and runs["suite"].nunique() > 1:
        labels = runs["suite"] + ": " + labels
    return labels


def with_columns(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.assign(column=column_labels(runs)) if not runs.empty else runs.assign(column=[])


def flat_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs frame with nested values (params, task info, dicts) as JSON strings, ready
    for CSV and Parquet."""
    out = runs.copy()
    for name in out.columns:
        if out[name].map(lambda v: isinstance(v, (dict, list))).any():
            out[name] = out[name].map(lambda v: json.dumps(v, sort_keys=True)
                                      if isinstance(v, (dict, list)) else v)
    return out


@dataclass(frozen=True)
class TableCell:
    text: str
    bold: bool = False
    mark: bool = False  # "not distinguishable from the best"


@dataclass
class Table:
    """A header, rows of cells, a caption and notes; first column is the row label."""

    header: list[str]
    rows: list[list[TableCell]]
    caption: str
    notes: list[str] = field(default_factory=list)
    align: str = ""  # one of l/r per column; default: label left, the rest right
    wide: bool = False  # LaTeX: scaled to the text width (needs graphicx)
    placement: str = "t"  # LaTeX float placement

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


MARK = "†"


def fmt_number(value: float | None, digits: int = 1, *, grouped: bool = False) -> str:
    """``value`` with ``digits`` decimals (thousands separated when ``grouped``); "–" if missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}" if grouped else f"{value:.{digits}f}"


FEW_SEEDS = "Few seeds"  # every statistic that cannot be trusted at the run's seeds starts its caveat so


def few_seeds_note(n: int, consequence: str) -> str:
    """The one low-seed caveat, worded alike under every table and figure it applies to."""
    return (f"{FEW_SEEDS}: {n} evaluation seed{'s' if n != 1 else ''} per task and strategy (fewer than "
            f"{stats.MIN_SEEDS}), so {consequence}")


def accuracy_table(runs: pd.DataFrame, metric: str, *, caption: str, seed: int = 0) -> Table | None:
    """Strategies × tasks: mean ± CI half-width; best per column in bold; † where a paired
    test cannot tell it from the best; an average-rank column. None without data."""
    runs = with_columns(runs)
    summary = stats.summarize(runs, metric, seed=seed)
    if summary.empty:
        return None
    compare = stats.compare_to_best(runs, metric, summary).set_index(["strategy", "column"])
    means, _ = stats.mean_matrix(summary)
    ranks = stats.average_ranks(means) if means.shape[1] else pd.Series(dtype=float)
    columns = sorted(summary["column"].unique(), key=stats.natural_key)
    strategies = list(ranks.index) + sorted(set(summary["strategy"]) - set(ranks.index))
    indexed = summary.set_index(["strategy", "column"])
    best = summary.groupby("column")["mean"].max()
    rows, single_seed, untestable = [], False, False
    for strategy in strategies:
        row = [TableCell(strategy)]
        for column in columns:
            if (strategy, column) not in indexed.index:
                row.append(TableCell("–"))
                continue
            s = indexed.loc[(strategy, column)]
            text = f"{s['mean'] * SCALE:.1f}"
            if s["n"] >= 2:
                text += f" ± {s['half_width'] * SCALE:.1f}"
            else:
                single_seed = True
            is_best = math.isclose(s["mean"], best[column], rel_tol=0, abs_tol=1e-12)
            tied = compare.loc[(strategy, column), "tied"]  # True, False, or None/NaN: untestable
            testable = tied is not None and not pd.isna(tied)
            untestable |= not testable
            row.append(TableCell(text, bold=is_best, mark=testable and bool(tied) and not is_best))
        row.append(TableCell(fmt_number(ranks.get(strategy, math.nan), 2)))
        rows.append(row)
    low_n, high_n = int(summary["n"].min()), int(summary["n"].max())
    seeds = f"{low_n}" if low_n == high_n else f"{low_n}–{high_n}"
    plural = "" if high_n == 1 else "s"
    notes = [f"Mean over {seeds} evaluation seed{plural} ± half-width of the 95% bootstrap confidence interval of "
             f"the mean (expanded percentile, Hesterberg 2015; {stats.RESAMPLES:,} resamples). Bold: best mean "
             f"per column. {MARK}: not significantly different from the best (paired t-test over the seeds "
             f"both share, Holm-corrected within the column, α = {stats.ALPHA}). Avg. rank: mean rank over "
             f"the columns every strategy has (1 = best)."]
    if single_seed:
        notes.append("Cells without ± have one seed: no confidence interval from one seed.")
    if low_n < stats.MIN_SEEDS:
        notes.append(few_seeds_note(low_n, f"the intervals are too narrow (a bootstrap of {low_n} value"
                                           f"{'s' if low_n != 1 else ''} cannot cover 95%) and the paired tests "
                                           f"have little power ({MARK} on most strategies says little): read "
                                           f"both as descriptive."))
    if untestable:
        notes.append("Some comparisons could not be tested (fewer than two shared seeds).")
    inputs = inputs_note(runs)
    if inputs:
        notes.append(inputs)
    return Table(["strategy", *columns, "avg. rank"], rows, caption, notes)


INPUTS = {"cache": "decoded once into the image cache and read from it",
          "files": "decoded from the image files as read",
          "cache+files": "partly from the image cache, partly from the files",
          "features": "cached backbone features only"}


def inputs_note(runs: pd.DataFrame) -> str:
    """How the runs' image inputs were produced (schema 4 records; tensors say nothing):
    one phrase when every run agrees, else the count of runs per way and the cells that mix
    image-cache and file reads across their seeds."""
    if "image_inputs" not in runs:
        return ""
    how = runs["image_inputs"].fillna("").astype(str)
    images = runs[how != ""]
    if images.empty:
        return ""
    kinds = images["image_inputs"].value_counts()
    if len(kinds) == 1:
        return f"Image inputs: {INPUTS.get(kinds.index[0], kinds.index[0])} in every image-file run."
    parts = "; ".join(f"{n} run{'s' if n != 1 else ''} {INPUTS.get(k, k)}" for k, n in kinds.items())
    sources = images.assign(way=images["image_inputs"].replace({"features": None}))
    per_cell = sources.groupby(["task", "backbone", "strategy"])["way"].agg(lambda s: set(s.dropna()))
    mixed = [" / ".join(cell) for cell, ways in per_cell.items() if len(ways) > 1]
    note = f"Image inputs: {parts}."
    if mixed:
        note += " Cells whose seeds read them differently: " + ", ".join(mixed) + "."
    return note


def _spread(mean: float | None, sd: float | None) -> str:
    """``mean ± sd`` of seconds (the mean alone for one run)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.2f}")


def cost_table(runs: pd.DataFrame) -> Table | None:
    """Per task and strategy: mean training seconds ± their spread over seeds (with reused models; own alone),
    trainable parameters, peak memory, inference parameters and time."""
    runs = with_columns(runs)
    if runs.empty:
        return None
    agg = {"train_seconds": ("train_seconds", "mean"), "train_sd": ("train_seconds", "std"),
           "trainable": ("trainable_parameters", "mean"), "peak": ("peak_memory_mb", "mean"),
           "runs": ("seed", "count")}
    # Records from before the feature pass was charged (and inference timed by a median) have none.
    features = "feature_seconds" in runs and runs["feature_seconds"].notna().any()
    compute = "tuning_compute" in runs and runs["tuning_compute"].notna().any()
    for name, col in (("own", "own_train_seconds"), ("features", "feature_seconds"), ("compute", "tuning_compute"),
                      ("inference", "inference_parameters"), ("ms", "inference_ms_per_example")):
        if col in runs:
            agg[name] = (col, "mean")
    if "own_train_seconds" in runs:
        agg["own_sd"] = ("own_train_seconds", "std")
    stats_frame = runs.groupby(["column", "strategy"]).agg(**agg).reset_index()
    stats_frame = stats_frame.sort_values("column", key=lambda c: c.map(stats.natural_key), kind="stable")
    header = ["task", "strategy", "train s", "own train s", *(["feature pass s"] if features else []),
              *(["tuning compute"] if compute else []),
              "trainable params", "peak memory MB", "inference params", "inference ms/example", "runs"]
    rows = []
    for r in stats_frame.to_dict("records"):
        rows.append([TableCell(r["column"]), TableCell(r["strategy"]),
                     TableCell(_spread(r["train_seconds"], r["train_sd"])),
                     TableCell(_spread(r.get("own"), r.get("own_sd"))),
                     *([TableCell(fmt_number(r["features"] or math.nan, 2))] if features else []),
                     *([TableCell(fmt_number(r["compute"], 1))] if compute else []),
                     TableCell(fmt_number(r["trainable"], 0, grouped=True)),
                     TableCell(fmt_number(r["peak"], 0)), TableCell(fmt_number(r.get("inference"), 0, grouped=True)),
                     TableCell(fmt_number(r.get("ms"), 3)), TableCell(str(int(r["runs"])))])
    kinds = sorted(runs["peak_memory_kind"].dropna().unique()) if "peak_memory_kind" in runs else []
    notes = ["Means over evaluation runs; for the wall-clock seconds ± their standard deviation over the runs "
             "(seeds). Seconds depend on the machine and its load (on a shared machine they are noisy): "
             + ("the tuning compute, counted in FLOPs, is the stable figure. " if compute else
                "FLOP-counted compute (an epochs budget's tuning compute) is the stable figure. ")
             + "Train s includes the training time of models a strategy "
             "reuses (a distillation's teacher, an ensemble's members); own train s is its own. "
             + ("Feature pass s: the frozen backbone's pass over the train and validation splits that a "
                "strategy training on cached features (linear probe, LP-FT) reads, as long as it took when "
                "computed, charged to every run of the cell whether it computed the features or found them "
                "cached, and left out of train s, so the columns compare strategies, not cache states "
                "(– : no such pass). " if features else "")
             + ("Tuning compute: the backbone epochs the cell's counted tuning trials trained (one epoch = a "
                "forward and backward pass of the cell's backbone over the training split, counted in FLOPs; "
                "pruned trials count what they ran; – : nothing tuned). " if compute else "")
             + "Inference params: parameters one prediction runs through (K models for an averaged "
             "ensemble)."
             + (" Inference ms/example: the median of up to 3 timed passes over the test split after a "
                "warm-up pass (a probe's through its backbone, not the feature cache)." if features else "")
             + (f" Peak memory: {', '.join(kinds)}." if kinds else "")]
    return Table(header, rows, "Cost per strategy and task", notes, align="ll" + "r" * (len(header) - 2),
                 wide=True)


def across_tasks_table(runs: pd.DataFrame, metric: str, *, seed: int = 0,
                       iqm: pd.DataFrame | None = None) -> tuple[Table | None, stats.RankTest | None]:
    """IQM with stratified-bootstrap CI and average rank per strategy, plus the rank test;
    ``iqm``: :func:`stats.iqm_by_strategy` of the same runs when the caller has it."""
    runs = with_columns(runs)
    summary = stats.summarize(runs, metric, seed=seed)
    if summary.empty:
        return None, None
    means, n_columns = stats.mean_matrix(summary)
    test = stats.rank_test(means, n_columns)
    iqm = (stats.iqm_by_strategy(runs, metric, seed=seed) if iqm is None else iqm).set_index("strategy")
    order = list(test.ranks.index) + sorted(set(iqm.index) - set(test.ranks.index))
    best_iqm = iqm["iqm"].max() if len(iqm) else math.nan
    rows, intervals = [], False
    for strategy in order:
        if strategy not in iqm.index:
            continue
        r = iqm.loc[strategy]
        ci = "" if math.isnan(r["low"]) else f" [{r['low']:.3f}, {r['high']:.3f}]"
        intervals |= bool(ci)
        rows.append([TableCell(strategy), TableCell(f"{r['iqm']:.3f}{ci}", bold=math.isclose(r["iqm"], best_iqm)),
                     TableCell(fmt_number(test.ranks.get(strategy, math.nan), 2)), TableCell(str(int(r["runs"])))])
    tasks = int(iqm["tasks"].max()) if len(iqm) else 0
    notes = [f"IQM: interquartile mean of every strategy's task × seed runs on the {tasks} task(s) all "
             f"strategies have, in {iqm.attrs.get('scale', 'raw accuracy')}, with a 95% stratified-bootstrap "
             f"interval (seeds resampled within each task; Agarwal et al. 2021). Bold: the highest IQM (a point "
             f"estimate, not a test)."]
    fewest = stats.fewest_seeds(runs[runs["column"].isin(stats.common_columns(runs, metric))], metric)
    if intervals and fewest < stats.MIN_SEEDS:
        notes.append(few_seeds_note(fewest, f"resampling {fewest} run{'s' if fewest != 1 else ''} per task "
                                            f"cannot show how much the IQM would move with other seeds: the "
                                            f"intervals are too narrow; read them as descriptive."))
    if test.reason:
        notes.append(f"No Friedman test: {test.reason}.")
    else:
        verdict = ("rejects that all strategies are equivalent; pairs whose average ranks differ by more "
                   f"than the Nemenyi critical difference CD = {test.cd:.2f} are significantly different"
                   if test.rejects else
                   f"does not reject that all strategies are equivalent, so no pairwise (Nemenyi) conclusion "
                   f"is drawn (CD would be {test.cd:.2f} ranks)")
        notes.append(f"Friedman test over {test.n_tasks} tasks: χ² = {test.statistic:.2f} (p = {test.chi2_p:.3g}); "
                     f"its Iman–Davenport F form, which decides (less conservative; Demšar 2006), F = {test.f:.2f} "
                     f"(p = {test.p:.3g}); it {verdict}."
                     + (" With fewer than 10 tasks the test has little power." if test.n_tasks < 10 else ""))
    return Table(["strategy", "IQM (95% CI)", "avg. rank", "runs"], rows, "Across tasks", notes), test


def improvement_table(runs: pd.DataFrame, metric: str, *, seed: int = 0,
                      iqm: pd.DataFrame | None = None) -> Table | None:
    """P(a run of the strategy with the best IQM beats a run of each other strategy);
    ``iqm`` as in :func:`across_tasks_table`."""
    runs = with_columns(runs)
    iqm = stats.iqm_by_strategy(runs, metric, seed=seed) if iqm is None else iqm
    if len(iqm) < 2:
        return None
    top = iqm.loc[iqm["iqm"].idxmax(), "strategy"]
    compare = stats.compare_to_best(runs, metric, stats.summarize(runs, metric, seed=seed))
    tied = compare[[v is not None and not pd.isna(v) and bool(v) for v in compare["tied"]]]  # best or † there
    rows, fewest, unbolded, conflicts = [], math.inf, False, []
    for other in iqm.sort_values("iqm", ascending=False)["strategy"]:
        if other == top:
            continue
        result = stats.probability_of_improvement(runs, metric, top, other, seed=seed)
        if result is None:
            continue
        point, low, high = result
        ci = "" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]"
        n = stats.fewest_seeds(runs, metric, (top, other))
        fewest = min(fewest, n)
        above = not math.isnan(low) and low > 0.5
        bold = above and n >= stats.MIN_SEEDS  # an interval from a handful of seeds is no evidence
        unbolded |= above and not bold
        if bold:
            columns = sorted(tied.loc[tied["strategy"] == other, "column"])
            if columns:
                conflicts.append(f"{other} ({', '.join(columns)})")
        rows.append([TableCell(other), TableCell(f"{point:.2f}{ci}", bold=bold)])
    notes = [f"P({top} > other): the probability that a run of {top} scores above a run of the other "
             f"strategy on a task (ties count ½), averaged over tasks, with a 95% stratified-bootstrap "
             f"interval (Agarwal et al. 2021). Bold: the interval lies above 0.5 (each interval on its "
             f"own, not corrected for the {len(rows)} comparison{'s' if len(rows) != 1 else ''}) and every cell "
             f"compared has at least "
             f"{stats.MIN_SEEDS} seeds. All pairs: figures/improvement."]
    if fewest < stats.MIN_SEEDS:
        notes.append(few_seeds_note(int(fewest), "a bootstrap over so few runs gives intervals that are far too "
                                                 "narrow (1.00 [1.00, 1.00] only says that these runs were "
                                                 "ordered so): read them as descriptive"
                                    + ("; none is bold, though some lie above 0.5." if unbolded else ".")))
    if conflicts:
        notes.append(f"Bold here, yet the best or {MARK} (not significantly different from the best) in the main "
                     f"table: {'; '.join(conflicts)}. The two answer different questions: the main table's paired "
                     f"t-test asks whether mean accuracy differs within one task, over its seeds, Holm-corrected; "
                     f"this interval asks how often one run beats another, pooled over tasks, uncorrected, and a "
                     f"small but consistent difference can pass it while failing the t-test.")
    return Table([f"{top} vs", "P(improvement) (95% CI)"], rows, "Probability of improvement", notes)


# ------------------------------------------------------------------ renderers

def to_markdown(table: Table) -> str:
    def cell(c: TableCell) -> str:
        text = c.text + (MARK if c.mark else "")
        return f"**{text}**" if c.bold else text

    aligns = ["---" if a == "l" else "---:" for a in table.alignment()]
    lines = [f"**{table.caption}**", "", "| " + " | ".join(table.header) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"_{note}_" for note in table.notes]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
                 "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"±": r"$\pm$", "–": "--", "χ²": r"$\chi^2$", "α": r"$\alpha$", "×": r"$\times$",
                 "≤": r"$\leq$", "≥": r"$\geq$", "½": r"$\frac{1}{2}$", "Š": r"\v{S}", "š": r"\v{s}",
                 "−": r"$-$", "∈": r"$\in$", "→": r"$\rightarrow$", "…": r"\ldots{}", MARK: r"$^\dagger$"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
    for plain, tex in LATEX_UNICODE.items():
        out = out.replace(plain, tex)
    return out


def to_latex(table: Table, *, label: str = "") -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``, and ``graphicx``
    for wide tables, which are scaled to the text width)."""
    def cell(c: TableCell) -> str:
        text = latex_escape(c.text) + (r"$^\dagger$" if c.mark else "")
        return rf"\textbf{{{text}}}" if c.bold else text

    caption = latex_escape(table.caption + ". " + " ".join(table.notes))
    lines = [rf"\begin{{table}}[{table.placement}]", r"\centering", r"\small", rf"\caption{{{caption}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    if table.wide:
        lines.append(r"\resizebox{\linewidth}{!}{%")
    lines += [rf"\begin{{tabular}}{{{table.alignment()}}}", r"\toprule",
              " & ".join(latex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if table.wide else ""), r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    def cell(c: TableCell, tag: str = "td", align: str = "l") -> str:
        text = html.escape(c.text) + (f"<sup>{MARK}</sup>" if c.mark else "")
        if c.bold:
            text = f"<strong>{text}</strong>"
        cls = ' class="num"' if align == "r" else ""
        return f"<{tag}{cls}>{text}</{tag}>"

    aligns = table.alignment()
    head = "".join(cell(TableCell(h), "th", a) for h, a in zip(table.header, aligns))
    body = "\n".join("<tr>" + "".join(cell(c, "td", a) for c, a in zip(row, aligns)) + "</tr>" for row in table.rows)
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in table.notes)
    return (f"<figure class=\"table\"><figcaption>{html.escape(table.caption)}</figcaption>"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>{notes}</figure>\n")


# ------------------------------------------------------------------ selected hyperparameters

#: Keys of a run's params that are bookkeeping, not hyperparameters (a reusing strategy's digest
#: of the configurations it reused).
INTERNAL_PARAMS = frozenset({"reuses"})


def fmt_param(value: object) -> str:
    """A hyperparameter as a paper prints it: floats to 3 significant digits, in scientific
    notation when tiny or huge (3.16e-03, 0.25, 12), lists comma-separated."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value == 0 or value.is_integer() and abs(value) < 1e6:
            return f"{value:.0f}" if value.is_integer() else f"{value:.3g}"
        return f"{value:.3g}" if 1e-2 <= abs(value) < 1e4 else f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_param(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt_param(v)}" for k, v in value.items())
    return str(value)


def searched_names(params: dict, space: dict[str, str] | None) -> dict:
    """A configuration with each value under the name it was searched as: a learning rate drawn per
    optimizer is ``lr`` in the configuration a strategy trains with but ``lr_adamw`` (or ``lr_sgd``)
    in the search space and the trials, so the selected-hyperparameters table shows it under that
    name. (One configuration per cell.)"""
    if not space or "lr" in space or "lr" not in params or "optimizer" not in params:
        return params
    name = f"lr_{params['optimizer']}"
    if name not in space:
        return params
    return {(name if key == "lr" else key): value for key, value in params.items()}


def _params(value: object) -> dict:
    if isinstance(value, str):  # a runs frame read back from runs.parquet / runs.csv
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return {k: v for k, v in value.items() if k not in INTERNAL_PARAMS} if isinstance(value, dict) else {}


def _chosen(cell: pd.DataFrame) -> dict[str, str]:
    """What a cell's evaluation runs chose after fit (``chosen``), per hyperparameter: the value, or the
    range when the runs chose differently."""
    if "chosen" not in cell:
        return {}
    values: dict[str, list[Any]] = {}
    for chosen in cell["chosen"]:
        for name, value in (chosen if isinstance(chosen, dict) else {}).items():
            values.setdefault(name, []).append(value)
    out = {}
    for name, seen in values.items():
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen)
        if len({repr(v) for v in seen}) == 1:
            out[name] = fmt_param(seen[0])
        elif numbers:
            out[name] = f"{fmt_param(min(seen))}–{fmt_param(max(seen))}"
        else:
            out[name] = ", ".join(sorted({fmt_param(v) for v in seen}))
    return out


def hyperparameter_tables(runs: pd.DataFrame,
                          spaces: dict[str, dict[str, str]] | None = None) -> list[Table]:
    """"Selected hyperparameters": per strategy, a row per task × backbone with the
    configuration its evaluation runs used (the ``params`` of the runs, without bookkeeping
    keys), one column per hyperparameter; ``spaces`` (strategy → param → range) adds the
    searched ranges as a note."""
    if runs.empty or "params" not in runs:
        return []
    several_suites = "suite" in runs and runs["suite"].nunique() > 1
    tables = []
    for strategy, group in runs.sort_values(["task", "backbone", "seed"]).groupby("strategy", sort=True):
        cells: list[tuple[str, str, dict]] = []
        keys = ["suite", "task", "backbone"] if "suite" in group else ["task", "backbone"]
        for key, cell in group.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            task = f"{key[0]}: {key[1]}" if several_suites else key[-2]
            params = searched_names(_params(cell["params"].iloc[0]), (spaces or {}).get(strategy))
            params.update({f"{name} (after fit)": text for name, text in _chosen(cell).items()})
            cells.append((task, key[-1], params))
        cells.sort(key=lambda c: (stats.natural_key(c[0]), c[1]))  # shots2 before shots10
        tuned = sorted({name for _, _, params in cells for name in params if not name.endswith(" (after fit)")})
        names = tuned + sorted({name for _, _, params in cells for name in params} - set(tuned))
        rows = [[TableCell(task), TableCell(backbone),
                 *(TableCell(params[n] if n.endswith(" (after fit)") else fmt_param(params[n]) if n in params
                             else "–") for n in names)]
                for task, backbone, params in cells]
        header = ["task", "backbone", *names]
        notes = ["The configuration every evaluation run of the cell used: the best of its tuning trials, with "
                 "what the strategy or the suite fixes. –: not part of that configuration (e.g. the learning "
                 "rate of the optimizer that was not chosen)."]
        if len(names) > len(tuned):
            notes.append("(after fit): chosen by the strategy after training, on validation data, by each evaluation "
                         "run; a range when the runs chose differently.")
        space = (spaces or {}).get(strategy)
        if space:
            notes.append("Searched: " + "; ".join(f"{name} {text}" for name, text in space.items()) + ".")
        if not names:
            notes.append(f"{strategy} has no hyperparameters.")
        width = sum(max(len(h), *(len(r[i].text) for r in rows)) + 2 for i, h in enumerate(header))
        numeric = ["r" if all(isinstance(p.get(n), (int, float)) and not isinstance(p.get(n), bool)
                              for _, _, p in cells if n in p) else "l" for n in names]
        tables.append(Table(header, rows, f"Selected hyperparameters: {strategy}", notes,
                            align="ll" + "".join(numeric), wide=width > 70, placement="htbp"))
    return tables
