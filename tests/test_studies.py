"""Hyperparameter studies: search spaces set in the suite, samplers, compute budgets, sweeps
and sensitivity studies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tlbench.cli.main import main
from tlbench.core.budget import Budget
from tlbench.core.errors import NonFiniteLoss
from tlbench.run.plan import load_plan
from tlbench.run.samplers import EXACT_RESUME, SAMPLER_CLASSES
from tlbench.run.spaces import Fixed, Range, effective, explore, grid, parse_overrides
from tlbench.run.tuning import make_study, tune
from tlbench.store.claims import worker_id
from tlbench.store.opening import open_existing_storage, open_storage
from tlbench.store.progress import summarize, tuning_seed
from tlbench.store.space import Param, SearchSpace
from tlbench.strategies import STRATEGIES
from tlbench.strategies.base import ModelPredictor, Strategy
from tlbench.suites.schema import SearchSpec, parse_suite
from tlbench.testing import tiny_backbone

SMALL = """\
name: small
seed: 0
trials: 3
seeds: 1
strategies: [linear_probe, full_finetune]
training: {epochs: [2, 3], batch_size: 16}
backbones:
  b: {arch: cnn2d, args: {width: 8, depth: 2}}
tasks:
  d:
    dataset: digits
    split: {shots: 2, val_per_class: 3, test_fraction: 0.3}
    backbones: [b]
