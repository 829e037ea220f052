"""Helpers shared by tests (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations


def sample_params(strategy, backbone, seed: int = 0) -> dict:
    """One configuration from a strategy's search space, drawn at random (seeded)."""
    from tlbench.testing import sample_params as draw

    return draw(strategy, backbone, seed)


def run_context(**cell):
    """A :class:`~tlbench.store.records.RunContext` for evaluation runs outside a suite (``cell``: fields of
    its :class:`~tlbench.store.records.CellFacts` to change)."""
    from tlbench.core.budget import Budget
    from tlbench.store.records import CellFacts, RunContext, TuningFacts

    base = dict(suite="test", task="tiny", backbone="tiny-backbone", strategy="s", suite_fingerprint="test",
                backbone_weights="random")
    return RunContext(cell=CellFacts(**{**base, **cell}), tuning=TuningFacts(budget=Budget(trials=1), seeds="0..0"))


def make_members(task, backbone, *, epochs=(2, 3), batch_size=8, options=None, root=None,
                 backbones=None, keep_weights=frozenset(), params=None, make=None, needed=frozenset(),
                 task_for=None, seeds=0, per_seed=None):
    """A cell's model server outside a suite (``tlbench.testing.model_server``): each
    strategy's configuration is ``params[name]`` or a seeded random draw from its space."""
    from tlbench.run.model_server import Reuse
    from tlbench.strategies import STRATEGIES
    from tlbench.testing import model_server

    options = options or {}

    def default_make(name):
        return STRATEGIES.get(name)(epochs=epochs, batch_size=batch_size, options=options.get(name))

    return model_server(task, backbone, make=make or default_make, params=params,
                        reuse=Reuse(frozenset(needed), frozenset(keep_weights), per_seed or {}),
                        backbones=backbones, task_for=task_for, root=root, seeds=seeds)


def skip_unless_ci(why: str) -> None:
    """Skips the calling test, except under CI (``CI`` set, as ``.ci/run`` and CI services do), where a
    skipped test would check nothing: there it fails."""
    import os

    import pytest

    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why} (.ci/run installs it; CI must not skip this test)")
    pytest.skip(why)


def require(tool: str | None, package: str) -> str:
    """The tool's path; without it a skip, except under CI (:func:`skip_unless_ci`)."""
    if tool is None:
        skip_unless_ci(f"needs a system package: apt-get install {package}")
    return tool


def compile_tables(tables_tex, folder, packages=("booktabs",)):
    """``tables_tex`` ``\\input`` into a plain ``article`` with ``packages`` and compiled by pdflatex in
    ``folder`` (fails the test when it does not compile); returns the LaTeX log's text."""
    import shutil
    import subprocess

    require(shutil.which("pdflatex"), "texlive-latex-recommended")
    uses = "".join(f"\\usepackage{{{name}}}\n" for name in packages)
    tex = folder / "paper.tex"
    tex.write_text(f"\\documentclass{{article}}\n{uses}\\begin{{document}}\n\\input{{{tables_tex}}}\n"
                   "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (folder / "paper.pdf").stat().st_size > 1000
    return (folder / "paper.log").read_text(errors="replace")
