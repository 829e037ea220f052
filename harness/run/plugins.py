"""Plugins: strategies, backbones and datasets from outside the package.

Two ways in, both registering into the same registries as the built-ins:

- a suite's ``plugins:`` list: Python files (paths relative to the suite file) or names of
  importable modules. Every public class a plugin defines (not imports) that subclasses
  :class:`~tlbench.Strategy`, :class:`~tlbench.Backbone`, :class:`~tlbench.Dataset` or
  :class:`~tlbench.Scorer` is registered under its ``name``.
- entry points of installed distributions, in the groups ``tlbench.strategies``,
  ``tlbench.backbones``, ``tlbench.datasets`` and ``tlbench.scorers``: each names one class of that kind. They are
  found without any suite line.

Each registered class keeps its origin (the file and its hash, or the distribution and its
version): records carry it, and its code digest is part of the code version. Anything wrong
— a missing file, a syntax or import error inside, a name that is taken, a class of the wrong
kind — is one :class:`PluginError` line naming the plugin, the name and the reason.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from tlbench.core.errors import ConfigError
from tlbench.core.registry import Registry
from tlbench.selection.scorers import SCORERS, Scorer
from tlbench.strategies import STRATEGIES, Strategy
from tlbench.suites.datasets import DATASETS
from tlbench.suites.pools import Dataset
from tlbench.training.backbones import BACKBONES, Backbone

#: entry-point group → the registry it fills
GROUPS: dict[str, Registry[Any]] = {"tlbench.strategies": STRATEGIES, "tlbench.backbones": BACKBONES,
                                    "tlbench.datasets": DATASETS, "tlbench.scorers": SCORERS}
KINDS: tuple[tuple[type, Registry[Any]], ...] = ((Strategy, STRATEGIES), (Backbone, BACKBONES),
                                                 (Dataset, DATASETS), (Scorer, SCORERS))


class PluginError(ConfigError):
    """A plugin cannot be loaded or registered (one line, exit code 2)."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: where it came from, a digest of its code, what it registered."""

    origin: str
    source: str
    registered: tuple[tuple[str, str], ...]  # (kind, name)
    classes: tuple[type, ...] = ()


def _failure(err: BaseException, path: Path | None = None) -> str:
    """What went wrong inside a plugin, in a few words: the error and where in its code."""
    if isinstance(err, SyntaxError):
        where = f" in {Path(err.filename).name}" if err.filename and path and Path(err.filename) != path else ""
        return f"syntax error{where} at line {err.lineno}: {err.msg}"
    frames = traceback.extract_tb(err.__traceback__)
    inside = [f for f in frames if path is None or Path(f.filename) == path]
    if inside and path is not None:
        at = f" (line {inside[-1].lineno})"
    elif inside:
        at = f" ({Path(inside[-1].filename).name}, line {inside[-1].lineno})"
    else:
        at = ""
    message = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {message}{at}"


def source_digest(files: Sequence[Path]) -> str:
    """A digest of a plugin's code: the contents of its Python files, by name (not where
    they are, so moving a plugin's folder does not re-key the caches)."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def file_digests(files: Sequence[Path]) -> dict[str, str]:
    """Each file of a plugin's code by name → a digest of its contents (what a refusal names)."""
    return {file.name: hashlib.sha256(file.read_bytes()).hexdigest()[:16]
            for file in sorted(files, key=lambda f: f.name)}


def local_imports(path: Path) -> list[Path]:
    """A plugin file and the helper modules beside it that it imports, directly or through one another
    (modules and packages in its folder): its code. Other files in the folder are not."""
    import ast

    found: dict[Path, None] = {}
    stack = [path]
    while stack:
        file = stack.pop()
        if file in found:
            continue
        found[file] = None
        try:
            tree = ast.parse(file.read_bytes())
        except SyntaxError:
            continue  # reported when it is imported
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        for name in names:
            module, package = path.parent / f"{name}.py", path.parent / name
            if module.is_file():
                stack.append(module)
            elif (package / "__init__.py").is_file():
                stack.extend(p for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts)
    return list(found)


def _module_files(module: ModuleType) -> list[Path]:
    """A module's Python files: every file of its top-level package, or the module's file."""
    top = sys.modules.get(module.__name__.split(".")[0], module)
    locations = list(getattr(top, "__path__", []) or [])
    if locations:
        return sorted(p for loc in locations for p in Path(loc).rglob("*.py") if "__pycache__" not in p.parts)
    file = getattr(module, "__file__", None)
    return [Path(file)] if file and Path(file).is_file() else []


