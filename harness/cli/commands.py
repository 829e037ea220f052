"""The subcommands ``run``, ``status``, ``report``, ``check`` and ``list`` (``launch`` is in
:mod:`tlbench.cli.launch`), with what they print: the dry run's plan, the image cache's lines,
a run's status table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tlbench.cli.worker import (
    BUILTIN_STRATEGIES,
    check_writable_dir,
    names_of,
    open_named_store,
    prepare_run,
    warn,
    write_run_report,
    written,
)
from tlbench.core.errors import ConfigError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tlbench.data.imagecache import ImageCache
    from tlbench.run.plan import Plan


def print_dry_run(plan: "Plan", console: Console) -> None:
    """The plan without training: each task's data (path and whether it is there), then
    each cell's split sizes, budget and seeds, the search spaces the suite sets and its
    sensitivity studies."""
    from tlbench.suites.datasets import data_access

    suite = plan.suite
    data = data_access(suite)
    console.print(f"data root {data.root} (download: {'yes' if data.download else 'no'})")
    inputs, warnings = describe_inputs(plan)
    for name, (paths, absent) in plan.data_paths.items():
        where = ", ".join(f"{p} ({'MISSING' if p in absent else 'present'})" for p in paths) or "bundled/generated"
        more = f"; {inputs[name]}" if name in inputs else ""
        console.print(f"  task {name}: dataset {suite.task_spec(name).dataset}, {where}{more}", highlight=False,
                      markup=False)
    for line in warnings:
        warn(console, line)
    for cell in plan.cells:
        t = plan.tasks.get(cell.task)
        if t is not None:
            sizes = f"train {len(t.train)}, val {len(t.val)}, test {len(t.test)}"
        elif suite.tasks[cell.task].split.protocol == "vtab1k":
            sizes = "train 800, val 200, test: the official test split (data missing)"
        else:
            sizes = "split sizes known once the data is present"
        budget = plan.budget(cell.strategy, cell.backbone)
        tuning = (f"{budget.trials} trials" if budget.epochs is None else f"{budget.epochs:g} backbone epochs")
        console.print(f"  {cell.label}: {sizes}; {tuning}, {suite.seeds} seeds", highlight=False)
    for strategy, backbone in sorted(plan.spaces):  # the spaces the suite overrides
        console.print(f"  search space of {strategy} on {backbone}: " + ", ".join(
            f"{k} {v}" for k, v in plan.searched[(strategy, backbone)].describe().items()), highlight=False)
    for i, spec in enumerate(suite.sensitivity):
        grid = " × ".join(f"{name} {values}" for name, values in spec.params.items())
        console.print(f"  sensitivity[{i}]: {spec.strategy}, {grid}, {spec.seeds} seeds per value on "
                      f"{', '.join(spec.tasks or suite.tasks)}", highlight=False)
    if suite.model_selection is not None:
        from tlbench.run.selection import scorer_names

        pairs = sorted({(c.task, c.backbone) for c in plan.cells})
        named = suite.model_selection.ground_truth or list(suite.strategies)
        truth = [t for t in named if t in suite.strategies]  # --strategies may leave some out of this run
        left = [t for t in named if t not in truth]
        console.print(f"  model selection: {len(scorer_names(plan))} scorers ({', '.join(scorer_names(plan))}) on "
                      f"{len(pairs)} task × backbone pairs, before fine-tuning; ranked against "
                      f"{', '.join(truth) or 'no strategy of this run'}"
                      + (f" ({', '.join(left)} not in this run: the report ranks against it once its runs are "
                         f"stored)" if left else ""), highlight=False)
    if plan.missing:
        from tlbench.suites.datasets import DATASETS

        local = [t for t in plan.missing if not DATASETS.get(suite.task_spec(t).dataset).downloadable]
        fetched = [t for t in plan.missing if t not in local]
        if fetched:
            remedy = ("the run will download them" if data.download else "set `download: true` in the suite, or "
                      "place the files at the paths above (or pass --data-root)")
            console.print(f"{len(fetched)} task(s) lack their data ({', '.join(fetched)}): {remedy}", highlight=False)
        if local:
            console.print(f"{len(local)} task(s) lack their files, which cannot be downloaded ({', '.join(local)}): "
                          "place them at the paths above, or correct the paths (relative ones are under the data "
                          "root, which --data-root sets)", highlight=False)


def describe_inputs(plan: "Plan") -> tuple[dict[str, str], list[str]]:
    """Per built task (source tasks too): its classes (count and names), then the input each
    backbone reads next to the size its weights were pretrained at; and a warning per
    backbone whose inputs differ from that size."""
    from tlbench.run.plan import input_sizes

    def size(shape: tuple[int, ...]) -> str:
        return "×".join(str(int(d)) for d in shape)

    sizes = input_sizes(plan)
    lines: dict[str, str] = {}
    warnings: list[str] = []
    for name, task in {**plan.sources, **plan.tasks}.items():
        names = list(task.class_names)
        shown = ", ".join(names[:12]) + (f", … ({len(names) - 12} more)" if len(names) > 12 else "")
        parts = [f"{task.num_classes} classes ({shown})"]
        for backbone, (shape, trained) in sizes.get(name, {}).items():
            parts.append(f"{backbone} reads {size(shape)}" + (f" (pretrained at {size(trained)})" if trained else ""))
            if trained is not None and len(shape) == 3 and tuple(shape[-2:]) != trained:
                field = plan.suite.task_where(name).split(": ", 1)[1] + ".image_size"
                warnings.append(f"task {name}: backbone {backbone} reads {size(shape[-2:])} inputs but was pretrained"
                                f" at {size(trained)}; set {field} to match, if that is not intended")
        lines[name] = "; ".join(parts)
    return lines, warnings


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from tlbench.cli.console import ConsoleObserver
    from tlbench.core.phases import PHASES
    from tlbench.run.runner import run_plan

    PHASES.reset()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    prepared = prepare_run(args, dry_run=args.dry_run, console=console)
    plan, runtime, out, storage = prepared.plan, prepared.runtime, prepared.out, prepared.storage
    suite = plan.suite
    budget = suite.tuning_budget
    tuning = (budget.describe() + (" of tuning" if budget.epochs is not None else "")
              + (" (grid)" if plan.grids else ""))
    if budget.epochs is not None and "trials" in suite.model_fields_set:  # given, perhaps by an included file
        tuning += (f" (trials: {suite.trials} does not apply under an epochs budget; budget.max_trials caps the "
                   f"trials at {budget.max_trials})")
    console.print(f"suite {suite.name}: {len(plan.cells)} cell{'' if len(plan.cells) == 1 else 's'} × {tuning}, "
                  f"{suite.seeds} evaluation seeds, device {runtime.device} ({runtime.execution.tag}"
                  f"{', channels_last' if runtime.execution.channels_last else ''}"
                  f"{', compiled' if runtime.execution.compile else ''}"
                  f"{f', up to {runtime.seeds_together} seeds side by side' if runtime.seeds_together > 1 else ''}"
                  f"{f', up to {runtime.trials_together} trials side by side' if runtime.trials_together > 1 else ''}"
                  f"), out {out}")
    images = runtime.execution.loading.images
    lazy = plan.missing or any(t.lazy for t in plan.tasks.values())
    if lazy:
        console.print(image_cache_line(images))
    if storage is None:
        print_dry_run(plan, console)
        return 0
    with ConsoleObserver(console) as observer:
        if images is not None:
            images.log = observer.log
        ran = run_plan(plan, out=out, storage=storage, runtime=runtime, cache_dir=prepared.cache_dir,
                       observer=observer)
    if lazy and images is not None:
        console.print(image_cache_summary(images))
    if args.report == "none":
        n = len(ran.outcomes)  # done now or by an earlier run: "ran" would claim work that may not have happened
        console.print(f"{'the' if n == 1 else f'all {n}'} cell{'' if n == 1 else 's'} of this run done in the store; "
                      f"no report written (--report none): "
                      + (f"tlbench report {out} writes it" if args.storage is None else
                         "tlbench report --storage (the same storage) writes it"))
    else:  # the report shows this invocation's cells and seeds (a store may hold more)
        with PHASES("report"):
            write_run_report(storage, suite, out, cells=ran.cells, seeds=ran.seeds, figures=args.report == "full",
                             console=console)
    record_time(storage, suite.name, console)
    return 0


def record_time(storage: "BaseStorage", suite: str, console: Console) -> None:
    """Prints where this run's time went and keeps it in the store (:func:`tlbench.store.progress.store_timing`)."""
    from tlbench.core.phases import PHASES, describe
    from tlbench.store.progress import store_timing

    breakdown = PHASES.breakdown()
    console.print(describe(breakdown))
    store_timing(storage, suite, breakdown)


