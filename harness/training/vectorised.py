"""Seeds side by side: several runs of one configuration trained as one vectorised model.

An evaluation trains the same configuration on several seeds. On small networks a training step
costs mostly per-operation overhead, so K copies stacked along a leading dimension
(``torch.func.functional_call`` under ``torch.vmap``) do K runs' work in about one run's number of
operations (where arithmetic, not overhead, bounds a step — the quick suite's CNNs on 2 CPU cores —
the gain is smaller: 1.5–2.1×, ``benchmarks/test_bench_vectorised.py``). Each run keeps its own
initialisation and its own data order; its loss is its own mean and the step sums the runs'
losses, so each run's gradients — and, with element-wise optimizers (SGD, AdamW), its updates —
are those it would get alone, up to floating-point reassociation.

How it is driven: inside :func:`side_by_side`, :func:`tlbench.training.loop.fit_epochs` does not
train but registers a :class:`Job` and returns; :meth:`SideBySide.train` then trains every job
together (or, when they cannot be stacked, one after another exactly as ``fit_epochs`` would have,
from the random state it had when it was called). A strategy may be run this way only when its
``fit`` returns without using what ``fit_epochs`` trained (``Strategy.vectorises``); a second
``fit_epochs`` in one ``fit`` is refused.

Runs of one configuration (a cell's seeds) share their optimizer's settings: one optimizer step
updates the stacked parameters. Runs of different configurations (tuning trials,
``side_by_side(one_configuration=False)``) keep their own optimizers and schedules: each run's
parameters are views of its slice of the stacked ones, and after the stacked backward pass each
run's optimizer steps its own slice with its own learning rate, weight decay and state — the
update it would make alone. Such runs may differ in epochs (a run leaves the stack when its epochs
end, or when it is pruned or diverges, and the others are re-stacked); they are grouped by what
must be equal to share one forward pass (batch size, architecture, module settings, hooks).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from tlbench.core.errors import NonFiniteLoss
from tlbench.training.deferral import _ACTIVE, Job
from tlbench.training.loop import (
    Batch,
    cross_entropy,
    epoch_batches,
    fit_epochs,
    forward_flops,
    per_epoch,
    report_epoch,
    spend,
    update,
)

#: Module types whose forward draws random numbers: a stacked model would draw them differently
#: from K models alone, so networks that hold an active one are trained one seed at a time.
_RANDOM = ("Dropout", "DropPath", "StochasticDepth", "DropBlock")


@dataclass
class Slot:
    """The run one ``fit`` registered, if any."""

    job: Job | None = None


class SideBySide:
    """Collects the ``fit_epochs`` calls of several ``fit``s, then trains them together.

    ``one_configuration``: the runs are seeds of one configuration (one optimizer step for all);
    otherwise each run steps its own optimizer and the runs are grouped by what they share."""

    def __init__(self, *, one_configuration: bool = True) -> None:
        self.jobs: list[Job] = []
        self.one_configuration = one_configuration
        self._slot: Slot | None = None
        #: why jobs were trained one at a time ("" when every job was stacked), set by :meth:`train`
        self.sequential_reason = ""

    @contextlib.contextmanager
    def fit(self) -> Iterator[Slot]:
        """Wraps one strategy ``fit``; the slot holds the run it registered (None when the fit
        trained nothing through the loop, or stopped before it). A second call is refused."""
        slot = Slot()
        self._slot = slot
        try:
            yield slot
        finally:
            self._slot = None

    def defer(self, job: Job) -> None:
        slot = self._slot
        if slot is None:
            raise RuntimeError("side by side: fit_epochs called outside a SideBySide.fit block")
        if slot.job is not None:  # its first model is not trained yet: refused before anything wrong is computed
            raise RuntimeError("side by side: a second fit_epochs in one fit (a strategy that trains twice must "
                               "not declare vectorises)")
        slot.job = job
        self.jobs.append(job)

    def train(self) -> list[Job]:
        """Trains every job; each job's ``history`` or ``error`` says how it ended."""
        token = _ACTIVE.set(None)  # the loop trains for real from here
        each = not self.one_configuration
        reasons = []
        try:
            for group in ([self.jobs] if self.one_configuration else partition(self.jobs)):
                reason = stack_refusal(group, each=each)
                if not reason:
                    try:
                        fit_stacked(group, each=each)
                    except _Unstackable as err:  # found out at the first step, before any update
                        reason = str(err)
                if reason:
                    reasons.append(reason)
                    for job in group:
                        _fit_alone(job)
        finally:
            _ACTIVE.reset(token)
        self.sequential_reason = "; ".join(dict.fromkeys(reasons))
        return self.jobs

    @property
    def stacked(self) -> int:
        """How many runs trained as one model: the largest group's size (1: one at a time)."""
        return max((job.stacked for job in self.jobs), default=1)


