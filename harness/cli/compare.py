"""``tlbench compare A B [C …]``: stores side by side (:mod:`tlbench.reports.compare`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console

from tlbench.cli.worker import check_writable_dir, written
from tlbench.core.errors import ConfigError

#: ``LABEL=STORE``: a label is a plain name (a URL's scheme or a path has characters a label has not).
LABELLED = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    com = sub.add_parser("compare", help="paired differences between stores or runs (the first is the baseline), "
                                         "per cell, with intervals and a corrected test (never trains)")
    com.add_argument("stores", nargs="+", metavar="[LABEL=]STORE",
                     help="a run's output directory, a journal file or a storage URL, each optionally labelled "
                          "(default label: the directory's name); the first is the baseline")
    com.add_argument("--suite", help="compare this suite of each store (needed when a store holds several)")
    com.add_argument("--out", type=Path, default=Path("compare"),
                     help="where to write compare.md/.tex/.html/.parquet/.csv and figures/ (default: ./compare)")
    com.add_argument("--no-figure", action="store_true", help="write the tables and data only")


def split_label(argument: str) -> tuple[str | None, str]:
    """``LABEL=STORE`` → (LABEL, STORE); a bare store (or an existing path containing ``=``) → (None, it)."""
    found = LABELLED.match(argument)
    if found is None or Path(argument).exists():
        return None, argument
    return found.group(1), found.group(2)


def open_side(argument: str, suite: str | None):
    """One store of a comparison, as a :class:`tlbench.reports.compare.Side` (one suite's results)."""
    from tlbench.reports.compare import Side
    from tlbench.reports.results import load_results
    from tlbench.store.opening import mask_url, open_existing_storage
    from tlbench.store.records import suites_in

    label, store = split_label(argument)
    if label is None and "=" in argument and not Path(argument).exists():
        raise ConfigError(f"compare: {argument!r}: not a store, and not LABEL=STORE with a plain label (letters, "
                          f"digits, . _ -)")
    path = Path(store)
    if "://" not in store and not store.startswith("journal:") and not path.exists():
        raise ConfigError(f"compare: {store}: no such folder or journal file (give a run's --out directory, a "
                          f"journal file or a storage URL)")
    if path.is_dir():
        journal = path / "store.journal"
        if not journal.is_file():
            raise ConfigError(f"compare: {store}: no store there (expected {journal}); give a run's --out "
                              f"directory, a journal file or a storage URL")
        storage, where, default = open_existing_storage(str(journal)), str(journal), path.resolve().name
        path = journal  # the store's identity: its journal file
    else:
        storage, where = open_existing_storage(store), mask_url(store)
        default = path.resolve().parent.name if path.suffix == ".journal" else where
    held = suites_in(storage)
    if suite is None and len(held) > 1:
        raise ConfigError(f"compare: {where} holds several suites ({', '.join(held)}); choose one with --suite")
    results = load_results(storage, suite, importances=False)
    if results.empty:
        what = f"no evaluation runs of suite {suite!r} (suites there: {', '.join(held) or 'none'})" if suite else \
            "no evaluation runs"
        raise ConfigError(f"compare: {where}: the store holds {what}; nothing to compare")
    return Side(label or default, results, where, identity=str(path.resolve()) if "://" not in store else where)


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from tlbench.reports.compare import compare, write_comparison

    if len(args.stores) < 2:
        raise ConfigError("compare: give at least two stores (the first is the baseline)")
    check_writable_dir(args.out, "--out")
    sides = [open_side(argument, args.suite) for argument in args.stores]
    seen: dict[str, str] = {}
    for side in sides:
        if side.identity in seen:
            raise ConfigError(f"compare: {seen[side.identity]} and {side.label} are the same store ({side.where}); "
                              f"compare two different runs")
        seen[side.identity] = side.label
    labels = [s.label for s in sides]
    if len(set(labels)) != len(labels):  # two runs/<x>/store.journal, say: letters instead of the same name twice
        raise ConfigError(f"compare: two stores would share the label {max(labels, key=labels.count)!r}; "
                          f"label them: LABEL=STORE")
    comparison = compare(sides)
    files = write_comparison(comparison, args.out, title=f"tlbench compare: {' vs '.join(labels[1:])} against "
                                                          f"{labels[0]}", draw=not args.no_figure)
    print((args.out / "compare.md").read_text())
    console.print(f"wrote the comparison to {args.out}: {written(files, args.out)}")
    return 0
