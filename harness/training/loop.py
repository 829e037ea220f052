"""The one training loop. Schedules, penalties and extra losses plug in as hooks."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Hashable, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn

from tlbench.core.errors import NonFiniteLoss
from tlbench.data.reader import Loading, Reader, read_all, sequential
from tlbench.data.views import Inputs
from tlbench.training import deferral


class Reporter(Protocol):
    """Receives the validation metric after each epoch (may raise ``optuna.TrialPruned``)
    and the FLOPs training spends (what an epochs budget counts). A reporter may also take
    ``final(value)``: the validation metric of what ``fit`` returns when a choice made after the
    last epoch changed it (call it through :func:`report_final`, which tolerates reporters
    without it), and ``val_loss(epoch, value)``: the mean validation cross-entropy of the same epoch,
    given just before ``report`` (tuning keeps it with the trial, for replaying pruners on the loss)."""

    def report(self, epoch: int, value: float) -> None: ...

    def spend(self, flops: float) -> None: ...


class NullReporter:
    """A reporter that records the history and the FLOPs spent, and never prunes.

    ``per_epoch=False``: no one reads the validation accuracy after each epoch (an evaluation run,
    which is scored once it is trained), so the loop skips those passes; the history stays empty."""

    def __init__(self, *, per_epoch: bool = True) -> None:
        self.per_epoch = per_epoch
        self.history: list[float] = []
        self.flops = 0.0
        self.final: float | None = None  # set by report_final

    def report(self, epoch: int, value: float) -> None:
        self.history.append(value)

    def spend(self, flops: float) -> None:
        self.flops += flops


class SpendOnly:
    """Passes FLOPs on to ``reporter`` but no metric: a stage of a strategy (LP-FT's probe)
    whose compute counts but whose accuracy is not the trial's (so no per-epoch validation pass)."""

    per_epoch = False

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def report(self, epoch: int, value: float) -> None:
        pass

    def spend(self, flops: float) -> None:
        spend(self.reporter, flops)

    def final(self, value: float) -> None:
        pass  # a stage's choice is not the trial's


def report_final(reporter: Reporter, value: float) -> None:
    """Tells ``reporter`` the validation accuracy of what ``fit`` returns, when the strategy chose
    something after its last epoch on validation data (WiSE-FT's mixing coefficient, SWA's epochs,
    a temperature): that value, not the last epoch's, is then what tuning maximises. Reporters
    without ``final`` (a plugin's own) are left as they are."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"report_final: a validation accuracy in [0, 1], got {value!r}")
    final = getattr(reporter, "final", None)
    if callable(final):
        final(float(value))
    elif hasattr(reporter, "final"):
        reporter.final = float(value)  # type: ignore[attr-defined]


def per_epoch(reporter: Reporter) -> bool:
    """Whether ``reporter`` reads the validation accuracy after each epoch (True unless it says
    ``per_epoch = False``; tuning's reporters read it to prune)."""
    return bool(getattr(reporter, "per_epoch", True))


def spend(reporter: Reporter, flops: float) -> None:
    """Charges ``flops`` to ``reporter`` (a plugin's reporter may not count them)."""
    charge = getattr(reporter, "spend", None)
    if charge is not None and flops > 0:
        charge(flops)


_FLOPS: dict[tuple, float] = {}


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass of ``model`` per example of ``x`` (a batch, typically of
    one), counted by torch's FLOP counter in eval mode (no random state is used, no batch
    statistics change); 0 when they cannot be counted. Counted once per architecture and
    input shape in a process (the counter costs about as much as a small training step)."""
    if len(x) == 0:
        return 0.0
    key = (type(model).__qualname__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
           tuple(x.shape[1:]), x.dtype)
    if key not in _FLOPS:
        _FLOPS[key] = _count_flops(model, x)
    return _FLOPS[key]


def _count_flops(model: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    modes = [(m, m.training) for m in model.modules()]  # hooks may keep some parts in eval mode
    try:
        param = next(model.parameters(), None)
        x = x.to(param.device) if param is not None else x
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return float(counter.get_total_flops()) / len(x)
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return 0.0
    finally:
        for module, training in modes:
            module.training = training


@dataclass(frozen=True)
class Execution:
    """How the loop runs: bf16 autocast, channels_last memory format for 4-D (image)
    inputs, ``torch.compile``, and how image splits are loaded. All off by default (the CPU
    behaviour); a runtime turns the first two on for CUDA (:func:`tlbench.training.context.make_runtime`)."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    loading: Loading = Loading()

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            yield

    def prepare(self, model: nn.Module) -> nn.Module:
        """Converts ``model`` in place to channels_last when it has 2-D convolutions, and
        returns what to call forward on (a compiled wrapper when ``compile``)."""
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model.to(memory_format=torch.channels_last)
        return torch.compile(model) if self.compile else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @property
    def tag(self) -> str:
        """What changes computed values (a cache key part): the precision."""
        return "bf16" if self.bf16 else "fp32"


@dataclass(frozen=True)
class Batch:
    """One training step's inputs: ``index`` are the examples' positions in the train split
    (what per-example caches such as a teacher's logits are looked up by)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    logits: torch.Tensor


Criterion = Callable[[Batch], torch.Tensor]


def cross_entropy(batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(batch.logits, batch.y)


class Hook:
    """Callbacks at epoch and step boundaries, all no-ops by default (Lightning-style).

    ``stackable``: the hook also works on a stacked model (several seeds' runs trained side by
    side, :mod:`tlbench.training.vectorised`): a model with the same modules whose every
    parameter has the runs on a new leading dimension. ``on_epoch_start`` and ``on_step_end``
    are then called, for every run's hook, with the stacked model (so they must act on the
    model they are given, not on one they hold), and ``loss_term`` is called once, on the first
    run's hook, and must return the sum of the runs' terms (a sum of squares over the stacked
    parameters is). Hooks that are not stackable make their runs train one at a time.

    Runs of *different* configurations (tuning trials side by side) stack only when each run's
    hooks act alike: :meth:`stack_key` says with which settings a hook acts, and runs whose hooks'
    keys differ (or say nothing: None, the default) train in different groups or alone."""

    stackable: ClassVar[bool] = False

    def stack_key(self) -> Hashable | None:
        """The settings this hook acts with (a freezing schedule's stages, a penalty's weights):
        hooks of equal keys act on a stacked model as each would on its own. None: not said (runs of
        different configurations with this hook are not stacked together)."""
        return None

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after ``model.train()`` at the start of each epoch (0-based)."""

    def loss_term(self, model: nn.Module, batch: Batch) -> torch.Tensor | None:
        """An extra term added to this batch's loss (a penalty), or None."""
        return None

    @classmethod
    def stacked_loss_term(cls, hooks: Sequence["Hook"], model: nn.Module, batch: Batch) -> torch.Tensor | None:
        """The summed term of several runs' hooks of this class on their stacked ``model`` (one hook
        per run, in the stack's order). By default the first hook's :meth:`loss_term`, which is right
        when the hooks act alike (equal :meth:`stack_key`); a hook whose settings may differ between
        the runs (a penalty's weight) applies each run's own here, and says so by a ``stack_key``
        that leaves them out."""
        return hooks[0].loss_term(model, batch)

    def on_step_end(self, step: int) -> None:
        """Called after each optimizer (and scheduler) step."""