@contextlib.contextmanager
def side_by_side(*, one_configuration: bool = True) -> Iterator[SideBySide]:
    """Within the block, ``fit_epochs`` registers its run with the returned collector instead of
    training. ``one_configuration``: see :class:`SideBySide`."""
    group = SideBySide(one_configuration=one_configuration)
    token = _ACTIVE.set(group)
    try:
        yield group
    finally:
        _ACTIVE.reset(token)


class _Unstackable(Exception):
    pass


def _fit_alone(job: Job) -> None:
    start = time.perf_counter()
    gpus = list(range(len(job.cuda_rng))) if job.cuda_rng is not None else []
    with torch.random.fork_rng(devices=gpus):
        torch.set_rng_state(job.rng)
        if job.cuda_rng is not None:
            torch.cuda.set_rng_state_all(job.cuda_rng)
        try:
            job.history = fit_epochs(job.model, job.optimizer, job.train, job.val, epochs=job.epochs,
                                     batch_size=job.batch_size, seed=job.seed, device=job.device,
                                     reporter=job.reporter, scheduler=job.scheduler, hooks=job.hooks,
                                     criterion=job.criterion, execution=job.execution)
        except Exception as err:  # noqa: BLE001 - kept for the run it belongs to (NonFiniteLoss, a pruned trial)
            job.error = err
    job.seconds = time.perf_counter() - start


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype, bool]]:
    """Names, shapes, dtypes and trainable flags (a stacked model takes the first run's flags)."""
    return [(n, tuple(t.shape), t.dtype, t.requires_grad)
            for n, t in [*model.named_parameters(), *model.named_buffers()]]


def _module_settings(model: nn.Module) -> list[tuple[str, dict[str, object]]]:
    """Each module's plain settings (a LoRA scale, a pooling size): a stacked model is a copy of
    the first run's, so runs of different configurations stack only when these are equal. A
    module's ``provenance_attributes`` (a backbone's ``weights_id``: which weights it started from)
    are left out."""
    plain = (bool, int, float, str, tuple, type(None))
    return [(type(m).__name__, {k: v for k, v in vars(m).items()
                                if not k.startswith("_") and k != "training" and isinstance(v, plain)
                                and k not in getattr(m, "provenance_attributes", ())})
            for m in model.modules()]


def _hook_keys(job: Job) -> list[tuple[str, object]]:
    return [(type(h).__qualname__, h.stack_key() if hasattr(h, "stack_key") else None) for h in job.hooks]