"""


def write(tmp_path: Path, extra: str = "", *, base: str = SMALL, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(base + textwrap.dedent(extra))
    return path


# ------------------------------------------------------------------ bad input: one line, exit 2

BAD = {
    "unknown hyperparameter": ("search_space: {full_finetune: {lr: 0.1}}",
                               ["search_space.full_finetune.lr", "unknown hyperparameter", "lr_sgd"]),
    "wrong type": ("search_space: {full_finetune: {lr_sgd: fast}}",
                   ["search_space.full_finetune.lr_sgd", "wrong type", "'fast'"]),
    "wrong type of an integer": ("search_space: {full_finetune: {epochs: 2.5}}",
                                 ["search_space.full_finetune.epochs", "an integer"]),
    "empty range": ("search_space: {full_finetune: {lr_sgd: {low: 0.1, high: 0.01}}}",
                    ["search_space.full_finetune.lr_sgd", "empty range"]),
    "log range not positive": ("search_space: {linear_probe: {lr: {low: 0, high: 0.1}}}",
                               ["search_space.linear_probe.lr", "log-scale range must be positive"]),
    "choice not declared": ("search_space: {full_finetune: {optimizer: [rmsprop]}}",
                            ["search_space.full_finetune.optimizer", "rmsprop", "declared choices"]),
    "search space of an unknown strategy": ("search_space: {fine_tune: {lr: 0.1}}",
                                            ["search_space", "fine_tune"]),
    "search space of a strategy with nothing to search": (
        "strategies: [full_finetune, ensemble]\nstrategy_options: {ensemble: {members: [full_finetune]}}\n"
        "search_space: {ensemble: {size: 2}}", ["search_space.ensemble", "nothing to search"]),
    "unknown sampler": ("search: {sampler: bayes}", ["search.sampler", "'tpe'", "bayes"]),
    "unknown pruner": ("search: {pruner: asha}", ["search.pruner", "'successive_halving'", "asha"]),
    "reduction factor of the median pruner": ("search: {pruner_reduction_factor: 3}",
                                              ["search", "pruner_reduction_factor", "not 'median'"]),
    "reduction factor below 2": ("search: {pruner: hyperband, pruner_reduction_factor: 1}",
                                 ["search.pruner_reduction_factor", "greater than or equal to 2"]),
    "grid and budget disagree": ("strategies: [linear_probe]\nsearch: {sampler: grid}\n"
                                 "search_space: {linear_probe: {epochs: 2}}",
                                 ["trials: 3", "grid of linear_probe", "9 configurations", "set it to 9"]),
    "grid with an epochs budget": ("search: {sampler: grid}\nbudget: {epochs: 30}\n",
                                   ["budget.epochs", "grid search"]),
    "epochs budget smaller than one trial": ("budget: {epochs: 2}", ["budget.epochs", "smaller than one trial"]),
    "budget of both kinds": ("budget: {trials: 3, epochs: 30}", ["budget", "exactly one of trials"]),
    "budget and trials disagree": ("budget: {trials: 5}", ["trials: 3 and budget.trials: 5 disagree"]),
    "trials beyond the seed offset": ("trials: 100000000000000000000", ["trials", "less than 500000"]),
    "sweep over an unknown field": ("sweep: {colour: [1, 2]}", ["tasks.d.sweep", "'colour' cannot be swept",
                                                                 "shots"]),
    "empty sweep": ("sweep: {shots: []}", ["tasks.d.sweep.shots", "empty sweep"]),
    "sweep of a bad value": ("sweep: {shots: [1, -2]}", ["tasks.d.sweep.shots", "sweep value -2"]),
    "sweep of a shift without one": ("sweep: {severity: [0.1]}", ["tasks.d.sweep", "needs a shift"]),
    "sensitivity with nothing to tune": (
        "strategies: [full_finetune, ensemble]\nstrategy_options: {ensemble: {members: [full_finetune]}}\n"
        "sensitivity: [{strategy: ensemble, params: {size: [2, 3]}}]",
        ["sensitivity[0].strategy", "nothing to tune"]),
    "sensitivity value outside the range": (
        "sensitivity: [{strategy: full_finetune, params: {lr_sgd: [0.01, 5.0]}}]",
        ["sensitivity[0].params.lr_sgd[1]", "5.0 is outside the declared range"]),
    "sensitivity on an unknown hyperparameter": (
        "sensitivity: [{strategy: full_finetune, params: {lr: [0.01]}}]",
        ["sensitivity[0].params.lr", "unknown hyperparameter"]),
    "sensitivity on a strategy not in the suite": (
        "sensitivity: [{strategy: l2_sp, params: {alpha: [0.01]}}]",
        ["sensitivity[0].strategy", "not among the suite's strategies"]),
    "sensitivity on an unknown task": (
        "sensitivity: [{strategy: full_finetune, params: {lr_sgd: [0.01]}, tasks: [e]}]",
        ["sensitivity[0].tasks", "unknown task 'e'"]),
    "override of a hyperparameter the fixed choices never suggest": (
        "search_space: {full_finetune: {optimizer: sgd, lr_adamw: {low: 0.0001, high: 0.01}}}",
        ["search_space.full_finetune.lr_adamw", "full_finetune never suggests lr_adamw here: optimizer is fixed to "
         "sgd in this block", "the override would be ignored"]),
    "override dead by a narrowed choice": (
        "search_space: {full_finetune: {optimizer: [sgd], lr_adamw: 0.001}}",
        ["search_space.full_finetune.lr_adamw", "optimizer is fixed to sgd"]),
    "sensitivity of a hyperparameter the tuned configuration never uses": (
        "search_space: {full_finetune: {optimizer: sgd}}\n"
        "sensitivity: [{strategy: full_finetune, params: {lr_adamw: [0.001, 0.01]}}]",
        ["sensitivity[0].params.lr_adamw", "the tuned configuration of full_finetune never uses lr_adamw",
         "optimizer is fixed to sgd in search_space.full_finetune", "vary one it searches:", "lr_sgd"]),
    "sensitivity over three hyperparameters": (
        "sensitivity: [{strategy: full_finetune, params: {lr_sgd: [0.01], epochs: [2], weight_decay: [0.001]}}]",
        ["sensitivity[0].params"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_settings_stop_before_training_with_one_line(tmp_path, capsys, case) -> None:
    extra, needles = BAD[case]
    if extra.startswith("sweep"):  # a field of the task
        path = write(tmp_path, base=SMALL.replace("    backbones: [b]\n", f"    backbones: [b]\n    {extra}\n"))
    elif extra.startswith(("strategies:", "trials:")):  # replaces the base's line
        lines = extra.split("\n")
        key = lines[0].split(":")[0]
        old = next(line for line in SMALL.splitlines() if line.startswith(key + ":"))
        path = write(tmp_path, "\n".join(lines[1:]) + "\n", base=SMALL.replace(old, lines[0]))
    else:
        path = write(tmp_path, extra + "\n")
    rc = main(["run", str(path), "--dry-run", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 2, (case, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlbench: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "o").exists()  # nothing trained or written


def test_error_messages_cut_huge_values(tmp_path, capsys) -> None:
    path = write(tmp_path, f"search_space: {{full_finetune: {{lr_sgd: '{'x' * 100_000}'}}}}\n")
    assert main(["run", str(path), "--dry-run"]) == 2  # refused as a string too long to be a value
    err = capsys.readouterr().err
    assert len(err) < 400 and "search_space.full_finetune.lr_sgd: a string of 100,000 characters" in err
    path = write(tmp_path, f"search_space: {{full_finetune: {{lr_sgd: '{'x' * 3_000}'}}}}\n")
    assert main(["run", str(path), "--dry-run"]) == 2  # short enough to read, too long to print whole
    err = capsys.readouterr().err
    assert len(err) < 400 and "…" in err


# ------------------------------------------------------------------ search spaces


def test_declared_spaces_are_explored_branch_by_branch() -> None:
    ff = STRATEGIES.get("full_finetune")(epochs=(2, 5))
    leaves = explore(lambda t: ff.search_space(t, tiny_backbone()))
    assert [leaf.picked for leaf in leaves] == [{"optimizer": "sgd"}, {"optimizer": "adamw"}]
    assert "lr_sgd" in leaves[0].dists and "lr_adamw" in leaves[1].dists


def test_overrides_fix_narrow_and_restrict_and_are_what_tuning_samples(tmp_path, runtime) -> None:
    ff = STRATEGIES.get("full_finetune")(epochs=(2, 5))
    backbone = tiny_backbone()
    overrides = parse_overrides(ff, backbone, {"optimizer": "sgd", "lr_sgd": {"low": 0.02, "high": 0.05},
                                               "epochs": {"low": 3, "high": 4, "log": False}}, where="x")
    assert overrides["optimizer"] == Fixed("sgd")
    assert overrides["lr_sgd"] == Range(0.02, 0.05, True)  # the declared log scale is kept
    space = effective(ff, backbone, overrides)
    assert space.params["optimizer"] == Param.fixed("sgd")
    assert space.params["lr_sgd"] == Param(kind="float", low=0.02, high=0.05, log=True)
    described = space.describe()
    assert described["optimizer"] == "fixed: sgd" and described["lr_sgd"] == "[0.02, 0.05] (log)"
    assert "lr_adamw" not in described
    assert SearchSpace.from_stored(space.stored()) == space  # stored as data, read back as objects
    assert SearchSpace.from_stored(described) == space  # what stores before it held: descriptions

    class Recording(Strategy):
        name, description = "recording", "test double"
        search_space = ff.search_space

        def fit(self, backbone, task, params, *, seed, reporter, runtime):
            reporter.report(0, params["lr"])
            return ModelPredictor(backbone, device=runtime.device, trainable=1)

    strategy = Recording(epochs=(2, 5))
    study = make_study("s::t::b::recording::tune", open_storage(None, tmp_path), budget=Budget(trials=6), seed=0)
    tune(study, strategy, backbone, None, budget=Budget(trials=6), suite_seed=0, runtime=runtime, space=overrides)
    for t in study.trials:
        params = t.user_attrs["params"]
        assert params["optimizer"] == "sgd" and 0.02 <= params["lr"] <= 0.05 and params["epochs"] in (3, 4)
        assert "optimizer" not in t.params  # fixed: never sampled


def test_overridden_spaces_are_in_the_fingerprint_and_old_suites_keep_theirs(tmp_path) -> None:
    base = parse_suite(write(tmp_path)).fingerprint()
    narrowed = parse_suite(write(tmp_path, "search_space: {full_finetune: {optimizer: sgd}}\n", name="n.yaml"))
    assert narrowed.fingerprint() != base
    # budgets and sensitivity studies do not change a cell's results: the store is reused
    assert parse_suite(write(tmp_path, "budget: {epochs: 30}\n", name="e.yaml")).fingerprint() == base
    assert parse_suite(write(tmp_path, "sensitivity: [{strategy: full_finetune, params: {epochs: [2]}}]\n",
                             name="x.yaml")).fingerprint() == base


# ------------------------------------------------------------------ samplers


class Quadratic(Strategy):
    """Validation accuracy peaks at x = 0.3, y = 7, opt = b; three reported epochs."""

    name, description = "quadratic", "test double"

    def search_space(self, trial, backbone):
        return {"x": trial.suggest_float("x", 0.0, 1.0), "y": trial.suggest_int("y", 1, 10),
                "opt": trial.suggest_categorical("opt", ["a", "b"])}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        value = 1 - (params["x"] - 0.3) ** 2 - abs(params["y"] - 7) / 20 - 0.1 * (params["opt"] == "a")
        for epoch in range(3):
            reporter.report(epoch, value)
        return ModelPredictor(backbone, device=runtime.device, trainable=1)


def _proposals(study: optuna.Study) -> list[tuple]:
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [tuple(sorted(t.user_attrs["params"].items())) for t in sorted(finished, key=lambda t: t.number)]


@pytest.mark.parametrize("sampler", sorted(SAMPLER_CLASSES))
def test_every_sampler_tunes_and_resumes_after_a_dead_worker(tmp_path, runtime, sampler) -> None:
    """An uninterrupted study against one whose worker died holding slot 3: the sampler's
    proposals are the same for the samplers listed as exact (docs/guides/studies.md says which are not)."""
    search = SearchSpec(sampler=sampler, sampler_startup_trials=2, pruner="none")
    strategy = Quadratic()
    points = grid(strategy, None, {}, 2) if sampler == "grid" else None
    budget = Budget(trials=len(points) if points else 7)
    clean = make_study("c::t::b::quadratic::tune", open_storage(None, tmp_path / "a"), budget=budget, seed=5,
                       search=search, grid=points)
    result = tune(clean, strategy, None, None, budget=budget, suite_seed=0, runtime=runtime)
    assert result.n_complete == budget.trials and result.best_value is not None
    storage = open_storage(None, tmp_path / "b")
    part = make_study("c::t::b::quadratic::tune", storage, budget=budget, seed=5, search=search, grid=points)
    tune(part, strategy, None, None, budget=Budget(trials=3), suite_seed=0, runtime=runtime)
    dead = part.ask()  # a worker killed in slot 3 after drawing its configuration
    dead.set_user_attr("params", strategy.search_space(dead, None))
    dead.set_user_attr("worker", worker_id().rsplit(":", 2)[0] + ":999999999:1")
    again = make_study("c::t::b::quadratic::tune", storage, budget=budget, seed=5, search=search, grid=points)
    tune(again, strategy, None, None, budget=budget, suite_seed=0, runtime=runtime)
    assert summarize(again, budget).n_complete == budget.trials
    if sampler in EXACT_RESUME:
        assert _proposals(again) == _proposals(clean)
    if sampler == "grid":  # each configuration once
        assert sorted(_proposals(clean)) == sorted(tuple(sorted(p.items())) for p in points)


class Climbing(Strategy):
    """Validation accuracy that climbs over 9 epochs towards a ceiling set by x (noise-free), so
    a rung ranks trials by x."""

    name, description = "climbing", "test double"

    def __init__(self, stop_slot_seed: int | None = None, **kw) -> None:
        super().__init__(**kw)
        self.stop_slot_seed = stop_slot_seed  # Ctrl-C after epoch 4 of the trial with this seed

    def search_space(self, trial, backbone):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        for epoch in range(9):
            reporter.report(epoch, params["x"] * (1 - 0.5 ** (epoch + 1)))
            if seed == self.stop_slot_seed and epoch == 4:
                raise KeyboardInterrupt
        return ModelPredictor(backbone, device=runtime.device, trainable=1)


def _outcomes(study: optuna.Study) -> list[tuple]:
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [(round(t.user_attrs["params"]["x"], 12), t.state.name, t.last_step)
            for t in sorted(finished, key=lambda t: t.user_attrs["slot"])]


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_rung_pruners_prune_at_their_rungs_and_resume_exactly(tmp_path, runtime, pruner) -> None:
    """Successive halving and Hyperband stop trials at their rungs (first rung at the warm-up
    epochs), keep the best, say why, and give the same trials after a dead worker."""
    search = SearchSpec(sampler="random", pruner=pruner, pruner_warmup_epochs=2, pruner_reduction_factor=2)
    budget = Budget(trials=12)
    clean = make_study("c::t::b::climbing::tune", open_storage(None, tmp_path / "a"), budget=budget, seed=5,
                       search=search)
    assert isinstance(clean.pruner, {"successive_halving": optuna.pruners.SuccessiveHalvingPruner,
                                     "hyperband": optuna.pruners.HyperbandPruner}[pruner])
    tune(clean, Climbing(), None, None, budget=budget, suite_seed=0, runtime=runtime)
    done = _outcomes(clean)
    pruned = [o for o in done if o[1] == "PRUNED"]
    assert len(done) == 12 and len(pruned) >= 3
    assert {step for _, _, step in pruned} <= {2, 4, 8}  # rungs at 2 × 2^k epochs
    assert max(done)[1] == "COMPLETE"  # the best configuration ran to the end
    name = {"successive_halving": "SuccessiveHalving", "hyperband": "Hyperband"}[pruner]
    assert all(t.user_attrs["prune_reason"].startswith(f"{name} pruner at epoch")
               for t in clean.trials if t.state == TrialState.PRUNED)
    storage = open_storage(None, tmp_path / "b")
    part = make_study("c::t::b::climbing::tune", storage, budget=budget, seed=5, search=search)
    tune(part, Climbing(), None, None, budget=Budget(trials=5), suite_seed=0, runtime=runtime)
    dead = part.ask()  # a worker killed in slot 5
    dead.set_user_attr("params", Climbing().search_space(dead, None))
    dead.set_user_attr("worker", worker_id().rsplit(":", 2)[0] + ":999999999:1")
    again = make_study("c::t::b::climbing::tune", storage, budget=budget, seed=5, search=search)
    tune(again, Climbing(), None, None, budget=budget, suite_seed=0, runtime=runtime)
    assert _outcomes(again) == done
    # stopped (Ctrl-C) after a trial passed its rungs at epochs 2 and 4 (its rung values are in the store):
    # that failed trial is no competitor of later slots, so the study ends as the uninterrupted one
    slot = next(i for i, outcome in enumerate(done) if i >= 3 and outcome[1] == "COMPLETE")
    storage = open_storage(None, tmp_path / "c")
    study = make_study("c::t::b::climbing::tune", storage, budget=budget, seed=5, search=search)
    with pytest.raises(KeyboardInterrupt):
        tune(study, Climbing(stop_slot_seed=tuning_seed(0, slot)), None, None, budget=budget, suite_seed=0,
             runtime=runtime)
    stopped = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(stopped) == 1 and len(stopped[0].intermediate_values) == 5
    if pruner == "successive_halving":
        assert any(k.startswith("completed_rung") for k in stopped[0].system_attrs)
    tune(study, Climbing(), None, None, budget=budget, suite_seed=0, runtime=runtime)
    assert _outcomes(study) == done


# ------------------------------------------------------------------ compute budgets


class Costly(Strategy):
    """Spends ``cost`` backbone epochs' worth of FLOPs per epoch, for ``epochs`` epochs;
    prunes (NaN) when x > 0.8 after one epoch."""

    name, description = "costly", "test double"

    def __init__(self, cost: float, **kw) -> None:
        super().__init__(**kw)
        self.cost = cost

    def search_space(self, trial, backbone):
        return {"x": trial.suggest_float("x", 0.0, 1.0), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        for epoch in range(params["epochs"]):
            reporter.spend(self.cost * UNIT)
            if params["x"] > 0.8:
                raise NonFiniteLoss(epoch, float("nan"))
            reporter.report(epoch, params["x"])
        return ModelPredictor(backbone, device=runtime.device, trainable=1)


UNIT = 1e6


def test_an_epochs_budget_gives_cheap_strategies_more_trials_and_counts_pruned_ones(tmp_path, runtime,
                                                                                   monkeypatch) -> None:
    monkeypatch.setattr("tlbench.run.tuning.compute_unit", lambda backbone, task: UNIT)
    budget = Budget(epochs=20, max_trials=100)
    results = {}
    for cost in (1.0, 0.25):
        study = make_study(f"s::t::b::costly{cost}::tune", open_storage(None, tmp_path / str(cost)), budget=budget,
                           seed=0)
        results[cost] = tune(study, Costly(cost, epochs=(2, 4)), None, None, budget=budget, suite_seed=0,
                             runtime=runtime)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        spent = [t.user_attrs["compute"] for t in sorted(finished, key=lambda t: t.number)]
        assert sum(spent[:-1]) < 20 <= sum(spent)  # the last trial started before the budget ran out
        pruned = [t for t in finished if t.state == TrialState.PRUNED]
        assert pruned, "the test needs pruned trials"
        for t in pruned:  # what each ran: one epoch when its loss diverged, else the epochs it reported
            assert t.user_attrs["compute"] == pytest.approx(cost * max(1, len(t.intermediate_values)))
        assert results[cost].compute == pytest.approx(sum(spent))
    full, cheap = results[1.0], results[0.25]
    assert cheap.n_complete + cheap.n_pruned >= 3 * (full.n_complete + full.n_pruned)


def test_training_loops_charge_backbone_epochs(runtime, tiny_task) -> None:
    """Full fine-tuning charges about one backbone epoch per epoch; a linear probe the feature
    pass (a third) plus a tiny head."""
    from tlbench.run.tuning import compute_unit
    from tlbench.training.loop import NullReporter

    backbone = tiny_backbone()
    unit = compute_unit(backbone, tiny_task)
    assert unit and unit > 0
    for name, low, high in (("full_finetune", 2.9, 3.3), ("linear_probe", 0.3, 0.4)):
        strategy = STRATEGIES.get(name)(epochs=(3, 3), batch_size=8)
        params = strategy.search_space(optuna.trial.FixedTrial({"optimizer": "sgd", "lr_sgd": 0.01, "lr": 0.01,
                                                                "weight_decay": 1e-4, "warmup_fraction": 0.0}),
                                       backbone)
        reporter = NullReporter()
        strategy.fit(backbone, tiny_task, params, seed=0, reporter=reporter, runtime=runtime)
        assert low <= reporter.flops / unit <= high, (name, reporter.flops / unit)


# ------------------------------------------------------------------ sweeps


def test_a_sweep_expands_into_predictably_named_tasks(tmp_path) -> None:
    path = write(tmp_path, base=SMALL.replace("    backbones: [b]\n", "    backbones: [b]\n"
                                              "    shift: {kind: noise, severity: 0.1}\n"
                                              "    sweep: {severity: [0.5, 0.25, 1]}\n"))
    suite = parse_suite(path)
    assert list(suite.tasks) == ["d.severity0.5", "d.severity0.25", "d.severity1"]
    assert [t.swept for t in suite.tasks.values()] == [("d", "severity", 0.5), ("d", "severity", 0.25),
                                                       ("d", "severity", 1)]
    assert list(parse_suite(path).tasks) == list(suite.tasks)  # deterministic
    explicit = write(tmp_path, name="e.yaml", base=SMALL.replace("  d:\n", "  d.severity0.5:\n").replace(
        "    backbones: [b]\n", "    backbones: [b]\n    shift: {kind: noise, severity: 0.5}\n"))
    one = write(tmp_path, name="o.yaml", base=SMALL.replace("    backbones: [b]\n", "    backbones: [b]\n"
                "    shift: {kind: noise, severity: 0.1}\n    sweep: {severity: [0.5]}\n"))
    assert parse_suite(one).fingerprint() == parse_suite(explicit).fingerprint()  # a sweep is its tasks
    plan = load_plan(one)
    assert plan.tasks["d.severity0.5"].info["sweep"] == {"family": "d", "field": "severity", "value": 0.5}


# ------------------------------------------------------------------ resume after kill -9


STUDY = """\
name: sweepsens
seed: 0
trials: 2
seeds: 1
strategies: [linear_probe]
training: {epochs: [2, 3], batch_size: 16}
sensitivity:
  - {strategy: linear_probe, params: {lr: [0.001, 0.01, 0.1]}, seeds: 2}
