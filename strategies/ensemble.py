"""Ensembles of models the harness already trained: averaged predictions, greedy
selection, and weight averaging ("model soups")."""

from __future__ import annotations

import copy
from typing import Any, Literal, Sequence

import optuna
import torch
from pydantic import Field

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen
from tlbench.data.reader import Reader
from tlbench.data.splits import Split, Task
from tlbench.strategies.base import ModelPredictor, Predictor, Strategy, require_members
from tlbench.strategies.full_finetune import new_classifier
from tlbench.training.backbones import Backbone, Classifier
from tlbench.training.context import Member, Runtime
from tlbench.training.loop import Reporter, accuracy, steps_per_epoch

METHODS = ("average", "greedy", "uniform_soup", "greedy_soup")


class EnsembleOptions(Frozen):
    #: Member strategies, run in the same cell before the ensemble.
    members: list[str] = Field(default_factory=lambda: ["full_finetune"], min_length=1)
    #: Models per member strategy in each ensemble.
    size: int = Field(3, ge=1, le=64)
    #: How members are combined; ``auto`` picks the best on validation data.
    method: Literal["auto", "average", "greedy", "uniform_soup", "greedy_soup"] = "auto"
    #: Rounds of greedy forward selection (default: twice the number of models).
    rounds: int | None = Field(None, ge=1)


Score = tuple[float, float]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), 1)


def score(probs: torch.Tensor, y: torch.Tensor) -> Score:
    """(accuracy, −NLL): accuracy first, the likelihood breaks ties on small validation sets."""
    nll = -torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean()
    return accuracy(probs, y), -float(nll)


def as_logits(probs: torch.Tensor) -> torch.Tensor:
    """Log-probabilities: logits whose softmax is ``probs``."""
    return torch.log(probs.clamp_min(1e-30)).float()


def greedy_selection(val_probs: Sequence[torch.Tensor], y: torch.Tensor, rounds: int) -> list[int]:
    """Caruana et al. (2004), "Ensemble Selection from Libraries of Models": start from the
    best single model, then repeatedly add (with replacement) the model that most improves
    the averaged prediction on validation; return how often each model was picked in the
    best ensemble seen. It never scores below the best single model on validation."""
    n = len(val_probs)
    first = max(range(n), key=lambda i: score(val_probs[i], y))
    counts, total = [0] * n, val_probs[first].clone()
    counts[first] = 1
    best, best_counts = score(total, y), list(counts)
    for _ in range(rounds - 1):
        k = sum(counts)
        pick = max(range(n), key=lambda i: score((total + val_probs[i]) / (k + 1), y))
        counts[pick] += 1
        total += val_probs[pick]
        current = score(total / (k + 1), y)
        if current > best:
            best, best_counts = current, list(counts)
    return best_counts


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of state dicts (a running mean, so identical states average to
    exactly themselves); integer buffers such as batch counts come from the first."""
    out = {k: v.clone() for k, v in states[0].items()}
    for n, state in enumerate(states[1:], start=2):
        for k, v in state.items():
            if v.is_floating_point():
                out[k] += (v - out[k]) / n
    return out


def compatible(template: Classifier, states: Sequence[dict[str, torch.Tensor] | None]) -> bool:
    """Whether every state is a weight set of ``template``'s architecture."""
    shapes = {k: v.shape for k, v in template.state_dict().items()}
    return all(s is not None and {k: v.shape for k, v in s.items()} == shapes for s in states)


def soup(template: Classifier, states: Sequence[dict[str, torch.Tensor]], train: Split, *,
         batch_size: int, runtime: Runtime) -> Classifier:
    """Wortsman et al. (2022), "Model soups": a network with the averaged weights. With more
    than one ingredient, batch-norm statistics are re-estimated on the train split (as in
    SWA), since averaged weights do not match averaged statistics."""
    model = copy.deepcopy(template)
    model.load_state_dict(states[0] if len(states) == 1 else average_states(states))
    if len(states) > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        order = torch.arange(len(train))  # the loop's batching: no single-example final batch
        n = steps_per_epoch(len(train), batch_size)
        read = Reader(train.x, device=runtime.device, loading=runtime.execution.loading)
        batches = read([order[b * batch_size:(b + 1) * batch_size] for b in range(n)])
        with torch.no_grad():
            torch.optim.swa_utils.update_bn(batches, model)
    return model.eval()


class EnsemblePredictor(Predictor):
    """Averages members' predicted probabilities (weighted by how often each was selected);
    scores the splits the members were scored on."""

    def __init__(self, chosen: list[tuple[Member, int]], library: list[Member]) -> None:
        self.chosen = chosen
        self.library = library

    def logits(self, split: Split) -> torch.Tensor:
        total = sum(count * probabilities(m.logits_for(split)) for m, count in self.chosen)
        return as_logits(total / sum(count for _, count in self.chosen))

    @property
    def trainable_parameters(self) -> int:
        return sum(m.trainable_parameters for m in self.library)

    @property
    def inference_parameters(self) -> int:
        return sum(m.inference_parameters for m, _ in self.chosen)

    def inference_seconds(self, split: Split, *, measured: float) -> float:
        """The members' measured passes over the test split (this class only averages their
        stored predictions)."""
        return measured + sum(m.inference_seconds for m, _ in self.chosen)


