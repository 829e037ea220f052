"""Seeds side by side: several runs of one configuration trained as one vectorised model.

An evaluation trains the same configuration on several seeds. On small networks a training step
costs mostly per-operation overhead, so K copies stacked along a leading dimension
(``torch.func.functional_call`` under ``torch.vmap``) do K runs' work in about one run's number of
operations (where arithmetic, not overhead, bounds a step — the quick suite's CNNs on 2 CPU cores —
the gain is smaller: 1.5–2.1×, ``benchmarks/test_bench_vectorised.py``). Each run keeps its own initialisation and its own data order; its loss is its own mean
and the step sums the runs' losses, so each run's gradients — and, with element-wise optimizers
(SGD, AdamW), its updates — are those it would get alone, up to floating-point reassociation.

How it is driven: inside :func:`side_by_side`, :func:`tlbench.training.loop.fit_epochs` does not
train but registers a :class:`Job` and returns; :meth:`SideBySide.train` then trains every job
together (or, when they cannot be stacked, one after another exactly as ``fit_epochs`` would have,
from the random state it had when it was called). A strategy may be run this way only when its
``fit`` returns without using what ``fit_epochs`` trained (``Strategy.vectorises``); a second
``fit_epochs`` in one ``fit`` is refused.
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
    accuracy,
    cross_entropy,
    epoch_batches,
    fit_epochs,
    forward_flops,
    per_epoch,
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
    """Collects the ``fit_epochs`` calls of several ``fit``s, then trains them together."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._slot: Slot | None = None
        #: why the jobs were trained one at a time ("" when stacked), set by :meth:`train`
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
        try:
            reason = stack_refusal(self.jobs)
            if not reason:
                try:
                    fit_stacked(self.jobs)
                except _Unstackable as err:  # found out at the first step, before any update
                    reason = str(err)
            if reason:
                self.sequential_reason = reason
                for job in self.jobs:
                    _fit_alone(job)
        finally:
            _ACTIVE.reset(token)
        return self.jobs

    @property
    def stacked(self) -> int:
        """How many runs trained as one model: len(jobs), or 1 when they ran one at a time."""
        return 1 if self.sequential_reason else len(self.jobs)


@contextlib.contextmanager
def side_by_side() -> Iterator[SideBySide]:
    """Within the block, ``fit_epochs`` registers its run with the returned collector instead of training."""
    group = SideBySide()
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


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(n, tuple(t.shape), t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()]]


def stack_refusal(jobs: Sequence[Job]) -> str:
    """Why ``jobs`` cannot train as one stacked model ("" when they can)."""
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
    shapes = _shapes(lead.model)
    for job in jobs[1:]:
        if (job.epochs, job.batch_size, job.device, job.execution) != (lead.epochs, lead.batch_size, lead.device,
                                                                       lead.execution):
            return "the runs differ in epochs, batch size, device or execution"
        if job.train[0] is not lead.train[0] or job.val[0] is not lead.val[0] or job.train[1] is not lead.train[1]:
            return "the runs train on different data"
        if _shapes(job.model) != shapes or [type(h) for h in job.hooks] != [type(h) for h in lead.hooks]:
            return "the runs differ in architecture or hooks"
        if type(job.optimizer) is not type(lead.optimizer) or len(job.optimizer.param_groups) != len(
                lead.optimizer.param_groups):
            return "the runs differ in optimizer"
    if lead.optimizer.state:
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


def fit_stacked(jobs: Sequence[Job]) -> None:
    """Trains ``jobs`` (which :func:`stack_refusal` accepts) as one stacked model; each job's model
    ends as if trained alone, and its reporter got its own validation accuracy and FLOPs."""
    start = time.perf_counter()
    lead, k = jobs[0], len(jobs)
    device, execution = lead.device, lead.execution
    models = [job.model for job in jobs]
    stacked = _stack(models)
    _rebind(lead.optimizer, lead.model, stacked)
    optimizer, scheduler = lead.optimizer, lead.scheduler
    x, y = lead.train[0].to(device), lead.train[1].to(device)
    vx = lead.val[0].to(device)

    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(stacked, (params, buffers), (xb,))

    train_forward = torch.vmap(forward, in_dims=(0, 0, 0), randomness="error")
    eval_forward = torch.vmap(forward, in_dims=(0, 0, None), randomness="error")
    plain = all(job.criterion is cross_entropy for job in jobs)
    gens = [torch.Generator().manual_seed(job.seed) for job in jobs]
    per_example: float | None = None
    # the same tensors all along (the optimizer and the batch norms update them in place): named once
    params, buffers = dict(stacked.named_parameters()), dict(stacked.named_buffers())
    alive = list(range(k))
    step = 0
    for epoch in range(lead.epochs):
        stacked.train()
        for job in jobs:  # each run's hooks (freezing schedules, counters) see the stacked model
            for hook in job.hooks:
                hook.on_epoch_start(epoch, stacked, optimizer)
        total = torch.zeros(k, device=device)
        orders = [epoch_batches(len(y), lead.batch_size, g, device) for g in gens]
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
                                              for j, job in enumerate(jobs)])
                    loss = losses.sum()
                    for hook in lead.hooks:  # a stackable hook's term sums over the runs
                        term = hook.loss_term(stacked, Batch(xb, yb, idx, logits))
                        if term is not None:
                            loss = loss + term
            except RuntimeError as err:
                if step == 0 and "vmap" in str(err):
                    _unbind(lead.optimizer, stacked, lead.model)
                    raise _Unstackable(f"the network cannot run under torch.vmap ({str(err).splitlines()[0]})") from None
                raise
            step = update(loss, optimizer, scheduler, [hook for job in jobs for hook in job.hooks], step)
            total += losses.detach()
        seen = sum(len(i) for i in orders[0])
        val_logits = None
        if any(per_epoch(jobs[j].reporter) for j in alive):
            stacked.eval()
            with torch.no_grad(), execution.autocast(device):
                val_logits = torch.cat([eval_forward(params, buffers, vx[s:s + 512]).float()
                                        for s in range(0, len(vx), 512)], dim=1).cpu()
        values = total.tolist()
        for j in list(alive):
            job = jobs[j]
            spend(job.reporter, 3 * (per_example or 0.0) * seen)
            if not math.isfinite(values[j]):
                job.error = NonFiniteLoss(epoch, values[j])
                alive.remove(j)
                continue
            if val_logits is None or not per_epoch(job.reporter):
                continue
            acc = accuracy(val_logits[j], lead.val[1])
            job.history.append(acc)
            try:
                job.reporter.report(epoch, acc)
            except Exception as err:  # noqa: BLE001 - a pruned trial: that run stops here
                job.error = err
                alive.remove(j)
        if not alive:
            break
    _unstack(stacked, models)
    for job in jobs:
        job.seconds = (time.perf_counter() - start) / k


def _unbind(optimizer: torch.optim.Optimizer, stacked: nn.Module, model: nn.Module) -> None:
    """Undoes :func:`_rebind` (the runs will train one at a time with their own optimizers)."""
    _rebind(optimizer, stacked, model)
