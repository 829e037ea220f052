"""The package's shape: one namespace, a folder tree that is the layer map, imports that point one
way and never in a circle, a public API, and a code version derived from the sources.

The layers are ``tlbench``'s subpackages: a module belongs to the layer whose folder holds it, so
the tree is the map (docs/architecture.md draws it). Every import statement counts, including
those inside functions and under ``TYPE_CHECKING``: a function-level import is still a
dependency, only a hidden one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tlbench
from tlbench.core.codeversion import digest_of, package_sources, shapes_results

ROOT = Path(__file__).resolve().parent.parent

#: layer (a subpackage of tlbench) → the layers it may import, itself included. Only the rules live
#: here: which module is in which layer is where its file is.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "store": {"core", "store"},  # Optuna and records, never PyTorch
    "data": {"core", "data"},
    "training": {"core", "data", "training"},
    "selection": {"core", "selection"},  # transferability scores and their rankings: numpy, never PyTorch
    "suites": {"core", "data", "training", "suites"},
    "strategies": {"core", "data", "training", "store", "strategies"},  # siblings of suites
    "run": {"core", "store", "data", "training", "selection", "suites", "strategies", "run"},
    "reports": {"core", "store", "selection", "reports"},  # stored records only: never the runner, strategies or suites
    "testing": {"core", "store", "data", "training", "selection", "suites", "strategies", "run", "testing"},
    "cli": {"core", "store", "data", "training", "selection", "suites", "strategies", "run", "reports", "testing",
            "cli"},
}
ALLOWED["api"] = set(ALLOWED)  # tlbench/__init__: the façade re-exports lazily from every layer
#: the repository's folders, which must never be imported under their own names
FOLDERS = {"harness", "strategies", "suites", "reports"}
#: Optuna's private API: attributes, private modules, the text of an error message. Only
#: tlbench.store.optuna_internals may use it (its docstring says why each is needed).
OPTUNA_PRIVATE = re.compile(r"\._storage\b|\._study_id\b|\._trial_id\b|_thread_local|\b_get_trials\b|"
                            r"optuna(?:\.[A-Za-z_]+)*\._[a-z]|Cannot tell|_get_stale_trial_ids|\._backend\b|"
                            r"scoped_session|LazyRandomState|JournalOperation|_find_sample_id")
ADAPTER = "tlbench.store.optuna_internals"


def layer_of(module: str) -> str | None:
    """The layer of a module of the package: the subpackage its file is in (``api`` for the package itself)."""
    parts = module.split(".")
    if parts[0] != "tlbench":
        return None
    if len(parts) == 1:
        return "api"
    return parts[1] if parts[1] in ALLOWED else None


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
            bad.append(f"{module}: in no layer (a module belongs in one of the subpackages {sorted(ALLOWED)})")
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


def resolved(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """module → the package modules it imports (a name imported from a module counts as that module)."""
    known = set(graph)
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges[module] = set()
        for target in targets:
            parts = target.split(".")
            for cut in range(len(parts), 0, -1):
                candidate = ".".join(parts[:cut])
                if candidate in known:
                    if candidate != module:
                        edges[module].add(candidate)
                    break
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (module → imported names): its strongly connected components of
    more than one module (Tarjan's algorithm)."""
    edges = resolved(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path.read_text(), is_package=path.name == "__init__.py")
            for name, path in package_sources().items()}


def test_the_tree_is_the_layer_map() -> None:
    """Every module sits in a layer's folder; every layer folder has its rules, and every rule a folder."""
    sources = package_sources()
    loose = [name for name in sources if name.count(".") == 1 and name.split(".")[1] not in ALLOWED]
    assert loose == [], f"modules outside every layer's folder: {loose}"
    folders = {name.split(".")[1] for name in sources if name.count(".") >= 1}
    assert folders == set(ALLOWED) - {"api"}, (folders, set(ALLOWED))


def test_imports_point_one_way() -> None:
    graph = package_graph()
    assert len(graph) > 40  # the walk found the whole package, subpackages included
    assert violations(graph, set(graph)) == []


def test_no_import_cycles_at_all() -> None:
    """Not even within a layer, nor through imports inside functions or under TYPE_CHECKING: two modules
    that each need the other are one module, or a third is missing."""
    assert cycles(package_graph()) == []


def test_the_selection_layer_imports_neither_pytorch_nor_scikit_learn() -> None:
    """Scoring runs in the units' clocks: the layer stays numpy and scipy (scikit-learn's import
    alone took 1-2 s inside the first unit; its estimators are reimplemented and tested equal)."""
    found = []
    for name, path in sorted(package_sources().items()):
        if name.startswith("tlbench.selection"):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{name}: {m}" for m in modules if m.split(".")[0] in {"torch", "sklearn"}]
    assert found == []


def test_optunas_private_api_is_used_in_one_module_only() -> None:
    """So that an Optuna upgrade that moves a private name breaks one module, and its test
    (tests/test_optuna_internals.py), instead of changing results silently."""
    uses = [f"{name}:{number}: {line.strip()}" for name, path in sorted(package_sources().items()) if name != ADAPTER
            for number, line in enumerate(path.read_text().splitlines(), 1) if OPTUNA_PRIVATE.search(line)]
    assert uses == []
    caught = ["storage = study._storage", "t._trial_id", "from optuna.samplers._lazy_random_state import x",
              'if "Cannot tell" in str(err)', "study._thread_local.cached_all_trials = None",
              "from optuna.storages._heartbeat import is_heartbeat_enabled", "def _get_trials(self):",
              "def _find_sample_id(self, study):"]
    assert all(OPTUNA_PRIVATE.search(line) for line in caught)
    assert not OPTUNA_PRIVATE.search("RDBStorage(url, heartbeat_interval=h, grace_period=g)")
    assert OPTUNA_PRIVATE.search(package_sources()[ADAPTER].read_text())  # the adapter does use them


