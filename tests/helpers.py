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
                 task_for=None):
    """A cell's model server outside a suite (``tlbench.testing.model_server``): each
    strategy's configuration is ``params[name]`` or a seeded random draw from its space."""
    from tlbench.run.model_server import Reuse
    from tlbench.strategies import STRATEGIES
    from tlbench.testing import model_server

    options = options or {}

    def default_make(name):
        return STRATEGIES.get(name)(epochs=epochs, batch_size=batch_size, options=options.get(name))

    return model_server(task, backbone, make=make or default_make, params=params,
                        reuse=Reuse(frozenset(needed), frozenset(keep_weights)), backbones=backbones,
                        task_for=task_for, root=root)
