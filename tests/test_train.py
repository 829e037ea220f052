from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import NonFiniteLoss
from harness.train import Hook, NullReporter, fit_epochs, steps_per_epoch
from strategies.parts import make_optimizer, warmup_cosine


def data(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] > 0).long()


def test_loop_is_deterministic_and_learns() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        hist = fit_epochs(model, opt, data(), data(seed=1), epochs=20, batch_size=8, seed=3,
                          device=torch.device("cpu"), reporter=NullReporter())
        runs.append((hist, model.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] > 0.8


class NanHook(Hook):
    def loss_term(self, model, x, y, logits):
        return torch.tensor(float("nan"))


def test_non_finite_loss_raises() -> None:
    model = nn.Linear(5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        fit_epochs(model, opt, data(), data(), epochs=3, batch_size=8, seed=0,
                   device=torch.device("cpu"), reporter=NullReporter(), hooks=[NanHook()])


def test_steps_per_epoch_drops_single_example_batches() -> None:
    assert steps_per_epoch(17, 8) == 2
    assert steps_per_epoch(18, 8) == 3
    assert steps_per_epoch(3, 8) == 1


def test_warmup_cosine_schedule() -> None:
    opt = make_optimizer(nn.Linear(2, 2).parameters(),
                         {"optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0})
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] and max(lrs) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.01


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="allowed: sgd, adamw"):
        make_optimizer([nn.Parameter(torch.zeros(1))], {"optimizer": "lion", "lr": 1, "weight_decay": 0})
