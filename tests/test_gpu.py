"""GPU-only checks (skipped on machines without CUDA): the CUDA defaults (bf16 autocast,
channels_last, DataLoader workers with pinned memory), training and feature extraction on
the device from image files, and the peak GPU memory in each record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def test_cuda_defaults() -> None:
    from tlbench.training.context import resolve_execution

    ex = resolve_execution(CUDA)
    assert ex.bf16 == torch.cuda.is_bf16_supported() and ex.channels_last
    assert ex.loading.workers > 0 and ex.loading.pin_memory
    assert resolve_execution(CUDA, precision="fp32", channels_last="off", workers="0").loading.workers == 0


def test_features_on_the_gpu_match_the_cpu(tiny_backbone, tiny_task) -> None:
    from tlbench.training.features import compute_features
    from tlbench.training.loop import Execution

    cpu = compute_features(tiny_backbone, tiny_task.val.x, device=torch.device("cpu"))
    gpu = compute_features(tiny_backbone, tiny_task.val.x, device=CUDA, execution=Execution(bf16=True))
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32  # returned to the host
    assert torch.allclose(gpu, cpu, atol=0.05 * cpu.abs().max().item())  # bf16 rounding only
    assert next(tiny_backbone.parameters()).device.type == "cpu"  # the shared backbone is not moved


def test_image_folder_suite_on_the_gpu_records_its_settings(tmp_path: Path) -> None:
    import pandas as pd
    from test_images import write_folder_suite

    from tlbench.cli.main import main

    suite = write_folder_suite(tmp_path, seeds=1, image_size=32, augment="crop_flip",
                               backbone="{arch: resnet, args: {variant: resnet18, small_input: true}}")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cuda", "--workers", "2"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["peak_memory_kind"] == "cuda_max_allocated").all() and (runs["peak_memory_mb"] > 0).all()
    assert (runs["channels_last"]).all() and runs["test_accuracy"].notna().all()
    # fine-tuning read the image cache (no workers); the probe read its cached features
    assert set(runs["image_inputs"]) <= {"cache", "features"} and (runs["loader_workers"] == 0).all()
    files = tmp_path / "files"
    assert main(["run", str(suite), "--out", str(files), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cuda", "--workers", "2", "--image-cache", "off"]) == 0
    runs = pd.read_csv(files / "runs.csv")
    finetuned = runs[runs["strategy"] == "full_finetune"]
    assert (finetuned["image_inputs"] == "files").all() and (finetuned["loader_workers"] == 2).all()


@pytest.mark.parametrize("share", [0.25, 0.0], ids=["resident", "streamed"])
@pytest.mark.parametrize("augment", ["flip", "crop_flip"])
def test_the_image_cache_on_the_gpu_reads_as_on_the_cpu(tmp_path: Path, share: float, augment: str) -> None:
    """Kept on the device (or streamed through pinned memory when it does not fit the share),
    the cache gives the batches the CPU gives: flips exactly, random resized crops up to the
    rounding of the resampling kernels (one uint8 step)."""
    from test_imagecache import folder_view, write_images

    from tlbench.data.imagecache import ImageCache
    from tlbench.data.preprocess import Preprocess
    from tlbench.data.reader import Loading, Reader, sequential

    write_images(tmp_path / "imgs", 48)
    view = folder_view(tmp_path / "imgs", Preprocess(resize=40, crop=32), augment)
    cache = ImageCache(tmp_path / "cache", device_share=share, log=lambda line: None)
    batches = sequential(len(view), 16)

    def read(device: torch.device) -> torch.Tensor:
        reader = Reader(view, device=device, loading=Loading(images=cache), train=True, seed=3)
        return torch.cat([xb.float().cpu() for xb in reader(batches)])

    gpu, cpu = read(CUDA), read(torch.device("cpu"))
    entry = next(e for e in cache._entries.values() if e is not None)
    assert (entry.on(CUDA, share) is not None) == (share > 0)
    step = 1 / 255 / min(view.preprocess.std)  # one uint8 step after normalisation
    tolerance = 1e-5 if augment == "flip" else 1.01 * step
    assert (gpu - cpu).abs().max().item() <= tolerance
