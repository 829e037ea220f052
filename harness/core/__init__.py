"""The core layer: what every other layer may use, and nothing of theirs.

- :mod:`~tlbench.core.errors` — the errors a user sees as one line (:class:`ConfigError`, …);
- :mod:`~tlbench.core.frozen` — :class:`Frozen`, the one typed, frozen base of every block a suite
  or a plugin declares, and the one formatter of its validation errors;
- :mod:`~tlbench.core.registry` — name → class registries;
- :mod:`~tlbench.core.codeversion` — the code version caches are keyed on;
- :mod:`~tlbench.core.paths`, :mod:`~tlbench.core.version`, :mod:`~tlbench.core.provenance` — where
  caches live, the release, and what a record says about the machine;
- :mod:`~tlbench.core.processes` — a worker's stamp and whether it still runs;
- :mod:`~tlbench.core.atomic` — files written atomically and read without trusting them.
"""
