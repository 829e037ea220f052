"""Each strategy's defining mechanism, proved on the tiny task (conformance is elsewhere)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import make_members, run_context

from tlbench.core.budget import Budget
from tlbench.strategies import STRATEGIES
from tlbench.strategies.ensemble import (
    EnsemblePredictor,
    average_states,
    greedy_selection,
    probabilities,
    soup,
)
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.linear_probe import train_probe
from tlbench.strategies.parts import (
    L2SP,
    FreezeSchedule,
    distillation_loss,
    layerwise_lr_groups,
    make_optimizer,
    model_groups,
)
from tlbench.training.backbones import Classifier
from tlbench.training.loop import Hook, NullReporter, fit_epochs

SGD = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "warmup_fraction": 0.0}
ADAMW = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "warmup_fraction": 0.0}


def group_states(model: Classifier) -> list[dict[str, torch.Tensor]]:
    """Each layer group's parameters and buffers (batch-norm statistics), copied."""
    return [{k: v.detach().clone() for k, v in g.state_dict().items()} for g in model_groups(model)]


def changed(before: list[dict], after: list[dict]) -> set[int]:
    return {i for i, (a, b) in enumerate(zip(before, after)) if any(not torch.equal(a[k], b[k]) for k in a)}


class Snapshots(Hook):
    """Records every group's state at the start of each epoch (after the freezing hook)."""

    def __init__(self) -> None:
        self.states: list[list[dict]] = []

    def on_epoch_start(self, epoch, model, optimizer) -> None:
        self.states.append(group_states(model))


def make(name: str, **options):
    return STRATEGIES.get(name)(epochs=(2, 8), batch_size=8, options=options or None)


# --- gradual unfreezing -----------------------------------------------------------------

def test_gradual_unfreezing_changes_exactly_the_unfrozen_groups_at_each_stage(tiny_backbone, tiny_task,
                                                                               runtime) -> None:
    model = new_classifier(tiny_backbone, tiny_task.num_classes, seed=0, runtime=runtime)
    n = len(model_groups(model))  # 3 backbone groups + head
    schedule, snaps = FreezeSchedule.gradual(n, epochs_per_stage=2), Snapshots()
    finetune(model, tiny_task, {**SGD, "epochs": 9}, seed=0, reporter=NullReporter(), runtime=runtime,
             batch_size=4, hooks=[schedule, snaps])
    states = [*snaps.states, group_states(model)]
    expected = {0: {3}, 1: {3}, 2: {2, 3}, 3: {2, 3}, 4: {1, 2, 3}, 5: {1, 2, 3}, 6: {0, 1, 2, 3}}
    for epoch in range(9):
        assert changed(states[epoch], states[epoch + 1]) == expected.get(epoch, {0, 1, 2, 3}), epoch


def test_gradual_unfreeze_strategy_leaves_never_unfrozen_groups_bit_identical(tiny_backbone, tiny_task,
                                                                              cell_runtime) -> None:
    params = {**SGD, "schedule": "cosine", "epochs": 3, "epochs_per_stage": 2}  # stages: head; head + top
    predictor = make("gradual_unfreeze").fit(tiny_backbone, tiny_task, params, seed=0,
                                             reporter=NullReporter(), runtime=cell_runtime)
    pretrained = Classifier(copy.deepcopy(tiny_backbone), predictor.model.head)
    assert changed(group_states(pretrained), group_states(predictor.model)) == {2}
    head_and_top = sum(p.numel() for g in model_groups(predictor.model)[2:] for p in g.parameters())
    assert predictor.trainable_parameters == head_and_top


@pytest.mark.parametrize("total", [5, 15, 19, 59, 100])
def test_slanted_triangular_schedule_rises_then_decays_to_the_floor(total: int) -> None:
    from tlbench.strategies.parts import slanted_triangular

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = slanted_triangular(opt, total, cut_frac=0.1, ratio=32)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cut = max(1, int(total * 0.1))
    assert lrs[0] == pytest.approx(1 / 32) and lrs[cut] == pytest.approx(1.0) and max(lrs) == lrs[cut]
    assert lrs[-1] == pytest.approx(1 / 32)  # the decay spans the whole run, whatever the rounding
    assert all(a < b for a, b in zip(lrs[:cut], lrs[1:cut + 1]))
    assert all(a > b for a, b in zip(lrs[cut:], lrs[cut + 1:]))


