"""A task as every strategy sees it: :class:`Task` holds seeded train / validation / test (and
shifted test) :class:`Split` objects, its class names and facts; a split's fingerprint
identifies its exact content, which caches and records are keyed on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from tlbench.data.preprocess import Augment, Preprocess
from tlbench.data.views import ImageView, Inputs


@dataclass(frozen=True)
class Split:
    """One split of a task; ``fingerprint`` identifies its exact content (for image views:
    the files' identity, the positions and the preprocessing)."""

    x: Inputs
    y: torch.Tensor
    fingerprint: str

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    shifted_test: Split | None = None
    info: dict[str, object] = field(default_factory=dict)
    #: The classes' names in label order ("0".."k-1" when the dataset has none).
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def lazy(self) -> bool:
        """Whether the inputs are image files read on demand (they need preprocessing)."""
        return isinstance(self.train.x, ImageView)

    def bound(self, preprocess: Preprocess, augment: Augment = "none") -> "Task":
        """This task with its image views preprocessed for a backbone (the train split also
        augmented when training); a task of tensors is returned as is."""
        if not self.lazy:
            return self

        def bind(split: Split | None, aug: Augment = "none") -> Split | None:
            if split is None or not isinstance(split.x, ImageView):
                return split
            return split_of(split.x.bound(preprocess, aug), split.y)

        info = {**self.info, "preprocess": preprocess.describe(), "augment": augment}
        return Task(self.name, bind(self.train, augment), bind(self.val), bind(self.test), self.num_classes,
                    bind(self.shifted_test), info, self.class_names)

    def final(self) -> "Task":
        """The task evaluation runs train on: this one, or — when its split says ``final_fit:
        train+val`` — one whose train split is train followed by val (val stays as it is, so the
        runs' validation accuracy is on data they trained on; the test splits are unchanged)."""
        if self.info.get("final_fit", "train") != "train+val":
            return self
        union = split_of(concat_inputs(self.train.x, self.val.x), torch.cat([self.train.y, self.val.y]))
        return replace(self, train=union, info={**self.info, "n_train": len(union)})

    @property
    def fingerprint(self) -> str:
        parts = [self.train.fingerprint, self.val.fingerprint, self.test.fingerprint]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def concat_inputs(a: Inputs, b: Inputs) -> Inputs:
    """The inputs of ``a`` followed by those of ``b``: tensors concatenated, or one view of the
    same images (``a``'s preprocessing and augmentation)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, ImageView) and isinstance(b, ImageView) and a.source is b.source:
        return replace(a, indices=torch.cat([a.indices, b.indices]))
    raise TypeError("train and val inputs of different kinds or image sources cannot be joined")


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def split_of(x: Inputs, y: torch.Tensor) -> Split:
    if isinstance(x, ImageView):
        return Split(x, y, hashlib.sha256(f"{x.fingerprint}|{tensor_fingerprint(y)}".encode()).hexdigest()[:16])
    return Split(x, y, tensor_fingerprint(x, y))