backbones:
  b: {arch: cnn2d, args: {width: 8, depth: 2}}
tasks:
  d:
    dataset: digits
    split: {shots: 2, val_per_class: 3, test_fraction: 0.3}
    sweep: {shots: [1, 3]}
    backbones: [b]
"""


def _run(tmp_path: Path, out: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "TLBENCH_CACHE": str(tmp_path / f"cache-{out}")}
    return subprocess.Popen([sys.executable, "-m", "tlbench.cli", "run", str(tmp_path / "s.yaml"), "--out",
                             str(tmp_path / out), "--report", "none"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kw)


def _records(path: Path) -> tuple[list, list]:
    from tlbench.store.records import load_runs, load_sensitivity

    storage = open_existing_storage(str(path / "store.journal"))
    runs = load_runs(storage)[["task", "strategy", "seed", "params", "test_accuracy"]]
    sens = load_sensitivity(storage)[["task", "seed", "varied:lr", "tuned:lr", "test_accuracy"]]
    return (sorted(map(repr, runs.to_dict("records"))), sorted(map(repr, sens.to_dict("records"))))


@pytest.mark.slow
def test_a_sweep_and_its_sensitivity_study_resume_exactly_after_kill_9(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(STUDY)
    clean = _run(tmp_path, "clean")
    assert clean.wait(timeout=300) == 0, clean.stderr.read()
    assert not (tmp_path / "clean" / "table.md").exists()  # --report none: the store only
    killed = _run(tmp_path, "killed")
    journal = tmp_path / "killed" / "store.journal"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill -9 in the middle of the first task's sensitivity study
        if journal.exists() and journal.read_text().count('"record"') >= 3 and "::sens" in journal.read_text():
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    text = journal.read_text()
    assert "d.shots3::b::linear_probe::sens" not in text, "killed too late to test resuming"
    resumed = _run(tmp_path, "killed")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    runs, sens = _records(tmp_path / "killed")
    assert (runs, sens) == _records(tmp_path / "clean")
    assert len(runs) == 2 and len(sens) == 2 * 3 * 2


# ------------------------------------------------------------------ the report of a study


def _sweep_runs(gaps: dict[int, float], seeds: int = 5):
    """Runs of a swept family: scratch trails the best transfer strategy by ``gaps[shots]``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for shots, gap in gaps.items():
        for seed in range(seeds):
            noise = rng.normal(0, 0.01)
            for strategy, acc in (("linear_probe", 0.9), ("full_finetune", 0.85), ("scratch", 0.9 - gap)):
                rows.append({"suite": "s", "task": f"d.shots{shots}", "backbone": "b", "strategy": strategy,
                             "seed": 500000 + seed, "test_accuracy": acc + noise + rng.normal(0, 0.002),
                             "task_info": {"sweep": {"family": "d", "field": "shots", "value": shots}}})
    return pd.DataFrame(rows)