def image_cache_line(images: "ImageCache | None") -> str:
    """Where image files are read from, and what the cache holds."""
    from tlbench.data.imagecache import human

    if images is None:
        return "image cache: off (--image-cache off): images are decoded from their files on every read"
    limit = "auto" if images.limit is None else human(images.limit)
    used = images.used()
    over = ("; over its limit: what it holds is read, nothing new is cached"
            if images.limit is not None and used > images.limit else "")
    return (f"image cache: {images.directory} (holds {human(used)}; limit {limit}{over}; a split is "
            f"decoded once per preprocessing)")


def image_cache_summary(images: "ImageCache") -> str:
    """What the image cache cost and saved in this run."""
    from tlbench.data.imagecache import human

    usage = images.summary()
    built = (f"built {usage.built} entr{'y' if usage.built == 1 else 'ies'} ({human(usage.built_bytes)} in "
             f"{usage.build_seconds:.1f} s)" if usage.built else
             "built nothing" + ("" if usage.fallbacks else " (every entry was cached)"))
    fallbacks = f"; {usage.fallbacks} split(s) read from files (limit)" if usage.fallbacks else ""
    return (f"image cache: {built}; read {usage.images_read:,} images from it, about "
            f"{usage.decode_seconds_saved:.0f} s of decoding saved at the measured build rate; it holds "
            f"{human(images.used())}{fallbacks}")


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    """``tlbench status SUITE --storage URL``: the store's view of a run (never trains). It answers
    from the plan the run stored for this suite file and these flags, without torch (about half a
    second); for other flags, or a store no run of this release planned, it plans the suite itself."""
    from tlbench.store.opening import mask_url, open_existing_storage
    from tlbench.store.progress import run_status
    from tlbench.store.records import suites_in
    from tlbench.store.scores import score_progress
    from tlbench.suites import resolve_suite_path
    from tlbench.suites.reading import plan_key, read_suite_file, suite_name

    strategies, tasks, backbones = names_of(args.strategies), names_of(args.tasks), names_of(args.backbones)
    path = resolve_suite_path(args.suite)
    overrides = tuple(args.overrides or ())
    data = read_suite_file(path, overrides)
    name = suite_name(path, data)

    checked: list = []  # the store to check the suite's settings against, once it is open

    def planned() -> list:  # what the run planned, computed as it did: parses and checks the whole suite
        from tlbench.run.plan import load_plan
        from tlbench.run.status import cell_plans

        if checked and name in suites_in(checked[0]):
            # No run stored a plan for this suite file and these flags (a stored plan is proof that a run
            # with these settings was accepted): a run with settings the store's runs do not have would be
            # refused, so status says so, as the run would, instead of showing the other settings' cells.
            from tlbench.store.claims import check_compatible
            from tlbench.suites.schema import settings_suite

            try:
                suite = settings_suite(path, data)
            except ConfigError:
                suite = None  # what is wrong with the suite file, load_plan reports below
            if suite is not None:
                check_compatible(checked[0], name, suite.fingerprint(), where=f"status: {path}",
                                 settings=suite.settings())
        return cell_plans(load_plan(path, trials=args.trials, seeds=args.seeds, strategies=strategies,
                                    dry_run=True, data=False, tasks=tasks, backbones=backbones,
                                    overrides=overrides))

    out = args.out or Path("runs") / name
    url = args.storage or str(out / "store.journal")
    if args.storage is None and not (out / "store.journal").is_file():
        planned()  # a broken suite file is what to report first
        raise ConfigError(f"status: {'--out ' if args.out else ''}{out}: no store there (expected "
                          f"{out / 'store.journal'}); "
                          f"give the --out of a run, or --storage URL")
    storage = open_existing_storage(url)
    checked.append(storage)
    held = suites_in(storage)
    if name not in held and held:
        raise ConfigError(f"status: {mask_url(url)} holds no study of suite {name!r}; suites there: "
                          f"{', '.join(held)}")
    key = plan_key(path, data, trials=args.trials, seeds=args.seeds, strategies=strategies, tasks=tasks,
                   backbones=backbones)
    cells = run_status(storage, name, planned, key=key)
    workers: dict[str, bool] = {}
    for c in cells:
        workers.update(c.workers)
    alive = sorted(w for w, ok in workers.items() if ok)
    dead = sorted(w for w, ok in workers.items() if not ok)
    scoring = score_progress(storage, name)
    if getattr(args, "json", False):
        print(json.dumps(status_json(name, mask_url(url), cells, alive, dead, scoring), indent=2))
        return 0
    states = [c.state for c in cells]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("done", "running", "waiting", "not started")
                       if states.count(s))
    print(f"suite {name} in {mask_url(url)}: {len(cells)} cells ({counts}); "
          f"{sum(c.left for c in cells)} units of work left (tuning slots, evaluation seeds, sensitivity runs)"
          + ("" if held else "; the store is empty: no worker has started on it yet"))
    width = max(len(c.cell.label) for c in cells)
    print(f"  {'cell':<{width}}  {'tuning':>13}  {'evaluated':>9}  {'sensitivity':>11}  {'held':>4}  {'dead':>4}  "
          f"{'failed':>6}  state")
    for c in cells:
        tuning = ("-" if c.tuning_total is None and c.tuning_done and not c.tuned else
                  f"{c.tuned}/{c.tuning_total}" if c.tuning_total is not None else
                  f"{c.tuned} ({'done' if c.tuning_done else c.budget})")
        sens = f"{c.sensitivity_done}/{c.sensitivity_total}" if c.sensitivity_total else "-"
        print(f"  {c.cell.label:<{width}}  {tuning:>13}  {f'{c.evaluated}/{c.seeds}':>9}  {sens:>11}  "
              f"{c.held:>4}  {c.orphaned:>4}  {c.failed:>6}  {c.state}")
    if scoring is not None:
        pairs, done, running, failed = scoring
        print(f"model selection: {done} scores stored on {pairs} task × backbone pairs"
              + (f", {running} being computed" if running else "")
              + (f", {failed} failed (redone by the next run)" if failed else ""))
    print(f"workers holding work: {len(alive)} alive" + (f" ({', '.join(alive)})" if alive else "")
          + (f"; {len(dead)} dead ({', '.join(dead)}): the next worker that looks takes their work over" if dead
             else ""))
    return 0


