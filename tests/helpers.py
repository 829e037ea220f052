"""Helpers shared by tests (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations


def sample_params(strategy, backbone, seed: int = 0) -> dict:
    """One configuration from a strategy's search space, drawn at random (seeded)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return strategy.search_space(study.ask(), backbone)


def make_members(task, backbone, *, epochs=(2, 3), batch_size=8, options=None, root=None,
                 backbones=None, keep_weights=frozenset(), params=None, make=None, needed=frozenset(),
                 task_for=None):
    """A cell's model server outside a suite: each strategy's configuration is ``params[name]``
    or a seeded random draw from its search space."""
    from harness.members import Members, ModelStore
    from harness.search import evaluation_seed
    from strategies import STRATEGIES

    options, params = options or {}, params or {}

    def default_make(name):
        return STRATEGIES.get(name)(epochs=epochs, batch_size=batch_size, options=options.get(name))

    make = make or default_make
    return Members(cell="test::tiny::tiny-backbone", context="test", backbone_name="tiny-backbone", task=task,
                   backbone=backbone, make_strategy=make,
                   best_params=lambda name: params.get(name) or sample_params(make(name), backbone),
                   seed_of=lambda k: evaluation_seed(0, k), store=ModelStore(root),
                   backbones=backbones or {"tiny-backbone": backbone}, keep_weights=keep_weights,
                   needed=needed, task_for=task_for)