# --- discriminative learning rates ----------------------------------------------------------

def test_discriminative_groups_carry_the_geometric_series_and_cover_each_parameter_once(
        tiny_backbone, tiny_task, runtime) -> None:
    model = new_classifier(tiny_backbone, tiny_task.num_classes, seed=0, runtime=runtime)
    opt = make_optimizer(layerwise_lr_groups(model, 0.5), {**ADAMW, "lr": 0.08})
    n = len(model.backbone.groups)
    # each layer group becomes two optimizer groups (no weight decay on its 1-D parameters)
    rates = list(dict.fromkeys(g["lr"] for g in opt.param_groups))
    assert rates == pytest.approx([0.08 * 0.5 ** (n - i) for i in range(n + 1)])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    head = {id(p) for p in model.head.parameters()}
    last = [g for g in opt.param_groups if g["lr"] == 0.08]  # the head: its weight, and its bias undecayed
    assert {id(p) for g in last for p in g["params"]} == head


def test_discriminative_lr_strategy_trains_with_those_groups(tiny_backbone, tiny_task, cell_runtime,
                                                             monkeypatch) -> None:
    import tlbench.strategies.full_finetune as ft

    seen = []
    original = ft.fit_epochs
    monkeypatch.setattr(ft, "fit_epochs", lambda model, opt, *a, **k: (seen.append(
        [g["lr"] for g in opt.param_groups]), original(model, opt, *a, **k))[1])
    params = {**ADAMW, "epochs": 2, "lr_decay": 0.4}
    make("discriminative_lr").fit(tiny_backbone, tiny_task, params, seed=0, reporter=NullReporter(),
                                  runtime=cell_runtime)
    # lrs as the scheduler left them after its first step: the ratios are what matter (one rate
    # per layer group; each group is split into decayed and undecayed parameters)
    rates = list(dict.fromkeys(seen[0]))
    ratios = [lr / rates[-1] for lr in rates]
    assert ratios == pytest.approx([0.4 ** 3, 0.4 ** 2, 0.4, 1.0])


# --- LP-FT ----------------------------------------------------------------------------

def test_lp_ft_fine_tuning_starts_from_the_probed_head(tiny_backbone, tiny_task, cell_runtime,
                                                       monkeypatch) -> None:
    import tlbench.strategies.lp_ft as reg

    captured = {}
    original = reg.finetune
    monkeypatch.setattr(reg, "finetune", lambda model, *a, **k: (captured.update(
        head=copy.deepcopy(model.head), backbone=copy.deepcopy(model.backbone)), original(model, *a, **k))[1])
    params = {"probe_lr": 0.02, "probe_weight_decay": 1e-4, "probe_epochs": 5, **SGD, "epochs": 2}
    make("lp_ft").fit(tiny_backbone, tiny_task, params, seed=3, reporter=NullReporter(), runtime=cell_runtime)
    probed = train_probe(tiny_backbone, tiny_task, {"lr": 0.02, "weight_decay": 1e-4, "epochs": 5}, seed=3,
                         reporter=NullReporter(), runtime=cell_runtime, batch_size=8)
    assert torch.equal(captured["head"].weight, probed.weight) and torch.equal(captured["head"].bias, probed.bias)
    fresh = tiny_backbone.new_head(tiny_task.num_classes)
    assert not torch.equal(probed.weight, fresh.weight)  # the probe did train
    for a, b in zip(captured["backbone"].state_dict().values(), tiny_backbone.state_dict().values()):
        assert torch.equal(a, b)  # and the backbone starts pretrained


# --- L2-SP ----------------------------------------------------------------------------

def test_l2_sp_penalty_equals_a_hand_computation(tiny_backbone, tiny_task, runtime) -> None:
    model = new_classifier(tiny_backbone, tiny_task.num_classes, seed=0, runtime=runtime)
    start = [p.detach().numpy().copy() for p in model.backbone.parameters()]
    hook = L2SP(model, alpha=0.3, beta=0.07)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    sp = sum(float(((p.detach().numpy() - p0) ** 2).sum()) for p, p0 in zip(model.backbone.parameters(), start))
    head = float((model.head.weight.detach().numpy() ** 2).sum())
    assert float(hook.penalty(model).detach()) == pytest.approx(0.3 / 2 * sp + 0.07 / 2 * head, rel=1e-5)


