"""The Strategy contract and the predictors that strategies return."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import optuna
import torch
from torch import nn

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, validate_block
from tlbench.data.splits import Split, Task
from tlbench.store.records import RunRecord
from tlbench.training.backbones import Backbone
from tlbench.training.context import ModelServer, Runtime
from tlbench.training.loop import Execution, Reporter, predict_logits


class Predictor(ABC):
    """What a fitted strategy returns: something that scores splits."""

    @abstractmethod
    def logits(self, split: Split) -> torch.Tensor:
        """Logits (N, C) on the CPU for every example of ``split``."""

    @property
    @abstractmethod
    def trainable_parameters(self) -> int:
        """How many parameters the strategy trained."""

    @property
    @abstractmethod
    def inference_parameters(self) -> int:
        """How many parameters one prediction runs through (K models' for an ensemble)."""

    #: Training seconds of the models this predictor reuses (a teacher, ensemble members),
    #: by model key (each model once), added to the run's own time in its record.
    reused: dict[str, float] = {}

    @property
    def reused_seconds(self) -> float:
        return sum(self.reused.values())

    def inference_seconds(self, split: Split, *, measured: float) -> float:
        """Seconds one prediction pass over ``split`` costs; ``measured`` is how long
        :meth:`logits` just took, right unless the predictor serves cached results."""
        return measured

    def state(self) -> dict[str, torch.Tensor] | None:
        """The weights of an equivalent ``Classifier(backbone, head)``, for weight averaging;
        None when the prediction is not one such network."""
        return None

    def info(self) -> dict[str, Any]:
        """Strategy-specific facts for the run's record, kept apart from its metrics in
        ``RunRecord.strategy_info`` (e.g. the teacher's size)."""
        return dict(getattr(self, "_info", {}))

    @property
    def post_fit_choices(self) -> dict[str, Any]:
        """Hyperparameters the strategy chose after training, on validation data (:meth:`choose`)."""
        return dict(getattr(self, "_post_fit_choices", {}))

    def choose(self, **values: Any) -> "Predictor":
        """Records hyperparameters chosen after the last epoch on validation data (WiSE-FT's mixing
        coefficient, SWA's epochs, a softmax temperature); returns self. They are stored with the run
        (``RunRecord.chosen``) and shown beside the tuned ones in the report's "Selected
        hyperparameters". Report the validation accuracy they give with :func:`tlbench.report_final`
        so that tuning maximises it."""
        self._post_fit_choices = {**self.post_fit_choices, **values}
        return self

    def annotate(self, *, reused: dict[str, float] | None = None, **info: Any) -> "Predictor":
        """Sets :attr:`reused` and adds ``info``; returns self. A fact may not take the name
        of a record field (it would read as a metric in the runs frame)."""
        taken = sorted(set(info) & {*RunRecord.columns(), "strategy_info"})
        if taken:
            raise TypeError(f"{type(self).__name__}.annotate: {', '.join(taken)} would shadow run record "
                            f"field(s) of the same name; choose another name")
        self.reused = dict(reused or {})
        self._info = {**self.info(), **info}
        return self


class ModelPredictor(Predictor):
    """Predicts with a whole trained network.

    ``plain`` is False while the network holds modules the backbone does not have (adapters,
    prompts, unmerged low-rank updates): its weights then do not load into
    ``Classifier(backbone, head)``, so :meth:`state` is None (no weight averaging)."""

    plain: bool = True

    def __init__(self, model: nn.Module, *, device: torch.device, trainable: int | Callable[[], int],
                 execution: Execution = Execution()) -> None:
        self.model = model
        self.device = device
        self._trainable = trainable
        self.execution = execution

    def logits(self, split: Split) -> torch.Tensor:
        return predict_logits(self.model, split.x, device=self.device, execution=self.execution)

    @property
    def trainable_parameters(self) -> int:
        return self._trainable() if callable(self._trainable) else self._trainable

    @property
    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def state(self) -> dict[str, torch.Tensor] | None:
        return cpu_state(self.model) if self.plain else None


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (what artifacts and soups keep)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def require_members(runtime: Runtime, strategy: str) -> ModelServer:
    """The cell's model server; strategies that reuse other strategies' models need it."""
    if runtime.members is None:
        raise ConfigError(f"strategy {strategy!r} reuses models other strategies trained in the same "
                          f"cell; run it from a suite (tlbench run), not on its own")
    return runtime.members


class NoOptions(Frozen):
    """A strategy without suite-level options."""


class Strategy(ABC):
    """A way of adapting a pretrained backbone to a task.

    ``__init__`` stores options only (scikit-learn's rule); ``search_space`` declares the
    hyperparameters with Optuna's suggest API; ``fit`` trains and returns a predictor. The
    backbone passed to ``fit`` is shared with other strategies and must not be mutated.

    Args:
        epochs: the (min, max) epoch range searched, the same for every strategy of a suite.
        batch_size: the mini-batch size, the same for every strategy of a suite.
        options: the strategy's own settings from the suite's ``strategy_options`` block,
            validated against ``Options``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[Frozen]] = NoOptions
    #: False for strategies with nothing to search (an ensemble chooses on validation data
    #: inside ``fit``): they get no tuning trials and run with ``search_space``'s output.
    tunable: ClassVar[bool] = True
    #: True for strategies that work on a token sequence (visual prompts): they run on ViT-family
    #: backbones only, refuse others in one line, and are contract-checked on a tiny ViT.
    needs_tokens: ClassVar[bool] = False
    #: True when several seeds' runs of one configuration may train side by side as one
    #: vectorised model (:mod:`tlbench.training.vectorised`): ``fit`` calls the training loop
    #: (``finetune`` or ``fit_epochs``) exactly once and returns without using what it trained
    #: (the training happens after ``fit`` returns), and its hooks are stackable. The runs are
    #: those it would train alone, up to floating-point reassociation; a run that cannot stack
    #: (image files, dropout, a hook that is not stackable) trains alone.
    vectorises: ClassVar[bool] = False

    def __init__(self, *, epochs: tuple[int, int] = (5, 40), batch_size: int = 32,
                 options: Frozen | dict[str, Any] | None = None) -> None:
        if not (len(epochs) == 2 and 0 < epochs[0] <= epochs[1]):
            raise ConfigError(f"{type(self).__name__}: epochs must be (min, max) with 0 < min <= max, "
                              f"got {tuple(epochs)}")
        self.epochs = tuple(epochs)
        self.batch_size = batch_size
        name = getattr(type(self), "name", type(self).__name__)
        self.options = validate_block(self.Options, options, where=f"strategy_options.{name}")

    def requires(self) -> list[str]:
        """Strategies whose trained models this one reuses in the same cell (they run first)."""
        return []

    def extra_backbones(self, backbone: str) -> list[str]:
        """Suite backbones this strategy uses in a cell of ``backbone`` besides it (a
        distillation's student); raises ValueError when its options cannot say."""
        return []

    def requires_weights(self) -> list[str]:
        """Those of :meth:`requires` whose weights (not only predictions) are reused."""
        return []

    def models_per_seed(self) -> dict[str, int]:
        """How many models of each of :meth:`requires` one evaluation run asks for (model *k* for
        evaluation seed *k* by default; an ensemble of three: three). Models beyond the evaluation
        seeds are trained on demand, side by side in fixed blocks where the strategy allows
        (:meth:`tlbench.run.model_server.Members.get`); this says where those blocks end."""
        return {name: 1 for name in self.requires()}

    def suggest_epochs(self, trial: optuna.Trial, name: str = "epochs") -> int:
        """An epoch count in the suite's shared range (fixed when the range is one value)."""
        low, high = self.epochs
        return trial.suggest_int(name, low, high) if low < high else low

    @abstractmethod
    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        """Suggests one configuration for ``backbone``; returns the params ``fit`` consumes."""

    @abstractmethod
    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        """Trains on ``task.train``, reports ``task.val`` accuracy each epoch.

        ``runtime.members`` serves models other strategies trained in the same cell."""


def stacks_seeds(strategy: Strategy) -> bool:
    """Whether ``strategy``'s seeds may train side by side (:attr:`Strategy.vectorises`): declared
    by its class or a base whose ``fit`` it keeps — a subclass that overrides ``fit`` (it may use the
    trained model before returning) must declare it again itself."""
    mro = type(strategy).__mro__
    declared = next((k for k in mro if "vectorises" in vars(k)), Strategy)
    if not declared.vectorises:
        return False
    fitted = next((k for k in mro if "fit" in vars(k)), Strategy)
    return issubclass(declared, fitted)
