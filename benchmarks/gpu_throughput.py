"""GPU throughput: tlbench's training loop against a minimal hand-written PyTorch loop.

The GPU benchmark, one script for the lent GPU machine (see the device tool's README; it
needs torch, torchvision and pydantic, not optuna):

    python benchmarks/gpu_throughput.py --out "$OUT/gpu.json"

For ResNet-50 and ViT-B/16 at 224 px, batch 128, it measures training steps per second of
(a) a hand-written loop in float32, (b) the hand-written loop with bf16 autocast and
channels_last, (c) tlbench's ``fit_epochs`` with the same settings as (b) — tlbench's defaults
on CUDA — and (d) tlbench's feature extraction (inference, bf16). Targets: (c)/(b) ≥ 0.95 and
(c)/(a) ≥ 1.9. Inputs are synthetic tensors already on the device, so only the loops differ.
Then (e), for the ResNets: the same loop fed from JPEG files (an ImageFolder the script writes,
320x256 px) through tlbench's lazy image path: DataLoader workers decoding, random resized
crop + flip to 224, pinned memory; the gap between (e) and (c) is what loading costs. And (f)
the loop fed from the image cache (decoded once, kept on the GPU as uint8 when it fits):
``flip`` (stored at 224, flipped and normalised on the device) and ``crop_flip`` (random
resized crops cut on the device from images stored at 1.5x the crop); target (f)/(c) ≥ 0.9.
``--smoke`` runs a tiny version on CPU (a test does, so the script keeps working).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def _map_checkout() -> None:
    """On the lent GPU machine the checkout is copied, not installed: map its ``harness/``
    folder to the ``tlbench`` package (as pyproject.toml does) so the imports below work."""
    import importlib.util

    try:
        importlib.import_module("tlbench")
        return
    except ImportError:
        pass
    folder = Path(__file__).resolve().parent.parent / "harness"
    spec = importlib.util.spec_from_file_location("tlbench", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tlbench"] = module
    spec.loader.exec_module(module)


_map_checkout()
from tlbench.data.imagecache import ImageCache  # noqa: E402
from tlbench.data.preprocess import Preprocess  # noqa: E402
from tlbench.data.reader import Loading  # noqa: E402
from tlbench.data.views import ImageView  # noqa: E402
from tlbench.training.backbones import Classifier, TorchvisionResNet, VisionTransformer  # noqa: E402
from tlbench.training.features import compute_features  # noqa: E402
from tlbench.training.loop import Execution, Hook, NullReporter, fit_epochs  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(arch: str, variant: str, device: torch.device, classes: int = 1000) -> Classifier:
    torch.manual_seed(0)
    backbone = {"resnet": TorchvisionResNet, "vit": VisionTransformer}[arch](variant)
    return Classifier(backbone, backbone.new_head(classes)).to(device)


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def hand_written(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, warmup: int,
                 execution: Execution, device: torch.device) -> float:
    """The classic loop: zero_grad, forward, loss, backward, step. Images per second."""
    opt, loss_fn = optimizer(model), nn.CrossEntropyLoss()
    forward = execution.prepare(model)
    model.train()
    xb = execution.inputs(x)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with execution.autocast(device):
            loss = loss_fn(forward(xb), y)
        loss.backward()
        opt.step()
    sync(device)
    return steps * len(x) / (time.perf_counter() - start)


class StepClock(Hook):
    """Times tlbench's steps ``warmup`` … end, synchronising only at the two ends."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_step_end(self, step: int) -> None:
        if step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        self.steps = step

    def stop(self) -> None:
        sync(self.device)
        self.end = time.perf_counter()


def tlbench_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, warmup: int,
                 execution: Execution, device: torch.device) -> float:
    """``fit_epochs`` for one epoch of ``warmup + steps`` batches (the batch repeated), timed
    between the warmup and the last step; the epoch's validation pass is outside the timing."""
    n = warmup + steps
    train_x, train_y = x.repeat(n, *[1] * (x.dim() - 1)), y.repeat(n)
    clock = StepClock(warmup, device)

    class Stop(Hook):
        def on_step_end(self, step: int) -> None:
            if step == n:
                clock.stop()

    fit_epochs(model, optimizer(model), (train_x, train_y), (x[:8], y[:8]), epochs=1, batch_size=len(x),
               seed=0, device=device, reporter=NullReporter(), hooks=[clock, Stop()], execution=execution)
    return steps * len(x) / (clock.end - clock.start)


def write_jpegs(root: Path, n: int, classes: int = 10) -> None:
    """``n`` JPEGs of 320x256 (smooth noise: compresses like a photograph) in class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
        small.resize((320, 256), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)


def jpeg_loop(model: nn.Module, root: Path, *, batch: int, crop: int, warmup: int, execution: Execution,
              device: torch.device, augment: str = "crop_flip") -> float:
    """tlbench's loop over the JPEGs under ``root`` (one epoch), read as ``execution.loading``
    says (workers, or the image cache: built when the loop starts), timed after ``warmup`` steps."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    y = torch.as_tensor(folder.targets)
    view = ImageView(folder, torch.arange(len(y)), "bench").bound(Preprocess(resize=round(crop * 232 / 224),
                                                                             crop=crop), augment)
    clock = StepClock(warmup, device)
    steps = len(y) // batch

    class Stop(Hook):
        def on_step_end(self, step: int) -> None:
            if step == steps:
                clock.stop()

    fit_epochs(model, optimizer(model), (view, y), (view[:8], y[:8]), epochs=1, batch_size=batch, seed=0,
               device=device, reporter=NullReporter(), hooks=[clock, Stop()], execution=execution)
    return (steps - warmup) * batch / (clock.end - clock.start)


