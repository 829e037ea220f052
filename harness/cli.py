"""The ``tlbench`` command line: ``run`` a suite (or ``launch`` many workers of one), ``report`` on a store, ``check``
a strategy, ``list`` what is available."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, NoReturn

from rich.console import Console

from tlbench.errors import ConfigError, TlbenchError
from tlbench.registry import BUILTIN

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tlbench.imagecache import ImageCache
    from tlbench.plan import Plan
    from tlbench.registry import Registry
    from tlbench.runtime import Runtime
    from tlbench.suites.config import Suite


def builtin_order(strategies: "Registry[Any]") -> list[str]:
    """The built-in strategies' names: each keeps its colour in every report, whatever
    plugins are loaded (a plugin's colour comes after them)."""
    return [name for name in strategies.names() if strategies.origin(name) == BUILTIN]


class OneLineParser(argparse.ArgumentParser):
    """A subcommand's parser whose errors are one line and exit 2, like every other refusal of tlbench (argparse
    would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tlbench: error: {self.prog.removeprefix('tlbench ')}: {message} ({self.prog} -h lists "
                     f"the options)\n")


def _at_least(kind: type, low: float, what: str) -> Any:
    """An argparse type: a number of ``kind`` ≥ ``low``; anything else is the one-line error."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"give {what} >= {low:g} (got {text!r})")
        return value
    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"give a share of device memory between 0 and 0.9 (got {text!r})")
    return value


def image_cache_of(args: argparse.Namespace, cache_dir: Path, *, log: Callable[[str], None]) -> "ImageCache | None":
    """The image cache ``--image-cache`` and ``--image-cache-limit`` ask for (None: off)."""
    from tlbench.imagecache import ImageCache, parse_size

    choice = getattr(args, "image_cache", "auto")
    if choice == "off":
        return None
    directory = cache_dir / "images" if choice == "auto" else Path(choice).expanduser()
    limit_text = getattr(args, "image_cache_limit", "auto")
    limit = None if limit_text == "auto" else parse_size(limit_text)
    return ImageCache(directory, limit=limit, device_share=getattr(args, "image_cache_device_share", 0.25),
                      log=log)


