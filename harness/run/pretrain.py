"""Backbone materialisation: torchvision weights, local checkpoints, or source pretraining.

Source pretraining runs once; its checkpoint is cached under a key that covers the
backbone spec, the source task (data and split), the training settings and the code
version. A cache file whose checksum does not match its manifest is rebuilt, never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping

import torch
from torch import nn

from tlbench.core.atomic import building, save_atomic
from tlbench.core.codeversion import pretraining_version
from tlbench.core.errors import ConfigError
from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import Loading
from tlbench.data.splits import Task
from tlbench.suites.datasets import data_access
from tlbench.suites.schema import BackboneSpec, PretrainSpec, Suite
from tlbench.suites.splitting import build_task
from tlbench.training.backbones import (
    Backbone,
    Classifier,
    SourceHead,
    TorchvisionBackbone,
    build_backbone,
    load_checkpoint,
)
from tlbench.training.loop import Execution, NullReporter, fit_epochs, steps_per_epoch


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class PretrainCache:
    directory: Path

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.pt", self.directory / f"{key}.json"

    def load(self, key: str, into: Backbone) -> tuple[Backbone | None, str]:
        """Returns (backbone, "") on a valid hit, (None, reason) otherwise."""
        ckpt, manifest = self.paths(key)
        if not ckpt.is_file() or not manifest.is_file():
            return None, "not cached"
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("sha256") != file_sha256(ckpt):
                return None, f"cache file {ckpt} is corrupt (checksum mismatch); rebuilding"
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            into.load_state_dict(state["backbone"])
            head = state.get("head")  # entries written before heads were kept have none
            if isinstance(head, dict) and {"weight", "bias"} <= set(head):
                accuracy = meta.get("source_val_accuracy")
                into.source_head = SourceHead(head["weight"], head["bias"],
                                              float(accuracy) if isinstance(accuracy, (int, float)) else None)
        except Exception as err:  # noqa: BLE001 - anything unreadable is rebuilt
            return None, f"cache file {ckpt} is unreadable ({type(err).__name__}); rebuilding"
        return into, ""

    def save(self, key: str, backbone: Backbone, meta: dict[str, object]) -> None:
        """Writes the backbone's weights and its source head (when it has one) with ``meta``."""
        try:
            self._write(key, backbone, meta)
        except OSError as err:
            raise ConfigError(f"--cache-dir {self.directory.parent}: cannot write the pretrained "
                              f"checkpoint ({err.strerror or err}); give a writable directory") from None

    def _write(self, key: str, backbone: Backbone, meta: dict[str, object]) -> None:
        ckpt, manifest = self.paths(key)
        state: dict[str, object] = {"backbone": backbone.state_dict()}
        if backbone.source_head is not None:
            state["head"] = {"weight": backbone.source_head.weight, "bias": backbone.source_head.bias}
        save_atomic(state, ckpt)
        manifest.write_text(json.dumps({**meta, "sha256": file_sha256(ckpt)}, indent=2))


