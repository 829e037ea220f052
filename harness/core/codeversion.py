"""The identity of the code that computes results, derived from the package's own sources.

Cache keys (pretrained checkpoints, probe features, reused-model artifacts) include
:func:`code_version`. It hashes every Python source of the installed package — found by
walking the package directories, not listed by hand — except the modules that only present
results (reports and the command line), so editing a strategy, the data pipeline or the
training loop invalidates exactly the caches it should, and editing a table does not.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import Mapping

from tlbench.core.registry import plugin_sources
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