def test_l2_sp_with_a_huge_alpha_keeps_the_weights_at_the_start(tiny_backbone, tiny_task, runtime) -> None:
    def drift(alpha: float) -> float:
        model = new_classifier(tiny_backbone, tiny_task.num_classes, seed=0, runtime=runtime)
        start = [p.detach().clone() for p in model.backbone.parameters()]
        opt = make_optimizer(model.parameters(), {**SGD, "lr": 0.01, "weight_decay": 0.0})
        fit_epochs(model, opt, (tiny_task.train.x, tiny_task.train.y), (tiny_task.val.x, tiny_task.val.y),
                   epochs=20, batch_size=4, seed=0, device=runtime.device, reporter=NullReporter(),
                   hooks=[L2SP(model, alpha, 0.0)])
        with torch.no_grad():
            return math.sqrt(sum(float(((p - p0) ** 2).sum()) for p, p0 in zip(model.backbone.parameters(), start)))

    free, held = drift(0.0), drift(70.0)
    assert free > 0.1 and held < 0.02 * free


# --- surgical -------------------------------------------------------------------------

@pytest.mark.parametrize("group", [0, 2])
def test_surgical_changes_only_the_chosen_group_and_the_head(tiny_backbone, tiny_task, cell_runtime,
                                                             group) -> None:
    params = {**SGD, "epochs": 3, "group": group}
    predictor = make("surgical").fit(tiny_backbone, tiny_task, params, seed=0, reporter=NullReporter(),
                                     runtime=cell_runtime)
    pretrained = Classifier(copy.deepcopy(tiny_backbone), predictor.model.head)
    assert changed(group_states(pretrained), group_states(predictor.model)) == {group}
    expected = sum(p.numel() for p in model_groups(predictor.model)[group].parameters()) + \
        sum(p.numel() for p in predictor.model.head.parameters())
    assert predictor.trainable_parameters == expected


def test_surgical_searches_over_the_backbones_groups(tiny_backbone) -> None:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    groups = {make("surgical").search_space(study.ask(), tiny_backbone)["group"] for _ in range(30)}
    assert groups == set(range(len(tiny_backbone.groups)))


# --- distillation ---------------------------------------------------------------------

def test_distillation_loss_equals_a_hand_computed_example() -> None:
    zs = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0]])
    zt = np.array([[0.5, 3.0, -1.0], [2.0, 0.0, 1.0]])
    y = np.array([1, 0])
    t, a = 2.0, 0.3

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ce = -np.mean(np.log(softmax(zs)[np.arange(2), y]))
    pt, ps = softmax(zt / t), softmax(zs / t)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), 1))
    expected = (1 - a) * ce + a * t * t * kl
    got = distillation_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), temperature=t, alpha=a)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_distillation_uses_the_cached_teacher_and_never_changes_it(tiny_backbone, tiny_task, runtime,
                                                                   monkeypatch) -> None:
    from tlbench.strategies.full_finetune import FullFinetune
    from tlbench.training.backbones import build_backbone

    student = build_backbone("cnn2d", {"width": 2, "depth": 3}, seed=1)
    members = make_members(tiny_task, tiny_backbone, keep_weights=frozenset({"full_finetune"}),
                           backbones={"tiny-backbone": tiny_backbone, "small": student},
                           params={"full_finetune": {**SGD, "epochs": 3}})
    cell = dataclasses.replace(runtime, members=members)
    fits = []
    original = FullFinetune.fit
    monkeypatch.setattr(FullFinetune, "fit", lambda self, *a, **k: (fits.append(1), original(self, *a, **k))[1])
    teacher = members.get("full_finetune", 0, cell)
    state, logits = copy.deepcopy(teacher.state), {k: v.clone() for k, v in teacher.logits.items()}
    kd = make("distillation", student="small")
    params = {**ADAMW, "epochs": 2, "temperature": 3.0, "alpha": 0.7}
    predictor = kd.fit(tiny_backbone, tiny_task, params, seed=0, reporter=NullReporter(), runtime=cell)
    kd.fit(tiny_backbone, tiny_task, params, seed=1, reporter=NullReporter(), runtime=cell)
    assert len(fits) == 1  # the teacher trained once; both students reused its cached logits
    assert all(torch.equal(state[k], teacher.state[k]) for k in state)
    assert all(torch.equal(logits[k], teacher.logits[k]) for k in logits)
    info = predictor.info()
    assert info["student_parameters"] == sum(p.numel() for p in predictor.model.parameters())
    assert info["student_parameters"] < info["teacher_parameters"] == teacher.inference_parameters
    assert predictor.reused == teacher.costs and predictor.reused_seconds == teacher.train_seconds > 0
    assert isinstance(predictor.model.backbone, type(student)) and predictor.model.backbone.feature_dim == 8