def status_json(suite: str, store: str, cells: list, alive: list[str], dead: list[str],
                scoring: tuple[int, int, int, int] | None) -> dict:
    """``tlbench status --json``: what the table and lines show, as data (the store's URL masked)."""
    return {
        "suite": suite,
        "store": store,
        "cells": [{
            "task": c.cell.task, "backbone": c.cell.backbone, "strategy": c.cell.strategy, "state": c.state,
            "tuning": {"done": c.tuned, "total": c.tuning_total, "finished": c.tuning_done, "budget": c.budget},
            "evaluated": {"done": c.evaluated, "total": c.seeds},
            "sensitivity": {"done": c.sensitivity_done, "total": c.sensitivity_total},
            "held": c.held, "dead": c.orphaned, "failed": c.failed, "left": c.left,
            "workers": sorted(c.workers),
        } for c in cells],
        "states": {s: sum(c.state == s for c in cells) for s in ("done", "running", "waiting", "not started")},
        "left": sum(c.left for c in cells),
        "workers": {"alive": alive, "dead": dead},
        "model_selection": None if scoring is None else dict(zip(("pairs", "stored", "running", "failed"), scoring)),
    }


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """``tlbench report (--storage URL | RUN_DIR) --out DIR``: reads stored results only."""
    from tlbench.reports.build import write_report
    from tlbench.reports.results import load_results
    from tlbench.store.records import suites_in

    storage, where = open_named_store("report", args.run_dir, args.storage)  # messages show no password
    out = args.out or args.run_dir or Path("report")
    check_writable_dir(out, "--out")
    results = load_results(storage, args.suite, importances="later")  # fANOVA runs beside the figures
    if results.empty:
        if args.suite:
            held = suites_in(storage)
            raise ConfigError(f"report: --suite {args.suite!r}: {where} holds no evaluation runs of it; "
                              f"suites there: {', '.join(held) or 'none'}")
        raise ConfigError(f"report: {where}: the store holds no evaluation runs; nothing to report")
    suites = sorted(results.runs["suite"].unique())
    report = write_report(results, out, title=f"tlbench report: {', '.join(suites)}",
                          strategy_order=BUILTIN_STRATEGIES)
    print(report.path("table.md").read_text())
    console.print(f"wrote the report to {out} in {report.seconds:.1f} s: {written(report.files, out)}")
    return 0


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    """``tlbench check TARGET``: each property of the contract of each strategy, backbone, dataset or
    scorer the target names, pass or a one-line reason."""
    from tlbench.run.plugins import load_entry_points, load_plugin
    from tlbench.selection.scorers import SCORERS, Scorer
    from tlbench.strategies import STRATEGIES, Strategy
    from tlbench.suites.datasets import DATASETS
    from tlbench.suites.pools import Dataset
    from tlbench.testing import check_backbone, check_dataset, check_scorer, check_strategy
    from tlbench.training.backbones import BACKBONES, Backbone

    load_entry_points()
    target = args.target
    kinds = (Strategy, Backbone, Dataset, Scorer)
    registered = [registry.get(target) for registry in (STRATEGIES, BACKBONES, DATASETS, SCORERS)
                  if target in registry]
    if registered:
        classes: list[type] = registered
    else:
        entry, _, wanted = target.rpartition(":") if ":" in target else (target, "", "")
        plugin = load_plugin(entry, base=Path.cwd(), where=f"check {entry}")
        ours = [c for c in plugin.classes if issubclass(c, kinds)]
        classes = [c for c in ours if not wanted or c.__name__ == wanted]
        if not classes:
            found = ", ".join(c.__name__ for c in ours) or "none"
            raise ConfigError(f"check {target}: no strategy, backbone, dataset or scorer class {wanted or ''} in {entry}; "
                              f"found: {found}")
    settings = check_settings(args)
    failed = []
    for cls in classes:
        if issubclass(cls, Strategy):
            report = check_strategy(cls)
        elif issubclass(cls, Backbone):
            report = check_backbone(cls, args=settings["args"], input_shape=settings["input_shape"])
        elif issubclass(cls, Scorer):
            report = check_scorer(cls)
        else:
            report = check_dataset(cls, args=settings["args"], data=args.data_root)
        print(report)
        if not report.ok:
            failed.append(f"{report.kind} {report.subject} fails {len(report.failed)} of {len(report.results)} "
                          f"checks ({'; '.join(r.prop for r in report.failed)})")
    if failed:
        raise ConfigError(f"check {target}: " + "; ".join(failed))
    return 0


