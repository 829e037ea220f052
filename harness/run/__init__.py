"""The run layer: a suite's plan, tuned and evaluated cell by cell into the store.

- :mod:`~tlbench.run.plan` — a suite plus command-line overrides → a checked :class:`Plan`;
- :mod:`~tlbench.run.plugins` — plugins from files, modules and entry points;
- :mod:`~tlbench.run.pretrain` — backbones' weights: published, a checkpoint, or pretrained here;
- :mod:`~tlbench.run.spaces` — a strategy's search space and the suite's overrides of it;
- :mod:`~tlbench.run.samplers` — samplers re-seeded per slot, and the view of a study a slot sees;
- :mod:`~tlbench.run.tuning` — a cell's tuning study, slot by slot;
- :mod:`~tlbench.run.evaluation` — the tuned configuration on fresh seeds, one record each;
- :mod:`~tlbench.run.sensitivity` — sensitivity studies around a tuned configuration;
- :mod:`~tlbench.run.model_server` — serving one strategy's models to another (distillation, ensembles);
- :mod:`~tlbench.run.tuned` — each strategy's configuration in a cell, and the cells' model servers;
- :mod:`~tlbench.run.cell` — one cell's work, one unit at a time;
- :mod:`~tlbench.run.study_attrs` — what a run writes on its studies (plugin code digests);
- :mod:`~tlbench.run.runner` — the plan's cells taken unit by unit until all are done;
- :mod:`~tlbench.run.status` — where a run stands, read from the store.
"""
