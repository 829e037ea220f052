"""The identity of the code that computes results, derived from the package's own sources.

Every cache is keyed on the code that can change what it holds, found by following the package's
imports rather than listed by hand:

- pretrained checkpoints (:func:`pretraining_version`): the modules pretraining imports, directly or
  not (backbones, data, the training loop, tasks), and the code of backbone and dataset plugins;
- probe features (:func:`features_version`): the modules that compute a backbone's features, and
  backbone plugins' code;
- a strategy's reused-model artifacts (:func:`strategy_version`): the modules that strategy's own
  module imports, and its plugin code when it is one.

So a comment edited in a strategy (a plugin's too) re-keys only that strategy's models, and editing a
table re-keys nothing. :func:`code_version` is the whole package's result-shaping code with every
plugin's, for records and messages. Modules that only present results (reports, the command line)
are never part of a key.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import Mapping

from tlbench.core.registry import PluginKind, plugin_sources
from tlbench.core.version import __version__

PACKAGE = "tlbench"
#: Subpackages living in their own folders of the repository (mapped into the namespace
#: by pyproject.toml): walked like the package's own folder.
SUBPACKAGES = ("strategies", "suites", "reports")
#: Modules (and packages, by prefix) that cannot change a result: they only read stored
#: records or render them (or, the launcher, only start workers). Leaving one out by mistake only invalidates
#: caches too often.
PRESENTATION = ("tlbench.reports", "tlbench.cli", "tlbench.cli.console", "tlbench.cli.launch", "tlbench.testing")


def _walk(package: str, directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        name = package if path.stem == "__init__" else f"{package}.{path.stem}"
        found[name] = path
    for sub in sorted(p for p in directory.iterdir() if (p / "__init__.py").is_file()):
        found.update(_walk(f"{package}.{sub.name}", sub))
    return found


def package_sources() -> dict[str, Path]:
    """Every Python module of the package by dotted name, wherever it is installed."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    found = _walk(PACKAGE, Path(next(iter(spec.submodule_search_locations))))
    for sub in SUBPACKAGES:
        sub_spec = importlib.util.find_spec(f"{PACKAGE}.{sub}")
        if sub_spec is not None and sub_spec.submodule_search_locations:
            found.update(_walk(f"{PACKAGE}.{sub}", Path(next(iter(sub_spec.submodule_search_locations)))))
    return found


def shapes_results(module: str) -> bool:
    """Whether ``module``'s source is part of the code version."""
    return not any(module == p or module.startswith(p + ".") for p in PRESENTATION)


def digest_of(sources: Mapping[str, bytes], *, version: str = __version__) -> str:
    """``VERSION+HASH`` over the result-shaping modules among ``sources`` (name → bytes),
    independent of where the package is installed."""
    digest = hashlib.sha256(version.encode())
    for name in sorted(sources):
        if shapes_results(name):
            digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    return f"{version}+{digest.hexdigest()[:12]}"


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    """tlbench's version plus a hash of every source of the package that can change a result."""
    return digest_of({name: path.read_bytes() for name, path in package_sources().items()})


def code_version() -> str:
    """:func:`package_version`, plus a hash of the code of every plugin loaded in this process
    (their files' contents, or their distributions' versions): editing a plugin re-keys the
    caches. A suite that loads a plugin therefore shares no cache entry with one that does not."""
    plugins = plugin_sources()
    if not plugins:
        return package_version()
    blob = "\n".join(sorted(plugins.values()))  # contents only: not where the plugins live
    return f"{package_version()}+plugins-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# ------------------------------------------------------------------ scoped versions


@functools.lru_cache(maxsize=1)
def _import_graph() -> dict[str, frozenset[str]]:
    """module → the package modules it imports anywhere in its file (static; a name imported from a
    module counts as that module)."""
    import ast

    sources = package_sources()
    graph: dict[str, frozenset[str]] = {}
    for name, path in sources.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_bytes())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                parts = target.split(".")
                for cut in range(len(parts), 0, -1):
                    if ".".join(parts[:cut]) in sources:
                        found.add(".".join(parts[:cut]))
                        break
        graph[name] = frozenset(found - {name})
    return graph


def imported_by(seeds: tuple[str, ...]) -> set[str]:
    """``seeds`` and every package module they import, directly or not."""
    graph = _import_graph()
    seen: set[str] = set()
    stack = [s for s in seeds if s in graph]
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack.extend(graph[module] - seen)
    return seen


def scoped_version(seeds: tuple[str, ...], *, kinds: tuple[PluginKind, ...] = (), extra: tuple[str, ...] = ()) -> str:
    """``VERSION+HASH`` over the result-shaping modules ``seeds`` import (directly or not), the code of
    every loaded plugin of ``kinds``, and ``extra`` digests."""
    version = _modules_digest(seeds)
    plugins = sorted(plugin_sources(kinds).values()) if kinds else []
    if not plugins and not extra:
        return version
    blob = "\n".join([*plugins, *extra])
    return f"{version}+{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@functools.lru_cache(maxsize=None)
def _modules_digest(seeds: tuple[str, ...]) -> str:
    """The digest of the package modules ``seeds`` import: fixed for a process, like the sources
    it reads (:func:`_read`) and the import graph; computed once, since finding the package's
    files costs milliseconds and feature-cache keys ask for it on every lookup."""
    sources = package_sources()
    return digest_of({name: _read(sources[name]) for name in imported_by(seeds)})


@functools.lru_cache(maxsize=None)
def _read(path: Path) -> bytes:
    return path.read_bytes()


def pretraining_version() -> str:
    """The code a pretrained checkpoint depends on: what pretraining imports, and backbone and dataset
    plugins."""
    return scoped_version(("tlbench.run.pretrain",), kinds=("backbone", "dataset"))


def features_version() -> str:
    """The code a backbone's cached features depend on: what computing them imports, and backbone plugins."""
    return scoped_version(("tlbench.training.features",), kinds=("backbone",))


def strategy_version(cls: type, *, source: str | None = None) -> str:
    """The code a strategy's models depend on: the package modules its class and its bases are defined
    in and everything they import; for a plugin strategy (``source``: its code digest) the whole
    strategy API it may build on, and that digest."""
    seeds = tuple(sorted({c.__module__ for c in cls.__mro__ if c.__module__.startswith(PACKAGE + ".")}))
    if source is not None:
        seeds = (*seeds, f"{PACKAGE}.strategies")
    return scoped_version(seeds, extra=(source,) if source is not None else ())