def pretrain_key(name: str, spec: BackboneSpec, suite: Suite, *, data: str | None = None) -> str:
    """What shapes a pretrained checkpoint: architecture, pretraining settings, the source
    task's spec, the code, and for image files (whose content the spec does not fix) the
    source task's ``data`` fingerprint."""
    assert spec.pretrain is not None
    fields = {
        "arch": spec.arch, "args": spec.args, "pretrain": spec.pretrain.model_dump(),
        "source": suite.task_spec(spec.pretrain.task).model_dump(exclude={"backbones", "shift"}),
        "code": pretraining_version(),
    }
    blob = json.dumps({**fields, "data": data} if data is not None else fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@contextlib.contextmanager
def _prefixed(where: str) -> Iterator[None]:
    """Prefixes the ConfigErrors raised inside with the suite file and field."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def checkpoint_path(name: str, suite: Suite) -> Path:
    """A backbone's checkpoint path; relative paths are relative to the suite file."""
    path = Path(suite.backbones[name].checkpoint or "")
    return path if path.is_absolute() else Path(suite.path).parent / path


def check_weights_name(name: str, suite: Suite) -> None:
    """Published weights need an architecture that has them, and a name it knows."""
    spec = suite.backbones[name]
    assert spec.weights is not None
    with _prefixed(f"{suite.path}: backbones.{name}.weights"):
        spec.arch_class.check_weights(spec.typed_args(), spec.weights)


def preprocess_for(name: str, suite: Suite, image_size: "int | Literal['native'] | None" = None, *,
                   stretch: bool = False) -> Preprocess:
    """How image files are prepared for backbone ``name``: what its published weights expect
    (resolution, resize, normalisation, interpolation: ``weights.transforms()`` for
    torchvision, the pretrained config for timm), else torchvision's ImageNet default
    (resize 256, crop 224); ``image_size`` (a task's) overrides the crop size, ``stretch`` (a task's
    ``image_resize: stretch``) resizes both sides to it instead of resizing and cropping."""
    spec = suite.backbones[name]
    return spec.arch_class.weights_preprocess(spec.typed_args(), spec.weights).at(image_size).stretched(stretch)


def check_backbone_source(name: str, suite: Suite) -> None:
    """Checks a backbone's weights source before any training: the weights name, or that
    the checkpoint exists and fits the architecture."""
    spec = suite.backbones[name]
    cls = spec.arch_class
    if issubclass(cls, TorchvisionBackbone):
        with _prefixed(f"{suite.path}: backbones.{name}.args.variant"):
            cls.check_variant(spec.typed_args().variant)  # type: ignore[attr-defined]
    if spec.weights is not None:
        check_weights_name(name, suite)
    if spec.checkpoint is not None:
        with _prefixed(f"{suite.path}: backbones.{name}.checkpoint"):
            load_checkpoint(build_backbone(spec.arch, spec.typed_args()), checkpoint_path(name, suite))


def materialize_backbone(name: str, suite: Suite, *, cache_dir: Path, device: torch.device,
                         log: Callable[[str], None] = print, loading: Loading = Loading(),
                         progress_every: float = 30.0, built: Mapping[str, Task] | None = None) -> Backbone:
    """Builds backbone ``name`` of ``suite`` with its weights (pretraining if needed, reading
    an image-file source task with ``loading``'s workers; always in float32, so the cached
    checkpoint does not depend on the device's precision). ``built``: tasks the plan already
    built (its source task is taken from there rather than built again)."""
    spec = suite.backbones[name]
    where = f"{suite.path}: backbones.{name}"
    backbone = build_backbone(spec.arch, spec.typed_args(), where=where)
    if spec.weights is not None:
        check_weights_name(name, suite)
        with _prefixed(f"{where}.weights"):
            return spec.arch_class.with_weights(spec.typed_args(), spec.weights)
    if spec.checkpoint is not None:
        with _prefixed(f"{where}.checkpoint"):
            return load_checkpoint(backbone, checkpoint_path(name, suite))
    if spec.pretrain is None:
        return backbone
    task = source_task(name, suite, built=built)
    key = pretrain_key(name, spec, suite, data=task.fingerprint if task.lazy else None)
    cache = PretrainCache(cache_dir / "backbones")
    with building(cache.paths(key)[0]):  # workers starting together pretrain it once; the others wait
        return _cached_or_pretrained(name, spec, key, cache, backbone, task, device=device, log=log, loading=loading,
                                     progress_every=progress_every)


def _cached_or_pretrained(name: str, spec: BackboneSpec, key: str, cache: "PretrainCache", backbone: Backbone,
                          task: Task, *, device: torch.device, log: Callable[[str], None], loading: Loading,
                          progress_every: float) -> Backbone:
    hit, reason = cache.load(key, backbone)
    if hit is not None:
        log(f"reusing cached pretrained backbone {name} ({cache.paths(key)[0]})")
        hit.weights_id = f"pretrained:{key}"
        return hit
    if reason != "not cached":
        log(reason)
    log(f"pretraining backbone {name} on {spec.pretrain.task} ({spec.pretrain.epochs} epochs) …")
    start = time.perf_counter()
    progress = PretrainProgress(f"pretraining {name}", spec.pretrain.epochs, len(task.train), log,
                                every=progress_every)
    val_acc, head = pretrain(backbone, task, spec.pretrain, device=device, loading=loading, reporter=progress)
    seconds = time.perf_counter() - start
    backbone = backbone.cpu()
    backbone.source_head = SourceHead.of(head.cpu(), val_acc)
    cache.save(key, backbone, {"backbone": name, "source_task": spec.pretrain.task,
                               "source_val_accuracy": val_acc, "seconds": seconds,
                               "code_version": pretraining_version(), "created": time.time()})
    log(f"pretrained backbone {name} on {spec.pretrain.task} in {seconds:.1f} s "
        f"(source val accuracy {val_acc:.3f}); cached as {key}")
    backbone.weights_id = f"pretrained:{key}"
    return backbone


def source_task(name: str, suite: Suite, *, built: Mapping[str, Task] | None = None) -> Task:
    """Backbone ``name``'s source task, as the backbone reads it (from ``built`` when it holds it)."""
    p = suite.backbones[name].pretrain
    assert p is not None
    source = suite.task_spec(p.task)
    task = (built or {}).get(p.task)
    if task is None:
        task = build_task(p.task, source, where=suite.task_where(p.task), data=data_access(suite))
    return task.bound(preprocess_for(name, suite, source.image_size, stretch=source.image_resize == "stretch"),
                      source.augment)


class PretrainProgress(NullReporter):
    """Logs pretraining's progress (epoch, source val accuracy, images/s) after the first
    epoch and then at most every ``every`` seconds: a batch job's log shows it is alive
    (the last epoch is the caller's closing line)."""

    def __init__(self, what: str, epochs: int, images: int, log: Callable[[str], None], *,
                 every: float = 30.0) -> None:
        super().__init__()
        self.what, self.epochs, self.images, self.log, self.every = what, epochs, images, log, every
        self.start = self.last = time.perf_counter()

    def report(self, epoch: int, value: float) -> None:
        super().report(epoch, value)
        now = time.perf_counter()
        done = len(self.history)
        if done < self.epochs and (done == 1 or now - self.last >= self.every):
            self.last = now
            rate = done * self.images / max(now - self.start, 1e-9)
            self.log(f"{self.what}: epoch {done}/{self.epochs}, source val accuracy {value:.3f}, "
                     f"{rate:,.0f} images/s")


def pretrain(backbone: Backbone, task: Task, p: PretrainSpec, *, device: torch.device,
             loading: Loading = Loading(), reporter: NullReporter | None = None) -> tuple[float, nn.Linear]:
    """Supervised training on the source ``task`` (AdamW + one-cycle); returns source val
    accuracy (``reporter`` receives each epoch's) and the source head it trained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        model = Classifier(backbone, backbone.new_head(task.num_classes)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        total = p.epochs * steps_per_epoch(len(task.train), p.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=total)
        reporter = reporter or NullReporter()
        fit_epochs(model, opt, (task.train.x, task.train.y), (task.val.x, task.val.y),
                   epochs=p.epochs, batch_size=p.batch_size, seed=p.seed, device=device,
                   reporter=reporter, scheduler=sched, execution=Execution(loading=loading))
    return reporter.history[-1], model.head
