"""Scoring a suite's backbones before fine-tuning: the run's share of model selection.

For each task × backbone of a suite with a ``model_selection:`` block, :class:`ScoreWork`
computes the features of the train and validation splits through the runtime's feature cache
(the same entries the linear probe reads, so no second pass), the source-class probabilities
from the backbone's own source head when it has one, and every scorer on them; each scorer is
one unit of work claimed in the store (:mod:`tlbench.store.scores`), so scoring is resumable,
kill-safe and shared by several workers like the cells' runs. The test split is never read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tlbench.core.codeversion import features_version, scoped_version
from tlbench.core.phases import PHASES
from tlbench.core.registry import BUILTIN
from tlbench.data.splits import Task
from tlbench.run.plan import Plan
from tlbench.run.tuning import Step
from tlbench.selection.inputs import ScoreInputs, make_inputs
from tlbench.selection.scorers import SCORERS, Scorer, run_scorer
from tlbench.store import optuna_internals
from tlbench.store.claims import Heartbeat, claim, recover_orphans, release_claim
from tlbench.store.scores import ScoreRecord, score_study_name
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime


def scorer_names(plan: Plan) -> list[str]:
    """The scorers a suite runs: its list, else every registered one."""
    spec = plan.suite.model_selection
    if spec is None:
        return []
    return list(spec.scorers) if spec.scorers is not None else SCORERS.names()


def scorer_code(name: str) -> str:
    """What a scorer's values depend on: its code (a plugin's digest, or the selection modules)
    and the code that computes the features."""
    source = SCORERS.source(name)
    if source is not None:
        return f"{source}|{features_version()}"
    return f"{scoped_version(('tlbench.selection.scorers',))}|{features_version()}"


def feature_inputs(backbone: Backbone, task: Task, runtime: Runtime, *, where: str) -> tuple[ScoreInputs, float]:
    """A backbone's score inputs on ``task`` (train and validation only) and the seconds of the
    feature passes they rely on (as computed, cached or not)."""
    with runtime.features.charge() as charge:
        train = runtime.features.get(backbone, task.train.x, task.train.fingerprint, device=runtime.device,
                                     execution=runtime.execution).detach().cpu()
        val = runtime.features.get(backbone, task.val.x, task.val.fingerprint, device=runtime.device,
                                   execution=runtime.execution).detach().cpu()
    head = backbone.source_head
    probs = head.probabilities(train.float()).numpy() if head is not None else None
    inputs = make_inputs(train.double().numpy(), task.train.y.numpy(), num_classes=task.num_classes,
                         source_probs=probs, val_features=val.double().numpy(), val_labels=task.val.y.numpy(),
                         parameters=sum(p.numel() for p in backbone.parameters()),
                         source_accuracy=head.accuracy if head is not None else None, where=where)
    return inputs, charge.pass_seconds or 0.0


def _same_unit(names: list[str], codes: dict[str, str]) -> Any:
    return lambda t: t.user_attrs.get("scorers") == names and t.user_attrs.get("codes") == codes


_CONTROLLER: Any = None


def single_threaded() -> Any:
    """A context in which BLAS and OpenMP run on one thread: the scorers' matrices are small, and
    after the training loop torch's OpenMP threads still spin on the cores, which made numpy's
    and scikit-learn's threads wait (N-LEEP's mixture, side by side after torch work: 1.0 s against
    0.05 s in one measurement, 0.066 s against 0.029 s in another; all 13 scorers 0.115 s against
    0.039 s)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


