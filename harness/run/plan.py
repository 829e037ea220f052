"""Planning: a suite file plus command-line overrides → a :class:`Plan`, in one pass down.

:func:`load_plan` goes through the stages once, each over typed objects from the one before:

1. parse: the schema, and every dataset's and backbone's ``args`` typed against the class it
   names (:func:`tlbench.suites.schema.parse_suite`);
2. overrides from the command line (trials, seeds, strategies, data root);
3. references between the suite's parts (task → backbones, backbone → source task);
4. strategies: options typed once into ``Plan.options``, what each reuses, the run order,
   the extra backbones they use (students);
5. backbone sources (published weights' names, checkpoints);
6. data: where each dataset's files are, and the tasks (labels and file lists);
7. shapes: two examples of every task through each backbone that reads it;
8. search spaces: the suite's overrides checked against each strategy's declared space (per
   backbone), a grid search's grids and the sensitivity studies' values;
9. cells.

Nothing is validated twice: a strategy is made from its typed options, a backbone built or a
dataset loaded from its typed ``args``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tlbench.core.budget import Budget
from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, validate_block
from tlbench.data.splits import Task
from tlbench.run.model_server import Reuse
from tlbench.run.plugins import load_entry_points, load_suite_plugins
from tlbench.run.pretrain import check_backbone_source, preprocess_for
from tlbench.run.spaces import Override, axis, check_value, effective, explore, grid, parse_overrides, unused
from tlbench.run.spaces import declared as declared_space
from tlbench.selection.scorers import SCORERS, check_scorer_class
from tlbench.store.space import SearchSpace
from tlbench.strategies import STRATEGIES, Strategy
from tlbench.suites.datasets import DataAccess, data_access, data_location
from tlbench.suites.schema import Suite, blamed, parse_suite
from tlbench.suites.splitting import build_task
from tlbench.training.backbones import Backbone, build_backbone


@dataclass(frozen=True)
class Cell:
    task: str
    backbone: str
    strategy: str

    @property
    def label(self) -> str:
        return f"{self.task} / {self.backbone} / {self.strategy}"


@dataclass(frozen=True)
class Plan:
    suite: Suite
    tasks: dict[str, Task]
    cells: list[Cell]
    #: Every strategy of the suite file and of this run, with its options typed once.
    options: dict[str, Frozen]
    declared: tuple[str, ...] = ()  # the suite file's strategies, before --strategies narrowed them
    #: Per task (source tasks too): where its dataset's files are expected, and those absent.
    data_paths: dict[str, tuple[list[Path], list[Path]]] = field(default_factory=dict)
    #: Per (strategy, backbone): the suite's overrides of the strategy's search space.
    spaces: dict[tuple[str, str], dict[str, Override]] = field(default_factory=dict)
    #: Per (strategy, backbone), for a grid search: its configurations in order.
    grids: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    #: Per tunable (strategy, backbone): the searched space after the suite's overrides (what each
    #: tuning study stores, the dry run prints and the report shows).
    searched: dict[tuple[str, str], SearchSpace] = field(default_factory=dict)
    #: Source tasks that are not also target tasks, built to check their splits and inputs.
    sources: dict[str, Task] = field(default_factory=dict)
    _bound: dict[tuple[str, str], Task] = field(default_factory=dict, repr=False)

    @property
    def missing(self) -> list[str]:
        """The tasks whose data is absent (a dry run's plan leaves them unbuilt)."""
        return [name for name, (_, absent) in self.data_paths.items() if absent]

    def make_strategy(self, name: str) -> Strategy:
        """Strategy ``name`` with the suite's shared training settings and its typed options."""
        if name not in self.options:  # not in the suite: its options block is the default one
            options = validate_block(STRATEGIES.get(name, where=f"{self.suite.path}: strategies").Options, None,
                                     where=f"{self.suite.path}: strategy_options.{name}")
            return make_strategy(self.suite, name, options)
        return make_strategy(self.suite, name, self.options[name])

    def space(self, strategy: str, backbone: str) -> dict[str, Override]:
        return self.spaces.get((strategy, backbone), {})

    def budget(self, strategy: str, backbone: str) -> Budget:
        """What tuning ``strategy`` on ``backbone`` may spend: a grid search its grid, else
        the suite's trials or epochs."""
        if (strategy, backbone) in self.grids:
            return Budget(trials=len(self.grids[(strategy, backbone)]))
        return self.suite.tuning_budget

    def task_for(self, task: str, backbone: str) -> Task:
        """Task ``task`` as backbone ``backbone`` reads it: image files preprocessed as its
        weights expect (and augmented for training as the task says); tensors as they are."""
        key = (task, backbone)
        if key not in self._bound:
            spec = self.suite.tasks[task]
            self._bound[key] = self.tasks[task].bound(preprocess_for(backbone, self.suite, spec.image_size,
                                                                     stretch=spec.image_resize == "stretch"),
                                                      spec.augment)
        return self._bound[key]

    def reused(self) -> Reuse:
        """Strategies whose models others reuse, those whose weights they reuse, and how many
        models a run asks for; from the suite file's list, so a narrowed run still keeps what a
        later full run needs."""
        return Reuse.of(self.make_strategy(n) for n in sorted(set(self.declared) | set(self.suite.strategies)))

    @property
    def backbones(self) -> list[str]:
        """The cells' backbones and the students they distil into."""
        names = {c.backbone for c in self.cells}
        return sorted(names | set(extra_backbones(self.suite, self.options, sorted(names))))


def make_strategy(suite: Suite, name: str, options: Frozen) -> Strategy:
    """A strategy with the suite's shared training settings and its (typed) options."""
    return STRATEGIES.get(name)(epochs=suite.training.epochs, batch_size=suite.training.batch_size,
                                options=options)


def load_plan(path: Path, *, trials: int | None = None, seeds: int | None = None,
              strategies: list[str] | None = None, data_root: Path | None = None, cache_dir: Path | None = None,
              dry_run: bool = False, data: bool = True, tasks: list[str] | None = None,
              backbones: list[str] | None = None, overrides: tuple[str, ...] = ()) -> Plan:
    """Parses and checks the whole suite (names, references, splits, data) before any
    training. The data root is ``data_root``, else the suite's, else ``$TLBENCH_DATA``, else
    ``cache_dir/data``, resolved once into the plan's suite; a ``dry_run`` plan leaves out
    the tasks whose image files are absent (``Plan.missing``) instead of failing. Without
    ``data`` (what ``tlbench status`` needs: cells, budgets, seeds) no dataset is read and no
    shape checked, and search spaces are built only for a grid search's budgets. ``tasks`` and
    ``backbones`` narrow the plan to those cells after the whole suite is checked
    (:meth:`Suite.selected`); ``overrides`` (``--set PATH=VALUE``) change the suite's fields before
    it is validated."""
    try:
        return _load_plan(path, trials=trials, seeds=seeds, strategies=strategies, data_root=data_root,
                          cache_dir=cache_dir, dry_run=dry_run, data=data, tasks=tasks, backbones=backbones,
                          overrides=overrides)
    except ConfigError as err:  # a field a --set gave: the error names that argument too
        raise blamed(err, overrides) from None


def _load_plan(path: Path, *, trials: int | None, seeds: int | None, strategies: list[str] | None,
               data_root: Path | None, cache_dir: Path | None, dry_run: bool, data: bool, tasks: list[str] | None,
               backbones: list[str] | None, overrides: tuple[str, ...]) -> Plan:
    load_entry_points()
    suite = parse_suite(path, plugins=lambda s: load_suite_plugins(s.plugins, base=Path(s.path).parent,
                                                                    where=s.path), overrides=overrides)
    declared = list(suite.strategies)
    suite = with_overrides(suite, trials=trials, seeds=seeds, strategies=strategies, data_root=data_root,
                           cache_dir=cache_dir)
    check_references(suite)
    check_model_selection(suite, declared)
    suite = suite.selected(tasks, backbones)
    whole = tasks is None and backbones is None  # a selection builds only the source tasks its backbones need
    options = typed_options(suite, declared)
    order = run_order(suite, declared, options)
    cells = [Cell(t, b, s) for t, spec in suite.tasks.items() for b in spec.backbones for s in order]
    if not data:
        probes: dict[str, Backbone] = {}
        spaces, grids, searched = (search_spaces(suite, declared, options, cells, probes)
                                   if suite.search.sampler == "grid" else ({}, {}, {}))
        return Plan(suite, {}, cells, options, tuple(declared), {}, spaces, grids, searched, {})
    for name in suite.backbones:
        check_backbone_source(name, suite)
    access = data_access(suite)
    if cache_dir is not None:  # generated datasets are made once per cache, not once per process
        access = dataclasses.replace(access, pools=cache_dir / "pools")
    used = {b for spec in suite.tasks.values() for b in spec.backbones}
    used |= set(extra_backbones(suite, options, sorted(used)))
    sources = {spec.pretrain.task for name, spec in suite.backbones.items()
               if spec.pretrain and (whole or name in used)}
    data_paths = {name: data_location(suite.task_spec(name).dataset, suite.task_spec(name).typed_args(), access)
                  for name in [*(n for n in suite.source_tasks if whole or n in sources), *suite.tasks]}
    missing = {name for name, (_, absent) in data_paths.items() if absent} if dry_run else set()
    tasks = {name: build_task(name, spec, where=suite.task_where(name), data=access)
             for name, spec in suite.tasks.items() if name not in missing}
    probes = {}  # one random-init copy per backbone for the shape checks
    built_sources: dict[str, Task] = {}
    for name in sorted(sources - set(tasks) - missing):  # splits of source tasks must be possible too
        built_sources[name] = build_task(name, suite.task_spec(name), where=suite.task_where(name), data=access)
        check_inputs(suite, _pretrained_by(suite, name), built_sources[name], probes)
    for name, task in tasks.items():
        check_inputs(suite, suite.tasks[name].backbones, task, probes)
        check_inputs(suite, extra_backbones(suite, options, suite.tasks[name].backbones), task, probes)
    check_token_strategies(suite, cells, probes)
    spaces, grids, searched = search_spaces(suite, declared, options, cells, probes)
    return Plan(suite, tasks, cells, options, tuple(declared), data_paths, spaces, grids, searched,
                built_sources)


def check_model_selection(suite: Suite, declared: list[str]) -> None:
    """``model_selection:`` names registered scorers (built-in or plugin) and strategies of the
    suite, and there are at least two backbones to rank on some task."""
    spec = suite.model_selection
    if spec is None:
        return
    where = f"{suite.path}: model_selection"
    for i, name in enumerate(spec.scorers or []):
        SCORERS.get(name, where=f"{where}.scorers[{i}]")
    twice = sorted({n for n in spec.scorers or [] if (spec.scorers or []).count(n) > 1})
    if twice:
        raise ConfigError(f"{where}.scorers: {', '.join(map(repr, twice))} listed twice")
    for name in spec.scorers if spec.scorers is not None else SCORERS.names():
        problems = check_scorer_class(SCORERS.get(name))
        if problems:
            raise ConfigError(f"{where}: scorer {name!r} ({SCORERS.origin(name)}): {'; '.join(problems)}")
    for i, name in enumerate(spec.ground_truth or []):
        if name not in set(declared) | set(suite.strategies):
            raise ConfigError(f"{where}.ground_truth[{i}]: {name!r} is not among the suite's strategies "
                              f"({', '.join(declared)})")
    if not any(len(t.backbones) >= 2 for t in suite.tasks.values()):
        raise ConfigError(f"{where}: ranking backbones needs a task with at least two backbones; every task "
                          f"has one")


def search_spaces(suite: Suite, declared: list[str], options: dict[str, Frozen], cells: list[Cell],
                  probes: dict[str, Backbone]) -> tuple[dict[tuple[str, str], dict[str, Override]],
                                                        dict[tuple[str, str], list[dict[str, Any]]],
                                                        dict[tuple[str, str], SearchSpace]]:
    """The suite's ``search_space`` overrides per (strategy, backbone), checked against what
    the strategy declares for that backbone; a grid search's grids (their size is the trial
    budget: a ``trials`` the suite sets must agree); the spaces each tunable cell searches;
    and the sensitivity studies' values are checked."""
    where = f"{suite.path}: search_space"
    options = dict(options)
    for name in suite.search_space:  # a strategy an including file dropped: still checked, never run
        cls = STRATEGIES.get(name, where=where)
        if name not in options:
            options[name] = validate_block(cls.Options, None, where=f"{suite.path}: strategy_options.{name}")

    def probe(backbone: str) -> Backbone:
        if backbone not in probes:
            spec = suite.backbones[backbone]
            probes[backbone] = build_backbone(spec.arch, spec.typed_args(),
                                              where=f"{suite.path}: backbones.{backbone}")
        return probes[backbone]

    pairs = sorted({(c.strategy, c.backbone) for c in cells})
    spaces: dict[tuple[str, str], dict[str, Override]] = {}
    for strategy, backbone in pairs:
        raw = suite.search_space.get(strategy)
        if raw is not None:
            spaces[(strategy, backbone)] = parse_overrides(make_strategy(suite, strategy, options[strategy]),
                                                           probe(backbone), raw, where=f"{where}.{strategy}")
    for strategy in suite.search_space:  # checked even when no cell of this run uses it
        if not any(s == strategy for s, _ in pairs):
            parse_overrides(make_strategy(suite, strategy, options[strategy]), probe(next(iter(suite.backbones))),
                            suite.search_space[strategy], where=f"{where}.{strategy}")
    longest = suite.training.epochs[1]
    epochs = suite.tuning_budget.epochs
    if epochs is not None and epochs < longest:
        raise ConfigError(f"{suite.path}: budget.epochs: {epochs:g} is smaller than one trial (training "
                          f"may run up to {longest} epochs); give at least {longest}, and several times that to "
                          f"tune")
    grids: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if suite.search.sampler == "grid":
        if epochs is not None:
            raise ConfigError(f"{suite.path}: budget.epochs: a grid search trains its whole grid; remove the epochs "
                              f"budget or choose another search.sampler")
        explicit = "trials" in suite.model_fields_set
        for strategy, backbone in pairs:
            instance = make_strategy(suite, strategy, options[strategy])
            if not instance.tunable:
                continue
            points = grid(instance, probe(backbone), spaces.get((strategy, backbone), {}), suite.search.grid_points)
            if len(points) >= 500_000:
                raise ConfigError(f"{where}.{strategy}: the grid has {len(points):,} configurations; fix or narrow "
                                  f"some hyperparameters")
            if explicit and len(points) != suite.trials:
                shape = grid_shape(instance, probe(backbone), spaces.get((strategy, backbone), {}),
                                   suite.search.grid_points)
                raise ConfigError(f"{suite.path}: trials: {suite.trials}, but the grid of {strategy} on {backbone} has "
                                  f"{len(points)} configurations ({shape}); "
                                  f"a grid search trains each once: remove trials (and --trials) or set it to "
                                  f"{len(points)}")
            grids[(strategy, backbone)] = points
    check_sensitivity(suite, declared, options, probe, spaces)
    searched = {(strategy, backbone): effective(instance, probe(backbone), spaces.get((strategy, backbone), {}))
                for strategy, backbone in pairs
                if (instance := make_strategy(suite, strategy, options[strategy])).tunable}
    return spaces, grids, searched


def grid_shape(strategy: Strategy, backbone: Backbone, overrides: dict[str, Override], points: int) -> str:
    """How a grid's size comes about, per branch: ``optimizer=sgd: lr_sgd 3 × epochs 3``."""
    parts = []
    for leaf in explore(lambda t: strategy.search_space(t, backbone), overrides):
        picked = ", ".join(f"{k}={v}" for k, v in leaf.picked.items())
        sizes = " × ".join(f"{n} {len(axis(d, points))}" for n, d in sorted(leaf.dists.items())
                           if n not in leaf.picked)
        parts.append(f"{picked}: {sizes}" if picked else sizes)
    return "; ".join(parts)


def check_sensitivity(suite: Suite, declared: list[str], options: dict[str, Frozen],
                      probe: Callable[[str], Backbone], spaces: dict[tuple[str, str], dict[str, Override]]) -> None:
    """Each sensitivity study names a tunable strategy of the suite, tasks of the suite and
    hyperparameters it declares and its tuned configuration uses (a hyperparameter the suite's
    overrides cut off is refused), with values of their type inside the declared range."""
    for i, spec in enumerate(suite.sensitivity):
        where = f"{suite.path}: sensitivity[{i}]"
        STRATEGIES.get(spec.strategy, where=f"{where}.strategy")
        if spec.strategy not in set(declared) | set(suite.strategies):
            raise ConfigError(f"{where}.strategy: {spec.strategy!r} is not among the suite's strategies "
                              f"({', '.join(declared)})")
        strategy = make_strategy(suite, spec.strategy, options[spec.strategy])
        if not strategy.tunable:
            raise ConfigError(f"{where}.strategy: {spec.strategy} has nothing to tune (it chooses inside fit); a "
                              f"sensitivity study varies a tuned hyperparameter")
        families = {s.swept[0] for s in suite.tasks.values() if s.swept is not None}
        for task in spec.tasks or []:
            if task not in suite.tasks and task not in families:
                raise ConfigError(f"{where}.tasks: unknown task {task!r}; defined: "
                                  f"{', '.join([*suite.tasks, *sorted(families)])}")
        backbones = sorted({b for t, s in suite.tasks.items() if spec.covers(t, s) for b in s.backbones})
        for backbone in backbones:
            space = declared_space(strategy, probe(backbone))
            overrides = spaces.get((spec.strategy, backbone))
            if overrides is None and spec.strategy in suite.search_space:  # a strategy this run does not run
                overrides = parse_overrides(strategy, probe(backbone), suite.search_space[spec.strategy],
                                            where=f"{suite.path}: search_space.{spec.strategy}")
            dead = unused(strategy, probe(backbone), overrides or {})
            for name, values in spec.params.items():
                if name not in space:
                    raise ConfigError(f"{where}.params.{name}: unknown hyperparameter; {spec.strategy} searches: "
                                      f"{', '.join(sorted(space))}")
                if name in dead:
                    searched = sorted(set(space) - set(dead))
                    raise ConfigError(f"{where}.params.{name}: the tuned configuration of {spec.strategy} never uses "
                                      f"{name} ({dead[name]} in search_space.{spec.strategy}); vary one it searches: "
                                      f"{', '.join(searched)}")
                for j, value in enumerate(values):
                    check_value(space[name], value, f"{where}.params.{name}[{j}]")


def with_overrides(suite: Suite, *, trials: int | None, seeds: int | None, strategies: list[str] | None,
                   data_root: Path | None, cache_dir: Path | None) -> Suite:
    """The suite with the command line's overrides and its data root resolved."""
    root = data_root or DataAccess.of(suite.data_root, suite.download, suite_path=suite.path,
                                      cache_dir=cache_dir).root
    updates: dict[str, object] = {"data_root": str(root.resolve())}
    for flag, value in (("trials", trials), ("seeds", seeds)):
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{flag} {value}: must be a positive integer")
            updates[flag] = value
    if trials is not None:  # --trials: a budget in trials, whatever the suite's budget was
        updates["budget"] = None
    if strategies is not None:
        if not strategies:
            raise ConfigError(f"--strategies: give at least one; known: {', '.join(STRATEGIES.names())}")
        for name in strategies:
            STRATEGIES.get(name, where="--strategies")
        updates["strategies"] = strategies
    return suite.model_copy(update=updates)


def check_references(suite: Suite) -> None:
    """Every name in the suite refers to something that exists."""
    where = suite.path
    for i, name in enumerate(suite.strategies):
        STRATEGIES.get(name, where=f"{where}: strategies[{i}]")
    if len(set(suite.strategies)) != len(suite.strategies):
        raise ConfigError(f"{where}: strategies: {suite.strategies} lists a strategy twice")
    overlap = set(suite.tasks) & set(suite.source_tasks)
    if overlap:
        raise ConfigError(f"{where}: tasks and source_tasks share the name(s) {sorted(overlap)}")
    for name, spec in suite.tasks.items():
        if not spec.backbones:
            raise ConfigError(f"{where}: tasks.{name}.backbones: list at least one backbone; "
                              f"defined: {', '.join(suite.backbones)}")
        for b in spec.backbones:
            if b not in suite.backbones:
                raise ConfigError(f"{where}: tasks.{name}.backbones: unknown backbone {b!r}; "
                                  f"defined: {', '.join(suite.backbones)}")
    known_tasks = [*suite.source_tasks, *suite.tasks]
    for name, spec in suite.backbones.items():
        if spec.pretrain is not None and spec.pretrain.task not in known_tasks:
            raise ConfigError(f"{where}: backbones.{name}.pretrain.task: unknown task "
                              f"{spec.pretrain.task!r}; defined: {', '.join(known_tasks)}")


def typed_options(suite: Suite, declared: list[str]) -> dict[str, Frozen]:
    """Each strategy's ``strategy_options`` block validated once into its ``Options``: those
    the suite gives options for, and every strategy of the file and of the run."""
    where = f"{suite.path}: strategy_options"
    for name in suite.strategy_options:
        STRATEGIES.get(name, where=where)
    names = sorted(set(declared) | set(suite.strategies) | set(suite.strategy_options))
    return {name: validate_block(STRATEGIES.get(name).Options, suite.strategy_options.get(name),
                                 where=f"{where}.{name}") for name in names}


def run_order(suite: Suite, declared: list[str], options: dict[str, Frozen]) -> list[str]:
    """The run's strategies ordered so that each comes after those whose models it reuses
    (suite order otherwise); a reused strategy must be in the suite file, and reuse must
    not go round in a cycle."""
    where = f"{suite.path}: strategy_options"
    known = set(declared) | set(suite.strategies)
    graph: dict[str, list[str]] = {}
    for name in sorted(known):
        needs = make_strategy(suite, name, options[name]).requires()
        for need in needs:
            STRATEGIES.get(need, where=f"{where}.{name}")
            if need not in known:
                raise ConfigError(f"{where}.{name}: reuses models of {need!r}, which is not among the "
                                  f"suite's strategies ({', '.join(declared)}); add it to strategies")
        graph[name] = needs
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name):], name))
            raise ConfigError(f"{where}: strategies reuse each other in a cycle ({cycle})")
        for need in graph[name]:
            visit(need, (*path, name))
        if name not in order:
            order.append(name)

    for name in suite.strategies:
        visit(name, ())
    return [name for name in order if name in suite.strategies]