def test_the_crossover_table_names_where_transfer_stops_paying_off() -> None:
    from tlbench.reports.studies import crossover_tables, sweep_summary
    from tlbench.reports.tables import to_latex, to_markdown

    runs = _sweep_runs({1: 0.4, 2: 0.2, 5: 0.0, 10: 0.0})
    [table] = crossover_tables(runs)
    text = to_markdown(table)
    assert "Transfer stops paying off at shots = 5" in text
    assert [row[0].text for row in table.rows] == ["1", "2", "5", "10"]  # numeric order, not text order
    assert [row[-1].text for row in table.rows] == ["yes", "yes", "no", "no"]
    assert "\\begin{tabular}" in to_latex(table)
    summary = sweep_summary(runs)
    assert set(summary["strategy"]) == {"linear_probe", "full_finetune", "scratch"} and (summary["n"] == 5).all()
    never = crossover_tables(_sweep_runs({1: 0.4, 2: 0.3}))[0]
    assert "significantly worse at every shots tested" in to_markdown(never)
    few = crossover_tables(_sweep_runs({1: 0.4, 2: 0.3}, seeds=2))[0]
    assert "fewer than 5 shared seeds" in to_markdown(few)


def test_the_crossover_decides_by_one_criterion_and_its_interval_is_that_tests() -> None:
    """The quick report once marked a gap "not significant" (paired t, p = 0.058) beside a bootstrap interval
    [0.1, 1.5] that excluded zero. The interval is now the paired t-test's own: it excludes zero exactly when
    p < α, on gaps near the boundary too."""
    import math

    import numpy as np
    import pandas as pd
    from scipy import stats as scipy_stats

    from tlbench.reports.studies import crossover_frame

    rng = np.random.default_rng(3)
    rows = []
    for shots in range(1, 13):  # noisy gaps of every size around significance
        for seed in range(4):
            base = rng.normal(0.6, 0.02)
            for strategy, acc in (("linear_probe", base + 0.012 * shots / 6 + rng.normal(0, 0.01)),
                                  ("scratch", base)):
                rows.append({"suite": "s", "task": f"d.shots{shots}", "backbone": "b", "strategy": strategy,
                             "seed": seed, "test_accuracy": acc,
                             "task_info": {"sweep": {"family": "d", "field": "shots", "value": shots}}})
    frame = crossover_frame(pd.DataFrame(rows))
    assert len(frame) == 12
    for r in frame.to_dict("records"):
        excludes_zero = r["low"] > 0 or r["high"] < 0
        assert excludes_zero == (r["p"] < 0.05), r
        assert r["worse"] == (r["p"] < 0.05 and r["gap"] > 0)
        assert r["low"] <= r["gap"] <= r["high"] and not math.isnan(r["p"])
    verdicts = {bool(w) for w in frame["worse"]}
    assert verdicts == {True, False}, "the data should straddle the boundary"
    one = pd.DataFrame(rows)
    one = one[one["task"] == "d.shots12"].pivot(index="seed", columns="strategy", values="test_accuracy")
    test = scipy_stats.ttest_rel(one["linear_probe"], one["scratch"])
    last = frame.iloc[-1]
    assert math.isclose(last["p"], test.pvalue) and math.isclose(last["low"], test.confidence_interval(0.95).low)