def test_the_checks_catch_an_upward_import_even_inside_a_function_and_a_cycle() -> None:
    source = "def f():\n    from tlbench.run.runner import run_plan\n"
    graph = {"tlbench.training.loop": imports_of("tlbench.training.loop", source)}
    known = {"tlbench.training.loop", "tlbench.run.runner"}
    [line] = violations(graph, known)
    assert "tlbench.training.loop (training) imports tlbench.run.runner (run)" in line
    reports_reach_runner = {"tlbench.reports.results": {"tlbench.run.status"}}
    assert violations(reports_reach_runner, {"tlbench.run.status", "tlbench.reports.results"})
    siblings = {"tlbench.strategies.base": {"tlbench.suites.splitting"}}
    assert violations(siblings, {"tlbench.suites.splitting", "tlbench.strategies.base"})
    old_name = {"tlbench.run.plan": imports_of("tlbench.run.plan", "import strategies\n")}
    assert violations(old_name, {"tlbench.run.plan"}) == ["tlbench.run.plan imports strategies: import it as "
                                                          "tlbench.strategies"]
    assert violations({"tlbench.stray": set()}, {"tlbench.stray"})[0].startswith("tlbench.stray: in no layer")
    relative = imports_of("tlbench.strategies.base", "from ..run.runner import run_plan\n")
    assert "tlbench.run.runner" in relative
    circle = {"tlbench.cli.main": imports_of("tlbench.cli.main", "def f():\n    from tlbench.cli.launch import x\n"),
              "tlbench.cli.launch": {"tlbench.cli.main", "tlbench.cli.main.main"},
              "tlbench.cli.worker": set()}
    assert cycles(circle) == [["tlbench.cli.launch", "tlbench.cli.main"]]
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tlbench.training.b import Runtime\n"
    pair = {"tlbench.training.a": imports_of("tlbench.training.a", typed),
            "tlbench.training.b": {"tlbench.training.a.Member"}}
    assert cycles(pair) == [["tlbench.training.a", "tlbench.training.b"]]


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
    on_disk = {p.resolve() for folder in ("harness", "strategies", "suites") for p in (ROOT / folder).rglob("*.py")}
    assert on_disk <= {p.resolve() for p in sources.values()}  # derived, so a new module is covered
    content = {name: path.read_bytes() for name, path in sources.items()}
    base = digest_of(content)
    for module in ("tlbench.strategies.full_finetune", "tlbench.suites.images", "tlbench.data.reader",
                   "tlbench.training.loop"):
        assert shapes_results(module)
        assert digest_of({**content, module: content[module] + b"\n# edited\n"}) != base, module
    for module in ("tlbench.reports.tables", "tlbench.cli.main"):
        assert not shapes_results(module)
        assert digest_of({**content, module: content[module] + b"\n# edited\n"}) == base, module
    assert tlbench.__version__ in base


#: Names in the docs that are not Python paths: entry-point groups a plugin distribution declares.
NOT_PATHS = {"tlbench.backbones", "tlbench.datasets", "tlbench.scorers"}


def cited_paths(text: str) -> set[str]:
    """The ``tlbench.…`` paths a doc cites, except in a table's first column (the renaming table's old
    names)."""
    lines = [line.split("|", 2)[2] if line.startswith("|") and line.count("|") > 2 else line
             for line in text.splitlines()]
    return set(re.findall(r"\btlbench(?:\.[A-Za-z_][A-Za-z0-9_]*)+", "\n".join(lines))) - NOT_PATHS


def unresolved(paths: set[str]) -> list[str]:
    """The dotted paths that name no module of the package and no attribute of one."""
    import importlib

    missing = []
    for path in sorted(paths):
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    found = getattr(found, attr)
            except AttributeError:
                missing.append(path)
            break
        else:
            missing.append(path)
    return missing


def test_every_module_and_name_the_design_docs_cite_exists() -> None:
    """The architecture map and the API page name modules and functions; a rename that forgets them
    fails here."""
    for doc in ("architecture.md", "api.md"):
        text = (ROOT / "docs" / doc).read_text()
        assert len(cited_paths(text)) > (20 if doc == "architecture.md" else 3), doc
        assert unresolved(cited_paths(text)) == [], doc
    assert unresolved({"tlbench.runner.run_sensitivity", "tlbench.run.nothing"}) == [
        "tlbench.run.nothing", "tlbench.runner.run_sensitivity"]


def test_every_module_and_name_a_docstring_cites_exists() -> None:
    """Docstrings point readers to other modules (``:mod:`tlbench.store.claims```); after a move they must
    still lead somewhere."""
    cited: set[str] = set()
    for path in package_sources().values():
        for ref in re.findall(r":(?:mod|func|class|data|meth):`~?(tlbench[A-Za-z0-9_.]*)`", path.read_text()):
            cited.add(ref.rstrip("."))
    assert len(cited) > 30
    assert unresolved(cited - NOT_PATHS) == []