def add_worker_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of one worker of a suite (``tlbench run``'s, short of the store and the report), returned so
    that ``tlbench launch`` passes exactly these on to the workers it starts."""
    add = parser.add_argument
    return [
        add("--out", type=Path, help="output directory (default: the folder of the journal file --storage names, "
                                     "else runs/<suite name>); refused when it holds another store's results"),
        add("--trials", type=int, help="override the suite's per-cell trial budget"),
        add("--seeds", type=int, help="override the suite's number of evaluation seeds"),
        add("--strategies", help="comma-separated strategies to run instead of the suite's list"),
        add("--device", default="auto", help="auto (default), cpu or cuda"),
        add("--precision", default="auto", help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
        add("--channels-last", default="auto", help="auto (on for CUDA), on or off: channels_last memory format "
                                                    "for image (4-D) inputs"),
        add("--compile", action="store_true", help="torch.compile the model each strategy trains"),
        add("--workers", default="auto", help="DataLoader workers for image-file datasets: auto (min(16, cores) "
                                              "on CUDA, 0 on CPU) or a number"),
        add("--threads", type=_at_least(int, 1, "a number of CPU threads"), default=None,
            help="CPU threads torch uses in this process (default: torch's, one per core); bit-identical results "
                 "across runs need the same number"),
        add("--heartbeat", type=_at_least(float, 1, "a heartbeat interval in seconds"), default=None,
            metavar="SECONDS",
            help="database stores: record a running trial's heartbeat every SECONDS (default 10); a worker silent "
                 "for 4 intervals is dead, on any host, and its work is taken over"),
        add("--data-root", type=Path, default=None,
            help="where image datasets live (default: the suite's data_root, $TLBENCH_DATA, or data/ in the cache "
                 "directory)"),
        add("--cache-dir", type=Path, default=None,
            help="pretrained-backbone and feature cache (default: $TLBENCH_CACHE or ~/.cache/tlbench)"),
        add("--image-cache", default="auto", metavar="off|auto|DIR",
            help="decode image-file datasets once into memory-mapped uint8 files and read every epoch, trial, "
                 "seed and strategy from them: auto (default: images/ in the cache directory), a directory, or "
                 "off (decode the files on every read)"),
        add("--image-cache-limit", default="auto", metavar="auto|SIZE",
            help="the most disk the image cache may use, e.g. 20GB (default auto: half the free space plus what "
                 "it holds, at most 100 GiB); a split that would cross it is read from its files, with a line "
                 "saying so"),
        add("--image-cache-device-share", type=_share, default=0.25, metavar="FRACTION",
            help="on a GPU, keep a split's cached images in device memory when they take at most this share of "
                 "it (default 0.25), else stream them through pinned memory"),
    ]


def build_parser() -> argparse.ArgumentParser:
    from tlbench.launch import add_launch_parser

    parser = argparse.ArgumentParser(prog="tlbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = sub.add_parser("run", help="tune, evaluate and tabulate every cell of a suite")
    run.add_argument("suite", help="suite YAML file, or a bundled suite name (tlbench list suites)")
    run.add_argument("--storage", help="Optuna storage URL or journal file (default: <out>/store.journal)")
    add_worker_options(run)
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    run.add_argument("--report", choices=["full", "tables", "none"], default="full",
                     help="what the run writes at the end: the full report (default), its tables, data files and "
                          "HTML without figures (much faster), or nothing (workers of a larger run; `tlbench "
                          "report` writes it from the store)")
    add_launch_parser(sub)
    sta = sub.add_parser("status", help="where a run stands: per cell, the work done, held and left, and the "
                                        "workers holding it (reads the store only)")
    sta.add_argument("suite", help="the suite file (or bundled name) the workers run")
    sta.add_argument("--storage", help="the workers' storage URL or journal file (default: <out>/store.journal)")
    sta.add_argument("--out", type=Path, help="the run's output directory (default: runs/<suite name>)")
    sta.add_argument("--trials", type=int, help="the --trials the workers were given, if any")
    sta.add_argument("--seeds", type=int, help="the --seeds the workers were given, if any")
    sta.add_argument("--strategies", help="the --strategies the workers were given, if any")
    rep = sub.add_parser("report", help="tables, statistics, figures and report.html from a store (never trains)")
    rep.add_argument("run_dir", nargs="?", type=Path, help="a run's output directory (reads RUN_DIR/store.journal)")
    rep.add_argument("--storage", help="an Optuna storage URL or journal file instead of RUN_DIR")
    rep.add_argument("--out", type=Path, help="where to write the report (default: RUN_DIR, or ./report)")
    rep.add_argument("--suite", help="report this suite only (default: every suite in the store)")
    chk = sub.add_parser("check", help="check a strategy against the strategy contract (exit 0: all pass)")
    chk.add_argument("target", help="FILE.py:Class, module:Class, FILE.py (every strategy it defines) or a "
                                    "registered strategy name")
    lst = sub.add_parser("list", help="list strategies, backbones, datasets or suites")
    lst.add_argument("what", choices=["strategies", "backbones", "datasets", "suites"])
    return parser


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
            f"{k} {v}" for k, v in plan.searched[(strategy, backbone)].items()), highlight=False)
    for i, spec in enumerate(suite.sensitivity):
        grid = " × ".join(f"{name} {values}" for name, values in spec.params.items())
        console.print(f"  sensitivity[{i}]: {spec.strategy}, {grid}, {spec.seeds} seeds per value on "
                      f"{', '.join(spec.tasks or suite.tasks)}", highlight=False)
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
    from tlbench.plan import input_sizes

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


def written(files: list[Path], out: Path) -> str:
    """Every file a report wrote, relative to its folder: those directly in it, then each
    subfolder once with its files (``figures/ (4 files: a.png, a.pdf, …)``), in writing order."""
    top: list[str] = []
    folders: dict[str, list[str]] = {}
    for path in files:
        rel = path.relative_to(out) if path.is_relative_to(out) else path
        if len(rel.parts) == 1:
            top.append(rel.as_posix())
        else:
            folders.setdefault(rel.parts[0], []).append(Path(*rel.parts[1:]).as_posix())
    parts = top + [f"{folder}/ ({len(names)} file{'s' if len(names) != 1 else ''}: {', '.join(names)})"
                   for folder, names in folders.items()]
    return ", ".join(parts)


def warn(console: Console, line: str) -> None:
    """One line on stderr that is not an error (the store repaired something); printed through the
    progress display's console so that it lands above it."""
    console.print(f"tlbench: warning: {line}", markup=False, highlight=False)


def check_writable_dir(out: Path, flag: str) -> None:
    """Refuses, before any work and without creating anything, an output directory that cannot
    be written: an existing file, a path through a file, or a folder this process may not write."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        through = "" if existing == out else f" ({existing} is a file)"
        raise ConfigError(f"{flag} {out}: not a directory{through}; give a directory to write into")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"{flag} {out}: cannot write to {existing} ({err.strerror or err}); give a writable "
                          f"directory") from None


@dataclass(frozen=True)
class Prepared:
    """A suite checked and ready to run: what ``tlbench run`` refuses before it trains anything (a bad suite, its
    data, a device, a store that holds other settings or other plugin code), shared with ``tlbench launch`` so
    that a launch is refused exactly when each of its workers would be."""

    plan: "Plan"
    runtime: "Runtime"
    out: Path
    cache_dir: Path
    storage: "BaseStorage | None"  # None for a dry run: nothing is opened


def prepare_run(args: argparse.Namespace, *, dry_run: bool = False, console: Console | None = None) -> Prepared:
    from tlbench.paths import default_cache_dir
    from tlbench.plan import load_plan, resolve_suite_path
    from tlbench.runner import check_plugin_code
    from tlbench.runtime import make_runtime
    from tlbench.storage import open_storage
    from tlbench.store import check_compatible

    strategies = None
    if args.strategies is not None:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    cache_dir = args.cache_dir or default_cache_dir()
    plan = load_plan(resolve_suite_path(args.suite), trials=args.trials, seeds=args.seeds,
                     strategies=strategies, data_root=args.data_root, cache_dir=cache_dir, dry_run=dry_run)
    shown = console or Console(stderr=True, highlight=False, soft_wrap=True)
    images = image_cache_of(args, cache_dir, log=lambda line: shown.print(line, markup=False))
    if images is not None and (plan.missing or any(t.lazy for t in plan.tasks.values())):
        check_writable_dir(images.directory, "--image-cache")
    runtime = make_runtime(args.device, cache_dir, precision=args.precision, channels_last=args.channels_last,
                           compile=args.compile, workers=args.workers, images=images)
    out = args.out or default_out(args.storage, plan.suite.name)
    suite = plan.suite
    storage = None
    if not dry_run:
        check_writable_dir(out, "--out")
        check_out_is_this_stores(out, args.storage)
        console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        # Retries (a database that refuses connections for a moment) are worth a line each.
        storage = open_storage(args.storage, out, heartbeat=getattr(args, "heartbeat", None),
                               log=lambda line: console.print(line, markup=False),
                               notify=lambda line: warn(console, line))
        check_compatible(storage, suite.name, suite.fingerprint(), where=suite.path)  # before any line is printed
        check_plugin_code(storage, plan)
        mark_store(out, args.storage)
    return Prepared(plan, runtime, out, cache_dir, storage)


#: In a run's output folder whose store is not its own ``store.journal``: which store its report and logs are of.
STORE_MARK = "store.txt"


def default_out(storage: str | None, suite: str) -> Path:
    """``--out`` when it is not given: the folder of the journal file ``--storage`` names (its report beside it),
    else ``runs/<suite name>``."""
    from tlbench.storage import journal_path

    path = journal_path(storage) if storage is not None else None
    return path.parent if path is not None else Path("runs") / suite


def check_out_is_this_stores(out: Path, storage: str | None) -> None:
    """Refuses an output folder that holds another store's results (its own ``store.journal``, or the mark
    :func:`mark_store` left), before anything is written: a report there would replace that store's tables
    with this one's, silently."""
    from tlbench.storage import store_label

    mine = store_label(storage, out)
    others = []
    if (out / "store.journal").is_file() and store_label(None, out) != mine:
        others.append(str(out / "store.journal"))
    mark = out / STORE_MARK
    if mark.is_file() and (other := mark.read_text().strip()) and other != mine:
        others.append(other)
    if others:
        raise ConfigError(f"--out {out}: it holds the results of another store ({others[0]}); give this store's run "
                          f"another --out, or --storage {others[0]} to continue that one")


