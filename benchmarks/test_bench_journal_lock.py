"""What tlbench's journal costs against Optuna's own, side by side in one run: Optuna's file backend
with its symlink lock, against tlbench's (the same file format; every line checked as it is read,
a cut-off last line looked for before each append, and the write lock of tlbench.store.lock:
flock, then the same link, with an owner record).

Each case creates a study in a fresh journal and runs trials as a tuning slot writes them (ask, two
user attributes, three intermediate values, tell): one process alone, then two processes on one
journal at once. Prints milliseconds per trial and the ratio; the lock is taken once per write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TRIALS = 300

WRITER = """\
import sys, time
from pathlib import Path
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
kind, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "optuna":
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(path))
else:
    from tlbench.store.opening import open_storage
    storage = open_storage("journal:" + path, Path("."))
study = optuna.create_study(study_name="bench", storage=storage, load_if_exists=True)
start = time.perf_counter()
for i in range(n):
    trial = study.ask()
    trial.set_user_attr("worker", "bench")
    trial.set_user_attr("slot", i)
    for epoch in range(3):
        trial.report(0.1 * epoch, epoch)
    study.tell(trial, 0.5)
print(time.perf_counter() - start)
"""


def _per_trial_ms(kind: str, folder: Path, processes: int) -> float:
    """Wall milliseconds per trial of ``processes`` writers on one fresh journal (the slowest writer's time
    over all trials written)."""
    folder.mkdir(parents=True)
    path = folder / "store.journal"
    subprocess.run([sys.executable, "-c", WRITER, kind, str(path), "0"], check=True, capture_output=True)  # the study
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, kind, str(path), str(TRIALS)], stdout=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    seconds = [float(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return 1000 * max(seconds) / (TRIALS * processes)


def test_journal_lock_cost(tmp_path: Path) -> None:
    rows = []
    for processes in (1, 2):
        for repeat in range(3):
            optuna_ms = _per_trial_ms("optuna", tmp_path / f"optuna-{processes}-{repeat}", processes)
            tlbench_ms = _per_trial_ms("tlbench", tmp_path / f"tlbench-{processes}-{repeat}", processes)
            rows.append((processes, optuna_ms, tlbench_ms))
    print(f"\njournal writes, {TRIALS} trials per process (ask, 2 user attributes, 3 reports, tell), ms per trial:")
    print(f"{'processes':>9}  {'Optuna lock':>11}  {'tlbench lock':>12}  {'ratio':>5}")
    for processes, optuna_ms, tlbench_ms in rows:
        print(f"{processes:>9}  {optuna_ms:>11.2f}  {tlbench_ms:>12.2f}  {tlbench_ms / optuna_ms:>5.2f}")
