"""Seeds side by side (tlbench.training.vectorised): a run trained in a group is the run trained
alone, up to float rounding; what cannot stack trains alone; evaluation groups seeds in fixed
groups, records how each run was trained, and resumes a group whole."""

from __future__ import annotations

import copy
import dataclasses
import math

import optuna
import pytest
import torch
from helpers import run_context, sample_params
from optuna.trial import TrialState
from torch import nn

from tlbench.core.budget import Budget
from tlbench.core.errors import NonFiniteLoss
from tlbench.run.evaluation import evaluate
from tlbench.store.opening import open_storage
from tlbench.strategies import STRATEGIES
from tlbench.strategies.base import stacks_seeds
from tlbench.strategies.full_finetune import FullFinetune
from tlbench.strategies.parts import L2SP, FreezeSchedule, make_optimizer, make_schedule
from tlbench.suites.schema import SearchSpec
from tlbench.training import vectorised
from tlbench.training.backbones import Classifier, build_backbone
from tlbench.training.loop import Hook, NullReporter, cross_entropy, fit_epochs, predict_logits

CPU = torch.device("cpu")
SEEDS = [3, 4, 5]

# full fine-tuning and every built-in that trains one network with the shared loop, each with
# what it varies: parameter groups (discriminative_lr, ulmfit), freezing (gradual_unfreeze, surgical),
# a penalty (l2_sp), a first stage (lp_ft), a criterion on a teacher's logits (distillation),
# a re-initialised backbone (scratch)
STACKING = ["full_finetune", "scratch", "discriminative_lr", "l2_sp", "lp_ft", "gradual_unfreeze", "ulmfit",
            "surgical", "distillation"]


def _fits(strategy, backbone, task, params, runtime, *, together: bool):
    if not together:
        return [strategy.fit(backbone, task, params, seed=s, reporter=NullReporter(), runtime=runtime) for s in SEEDS]
    with vectorised.side_by_side() as group:
        predictors = []
        for s in SEEDS:
            with group.fit():
                predictors.append(strategy.fit(backbone, task, params, seed=s, reporter=NullReporter(),
                                               runtime=runtime))
        group.train()
    assert group.stacked == len(SEEDS), group.sequential_reason
    return predictors


@pytest.mark.parametrize("name", STACKING)
def test_a_seed_trained_in_a_group_is_the_seed_trained_alone(name, tiny_task, tiny_backbone, cell_runtime) -> None:
    strategy = STRATEGIES.get(name)(epochs=(1, 1), batch_size=4, options=(
        {"student": None} if name == "distillation" else None))
    assert stacks_seeds(strategy)
    params = sample_params(strategy, tiny_backbone, seed=1)
    alone = _fits(strategy, tiny_backbone, tiny_task, params, cell_runtime, together=False)
    grouped = _fits(strategy, tiny_backbone, tiny_task, params, cell_runtime, together=True)
    for a, g in zip(alone, grouped):
        torch.testing.assert_close(g.logits(tiny_task.test), a.logits(tiny_task.test), rtol=1e-4, atol=1e-5)
        assert g.trainable_parameters == a.trainable_parameters
        assert g.info() == a.info()
    first, second = (p.logits(tiny_task.test) for p in grouped[:2])
    assert not torch.allclose(first, second)  # each seed its own initialisation and data order


def _models(seeds, *, dropout=False):
    torch.manual_seed(0)
    backbone = build_backbone("cnn2d", {"width": 4, "depth": 2})
    out = []
    for s in seeds:
        torch.manual_seed(s)
        head = backbone.new_head(3)
        out.append(Classifier(copy.deepcopy(backbone), nn.Sequential(nn.Dropout(0.5), head) if dropout else head))
    return out


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)), \
           (torch.randn(12, 1, 8, 8, generator=g), torch.randint(0, 3, (12,), generator=g))


