from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tlbench.strategies as strategies
from tlbench.core.errors import ConfigError
from tlbench.core.registry import Registry
from tlbench.strategies import STRATEGIES, Strategy


def test_every_strategy_subclass_is_registered() -> None:
    registered = {cls for _, cls in STRATEGIES}
    for info in pkgutil.iter_modules(strategies.__path__):
        module = importlib.import_module(f"tlbench.strategies.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Strategy) and not inspect.isabstract(obj):
                assert obj in registered, f"{obj.__name__} is not in STRATEGIES"


def test_the_reports_colour_order_is_the_registrys_built_ins() -> None:
    """``tlbench report`` gives each built-in its colour from a written-out list (so that it needs
    no torch); it must be the registry's built-ins in the registry's order."""
    from tlbench.cli.worker import BUILTIN_STRATEGIES
    from tlbench.core.registry import BUILTIN

    assert list(BUILTIN_STRATEGIES) == [n for n in STRATEGIES.names() if STRATEGIES.origin(n) == BUILTIN]


def test_foundation_strategies_present() -> None:
    assert {"linear_probe", "full_finetune", "scratch"} <= set(STRATEGIES.names())


def test_refuses_duplicates_and_wrong_base() -> None:
    reg: Registry[Strategy] = Registry("strategy", Strategy)
    cls = STRATEGIES.get("scratch")
    reg.add(cls)
    reg.add(cls)  # the same class from the same origin again (a plugin loaded twice): a no-op
    assert reg.names() == ["scratch"]
    with pytest.raises(ValueError, match="duplicate strategy name 'scratch': tlbench has it already"):
        reg.add(STRATEGIES.get("full_finetune"), "scratch")
    with pytest.raises(ValueError, match="duplicate"):
        reg.add(cls, origin="file other.py")
    with pytest.raises(TypeError):
        reg.add(int)  # type: ignore[arg-type]


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError) as err:
        STRATEGIES.get("bogus", where="suite.yaml: strategies[0]")
    msg = str(err.value)
    assert "suite.yaml: strategies[0]" in msg and "bogus" in msg and "linear_probe" in msg


def test_registry_reads_like_a_mapping() -> None:
    assert STRATEGIES["scratch"] is STRATEGIES.get("scratch")
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; known: "):
        STRATEGIES["nope"]  # noqa: B018
    assert "linear_probe" in repr(STRATEGIES) and repr(STRATEGIES).startswith("Registry('strategy'")


def test_a_strategy_refuses_an_empty_epoch_range() -> None:
    with pytest.raises(ConfigError, match=r"epochs must be \(min, max\).*\(3, 2\)"):
        STRATEGIES.get("scratch")(epochs=(3, 2))
