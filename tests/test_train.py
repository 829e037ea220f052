from __future__ import annotations

import pytest
import torch
from torch import nn

from tlbench.core.errors import NonFiniteLoss
from tlbench.strategies.parts import make_optimizer, warmup_cosine
from tlbench.training.loop import Hook, NullReporter, fit_epochs, steps_per_epoch


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


def test_a_run_no_one_reads_per_epoch_skips_the_validation_passes_and_trains_the_same() -> None:
    """Evaluation runs are scored once trained: their per-epoch validation passes were wasted work."""
    out = []
    for per_epoch in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        reporter = NullReporter(per_epoch=per_epoch)
        hist = fit_epochs(model, opt, data(), data(seed=1), epochs=5, batch_size=8, seed=3,
                          device=torch.device("cpu"), reporter=reporter)
        out.append((hist, reporter.flops, [p.detach().clone() for p in model.state_dict().values()]))
    (with_val, flops, state), (without, flops_without, state_without) = out
    assert len(with_val) == 5 and without == [] and flops == flops_without
    assert all(torch.equal(a, b) for a, b in zip(state, state_without))


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
    from tlbench.strategies.parts import make_optimizer
    from tlbench.training.loop import fit_linear_head

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    vx, vy = torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)
    cfg = {"optimizer": "adamw", "lr": 0.05, "weight_decay": 0.3}
    for decay_bias in (True, False):  # the suite's convention: no decay on biases unless asked
        torch.manual_seed(1)
        ref = nn.Linear(6, 3)
        fast = nn.Linear(6, 3)
        fast.load_state_dict(ref.state_dict())
        opt = make_optimizer(ref.parameters(), cfg, decay_norm_and_bias=decay_bias)
        h_ref = fit_epochs(ref, opt, (x, y), (vx, vy), epochs=7, batch_size=16, seed=4,
                           device=torch.device("cpu"), reporter=NullReporter())
        h_fast = fit_linear_head(fast, (x, y), (vx, vy), lr=0.05, weight_decay=0.3, epochs=7, batch_size=16,
                                 seed=4, device=torch.device("cpu"), reporter=NullReporter(), decay_bias=decay_bias)
        assert torch.allclose(ref.weight, fast.weight, atol=1e-5)
        assert torch.allclose(ref.bias, fast.bias, atol=1e-5)
        assert h_ref == h_fast


def test_no_weight_decay_on_biases_and_norms_by_default() -> None:
    from tlbench.strategies.parts import make_optimizer

    model = conv_model()
    cfg = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-3}
    groups = [{"params": list(model[:2].parameters()), "lr_scale": 0.5}, {"params": list(model[5].parameters())}]
    opt = make_optimizer(groups, cfg)
    decay = {id(p): (group["weight_decay"], group["lr"]) for group in opt.param_groups for p in group["params"]}
    conv, bn, head = model[0], model[1], model[5]
    assert decay[id(conv.weight)] == (1e-3, 0.05) and decay[id(head.weight)] == (1e-3, 0.1)
    for p in (conv.bias, bn.weight, bn.bias, head.bias):
        assert decay[id(p)][0] == 0.0
    assert decay[id(bn.weight)][1] == 0.05  # the group's rate is kept
    every = make_optimizer(model.parameters(), cfg, decay_norm_and_bias=True)
    assert all(group["weight_decay"] == 1e-3 for group in every.param_groups)
    assert sum(len(g["params"]) for g in every.param_groups) == len(list(model.parameters()))


class LossReporter(NullReporter):
    """Keeps the validation loss it is given, and what it had been given when each accuracy came."""

    def __init__(self, prune_at: int | None = None) -> None:
        super().__init__()
        self.losses: list[float] = []
        self.seen: list[int] = []
        self.prune_at = prune_at

    def val_loss(self, epoch: int, value: float) -> None:
        self.losses.append(value)

    def report(self, epoch: int, value: float) -> None:
        super().report(epoch, value)
        self.seen.append(len(self.losses))
        if epoch == self.prune_at:
            raise RuntimeError("pruned")


