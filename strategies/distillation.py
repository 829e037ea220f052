"""Knowledge distillation into a smaller student."""

from __future__ import annotations

from typing import Any

import optuna
import torch
from pydantic import Field

from tlbench.core.frozen import Frozen
from tlbench.data.splits import Split, Task
from tlbench.strategies.base import ModelPredictor, Predictor, Strategy, require_members
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import Distillation, suggest_optimizer
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime, splits_of
from tlbench.training.loop import Reporter, accuracy


class DistillationOptions(Frozen):
    #: The student backbone: one suite backbone name for every cell, or a mapping from the
    #: cell's (teacher's) backbone to its student; None distils into the same architecture.
    student: str | dict[str, str] | None = None
    #: The strategy whose trained model in the same cell is the teacher.
    teacher: str = Field("full_finetune", min_length=1)


class KnowledgeDistillation(Strategy):
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network"): a **student** backbone (pretrained, fine-tuned with a new head) learns
    from the **teacher** — the cell's backbone as trained by the ``teacher`` strategy
    (``full_finetune`` by default; evaluation seed *k* distils teacher model *k*, tuning
    trials distil model 0) — minimising
    ``(1 − α)·CE(y, z_s) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``; T in [1, 10] (log) and
    α in [0, 1] are searched with the optimizer. The teacher's logits on the train split come
    from its stored run (computed once); the teacher is never updated. The record carries the
    teacher's and student's sizes and the teacher's training time is part of the cost."""

    name = "distillation"
    description = "a smaller student learns from the fine-tuned teacher's soft targets (Hinton et al.)"
    vectorises = True  # fit calls the training loop once and returns what it trains
    Options = DistillationOptions

    def requires(self) -> list[str]:
        return [self.options.teacher]

    def student_name(self, backbone: str) -> str | None:
        """The student of a cell whose (teacher's) backbone is ``backbone``; None: itself."""
        student = self.options.student
        if isinstance(student, dict):
            if backbone not in student:
                raise ValueError(f"student: no student for backbone {backbone!r}; map each "
                                 f"teacher backbone to a student (given: {', '.join(student)})")
            return student[backbone]
        return student

    def extra_backbones(self, backbone: str) -> list[str]:
        name = self.student_name(backbone)
        return [name] if name is not None else []

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "temperature": trial.suggest_float("temperature", 1.0, 10.0, log=True),
                "alpha": trial.suggest_float("alpha", 0.0, 1.0)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        members = require_members(runtime, self.name)
        teacher = members.get(self.options.teacher, members.index_of(seed), runtime)
        name = self.student_name(members.backbone_name)
        student = backbone if name is None else members.get_backbone(name)
        # the student reads the images as its own weights expect; positions are the cell's,
        # so the teacher's logits (on the cell's task) line up example by example
        own = task if name is None else members.task_of(name)
        model = new_classifier(student, task.num_classes, seed=seed, runtime=runtime)
        loss = Distillation(teacher.logits_for(task.train).to(runtime.device),
                            temperature=params["temperature"], alpha=params["alpha"])
        predictor = finetune(model, own, params, seed=seed, reporter=reporter, runtime=runtime,
                             batch_size=self.batch_size, criterion=loss)
        if own is not task:
            predictor = StudentPredictor(predictor, own=own, cell=task)
        return predictor.annotate(
            reused=teacher.costs, teacher=teacher.label,
            student_backbone=name or members.backbone_name,
            student_parameters=predictor.inference_parameters,
            teacher_parameters=teacher.inference_parameters,
            teacher_test_accuracy=accuracy(teacher.logits_for(task.test), task.test.y))


class StudentPredictor(ModelPredictor):
    """A student whose backbone reads the cell's images preprocessed its own way: asked for
    a split of the cell's task, it predicts on the same examples of its own task."""

    def __init__(self, trained: ModelPredictor, *, own: Task, cell: Task) -> None:
        super().__init__(trained.model, device=trained.device, trainable=lambda: trained.trainable_parameters,
                         execution=trained.execution)
        self.own = {c.fingerprint: o for c, o in zip(splits_of(cell), splits_of(own))}

    def logits(self, split: Split) -> torch.Tensor:
        return super().logits(self.own.get(split.fingerprint, split))
