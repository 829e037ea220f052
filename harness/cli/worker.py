"""One worker of a suite: the options ``tlbench run`` takes and ``tlbench launch`` passes on, and
everything checked before anything trains (:func:`prepare_run`: the suite, its data, the device,
the store, the output folder), shared by both so that a launch is refused exactly when each of its
workers would be; and the report a run writes at its end.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection

from rich.console import Console

from tlbench.core.errors import ConfigError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tlbench.data.imagecache import ImageCache
    from tlbench.run.plan import Plan
    from tlbench.suites.schema import Suite
    from tlbench.training.context import Runtime


#: The built-in strategies' names in the registry's order: each keeps its colour in every report,
#: whatever plugins are loaded (a plugin's colour comes after them). Written out, not read from the
#: registry, so that ``tlbench report`` does not import the strategies and PyTorch with them (1.7 s)
#: to read stored results; tests/test_registry.py keeps it equal to the registry's built-ins.
BUILTIN_STRATEGIES = ("adapter", "bitfit", "discriminative_lr", "distillation", "ensemble", "full_finetune",
                      "gradual_unfreeze", "l2_sp", "linear_probe", "lora", "lp_ft", "scratch", "ssf", "surgical",
                      "ulmfit", "vpt")


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
    from tlbench.data.imagecache import ImageCache, parse_size

    choice = getattr(args, "image_cache", "auto")
    if choice == "off":
        return None
    directory = cache_dir / "images" if choice == "auto" else Path(choice).expanduser()
    limit_text = getattr(args, "image_cache_limit", "auto")
    limit = None if limit_text == "auto" else parse_size(limit_text)
    return ImageCache(directory, limit=limit, device_share=getattr(args, "image_cache_device_share", 0.25),
                      verify=getattr(args, "image_cache_verify", "seal"), log=log)


#: ``--seeds-together``'s default: a cell's ten seeds as one vectorised model (benchmarks/test_bench_vectorised.py)
SEEDS_TOGETHER = 10
#: ``--trials-together``'s default (benchmarks/test_bench_vectorised.py)
TRIALS_TOGETHER = 10


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
        add("--tasks", help="comma-separated tasks of the suite to run (default: all); the cells are the whole "
                            "suite's, so the store is shared with full runs"),
        add("--backbones", help="comma-separated backbones of the suite to run on the selected tasks (default: "
                                "all)"),
        add("--set", action="append", default=None, metavar="PATH=VALUE", dest="overrides",
            help="set one field of the suite before it is validated, as YAML (repeatable): --set "
                 "training.batch_size=64, --set tasks.digits.split.shots=5"),
        add("--device", default="auto", metavar="auto|cpu|cuda", help="auto (default), cpu or cuda"),
        add("--precision", default="auto", metavar="auto|bf16|fp32", help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
        add("--channels-last", default="auto", metavar="auto|on|off", help="auto (on for CUDA), on or off: channels_last memory format "
                                                    "for image (4-D) inputs"),
        add("--compile", action="store_true", help="torch.compile the model each strategy trains"),
        add("--seeds-together", type=_at_least(int, 1, "a number of seeds"), default=SEEDS_TOGETHER, metavar="K",
            help=f"train up to K evaluation seeds of a cell side by side as one vectorised model (default "
                 f"{SEEDS_TOGETHER}; 1: one at a time); the same runs up to float rounding, for the strategies "
                 f"that declare it (full fine-tuning and the strategies built on its loop) on tensor inputs"),
        add("--trials-together", type=_at_least(int, 1, "a number of trials"), default=TRIALS_TOGETHER,
            metavar="K",
            help=f"train up to K tuning trials of a cell side by side as one vectorised model, each with its own "
                 f"optimizer, schedule and epochs (default {TRIALS_TOGETHER}; 1: one at a time): the trials whose "
                 f"configuration depends on no other trial's result (random, QMC and grid search; a model-based "
                 f"sampler's start-up trials while no trial can be pruned), for the same strategies as "
                 f"--seeds-together"),
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
        add("--image-cache-verify", choices=("seal", "full"), default="seal",
            help="seal (default): an entry whose digest was checked in full once is trusted while its seal "
                 "(size, inode, modification and change times, sampled blocks) holds; full: check every entry's "
                 "digest in full before its first read in this process"),
    ]


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


def open_named_store(command: str, run_dir: Path | None, url: str | None) -> tuple["BaseStorage", str]:
    """The existing store a reading command (``report``, ``export``) names: ``RUN_DIR/store.journal`` or
    ``--storage URL``, exactly one; returns it and how messages show it (a URL without its password)."""
    from tlbench.store.opening import mask_url, open_existing_storage

    if (run_dir is None) == (url is None):
        raise ConfigError(f"{command}: give a run directory or --storage URL (exactly one)")
    if run_dir is not None:
        journal = run_dir / "store.journal"
        if not journal.is_file():
            raise ConfigError(f"{command}: {run_dir}: no store there (expected {journal}); give the --out "
                              f"directory of a tlbench run, or --storage URL")
        return open_existing_storage(str(journal)), str(journal)
    return open_existing_storage(url), mask_url(url)


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
    from tlbench.core.paths import default_cache_dir
    from tlbench.run.plan import load_plan
    from tlbench.run.status import cell_plans
    from tlbench.run.study_attrs import check_plugin_code
    from tlbench.store.claims import check_compatible
    from tlbench.store.opening import open_storage
    from tlbench.store.progress import store_plan
    from tlbench.suites import resolve_suite_path
    from tlbench.suites.reading import plan_key, read_suite_file
    from tlbench.training.context import make_runtime

    strategies, tasks, backbones = names_of(args.strategies), names_of(args.tasks), names_of(args.backbones)
    cache_dir = args.cache_dir or default_cache_dir()
    path = resolve_suite_path(args.suite)
    overrides = tuple(args.overrides or ())
    shown = console or Console(stderr=True, highlight=False, soft_wrap=True)
    plan = None
    if getattr(args, "plan_file", None) is not None and not dry_run:  # a launch's worker: the launcher planned
        from tlbench.run.handoff import take_over

        plan, why = take_over(args.plan_file)
        if plan is None:
            warn(shown, f"{why}; this worker plans the suite itself")
    if plan is None:
        plan = load_plan(path, trials=args.trials, seeds=args.seeds, strategies=strategies, data_root=args.data_root,
                         cache_dir=cache_dir, dry_run=dry_run, tasks=tasks, backbones=backbones, overrides=overrides)
    images = image_cache_of(args, cache_dir, log=lambda line: shown.print(line, markup=False))
    if images is not None and (plan.missing or any(t.lazy for t in plan.tasks.values())):
        check_writable_dir(images.directory, "--image-cache")
    runtime = make_runtime(args.device, cache_dir, precision=args.precision, channels_last=args.channels_last,
                           compile=args.compile, workers=args.workers, images=images,
                           seeds_together=getattr(args, "seeds_together", SEEDS_TOGETHER),
                           trials_together=getattr(args, "trials_together", TRIALS_TOGETHER))
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
        check_compatible(storage, suite.name, suite.fingerprint(), where=suite.path,  # before any line is printed
                         settings=suite.settings())
        check_plugin_code(storage, plan, rerun_edited=getattr(args, "rerun_edited", False),
                          log=lambda line: console.print(line, markup=False))
        mark_store(out, args.storage)
        store_plan(storage, suite.name, plan_key(path, read_suite_file(path, overrides), trials=args.trials, seeds=args.seeds,
                                                 strategies=strategies, tasks=tasks, backbones=backbones),
                   cell_plans(plan))
    return Prepared(plan, runtime, out, cache_dir, storage)


def names_of(text: str | None) -> list[str] | None:
    """A comma-separated list of names from the command line (``--strategies a,b``); None when
    the flag was not given."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