def partition(jobs: Sequence[Job]) -> list[list[Job]]:
    """Runs of different configurations grouped, in order of first appearance, by what one stacked
    forward pass needs them to share: batch size, device, execution, architecture, module settings
    and hooks' settings (epochs, optimizers and schedules may differ)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        key = repr((job.batch_size, job.device, job.execution, _shapes(job.model), _module_settings(job.model),
                    _hook_keys(job)))
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def stack_refusal(jobs: Sequence[Job], *, each: bool = False) -> str:
    """Why ``jobs`` cannot train as one stacked model ("" when they can). ``each``: the runs
    keep their own optimizers (different configurations; their epochs may differ)."""
    if len(jobs) < 2:
        return "a single run"
    lead = jobs[0]
    if not all(isinstance(x, torch.Tensor) for x in (lead.train[0], lead.val[0])):
        return "image inputs are read per run (augmentation, loader workers)"
    if lead.execution.compile:
        return "torch.compile is on"
    names = {type(m).__name__ for m in lead.model.modules()}
    if any(kind in name for name in names for kind in _RANDOM):
        return "the network draws random numbers in its forward pass (dropout)"
    if not all(getattr(h, "stackable", False) for h in lead.hooks):
        return "a hook does not act on a stacked model: " + ", ".join(
            sorted({type(h).__name__ for h in lead.hooks if not getattr(h, "stackable", False)}))
    if each and any(key is None for _, key in _hook_keys(lead)):
        return "a hook does not say which settings it acts with (Hook.stack_key): " + ", ".join(
            sorted({name for name, key in _hook_keys(lead) if key is None}))
    shapes = _shapes(lead.model)
    for job in jobs:
        own = {id(p) for p in job.model.parameters()}
        if any(id(p) not in own for group in job.optimizer.param_groups for p in group["params"]):
            return "the optimizer holds a tensor that is not one of the network's parameters"
    for job in jobs[1:]:
        if (job.batch_size, job.device, job.execution) != (lead.batch_size, lead.device, lead.execution) or (
                not each and job.epochs != lead.epochs):
            return "the runs differ in epochs, batch size, device or execution"
        if job.train[0] is not lead.train[0] or job.val[0] is not lead.val[0] or job.train[1] is not lead.train[1]:
            return "the runs train on different data"
        if _shapes(job.model) != shapes or [type(h) for h in job.hooks] != [type(h) for h in lead.hooks]:
            return "the runs differ in architecture or hooks"
        if each:
            if _hook_keys(job) != _hook_keys(lead) or _module_settings(job.model) != _module_settings(lead.model):
                return "the runs differ in their hooks' or modules' settings"
        elif type(job.optimizer) is not type(lead.optimizer) or len(job.optimizer.param_groups) != len(
                lead.optimizer.param_groups):
            return "the runs differ in optimizer"
    if any(job.optimizer.state for job in (jobs if each else jobs[:1])):
        return "the optimizer has already stepped"
    return ""


def _stack(models: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` whose every parameter and buffer is the runs' values stacked on a
    new leading dimension (same names, same modules: hooks act on it as on one model)."""
    stacked = copy.deepcopy(models[0])
    params = [dict(m.named_parameters()) for m in models]
    buffers = [dict(m.named_buffers()) for m in models]
    for name, p in list(stacked.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        module = stacked.get_submodule(owner)
        value = torch.stack([ps[name].detach() for ps in params])
        setattr(module, leaf, nn.Parameter(value, requires_grad=p.requires_grad))
    for name, _ in list(stacked.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        stacked.get_submodule(owner)._buffers[leaf] = torch.stack([bs[name] for bs in buffers])
    return stacked


def _unstack(stacked: nn.Module, models: Sequence[nn.Module]) -> None:
    """Copies each run's slice back into its own model, with the stacked model's trainable flags
    and train/eval modes (what hooks left them as)."""
    params, buffers = dict(stacked.named_parameters()), dict(stacked.named_buffers())
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
                p.requires_grad_(params[name].requires_grad)
            for name, b in model.named_buffers():
                b.copy_(buffers[name][k])
            for mine, theirs in zip(model.modules(), stacked.modules()):
                mine.training = theirs.training


def _rebind(optimizer: torch.optim.Optimizer, model: nn.Module, stacked: nn.Module) -> None:
    """Points ``optimizer`` (built on ``model``) at the stacked model's parameters, group by group:
    its groups (learning rates, weight decay, which parameters decay) stay what the strategy made."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    params = dict(stacked.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [params[name_of[id(p)]] for p in group["params"]]


def _cross_entropy_each(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy, (K, B, C) and (K, B) → (K,)."""
    k, b = y.shape
    return nn.functional.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1), reduction="none").view(k, b).mean(1)