def extra_backbones(suite: Suite, options: dict[str, Frozen], backbones: list[str]) -> list[str]:
    """The suite backbones the run's strategies use besides ``backbones`` (a distillation's
    students), checked to exist."""
    out: list[str] = []
    for name in suite.strategies:
        strategy = make_strategy(suite, name, options[name])
        for backbone in backbones:
            try:
                extra = strategy.extra_backbones(backbone)
            except ValueError as err:
                raise ConfigError(f"{suite.path}: strategy_options.{name}: {err}") from None
            for other in extra:
                if other not in suite.backbones:
                    raise ConfigError(f"{suite.path}: strategy_options.{name}: unknown backbone "
                                      f"{other!r}; defined: {', '.join(suite.backbones)}")
                if other not in out:
                    out.append(other)
    return out


def _pretrained_by(suite: Suite, task: str) -> list[str]:
    return [b for b, spec in suite.backbones.items() if spec.pretrain and spec.pretrain.task == task]


def check_token_strategies(suite: Suite, cells: list[Cell], probes: dict[str, Backbone]) -> None:
    """Strategies that work on a token sequence (``needs_tokens``: visual prompts) are refused before
    anything trains when a cell pairs them with a backbone that has none."""
    from tlbench.strategies.parameter_efficient import token_model

    for strategy, backbone in sorted({(c.strategy, c.backbone) for c in cells}):
        if not STRATEGIES.get(strategy).needs_tokens:
            continue
        spec = suite.backbones[backbone]
        if backbone not in probes:
            probes[backbone] = build_backbone(spec.arch, spec.typed_args(), where=f"{suite.path}: backbones.{backbone}")
        if token_model(probes[backbone]) is None:
            raise ConfigError(f"{suite.path}: strategies: {strategy!r} needs a ViT-family backbone (a token sequence), "
                              f"and backbone {backbone!r} ({spec.arch}) has none; run it on ViT backbones only "
                              f"(a suite of its own, or --backbones) or leave it out (--strategies)")