def test_sweep_and_sensitivity_figures_are_written(tmp_path) -> None:
    import pandas as pd

    from tlbench.reports.figures import palette
    from tlbench.reports.studies import sensitivity_summary, studies_section

    rows = []
    for task in ("a", "b"):
        for lr in (0.001, 0.01, 0.1):
            for wd in (0.0, 0.1):
                for seed in range(3):
                    rows.append({"task": task, "backbone": "b", "strategy": "full_finetune", "seed": seed,
                                 "test_accuracy": 0.5 + lr + wd / 10 + seed / 100, "varied:lr": lr,
                                 "varied:wd": wd, "tuned:lr": 0.01, "tuned:wd": 0.1})
                rows.append({"task": task, "backbone": "b", "strategy": "full_finetune", "seed": 0,
                             "test_accuracy": 0.5 + lr, "varied:lr": lr, "tuned:lr": 0.01})
    frame = pd.DataFrame(rows)
    summary = sensitivity_summary(frame)
    assert set(summary["params"]) == {("lr",), ("lr", "wd")}
    one = summary[summary["params"] == ("lr",)]
    assert len(one) == 6 and (one["tuned_x"] == 0.01).all()
    runs = _sweep_runs({1: 0.4, 5: 0.0})
    colours = palette(["full_finetune", "linear_probe", "scratch"])
    tables, files, captions = studies_section(runs, frame, tmp_path, colours=colours)
    names = sorted(p.name for p in files)
    assert names == sorted(["sweep_d.png", "sweep_d.pdf", "sensitivity_full_finetune_lr.png",
                            "sensitivity_full_finetune_lr.pdf", "sensitivity_full_finetune_lr-wd.png",
                            "sensitivity_full_finetune_lr-wd.pdf"])
    assert all(p.stat().st_size > 1000 for p in files)
    assert [label for label, _ in tables] == ["tab:sweep", "tab:crossover", "tab:sensitivity", "tab:sensitivity1"]
    # the figures' captions: the sensitivity study has 1–3 seeds per value, so its figures say so
    assert set(captions) == {"sweep_d", "sensitivity_full_finetune_lr", "sensitivity_full_finetune_lr-wd"}
    assert "Few seeds: 3 evaluation seeds" in captions["sensitivity_full_finetune_lr-wd"]
    assert "Few seeds: 2 evaluation seeds" in captions["sensitivity_full_finetune_lr"]
    assert "Few seeds" not in captions["sweep_d"] and captions["sweep_d"].startswith("d: ")  # 5 seeds
    assert "Few seeds: 2 evaluation seeds" in " ".join(dict(tables)["tab:sensitivity"].notes)