class _Stack:
    """The stacked model of the runs now training (``members``: their indices in ``jobs``).

    With one configuration the first run's optimizer is pointed at the stacked parameters; with
    ``each``, every run's own parameters become views of its slice (so its own optimizer steps
    it in place) and :meth:`use` re-stacks when runs leave."""

    def __init__(self, jobs: Sequence[Job], each: bool) -> None:
        self.jobs, self.each = jobs, each
        self.members: list[int] = []
        self.model: nn.Module | None = None
        self.params: dict[str, nn.Parameter] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.bound: list[list[tuple[torch.Tensor, nn.Parameter]]] = []  # per member: (own, stacked)

    def use(self, members: list[int]) -> None:
        if members == self.members:
            return
        self.release()
        self.members = members
        models = [self.jobs[j].model for j in members]
        self.model = _stack(models)
        # the same tensors all along (the optimizers and the batch norms update them in place)
        self.params, self.buffers = dict(self.model.named_parameters()), dict(self.model.named_buffers())
        if self.each:
            self.bound = []
            for pos, model in enumerate(models):
                pairs = [(p, self.params[name]) for name, p in model.named_parameters()]
                for own, stacked in pairs:
                    own.data = stacked.data[pos]
                self.bound.append(pairs)
        else:
            lead = self.jobs[members[0]]
            _rebind(lead.optimizer, lead.model, self.model)

    def release(self) -> None:
        """Each member's model gets its values back in its own storage, with the stacked model's
        trainable flags and modes; a shared optimizer is pointed back at the first run's model."""
        if self.model is None:
            return
        models = [self.jobs[j].model for j in self.members]
        if self.each:
            for pairs in self.bound:
                for own, _ in pairs:
                    own.data = own.data.clone()
        else:
            lead = self.jobs[self.members[0]]
            _rebind(lead.optimizer, self.model, lead.model)
        _unstack(self.model, models)
        self.model, self.members, self.bound = None, [], []

    def update(self, loss: torch.Tensor, step: int) -> int:
        """One step: the summed loss's backward pass, then each run's own optimizer and schedule
        on its slice (``each``), or the shared optimizer on the stacked parameters."""
        jobs = [self.jobs[j] for j in self.members]
        hooks = [hook for job in jobs for hook in job.hooks]
        if not self.each:
            return update(loss, jobs[0].optimizer, jobs[0].scheduler, hooks, step)
        for p in self.params.values():
            p.grad = None
        loss.backward()
        for pos, job in enumerate(jobs):
            for own, stacked in self.bound[pos]:
                own.grad = None if stacked.grad is None else stacked.grad[pos]
            job.optimizer.step()
            if job.scheduler is not None:
                job.scheduler.step()
            for own, _ in self.bound[pos]:
                own.grad = None
        step += 1
        for hook in hooks:
            hook.on_step_end(step)
        return step


