"""tlbench harness: backbones, training loop, search, evaluation, store and CLI."""

__version__ = "0.1.0"