def mark_store(out: Path, storage: str | None) -> None:
    """Writes which store ``out`` reports on, when that is not ``out/store.journal``."""
    from tlbench.storage import store_label

    label = store_label(storage, out)
    if label != store_label(None, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / STORE_MARK).write_text(label + "\n")


def write_run_report(storage: "BaseStorage", suite: "Suite", out: Path, *, cells: Collection[tuple[str, str, str]],
                     seeds: Collection[int], figures: bool, console: Console) -> None:
    """The report of a run's cells and seeds (a store may hold more), its main table printed."""
    from tlbench.reports.build import write_report
    from tlbench.reports.data import load_results
    from tlbench.strategies import STRATEGIES

    results = load_results(storage, suite.name, cells=cells, seeds=seeds)
    if results.empty:
        raise ConfigError(f"{suite.path}: no cell produced an evaluation run (every tuning trial was pruned "
                          f"or failed); nothing to report")
    report = write_report(results, out, title=f"tlbench suite {suite.name}",  # same seed as tlbench report
                          strategy_order=builtin_order(STRATEGIES), figures_too=figures)
    print(report.path("table.md").read_text())
    console.print(f"wrote the report to {out} in {report.seconds:.1f} s: {written(report.files, out)}")


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from tlbench.console import ConsoleObserver
    from tlbench.runner import run_plan

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    prepared = prepare_run(args, dry_run=args.dry_run, console=console)
    plan, runtime, out, storage = prepared.plan, prepared.runtime, prepared.out, prepared.storage
    suite = plan.suite
    tuning = (f"{suite.trials} trials" if suite.budget_epochs is None else
              f"{suite.budget_epochs:g} backbone epochs of tuning") + (" (grid)" if plan.grids else "")
    console.print(f"suite {suite.name}: {len(plan.cells)} cell{'' if len(plan.cells) == 1 else 's'} × {tuning}, "
                  f"{suite.seeds} evaluation seeds, device {runtime.device} ({runtime.execution.tag}"
                  f"{', channels_last' if runtime.execution.channels_last else ''}"
                  f"{', compiled' if runtime.execution.compile else ''}), out {out}")
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
        console.print(f"ran {len(ran.outcomes)} cells into the store; no report written (--report none): "
                      + (f"tlbench report {out} writes it" if args.storage is None else
                         "tlbench report --storage (the same storage) writes it"))
        return 0
    # The report shows this invocation's cells and seeds (a store may hold more).
    write_run_report(storage, suite, out, cells=ran.cells, seeds=ran.seeds, figures=args.report == "full",
                     console=console)
    return 0