def fit_stacked(jobs: Sequence[Job], *, each: bool = False) -> None:
    """Trains ``jobs`` (which :func:`stack_refusal` accepts) as one stacked model; each job's model
    ends as if trained alone, and its reporter got its own validation accuracy and FLOPs.
    ``each``: every run keeps its own optimizer and schedule and trains its own epochs."""
    start = time.perf_counter()
    lead, k = jobs[0], len(jobs)
    device, execution = lead.device, lead.execution
    stack = _Stack(jobs, each)
    x, y = lead.train[0].to(device), lead.train[1].to(device)
    vx = lead.val[0].to(device)

    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(stack.model, (params, buffers), (xb,))

    train_forward = torch.vmap(forward, in_dims=(0, 0, 0), randomness="error")
    eval_forward = torch.vmap(forward, in_dims=(0, 0, None), randomness="error")
    gens = [torch.Generator().manual_seed(job.seed) for job in jobs]
    per_example: float | None = None
    alive = list(range(k))
    batches = [0] * k  # batches each run trained (its share of the time)
    step = 0
    try:
        for epoch in range(max(job.epochs for job in jobs)):
            # one configuration: every run stays in the stack (one optimizer); else the runs still training
            members = list(range(k)) if not each else [j for j in alive if epoch < jobs[j].epochs]
            if not members:
                break
            stack.use(members)
            model, params, buffers = stack.model, stack.params, stack.buffers
            group = [jobs[j] for j in members]
            plain = all(job.criterion is cross_entropy for job in group)
            # each stackable hook's term, once for the runs: its class's stacked_loss_term over the runs' hooks
            terms = [(type(hook).stacked_loss_term, [job.hooks[h] for job in group])
                     if hasattr(type(hook), "stacked_loss_term") else (None, [hook])
                     for h, hook in enumerate(group[0].hooks)]
            model.train()
            for job in group:  # each run's hooks (freezing schedules, counters) see the stacked model
                for hook in job.hooks:
                    hook.on_epoch_start(epoch, model, job.optimizer if each else lead.optimizer)
            total = torch.zeros(len(members), device=device)
            orders = [epoch_batches(len(y), lead.batch_size, gens[j], device) for j in members]
            for i in range(len(orders[0])):
                idx = torch.stack([order[i] for order in orders])  # (K, B): each run's own batch
                xb, yb = x[idx], y[idx]
                if per_example is None:
                    per_example = forward_flops(lead.model, xb[0, :1])
                try:
                    with execution.autocast(device):
                        logits = train_forward(params, buffers, xb)
                        if plain:
                            losses = _cross_entropy_each(logits, yb)
                        else:
                            losses = torch.stack([job.criterion(Batch(xb[j], yb[j], idx[j], logits[j]))
                                                  for j, job in enumerate(group)])
                        loss = losses.sum()
                        batch = Batch(xb, yb, idx, logits)
                        for stacked_term, hooks in terms:  # a stackable hook's term sums over the runs
                            if stacked_term is not None:
                                term = stacked_term(hooks, model, batch)
                            else:
                                term = hooks[0].loss_term(model, batch)
                            if term is not None:
                                loss = loss + term
                except RuntimeError as err:
                    if step == 0 and "vmap" in str(err):
                        raise _Unstackable(
                            f"the network cannot run under torch.vmap ({str(err).splitlines()[0]})") from None
                    raise
                step = stack.update(loss, step)
                total += losses.detach()
            for j in members:
                batches[j] += len(orders[0])
            seen = sum(len(i) for i in orders[0])
            val_logits = None
            if any(per_epoch(jobs[j].reporter) for j in members if j in alive):
                model.eval()
                with torch.no_grad(), execution.autocast(device):
                    val_logits = torch.cat([eval_forward(params, buffers, vx[s:s + 512]).float()
                                            for s in range(0, len(vx), 512)], dim=1).cpu()
            values = total.tolist()
            for pos, j in enumerate(members):
                if j not in alive:
                    continue
                job = jobs[j]
                spend(job.reporter, 3 * (per_example or 0.0) * seen)
                if not math.isfinite(values[pos]):
                    job.error = NonFiniteLoss(epoch, values[pos])
                    alive.remove(j)
                    continue
                if val_logits is None or not per_epoch(job.reporter):
                    continue
                try:
                    report_epoch(job.reporter, epoch, val_logits[pos], lead.val[1], job.history)
                except Exception as err:  # noqa: BLE001 - a pruned trial: that run stops here
                    job.error = err
                    alive.remove(j)
            if not alive:
                break
    finally:
        stack.release()
    seconds, work = time.perf_counter() - start, max(1, sum(batches))
    for j, job in enumerate(jobs):
        job.seconds = seconds * batches[j] / work if sum(batches) else seconds / k
        job.stacked = k
