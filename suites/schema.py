"""The suite file schema: YAML parsed once, at the edge, into frozen typed objects."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import Field, PrivateAttr, Strict, ValidationError, field_validator, model_validator

from tlbench.core.budget import Budget
from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, Int, fields_at, format_error, validate_block
from tlbench.suites.datasets import DATASETS
from tlbench.suites.reading import read_suite_file
from tlbench.training.backbones import BACKBONES, Backbone

Seed = Annotated[int, Strict(), Field(ge=0, lt=2**32)]


NAME = re.compile(r"[A-Za-z0-9_.+-]+")


class SplitSpec(Frozen):
    """How a task's train / val / test splits are drawn from its dataset.

    Test is the dataset's official test split when it has one, else a stratified
    ``test_fraction`` of the pool. Validation is ``val_per_class`` examples per class
    (or ``val_fraction``) from the rest; train is the remainder, or ``shots`` per class.
    """

    seed: Seed = 0
    # "vtab1k": 800 train + 200 val drawn at random (seeded) from the official training
    # split (the 200 from the official val split where there is one), the official test
    # split for test (Zhai et al. 2019); the per-class fields do not apply.
    # "official": the dataset's own train / val / test (val carved from train as in
    # "default" when the dataset has no official val; the default pools train and val).
    protocol: Literal["default", "vtab1k", "official"] = "default"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    val_per_class: Int | None = Field(None, gt=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    shots: Int | None = Field(None, gt=0)
    max_test: Int | None = Field(None, gt=0)
    # Datasets without an official test split: per class, this many (seeded) examples are
    # kept for train + val and all the others are test, instead of a test_fraction
    # (Kornblith et al.'s Caltech-101 protocol: 30 per class, the rest test).
    train_per_class: Int | None = Field(None, gt=0)
    # What the evaluation runs train on: the train split (tuning's), or train + val — the protocol of
    # the PEFT papers' VTAB-1k (tune on train800 / val200, the final model on train800val200, scored
    # on test). Tuning always trains on train and validates on val.
    final_fit: Literal["train", "train+val"] = "train"
    LATER_FIELDS = ("train_per_class", "final_fit")

    @model_validator(mode="after")
    def _protocol_fields(self) -> "SplitSpec":
        if self.protocol == "vtab1k":
            given = [f for f in ("shots", "val_per_class") if getattr(self, f) is not None]
            if given:
                raise ValueError(f"protocol vtab1k draws 800 train + 200 val examples; remove {', '.join(given)}")
        return self


class ShiftSpec(Frozen):
    """A deterministic corruption of the test split, scored as out-of-distribution."""

    kind: Literal["noise", "rotation", "translation"]
    severity: float = Field(gt=0)
    seed: Seed = 0


class _Typed(Frozen):
    """A spec whose ``args`` block is validated into its class's ``Args`` model once (by
    :func:`parse_suite` for every spec of a suite file) and kept; ``args`` stays the
    mapping the file gave, which is what fingerprints hash."""

    _typed: Frozen | None = PrivateAttr(None)

    def _resolve(self, registry: Any, name: str, field: str, where: str) -> Frozen:
        if self._typed is None:
            cls = registry.get(name, where=f"{where}.{field}" if where else "")
            self._typed = validate_block(cls.Args, self.args, where=f"{where}.args" if where else "args")
        return self._typed


class TaskSpec(_Typed):
    dataset: str
    args: dict[str, Any] = Field(default_factory=dict)
    classes: list[Int | str] | None = None  # indices into the sorted class names, or the names
    split: SplitSpec = SplitSpec()
    shift: ShiftSpec | None = None
    backbones: list[str] = Field(default_factory=list)
    # Image-file datasets only: the crop size (default: the backbone weights' own, e.g. 224), or
    # ``native`` (the images as they are: no resize, no crop), and training augmentation
    # (random resized crop and/or horizontal flip).
    image_size: Annotated[int, Strict(), Field(ge=8, le=1024)] | Literal["native"] | None = None
    augment: Literal["none", "flip", "crop_flip"] = "none"
    # How images reach image_size: resize the shorter side and centre-crop (torchvision's and timm's
    # evaluation presets), or stretch both sides to it (the PEFT papers' VTAB-1k: Resize((224, 224))).
    image_resize: Literal["crop", "stretch"] = "crop"
    # One field swept over values: the suite expands the task into one task per value, named
    # ``<task>.<field><value>`` (see :func:`expand_sweeps`); never left on a parsed suite.
    sweep: dict[str, list[Any]] | None = None
    # The task's group in a benchmark's report (VTAB-1k's natural / specialized / structured): the
    # report adds per-group means, the mean over tasks and the mean of the group means.
    group: str | None = None
    # Published results for this task, ``SET#TASK``: a bundled reference set (suites/references/) or a
    # YAML file relative to the suite, and the task's key in it (see tlbench.suites.literature).
    reference: str | None = None
    LATER_FIELDS = ("image_size", "augment", "sweep", "group", "reference", "image_resize")
    # (family, field, value) of a task expanded from a sweep; reports group by it.
    _swept: tuple[str, str, Any] | None = PrivateAttr(None)

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, value: Any) -> Any:
        """One message for every wrong value, naming both kinds of value allowed."""
        if value is None or value == "native" or (type(value) is int and 8 <= value <= 1024):
            return value
        raise ValueError(f"allowed: a number of pixels from 8 to 1024, or native (got {value!r})")

    @property
    def swept(self) -> tuple[str, str, Any] | None:
        return self._swept

    #: The resolved ``reference`` (:func:`tlbench.suites.literature.resolve`), set when the suite is parsed.
    _published: dict[str, Any] | None = PrivateAttr(None)

    @property
    def published(self) -> dict[str, Any] | None:
        return self._published

    def typed_args(self, where: str = "") -> Frozen:
        """``args`` as the dataset's ``Args`` (``where``: the prefix of errors)."""
        return self._resolve(DATASETS, self.dataset, "dataset", where)


