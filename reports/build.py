"""The report: stored results → data files, tables, figures and one self-contained HTML page."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import json
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from tlbench.reports import figures, selection, stats, studies
from tlbench.reports.literature import literature_table
from tlbench.reports.parallel import JobPool
from tlbench.reports.results import Results
from tlbench.reports.statsframe import statistics_frame
from tlbench.reports.tables import (
    Table,
    accuracy_table,
    across_tasks_table,
    column_labels,
    cost_table,
    few_seeds_note,
    flat_runs,
    hyperparameter_tables,
    improvement_table,
    to_html,
    to_latex,
    to_markdown,
    with_columns,
)
from tlbench.store.records import Protocol


@dataclass
class ReportOutputs:
    out: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why
    seconds: float = 0.0
    captions: dict[str, str] = field(default_factory=dict)  # figure stem → caption, in the page's order

    def path(self, name: str) -> Path:
        return self.out / name


def tuning_curves(trials: pd.DataFrame, budget: int | None) -> pd.DataFrame:
    """Dodge et al.'s expected best validation accuracy per cell, over the completed trials
    among its first ``budget`` finished ones (a pruned trial's accuracy is that of a shorter
    run, so it is not a draw of the same quantity); compute per completed trial includes the
    pruned trials' seconds and backbone epochs (``epochs``: NaN for stores that did not count them)."""
    finished = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    if finished.empty:
        return pd.DataFrame(columns=["column", "strategy", "trials", "expected_max", "std", "seconds", "epochs"])
    finished = finished.assign(column=column_labels(finished))
    parts = []
    for (column, strategy), group in finished.groupby(["column", "strategy"]):
        # budget order is slot order (trial numbers interleave when several workers tuned the study)
        order = ["slot", "number"] if "slot" in group else ["number"]
        group = group.sort_values(order).head(budget) if budget else group
        complete = group[group["state"] == "COMPLETE"].dropna(subset=["value"])
        if complete.empty:
            continue
        seconds = group["seconds"].dropna()
        per_complete = float(seconds.mean() * len(group) / len(complete)) if len(seconds) else math.nan
        curve = stats.tuning_curve(complete["value"].to_numpy(float), per_complete, len(complete))
        spent = group["compute"].dropna() if "compute" in group else pd.Series(dtype=float)
        epochs = float(spent.sum() / len(complete)) if len(spent) == len(group) else math.nan
        parts.append(curve.assign(column=column, strategy=strategy, epochs=curve["trials"] * epochs))
    if not parts:
        return pd.DataFrame(columns=["column", "strategy", "trials", "expected_max", "std", "seconds", "epochs"])
    return pd.concat(parts, ignore_index=True)