def _import_file(path: Path, source: str) -> ModuleType:
    name = f"tlbench_plugin_{path.stem.replace('-', '_')}_{source[:8]}"
    if name in sys.modules:  # the same file, unchanged, loaded before in this process
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:  # its helper modules beside it import as usual, also
        sys.path.append(str(path.parent))  # lazily inside fit (appended: it shadows nothing)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _classes(module: ModuleType) -> list[type]:
    """The public, concrete Strategy/Backbone/Dataset subclasses ``module`` defines."""
    found = []
    for attr, obj in vars(module).items():
        if (isinstance(obj, type) and obj.__module__ == module.__name__ and not attr.startswith("_")
                and not inspect.isabstract(obj) and any(issubclass(obj, base) for base, _ in KINDS)):
            found.append(obj)
    return found


def register(cls: Any, registry: Registry[Any], *, origin: str, source: str, where: str,
             files: dict[str, str] | None = None) -> tuple[str, str]:
    """Adds one plugin class to ``registry``; every refusal is a :class:`PluginError`."""
    try:
        registry.add(cls, origin=origin, source=source, files=files)
    except TypeError as err:
        wrong_base = not (isinstance(cls, type) and issubclass(cls, registry.base))
        raise PluginError(f"{where}: {err}" + (f"; a {registry.kind} plugin must subclass "
                                               f"tlbench.{registry.base.__name__}" if wrong_base else "")) from None
    except ValueError as err:
        raise PluginError(f"{where}: {err}") from None
    return registry.kind, cls.name


def load_suite_plugins(entries: Sequence[str], *, base: Path, where: str) -> list[Plugin]:
    """Loads the plugins a suite lists (``where``: the suite file, for errors); file paths
    are relative to ``base``, the suite's folder."""
    return [load_plugin(entry, base=base, where=f"{where}: plugins[{i}] {entry!r}")
            for i, entry in enumerate(entries)]


def load_plugin(entry: str, *, base: Path, where: str) -> Plugin:
    """One plugin: a ``.py`` file (absolute, or relative to ``base``) or a module name."""
    path: Path | None = None
    if entry.endswith(".py") or "/" in entry:
        path = (base / entry).resolve() if not Path(entry).is_absolute() else Path(entry)
        if not path.is_file():
            raise PluginError(f"{where}: no such file (looked for {path})")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        origin = f"file {path} (sha256 {sha})"
    try:
        if path is not None:
            module = _import_file(path, sha)
        else:
            module = importlib.import_module(entry)
    except ModuleNotFoundError as err:
        if path is None and err.name == entry.split(".")[0]:
            raise PluginError(f"{where}: no such module, and no such file (a file plugin ends in .py)") from None
        raise PluginError(f"{where}: import failed: {_failure(err, path)}") from None
    except Exception as err:  # noqa: BLE001 - any error inside a plugin is the plugin's, in one line
        raise PluginError(f"{where}: import failed: {_failure(err, path)}") from None
    if path is None:
        code = _module_files(module)
        origin = f"module {entry}{_distribution_of(entry)} (sha256 {source_digest(code)})"
    else:  # the file and the helper modules beside it that it imports
        code = local_imports(path)
    source = source_digest(code)
    classes = _classes(module)
    if not classes:
        raise PluginError(f"{where}: defines no public Strategy, Backbone or Dataset subclass to register")
    registered = []
    for cls in classes:
        registry = next(reg for base, reg in KINDS if issubclass(cls, base))
        registered.append(register(cls, registry, origin=origin, source=source, where=f"{where}: {cls.__name__}",
                                   files=file_digests(code)))
    return Plugin(origin, source, tuple(registered), tuple(classes))


def _distribution_of(module: str) -> str:
    dists = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    if not dists:
        return ""
    return f", distribution {dists[0]} {importlib.metadata.version(dists[0])}"


_LOADED_ENTRY_POINTS: list[Plugin] | None = None


def load_entry_points() -> list[Plugin]:
    """Registers the classes installed distributions declare in the ``tlbench.*`` groups
    (once per process)."""
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS is not None:
        return _LOADED_ENTRY_POINTS
    plugins: list[Plugin] = []
    for group, registry in GROUPS.items():
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
            where = f"entry point {ep.name} = {ep.value} (group {group}, {dist})"
            try:
                cls = ep.load()
            except Exception as err:  # noqa: BLE001
                raise PluginError(f"{where}: import failed: {_failure(err)}") from None
            module = sys.modules.get(getattr(cls, "__module__", ""), None)
            source = source_digest(_module_files(module)) if module is not None else f"{dist}:{ep.value}"
            origin = f"distribution {dist} ({ep.value})"
            plugins.append(Plugin(origin, source, (register(cls, registry, origin=origin, source=source,
                                                            where=where),)))
    _LOADED_ENTRY_POINTS = plugins
    return plugins