class ScoreWork:
    """One task × backbone's scores: each :meth:`step` scores the scorers the pair still lacks as
    one claimed unit (``ran``), waits while another worker holds some of them (``wait``), or is
    ``done``."""

    def __init__(self, plan: Plan, task: str, backbone_name: str, backbone: Backbone, *, storage: BaseStorage,
                 runtime: Runtime, codes: dict[str, str] | None = None, log: Any = print) -> None:
        self.plan, self.task, self.backbone_name, self.backbone = plan, task, backbone_name, backbone
        self.storage, self.runtime, self.log = storage, runtime, log
        self.scorers = scorer_names(plan)
        # the scorers' code versions, computed once per plan by score_works (they hash module files)
        self.codes = codes if codes is not None else {name: scorer_code(name) for name in self.scorers}
        self.outcome: str | None = None
        self._study: optuna.Study | None = None
        self._inputs: tuple[ScoreInputs, float] | None = None

    @property
    def label(self) -> str:
        return f"{self.task} / {self.backbone_name} / scores"

    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.create_study(
                study_name=score_study_name(self.plan.suite.name, self.task, self.backbone_name),
                storage=self.storage, direction="maximize", load_if_exists=True)
            spec = self.plan.suite.model_selection
            truth = list(spec.ground_truth) if spec is not None and spec.ground_truth else []
            if self._study.user_attrs.get("ground_truth") != truth:
                self._study.set_user_attr("ground_truth", truth)  # what the report ranks against
            if self._study.user_attrs.get("scorers") != self.scorers:
                self._study.set_user_attr("scorers", self.scorers)  # and which scorers it shows
        return self._study

    def step(self) -> Step:
        """Scores, as one claimed unit, every scorer of the pair that no finished unit holds (with
        the scorer's current code); waits while another worker holds some of them."""
        study = self.study()
        recover_orphans(study)
        done: set[tuple[str, str]] = set()
        held: set[str] = set()
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.COMPLETE:
                done |= {(r["scorer"], r["code_version"]) for r in t.user_attrs.get("scores", [])}
            elif t.state == TrialState.RUNNING:
                held |= {n for n in t.user_attrs.get("scorers", []) if (t.user_attrs.get("codes") or {}).get(n)
                         == self.codes.get(n)}
        todo = [n for n in self.scorers if (n, self.codes[n]) not in done]
        if not todo:
            self.outcome = "done"
            return "done"
        if set(todo) & held:
            return "wait"
        self._score(study, todo)
        return "ran"

    def _score(self, study: optuna.Study, names: list[str]) -> None:
        codes = {n: self.codes[n] for n in names}
        frozen = claim(study, {"scorers": names, "codes": codes}, _same_unit(names, codes))
        if frozen is None:
            return
        try:
            with Heartbeat.of(study, frozen), PHASES("scores"):
                self._run_claimed(study, frozen, names)
        except (UpdateFinishedTrialError, ValueError) as err:
            if not optuna_internals.finished_elsewhere(study, frozen, err):
                release_claim(study, frozen, err)
                raise
        except BaseException as err:  # the unit is free again for the next claim
            release_claim(study, frozen, err)
            raise

    def _run_claimed(self, study: optuna.Study, trial: FrozenTrial, names: list[str]) -> None:
        where = f"{self.plan.suite.path}: model_selection ({self.task} / {self.backbone_name})"
        task = self.plan.task_for(self.task, self.backbone_name)
        if self._inputs is None:
            self._inputs = feature_inputs(self.backbone, task, self.runtime, where=where)
        inputs, feature_seconds = self._inputs
        spec = self.plan.suite.model_selection
        records = []
        with single_threaded():
            for name in names:
                started = dt.datetime.now(dt.UTC).isoformat()
                scorer: Scorer = SCORERS.get(name)()
                repeats = spec.seeds if (spec is not None and scorer.randomized) else 1
                seeds = [self.plan.suite.seed * 1000003 + k for k in range(repeats)]
                values, seconds, skipped = [], [], ""
                for seed in seeds:
                    score = run_scorer(scorer, inputs, seed=seed, where=where)
                    if score.value is None:
                        skipped = score.skipped
                        break
                    values.append(score.value)
                    seconds.append(score.seconds)
                records.append(ScoreRecord(
                    suite=self.plan.suite.name, task=self.task, backbone=self.backbone_name, scorer=name,
                    scorer_origin=SCORERS.origin(name) if name in SCORERS else BUILTIN,
                    higher_is_better=scorer.higher_is_better, definition=scorer.definition,
                    seeds=seeds if values else [], values=values, seconds=seconds, skipped=skipped,
                    feature_seconds=feature_seconds, n_train=len(inputs.labels),
                    n_val=0 if inputs.val_labels is None else len(inputs.val_labels),
                    num_classes=inputs.num_classes, feature_dim=inputs.features.shape[1],
                    split_fingerprint=task.fingerprint, weights_id=self.backbone.weights_id,
                    code_version=self.codes[name], started_at=started))
        storage, trial_id = optuna_internals.storage_of(study), optuna_internals.trial_id(trial)
        storage.set_trial_user_attr(trial_id, "scores", [r.model_dump() for r in records])
        study.tell(trial.number, float(len(records)))
        shown = ", ".join(f"{r.scorer} {np.mean(r.values):.4g}" if r.values else f"{r.scorer} skipped ({r.skipped})"
                          for r in records)
        self.log(f"{self.task} / {self.backbone_name}: {shown}")


def score_works(plan: Plan, backbones: dict[str, Backbone], *, storage: BaseStorage, runtime: Runtime,
                log: Any = print) -> list[ScoreWork]:
    """The scoring work of a plan: one per task × backbone of its cells (none without a
    ``model_selection:`` block)."""
    if plan.suite.model_selection is None:
        return []
    pairs = sorted({(c.task, c.backbone) for c in plan.cells}, key=lambda p: (list(plan.suite.tasks).index(p[0]), p[1]))
    codes = {name: scorer_code(name) for name in scorer_names(plan)}
    return [ScoreWork(plan, t, b, backbones[b], storage=storage, runtime=runtime, codes=codes, log=log)
            for t, b in pairs]