def predict_logits(model: nn.Module, x: Inputs, *, device: torch.device, batch_size: int = 512,
                   execution: Execution = Execution()) -> torch.Tensor:
    """Logits for ``x`` (a tensor or an image view) in eval mode, batched, returned on the
    CPU as float32."""
    return _logits(model, read_all(x, device=device, loading=execution.loading, batch_size=batch_size,
                                   channels_last=execution.channels_last), device=device, execution=execution)


@torch.inference_mode()
def _logits(model: nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device,
            execution: Execution) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with execution.autocast(device):
        outs = [model(execution.inputs(xb)).float().cpu() for xb in batches]
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


#: Timed passes behind an inference time, after a warm-up pass.
INFERENCE_REPEATS = 3


def median_seconds(run: Callable[[], object], *, repeats: int = INFERENCE_REPEATS, budget: float = 30.0) -> float:
    """The median wall time of up to ``repeats`` calls of ``run``, which the caller has
    already warmed up once: a single timed pass is noisy (first-call allocation, lazy
    initialisation, other processes; one ResNet-18 measured 0.74–7.5 ms per example between
    runs). Stops repeating once the timed calls took ``budget`` seconds together, so a large
    test set costs at most about that much more."""
    times: list[float] = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        if sum(times) >= budget:
            break
    return statistics.median(times)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def report_epoch(reporter: Reporter, epoch: int, logits: torch.Tensor, y: torch.Tensor,
                 history: list[float]) -> None:
    """An epoch's validation pass told to ``reporter``: the accuracy of ``logits`` appended to
    ``history`` and reported (which may raise ``optuna.TrialPruned``), and first, to a reporter
    that takes ``val_loss``, the mean cross-entropy of the same logits."""
    acc = accuracy(logits, y)
    history.append(acc)
    loss = getattr(reporter, "val_loss", None)
    if callable(loss) and len(y):
        loss(epoch, float(nn.functional.cross_entropy(logits.float(), y.to(logits.device))))
    reporter.report(epoch, acc)


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or full == 0 else 0)


