"""Helpers shared by tests (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations


def sample_params(strategy, backbone, seed: int = 0) -> dict:
    """One configuration from a strategy's search space, drawn at random (seeded)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return strategy.search_space(study.ask(), backbone)


def run_context(**fields):
    """A :class:`~tlbench.records.RunContext` for evaluation runs outside a suite."""
    from tlbench.records import RunContext

    base = dict(suite="test", task="tiny", backbone="tiny-backbone", strategy="s", tuning_budget=1,
                tuning_seeds="0..0", suite_fingerprint="test", backbone_weights="random")
    return RunContext(**{**base, **fields})


def make_members(task, backbone, *, epochs=(2, 3), batch_size=8, options=None, root=None,
                 backbones=None, keep_weights=frozenset(), params=None, make=None, needed=frozenset(),
                 task_for=None):
    """A cell's model server outside a suite: each strategy's configuration is ``params[name]``
    or a seeded random draw from its search space."""
    from tlbench.members import ArtifactStore, CellRecipes, Members, Reuse
    from tlbench.search import evaluation_seed
    from tlbench.strategies import STRATEGIES

    options, params = options or {}, params or {}

    class Recipes(CellRecipes):
        cell, context, backbone_name = ("test", "tiny", "tiny-backbone"), "test", "tiny-backbone"
        reuse = Reuse(frozenset(needed), frozenset(keep_weights))

        def strategy(self, name):
            if make is not None:
                return make(name)
            return STRATEGIES.get(name)(epochs=epochs, batch_size=batch_size, options=options.get(name))

        def params(self, name):
            return params.get(name) or sample_params(self.strategy(name), backbone)

        def seed(self, index):
            return evaluation_seed(0, index)

        def task(self, name):
            return task if task_for is None or name == self.backbone_name else task_for(name)

    return Members(Recipes(), ArtifactStore(root), backbones or {"tiny-backbone": backbone})