def test_distillation_with_alpha_zero_is_fine_tuning_of_the_student(tiny_backbone, tiny_task,
                                                                     cell_runtime) -> None:
    params = {**SGD, "epochs": 2, "temperature": 4.0, "alpha": 0.0}
    kd = make("distillation").fit(tiny_backbone, tiny_task, params, seed=4, reporter=NullReporter(),
                                  runtime=cell_runtime)
    ft = make("full_finetune").fit(tiny_backbone, tiny_task, {**SGD, "epochs": 2}, seed=4,
                                   reporter=NullReporter(), runtime=cell_runtime)
    assert torch.allclose(kd.logits(tiny_task.test), ft.logits(tiny_task.test), atol=1e-5)


# --- ensembles ------------------------------------------------------------------------

def test_an_ensemble_of_identical_members_predicts_like_one_member(tiny_backbone, tiny_task,
                                                                   cell_runtime) -> None:
    member = cell_runtime.members.get("full_finetune", 0, cell_runtime)
    ensemble = EnsemblePredictor([(member, 1), (member, 1), (member, 1)], [member])
    for split in (tiny_task.val, tiny_task.test):
        one = member.logits_for(split)
        assert torch.equal(ensemble.logits(split).argmax(1), one.argmax(1))
        assert torch.allclose(torch.softmax(ensemble.logits(split).double(), 1), probabilities(one), atol=1e-6)


def test_a_soup_of_identical_weights_equals_those_weights(tiny_backbone, tiny_task, cell_runtime) -> None:
    member = cell_runtime.members.get("full_finetune", 0, cell_runtime)
    averaged = average_states([member.state] * 4)
    assert averaged.keys() == member.state.keys()
    assert all(torch.equal(averaged[k], member.state[k]) for k in averaged)
    template = new_classifier(tiny_backbone, tiny_task.num_classes, seed=9, runtime=cell_runtime)
    model = soup(template, [member.state] * 3, tiny_task.train, batch_size=8, runtime=cell_runtime)
    for name, p in model.named_parameters():
        assert torch.equal(p, member.state[name])


def test_soup_averages_weights() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    c = {"w": torch.tensor([2.0, 1.0]), "n": torch.tensor(9)}
    out = average_states([a, b, c])
    assert torch.allclose(out["w"], torch.tensor([2.0, 3.0])) and int(out["n"]) == 5


@pytest.mark.parametrize("seed", range(20))
def test_greedy_selection_never_scores_below_its_best_member_on_validation(seed: int) -> None:
    from tlbench.strategies.ensemble import score

    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (30,), generator=gen)
    probs = [torch.softmax(torch.randn(30, 4, generator=gen, dtype=torch.float64) * 2, 1) for _ in range(6)]
    counts = greedy_selection(probs, y, rounds=12)
    combined = sum(c * p for c, p in zip(counts, probs)) / sum(counts)
    assert score(combined, y) >= max(score(p, y) for p in probs)
    assert 1 <= sum(counts) <= 12


def test_a_soup_without_member_weights_is_one_line_naming_the_option(tiny_backbone, tiny_task, runtime) -> None:
    from tlbench.core.errors import ConfigError

    members = make_members(tiny_task, tiny_backbone)  # no strategy keeps weights: nothing to average
    ens = make("ensemble", members=["full_finetune"], size=2, method="uniform_soup")
    with pytest.raises(ConfigError) as err:
        ens.fit(tiny_backbone, tiny_task, ens.search_space(None, tiny_backbone), seed=0, reporter=NullReporter(),
                runtime=dataclasses.replace(runtime, members=members))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("strategy_options.ensemble.method: 'uniform_soup' averages weights")
    assert msg.endswith("allowed here: auto, average, greedy")