def epoch_batches(n: int, batch_size: int, gen: torch.Generator,
                  device: torch.device) -> list[torch.Tensor]:
    """One epoch's mini-batch indices: a seeded permutation cut into batches, a final
    single-example batch dropped (batch norm cannot train on it)."""
    order = torch.randperm(n, generator=gen).to(device)
    return [order[b * batch_size:(b + 1) * batch_size] for b in range(steps_per_epoch(n, batch_size))]


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler | None, hooks: Sequence[Hook], step: int) -> int:
    """One training step's update: backward, the optimizer's and the scheduler's step, then the
    hooks' ``on_step_end``; returns the new step count."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    step += 1
    for hook in hooks:
        hook.on_step_end(step)
    return step


def fit_epochs(model: nn.Module, optimizer: torch.optim.Optimizer,
               train: tuple[Inputs, torch.Tensor], val: tuple[Inputs, torch.Tensor], *,
               epochs: int, batch_size: int, seed: int, device: torch.device, reporter: Reporter,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               hooks: Sequence[Hook] = (), criterion: Criterion = cross_entropy,
               execution: Execution = Execution()) -> list[float]:
    """Trains ``model`` on ``criterion`` (cross-entropy by default) plus the hooks' loss
    terms; reports val accuracy each epoch.

    Batches come from :func:`epoch_batches`, so a fixed seed gives a fixed run on CPU.
    Inputs are tensors or image views (read by DataLoader workers that live for the
    whole fit, with the view's training augmentation on the train split).

    Returns:
        The validation accuracy after each epoch (none when the reporter has no use for it:
        :func:`per_epoch`).

    Inside :func:`tlbench.training.vectorised.side_by_side` the run is registered instead and
    trained later, side by side with the other seeds' runs; the history returned is then empty.

    Raises:
        NonFiniteLoss: when an epoch's summed loss is NaN or infinite.
    """
    group = deferral.active()
    if group is not None:
        group.defer(deferral.Job(model, optimizer, train, val, epochs, batch_size, seed, device, reporter,
                                   scheduler, hooks, criterion, execution))
        return []
    y = train[1].to(device)
    layout = execution.channels_last
    read_train = Reader(train[0], device=device, loading=execution.loading, train=True, seed=seed, channels_last=layout)
    read_val = Reader(val[0], device=device, loading=execution.loading, channels_last=layout)
    val_batches = sequential(len(val[1]), 512)
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    step = 0
    validate = per_epoch(reporter)
    forward = execution.prepare(model)  # hooks keep seeing ``model`` itself
    per_example: float | None = None  # forward FLOPs of the model, counted on the first batch
    for epoch in range(epochs):
        model.train()
        for hook in hooks:
            hook.on_epoch_start(epoch, model, optimizer)
        total = torch.zeros((), device=device)
        batches = epoch_batches(len(y), batch_size, gen, device)
        for idx, xb in zip(batches, read_train(batches)):
            xb = execution.inputs(xb)
            if per_example is None:
                per_example = forward_flops(model, xb[:1])
            with execution.autocast(device):
                batch = Batch(xb, y[idx], idx, forward(xb))
                loss = criterion(batch)
                for hook in hooks:
                    term = hook.loss_term(model, batch)
                    if term is not None:
                        loss = loss + term
            step = update(loss, optimizer, scheduler, hooks, step)
            total += loss.detach()
        spend(reporter, 3 * (per_example or 0.0) * sum(len(i) for i in batches))  # forward + backward
        value = float(total)
        if not math.isfinite(value):
            raise NonFiniteLoss(epoch, value)
        if not validate:
            continue
        report_epoch(reporter, epoch, _logits(forward, read_val(val_batches), device=device, execution=execution),
                     val[1], history)
    return history


def fit_linear_head(head: nn.Linear, train: tuple[torch.Tensor, torch.Tensor],
                    val: tuple[torch.Tensor, torch.Tensor], *, lr: float, weight_decay: float,
                    epochs: int, batch_size: int, seed: int, device: torch.device,
                    reporter: Reporter, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, decay_bias: bool = True) -> list[float]:
    """Softmax regression on fixed features: AdamW with closed-form gradients (weight decay
    on the bias too only with ``decay_bias``).

    The same batches, loss and update rule as :func:`fit_epochs` with ``torch.optim.AdamW``
    on an ``nn.Linear`` (a test checks they agree), without autograd: on cached features
    a probe step is a handful of matrix products, and the per-step overhead of autograd
    and the optimizer would otherwise dominate (see benchmarks/test_bench_probe.py).
    """
    x, y = train[0].to(device), train[1].to(device)
    vx, vy = val[0].to(device), val[1].to(device)
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    gen = torch.Generator().manual_seed(seed)
    history, step = [], 0
    (b1, b2), eye = betas, torch.eye(w.shape[0], device=device)
    for epoch in range(epochs):
        total = torch.zeros((), device=device)
        for idx in epoch_batches(len(y), batch_size, gen, device):
            xb, onehot = x[idx], eye[y[idx]]
            logits = torch.addmm(b, xb, w.t())
            logp = torch.log_softmax(logits, 1)
            total += -(logp * onehot).sum() / len(idx)
            delta = (logp.exp() - onehot) / len(idx)
            grads = (delta.t() @ xb, delta.sum(0))
            step += 1
            for p, g, (m, v), decay in zip((w, b), grads, state, (weight_decay, weight_decay * decay_bias)):
                p.mul_(1 - lr * decay)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2 ** step)).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** step))
        spend(reporter, 3 * 2 * w.numel() * len(y))  # the head's forward and backward matrix products
        value = float(total)
        if not math.isfinite(value):
            raise NonFiniteLoss(epoch, value)
        if not per_epoch(reporter):
            continue
        report_epoch(reporter, epoch, torch.addmm(b, vx, w.t()), vy, history)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return history
