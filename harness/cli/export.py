"""The subcommand ``export``: a store's evaluation runs and tuning trials to an experiment tracker
(:mod:`tlbench.reports.export` does the work; this is its parser and what it prints)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from tlbench.core.errors import ConfigError


def add_export_parser(sub: Any) -> None:
    """``tlbench export``: which store (as ``tlbench report`` names it) and which sink, with its destination."""
    exp = sub.add_parser("export", help="copy a store's evaluation runs and tuning trials to MLflow, TensorBoard or "
                                        "a plugin's sink (reads the store only; exporting again adds no duplicates)")
    exp.add_argument("run_dir", nargs="?", type=Path, help="a run's output directory (reads RUN_DIR/store.journal)")
    exp.add_argument("--to", nargs=2, required=True, metavar=("SINK", "DEST"),
                     help="where: mlflow TRACKING_URI (sqlite:///mlflow.db, http://host:5000, or a folder), "
                          "tensorboard FOLDER, or the name of a sink an installed distribution registers in the "
                          "entry-point group tlbench.sinks, and its destination")
    exp.add_argument("--storage", help="an Optuna storage URL or journal file instead of RUN_DIR")
    exp.add_argument("--suite", help="export this suite only (default: every suite in the store)")


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    """``tlbench export (RUN_DIR | --storage URL) --to SINK DEST``: every cell of the store to the sink."""
    from tlbench.reports.export import export_results, sink_class
    from tlbench.reports.results import load_results
    from tlbench.cli.worker import open_named_store
    from tlbench.store.opening import store_label
    from tlbench.store.records import suites_in

    name, dest = args.to
    sink = sink_class(name)(dest)  # an unknown sink or a missing package: refused before the store is read
    storage, where = open_named_store("export", args.run_dir, args.storage)
    # the same store is the same source however it is named
    source = store_label(None, args.run_dir) if args.run_dir is not None else store_label(args.storage, Path("."))
    results = load_results(storage, args.suite, importances=False)
    if results.empty and results.trials.empty:
        if args.suite:
            raise ConfigError(f"export: --suite {args.suite!r}: {where} holds no runs or trials of it; suites there: "
                              f"{', '.join(suites_in(storage)) or 'none'}")
        raise ConfigError(f"export: {where}: the store holds no evaluation runs or tuning trials; nothing to export")
    done = export_results(results, sink, source=source)
    unchanged = f", {len(done.unchanged)} unchanged since the last export" if done.unchanged else ""
    console.print(f"exported {done.cells} cells ({done.runs} evaluation runs, {done.trials} tuning trials) from "
                  f"{where} to {name} {sink.where()}: {len(done.written)} written{unchanged}", highlight=False,
                  markup=False)
    return 0