#: In a run's output folder whose store is not its own ``store.journal``: which store its report and logs are of.
STORE_MARK = "store.txt"


def default_out(storage: str | None, suite: str) -> Path:
    """``--out`` when it is not given: the folder of the journal file ``--storage`` names (its report beside it),
    else ``runs/<suite name>``."""
    from tlbench.store.opening import journal_path

    path = journal_path(storage) if storage is not None else None
    return path.parent if path is not None else Path("runs") / suite


def check_out_is_this_stores(out: Path, storage: str | None) -> None:
    """Refuses an output folder that holds another store's results (its own ``store.journal``, or the mark
    :func:`mark_store` left), before anything is written: a report there would replace that store's tables
    with this one's, silently."""
    from tlbench.store.opening import store_label

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
    from tlbench.store.opening import store_label

    label = store_label(storage, out)
    if label != store_label(None, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / STORE_MARK).write_text(label + "\n")


def write_run_report(storage: "BaseStorage", suite: "Suite", out: Path, *, cells: Collection[tuple[str, str, str]],
                     seeds: Collection[int], figures: bool, console: Console) -> None:
    """The report of a run's cells and seeds (a store may hold more), its main table printed."""
    from tlbench.reports.build import write_report
    from tlbench.reports.results import load_results

    results = load_results(storage, suite.name, cells=cells, seeds=seeds, importances="later")
    if results.empty:
        raise ConfigError(f"{suite.path}: no cell produced an evaluation run (every tuning trial was pruned "
                          f"or failed); nothing to report")
    report = write_report(results, out, title=f"tlbench suite {suite.name}",  # same seed as tlbench report
                          strategy_order=BUILTIN_STRATEGIES, figures_too=figures)
    print(report.path("table.md").read_text())
    console.print(f"wrote the report to {out} in {report.seconds:.1f} s: {written(report.files, out)}")