class PretrainSpec(Frozen):
    task: str
    epochs: Int = Field(3, gt=0)
    batch_size: Int = Field(128, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: Seed = 0


class BackboneSpec(_Typed):
    arch: str
    args: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    checkpoint: str | None = None
    pretrain: PretrainSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _timm_shorthand(cls, data: Any) -> Any:
        """``arch: timm:<name>`` is ``arch: timm`` with ``args.model: <name>``."""
        if isinstance(data, dict) and isinstance(data.get("arch"), str) and data["arch"].startswith("timm:"):
            args = data.get("args") or {}
            if isinstance(args, dict):
                return {**data, "arch": "timm", "args": {**args, "model": data["arch"][len("timm:"):]}}
        return data

    @property
    def arch_class(self) -> type[Backbone]:
        return BACKBONES.get(self.arch)

    def typed_args(self, where: str = "") -> Frozen:
        """``args`` as the architecture's ``Args`` (``where``: the prefix of errors)."""
        return self._resolve(BACKBONES, self.arch, "arch", where)

    @model_validator(mode="after")
    def _one_source(self) -> "BackboneSpec":
        given = [k for k in ("weights", "checkpoint", "pretrain") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of weights, checkpoint, pretrain (got {', '.join(given)})")
        return self


class TrainingSpec(Frozen):
    """Training settings shared by every strategy, so all get the same budget."""

    epochs: tuple[Int, Int] = (5, 40)
    batch_size: Int = Field(32, gt=0)
    # Weight decay on biases and normalisation parameters too (every parameter); by default,
    # as in timm and most fine-tuning recipes, only parameters of two or more dimensions decay.
    # In the fingerprint even at its default: the default changed (all parameters decayed
    # before), so a store of the earlier convention is not extended with runs of this one.
    decay_norm_and_bias: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "TrainingSpec":
        if not 0 < self.epochs[0] <= self.epochs[1]:
            raise ValueError(f"epochs must be [min, max] with 0 < min <= max, got {list(self.epochs)}")
        return self


SAMPLERS = ("tpe", "random", "qmc", "grid", "cmaes", "gp")


class SearchSpec(Frozen):
    """Sampler and pruner settings, identical for every strategy of a suite."""

    # Optuna's TPE (default), random, quasi-Monte Carlo (scrambled Sobol), CMA-ES, Gaussian
    # process; or an exhaustive grid (float ranges cut into ``grid_points`` values).
    sampler: Literal["tpe", "random", "qmc", "grid", "cmaes", "gp"] = "tpe"
    sampler_startup_trials: Int | None = Field(None, ge=0)  # default: max(3, trials // 3)
    # median (Optuna's MedianPruner), successive_halving (asynchronous successive halving, Optuna's
    # SuccessiveHalvingPruner), hyperband (Optuna's HyperbandPruner) or none.
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    pruner_startup_trials: Int = Field(3, ge=0)  # median: trials never pruned
    # median: epochs never pruned; successive halving and Hyperband: the first rung (min_resource, at least 1)
    pruner_warmup_epochs: Int = Field(3, ge=0)
    # successive halving and Hyperband: the share kept at each rung is 1 / this (default: Optuna's, 4 and 3)
    pruner_reduction_factor: Int | None = Field(None, ge=2, le=100)
    grid_points: Int = Field(3, ge=2, le=100)  # grid sampler: values per float (or wide int) range
    LATER_FIELDS = ("sampler", "grid_points", "pruner_reduction_factor")

    @model_validator(mode="after")
    def _reduction_factor(self) -> "SearchSpec":
        if self.pruner_reduction_factor is not None and self.pruner not in ("successive_halving", "hyperband"):
            raise ValueError(f"pruner_reduction_factor: applies to the successive_halving and hyperband pruners, "
                             f"not {self.pruner!r}")
        return self


class SensitivitySpec(Frozen):
    """Re-runs a strategy's tuned configuration with one hyperparameter (or two) set to
    each value of a grid, ``seeds`` evaluation seeds per value."""

    strategy: str
    params: dict[str, list[Any]] = Field(min_length=1, max_length=2)
    seeds: Int = Field(3, gt=0, le=1000)
    tasks: list[str] | None = None  # default: every task of the suite; a swept task's name: all its tasks

    def covers(self, task: str, spec: "TaskSpec") -> bool:
        """Whether the study runs on ``task`` (named, or one of a named sweep's tasks)."""
        return not self.tasks or task in self.tasks or (spec.swept is not None and spec.swept[0] in self.tasks)

    @model_validator(mode="after")
    def _values(self) -> "SensitivitySpec":
        for name, values in self.params.items():
            if not values:
                raise ValueError(f"params.{name}: give at least one value")
        return self


class ModelSelectionSpec(Frozen):
    """Transferability scores of the suite's backbones, ranked against their fine-tuned accuracy.

    ``scorers``: registry names (default: every registered scorer); ``ground_truth``: the suite's
    strategies whose fine-tuned accuracy the scores are ranked against (default: all of them);
    ``seeds``: how often a randomised scorer (N-LEEP) is repeated."""

    scorers: list[str] | None = Field(None, min_length=1)
    ground_truth: list[str] | None = Field(None, min_length=1)
    seeds: Int = Field(3, gt=0, le=100)


class Suite(Frozen):
    name: str
    seed: Seed = 0
    # Bounded so that tuning slots stay below the evaluation seeds' offset (500,000).
    trials: Int = Field(10, gt=0, lt=500_000)
    seeds: Int = Field(3, gt=0, le=100_000)
    strategies: list[str] = Field(min_length=1)
    # Per-strategy settings (a distillation's student, an ensemble's members), by name;
    # each strategy's ``Options`` model validates its block.
    strategy_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    training: TrainingSpec = TrainingSpec()
    search: SearchSpec = SearchSpec()
    # Per strategy, hyperparameters of its search space fixed (``optimizer: sgd``), given
    # another range (``lr_sgd: {low: 1.0e-3, high: 0.1, log: true}``; YAML reads 1e-3 as text) or fewer choices
    # (``optimizer: [sgd]``); checked against the strategy's declared space by the planner.
    search_space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # ``{trials: N}`` (the top-level ``trials``) or ``{epochs: E}``: see tlbench.core.budget.Budget.
    budget: Budget | None = None
    sensitivity: list[SensitivitySpec] = Field(default_factory=list)
    source_tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    tasks: dict[str, TaskSpec]
    backbones: dict[str, BackboneSpec]
    # Where image datasets live (relative: to the suite file; default $TLBENCH_DATA, else
    # data/ in the cache directory) and whether missing ones may be downloaded. Neither
    # changes results.
    data_root: str | None = None
    download: bool = False
    # Strategies, backbones and datasets from outside tlbench: Python files (relative to the
    # suite file) or module names. Not part of the fingerprint: a plugin's code is part of the
    # code version, and every record names its strategy's origin.
    plugins: list[str] = Field(default_factory=list)
    # Scores computed from the backbones before fine-tuning, ranked against it: not part of the
    # fingerprint (they change no cell's results).
    model_selection: ModelSelectionSpec | None = None
    path: str = ""
    _whole_fingerprint: str | None = PrivateAttr(None)  # a selection's: the whole suite's (selected())
    _whole_settings: dict[str, Any] | None = PrivateAttr(None)  # likewise
    #: The command line's ``--set PATH=VALUE`` arguments this suite was read with (parse_suite).
    _overrides: tuple[str, ...] = PrivateAttr(())

    @model_validator(mode="before")
    @classmethod
    def _empty_model_selection(cls, data: Any) -> Any:
        """A bare ``model_selection:`` line (YAML null) asks for the defaults, as ``{}`` does."""
        if isinstance(data, dict) and "model_selection" in data and data["model_selection"] is None:
            return {**data, "model_selection": {}}
        return data
    LATER_FIELDS = ("search_space", "sensitivity", "model_selection")

    @model_validator(mode="before")
    @classmethod
    def _budget_trials(cls, data: Any) -> Any:
        """``budget: {trials: N}`` is the top-level ``trials: N`` (both: they must agree)."""
        if isinstance(data, dict) and isinstance(data.get("budget"), dict) and "trials" in data["budget"]:
            trials = data["budget"]["trials"]
            if "trials" in data and data["trials"] != trials:
                raise ValueError(f"trials: {data['trials']!r} and budget.trials: {trials!r} disagree; give one")
            data = {**data, "trials": trials}
        return data

    @property
    def tuning_budget(self) -> Budget:
        """What each cell's tuning may spend: ``trials`` finished trials, or the ``budget:`` block's
        epochs (a grid search's cells are budgeted by their grid: :meth:`tlbench.run.plan.Plan.budget`)."""
        if self.budget is not None and self.budget.epochs is not None:
            return self.budget
        return Budget(trials=self.trials)

    @model_validator(mode="after")
    def _names(self) -> "Suite":
        # Names become parts of study names ("suite::task::backbone::strategy::kind").
        groups = {"name": [self.name], "tasks": self.tasks, "source_tasks": self.source_tasks,
                  "backbones": self.backbones}
        for group, names in groups.items():
            for name in names:
                if not NAME.fullmatch(name):
                    raise ValueError(f"{group}: name {name!r} must match {NAME.pattern} "
                                     f"(letters, digits, '_', '-', '.', '+')")
        return self

    def fingerprint(self) -> str:
        """A hash of everything that changes a cell's results. The budget (trials, seeds)
        and the strategy list are left out: extending or narrowing a run reuses its store; a
        suite narrowed to some tasks or backbones (``--tasks``, ``--backbones``) keeps the whole
        suite's fingerprint (:meth:`selected`)."""
        if self._whole_fingerprint is not None:
            return self._whole_fingerprint
        blob = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def settings(self) -> dict[str, Any]:
        """The settings the fingerprint hashes, as plain JSON values: what a run stores beside the
        fingerprint so that a refusal, a report and ``tlbench compare`` can name the fields that
        differ (a selection's are the whole suite's)."""
        if self._whole_settings is not None:
            return self._whole_settings
        return json.loads(json.dumps(self.model_dump(exclude={"path", "trials", "seeds", "strategies", "data_root",
                                                               "download", "plugins", "budget", "sensitivity",
                                                               "model_selection"}),
                                     sort_keys=True, default=str))

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``--set`` arguments the suite was read with (empty: none)."""
        return self._overrides

    def selected(self, tasks: list[str] | None, backbones: list[str] | None) -> "Suite":
        """The suite narrowed to ``tasks`` and, within them, ``backbones`` (None: all), as the
        command line's ``--tasks`` and ``--backbones`` ask; it keeps the whole suite's
        fingerprint, so its cells are the whole suite's and share its store. A name the suite
        does not have, or a selection that leaves no cell, is one line."""
        if tasks is None and backbones is None:
            return self
        families = sorted({spec.swept[0] for spec in self.tasks.values() if spec.swept is not None})
        for flag, names, known in (("--tasks", tasks, [*self.tasks, *families]), ("--backbones", backbones,
                                                                                   list(self.backbones))):
            if names is None:
                continue
            if not names:
                raise ConfigError(f"{flag}: give at least one; the suite's: {', '.join(known)}")
            for name in names:
                if name not in known:
                    raise ConfigError(f"{flag}: {name!r} is not one of the suite's ({', '.join(known)})")
        chosen = {}
        for name, spec in self.tasks.items():  # a sweep's name selects all its tasks
            if tasks is not None and name not in tasks and (spec.swept is None or spec.swept[0] not in tasks):
                continue
            kept = [b for b in spec.backbones if backbones is None or b in backbones]
            if kept:
                chosen[name] = spec.model_copy(update={"backbones": kept})
        if not chosen:
            uses = "; ".join(f"{t}: {' '.join(spec.backbones)}" for t, spec in self.tasks.items()
                             if tasks is None or t in tasks)
            raise ConfigError(f"--tasks/--backbones: no selected task uses those backbones ({uses})")
        used = {b for spec in chosen.values() for b in spec.backbones}
        unused = [b for b in backbones or [] if b not in used]
        if unused:
            raise ConfigError(f"--backbones: {', '.join(map(repr, unused))} is on none of the selected tasks")
        # a left-out task that a kept backbone pretrains on is still needed: as a source task
        sources = {spec.pretrain.task for spec in self.backbones.values() if spec.pretrain}
        kept_sources = {**self.source_tasks, **{name: spec for name, spec in self.tasks.items()
                                                 if name not in chosen and name in sources}}
        studies = []  # sensitivity studies on the selected tasks only (none: dropped from this run)
        for study in self.sensitivity:
            on = [t for t in study.tasks or [] if any(study.covers(n, spec) and (n == t or (spec.swept is not None
                                                                                        and spec.swept[0] == t))
                                                      for n, spec in chosen.items())]
            if not study.tasks or on:
                studies.append(study if not study.tasks else study.model_copy(update={"tasks": on}))
        narrowed = self.model_copy(update={"tasks": chosen, "source_tasks": kept_sources, "sensitivity": studies})
        narrowed._whole_fingerprint = self.fingerprint()
        narrowed._whole_settings = self.settings()
        narrowed._overrides = self._overrides
        return narrowed

    def task_spec(self, name: str) -> TaskSpec:
        return self.tasks.get(name) or self.source_tasks[name]

    def task_where(self, name: str) -> str:
        """``FILE: tasks.NAME`` or ``FILE: source_tasks.NAME``: the prefix of error messages."""
        group = "tasks" if name in self.tasks else "source_tasks"
        return f"{self.path}: {group}.{name}"


#: Fields a task may sweep: a short name and where it lives in the task's spec.
SWEEPABLE = {"shots": ("split", "shots"), "val_per_class": ("split", "val_per_class"),
             "train_per_class": ("split", "train_per_class"), "max_test": ("split", "max_test"),
             "test_fraction": ("split", "test_fraction"), "val_fraction": ("split", "val_fraction"),
             "split_seed": ("split", "seed"), "severity": ("shift", "severity"), "image_size": ("image_size",)}


def sweep_name(task: str, field: str, value: Any) -> str:
    """The name of the task a sweep makes for one value: ``digits.shots5``,
    ``mnist.severity0.25`` (floats in their shortest form)."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{task}.{field}{text}"


def expand_sweeps(suite: Suite) -> Suite:
    """The suite with every task that sweeps a field replaced by one task per value (in the
    order given), each remembering its family, field and value; errors name the field."""
    where = suite.path
    if not any(spec.sweep for spec in suite.tasks.values()):
        for name, spec in suite.source_tasks.items():
            if spec.sweep:
                raise ConfigError(f"{where}: source_tasks.{name}.sweep: only tasks (not source tasks) can sweep")
        return suite
    tasks: dict[str, TaskSpec] = {}
    for name, spec in suite.tasks.items():
        if spec.sweep is None:
            tasks[name] = spec
            continue
        at = f"{where}: tasks.{name}.sweep"
        if len(spec.sweep) != 1:
            given = ", ".join(spec.sweep) or "none"
            raise ConfigError(f"{at}: sweep exactly one field (got {len(spec.sweep)}: {given})")
        (field, values), = spec.sweep.items()
        if field not in SWEEPABLE:
            raise ConfigError(f"{at}: {field!r} cannot be swept; sweepable fields: {', '.join(SWEEPABLE)}")
        if not values:
            raise ConfigError(f"{at}.{field}: empty sweep; list at least one value")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{at}.{field}: {values} lists a value twice")
        route = SWEEPABLE[field]
        if route[0] == "shift" and spec.shift is None:
            raise ConfigError(f"{at}: sweeping {field!r} needs a shift: block on the task")
        base = spec.model_dump(exclude={"sweep"})
        for value in values:
            data = json.loads(json.dumps(base, default=str))
            if len(route) == 2:
                data.setdefault(route[0], {})[route[1]] = value
            else:
                data[route[0]] = value
            try:
                expanded = TaskSpec(**data)
            except ValidationError as err:
                raise ConfigError(format_error(err, TaskSpec, f"{at}.{field}", sep=": ").replace(
                    f"{at}.{field}: {'.'.join(route)}", f"{at}.{field}") + f" (sweep value {value!r})") from None
            expanded._swept = (name, field, value)
            new = sweep_name(name, field, value)
            if not NAME.fullmatch(new):
                raise ConfigError(f"{at}.{field}: value {value!r} makes the task name {new!r}, which must match "
                                  f"{NAME.pattern}")
            if new in suite.tasks or new in tasks or new in suite.source_tasks:
                raise ConfigError(f"{at}: the swept task {new!r} clashes with another task of that name")
            tasks[new] = expanded
    return suite.model_copy(update={"tasks": tasks})


def parse_suite(path: Path, *, plugins: Callable[[Suite], object] | None = None,
                overrides: tuple[str, ...] = ()) -> Suite:
    """Reads and validates a suite file: its schema, and each dataset's and backbone's
    ``args`` against the class it names (typed once, kept on the spec). ``plugins`` is
    called in between, to register what the suite's ``plugins:`` provide (the planner's
    loader). References between its parts and the strategies' options are checked by the
    planner. ``overrides`` are the command line's ``--set PATH=VALUE`` arguments, applied before
    validation (the planner names the one an error is about: :func:`blamed`)."""
    suite = _validated(path, read_suite_file(path, overrides), plugins)
    suite._overrides = tuple(overrides)
    return suite


def blamed(err: ConfigError, overrides: tuple[str, ...]) -> ConfigError:
    """``err`` prefixed with the ``--set`` arguments that set the field it is about (itself if none,
    or if it is already about a malformed ``--set``)."""
    if str(err).startswith("--set "):
        return err
    named = [arg for arg in overrides if _names_field(str(err), arg.partition("=")[0])]
    return ConfigError(f"{' '.join(f'--set {arg}' for arg in named)}: {err}") if named else err


def _names_field(message: str, dotted: str) -> bool:
    """Whether an error ``message`` is about the field at ``dotted`` (or a field inside it), also when a
    check of the block holding it names it in words (``training: epochs must be …`` for ``training.epochs``)."""
    if any(f"{sep}{dotted}{end}" in message for sep in (": ", " ", "(") for end in (":", ".", " ", ")", "[")):
        return True
    parent, _, leaf = dotted.rpartition(".")
    return bool(parent) and f": {parent}: {leaf} " in message


def settings_suite(path: Path, data: dict[str, Any]) -> Suite:
    """The suite validated as far as its settings and fingerprint need (fields, types, sweeps), without
    loading plugins or checking datasets' and backbones' arguments: what ``tlbench status`` compares with
    a store, without the training stack."""
    return _validated(path, dict(data), None, typed=False)


def _validated(path: Path, data: dict[str, Any], plugins: Callable[[Suite], object] | None, *,
               typed: bool = True) -> Suite:
    for key in data:
        if not isinstance(key, str) or key == "path":
            allowed = ", ".join(fields_at(Suite, ()) or [])
            raise ConfigError(f"{path}: {key}: unknown field; allowed: {allowed}")
    data.setdefault("name", path.stem)
    try:
        suite = Suite(**data, path=str(path))
    except ValidationError as err:
        raise ConfigError(format_error(err, Suite, str(path), sep=": ")) from None
    suite = expand_sweeps(suite)
    if not typed:
        return suite
    if plugins is not None:
        plugins(suite)
    for group, specs in (("source_tasks", suite.source_tasks), ("tasks", suite.tasks)):
        for name, spec in specs.items():
            spec.typed_args(f"{path}: {group}.{name}")
    for name, backbone in suite.backbones.items():
        backbone.typed_args(f"{path}: backbones.{name}")
    for name, spec in suite.tasks.items():
        if spec.reference is not None:
            from tlbench.suites.literature import resolve

            spec._published = resolve(spec.reference, path.parent, where=f"{path}: tasks.{name}.reference")
    return suite
