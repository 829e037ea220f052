"""The package's shape: one namespace, imports that point one way, a public API, and a code
version derived from the sources.

The layer map below is the one in docs/architecture.md. Every import statement counts,
including those inside functions and under ``TYPE_CHECKING``: a function-level import is
still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tlbench
from tlbench.codeversion import digest_of, package_sources, shapes_results

ROOT = Path(__file__).resolve().parent.parent

#: layer → the modules in it (a name ending in ".*" covers a whole subpackage)
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("tlbench.version", "tlbench.errors", "tlbench.registry", "tlbench.config", "tlbench.paths",
             "tlbench.codeversion", "tlbench.atomic", "tlbench.data", "tlbench.imagecache", "tlbench.train",
             "tlbench.backbones", "tlbench.memory", "tlbench.provenance", "tlbench.features", "tlbench.runtime",
             "tlbench.records", "tlbench.reuse", "tlbench.storage", "tlbench.processes", "tlbench.journallock"),
    "suites": ("tlbench.suites.*",),
    "strategies": ("tlbench.strategies.*",),
    "runner": ("tlbench.plan", "tlbench.plugins", "tlbench.pretrain", "tlbench.search", "tlbench.samplers",
               "tlbench.spaces", "tlbench.evaluate",
               "tlbench.members", "tlbench.store", "tlbench.runner", "tlbench.status"),
    "reports": ("tlbench.reports.*",),
    "testing": ("tlbench.testing",),  # the strategy contract as a check: built on the runner's model server
    "cli": ("tlbench.cli", "tlbench.console", "tlbench.launch"),
    "api": ("tlbench",),  # the façade: re-exports lazily from every layer
}
#: layer → the layers it may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "suites": {"core", "suites"},
    "strategies": {"core", "strategies"},
    "runner": {"core", "suites", "strategies", "runner"},
    "reports": {"core", "reports"},  # stored records only: never the runner, strategies or suites
    "testing": {"core", "suites", "strategies", "runner", "testing"},
    "cli": {"core", "suites", "strategies", "runner", "reports", "testing", "cli"},
    "api": set(LAYERS),
}
#: the repository's folders, which must never be imported under their own names
FOLDERS = {"harness", "strategies", "suites", "reports"}


def layer_of(module: str) -> str | None:
    for layer, members in LAYERS.items():
        for m in members:
            if module == m or (m.endswith(".*") and (module == m[:-2] or module.startswith(m[:-1]))):
                return layer
    return None


def imports_of(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, at any depth of the file, as absolute names."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def violations(graph: dict[str, set[str]], known: set[str]) -> list[str]:
    """The imports of ``graph`` (module → imported names) that break the layering."""
    bad = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            bad.append(f"{module}: not assigned to a layer (add it to LAYERS and docs/architecture.md)")
            continue
        for target in sorted(targets):
            top = target.split(".")[0]
            if top in FOLDERS:
                bad.append(f"{module} imports {target}: import it as tlbench.{target}")
            if top != "tlbench" or target not in known:
                continue
            other = layer_of(target)
            if other is not None and other not in ALLOWED[layer]:
                bad.append(f"{module} ({layer}) imports {target} ({other}): upward or sideways")
    return bad


def package_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path.read_text(), is_package=path.name == "__init__.py")
            for name, path in package_sources().items()}


def test_imports_point_one_way() -> None:
    graph = package_graph()
    assert len(graph) > 40  # the walk found the whole package, subpackages included
    assert violations(graph, set(graph)) == []


def test_the_check_catches_an_upward_import_even_inside_a_function() -> None:
    source = "def f():\n    from tlbench.runner import run_plan\n"
    graph = {"tlbench.train": imports_of("tlbench.train", source)}
    known = {"tlbench.train", "tlbench.runner"}
    [line] = violations(graph, known)
    assert "tlbench.train (core) imports tlbench.runner (runner)" in line
    reports_reach_runner = {"tlbench.reports.data": {"tlbench.store"}}
    assert violations(reports_reach_runner, {"tlbench.store", "tlbench.reports.data"})
    siblings = {"tlbench.strategies.base": {"tlbench.suites.tasks"}}
    assert violations(siblings, {"tlbench.suites.tasks", "tlbench.strategies.base"})
    old_name = {"tlbench.plan": imports_of("tlbench.plan", "import strategies\n")}
    assert violations(old_name, {"tlbench.plan"}) == ["tlbench.plan imports strategies: import it as "
                                                      "tlbench.strategies"]
    relative = imports_of("tlbench.strategies.base", "from ..runner import run_plan\n")
    assert "tlbench.runner" in relative


def test_the_public_api_resolves_and_lists_itself() -> None:
    for name in tlbench.__all__:
        assert getattr(tlbench, name) is not None, name
    from tlbench.strategies.base import Strategy

    assert tlbench.Strategy is Strategy and "Strategy" in dir(tlbench)
    with pytest.raises(AttributeError):
        tlbench.no_such_name  # noqa: B018
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in tlbench.__all__ if f"`{name}`" not in api]
    assert missing == [], f"public names not documented in docs/api.md: {missing}"


def test_code_version_covers_every_source_that_shapes_results() -> None:
    sources = package_sources()
    on_disk = {p.resolve() for folder in ("harness", "strategies", "suites") for p in (ROOT / folder).glob("*.py")}
    assert on_disk <= {p.resolve() for p in sources.values()}  # derived, so a new module is covered
    content = {name: path.read_bytes() for name, path in sources.items()}
    base = digest_of(content)
    for module in ("tlbench.strategies.full_finetune", "tlbench.suites.images", "tlbench.data", "tlbench.train"):
        assert shapes_results(module)
        assert digest_of({**content, module: content[module] + b"\n# edited\n"}) != base, module
    for module in ("tlbench.reports.tables", "tlbench.cli"):
        assert not shapes_results(module)
        assert digest_of({**content, module: content[module] + b"\n# edited\n"}) == base, module
    assert tlbench.__version__ in base