def _run(models, *, together, hooks=lambda m: [], criteria=None, epochs=3):
    train, val = _data()
    cfg = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-3, "warmup_fraction": 0.2}
    reporters, outcomes = [], []
    context = vectorised.side_by_side() if together else _NoGroup()
    with context as group:
        for s, m in zip(SEEDS, models):
            opt = make_optimizer(m.parameters(), cfg)
            reporters.append(NullReporter())
            with (group.fit() if together else _NoGroup()):
                torch.manual_seed(s)  # as finetune does: the run's random draws (dropout) are its seed's
                try:
                    fit_epochs(m, opt, train, val, epochs=epochs, batch_size=8, seed=s, device=CPU,
                               reporter=reporters[-1], scheduler=make_schedule(opt, epochs * 3, cfg), hooks=hooks(m),
                               criterion=(criteria or {}).get(s, cross_entropy))
                    outcomes.append(None)
                except NonFiniteLoss as err:
                    outcomes.append(err)
        if together:
            group.train()
            outcomes = [job.error for job in group.jobs]
    logits = [predict_logits(m, val[0], device=CPU) for m in models]
    return logits, reporters, outcomes, (group if together else None)


class _NoGroup:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_freezing_and_a_penalty_act_on_the_stacked_model_as_on_each() -> None:
    hooks = lambda m: [FreezeSchedule.gradual(3, 1), L2SP(m, 0.1, 0.01)]  # noqa: E731
    alone, rep_a, _, _ = _run(_models(SEEDS), together=False, hooks=hooks)
    grouped, rep_g, _, group = _run(_models(SEEDS), together=True, hooks=hooks)
    assert group.stacked == 3
    for a, g, ra, rg in zip(alone, grouped, rep_a, rep_g):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-5)
        assert rg.history == ra.history and rg.flops == ra.flops > 0


def test_a_diverging_seed_fails_alone_and_the_others_are_unchanged() -> None:
    class BlowsUp:  # seed 4's loss turns infinite in its second epoch, as a too-high rate would make it
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            return cross_entropy(batch) * (float("inf") if self.calls > 3 else 1.0)

    criteria = {4: BlowsUp()}
    alone, _, out_a, _ = _run(_models(SEEDS), together=False, criteria=criteria)
    grouped, _, out_g, group = _run(_models(SEEDS), together=True, criteria={4: BlowsUp()})
    assert group.stacked == 3
    assert [type(e) for e in out_a] == [type(e) for e in out_g] == [type(None), NonFiniteLoss, type(None)]
    assert out_g[1].epoch == out_a[1].epoch
    for i in (0, 2):
        torch.testing.assert_close(grouped[i], alone[i], rtol=1e-4, atol=1e-5)


class _Counter(Hook):  # not stackable: it would count a stacked model's steps once per group
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, step: int) -> None:
        self.steps += 1


@pytest.mark.parametrize("case,reason", [("dropout", "dropout"), ("hook", "_Counter"), ("single", "single")])
def test_what_cannot_stack_trains_alone_with_the_same_numbers(case, reason) -> None:
    seeds = SEEDS[:1] if case == "single" else SEEDS
    hooks = (lambda m: [_Counter()]) if case == "hook" else (lambda m: [])
    alone, rep_a, _, _ = _run(_models(seeds, dropout=case == "dropout"), together=False, hooks=hooks)
    grouped, rep_g, _, group = _run(_models(seeds, dropout=case == "dropout"), together=True, hooks=hooks)
    assert group.stacked == 1 and reason in group.sequential_reason
    for a, g, ra, rg in zip(alone, grouped, rep_a, rep_g):
        assert torch.equal(a, g) and ra.history == rg.history  # the very same computation, random state included


def test_a_fit_that_trains_twice_is_refused() -> None:
    (model,) = _models(SEEDS[:1])
    train, val = _data()
    with vectorised.side_by_side() as group, group.fit():
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        fit_epochs(model, opt, train, val, epochs=1, batch_size=8, seed=0, device=CPU, reporter=NullReporter())
        with pytest.raises(RuntimeError, match="second fit_epochs"):
            fit_epochs(model, opt, train, val, epochs=1, batch_size=8, seed=0, device=CPU, reporter=NullReporter())


