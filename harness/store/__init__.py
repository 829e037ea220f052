"""The store layer: one Optuna storage holds every tuning trial and evaluation run.

- :mod:`~tlbench.store.opening` — a storage from a URL or journal path, opened with retries and
  one-line errors (read-only where only reading is asked);
- :mod:`~tlbench.store.journal` — the journal file, every line checked as it is read, a cut-off
  line moved aside before an append;
- :mod:`~tlbench.store.lock` — the journal's write lock, which a killed worker never leaves behind;
- :mod:`~tlbench.store.records` — what the store holds: study names, typed and versioned run
  records, the tuning protocol, and reading them back;
- :mod:`~tlbench.store.claims` — units of work claimed by workers, heartbeats, dead workers.

It depends on the core layer only (and on Optuna, never on PyTorch).
"""
