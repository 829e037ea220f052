from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tlbench.strategies as strategies
from tlbench.errors import ConfigError
from tlbench.registry import Registry
from tlbench.strategies import STRATEGIES, Strategy


def test_every_strategy_subclass_is_registered() -> None:
    registered = {cls for _, cls in STRATEGIES}
    for info in pkgutil.iter_modules(strategies.__path__):
        module = importlib.import_module(f"tlbench.strategies.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Strategy) and not inspect.isabstract(obj):
                assert obj in registered, f"{obj.__name__} is not in STRATEGIES"


def test_foundation_strategies_present() -> None:
    assert {"linear_probe", "full_finetune", "scratch"} <= set(STRATEGIES.names())


def test_refuses_duplicates_and_wrong_base() -> None:
    reg: Registry[Strategy] = Registry("strategy", Strategy)
    cls = STRATEGIES.get("scratch")
    reg.add(cls)
    with pytest.raises(ValueError, match="duplicate"):
        reg.add(cls)
    with pytest.raises(TypeError):
        reg.add(int)  # type: ignore[arg-type]


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError) as err:
        STRATEGIES.get("bogus", where="suite.yaml: strategies[0]")
    msg = str(err.value)
    assert "suite.yaml: strategies[0]" in msg and "bogus" in msg and "linear_probe" in msg