def write_report(results: Results, out: Path, *, title: str, seed: int = 0,
                 strategy_order: Sequence[str] = (), figures_too: bool = True) -> ReportOutputs:
    """Writes runs.parquet/.csv, trials.parquet, stats.parquet/.csv (every statistic shown:
    :attr:`Results.stats`), table.md/.tex (the results, then the "Selected
    hyperparameters" appendix), figures/*.png|pdf (a slice figure per tuned strategy among them)
    and report.html into ``out``; returns the files, the figures' captions and the notes on what
    was not computable. ``strategy_order`` (the registry's names) fixes each strategy's colour
    across reports. Without ``figures_too`` no figure is drawn (the tables, data files and an
    HTML page without images: what ``tlbench run --report tables`` writes, in a fraction of
    the time)."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report = ReportOutputs(out)
    runs = with_columns(results.runs)
    with JobPool() if figures_too else contextlib.nullcontext() as pool:
        drawing = _Figures(pool, results, runs, out / "figures", seed=seed, strategy_order=strategy_order) \
            if figures_too else None
        _write(results, runs, out, report, drawing, title=title, seed=seed, strategy_order=strategy_order)
    report.seconds = time.perf_counter() - start
    return report


def _write(results: Results, runs: pd.DataFrame, out: Path, report: ReportOutputs, drawing: "_Figures | None", *,
           title: str, seed: int, strategy_order: Sequence[str]) -> None:
    """The report's files; the figures that need only the stored results are being drawn already
    (``drawing``), the rest are handed over once the tables give what they need."""
    flat = flat_runs(results.runs)
    numbers = results.stats if seed == 0 else statistics_frame(results.runs, seed=seed)
    for name, write in (("runs.parquet", lambda p: flat.to_parquet(p, index=False)),
                        ("runs.csv", lambda p: flat.to_csv(p, index=False)),
                        ("trials.parquet", lambda p: results.trials.to_parquet(p, index=False)),
                        ("stats.parquet", lambda p: numbers.to_parquet(p, index=False)),
                        ("stats.csv", lambda p: numbers.to_csv(p, index=False))):
        write(out / name)
        report.files.append(out / name)

    tables: list[tuple[str, Table]] = []
    main = accuracy_table(runs, "test_accuracy", caption="Test accuracy (%)", seed=seed)
    if main:
        tables.append(("tab:accuracy", main))
    has_shift = "shifted_test_accuracy" in runs and runs["shifted_test_accuracy"].notna().any()
    if has_shift:
        shifted = accuracy_table(runs, "shifted_test_accuracy",
                                 caption="Shifted-test (out-of-distribution) accuracy (%)", seed=seed)
        if shifted:
            tables.append(("tab:shifted", shifted))
    iqm = stats.iqm_by_strategy(with_columns(runs), "test_accuracy", seed=seed)  # both tables rank by it
    across, rank_test = across_tasks_table(runs, "test_accuracy", seed=seed, iqm=iqm)
    if across:
        tables.append(("tab:across", across))
    summary = literature_table(runs, "test_accuracy", seed=seed)  # group means and published results
    if summary:
        tables.append(("tab:literature", summary))
    improvement = improvement_table(runs, "test_accuracy", seed=seed, iqm=iqm)
    if improvement:
        tables.append(("tab:improvement", improvement))
    else:
        report.notes.append("No probability of improvement: it needs at least two strategies.")
    cost = cost_table(runs)
    if cost:
        tables.append(("tab:cost", cost))
    colours = figures.palette(sorted(set(runs["strategy"]) | set(results.sensitivity.get("strategy", []))),
                              strategy_order)
    draw = drawing is not None
    study_tables, study_files, study_captions = studies.studies_section(runs, results.sensitivity, out / "figures",
                                                                        colours=colours, seed=seed, draw=draw)
    tables += study_tables
    chosen = selection.selection_section(results.scores, runs, ground_truth=results.ground_truth, seed=seed,
                                         out=out / "figures", draw=draw)
    tables += chosen.tables
    report.notes += chosen.notes
    study_files = study_files + chosen.files
    if rank_test is not None and rank_test.reason:
        report.notes.append(f"No Friedman test or critical difference: {rank_test.reason}.")
    if runs.groupby(["column", "strategy"])["seed"].nunique().max() < 2:
        report.notes.append("No confidence intervals or paired tests: every cell has a single seed.")
    elif (fewest := stats.fewest_seeds(runs, "test_accuracy")) < stats.MIN_SEEDS:
        report.notes.append(few_seeds_note(fewest, "every interval, paired test and probability of improvement "
                                                   "in this report is descriptive; each table and figure says so "
                                                   "where it applies."))
    selected = [(f"tab:hparams:{i}", t) for i, t in enumerate(hyperparameter_tables(results.runs,
                                                                                    results.search_spaces))]

    (out / "table.md").write_text(
        f"# {title}\n\n" + "\n".join(to_markdown(t) for _, t in tables)
        + "".join(f"\n_{n}_\n" for n in report.notes)
        + (f"\n## {HPARAMS}\n\n" + "\n".join(to_markdown(t) for _, t in selected) if selected else ""))
    (out / "table.tex").write_text(
        "% tlbench report tables; needs \\usepackage{booktabs}\n"
        + "\n".join(to_latex(t, label=label) for label, t in tables)
        # \clearpage: the results' floats are placed first, so an appendix of one table per strategy
        # never piles up more floats than LaTeX can hold (18) when the file is compiled on its own.
        + (f"\n% {HPARAMS} (an appendix: one table per strategy)\n\\clearpage\n"
           + "\n".join(to_latex(t, label=label) for label, t in selected) if selected else ""))
    report.files += [out / "table.md", out / "table.tex"]

    if drawing is not None:
        report.files += drawing.finish(rank_test, report, has_shift=has_shift) + study_files
        # after the report's own figures, in the page's order (model selection's, then the studies')
        report.captions.update({**chosen.captions, **study_captions})
    else:
        report.notes.append("Figures not drawn (tlbench run --report tables); tlbench report draws them.")
    html_path = out / "report.html"
    html_path.write_text(_html(title, results, tables, selected, report, out))
    report.files.append(html_path)


class _Figures:
    """The report's own figures, drawn in ``pool``'s workers (most of a report's time). Created
    before the tables: it hands over at once the fANOVA work still pending and the figures that
    need only the stored results (cost, tuning curves, slices); :meth:`finish`, given what the
    tables computed, hands over the rest and collects the files, in the page's order."""

    def __init__(self, pool: JobPool, results: Results, runs: pd.DataFrame, out: Path, *, seed: int,
                 strategy_order: Sequence[str]) -> None:
        self.pool, self.results, self.runs, self.out, self.seed = pool, results, runs, out, seed
        self.colours = figures.palette(sorted(runs["strategy"].unique()), strategy_order)
        self.notes: list[str] = []  # what was not drawn, and why: the page's notes after the tables'
        self.fanova = [pool.submit(job) for _, job in results.importance_jobs]  # the importances figure waits
        self.drawn: dict[str, Future] = {}  # figure name → the files its job writes
        self.drawn["cost_accuracy"] = pool.submit((figures.cost_figure, (runs, out), {"colours": self.colours}))
        curves = tuning_curves(results.trials, results.protocol.budget.cap if results.protocol else None)
        if not curves.empty:
            self.drawn["tuning_curves"] = pool.submit((figures.tuning_figure, (curves, out),
                                                       {"colours": self.colours}))
        else:
            self.notes.append("No tuning curves: the store holds no finished tuning trial.")
        self.strategies = sorted(results.trials["strategy"].unique())
        for strategy in self.strategies:
            self.drawn[figures.slice_name(strategy)] = pool.submit(
                (figures.slice_figure, (results.trials, strategy, out), {"scales": results.scales.get(strategy)}))

    def finish(self, rank_test: stats.RankTest | None, report: ReportOutputs, *, has_shift: bool) -> list[Path]:
        runs, out, seed, colours, captions = self.runs, self.out, self.seed, self.colours, report.captions
        captions.update(FIGURES)
        caveat = {metric: few_seeds_note(n, "the intervals are descriptive (too narrow).")
                  for metric in ("test_accuracy", "shifted_test_accuracy")
                  if metric in runs and 2 <= (n := stats.fewest_seeds(runs, metric)) < stats.MIN_SEEDS}
        submit = self.pool.submit
        self.drawn["accuracy"] = submit((figures.accuracy_figure, (stats.summarize(runs, "test_accuracy", seed=seed),
                                                                   out),
                                         {"metric_label": "test accuracy", "name": "accuracy", "colours": colours,
                                          "note": caveat.get("test_accuracy", "")}))
        if has_shift:
            self.drawn["accuracy_shifted"] = submit(
                (figures.accuracy_figure, (stats.summarize(runs, "shifted_test_accuracy", seed=seed), out),
                 {"metric_label": "shifted-test accuracy", "name": "accuracy_shifted", "colours": colours,
                  "note": caveat.get("shifted_test_accuracy", "")}))
        for name, metric in (("accuracy", "test_accuracy"), ("accuracy_shifted", "shifted_test_accuracy")):
            if metric in caveat:
                captions[name] += " " + caveat[metric]
        if rank_test is not None and len(rank_test.ranks) >= 2:
            self.drawn["cd_diagram"] = submit((figures.cd_diagram, (rank_test, out), {"colours": colours}))
        matrix = stats.improvement_matrix(runs, "test_accuracy")
        if len(matrix) >= 2:
            fewest = stats.fewest_seeds(runs, "test_accuracy")
            note = (few_seeds_note(fewest, "each probability compares a handful of runs: descriptive, not evidence.")
                    if fewest < stats.MIN_SEEDS else "")
            self.drawn["improvement"] = submit((figures.improvement_figure, (matrix, out), {"note": note}))
            captions["improvement"] += (" " + note) if note else ""
        for strategy in self.strategies:
            captions[figures.slice_name(strategy)] = (  # dropped below when nothing varied (no file)
                f"{strategy}: validation accuracy of each tuning trial against each hyperparameter that varied "
                f"(one panel each; colours are tasks). Filled: completed trials; hollow: pruned ones, at the "
                f"accuracy where they stopped (a shorter run's). Log-scale ranges on a log axis, categorical "
                f"ones as categories (jittered).")
        if self.fanova:
            self.results.set_importances([future.result() for future in self.fanova])
        if not self.results.importances.empty:
            self.drawn["importances"] = submit((figures.importance_figure, (self.results.importances, out), {}))
        else:
            self.notes.append("No hyperparameter importances: no cell has two completed tuning trials "
                              "with a varying parameter.")
        report.notes += self.notes
        order = ["accuracy", "accuracy_shifted", "cd_diagram", "improvement", "cost_accuracy", "tuning_curves",
                 *(figures.slice_name(s) for s in self.strategies), "importances"]
        files = [path for name in order if name in self.drawn for path in self.drawn[name].result()]
        written = {path.stem for path in files}
        for name in [n for n in captions if n not in written]:  # the captions of the figures drawn, in order
            del captions[name]
        return files


HPARAMS = "Selected hyperparameters"

FIGURES = [
    ("accuracy", "Test accuracy per task: mean and 95% bootstrap interval over evaluation seeds."),
    ("accuracy_shifted", "Shifted-test (out-of-distribution) accuracy per task."),
    ("cd_diagram", "Critical-difference diagram (Demšar 2006): average ranks over tasks; strategies joined "
                   "by a bar are not significantly different (Nemenyi test)."),
    ("improvement", "Probability that a run of the row strategy scores above a run of the column strategy "
                    "on a task (ties count ½), averaged over tasks (Agarwal et al. 2021)."),
    ("cost_accuracy", "Test accuracy against training time per run (reused models included); outlined points "
                      "are on the Pareto front (dashed)."),
    ("tuning_curves", "Expected best validation accuracy (± one standard deviation) after n completed tuning "
                      "trials, and against the compute that takes including pruned trials, in backbone epochs "
                      "(seconds for stores that did not count them) (Dodge et al. 2019). The trials come from the "
                      "suite's sampler, not independent random draws, so this describes this search. A curve "
                      "still rising at the budget depends on it."),
    ("importances", "Hyperparameter importance (fANOVA over completed trials, mean over tasks; the learning "
                    "rate is one parameter across optimizers). Few completed trials per cell make these "
                    "rough."),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}th,td{padding:.25em .6em;border-bottom:1px solid #e4e4e4}
thead th{border-bottom:2px solid #444;text-align:left}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1.2em 0}figcaption{font-weight:600;margin-bottom:.3em}p.note{font-size:.85em;color:#555;margin:.2em 0}
img{max-width:100%;height:auto;border:1px solid #eee}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dt{font-weight:600}code{background:#f4f4f4;padding:0 .2em}
"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption style=\"font-weight:400\">{html.escape(caption)}</figcaption></figure>")


def _seed_range(runs: pd.DataFrame) -> str:
    values = sorted(runs["seed"].unique())
    return f"training seeds {values[0]}…{values[-1]}" if len(values) > 1 else f"training seed {values[0]}"


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items) + "</dl>"


def pruner_text(protocol: Protocol) -> str:
    """The protocol's pruner in words, with the settings that pruner uses."""
    if protocol.pruner == "MedianPruner":
        return (f"MedianPruner (start-up {protocol.pruner_startup_trials} trials, warm-up "
                f"{protocol.pruner_warmup_epochs} epochs)")
    if protocol.pruner in ("SuccessiveHalvingPruner", "HyperbandPruner"):
        return (f"{protocol.pruner} (first rung at {max(1, protocol.pruner_warmup_epochs)} epochs, reduction "
                f"factor {protocol.pruner_reduction_factor})")
    return protocol.pruner


def _budget(protocol: Protocol) -> str:
    budget = protocol.budget
    if budget.epochs is not None:
        return (f"{budget.epochs:g} backbone epochs of training per cell, the same for every strategy "
                f"(one epoch: a forward and backward pass of the cell's backbone over its training split, counted "
                f"in FLOPs; pruned trials count what they ran; at most {budget.cap} trials)")
    if protocol.sampler.startswith("grid"):
        return "each strategy's whole grid, every configuration once (see the search spaces)"
    return f"{budget.cap} finished trials per cell (completed or pruned), the same for every strategy"


def _html(title: str, results: Results, tables: list[tuple[str, Table]], selected: list[tuple[str, Table]],
          report: ReportOutputs, out: Path) -> str:
    runs, protocol = results.runs, results.protocol
    seeds = runs.groupby(["task", "backbone", "strategy"])["seed"].nunique()
    proto = [
        ("tuning budget", _budget(protocol)),
        ("sampler", protocol.sampler + ("" if protocol.sampler.startswith(("grid", "RandomSampler", "QMCSampler"))
                                        else f", {protocol.n_startup_trials} random start-up trials")),
        ("pruner", pruner_text(protocol)),
        ("objective", protocol.objective),
        ("weight decay", protocol.weight_decay or "not recorded (a store written before the convention was)"),
    ] if protocol is not None else [
        ("tuning", "no tuning study in the store (every strategy shown has nothing to search)"),
    ]
    proto += [
        ("evaluation", (f"the best configuration of each cell re-trained on "
                        f"{seeds.min() if seeds.min() == seeds.max() else f'{seeds.min()}–{seeds.max()}'} fresh "
                        f"seeds ({_seed_range(runs)}), scored on held-out test data") if len(seeds) else "no runs"),
        ("tasks", ", ".join(sorted(runs["task"].unique(), key=stats.natural_key))),
        ("strategies", ", ".join(sorted(runs["strategy"].unique()))),
    ]
    swept = studies.swept_runs(runs)
    if not swept.empty:
        proto.append(("sweeps", "; ".join(
            f"{family}: {field} = {', '.join(f'{v:g}' for v in sorted(part['value'].unique()))}"
            for (family, field), part in swept.groupby(["family", "field"]))))
    sens = results.sensitivity
    if not sens.empty:
        varied = [c for c in sens.columns if c.startswith("varied:")]
        studied = []
        for strategy, part in sens.groupby("strategy"):
            names = [c.removeprefix("varied:") for c in varied if part[c].notna().any()]
            values = "; ".join(f"{n} ∈ {{{', '.join(f'{v:.3g}' if isinstance(v, float) else str(v) for v in sorted(part[f'varied:{n}'].dropna().unique(), key=str))}}}"
                               for n in names)
            studied.append(f"{strategy}: {values} ({part['seed'].nunique()} seeds, around the tuned configuration)")
        proto.append(("sensitivity studies", "; ".join(studied)))
    options = results.settings.get("strategy_options") if isinstance(results.settings, dict) else None
    shown = sorted(name for name in (options or {}) if name in set(runs["strategy"]))
    if shown:  # the suite's strategy_options of the strategies in this report, as stored with the run
        proto.append(("strategy options", "; ".join(f"{name}: {json.dumps(options[name], sort_keys=True)}"
                                                    for name in shown)))
    if results.overrides:
        proto.append(("command-line overrides", "; ".join(f"--set {arg}" for arg in results.overrides)
                      + " (applied to the suite file before it was validated; listed together over every run into "
                        "this store with these settings)"))
    spaces = "".join(
        f"<h3>{html.escape(strategy)}</h3>" + _dl(list(space.items()))
        for strategy, space in results.search_spaces.items())
    prov = []
    for column, label in (("tlbench_version", "tlbench"), ("torch_version", "torch"), ("git_commit", "git commit"),
                          ("device", "device"), ("host", "host"), ("suite_fingerprint", "suite settings")):
        if column in runs:
            prov.append((label, ", ".join(sorted(map(str, runs[column].dropna().unique())))))
    if "strategy_origin" in runs:  # strategies from plugins: where each came from
        origins = sorted({f"{s} from {o}" for s, o in zip(runs["strategy"], runs["strategy_origin"])
                          if isinstance(o, str) and o != "tlbench"})
        if origins:
            prov.append(("plugins", "; ".join(origins)))
    if "started_at" in runs and runs["started_at"].notna().any():
        prov.append(("runs started", f"{runs['started_at'].min()} … {runs['started_at'].max()}"))
    prov.append(("report written", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
    figs = "".join(_img(out / "figures" / f"{name}.png", caption) for name, caption in report.captions.items()
                   if (out / "figures" / f"{name}.png") in report.files)
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in report.notes)
    files = ", ".join(f"<code>{html.escape(p.relative_to(out).as_posix())}</code>" for p in report.files)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(runs)} evaluation runs, {len(results.trials)} tuning trials. Figures are also in
<code>figures/</code> as PNG and PDF; the tables as <code>table.tex</code> (booktabs) and <code>table.md</code>;
every number is recomputable from <code>runs.parquet</code>, and every statistic shown is in
<code>stats.parquet</code> (one row per number).</p>
{notes}
<h2>Results</h2>
{''.join(to_html(t) for _, t in tables)}
<h2>Figures</h2>
{figs}
<h2>{HPARAMS}</h2>
{''.join(to_html(t) for _, t in selected) or '<p>no runs</p>'}
<h2>Protocol</h2>
{_dl(proto)}
<h2>Search spaces</h2>
{spaces or '<p>none recorded</p>'}
<h2>Provenance</h2>
{_dl(prov)}
<p class="note">Files: {files}</p>
</body></html>
"""