class SoupPredictor(ModelPredictor):
    """A soup: one network, plus the members whose weights it averages."""

    def __init__(self, model: Classifier, ingredients: list[Member], library: list[Member], *,
                 runtime: Runtime) -> None:
        super().__init__(model, device=runtime.device, trainable=sum(m.trainable_parameters for m in library),
                         execution=runtime.execution)
        self.chosen = [(m, 1) for m in ingredients]


class Ensemble(Strategy):
    """An ensemble of models the harness already trained in the same cell.

    Ensemble *j* draws ``size`` models of each member strategy — evaluation seeds
    ``j·size … j·size + size − 1`` — reusing the stored ones and training (and storing) any
    beyond the suite's seeds with the member's tuned configuration (side by side, in fixed
    blocks, where the member's seeds train so: :meth:`tlbench.run.model_server.Members.block`),
    so ensembles of different seeds share no model and their spread is honest. Combinations, chosen on
    validation data (``method: auto``) or fixed:

    * ``average`` — the mean of all members' predicted probabilities;
    * ``greedy`` — greedy forward selection with replacement (Caruana et al. 2004);
    * ``uniform_soup`` / ``greedy_soup`` — weight averaging of members that share an
      architecture (Wortsman et al. 2022, "Model soups"): all of them, or greedily those that
      do not lower validation accuracy, best first.

    Nothing is searched, so it gets no tuning trials. Its training cost is the sum of its
    members' plus its own; its inference cost is that of the models it runs.
    """

    name = "ensemble"
    description = "probability averaging / greedy selection / model soups over already-trained models"
    Options = EnsembleOptions
    tunable = False

    def requires(self) -> list[str]:
        return list(self.options.members)

    def models_per_seed(self) -> dict[str, int]:
        return {name: self.options.size for name in self.options.members}

    def requires_weights(self) -> list[str]:
        return list(self.options.members) if self.options.method in ("auto", *METHODS[2:]) else []

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        o = self.options
        return {"members": list(o.members), "size": o.size, "method": o.method,
                "rounds": o.rounds or 2 * o.size * len(o.members)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        members = require_members(runtime, self.name)
        j, size = members.index_of(seed), params["size"]
        library = [members.get(s, j * size + i, runtime) for s in params["members"] for i in range(size)]
        y = task.val.y
        val = [probabilities(m.logits_for(task.val)) for m in library]
        candidates: dict[str, Predictor] = {
            "average": EnsemblePredictor([(m, 1) for m in library], library),
            "greedy": EnsemblePredictor([(m, c) for m, c in zip(library, greedy_selection(val, y, params["rounds"]))
                                         if c], library),
        }
        template = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        if compatible(template, [m.state for m in library]):
            candidates.update(self._soups(template, library, val, task, runtime))
        elif params["method"].endswith("soup"):
            raise ConfigError(f"strategy_options.ensemble.method: {params['method']!r} averages weights, which "
                              f"needs members of one architecture with stored weights; "
                              f"{', '.join(params['members'])} do not provide them here; allowed here: auto, "
                              f"average, greedy")
        scores = {name: score(probabilities(p.logits(task.val)), y) for name, p in candidates.items()}
        if params["method"] == "auto":  # best on validation; ties go to the cheaper prediction
            method = max(candidates, key=lambda n: (scores[n], -candidates[n].inference_parameters))
        else:
            method = params["method"]
        chosen = candidates[method]
        reporter.report(0, scores[method][0])  # one "epoch": the chosen combination's val accuracy
        reused = {k: v for m in library for k, v in m.costs.items()}  # a shared teacher counts once
        picked = chosen.chosen  # type: ignore[attr-defined]
        return chosen.annotate(
            reused=reused, ensemble_method=method, ensemble_size=len(library),
            ensemble_members=", ".join(f"{m.label}×{c}" if c > 1 else m.label for m, c in picked),
            ensemble_val_accuracy={n: s[0] for n, s in scores.items()})

    def _soups(self, template: Classifier, library: list[Member], val: list[torch.Tensor], task: Task,
               runtime: Runtime) -> dict[str, Predictor]:
        """The uniform and greedy soups; ``val``: each member's validation probabilities."""
        def make(ingredients: list[Member]) -> SoupPredictor:
            model = soup(template, [m.state for m in ingredients], task.train,
                         batch_size=self.batch_size, runtime=runtime)
            return SoupPredictor(model, ingredients, library, runtime=runtime)

        def val_accuracy(p: SoupPredictor) -> float:
            return accuracy(p.logits(task.val), task.val.y)

        order = sorted(range(len(library)), key=lambda i: score(val[i], task.val.y), reverse=True)
        ranked = [library[i] for i in order]
        greedy, best = [ranked[0]], make([ranked[0]])
        best_accuracy = val_accuracy(best)
        for m in ranked[1:]:  # Wortsman et al.'s recipe: keep an ingredient unless accuracy drops
            trial = make([*greedy, m])
            if (acc := val_accuracy(trial)) >= best_accuracy:
                greedy, best, best_accuracy = [*greedy, m], trial, acc
        uniform = best if len(greedy) == len(library) else make(library)  # the same soup: build it once
        return {"uniform_soup": uniform, "greedy_soup": best}
