"""Published results beside tlbench's own: reference sets, one YAML file each, bundled under
``suites/references/`` or given by path, and a task's ``reference: SET#TASK`` naming its row.

A reference set::

    title: VTAB-1k, ViT-B/16 pretrained on ImageNet-21k
    sources:                      # key → the citation a report prints (paper, venue, table)
      jia2022: "Jia et al. 2022, Visual Prompt Tuning, ECCV, Table 1"
    results:                      # tlbench strategy → where its published numbers come from
      full_finetune:
        source: jia2022
        method: Full              # the paper's name for it
        tasks: {cifar100: 68.9, caltech101: 87.7}   # test accuracy in %, per task key

Resolving a task's reference (:func:`resolve`) keeps, per strategy, the published accuracy and its
citation; they travel in the task's facts into every run record, so a report needs nothing but the
store.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, format_error

BUNDLED = Path(__file__).resolve().parent / "references"


class PublishedResult(Frozen):
    source: str
    method: str
    tasks: dict[str, float] = Field(min_length=1)


class ReferenceSet(Frozen):
    title: str
    sources: dict[str, str] = Field(min_length=1)
    results: dict[str, PublishedResult] = Field(min_length=1)


def bundled_sets() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


@lru_cache(maxsize=None)
def _load(path: Path) -> ReferenceSet:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"reference set {path} cannot be read: {str(err).splitlines()[0]}") from None
    try:
        refs = ReferenceSet(**(data or {}))
    except (ValidationError, TypeError) as err:
        detail = format_error(err, ReferenceSet, str(path), sep=": ") if isinstance(err, ValidationError) else str(err)
        raise ConfigError(detail) from None
    for strategy, result in refs.results.items():
        if result.source not in refs.sources:
            raise ConfigError(f"{path}: results.{strategy}.source: {result.source!r} is not a key of sources; "
                              f"defined: {', '.join(refs.sources)}")
        for task, value in result.tasks.items():
            if not 0 <= value <= 100:
                raise ConfigError(f"{path}: results.{strategy}.tasks.{task}: {value} is not an accuracy in % (0..100)")
    return refs


def reference_path(name: str, suite_dir: Path) -> Path:
    """A bundled set's file, or a YAML file relative to the suite's folder."""
    if (BUNDLED / f"{name}.yaml").is_file():
        return BUNDLED / f"{name}.yaml"
    return (suite_dir / name).resolve()


def resolve(reference: str, suite_dir: Path, *, where: str) -> dict[str, Any]:
    """``SET#TASK`` → the task's published results: ``{"set", "title", "task", "values": {strategy: %},
    "methods": {strategy: the paper's name}, "sources": {strategy: citation}}``; one line when the set
    or the task is unknown."""
    name, sep, task = reference.partition("#")
    if not sep or not name or not task:
        raise ConfigError(f"{where}: {reference!r} must be SET#TASK (a bundled set: {', '.join(bundled_sets())}; "
                          f"or a YAML file relative to the suite)")
    path = reference_path(name, suite_dir)
    if not path.is_file():
        raise ConfigError(f"{where}: reference set {name!r} is neither bundled ({', '.join(bundled_sets())}) nor a "
                          f"file ({path} does not exist)")
    refs = _load(path)
    rows = {s: r for s, r in refs.results.items() if task in r.tasks}
    if not rows:
        known = sorted({t for r in refs.results.values() for t in r.tasks})
        raise ConfigError(f"{where}: reference set {name!r} has no task {task!r}; its tasks: {', '.join(known)}")
    return {"set": name, "title": refs.title, "task": task,
            "values": {s: r.tasks[task] for s, r in rows.items()},
            "methods": {s: r.method for s, r in rows.items()},
            "sources": {s: refs.sources[r.source] for s, r in rows.items()}}
