"""The suite file schema: YAML parsed once, at the edge, into frozen typed objects."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import ConfigError


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(Frozen):
    """How a task's train / val / test splits are drawn from its dataset.

    Test is the dataset's official test split when it has one, else a stratified
    ``test_fraction`` of the pool. Validation is ``val_per_class`` examples per class
    (or ``val_fraction``) from the rest; train is the remainder, or ``shots`` per class.
    """

    seed: int = 0
    test_fraction: float = Field(0.3, gt=0, lt=1)
    val_per_class: int | None = Field(None, gt=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    shots: int | None = Field(None, gt=0)
    max_test: int | None = Field(None, gt=0)


class ShiftSpec(Frozen):
    """A deterministic corruption of the test split, scored as out-of-distribution."""

    kind: Literal["noise", "rotation", "translation"]
    severity: float = Field(gt=0)
    seed: int = 0


class TaskSpec(Frozen):
    dataset: str
    args: dict[str, Any] = Field(default_factory=dict)
    classes: list[int] | None = None
    split: SplitSpec = SplitSpec()
    shift: ShiftSpec | None = None
    backbones: list[str] = Field(default_factory=list)


class PretrainSpec(Frozen):
    task: str
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


class BackboneSpec(Frozen):
    arch: str
    args: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    checkpoint: str | None = None
    pretrain: PretrainSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "BackboneSpec":
        given = [k for k in ("weights", "checkpoint", "pretrain") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of weights, checkpoint, pretrain (got {', '.join(given)})")
        return self


class TrainingSpec(Frozen):
    """Training settings shared by every strategy, so all get the same budget."""

    epochs: tuple[int, int] = (5, 40)
    batch_size: int = Field(32, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "TrainingSpec":
        if not 0 < self.epochs[0] <= self.epochs[1]:
            raise ValueError(f"epochs must be [min, max] with 0 < min <= max, got {list(self.epochs)}")
        return self


class SearchSpec(Frozen):
    """Sampler and pruner settings, identical for every strategy of a suite."""

    sampler_startup_trials: int | None = Field(None, ge=0)  # default: max(3, trials // 3)
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(3, ge=0)
    pruner_warmup_epochs: int = Field(3, ge=0)


class Suite(Frozen):
    name: str
    seed: int = 0
    trials: int = Field(10, gt=0)
    seeds: int = Field(3, gt=0)
    strategies: list[str]
    training: TrainingSpec = TrainingSpec()
    search: SearchSpec = SearchSpec()
    source_tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    tasks: dict[str, TaskSpec]
    backbones: dict[str, BackboneSpec]
    path: str = ""

    def fingerprint(self) -> str:
        blob = json.dumps(self.model_dump(exclude={"path"}), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def task_spec(self, name: str) -> TaskSpec:
        return self.tasks.get(name) or self.source_tasks[name]


def _format_error(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{path}: {loc}: unknown field; check its spelling"
    if first["type"] == "missing":
        return f"{path}: {loc}: required field is missing"
    return f"{path}: {loc}: {first['msg']} (got {first.get('input')!r})"


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite must be a mapping of fields, got {type(data).__name__}")
    include = data.pop("include", None)
    if include is None:
        return data
    base_path = (path.parent / str(include)).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: include: cycle through {base_path}")
    return _merge(_read_yaml(base_path, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges ``over`` into ``base``; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_suite(path: Path) -> Suite:
    """Reads and validates the schema of a suite file (names are checked by the planner)."""
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return Suite(**data, path=str(path))
    except ValidationError as err:
        raise ConfigError(_format_error(str(path), err)) from None
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None