def test_ensemble_members_are_reused_and_its_cost_adds_theirs(tiny_backbone, tiny_task, runtime,
                                                              tmp_path) -> None:
    members = make_members(tiny_task, tiny_backbone, root=tmp_path, keep_weights=frozenset({"full_finetune"}),
                           options={"ensemble": {"members": ["full_finetune"], "size": 2}})
    cell = dataclasses.replace(runtime, members=members)
    ens = make("ensemble", members=["full_finetune"], size=2)
    params = ens.search_space(None, tiny_backbone)
    from tlbench.store.progress import evaluation_seed
    predictor = ens.fit(tiny_backbone, tiny_task, params, seed=evaluation_seed(0, 1),
                        reporter=NullReporter(), runtime=cell)
    library = [members.get("full_finetune", k, cell) for k in (2, 3)]  # ensemble 1 = models 2, 3
    assert predictor.reused_seconds == pytest.approx(sum(m.train_seconds for m in library))
    assert predictor.trainable_parameters == sum(m.trainable_parameters for m in library)
    info = predictor.info()
    assert info["ensemble_method"] in ("average", "greedy", "uniform_soup", "greedy_soup")
    assert set(info["ensemble_val_accuracy"]) == {"average", "greedy", "uniform_soup", "greedy_soup"}
    one = library[0].inference_parameters
    expected = one if info["ensemble_method"].endswith("soup") else one * len(
        [c for c in info["ensemble_members"].split(", ")])
    assert predictor.inference_parameters == expected
    assert len(list(tmp_path.rglob("*.pt"))) == 2  # the members were stored for reuse
    fresh = make_members(tiny_task, tiny_backbone, root=tmp_path, keep_weights=frozenset({"full_finetune"}))
    reloaded = fresh.get("full_finetune", 2, dataclasses.replace(runtime, members=fresh))
    assert all(torch.equal(reloaded.logits[k], library[0].logits[k]) for k in reloaded.logits)


def test_members_beyond_the_evaluation_seeds_train_side_by_side_in_fixed_blocks(tiny_backbone, tiny_task, runtime,
                                                                                tmp_path) -> None:
    """An ensemble's members beyond the evaluation seeds' models are trained on demand; where the
    member strategy's seeds train side by side they train in fixed blocks (from the first model
    beyond the seeds, ``seeds_together`` at a time, up to the last model the cell asks for), so a
    model's numbers do not depend on which run, worker or resumed process asks for it first."""
    params = {"full_finetune": {**SGD, "epochs": 3}}

    def server(root, together):
        members = make_members(tiny_task, tiny_backbone, root=root, params=params, seeds=2,
                               per_seed={"full_finetune": 3, "linear_probe": 3}, keep_weights={"full_finetune"})
        return members, dataclasses.replace(runtime, members=members, seeds_together=together)

    members, cell = server(tmp_path / "a", 3)
    # 2 seeds × 3 models: 0, 1 are the evaluation runs'; 2–4 and 5 beyond them; 6 is asked for by no run
    assert [members.block("full_finetune", k, cell) for k in range(7)] == [[0], [1], [2, 3, 4], [2, 3, 4],
                                                                           [2, 3, 4], [5], [6]]
    assert members.for_tuning().block("full_finetune", 3, cell) == [3]  # a trial's model: alone
    assert members.block("full_finetune", 3, dataclasses.replace(cell, seeds_together=1)) == [3]
    assert members.block("linear_probe", 3, cell) == [3]  # its seeds do not train side by side

    asked = members.get("full_finetune", 3, cell)
    assert len(list((tmp_path / "a").rglob("*.pt"))) == 3 and members.fit_seconds > 0  # the whole block, stored
    block = {k: members.get("full_finetune", k, cell) for k in (2, 3, 4)}
    assert block[3] is asked and all(m.train_seconds > 0 and m.state is not None for m in block.values())
    # each as if trained alone, up to floating-point reassociation
    single, alone = server(tmp_path / "b", 1)
    for k, member in block.items():
        one = single.get("full_finetune", k, alone)
        assert one.seed == member.seed and one.logits.keys() == member.logits.keys()
        assert all(torch.allclose(one.logits[f], member.logits[f], atol=1e-4) for f in one.logits)
    # the same numbers, bit for bit, when another model of the block is asked for first ...
    other, cell_c = server(tmp_path / "c", 3)
    other.get("full_finetune", 4, cell_c)
    for k, member in block.items():
        again = other.get("full_finetune", k, cell_c)
        assert all(torch.equal(again.logits[f], member.logits[f]) for f in member.logits)
    # ... and when a kill left only part of the block stored: the rest is trained with its block again
    lost = next(p for p in (tmp_path / "a").rglob("*.pt") if members.key("full_finetune", block[2].seed,
                                                                          params["full_finetune"]).endswith(p.stem))
    lost.unlink()
    resumed, cell_r = server(tmp_path / "a", 3)
    again = resumed.get("full_finetune", 2, cell_r)
    assert all(torch.equal(again.logits[f], block[2].logits[f]) for f in block[2].logits)
    assert len(list((tmp_path / "a").rglob("*.pt"))) == 3


