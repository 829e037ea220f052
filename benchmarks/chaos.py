"""Chaos test: many workers on one store, killed with ``kill -9`` at random, must leave exactly
the records of one uninterrupted worker.

    python benchmarks/chaos.py [--storage journal|postgres] [--workers 3] [--kills 10]
                               [--interval 3] [--remote] [--lock-kills K] [--suite FILE]

1. A reference: one worker runs the suite, uninterrupted, into its own journal store.
2. ``--workers`` W workers (``tlbench run … --report none``) share one store (a journal file, or
   a private PostgreSQL server started for the run). Every ``--interval`` seconds or so a random
   live worker is killed with SIGKILL and a fresh one started in its place, ``--kills`` K times;
   then the workers finish. With ``--remote`` worker 0 stamps its trials with another host name
   (``TLBENCH_HOST``), so the others cannot see its process and must rely on the database's
   heartbeat: it is killed once while it holds a tuning trial and once while it holds an
   evaluation run. On a journal the workers name the store by a relative path, as the docs'
   commands do, and ``--lock-kills`` K of the kills hit a worker while it holds the journal's write
   lock: the lock's owner record is watched, its holder stopped (SIGSTOP), and killed if the record
   still says it holds the lock, else let go on (SIGCONT) and the next holder tried.
3. The store is compared with the reference: records expected / got / missing / duplicated /
   different, tuned parameters, trials left RUNNING or WAITING, tuning budget overshoot, failed
   trials (and claims lost in races, which never ran), wall times.

Every worker and the reference run with ``--threads 1``: torch's CPU kernels may round
differently with another number of threads, and the comparison is bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

ROOT = Path(__file__).resolve().parent.parent
REMOTE_HOST = "chaos-remote-host"
#: A small suite: one task and backbone, reused models (distillation's teacher; with
#: ``ensemble`` among the strategies, members beyond the evaluation seeds, trained in blocks),
#: start-up slots that run in parallel, later slots that wait for them.
SUITE_TEMPLATE = """\
name: chaos
seed: 0
trials: {trials}
seeds: {seeds}
strategies: [{strategies}]
strategy_options:
  distillation: {{student: {{signal-cnn: signal-cnn-small}}, teacher: full_finetune}}
  ensemble: {{members: [full_finetune], size: 2}}
training: {{epochs: [{epochs[0]}, {epochs[1]}], batch_size: 16}}
search: {{sampler_startup_trials: 2, pruner_startup_trials: 2, pruner_warmup_epochs: 1}}
source_tasks:
  mnist1d-source: {{dataset: mnist1d, args: {{num_samples: 1000, seed: 42}}}}
backbones:
  signal-cnn:
    arch: cnn1d
    args: {{width: 8, depth: 3}}
    pretrain: {{task: mnist1d-source, epochs: 2, batch_size: 128, lr: 0.003}}
  signal-cnn-small:
    arch: cnn1d
    args: {{width: 4, depth: 3}}
    pretrain: {{task: mnist1d-source, epochs: 2, batch_size: 128, lr: 0.003}}
tasks:
  mnist1d-shifted:
    dataset: mnist1d
    args: {{num_samples: 1000, seed: 7, shear_scale: 1.5, scale_coeff: 0.6, iid_noise_scale: 0.1}}
    split: {{seed: 0, shots: 20, val_per_class: 10}}
    shift: {{kind: noise, severity: 0.5}}
    backbones: [signal-cnn]
