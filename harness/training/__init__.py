"""The training layer: networks, the one training loop, and what a strategy is given to train with.

- :mod:`~tlbench.training.backbones` — :class:`Backbone` (layer groups, features, a fresh head) and
  the built-in families;
- :mod:`~tlbench.training.loop` — the one training loop, its hooks and reporter, prediction;
- :mod:`~tlbench.training.context` — :class:`Runtime`: the device, execution settings, caches and
  model server a strategy is handed;
- :mod:`~tlbench.training.features` — the frozen backbone's features, computed once per split;
- :mod:`~tlbench.training.context` — :class:`Member` and :class:`ModelServer`: what a strategy sees of
  other strategies' models;
- :mod:`~tlbench.training.memory` — peak memory of a run.
"""