def test_a_subclass_that_overrides_fit_must_declare_it_again() -> None:
    class PostProcessed(FullFinetune):
        name = "post_processed"

        def fit(self, *args, **kwargs):  # uses the trained model before returning
            return super().fit(*args, **kwargs)

    class Declared(PostProcessed):
        vectorises = True

    class KeepsFit(FullFinetune):
        name = "keeps_fit"

    assert stacks_seeds(FullFinetune()) and stacks_seeds(KeepsFit())
    assert not stacks_seeds(PostProcessed()) and stacks_seeds(Declared())
    assert not stacks_seeds(STRATEGIES.get("linear_probe")()) and not stacks_seeds(STRATEGIES.get("ensemble")())


def _evaluate(study, task, backbone, runtime, params, seeds):
    strategy = FullFinetune(epochs=(2, 2), batch_size=4)
    return evaluate(study, strategy, backbone, task, params, seeds=seeds, context=run_context(), runtime=runtime)


def test_evaluation_trains_fixed_groups_records_them_and_resumes_a_group_whole(tiny_task, tiny_backbone,
                                                                               runtime) -> None:
    params = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "warmup_fraction": 0.1, "epochs": 2}
    seeds = [0, 1, 2, 3, 4]
    alone = {r.seed: r for r in _evaluate(optuna.create_study(direction="maximize"), tiny_task, tiny_backbone,
                                          runtime, params, seeds)}
    together = dataclasses.replace(runtime, seeds_together=2)
    study = optuna.create_study(direction="maximize")
    grouped = {r.seed: r for r in _evaluate(study, tiny_task, tiny_backbone, together, params, seeds)}
    assert {s: r.provenance.vectorised for s, r in grouped.items()} == {0: 2, 1: 2, 2: 2, 3: 2, 4: 1}
    assert {r.provenance.vectorised for r in alone.values()} == {1}
    for s in seeds:
        assert grouped[s].metrics.test_accuracy == pytest.approx(alone[s].metrics.test_accuracy, abs=1e-9)
        assert grouped[s].costs.trainable_parameters == alone[s].costs.trainable_parameters
    # a group one of whose seeds is recorded (a kill between the group's records) trains whole again:
    # the other seed comes out as it did in the uninterrupted run
    resumed = optuna.create_study(direction="maximize")
    for trial in study.get_trials():
        if trial.user_attrs.get("seed") != 3:
            resumed.add_trial(trial)
    [again] = _evaluate(resumed, tiny_task, tiny_backbone, together, params, seeds)
    assert again.seed == 3 and again.provenance.vectorised == 2
    assert again.metrics.model_dump() == grouped[3].metrics.model_dump()


