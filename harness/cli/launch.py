"""``tlbench launch``: many workers of one suite on one shared store, started without writing scripts.

Every worker is an ordinary ``tlbench run SUITE --storage URL --report none``; the store decides who does what, so
the launcher only starts them, tells the user where they are and waits. Three ways to start them:

- ``--on local``: processes on this machine, each pinned to its own share of the CPU cores (or to one GPU), so N
  workers do not each start one torch thread per core and fight over them;
- ``--on slurm``: a Slurm array job through submitit; each job runs the worker in its own process and is
  re-queued when it is preempted or times out (the store resumes where it stopped);
- ``--on submitit-local``: the same submitit code path on this machine (how the Slurm path is tested without
  Slurm).

submitit is imported only by the last two, so ``--on local`` works without it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from rich.console import Console

from tlbench.cli.worker import Prepared, add_worker_options, prepare_run, write_run_report
from tlbench.core.errors import ConfigError

if TYPE_CHECKING:
    from submitit.core.utils import DelayedSubmission

ON = ("local", "slurm", "submitit-local")
#: Options only a submitit launch uses; --on local refuses them rather than ignore them.
SUBMITIT_ONLY = ("partition", "gpus_per_job", "cpus_per_job", "mem", "slurm_arg", "log_dir", "time")
LOCAL_ONLY = ("devices", "per_device")
#: A Slurm job's time limit when --time is not given (submitit's own default is 5 minutes).
DEFAULT_MINUTES = 240
#: How often a timed-out job is re-queued: each requeue resumes from the store, so this only bounds a job that can
#: never finish (submitit's default is 3).
MAX_REQUEUES = 50
#: Seconds between SIGTERM and SIGKILL when an attached launch is interrupted.
GRACE_SECONDS = 5.0
#: Lines of a failed worker's log shown under its summary.
TAIL_LINES = 12


def add_launch_parser(sub: Any) -> None:
    """``tlbench launch``: the worker options of ``tlbench run`` plus where and how many."""
    p = sub.add_parser("launch", help="start N workers of a suite on one shared store (this machine or Slurm)")
    p.add_argument("suite", help="suite YAML file, or a bundled suite name (tlbench list suites)")
    p.add_argument("--storage", required=True,
                   help="the store every worker shares: a database URL (postgresql+psycopg2://…) or a journal file")
    p.add_argument("--rerun-edited", action="store_true",
                   help="a plugin strategy edited since its results were stored: move its old studies aside (kept "
                        "in the store, out of reports) and run its cells again; every other strategy's results "
                        "are reused")
    p.add_argument("--jobs", type=int, help="how many workers (default with --devices: devices × --per-device)")
    p.add_argument("--on", choices=ON, default="local",
                   help="local (default): processes on this machine; slurm: a Slurm array job through submitit; "
                        "submitit-local: the submitit path on this machine")
    p.add_argument("--detach", action="store_true",
                   help="start the workers, say where they are and return at once (default: wait for them)")
    p.add_argument("--report", choices=["full", "tables", "none"], default="tables",
                   help="what to write once every worker succeeded: the report's tables (default), the full report "
                        "with figures, or nothing")
    add_worker_options(p)
    local = p.add_argument_group("--on local")
    local.add_argument("--devices", help="GPU indices (0,1,2,3): each worker sees one through CUDA_VISIBLE_DEVICES, "
                                         "round robin")
    local.add_argument("--per-device", type=int, help="workers per GPU (default 1)")
    slurm = p.add_argument_group("--on slurm / submitit-local")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--gpus-per-job", type=int, help="GPUs per job")
    slurm.add_argument("--cpus-per-job", type=int, help="CPU cores per job (also each worker's --threads)")
    slurm.add_argument("--time", type=int, help=f"time limit per job in minutes (default {DEFAULT_MINUTES}); a job "
                                                f"that reaches it is re-queued and resumes")
    slurm.add_argument("--mem", type=float, help="memory per job in GB")
    slurm.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option (account=…, qos=…, constraint=…); repeatable")
    slurm.add_argument("--log-dir", type=Path, help="submitit's job files and logs (default: <out>/slurm)")


# ------------------------------------------------------------------ who runs where


@dataclass(frozen=True)
class Slot:
    """One worker's place: its CPU cores, torch threads and GPU (a ``CUDA_VISIBLE_DEVICES`` value; None: no
    pinning)."""

    index: int
    cores: tuple[int, ...]
    threads: int
    device: str | None = None

    def where(self) -> str:
        gpu = f"GPU {self.device}, " if self.device is not None else ""
        return f"{gpu}cores {core_list(self.cores)} ({self.threads} thread{'s' if self.threads != 1 else ''})"


def core_list(cores: Sequence[int]) -> str:
    """``0-3,8,10-11``: a core set as ``taskset -c`` writes it."""
    runs: list[list[int]] = []
    for c in sorted(cores):
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def split_cores(cores: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """``cores`` in ``n`` disjoint, contiguous sets whose sizes differ by at most one (8 cores, 3 workers: 3, 3,
    2): neighbouring cores share caches."""
    ordered = sorted(cores)
    size, extra = divmod(len(ordered), n)
    sets, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        sets.append(tuple(ordered[start:end]))
        start = end
    return sets


def parse_devices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--devices {text!r}: give GPU indices separated by commas, e.g. 0,1,2,3")
    devices = [int(p) for p in parts]
    if len(set(devices)) != len(devices):
        raise ConfigError(f"--devices {text!r}: a GPU is listed twice; --per-device K puts K workers on each")
    return devices


def visible_gpus(devices: Sequence[int], text: str) -> dict[int, str]:
    """Each ``--devices`` index → the ``CUDA_VISIBLE_DEVICES`` value that shows a worker that GPU. Indices count
    the GPUs this process sees: under a scheduler that sets ``CUDA_VISIBLE_DEVICES`` (Slurm does), a job's own
    GPUs, so ``--devices 0,1`` in a job given GPUs 4 and 6 pins workers to 4 and 6. A GPU that does not exist is
    refused in one line."""
    import torch

    count = torch.cuda.device_count()
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown_mask = f" (CUDA_VISIBLE_DEVICES={mask})" if mask is not None else ""
    if count == 0:
        raise ConfigError(f"--devices {text}: CUDA sees no GPU here{shown_mask}; leave --devices out to run the "
                          f"workers on the CPU")
    missing = sorted(d for d in set(devices) if d >= count)
    if missing:
        seen = "0" if count == 1 else f"0-{count - 1}"
        raise ConfigError(f"--devices {text}: no GPU {', '.join(map(str, missing))}; CUDA sees {count} "
                          f"(indices {seen}){shown_mask}")
    ids = [v.strip() for v in (mask or "").split(",") if v.strip()]
    return {d: ids[d] if len(ids) >= count else str(d) for d in devices}


def assign_slots(jobs: int | None, cores: Sequence[int], *, devices: Sequence[int] | None = None,
                 per_device: int | None = None, threads: int | None = None) -> tuple[list[Slot], str | None]:
    """Each worker's cores, threads and GPU, and a line to print when the workers must share cores.

    Cores are split so that N workers on C cores each run ``C/N`` torch threads on their own cores (a worker
    per GPU too: its DataLoader workers and CPU work get their share). ``threads`` (the user's --threads) wins.
    """
    if per_device is not None and devices is None:
        raise ConfigError("--per-device K: give the GPUs with --devices (e.g. --devices 0,1 --per-device 2)")
    if per_device is not None and per_device < 1:
        raise ConfigError(f"--per-device {per_device}: give 1 or more workers per GPU")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: give a number of CPU threads >= 1")
    if devices is not None:
        capacity = len(devices) * (per_device or 1)
        n = capacity if jobs is None else jobs
        if n > capacity:
            raise ConfigError(f"--jobs {n}: more workers than --devices {','.join(map(str, devices))} × "
                              f"--per-device {per_device or 1} = {capacity} allow")
    elif jobs is None:
        raise ConfigError("--jobs N: say how many workers to start (or give --devices to start one per GPU)")
    else:
        n = jobs
    if n < 1:
        raise ConfigError(f"--jobs {n}: give 1 or more workers")
    note = None
    if n <= len(cores):
        sets = split_cores(cores, n)
    else:
        sets = [tuple(sorted(cores))] * n
        note = (f"{n} workers on {len(cores)} cores: they share the cores, {threads or 1} "
                f"thread{'s' if (threads or 1) != 1 else ''} each")
    return [Slot(i, sets[i], threads or (len(sets[i]) if note is None else 1),
                 None if devices is None else str(devices[i % len(devices)])) for i in range(n)], note


def available_cores() -> list[int]:
    """The cores this process may run on (a cgroup or taskset may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# ------------------------------------------------------------------ what each worker runs


def worker_argv(args: argparse.Namespace, out: Path, *, threads: int | None, plan: Path | None = None) -> list[str]:
    """``tlbench run``'s arguments for one worker: the suite, the shared store and out, every worker option the
    user gave (defaults left out, so the command line in a log says what was chosen), and the plan the launcher
    checked (:mod:`tlbench.run.handoff`), which the worker reads instead of planning again."""
    argv = ["run", args.suite, "--storage", args.storage, "--report", "none", "--out", str(out)]
    argv += ["--plan-file", str(plan)] if plan is not None else []
    for action in add_worker_options(argparse.ArgumentParser(add_help=False)):
        if action.dest in ("out", "threads"):
            continue
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if action.nargs == 0:
            argv += [flag] if value else []
        elif isinstance(value, list):  # a repeatable option (--set): each value again
            argv += [part for item in value for part in (flag, str(item))]
        elif value is not None and value != action.default:
            argv += [flag, str(value)]
    return argv + (["--threads", str(threads)] if threads is not None else [])


def shown(text: str) -> str:
    """``text`` with a database URL's password masked: launch lines and logs must not leak it."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]+@", r"\1:***@", text)


def say(console: Console, text: str) -> None:
    console.print(text, markup=False)  # paths and URLs may hold brackets


# ------------------------------------------------------------------ the command


def check_flags(args: argparse.Namespace) -> tuple[list[Slot], str | None]:
    """The launch's own flags, refused before the suite is read; for ``--on local`` each worker's slot and a line
    to print about them."""
    misplaced = [name for name in (LOCAL_ONLY if args.on != "local" else SUBMITIT_ONLY)
                 if getattr(args, name) not in (None, [])]
    if misplaced:
        flag = "--" + misplaced[0].replace("_", "-")
        where = "--on local" if misplaced[0] in LOCAL_ONLY else "--on slurm or submitit-local"
        raise ConfigError(f"{flag} applies to {where}, not --on {args.on}")
    if args.on == "local":
        devices = parse_devices(args.devices)
        slots, note = assign_slots(args.jobs, available_cores(), devices=devices, per_device=args.per_device,
                                   threads=args.threads)
        if devices is not None and args.device == "cpu":
            raise ConfigError(f"--devices {args.devices} pins workers to GPUs, but --device cpu runs them on CPU")
        if devices is not None:
            ids = visible_gpus(devices, args.devices)
            slots = [replace(s, device=ids[int(s.device)]) if s.device is not None else s for s in slots]
        if devices is None and args.device == "cuda" and len(slots) > 1:
            note = "; ".join(filter(None, [note, f"all {len(slots)} workers use the first GPU they see; "
                                                 f"--devices 0,1,… gives each its own"]))
        return slots, note
    if args.jobs is None:
        raise ConfigError(f"--jobs N: say how many jobs to submit to {args.on}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: give 1 or more jobs")
    for name in ("gpus_per_job", "cpus_per_job", "time", "mem"):
        value = getattr(args, name)
        if value is not None and (value < 0 if name == "gpus_per_job" else value <= 0):
            raise ConfigError(f"--{name.replace('_', '-')} {value:g}: give a positive number")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give a number of CPU threads >= 1")
    slurm_args(args.slurm_arg)
    return [], None


def cmd_launch(args: argparse.Namespace, console: Console) -> int:
    """Checks the flags, then the suite and store exactly as one worker would, then starts the workers and (unless
    detached) waits for them and writes the report."""
    from tlbench.run.handoff import hand_over

    slots, note = check_flags(args)
    prepared = prepare_run(args)
    plan_file = hand_over(prepared.plan, prepared.out / "workers")
    suite = prepared.plan.suite
    say(console, f"suite {suite.name}: {len(prepared.plan.cells)} cells, {suite.seeds} evaluation seeds; store "
                 f"{shown(args.storage)}, out {prepared.out}")
    if args.on == "local":
        if note:
            say(console, note)
        code = launch_local(args, prepared, slots, console, plan_file)
    else:
        code = launch_submitit(args, prepared, console, plan_file)
    if args.detach:
        return code  # the workers still read the plan file: it stays
    plan_file.unlink(missing_ok=True)  # every worker has ended; a worker started later plans for itself
    if code not in (0, 1):
        return code
    from tlbench.run.status import cell_plans
    from tlbench.store.opening import open_storage
    from tlbench.store.progress import evaluation_seed, run_status

    # Reopened: a database connection may have been idle for as long as the workers ran.
    storage = open_storage(args.storage, prepared.out)
    if code == 1:  # a worker died or failed: the others may still have finished the suite
        left = sum(c.left for c in run_status(storage, prepared.plan.suite.name, cell_plans(prepared.plan)))
        if left:
            say(console, f"{left} units of work are left; run the same command again to resume (the store keeps "
                         f"what the workers finished; a worker that failed by itself says why above)")
            return 1
        say(console, "the other workers finished the suite: every cell is done in the store"
                     + (", so its report is written" if args.report != "none" else ""))
    if args.report == "none":
        return 0
    write_run_report(storage, suite, prepared.out,
                     cells={(c.task, c.backbone, c.strategy) for c in prepared.plan.cells},
                     seeds={evaluation_seed(suite.seed, k) for k in range(suite.seeds)},
                     figures=args.report == "full", console=console)
    return 0


def follow_hint(args: argparse.Namespace) -> str:
    return f"follow them: tlbench status {shlex.quote(args.suite)} --storage {shlex.quote(shown(args.storage))}"


# ------------------------------------------------------------------ --on local


@dataclass
class Started:
    slot: Slot
    proc: subprocess.Popen[bytes]
    log: Path
    since: float
    offset: int = 0  # where this launch's part of the log begins (logs are appended to across launches)


@contextlib.contextmanager
def pinned(cores: Sequence[int]) -> Iterator[None]:
    """This thread restricted to ``cores`` while a child is started: the child inherits the mask at fork, so no
    ``preexec_fn`` runs in the child (unsafe once torch has started threads) and no taskset is needed."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_worker(slot: Slot, argv: list[str], log: Path, *, detach: bool) -> subprocess.Popen[bytes]:
    """One ``tlbench run`` process, its output appended to ``log`` after a line saying what was started."""
    env = {**os.environ, "OMP_NUM_THREADS": str(slot.threads), "MKL_NUM_THREADS": str(slot.threads),
           "PYTHONUNBUFFERED": "1"}
    if slot.device is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.device
    cmd = [sys.executable, "-m", "tlbench.cli", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink, pinned(slot.cores):
        sink.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} worker {slot.index} ({slot.where()}): "
                   f"{shown(shlex.join(cmd))}\n".encode())
        sink.flush()
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=detach)