def test_sweep_and_sensitivity_tables_hold_the_figures_numbers() -> None:
    import pandas as pd

    from tlbench.reports.studies import sensitivity_summary, sensitivity_tables, sweep_summary, sweep_tables
    from tlbench.reports.tables import to_latex, to_markdown

    runs = _sweep_runs({10: 0.1, 2: 0.4, 5: 0.2})
    summary = sweep_summary(runs)
    [table] = sweep_tables(summary)
    assert table.header == ["shots", "full_finetune", "linear_probe", "scratch"]
    assert [row[0].text for row in table.rows] == ["2", "5", "10"]  # numeric order
    for row in table.rows:
        for strategy, cell in zip(table.header[1:], row[1:]):
            r = summary[(summary["value"] == float(row[0].text)) & (summary["strategy"] == strategy)].iloc[0]
            assert cell.text == f"{r['mean'] * 100:.1f} ± {(r['high'] - r['low']) / 2 * 100:.1f}"
        assert [c.bold for c in row[1:]] == [False, True, False]  # linear_probe is best at every value
    assert "\\begin{tabular}" in to_latex(table)
    rows = [{"task": "a", "backbone": "b", "strategy": "lp", "seed": seed, "test_accuracy": 0.5 + lr + seed / 100,
             "varied:lr": lr, "tuned:lr": 0.01} for lr in (0.001, 0.01, 0.1) for seed in range(5)]
    sens = sensitivity_summary(pd.DataFrame(rows))
    [table] = sensitivity_tables(sens)
    text = to_markdown(table)
    tuned = sens[sens["x"] == 0.01].iloc[0]
    assert f"| a | b | **0.01** | **{tuned['mean'] * 100:.1f} ± {(tuned['high'] - tuned['low']) / 2 * 100:.1f}** | 5 |" \
        in text
    assert [row[2].text for row in table.rows] == ["0.001", "0.01", "0.1"]
    assert [row[2].bold for row in table.rows] == [False, True, False]
    assert not any("Few seeds" in note for note in table.notes)  # 5 seeds
    [single] = sensitivity_tables(sensitivity_summary(pd.DataFrame([r for r in rows if r["seed"] == 0])))
    assert "Values without ± have one seed" in " ".join(single.notes) and "±" not in single.rows[0][3].text


