"""The ``tlbench`` command line: ``run`` a suite (or ``launch`` many workers of one), ``status`` of a
run, ``report`` on a store, ``check`` a strategy, ``list`` what is available. This module is the
parser and :func:`main`; each subcommand is in :mod:`tlbench.cli.commands` or
:mod:`tlbench.cli.launch`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from tlbench.cli.commands import cmd_check, cmd_list, cmd_report, cmd_run, cmd_status
from tlbench.cli.worker import add_worker_options
from tlbench.core.errors import TlbenchError

if TYPE_CHECKING:

    pass


class OneLineParser(argparse.ArgumentParser):
    """A subcommand's parser whose errors are one line and exit 2, like every other refusal of tlbench (argparse
    would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tlbench: error: {self.prog.removeprefix('tlbench ')}: {message} ({self.prog} -h lists "
                     f"the options)\n")


#: Two real invocations per subcommand, ending its --help (tests parse every one).
EXAMPLES: dict[str, tuple[str, str]] = {
    "run": ("tlbench run quick",
            "tlbench run my_suite.yaml --out runs/exp2 --strategies linear_probe,full_finetune --seeds 3"),
    "launch": ("tlbench launch quick --storage runs/quick/store.journal --jobs 2",
               "tlbench launch vtab1k --storage postgresql+psycopg2://me@db/tlbench --on slurm --jobs 16 "
               "--partition gpu --gpus-per-job 1 --report none"),
    "status": ("tlbench status quick",
               "tlbench status my_suite.yaml --storage runs/exp2/store.journal --json"),
    "report": ("tlbench report runs/quick",
               "tlbench report --storage postgresql+psycopg2://me@db/tlbench --suite vtab1k --out report"),
    "export": ("tlbench export runs/quick --to tensorboard runs/quick/tensorboard",
               "tlbench export --storage postgresql+psycopg2://me@db/tlbench --suite vtab1k --to mlflow "
               "http://mlflow.lab:5000"),
    "check": ("tlbench check examples/reinit/reinit.py:ReInit",
              "tlbench check resnet --args '{variant: resnet18}' --input-shape 3,224,224"),
    "compare": ("tlbench compare runs/quick runs/quick-wd",
                "tlbench compare before=runs/exp1 after=runs/exp2 --suite quick --out compare-wd"),
    "list": ("tlbench list suites", "tlbench list scorers"),
    "completion": ("tlbench completion bash", "tlbench completion zsh"),
}


def build_parser() -> argparse.ArgumentParser:
    from tlbench.cli.compare import add_compare_parser
    from tlbench.cli.export import add_export_parser
    from tlbench.cli.launch import add_launch_parser

    from tlbench.core.version import __version__

    parser = argparse.ArgumentParser(
        prog="tlbench", description="Benchmark transfer-learning strategies under equal tuning budgets: run a suite "
        "(or launch many workers of one), see its status, report on a store, compare stores, export to a tracker, "
        "check a plugin against its contract, list what is available. `tlbench COMMAND -h` for each command.")
    parser.add_argument("--version", action="version", version=f"tlbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = sub.add_parser("run", help="tune, evaluate and tabulate every cell of a suite")
    run.add_argument("suite", help="suite YAML file, or a bundled suite name (tlbench list suites)")
    run.add_argument("--storage", help="Optuna storage URL or journal file (default: <out>/store.journal)")
    add_worker_options(run)
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    # tlbench launch's workers: the plan the launcher checked (tlbench.run.handoff), read instead of planning again
    run.add_argument("--plan-file", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--rerun-edited", action="store_true",
                     help="a plugin strategy edited since its results were stored: move its old studies aside (kept "
                          "in the store, out of reports) and run its cells again; every other strategy's results "
                          "are reused")
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
    sta.add_argument("--tasks", help="the --tasks the workers were given, if any")
    sta.add_argument("--backbones", help="the --backbones the workers were given, if any")
    sta.add_argument("--set", action="append", default=None, metavar="PATH=VALUE", dest="overrides",
                     help="the --set overrides the workers were given, if any (repeatable)")
    sta.add_argument("--json", action="store_true",
                     help="print the same view as one JSON object (per cell: work done, held, left and its state; "
                          "the workers; model selection's scores), for scripts and dashboards")
    rep = sub.add_parser("report", help="tables, statistics, figures and report.html from a store (never trains)")
    rep.add_argument("run_dir", nargs="?", type=Path, help="a run's output directory (reads RUN_DIR/store.journal)")
    rep.add_argument("--storage", help="an Optuna storage URL or journal file instead of RUN_DIR")
    rep.add_argument("--out", type=Path, help="where to write the report (default: RUN_DIR, or ./report)")
    rep.add_argument("--suite", help="report this suite only (default: every suite in the store)")
    add_export_parser(sub)
    chk = sub.add_parser("check", help="check a strategy, backbone, dataset or scorer against its contract (exit 0: "
                                       "all pass)")
    chk.add_argument("target", help="FILE.py:Class, module:Class, FILE.py (every strategy, backbone, dataset and "
                                    "scorer it defines) or a registered name")
    chk.add_argument("--args", default=None, metavar="YAML",
                     help="a backbone's or dataset's arguments, as a suite's args: would give them "
                          "(e.g. '{variant: resnet18}'); default: its defaults")
    chk.add_argument("--input-shape", default=None, metavar="C,H,W",
                     help="a backbone's input, channels first (default: its example_input, else 3,32,32)")
    chk.add_argument("--data-root", type=Path, default=None,
                     help="where a dataset's files are (default: the current folder)")
    add_compare_parser(sub)
    lst = sub.add_parser("list", help="list strategies, backbones, datasets, scorers or suites")
    lst.add_argument("what", choices=["strategies", "backbones", "datasets", "scorers", "suites"])
    com = sub.add_parser("completion", help="print a shell completion script for tlbench, generated from this parser",
                         description="Prints a completion script: `tlbench completion bash > "
                                     "~/.local/share/bash-completion/completions/tlbench`, or in ~/.zshrc "
                                     "`source <(tlbench completion zsh)`.")
    com.add_argument("shell", choices=["bash", "zsh"])
    for name, subparser in sub.choices.items():
        subparser.formatter_class = argparse.RawDescriptionHelpFormatter
        subparser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    return parser


def command(args: argparse.Namespace, console: Console) -> int:
    """Runs the subcommand ``args`` names."""
    if args.command == "run":
        return cmd_run(args, console)
    if args.command == "report":
        return cmd_report(args, console)
    if args.command == "export":
        from tlbench.cli.export import cmd_export

        return cmd_export(args, console)
    if args.command == "status":
        return cmd_status(args, console)
    if args.command == "check":
        return cmd_check(args, console)
    if args.command == "compare":
        from tlbench.cli.compare import cmd_compare

        return cmd_compare(args, console)
    if args.command == "launch":
        from tlbench.cli.launch import cmd_launch

        return cmd_launch(args, console)
    if args.command == "completion":
        from tlbench.cli.completion import completion_script
        from tlbench.suites import bundled_suites

        print(completion_script(build_parser(), args.shell, list(bundled_suites())), end="")
        return 0
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
