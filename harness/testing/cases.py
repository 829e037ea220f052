"""The contract checks as pytest cases, one per property (scikit-learn's ``parametrize_with_checks``):

.. code-block:: python

    from tlbench.testing import parametrize_with_checks

    @parametrize_with_checks([MyStrategy, (MyBackbone, {"args": {"width": 8}})],
                             expected_failures={"my_strategy": {"is deterministic for a seed": "GPU kernels"}})
    def test_tlbench_contract(check):
        check()

A failure shows by name (``test_tlbench_contract[my_strategy-pruning propagates]``) with its one-line
reason; a property known not to hold is marked as an expected failure (strict: it fails the suite
once it holds, so the mark is removed).
"""

from __future__ import annotations

from typing import Any, Callable

from tlbench.selection.scorers import Scorer
from tlbench.strategies.base import Strategy
from tlbench.suites.pools import Dataset
from tlbench.testing.backbone import BACKBONE_PROPERTIES, backbone_context
from tlbench.testing.dataset import DATASET_PROPERTIES, dataset_context
from tlbench.testing.report import one_line
from tlbench.testing.scorer import SCORER_PROPERTIES, scorer_context
from tlbench.testing.strategy import PROPERTIES, strategy_context
from tlbench.training.backbones import Backbone


def contract_of(cls: type) -> tuple[str, dict[str, Callable[[Any], None]], Callable[..., Any]]:
    """The kind of plugin ``cls`` is, its properties and the context they share."""
    if isinstance(cls, type) and issubclass(cls, Strategy):
        return "strategy", PROPERTIES, strategy_context
    if isinstance(cls, type) and issubclass(cls, Backbone):
        return "backbone", BACKBONE_PROPERTIES, backbone_context
    if isinstance(cls, type) and issubclass(cls, Dataset):
        return "dataset", DATASET_PROPERTIES, dataset_context
    if isinstance(cls, type) and issubclass(cls, Scorer):
        return "scorer", SCORER_PROPERTIES, scorer_context
    raise TypeError(f"{cls!r} is not a tlbench Strategy, Backbone, Dataset or Scorer class")


class _Shared:
    """The context the cases of one plugin share, made on first use."""

    def __init__(self, make: Callable[..., Any], cls: type, kwargs: dict[str, Any]) -> None:
        self.make, self.cls, self.kwargs = make, cls, kwargs
        self._context: Any = None
        self._error: str | None = None

    def get(self) -> Any:
        if self._context is None and self._error is None:
            try:
                self._context = self.make(self.cls, **self.kwargs)
            except Exception as err:  # noqa: BLE001 - every case says so
                self._error = one_line(err)
        if self._error is not None:
            raise AssertionError(f"{getattr(self.cls, 'name', self.cls.__name__)}: does not construct with the "
                                 f"settings given: {self._error}")
        return self._context


class PropertyCheck:
    """One property of one plugin; calling it checks it, raising AssertionError with the reason."""

    def __init__(self, label: str, prop: str, check: Callable[[Any], None], shared: _Shared) -> None:
        self.label, self.prop, self._check, self._shared = label, prop, check, shared

    def __call__(self) -> None:
        import optuna

        context = self._shared.get()
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self._check(context)
        except Exception as err:  # noqa: BLE001 - reported as the property's failure
            raise AssertionError(f"{self.label}: {self.prop}: {one_line(err)}") from err
        finally:
            optuna.logging.set_verbosity(verbosity)

    def __repr__(self) -> str:
        return f"{self.label}-{self.prop}"


def parametrize_with_checks(plugins: list[Any], *,
                            expected_failures: dict[str, dict[str, str]] | None = None) -> Any:
    """A ``pytest.mark.parametrize`` of every property of every plugin in ``plugins``: Strategy,
    Backbone or Dataset classes, or ``(class, settings)`` pairs whose settings go to the check
    (a strategy's ``options``, ``epochs``, ``batch_size``; a backbone's ``args``, ``input_shape``; a
    dataset's ``args``, ``data``). ``expected_failures`` maps a plugin's name (or class name) to
    {property: why}: those cases are strict expected failures."""
    import pytest

    cases = []
    for plugin in plugins:
        cls, settings = plugin if isinstance(plugin, tuple) else (plugin, {})
        _, properties, make = contract_of(cls)
        shared = _Shared(make, cls, dict(settings))
        label = str(getattr(cls, "name", None) or cls.__name__)
        known = {**(expected_failures or {}).get(cls.__name__, {}), **(expected_failures or {}).get(label, {})}
        for prop, check in properties.items():
            marks = [pytest.mark.xfail(strict=True, reason=known[prop])] if prop in known else []
            cases.append(pytest.param(PropertyCheck(label, prop, check, shared), id=f"{label}-{prop}", marks=marks))
    return pytest.mark.parametrize("check", cases)