def test_workers_sharing_the_models_folder_train_a_block_once(tiny_backbone, tiny_task, runtime, tmp_path) -> None:
    """Two workers (here two threads, each with its own server) ask at once for models of one block:
    one trains it under the block's lock, the other waits and reads what it stored."""
    import threading
    import time

    from tlbench.strategies.full_finetune import FullFinetune

    calls: list[int] = []

    class Counted(FullFinetune):
        vectorises = True

        def fit(self, *args, **kwargs):
            calls.append(kwargs["seed"])
            time.sleep(0.2)  # long enough for the other worker to be waiting
            return super().fit(*args, **kwargs)

    def server():
        members = make_members(tiny_task, tiny_backbone, root=tmp_path, params={"full_finetune": {**SGD, "epochs": 2}},
                               make=lambda name: Counted(epochs=(2, 3), batch_size=8), seeds=2,
                               per_seed={"full_finetune": 3})
        return members, dataclasses.replace(runtime, members=members, seeds_together=3)

    got, start = {}, threading.Barrier(2)

    def worker(index):
        members, cell = server()
        start.wait()
        got[index] = (members.get("full_finetune", index, cell), members)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 3  # one block of three, not two
    (three, first), (four, second) = got[3], got[4]
    for member, other in ((three, second), (four, first)):  # what each read equals what the other has
        theirs = other.get("full_finetune", member.index, dataclasses.replace(runtime, members=other,
                                                                                seeds_together=3))
        assert all(torch.equal(member.logits[f], theirs.logits[f]) for f in member.logits)
    assert len(calls) == 3 and len(list(tmp_path.rglob("*.pt"))) == 3