@pytest.mark.slow
def test_the_bundled_shots_study_shows_transfer_paying_off_less_as_shots_grow(tmp_path, monkeypatch) -> None:
    """A smaller version of `tlbench run shots` (fewer glyphs, shots, trials and seeds): the
    gap between the linear probe and scratch shrinks from 1 to 20 shots per class."""
    import pandas as pd

    from tlbench.suites import bundled_suites

    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "shots-small.yaml"
    suite.write_text(f'include: "{bundled_suites()["shots"]}"\n' + textwrap.dedent("""\
        trials: 2
        seeds: 2
        strategies: [linear_probe, scratch]
        training: {epochs: [15, 20]}
        search: {pruner: none}
        search_space:       # ranges that train well in 2 trials
          linear_probe: {lr: {low: 0.01, high: 0.1}}
          scratch: {lr_adamw: {low: 0.003, high: 0.01}}
        source_tasks:
          glyphs-alnum: {args: {n: 4000}}
        backbones:
          glyph-cnn: {args: {width: 16}, pretrain: {epochs: 2}}
        tasks:
          digits: {sweep: {shots: [1, 20]}}
        """))
    assert main(["run", str(suite), "--out", str(tmp_path / "o")]) == 0
    runs = pd.read_parquet(tmp_path / "o" / "runs.parquet")
    means = runs.groupby(["task", "strategy"])["test_accuracy"].mean().unstack("strategy")
    gap = means["linear_probe"] - means["scratch"]
    assert gap["digits.shots1"] > 0.1, means
    assert gap["digits.shots1"] > gap["digits.shots20"] + 0.05, means
    assert (tmp_path / "o" / "figures" / "sweep_digits.png").exists()
    assert "Where transfer stops paying off: digits" in (tmp_path / "o" / "table.md").read_text()


