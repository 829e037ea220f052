"""The harness's fine-tuning loop vs a minimal hand-written PyTorch loop.

Target: ≥ 0.95× the hand-written loop's throughput on the same model, data and
epochs. Both loops use the same optimizer, schedule and a validation pass per epoch (the
harness needs it to report to the pruner).
"""

from __future__ import annotations

import copy

import pytest
import torch
from _setup import quick_digits
from _sides import median, ratio, time_side
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlbench.strategies.parts import make_optimizer, warmup_cosine
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task
from tlbench.training.backbones import Classifier
from tlbench.training.loop import NullReporter, fit_epochs, steps_per_epoch

EPOCHS, BATCH = 4, 32
CFG = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4, "warmup_fraction": 0.1}
CPU = torch.device("cpu")


def setup():
    _, _, backbone = quick_digits()
    task = build_task("digits-full", TaskSpec(dataset="digits", split=SplitSpec(seed=0, test_fraction=0.3,
                                                                              val_per_class=10)),
                      where="bench")
    torch.manual_seed(0)
    model = Classifier(copy.deepcopy(backbone), backbone.new_head(task.num_classes))
    opt = make_optimizer(model.parameters(), CFG)
    sched = warmup_cosine(opt, EPOCHS * steps_per_epoch(len(task.train), BATCH), CFG["warmup_fraction"])
    return task, model, opt, sched


def harness_loop() -> None:
    task, model, opt, sched = setup()
    fit_epochs(model, opt, (task.train.x, task.train.y), (task.val.x, task.val.y), epochs=EPOCHS,
               batch_size=BATCH, seed=0, device=CPU, reporter=NullReporter(), scheduler=sched)


def hand_written_loop() -> None:
    task, model, opt, sched = setup()
    loader = DataLoader(TensorDataset(task.train.x, task.train.y), batch_size=BATCH, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        model.train()
        for images, labels in loader:
            outputs = model(images)
            loss = criterion(outputs, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            (model(task.val.x).argmax(1) == task.val.y).float().mean().item()


SIDES = {"hand-written": hand_written_loop, "tlbench": harness_loop}


@pytest.mark.parametrize("side", list(SIDES))
def test_loop(benchmark, side) -> None:
    time_side(benchmark, "finetune-loop", side, SIDES[side], rounds=7)


def test_finetune_loop_throughput() -> None:
    task, *_ = setup()
    images = EPOCHS * len(task.train)
    t_hand, t_harness = median("finetune-loop", "hand-written"), median("finetune-loop", "tlbench")
    r = ratio("finetune-loop", "hand-written", "tlbench")
    print(f"\nfine-tune loop, {images} images: hand-written {images / t_hand:.0f} img/s, "
          f"tlbench {images / t_harness:.0f} img/s -> {r:.2f}x")
    assert r >= 0.95