def check_inputs(suite: Suite, backbones: list[str], task: Task, probes: dict[str, Backbone]) -> None:
    """Each backbone must accept the task's inputs: two examples through a random-init copy
    (built once per backbone and kept in ``probes``)."""
    for name in backbones:
        spec = suite.backbones[name]
        if name not in probes:
            probes[name] = build_backbone(spec.arch, spec.typed_args(), where=f"{suite.path}: backbones.{name}")
        backbone = probes[name]
        spec_of = suite.task_spec(task.name)
        bound = task.bound(preprocess_for(name, suite, spec_of.image_size, stretch=spec_of.image_resize == "stretch"))
        x = bound.train.x.head(2) if bound.lazy else bound.train.x[:2]  # type: ignore[union-attr]
        try:
            with torch.no_grad():
                backbone.eval()(x)
        except (RuntimeError, ValueError) as err:
            reason = str(err).splitlines()[0][:160]
            channels = int(x.shape[1]) if x.dim() == 4 else None
            declared = getattr(spec.typed_args(), "in_channels", None)
            hint = (f"; set backbones.{name}.args.in_channels: {channels}"
                    if channels is not None and declared is not None and declared != channels else "")
            if task.name in suite.tasks:  # the task's list of backbones chose it
                field, which = f"{suite.task_where(task.name)}.backbones", "this task's inputs"
            else:  # a source task: the backbone's pretraining chose it
                field = f"{suite.path}: backbones.{name}.pretrain.task"
                which = f"the inputs of {suite.task_where(task.name).split(': ', 1)[1]}"
            raise ConfigError(f"{field}: backbone {name!r} ({spec.arch}) cannot take {which} of shape "
                              f"{tuple(x.shape[1:])}: {reason}{hint}") from None