def check_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--args`` (a YAML mapping) and ``--input-shape`` (``C,H,W``), each refused in one line when malformed."""
    import yaml

    parsed: Any = {}
    if args.args is not None:
        try:
            parsed = yaml.safe_load(args.args)
        except yaml.YAMLError as err:
            raise ConfigError(f"check --args {args.args!r}: not YAML ({str(err).splitlines()[0]}); give a mapping "
                              f"such as '{{variant: resnet18}}'") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"check --args {args.args!r}: give a mapping of arguments, such as "
                              f"'{{variant: resnet18}}'")
    shape = None
    if args.input_shape is not None:
        parts = [p.strip() for p in args.input_shape.split(",")]
        if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"check --input-shape {args.input_shape!r}: give positive sizes separated by commas, "
                              f"channels first (e.g. 3,224,224)")
        shape = tuple(int(p) for p in parts)
    return {"args": parsed, "input_shape": shape}


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from tlbench.run.plugins import load_entry_points

    load_entry_points()
    if args.what == "strategies":
        from tlbench.strategies import STRATEGIES
        rows = [(name, cls.description) for name, cls in STRATEGIES]
    elif args.what == "backbones":
        from tlbench.training.backbones import BACKBONES
        rows = [(name, cls.description) for name, cls in BACKBONES]
    elif args.what == "datasets":
        from tlbench.suites.datasets import DATASETS
        rows = [(name, cls.description) for name, cls in DATASETS]
    elif args.what == "scorers":
        from tlbench.selection.scorers import SCORERS
        rows = [(name, f"{'higher' if cls.higher_is_better else 'lower'} is better; {cls.definition}")
                for name, cls in SCORERS]
    else:
        from tlbench.suites import bundled_suites
        rows = [(name, str(path)) for name, path in bundled_suites().items()]
    width = max(len(r[0]) for r in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0