# runs of different configurations (tuning trials side by side): each its own optimizer, rate,
# weight decay, schedule and epochs
CONFIGS = [{"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-3, "warmup_fraction": 0.2, "epochs": 3},
           {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-2, "warmup_fraction": 0.0, "epochs": 2},
           {"optimizer": "sgd", "lr": 0.2, "weight_decay": 0.0, "warmup_fraction": 0.5, "epochs": 4}]


def _run_configs(models, configs, *, together, hooks=lambda m, cfg: [], batch_sizes=None):
    train, val = _data()
    reporters = []
    group = vectorised.side_by_side(one_configuration=False) if together else _NoGroup()
    with group as g:
        for s, m, cfg, bs in zip(SEEDS, models, configs, batch_sizes or [8] * len(configs)):
            opt = make_optimizer(m.parameters(), cfg)
            reporters.append(NullReporter())
            with (g.fit() if together else _NoGroup()):
                fit_epochs(m, opt, train, val, epochs=cfg["epochs"], batch_size=bs, seed=s, device=CPU,
                           reporter=reporters[-1], scheduler=make_schedule(opt, cfg["epochs"] * -(-24 // bs), cfg),
                           hooks=hooks(m, cfg))
        if together:
            g.train()
    return [predict_logits(m, val[0], device=CPU) for m in models], reporters, (g if together else None)


def test_runs_of_different_configurations_each_step_their_own_optimizer_for_their_own_epochs() -> None:
    hooks = lambda m, cfg: [FreezeSchedule.gradual(3, 1), L2SP(m, 0.1, 0.01)]  # noqa: E731
    alone, rep_a, _ = _run_configs(_models(SEEDS), CONFIGS, together=False, hooks=hooks)
    grouped, rep_g, group = _run_configs(_models(SEEDS), CONFIGS, together=True, hooks=hooks)
    assert group.stacked == 3 and not group.sequential_reason
    assert [len(r.history) for r in rep_g] == [3, 2, 4]  # the second run left the stack after its two epochs
    for a, g, ra, rg in zip(alone, grouped, rep_a, rep_g):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-5)
        assert rg.history == pytest.approx(ra.history, abs=1e-9) and rg.flops == ra.flops > 0
    assert sum(job.seconds for job in group.jobs) > 0 and group.jobs[2].seconds > group.jobs[1].seconds


def test_each_run_keeps_its_own_penalty_weights_in_a_stack() -> None:
    weights = iter([(0.1, 0.01), (0.5, 0.0), (0.02, 0.2)])  # L2-SP's α and β are searched: every trial its own
    hooks = lambda m, cfg: [L2SP(m, *next(weights))]  # noqa: E731
    alone, rep_a, _ = _run_configs(_models(SEEDS), CONFIGS, together=False, hooks=hooks)
    weights = iter([(0.1, 0.01), (0.5, 0.0), (0.02, 0.2)])
    grouped, rep_g, group = _run_configs(_models(SEEDS), CONFIGS, together=True, hooks=hooks)
    assert group.stacked == 3
    for a, g, ra, rg in zip(alone, grouped, rep_a, rep_g):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-5)
        assert rg.history == pytest.approx(ra.history, abs=1e-9)


@pytest.mark.parametrize("case", ["batch size", "freezing", "no key"])
def test_runs_that_cannot_share_a_forward_pass_are_grouped_apart(case) -> None:
    class Keyless(Hook):
        stackable = True  # acts on a stacked model, but does not say with which settings

    def hooks(m, cfg):
        if case == "freezing":  # other layers train: one stacked tensor has one trainable flag
            return [FreezeSchedule.gradual(3, 1 if cfg["optimizer"] == "sgd" else 2)]
        return [Keyless()] if case == "no key" else []

    sizes = [8, 6, 8] if case == "batch size" else None
    alone, rep_a, _ = _run_configs(_models(SEEDS), CONFIGS, together=False, hooks=hooks, batch_sizes=sizes)
    grouped, rep_g, group = _run_configs(_models(SEEDS), CONFIGS, together=True, hooks=hooks, batch_sizes=sizes)
    # the first and third runs share a forward pass; the second trains alone (with a key-less hook, all do)
    assert [job.stacked for job in group.jobs] == ([1, 1, 1] if case == "no key" else [2, 1, 2])
    assert ("Keyless" if case == "no key" else "a single run") in group.sequential_reason
    for a, g in zip(alone, grouped):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-5)


def test_a_module_setting_that_differs_keeps_runs_apart() -> None:
    models = _models(SEEDS)
    models[1].backbone.scale = 2.0  # as a LoRA scale would differ between configurations
    models[0].backbone.scale = models[2].backbone.scale = 1.0
    _, _, group = _run_configs(models, CONFIGS, together=True)
    assert [job.stacked for job in group.jobs] == [2, 1, 2]


def _tune(study, task, backbone, runtime, trials=5):
    from tlbench.run.tuning import tune

    strategy = FullFinetune(epochs=(1, 3), batch_size=4)
    return tune(study, strategy, backbone, task, budget=Budget(trials=trials), suite_seed=0, runtime=runtime)