def launch_local(args: argparse.Namespace, prepared: Prepared, slots: list[Slot], console: Console,
                 plan_file: Path | None = None) -> int:
    logs = prepared.out / "workers"
    started: list[Started] = []
    try:
        for slot in slots:
            log = logs / f"worker-{slot.index}.log"
            offset = log.stat().st_size if log.is_file() else 0
            argv = worker_argv(args, prepared.out, threads=slot.threads, plan=plan_file)
            proc = start_worker(slot, argv, log, detach=args.detach)
            started.append(Started(slot, proc, log, time.monotonic(), offset))
            # The kernel's answer, not the plan: what the worker really runs on.
            cores = sorted(os.sched_getaffinity(proc.pid)) if hasattr(os, "sched_getaffinity") else slot.cores
            say(console, f"worker {slot.index}: pid {proc.pid}, "
                         f"{Slot(slot.index, tuple(cores), slot.threads, slot.device).where()}, log {log}")
    except KeyboardInterrupt:
        return interrupted(started, console)
    if args.detach:
        say(console, f"{len(started)} workers started in the background; {follow_hint(args)}"
                     f"; logs in {logs}; stop them with kill {' '.join(str(s.proc.pid) for s in started)}")
        return 0
    return watch(started, console)


def watch(started: list[Started], console: Console) -> int:
    """Waits for every worker, one line as each ends (and the end of its log if it failed)."""
    pending, failed = list(started), 0
    try:
        while pending:
            for s in [s for s in pending if s.proc.poll() is not None]:
                pending.remove(s)
                code, took = s.proc.returncode, time.monotonic() - s.since
                if code == 0:
                    say(console, f"worker {s.slot.index} (pid {s.proc.pid}) finished: exit 0 after {took:.1f} s")
                    continue
                failed += 1
                say(console, f"worker {s.slot.index} (pid {s.proc.pid}) failed: exit {code} after {took:.1f} s; "
                             f"the end of {s.log}:")
                for line in tail(s.log, TAIL_LINES, offset=s.offset):
                    say(console, f"    {line}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        return interrupted(pending, console)
    if failed:
        say(console, f"{failed} of {len(started)} workers failed")
        return 1
    say(console, f"all {len(started)} workers finished")
    return 0


def interrupted(running: list[Started], console: Console) -> int:
    """Ctrl-C: SIGTERM to the workers still running, SIGKILL to those alive after the grace period."""
    alive = [s for s in running if s.proc.poll() is None]
    for s in alive:
        with contextlib.suppress(ProcessLookupError):
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for s in alive:
        try:
            s.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
    say(console, f"interrupted: stopped {len(alive)} worker{'s' if len(alive) != 1 else ''}; run the same command "
                 f"again to resume (finished trials and runs are kept)")
    return 130


def tail(path: Path, n: int, *, offset: int = 0) -> list[str]:
    """The last ``n`` lines of ``path`` written after byte ``offset`` (this launch's part of an appended log)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


# ------------------------------------------------------------------ --on slurm / submitit-local


class Worker:
    """One worker as a submitit job: ``tlbench run`` as a child of the job's process, exactly as a local
    worker is started (the launcher is not imported into itself).

    submitit re-queues a job on preemption or timeout when its callable has a ``checkpoint`` method (the protocol
    of ``submitit.helpers.Checkpointable``, written out here so that importing this module needs no submitit).
    The checkpoint is the same call again: the store resumes, so nothing but the arguments needs saving.
    """

    def __init__(self, argv: list[str], index: int, threads: int | None = None) -> None:
        self.argv, self.index, self.threads = list(argv), index, threads

    def __call__(self) -> int:
        env = dict(os.environ)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        code = subprocess.call([sys.executable, "-m", "tlbench.cli", *self.argv], env=env)
        if code != 0:  # a failed job, not a job that returned a number
            raise RuntimeError(f"worker {self.index}: tlbench {shown(shlex.join(self.argv))} exited {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> "DelayedSubmission":
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(Worker(self.argv, self.index, self.threads), *args, **kwargs)


def slurm_args(pairs: Sequence[str]) -> dict[str, str]:
    """``--slurm-arg KEY=VALUE`` → sbatch's ``--KEY=VALUE`` (submitit's ``slurm_additional_parameters``)."""
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key.strip()):
            raise ConfigError(f"--slurm-arg {pair!r}: give KEY=VALUE (an sbatch option without its dashes, "
                              f"e.g. account=proj or qos=high)")
        found[key.strip()] = value
    return found


def executor_parameters(args: argparse.Namespace, suite: str, jobs: int) -> dict[str, Any]:
    """``update_parameters`` for submitit's AutoExecutor: the generic names where submitit has them (each cluster
    translates them), ``slurm_*`` for the rest (ignored by the local executor)."""
    params: dict[str, Any] = {"name": f"tlbench-{suite}", "timeout_min": args.time or DEFAULT_MINUTES,
                              "slurm_array_parallelism": jobs}
    for flag, key in (("gpus_per_job", "gpus_per_node"), ("cpus_per_job", "cpus_per_task"), ("mem", "mem_gb"),
                      ("partition", "slurm_partition")):
        if getattr(args, flag) is not None:
            params[key] = getattr(args, flag)
    extra = slurm_args(args.slurm_arg)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def launch_submitit(args: argparse.Namespace, prepared: Prepared, console: Console,
                    plan_file: Path | None = None) -> int:
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--on {args.on} needs submitit: pip install 'tlbench[slurm]'") from None
    suite = prepared.plan.suite.name
    log_dir = args.log_dir or prepared.out / "slurm"
    cluster = "slurm" if args.on == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=log_dir, cluster=cluster, slurm_max_num_timeout=MAX_REQUEUES,
                                         local_max_num_timeout=MAX_REQUEUES)
        executor.update_parameters(**executor_parameters(args, suite, args.jobs))
    except RuntimeError as err:  # no srun on PATH
        raise ConfigError(f"--on {args.on}: {err} (--on local starts the workers on this machine)") from None
    # Jobs on one machine share its cores; on Slurm a job has its --cpus-per-job.
    threads = args.threads or (args.cpus_per_job if args.on == "slurm" else
                               max(1, len(available_cores()) // args.jobs))
    argv = worker_argv(args, prepared.out, threads=threads, plan=plan_file)
    workers = [Worker(argv, i, threads) for i in range(args.jobs)]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # submitit prints sbatch's complaint itself: one line here instead
            jobs = executor.submit_array(workers)
    except RuntimeError as err:  # sbatch refused (a partition, account or limit it does not know)
        why = (str(err).strip() or said.getvalue().strip() or type(err).__name__).splitlines()[-1]
        raise ConfigError(f"--on {args.on}: the submission was refused: {why}") from None
    ids = [job.job_id for job in jobs]
    array = ids[0].split("_")[0] if "_" in ids[0] else None
    say(console, f"submitted {len(jobs)} job{'s' if len(jobs) != 1 else ''} "
                 + (f"(array {array}) " if array else "") + f"to {cluster}: {' '.join(ids)}; logs in {log_dir}")
    if args.detach:
        stop = f"scancel {array or ' '.join(ids)}" if cluster == "slurm" else f"kill {' '.join(ids)}"
        say(console, f"{follow_hint(args)}; stop them with {stop}")
        return 0
    return watch_jobs(jobs, console)


def watch_jobs(jobs: list[Any], console: Console) -> int:
    """Waits for submitit jobs (their state polled; Slurm's through sacct), one line as each ends."""
    pending, failed = list(enumerate(jobs)), 0
    try:
        while pending:
            for i, job in [(i, j) for i, j in pending if j.done()]:
                pending.remove((i, job))
                error = job.exception()
                if error is None:
                    say(console, f"job {job.job_id} (worker {i}) finished: exit 0")
                    continue
                failed += 1
                say(console, f"job {job.job_id} (worker {i}) failed ({job.state}); the end of its log "
                             f"{job.paths.stderr}:")
                for line in (job.stderr() or str(error)).splitlines()[-TAIL_LINES:]:
                    say(console, f"    {line}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        for _, job in pending:
            with contextlib.suppress(Exception):  # a job that ended meanwhile
                job.cancel(check=False)
        say(console, f"interrupted: cancelled {len(pending)} job{'s' if len(pending) != 1 else ''}; run the same "
                     f"command again to resume (finished trials and runs are kept)")
        return 130
    if failed:
        say(console, f"{failed} of {len(jobs)} jobs failed")
        return 1
    say(console, f"all {len(jobs)} jobs finished")
    return 0