"""


def suite_text(*, trials: int = 6, seeds: int = 4, epochs: tuple[int, int] = (15, 30),
               strategies: tuple[str, ...] = ("linear_probe", "full_finetune", "l2_sp", "distillation")) -> str:
    """The chaos suite (the benchmark's by default; the tests' smaller copy with other sizes)."""
    return SUITE_TEMPLATE.format(trials=trials, seeds=seeds, epochs=epochs, strategies=", ".join(strategies))


DEFAULT_SUITE = suite_text()


@dataclass
class Outcome:
    """What the chaos run left in the store, against the reference."""

    expected: int = 0
    got: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    params_different: list[str] = field(default_factory=list)
    left_running: int = 0
    left_waiting: int = 0
    overshoot: int = 0
    failed: int = 0
    claims_lost: int = 0
    kills: list[str] = field(default_factory=list)
    worker_errors: list[str] = field(default_factory=list)
    reference_s: float = 0.0
    chaos_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.different or self.params_different or self.left_running
                    or self.left_waiting or self.overshoot or self.worker_errors) and self.got == self.expected

    def lines(self) -> list[str]:
        return [
            f"records expected {self.expected}, got {self.got}; missing {len(self.missing)}, duplicated "
            f"{len(self.duplicated)}, different {len(self.different)}; tuned parameters different "
            f"{len(self.params_different)}",
            f"trials left RUNNING {self.left_running}, WAITING {self.left_waiting}; tuning budget overshoot "
            f"{self.overshoot}; FAIL {self.failed} (killed or failed work) + {self.claims_lost} claims lost in races",
            f"kills {len(self.kills)}: {', '.join(self.kills)}",
            f"wall time: reference (1 worker) {self.reference_s:.1f} s, chaos {self.chaos_s:.1f} s",
            *(f"worker error: {e}" for e in self.worker_errors),
            *(f"missing: {k}" for k in self.missing[:5]), *(f"duplicated: {k}" for k in self.duplicated[:5]),
            *(f"different: {k}" for k in self.different[:5]), *(f"params: {k}" for k in self.params_different[:5]),
            "PASS" if self.ok else "FAIL",
        ]


def worker_command(suite: Path, storage: str, out: Path, cache: Path, heartbeat: float,
                   seeds_together: int | None = None) -> list[str]:
    return [sys.executable, "-m", "tlbench.cli", "run", str(suite), "--storage", storage, "--out", str(out),
            "--report", "none", "--threads", "1", "--cache-dir", str(cache), "--heartbeat", str(heartbeat),
            *(["--seeds-together", str(seeds_together)] if seeds_together else [])]


class Workers:
    """W worker processes; a killed one is replaced by a fresh one in the same place (the
    same host name for the simulated remote worker)."""

    def __init__(self, command: list[str], n: int, logs: Path, *, remote: bool, cwd: Path | None = None) -> None:
        self.command, self.logs, self.remote, self.cwd = command, logs, remote, cwd
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.started = 0
        self.errors: list[str] = []
        for i in range(n):
            self.start(i)

    def start(self, i: int) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.remote and i == 0:
            env["TLBENCH_HOST"] = REMOTE_HOST
        self.started += 1
        log = open(self.logs / f"worker-{i}-{self.started}.log", "w")
        self.procs[i] = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.start(i)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                self.errors.append(f"pid {proc.pid} did not finish within {timeout:.0f} s")
            if proc.returncode not in (0, -signal.SIGKILL):
                self.errors.append(f"pid {proc.pid} exited {proc.returncode} (see {self.logs})")


def holders(storage: "BaseStorage") -> dict[int, set[str]]:
    """pid → the kinds of study (tune, eval, sens) in which that worker holds a RUNNING trial."""
    import optuna
    from optuna.trial import TrialState

    held: dict[int, set[str]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                pid = int(t.user_attrs.get("worker", "").rsplit(":", 2)[1])
            except (IndexError, ValueError):
                continue
            held.setdefault(pid, set()).add(summary.study_name.rsplit("::", 1)[-1])
    return held


def kill_lock_holder(workers: Workers, owner: Path, *, within: float) -> str | None:
    """Kills a worker while it holds the journal's write lock (``owner``: the lock's owner record);
    what was killed, or None when no worker was caught holding it within ``within`` seconds. A
    worker named by the record is stopped first, so the record read after stopping it is the truth
    at the moment of the kill. A kill is labelled ``held`` only when the worker's link is still
    there (it leaves a lock the next writer removes, saying so); ``released`` when the worker had
    already dropped its link and not yet cleared its record (it leaves nothing to remove)."""
    from tlbench.store.lock import link_identity, read_record

    pids = {p.pid: i for i, p in enumerate(workers.procs) if p is not None and p.poll() is None}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        record = read_record(owner)
        try:
            pid = int(record["worker"].rsplit(":", 2)[1]) if record else None
        except (KeyError, IndexError, ValueError):
            pid = None
        if pid not in pids or record.get("phase") not in ("linking", "held"):  # type: ignore[union-attr]
            time.sleep(0.001)
            continue
        os.kill(pid, signal.SIGSTOP)
        again = read_record(owner)
        if again is not None and again.get("worker") == record["worker"] and again.get("phase") in ("linking",
                                                                                                     "held"):
            phase = again["phase"]
            # a holder stopped between dropping its link and clearing its record leaves no link behind
            if phase == "held" and link_identity(owner.with_name(owner.name.removesuffix(".owner"))) != tuple(
                    again.get("link") or ()):
                phase = "released"
            workers.kill(pids[pid])
            return f"w{pids[pid]} (journal lock, {phase})"
        os.kill(pid, signal.SIGCONT)  # it let go meanwhile
    return None


def unleash(workers: Workers, storage_url: str, *, kills: int, interval: float, rng: random.Random,
            lock_kills: int = 0, owner: Path | None = None) -> list[str]:
    """K kills of random live workers every ``interval`` seconds or so, preferring workers that
    hold work at that moment (waiting up to 3 intervals for one: a kill while a worker still
    imports tests little). The first ``lock_kills`` of them hit a worker that holds the journal's
    write lock (``owner``: its owner record; :func:`kill_lock_holder`). A remote worker
    is spared by those until it has been killed once while it holds a tuning trial and once
    while it holds an evaluation run: it is watched, and killed the moment it does."""
    from tlbench.store.opening import open_storage

    storage = open_storage(storage_url, Path("."))  # opened once: it is read every 0.2 s
    done: list[str] = []
    need = ["tune", "eval"] if workers.remote else []
    next_kill = time.monotonic() + interval * rng.uniform(0.5, 1.5)
    while len(done) < kills:
        time.sleep(0.2)
        alive = workers.alive()
        if not alive:
            break
        if owner is not None and sum("journal lock" in d for d in done) < lock_kills:
            if time.monotonic() >= next_kill:
                hit = kill_lock_holder(workers, owner, within=3 * interval)
                if hit is not None:
                    done.append(hit)
                next_kill = time.monotonic() + interval * rng.uniform(0.5, 1.5)
            continue
        held = holders(storage)
        remote = workers.procs[0] if workers.remote else None
        if need and remote is not None and remote.poll() is None:
            hit = next((kind for kind in need if kind in held.get(remote.pid, ())), None)
            if hit is not None:
                need.remove(hit)
                workers.kill(0)
                done.append(f"w0@{REMOTE_HOST} ({hit})")
                next_kill = time.monotonic() + interval * rng.uniform(0.5, 1.5)
                continue
        if time.monotonic() < next_kill or len(done) >= kills - len(need):  # the last kills are the remote's
            continue
        candidates = [i for i in alive if not (need and workers.remote and i == 0)]
        busy = [i for i in candidates if workers.procs[i].pid in held]  # type: ignore[union-attr]
        if not busy and time.monotonic() < next_kill + 3 * interval:
            continue  # wait a little for a worker that holds work
        if not candidates:
            continue
        victim = rng.choice(busy or candidates)
        what = "/".join(sorted(held.get(workers.procs[victim].pid, ()))) or "nothing yet"  # type: ignore[union-attr]
        workers.kill(victim)
        done.append(f"w{victim}" + (f"@{REMOTE_HOST}" if workers.remote and victim == 0 else "") + f" ({what})")
        next_kill = time.monotonic() + interval * rng.uniform(0.5, 1.5)
    return done


def compare(reference: str, chaos: str, suite: str) -> Outcome:
    import optuna
    from optuna.trial import TrialState

    from tlbench.store.claims import lost_claim
    from tlbench.store.opening import open_storage
    from tlbench.store.progress import slot_of
    from tlbench.store.records import StudyName, load_runs, read_protocol

    out = Outcome()
    ref_store, chaos_store = open_storage(reference, Path(".")), open_storage(chaos, Path("."))
    keys = ["task", "backbone", "strategy", "seed"]
    ref, got = load_runs(ref_store, suite), load_runs(chaos_store, suite)
    out.expected, out.got = len(ref), len(got)
    ref_rows = {tuple(r[k] for k in keys): r for r in ref.to_dict("records")}
    got_rows = {tuple(r[k] for k in keys): r for r in got.to_dict("records")}
    out.missing = [str(k) for k in ref_rows if k not in got_rows]
    columns = ("params", "test_accuracy", "val_accuracy", "shifted_test_accuracy", "tuning_best_val_accuracy",
               "tuning_best_trial_seed")
    for key, row in ref_rows.items():
        if key in got_rows:
            diff = [c for c in columns if json.dumps(row.get(c), sort_keys=True, default=str)
                    != json.dumps(got_rows[key].get(c), sort_keys=True, default=str)]
            if diff:
                out.different.append(f"{key}: {', '.join(diff)}")
    budgets: dict[str, int] = {}
    for summary in optuna.get_all_study_summaries(ref_store, include_best_trial=False):
        name = StudyName.parse(summary.study_name)
        if name is not None and name.kind == "tune":
            budgets[summary.study_name] = read_protocol(summary.user_attrs, where=summary.study_name).budget.cap
    ref_params = {s.study_name: s.user_attrs.get("params")
                  for s in optuna.get_all_study_summaries(ref_store, include_best_trial=False)}
    for summary in optuna.get_all_study_summaries(chaos_store, include_best_trial=False):
        name = StudyName.parse(summary.study_name)
        if name is None:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=chaos_store)
        trials = study.get_trials(deepcopy=False)
        out.left_running += sum(t.state == TrialState.RUNNING for t in trials)
        out.left_waiting += sum(t.state == TrialState.WAITING for t in trials)
        out.claims_lost += sum(lost_claim(t) for t in trials)
        out.failed += sum(t.state == TrialState.FAIL and not lost_claim(t) for t in trials)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if name.kind == "tune":
            slots = [slot_of(t) for t in finished]
            out.overshoot += sum(s is not None and s >= budgets.get(summary.study_name, 0) for s in slots)
            out.duplicated += [f"{summary.study_name} slot {s}" for s in set(slots) if slots.count(s) > 1]
        else:
            runs = [json.dumps([t.user_attrs.get("params"), t.user_attrs.get("seed")], sort_keys=True, default=str)
                    for t in finished]
            out.duplicated += [f"{summary.study_name} {r}" for r in set(runs) if runs.count(r) > 1]
        if name.kind == "eval" and summary.user_attrs.get("params") != ref_params.get(summary.study_name):
            out.params_different.append(summary.study_name)
    return out


@contextlib.contextmanager
def store(kind: str, folder: Path) -> Iterator[str]:
    """A fresh store of ``kind``: a journal file in ``folder``, a private PostgreSQL server for the
    run, or the database URL given."""
    if "://" in kind:
        yield kind
        return
    if kind == "journal":
        yield f"journal:{folder / 'store' / 'chaos.journal'}"
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import private_postgres, require_bindir

    with private_postgres(require_bindir()) as server:
        yield server.url


def run(*, storage: str = "journal", workers: int = 3, kills: int = 10, interval: float = 3.0, remote: bool = False,
        suite: Path | None = None, folder: Path | None = None, cache: Path | None = None, heartbeat: float = 1.0,
        seed: int = 0, lock_kills: int = 0, seeds_together: int | None = None, log=print) -> Outcome:
    """The whole chaos test; returns what it found (``Outcome.ok``: nothing lost or doubled,
    everything equal to the uninterrupted run). ``storage``: journal, postgres (a private server
    started for the run) or the URL of an empty database. A journal is named by its path relative
    to the workers' folder, and ``lock_kills`` of the kills hit the holder of its write lock.
    ``seeds_together``: the workers' ``--seeds-together`` (default: theirs)."""
    folder = (folder or Path(tempfile.mkdtemp(prefix="tlbench-chaos-"))).resolve()  # workers start in it
    folder.mkdir(parents=True, exist_ok=True)
    cache = (cache or folder / "cache").resolve()
    if suite is None:
        suite = folder / "chaos.yaml"
        suite.write_text(DEFAULT_SUITE)
    suite = suite.resolve()
    from tlbench.run.plan import load_plan

    name = load_plan(suite, dry_run=True, cache_dir=cache).suite.name
    reference = f"journal:{folder / 'reference.journal'}"
    start = time.perf_counter()
    ref = subprocess.run(worker_command(suite, reference, folder / "reference", cache, heartbeat, seeds_together),
                         capture_output=True, text=True)
    if ref.returncode != 0:
        raise RuntimeError(f"the reference run failed:\n{ref.stdout[-2000:]}\n{ref.stderr[-2000:]}")
    reference_s = time.perf_counter() - start
    log(f"reference run: {reference_s:.1f} s")
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    with store(storage, folder) as url:
        start = time.perf_counter()
        given, owner = url, None
        if url.startswith("journal:"):  # as the docs' commands name a store: relative to where workers start
            journal = Path(url.removeprefix("journal:"))
            given, owner = str(journal.relative_to(folder)), journal.with_name(journal.name + ".lock.owner")
        command = worker_command(suite, given, Path("chaos"), cache, heartbeat, seeds_together)
        crew = Workers(command, workers, logs, remote=remote, cwd=folder)
        done = unleash(crew, url, kills=kills, interval=interval, rng=random.Random(seed), lock_kills=lock_kills,
                       owner=owner)
        crew.wait(timeout=600)
        chaos_s = time.perf_counter() - start
        outcome = compare(reference, url, name)
    outcome.kills, outcome.worker_errors = done, crew.errors
    outcome.reference_s, outcome.chaos_s = reference_s, chaos_s
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=["journal", "postgres"], default="journal")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between kills, on average")
    parser.add_argument("--remote", action="store_true", help="worker 0 on a simulated other host (PostgreSQL)")
    parser.add_argument("--lock-kills", type=int, default=0,
                        help="journal: how many of the kills hit a worker while it holds the journal's write lock")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval of database stores, s")
    parser.add_argument("--suite", type=Path, help="suite file (default: a small copy of the smoke suite)")
    parser.add_argument("--folder", type=Path, help="where stores, logs and caches go (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--seeds-together", type=int, help="the workers' --seeds-together (default: theirs)")
    args = parser.parse_args(argv)
    outcome = run(storage=args.storage, workers=args.workers, kills=args.kills, interval=args.interval,
                  remote=args.remote, suite=args.suite, folder=args.folder, heartbeat=args.heartbeat, seed=args.seed,
                  lock_kills=args.lock_kills, seeds_together=args.seeds_together)
    for line in outcome.lines():
        print(line)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