def input_sizes(plan: Plan) -> dict[str, dict[str, tuple[tuple[int, ...], tuple[int, int] | None]]]:
    """Per built task (source tasks too), per backbone that reads it: the shape of one input
    as that backbone sees it, and the spatial size the backbone's weights were pretrained at
    (``None`` when nothing says: random or checkpointed weights, inputs without a height and
    width). The dry run prints both and warns when they differ."""
    suite = plan.suite
    readers: dict[str, set[str]] = {}
    for cell in plan.cells:
        readers.setdefault(cell.task, set()).add(cell.backbone)
    for name, spec in suite.backbones.items():
        if spec.pretrain is not None:
            readers.setdefault(spec.pretrain.task, set()).add(name)
    out: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, int] | None]]] = {}
    for task_name, backbones in readers.items():
        if task_name not in plan.tasks and task_name not in plan.sources:
            continue
        out[task_name] = {b: (_input_shape(plan, task_name, b), None if _pretrains_on(plan, b, task_name)
                              else pretrained_size(plan, b)) for b in sorted(backbones)}
    return out


def _pretrains_on(plan: Plan, backbone: str, task: str) -> bool:
    pretrain = plan.suite.backbones[backbone].pretrain
    return pretrain is not None and pretrain.task == task


def _input_shape(plan: Plan, task: str, backbone: str) -> tuple[int, ...]:
    """One input of ``task`` as ``backbone`` reads it (image files: after its preprocessing)."""
    spec = plan.suite.task_spec(task)
    built = plan.tasks.get(task) or plan.sources[task]
    return built.bound(preprocess_for(backbone, plan.suite, spec.image_size,
                                      stretch=spec.image_resize == "stretch")).input_shape


def pretrained_size(plan: Plan, backbone: str) -> tuple[int, int] | None:
    """The height and width ``backbone``'s weights were trained at: the published weights'
    resolution, or the source task's inputs for weights the harness pretrains."""
    spec = plan.suite.backbones[backbone]
    if spec.weights is not None:
        crop = spec.arch_class.weights_preprocess(spec.typed_args(), spec.weights).crop
        return (crop, crop) if crop else None
    if spec.pretrain is not None and spec.pretrain.task in {**plan.tasks, **plan.sources}:
        shape = _input_shape(plan, spec.pretrain.task, backbone)
        return (int(shape[-2]), int(shape[-1])) if len(shape) == 3 else None
    return None
