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
    def loss_term(self, model, batch):
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


def test_linear_head_solver_matches_autograd_adamw() -> None:
    from harness.train import fit_linear_head

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    vx, vy = torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)
    torch.manual_seed(1)
    ref = nn.Linear(6, 3)
    fast = nn.Linear(6, 3)
    fast.load_state_dict(ref.state_dict())
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.01)
    h_ref = fit_epochs(ref, opt, (x, y), (vx, vy), epochs=7, batch_size=16, seed=4,
                       device=torch.device("cpu"), reporter=NullReporter())
    h_fast = fit_linear_head(fast, (x, y), (vx, vy), lr=0.05, weight_decay=0.01, epochs=7,
                             batch_size=16, seed=4, device=torch.device("cpu"), reporter=NullReporter())
    assert torch.allclose(ref.weight, fast.weight, atol=1e-5)
    assert torch.allclose(ref.bias, fast.bias, atol=1e-5)
    assert h_ref == h_fast


def test_linear_head_solver_flags_divergence() -> None:
    from harness.train import fit_linear_head

    x, y = data()
    x = x * float("inf")
    with pytest.raises(NonFiniteLoss):
        fit_linear_head(nn.Linear(5, 2), (x, y), (x, y), lr=0.1, weight_decay=0.0, epochs=2,
                        batch_size=8, seed=0, device=torch.device("cpu"), reporter=NullReporter())