def _trials(study):
    from tlbench.store.progress import slot_of

    return {slot_of(t): t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def test_tuning_trains_independent_trials_side_by_side_and_resumes_a_group_whole(tiny_task, tiny_backbone,
                                                                                 runtime, tmp_path) -> None:
    from tlbench.run.tuning import make_study

    def study(name, search=SearchSpec(sampler="random", pruner="none")):
        return make_study("s::t::b::full_finetune::tune", open_storage(None, tmp_path / name),
                          budget=Budget(trials=5), seed=0, search=search)

    alone = study("alone")
    _tune(alone, tiny_task, tiny_backbone, runtime)
    grouped = study("grouped")
    _tune(grouped, tiny_task, tiny_backbone, dataclasses.replace(runtime, trials_together=2))
    a, g = _trials(alone), _trials(grouped)
    assert sorted(a) == sorted(g) == [0, 1, 2, 3, 4]
    assert {s: t.user_attrs.get("vectorised") for s, t in g.items()} == {0: 2, 1: 2, 2: 2, 3: 2, 4: None}
    assert len({t.params["epochs"] for t in g.values()}) > 1  # the trials of a group differ in epochs too
    for s in a:
        assert g[s].params == a[s].params and g[s].user_attrs["seed"] == a[s].user_attrs["seed"]
        assert g[s].value == pytest.approx(a[s].value, abs=1e-9)
        assert g[s].intermediate_values == pytest.approx(a[s].intermediate_values, abs=1e-9)
        assert len(g[s].user_attrs["val_loss"]) == len(g[s].intermediate_values)  # the loss of every epoch, kept
        assert g[s].user_attrs["val_loss"] == pytest.approx(a[s].user_attrs["val_loss"], rel=1e-4)
        assert g[s].user_attrs["compute"] == a[s].user_attrs["compute"]
    # a group one of whose trials was recorded before a kill trains whole again: the other comes out the same
    resumed = study("resumed")
    for trial in grouped.get_trials():
        if trial.user_attrs.get("slot") != 3:
            resumed.add_trial(trial)
    _tune(resumed, tiny_task, tiny_backbone, dataclasses.replace(runtime, trials_together=2))
    again = _trials(resumed)[3]
    assert again.user_attrs["vectorised"] == 2 and again.value == g[3].value
    assert again.intermediate_values == g[3].intermediate_values
    # under TPE with the median pruner only the first slots are independent (its three start-up trials)
    tpe = study("tpe", SearchSpec())
    _tune(tpe, tiny_task, tiny_backbone, dataclasses.replace(runtime, trials_together=10))
    assert {s: t.user_attrs.get("vectorised") for s, t in _trials(tpe).items()} == {
        0: 3, 1: 3, 2: 3, 3: None, 4: None}


def test_the_next_group_of_slots_skips_a_group_another_worker_holds_a_slot_of() -> None:
    from tlbench.run.tuning import next_slots
    from tlbench.store.progress import Slots

    budget, done = Budget(trials=8), optuna.trial.create_trial(value=0.5)
    assert next_slots(Slots(), budget, 6, 3) == [0, 1, 2]
    assert next_slots(Slots(held=frozenset({1})), budget, 6, 3) == [3, 4, 5]  # group 0-2 is another worker's
    assert next_slots(Slots(finished={0: done}), budget, 6, 3) == [0, 1, 2]  # trained whole, slot 0 unrecorded
    assert next_slots(Slots(held=frozenset({1, 4})), budget, 6, 3) is None  # slot 6 waits for the lower ones
    assert next_slots(Slots(finished={s: done for s in range(6)}), budget, 6, 3) == [6]  # past them: one by one
    assert next_slots(Slots(), budget, math.inf, 3) == [0, 1, 2]
    assert next_slots(Slots(finished={s: done for s in range(6)}), budget, math.inf, 3) == [6, 7]  # the budget's end
    assert next_slots(Slots(held=frozenset({0})), budget, 6, 1) == [1]  # one at a time: the next free slot
