"""A checked plan handed from ``tlbench launch`` to the workers it starts.

Planning a suite (parsing it, building every task's data, checking shapes and search spaces) costs
seconds to tens of seconds (the quick suite: about 10 s, most of it generating MNIST-1D and rendering
glyphs), and before this module every worker of a launch planned again what the launcher had just
planned and checked. The launcher now writes its :class:`~tlbench.run.plan.Plan` once (:func:`hand_over`)
and each worker reads it (:func:`take_over`) instead of re-planning.

The file is the launcher's to write and its workers' to read, in the run's output folder, which is
as trusted as the code (it is a pickle); an attached launch removes it once its workers have ended,
a detached one leaves it to them. It is named by its content, written atomically, and carries
the code version it was written under: a worker whose code differs (a Slurm job re-queued after an
upgrade) or that cannot read it plans for itself, as a lone ``tlbench run`` does, and says so in one
line. The plugins the suite loads are loaded before the plan is read (a file plugin's classes live
in a module only loading it creates).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

from tlbench.core.atomic import replacing
from tlbench.core.codeversion import code_version
from tlbench.run.plan import Plan
from tlbench.run.plugins import load_entry_points, load_suite_plugins

#: Bumped when the file's layout changes.
FORMAT = 1


@dataclass(frozen=True)
class Handed:
    """What a handed plan file holds: the plan pickled on its own, and what reading it needs first."""

    format: int
    code: str  # :func:`code_version` where the plan was made (plugins included)
    plugins: tuple[str, ...]
    base: str  # the suite's folder: file plugins are relative to it
    where: str  # the suite file, for errors
    plan: bytes


def hand_over(plan: Plan, directory: Path) -> Path:
    """Writes ``plan`` into ``directory`` (``plan-<digest>.pickle``) and returns the file's path."""
    suite = plan.suite
    body = pickle.dumps(Handed(FORMAT, code_version(), tuple(suite.plugins), str(Path(suite.path).parent),
                               str(suite.path), pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)),
                        protocol=pickle.HIGHEST_PROTOCOL)
    path = directory / f"plan-{hashlib.sha256(body).hexdigest()[:16]}.pickle"
    if not path.is_file():
        with replacing(path) as f:
            f.write(body)
    return path


def take_over(path: Path) -> tuple[Plan | None, str]:
    """The plan in ``path``, or None and why it cannot be used (then the worker plans for itself)."""
    try:
        handed = pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return None, f"{path} is gone"
    except Exception as err:  # noqa: BLE001 - a torn or foreign file is never trusted
        return None, f"{path} is unreadable ({type(err).__name__})"
    if not isinstance(handed, Handed) or handed.format != FORMAT:
        return None, f"{path} is not a plan this version of tlbench wrote"
    load_entry_points()
    load_suite_plugins(handed.plugins, base=Path(handed.base), where=handed.where)
    if handed.code != (mine := code_version()):
        return None, f"{path} was planned by other code ({handed.code}; this worker runs {mine})"
    try:
        plan = pickle.loads(handed.plan)
    except Exception as err:  # noqa: BLE001
        return None, f"{path}: its plan cannot be read here ({type(err).__name__}: {err})"
    if not isinstance(plan, Plan):
        return None, f"{path} holds no plan"
    return plan, ""
