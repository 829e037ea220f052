"""``python -m tlbench.cli``: the command line (how ``tlbench launch`` starts its workers)."""

import sys

from tlbench.cli.main import main

sys.exit(main())