def test_each_epoch_s_validation_loss_goes_to_a_reporter_that_takes_it_before_the_accuracy() -> None:
    from tlbench.training.loop import fit_linear_head

    val = data(seed=1)
    for fit in ("loop", "linear head"):
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        reporter = LossReporter()
        if fit == "loop":
            fit_epochs(model, torch.optim.SGD(model.parameters(), lr=0.5), data(), val, epochs=4, batch_size=8,
                       seed=3, device=torch.device("cpu"), reporter=reporter)
        else:
            fit_linear_head(model, data(), val, lr=0.05, weight_decay=0.0, epochs=4, batch_size=8, seed=3,
                            device=torch.device("cpu"), reporter=reporter)
        assert reporter.seen == [1, 2, 3, 4] and len(reporter.history) == 4, fit
        with torch.no_grad():  # the last one is the cross-entropy of the trained model on the validation split
            assert reporter.losses[-1] == pytest.approx(float(nn.functional.cross_entropy(model(val[0]), val[1])),
                                                        rel=1e-5), fit
        assert reporter.losses[0] != reporter.losses[-1]
    pruned, model = LossReporter(prune_at=1), nn.Linear(5, 2)  # a pruned epoch's loss is kept too
    with pytest.raises(RuntimeError, match="pruned"):
        fit_epochs(model, torch.optim.SGD(model.parameters(), lr=0.5), data(), val, epochs=4, batch_size=8,
                   seed=3, device=torch.device("cpu"), reporter=pruned)
    assert len(pruned.losses) == len(pruned.history) == 2


def test_linear_head_solver_flags_divergence() -> None:
    from tlbench.training.loop import fit_linear_head

    x, y = data()
    x = x * float("inf")
    with pytest.raises(NonFiniteLoss):
        fit_linear_head(nn.Linear(5, 2), (x, y), (x, y), lr=0.1, weight_decay=0.0, epochs=2,
                        batch_size=8, seed=0, device=torch.device("cpu"), reporter=NullReporter())


# ------------------------------------------------------------ execution: bf16, channels_last, compile

def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def images(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_bf16_autocast_trains_and_predicts_in_float32_outputs() -> None:
    from tlbench.training.loop import Execution, predict_logits

    model = conv_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    history = fit_epochs(model, opt, images(), images(), epochs=2, batch_size=8, seed=0,
                         device=torch.device("cpu"), reporter=NullReporter(), execution=Execution(bf16=True))
    assert len(history) == 2 and all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    x = images()[0]
    half = predict_logits(model, x, device=torch.device("cpu"), execution=Execution(bf16=True))
    full = predict_logits(model, x, device=torch.device("cpu"))
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # bf16 really ran
    assert torch.allclose(half, full, atol=0.05, rtol=0.05)


def test_channels_last_changes_the_layout_not_the_result() -> None:
    from tlbench.training.loop import Execution, predict_logits

    model, x = conv_model().eval(), images()[0]
    reference = predict_logits(model, x, device=torch.device("cpu"))
    ex = Execution(channels_last=True)
    forward = ex.prepare(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert ex.inputs(x).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(predict_logits(forward, x, device=torch.device("cpu"), execution=ex), reference, atol=1e-5)
    linear = nn.Linear(4, 2)  # no 2-D convolution: left alone
    assert ex.prepare(linear) is linear and ex.inputs(torch.zeros(3, 4)).shape == (3, 4)


def test_compile_wraps_the_model_and_cpu_defaults_change_nothing() -> None:
    from tlbench.core.errors import ConfigError
    from tlbench.training.context import resolve_execution
    from tlbench.training.loop import Execution

    model = conv_model()
    assert Execution(compile=True).prepare(model) is not model  # a lazily compiled wrapper
    assert Execution().prepare(model) is model
    cpu = torch.device("cpu")
    assert resolve_execution(cpu) == Execution()  # CPU behaviour unchanged
    assert resolve_execution(cpu, precision="bf16", channels_last="on", compile=True) == Execution(True, True, True)
    with pytest.raises(ConfigError, match="--precision 'fp16': allowed: auto, bf16, fp32"):
        resolve_execution(cpu, precision="fp16")


def test_cuda_defaults_are_bf16_and_channels_last(monkeypatch) -> None:
    from tlbench.training.context import resolve_execution

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    ex = resolve_execution(torch.device("cuda"))
    assert ex.bf16 and ex.channels_last and not ex.compile
    assert not resolve_execution(torch.device("cuda"), precision="fp32", channels_last="off").bf16


def test_feature_cache_keys_by_precision(tiny_backbone) -> None:
    from tlbench.training.features import FeatureCache
    from tlbench.training.loop import Execution

    assert FeatureCache.key(tiny_backbone, "fp") == FeatureCache.key(tiny_backbone, "fp", Execution())
    assert FeatureCache.key(tiny_backbone, "fp", Execution(bf16=True)) != FeatureCache.key(tiny_backbone, "fp")


@pytest.mark.slow
def test_gpu_benchmark_script_runs_in_smoke_mode(tmp_path) -> None:
    """benchmarks/gpu_throughput.py is run on a lent GPU; here its code paths run on CPU."""
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke", "--out", str(tmp_path / "gpu.json")])
    [row] = result["rows"]
    for key in ("hand_fp32", "hand_bf16_cl", "tlbench_bf16_cl", "features_bf16", "tlbench_jpeg_workers", "cache_flip",
                "cache_crop_flip"):
        assert row[key] > 0
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"][0]["model"] == "resnet18"