def image_cache_line(images: "ImageCache | None") -> str:
    """Where image files are read from, and what the cache holds."""
    from tlbench.imagecache import human

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
    from tlbench.imagecache import human

    usage = images.summary()
    built = (f"built {usage.built} entr{'y' if usage.built == 1 else 'ies'} ({human(usage.built_bytes)} in "
             f"{usage.build_seconds:.1f} s)" if usage.built else
             "built nothing" + ("" if usage.fallbacks else " (every entry was cached)"))
    fallbacks = f"; {usage.fallbacks} split(s) read from files (limit)" if usage.fallbacks else ""
    return (f"image cache: {built}; read {usage.images_read:,} images from it, about "
            f"{usage.decode_seconds_saved:.0f} s of decoding saved at the measured build rate; it holds "
            f"{human(images.used())}{fallbacks}")


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    """``tlbench status SUITE --storage URL``: the store's view of a run (never trains)."""
    from tlbench.plan import load_plan, resolve_suite_path
    from tlbench.records import suites_in
    from tlbench.status import run_status
    from tlbench.storage import mask_url, open_existing_storage

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    plan = load_plan(resolve_suite_path(args.suite), trials=args.trials, seeds=args.seeds, strategies=strategies,
                     dry_run=True, data=False)
    out = args.out or Path("runs") / plan.suite.name
    url = args.storage or str(out / "store.journal")
    if args.storage is None and not (out / "store.journal").is_file():
        raise ConfigError(f"status: {'--out ' if args.out else ''}{out}: no store there (expected {out / 'store.journal'}); "
                          f"give the --out of a run, or --storage URL")
    storage = open_existing_storage(url)
    held = suites_in(storage)
    if plan.suite.name not in held and held:
        raise ConfigError(f"status: {mask_url(url)} holds no study of suite {plan.suite.name!r}; suites there: "
                          f"{', '.join(held)}")
    cells = run_status(storage, plan)
    states = [c.state for c in cells]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("done", "running", "waiting", "not started")
                       if states.count(s))
    print(f"suite {plan.suite.name} in {mask_url(url)}: {len(cells)} cells ({counts}); "
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
    workers: dict[str, bool] = {}
    for c in cells:
        workers.update(c.workers)
    alive = sorted(w for w, ok in workers.items() if ok)
    dead = sorted(w for w, ok in workers.items() if not ok)
    print(f"workers holding work: {len(alive)} alive" + (f" ({', '.join(alive)})" if alive else "")
          + (f"; {len(dead)} dead ({', '.join(dead)}): the next worker that looks takes their work over" if dead
             else ""))
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """``tlbench report (--storage URL | RUN_DIR) --out DIR``: reads stored results only."""
    from tlbench.records import suites_in
    from tlbench.reports.build import write_report
    from tlbench.reports.data import load_results
    from tlbench.storage import mask_url, open_existing_storage
    from tlbench.strategies import STRATEGIES

    if (args.run_dir is None) == (args.storage is None):
        raise ConfigError("report: give a run directory or --storage URL (exactly one)")
    if args.run_dir is not None:
        journal = args.run_dir / "store.journal"
        if not journal.is_file():
            raise ConfigError(f"report: {args.run_dir}: no store there (expected {journal}); give the --out "
                              f"directory of a tlbench run, or --storage URL")
        storage, where = open_existing_storage(str(journal)), str(journal)
    else:
        storage, where = open_existing_storage(args.storage), mask_url(args.storage)  # messages show no password
    out = args.out or args.run_dir or Path("report")
    check_writable_dir(out, "--out")
    results = load_results(storage, args.suite)
    if results.empty:
        if args.suite:
            held = suites_in(storage)
            raise ConfigError(f"report: --suite {args.suite!r}: {where} holds no evaluation runs of it; "
                              f"suites there: {', '.join(held) or 'none'}")
        raise ConfigError(f"report: {where}: the store holds no evaluation runs; nothing to report")
    suites = sorted(results.runs["suite"].unique())
    report = write_report(results, out, title=f"tlbench report: {', '.join(suites)}",
                          strategy_order=builtin_order(STRATEGIES))
    print(report.path("table.md").read_text())
    console.print(f"wrote the report to {out} in {report.seconds:.1f} s: {written(report.files, out)}")
    return 0


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    """``tlbench check TARGET``: each property of the contract, pass or a one-line reason."""
    from tlbench.plugins import load_entry_points, load_plugin
    from tlbench.strategies import STRATEGIES, Strategy
    from tlbench.testing import check_strategy

    load_entry_points()
    target = args.target
    if target in STRATEGIES:
        classes: list[type[Strategy]] = [STRATEGIES.get(target)]
    else:
        entry, _, wanted = target.rpartition(":") if ":" in target else (target, "", "")
        plugin = load_plugin(entry, base=Path.cwd(), where=f"check {entry}")
        classes = [c for c in plugin.classes if issubclass(c, Strategy) and (not wanted or c.__name__ == wanted)]
        if not classes:
            found = ", ".join(c.__name__ for c in plugin.classes if issubclass(c, Strategy)) or "none"
            raise ConfigError(f"check {target}: no strategy class {wanted or ''} in {entry}; strategies there: "
                              f"{found}")
    failed = []
    for cls in classes:
        report = check_strategy(cls)
        print(report)
        if not report.ok:
            failed.append(f"{cls.__name__} fails {len(report.failed)} of {len(report.results)} checks "
                          f"({'; '.join(r.prop for r in report.failed)})")
    if failed:
        raise ConfigError(f"check {target}: " + "; ".join(failed))
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from tlbench.plugins import load_entry_points

    load_entry_points()
    if args.what == "strategies":
        from tlbench.strategies import STRATEGIES
        rows = [(name, cls.description) for name, cls in STRATEGIES]
    elif args.what == "backbones":
        from tlbench.backbones import BACKBONES
        rows = [(name, cls.description) for name, cls in BACKBONES]
    elif args.what == "datasets":
        from tlbench.suites.datasets import DATASETS
        rows = [(name, cls.description) for name, cls in DATASETS]
    else:
        from tlbench.suites import bundled_suites
        rows = [(name, str(path)) for name, path in bundled_suites().items()]
    width = max(len(r[0]) for r in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def command(args: argparse.Namespace, console: Console) -> int:
    """Runs the subcommand ``args`` names."""
    if args.command == "run":
        return cmd_run(args, console)
    if args.command == "report":
        return cmd_report(args, console)
    if args.command == "status":
        return cmd_status(args, console)
    if args.command == "check":
        return cmd_check(args, console)
    if args.command == "launch":
        from tlbench.launch import cmd_launch

        return cmd_launch(args, console)
    return cmd_list(args, console)


def main(argv: list[str] | None = None) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress display says what happens
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # -h, or a bad flag (one line already printed): a code, as from any refusal
        return done.code if isinstance(done.code, int) else 2
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = command(args, console)
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
        return code
    except TlbenchError as err:
        print(f"tlbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tlbench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tlbench status … | head -1`: the reader has what it wanted
        return closed_pipe()


def closed_pipe() -> int:
    """The reader of standard output went away: stop quietly with the status a process killed by SIGPIPE has,
    as other Unix tools do. Standard output is pointed at /dev/null so that the interpreter's final flush of what
    is still buffered does not fail with a second error at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
