"""The command line: ``tlbench run | launch | status | report | check | list``.

- :mod:`~tlbench.cli.main` — the parser and :func:`main`;
- :mod:`~tlbench.cli.worker` — what one worker of a suite is given and checks before it trains
  (shared by ``run`` and ``launch``);
- :mod:`~tlbench.cli.commands` — each subcommand;
- :mod:`~tlbench.cli.launch` — many workers on one store (this machine, Slurm);
- :mod:`~tlbench.cli.console` — the progress display.
"""

from tlbench.cli.main import main

__all__ = ["main"]