def test_a_block_lock_whose_holder_was_killed_is_free_at_once(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import threading

    from tlbench.run.model_server import ArtifactStore

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from pathlib import Path\nfrom tlbench.run.model_server import ArtifactStore\n"
                               f"with ArtifactStore(Path({str(tmp_path)!r})).building('cell/full_finetune/ab'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    taken = threading.Event()

    def take():
        with ArtifactStore(tmp_path).building("cell/full_finetune/ab"):
            taken.set()

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    assert not taken.wait(0.5)  # held
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert taken.wait(10)  # released by the kernel with its holder


@pytest.mark.parametrize("asked", [{"full_finetune": 0}, {"full_finetune": 2.5}, {"full_finetune": True},
                                   {"scratch": 2}])
def test_a_models_per_seed_that_is_not_a_count_of_required_models_is_one_line(asked) -> None:
    from tlbench.core.errors import ConfigError
    from tlbench.run.model_server import Reuse

    ensemble = make("ensemble", members=["full_finetune"], size=2)
    assert Reuse.of([ensemble, make("full_finetune")]).per_seed == {"full_finetune": 2}
    ensemble.models_per_seed = lambda: asked
    with pytest.raises(ConfigError) as err:
        Reuse.of([ensemble])
    assert "\n" not in str(err.value) and str(err.value).startswith("strategy 'ensemble': models_per_seed() gave")
    assert str(err.value).endswith("for each of requires() (full_finetune)")


def test_a_soup_of_different_members_re_estimates_batch_norm_statistics(tiny_backbone, tiny_task,
                                                                         cell_runtime) -> None:
    states = [cell_runtime.members.get("full_finetune", k, cell_runtime).state for k in (0, 1)]
    template = new_classifier(tiny_backbone, tiny_task.num_classes, seed=9, runtime=cell_runtime)
    model = soup(template, states, tiny_task.train, batch_size=8, runtime=cell_runtime)
    key = next(k for k in states[0] if k.endswith("running_mean"))
    averaged = average_states(states)
    assert not torch.allclose(model.state_dict()[key], averaged[key])  # not the members' average
    manual = copy.deepcopy(template)
    manual.load_state_dict(averaged)
    torch.optim.swa_utils.update_bn([tiny_task.train.x[:8], tiny_task.train.x[8:]], manual)
    assert torch.allclose(model.state_dict()[key], manual.state_dict()[key])
    for name, p in model.named_parameters():  # the weights are the plain average
        assert torch.equal(p, averaged[name])


class _Sleepy:
    """A member strategy that takes a known time to train (wraps full fine-tuning)."""

    name = "full_finetune"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def fit(self, *args, **kwargs):
        import time

        time.sleep(self.seconds)
        return STRATEGIES.get("full_finetune")(epochs=(2, 3), batch_size=8).fit(*args, **kwargs)


def test_models_trained_on_demand_count_once_and_not_as_own_time(tiny_backbone, tiny_task, runtime) -> None:
    import optuna

    from tlbench.run.evaluation import evaluate
    from tlbench.store.progress import evaluation_seed

    def make_strategy(name):
        if name == "full_finetune":
            return _Sleepy(0.3)
        return STRATEGIES.get(name)(epochs=(2, 3), batch_size=8, options=options.get(name))

    options = {"ensemble": {"members": ["full_finetune", "distillation"], "size": 1, "method": "average"}}
    members = make_members(tiny_task, tiny_backbone, make=make_strategy,
                           params={"full_finetune": {**SGD, "epochs": 2}})
    cell = dataclasses.replace(runtime, members=members)
    ens = make_strategy("ensemble")
    study = optuna.create_study(direction="maximize")
    [record] = evaluate(study, ens, tiny_backbone, tiny_task, ens.search_space(None, tiny_backbone),
                        seeds=[evaluation_seed(0, 0)], context=run_context(), runtime=cell)
    teacher = members.get("full_finetune", 0, cell)
    student = members.get("distillation", 0, cell)
    assert len(student.costs) == 2 and set(teacher.costs) < set(student.costs)
    # the teacher trained once and counts once, although both members reuse it
    assert record.costs.train_seconds == pytest.approx(record.costs.own_train_seconds + sum(student.costs.values()))
    assert teacher.train_seconds >= 0.3 and record.costs.own_train_seconds < 0.3
    assert record.costs.inference_seconds >= teacher.inference_seconds + student.inference_seconds
    # a tuning trial that needs the teacher trained on demand does not count it either
    from tlbench.run.tuning import make_study, tune
    from tlbench.suites.schema import SearchSpec

    fresh = make_members(tiny_task, tiny_backbone, make=make_strategy, params={"full_finetune": {**SGD, "epochs": 2}})
    kd = make_strategy("distillation")
    tuning = make_study("t", optuna.storages.InMemoryStorage(), budget=Budget(trials=1), seed=0, search=SearchSpec())
    tune(tuning, kd, tiny_backbone, tiny_task, budget=Budget(trials=1), suite_seed=0,
         runtime=dataclasses.replace(runtime, members=fresh))
    [trial] = tuning.trials
    assert fresh.fit_seconds >= 0.3 and trial.user_attrs["seconds"] < 0.3


def test_a_diverged_member_is_not_retrained_and_says_which(tiny_backbone, tiny_task, runtime) -> None:
    from tlbench.core.errors import NonFiniteLoss

    calls = []

    class Diverging:
        def fit(self, *args, **kwargs):
            calls.append(1)
            raise NonFiniteLoss(3, float("nan"))

    members = make_members(tiny_task, tiny_backbone, make=lambda name: Diverging(),
                           params={"full_finetune": {**SGD, "epochs": 2}})
    cell = dataclasses.replace(runtime, members=members)
    for _ in range(2):
        with pytest.raises(NonFiniteLoss, match="reused full_finetune model #0"):
            members.get("full_finetune", 0, cell)
    assert len(calls) == 1


def test_a_retuned_dependency_changes_the_dependents_identity(tiny_backbone, tiny_task) -> None:
    from tlbench.run.tuned import with_dependencies

    kd = make("distillation")
    params = {**SGD, "epochs": 2, "temperature": 2.0, "alpha": 0.5}
    digests = set()
    for lr in (0.05, 0.01):
        members = make_members(tiny_task, tiny_backbone, params={"full_finetune": {**SGD, "lr": lr, "epochs": 2}})
        full = with_dependencies(params, kd, members)
        digests.add(full["reuses"])
        assert members.key("distillation", 1, full) != members.key("distillation", 1, params)
    assert len(digests) == 2
    assert with_dependencies(params, make("full_finetune"), members) == params  # reuses nothing
