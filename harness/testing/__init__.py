"""The plugin contracts as executable checks: what ``tlbench check`` runs, what tlbench's own
conformance tests run over every built-in, and what a plugin author runs in their own tests.

- :func:`check_strategy`, :func:`check_backbone`, :func:`check_dataset`, :func:`check_scorer`: every property of the
  contract of that kind, each passed or failed with a one-line reason (a :class:`CheckReport`;
  ``report.assert_ok()`` in a test);
- :func:`parametrize_with_checks`: the same checks as one pytest case per property, so a failure
  shows by name and a property known not to hold can be marked as an expected failure;
- :data:`PROPERTIES`, :data:`BACKBONE_PROPERTIES`, :data:`DATASET_PROPERTIES`,
  :data:`SCORER_PROPERTIES`: the properties, in order (their docstrings:
  :mod:`tlbench.testing.strategy`, :mod:`~tlbench.testing.backbone`, :mod:`~tlbench.testing.dataset`,
  :mod:`~tlbench.testing.scorer`);
- :func:`tiny_task`, :func:`tiny_image_task`, :func:`tiny_backbone`, :func:`model_server`: the tiny
  inputs the checks use, for your own tests.
"""

from tlbench.testing.backbone import BACKBONE_PROPERTIES, check_backbone
from tlbench.testing.cases import parametrize_with_checks
from tlbench.testing.dataset import DATASET_PROPERTIES, check_dataset
from tlbench.testing.fixtures import TinyCell, model_server, sample_params, tiny_backbone, tiny_image_task, tiny_task
from tlbench.testing.report import CheckFailed, CheckReport, CheckResult
from tlbench.testing.scorer import SCORER_PROPERTIES, check_scorer
from tlbench.testing.strategy import PROPERTIES, check_strategy

__all__ = ["BACKBONE_PROPERTIES", "DATASET_PROPERTIES", "PROPERTIES", "SCORER_PROPERTIES", "CheckFailed",
           "CheckReport", "CheckResult", "TinyCell", "check_backbone", "check_dataset", "check_scorer",
           "check_strategy", "model_server",
           "parametrize_with_checks", "sample_params", "tiny_backbone", "tiny_image_task", "tiny_task"]