def test_the_cost_table_and_tuning_curves_show_the_compute_spent() -> None:
    import pandas as pd

    from tlbench.reports.build import tuning_curves
    from tlbench.reports.tables import cost_table, to_markdown

    runs = pd.DataFrame([{"suite": "s", "task": "t", "backbone": "b", "strategy": s, "seed": k,
                          "train_seconds": 1.0, "own_train_seconds": 1.0, "trainable_parameters": 10,
                          "inference_parameters": 10, "inference_ms_per_example": 0.1, "peak_memory_mb": 5.0,
                          "tuning_compute": c} for s, c in (("full_finetune", 60.0), ("linear_probe", 7.5))
                         for k in range(2)])
    table = cost_table(runs)
    assert "tuning compute" in table.header
    assert [row[table.header.index("tuning compute")].text for row in table.rows] == ["60.0", "7.5"]
    assert "backbone epochs" in to_markdown(table)
    trials = pd.DataFrame([{"suite": "s", "task": "t", "backbone": "b", "strategy": "full_finetune", "number": n,
                            "state": state, "value": 0.5 + n / 10, "seconds": 1.0, "compute": compute}
                           for n, (state, compute) in enumerate((("COMPLETE", 10.0), ("PRUNED", 2.0),
                                                                 ("COMPLETE", 10.0)))])
    curves = tuning_curves(trials, None)
    assert list(curves["epochs"]) == [11.0, 22.0]  # (10 + 2 + 10) / 2 completed trials per completed one


def test_a_trial_keeps_its_validation_loss_per_epoch_and_a_non_finite_one_as_null(tmp_path: Path) -> None:
    from tlbench.run.tuning import TrialReporter, _finish

    storage = open_storage(None, tmp_path / "s")  # a journal file: the losses go through JSON
    study = optuna.create_study(study_name="s::t::b::x::tune", storage=storage, direction="maximize")
    for losses in ([1.5, 0.75], [1.5, float("inf")]):
        trial = study.ask()
        reporter = TrialReporter(trial)
        for epoch, loss in enumerate(losses):
            reporter.val_loss(epoch, loss)
            reporter.report(epoch, 0.5)
        _finish(study, trial, 1.0, reporter, None)
    again = open_existing_storage(str(tmp_path / "s" / "store.journal"))
    trials = optuna.load_study(study_name="s::t::b::x::tune", storage=again).trials
    kept = [t.user_attrs["val_loss"] for t in trials]
    assert kept == [[1.5, 0.75], [1.5, None]]