def feature_throughput(model: Classifier, x: torch.Tensor, *, repeats: int, execution: Execution,
                       device: torch.device) -> float:
    compute_features(model.backbone, x, device=device, execution=execution)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        compute_features(model.backbone, x, device=device, execution=execution)
    sync(device)
    return repeats * len(x) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that only checks the script works")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        cases, steps, warmup = [("resnet", "resnet18", 32, 4)], 2, 1
    else:
        cases = [("resnet", "resnet50", 224, 128), ("resnet", "resnet18", 224, 256), ("vit", "vit_b_16", 224, 128)]
        steps, warmup = args.steps, 5
    fast = Execution(bf16=True, channels_last=True)
    workers = min(16, os.cpu_count() or 1) if not args.smoke else 2
    jpeg = Execution(bf16=device.type == "cuda", channels_last=device.type == "cuda",
                     loading=Loading(workers=workers, pin_memory=device.type == "cuda"))
    rows = []
    for arch, variant, size, batch in cases:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        row = {"model": variant, "image_px": size, "batch": batch}
        row["hand_fp32"] = hand_written(make_model(arch, variant, device), x, y, steps=steps, warmup=warmup,
                                        execution=Execution(), device=device)
        row["hand_bf16_cl"] = hand_written(make_model(arch, variant, device), x, y, steps=steps, warmup=warmup,
                                           execution=fast, device=device)
        row["tlbench_bf16_cl"] = tlbench_loop(make_model(arch, variant, device), x, y, steps=steps, warmup=warmup,
                                              execution=fast, device=device)
        row["features_bf16"] = feature_throughput(make_model(arch, variant, device), x, repeats=max(2, steps // 3),
                                                  execution=fast, device=device)
        row["tlbench_vs_hand_same_settings"] = row["tlbench_bf16_cl"] / row["hand_bf16_cl"]
        row["tlbench_default_vs_hand_fp32"] = row["tlbench_bf16_cl"] / row["hand_fp32"]
        if arch == "resnet":
            with tempfile.TemporaryDirectory() as tmp:
                n = batch * (warmup + steps)
                write_jpegs(Path(tmp) / "jpegs", n)
                row["tlbench_jpeg_workers"] = jpeg_loop(make_model(arch, variant, device), Path(tmp) / "jpegs",
                                                        batch=batch, crop=size, warmup=warmup, execution=jpeg,
                                                        device=device)
                row["jpeg_workers"] = workers
                cache = ImageCache(Path(tmp) / "cache", log=lambda line: None)
                cached = dataclasses.replace(fast, loading=Loading(images=cache))
                for augment in ("flip", "crop_flip"):  # built as the loop starts, copied to the device in warmup
                    row[f"cache_{augment}"] = jpeg_loop(make_model(arch, variant, device), Path(tmp) / "jpegs",
                                                        batch=batch, crop=size, warmup=warmup, execution=cached,
                                                        device=device, augment=augment)
                    row[f"cache_{augment}_vs_tensors"] = row[f"cache_{augment}"] / row["tlbench_bf16_cl"]
                row["cache_build_s"] = cache.summary().build_seconds
        rows.append(row)
        del x, y
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "rows": rows}
    print(f"device: {name}, torch {torch.__version__}")
    print("| model | hand fp32 img/s | hand bf16+CL img/s | tlbench bf16+CL img/s | features bf16 img/s "
          "| tlbench / hand (same) | tlbench / hand fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['hand_fp32']:,.0f} | {r['hand_bf16_cl']:,.0f} | {r['tlbench_bf16_cl']:,.0f} | "
              f"{r['features_bf16']:,.0f} | {r['tlbench_vs_hand_same_settings']:.2f}× | "
              f"{r['tlbench_default_vs_hand_fp32']:.2f}× |")
    for r in rows:
        if "cache_flip" in r:
            print(f"{r['model']} fed from the image cache: flip {r['cache_flip']:,.0f} img/s "
                  f"({r['cache_flip_vs_tensors']:.2f}× tensors on the device), random resized crop + flip "
                  f"{r['cache_crop_flip']:,.0f} img/s ({r['cache_crop_flip_vs_tensors']:.2f}×); built in "
                  f"{r['cache_build_s']:.1f} s")
        if "tlbench_jpeg_workers" in r:
            print(f"{r['model']} fed from JPEG files by {r['jpeg_workers']} workers: "
                  f"{r['tlbench_jpeg_workers']:,.0f} img/s ({r['tlbench_jpeg_workers'] / r['tlbench_bf16_cl']:.2f}× "
                  f"the loop on tensors already on the device)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
