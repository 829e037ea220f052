"""Tasks: seeded, recorded train / val / test (and shifted test) splits.

A split's inputs are a tensor (offline datasets) or an :class:`~tlbench.data.views.ImageView`
(image files, read lazily); a task of image views is bound to a backbone's preprocessing
with :meth:`Task.bound` before anything reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tlbench.core.errors import ConfigError
from tlbench.data.splits import Task, split_of, tensor_fingerprint
from tlbench.data.views import ImageView, Inputs
from tlbench.suites.datasets import DataAccess, DataPool, load_pool
from tlbench.suites.pools import name_list
from tlbench.suites.schema import ShiftSpec, SplitSpec, TaskSpec


def _per_class(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Indices of each class, in a seeded random order."""
    order = torch.randperm(len(y), generator=gen)
    ys = y[order]
    return [order[ys == c] for c in range(num_classes)]


def _restrict(x: Inputs, y: torch.Tensor, classes: list[int] | None,
              num_classes: int) -> tuple[Inputs, torch.Tensor, torch.Tensor]:
    """The examples of ``classes`` (relabelled 0..k-1) and their positions in ``x``."""
    if classes is None:
        return x, y, torch.arange(len(y))
    keep = torch.isin(y, torch.tensor(classes))
    remap = torch.full((num_classes,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return x[keep], remap[y[keep]], torch.nonzero(keep).flatten()


def build_task(name: str, spec: TaskSpec, *, where: str, data: DataAccess | None = None) -> Task:
    """Materialises a task from its spec; raises ConfigError for impossible splits and for
    data that is missing (image datasets under ``data``'s root)."""
    pool = load_pool(spec.dataset, spec.typed_args(where), where=where, data=data)
    classes = _check_classes(pool, spec.classes, where, dataset=spec.dataset)
    num_classes = len(classes) if classes else pool.num_classes
    sp = spec.split
    _check_protocol(pool, spec, where)
    labels = [pool.class_names[c] for c in classes or range(num_classes)]
    gen = torch.Generator().manual_seed(sp.seed)
    x, y, positions = _restrict(pool.x, pool.y, classes, pool.num_classes)
    official_val = torch.zeros(len(y), dtype=torch.bool)
    if pool.val_index is not None and sp.protocol != "default":  # default pools train and val
        official_val = torch.isin(positions, pool.val_index)
    in_train = torch.nonzero(~official_val).flatten()
    if pool.test_x is not None and pool.test_y is not None:
        test_x, test_y, _ = _restrict(pool.test_x, pool.test_y, classes, pool.num_classes)
        rest = [in_train[idx] for idx in _per_class(y[in_train], num_classes, gen)]
    else:
        rest, test_idx = [], []  # an official val split (if any) is neither test nor train
        for c, idx in enumerate(_per_class(y[in_train], num_classes, gen)):
            idx = in_train[idx]
            n_test = _test_size(len(idx), sp, label=labels[c], where=where)
            test_idx.append(idx[:n_test])
            rest.append(idx[n_test:])
        t = torch.cat(test_idx)
        test_x, test_y = x[t], y[t]
    if sp.max_test is not None and len(test_y) > sp.max_test:
        keep = torch.randperm(len(test_y), generator=gen)[: sp.max_test]
        test_x, test_y = test_x[keep], test_y[keep]
    if sp.protocol == "vtab1k":
        tr, va = _vtab1k(torch.cat(rest), torch.nonzero(official_val).flatten(), sp.seed, where=where)
    elif official_val.any():
        for idx, label in zip(rest, labels):
            if sp.shots is not None and sp.shots > len(idx):
                raise ConfigError(f"{where}.split.shots: {sp.shots} shots requested but class {label!r} has only "
                                  f"{len(idx)} official training examples; allowed: 1..{len(idx)}")
        tr = torch.cat([idx[: sp.shots] if sp.shots else idx for idx in rest])
        va = torch.nonzero(official_val).flatten()
    else:
        tr, va = _train_val(rest, sp, labels, where)
    test = split_of(test_x, test_y)
    shifted = split_of(apply_shift(test_x, spec.shift, where=f"{where}.shift"), test_y) if spec.shift else None
    info = {"dataset": spec.dataset, "split_seed": sp.seed, "protocol": sp.protocol, "shots": sp.shots,
            "n_train": len(tr), "n_val": len(va), "n_test": len(test_y),
            "train_indices": tensor_fingerprint(tr), "val_indices": tensor_fingerprint(va),
            "classes": classes, "shift": spec.shift.model_dump() if spec.shift else None}
    if sp.final_fit != "train":
        info["final_fit"] = sp.final_fit
    if spec.group is not None:
        info["group"] = spec.group
    if spec.published is not None:
        info["reference"] = spec.published
    if spec.swept is not None:  # a task of a sweep: its family, the swept field and this task's value
        family, field, value = spec.swept
        info["sweep"] = {"family": family, "field": field, "value": value}
    return Task(name, split_of(x[tr], y[tr]), split_of(x[va], y[va]), test, num_classes, shifted, info,
                tuple(labels))


def _train_val(rest: list[torch.Tensor], sp: SplitSpec, labels: list[str],
               where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the first ``val_per_class`` (or ``val_fraction``) examples validate, the
    rest (or ``shots`` of them) train."""
    val_idx, train_idx = [], []
    for idx, label in zip(rest, labels):
        n_val = _check_class_size(len(idx), sp, label=label, where=where)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:][: sp.shots] if sp.shots else idx[n_val:])
    return torch.cat(train_idx), torch.cat(val_idx)


def _test_size(n: int, sp: SplitSpec, *, label: str, where: str) -> int:
    """How many of a class's ``n`` examples are held out for test (no official test split)."""
    if sp.train_per_class is None:
        return max(1, round(n * sp.test_fraction))
    if sp.train_per_class >= n:
        raise ConfigError(f"{where}.split.train_per_class: {sp.train_per_class} requested but class {label!r} has "
                          f"{n} examples; allowed: 1..{n - 1} (at least one is test)")
    return n - sp.train_per_class


def _check_protocol(pool: DataPool, spec: TaskSpec, where: str) -> None:
    lazy = isinstance(pool.x, ImageView)
    sp = spec.split
    if sp.train_per_class is not None and pool.test_x is not None:
        raise ConfigError(f"{where}.split.train_per_class: dataset {spec.dataset!r} has an official test split; "
                          f"train_per_class applies to datasets without one (remove it)")
    if sp.protocol == "official" and pool.val_index is not None and sp.val_per_class is not None:
        raise ConfigError(f"{where}.split.val_per_class: dataset {spec.dataset!r} has an official val split, "
                          f"which protocol official uses (remove val_per_class, or use protocol default)")
    if spec.split.protocol == "official" and pool.test_x is None:
        raise ConfigError(f"{where}.split.protocol: dataset {spec.dataset!r} has no official test split; "
                          f"allowed for it: default, vtab1k")
    if lazy and spec.shift is not None:
        raise ConfigError(f"{where}.shift: corruptions apply to in-memory datasets; {spec.dataset!r} is read "
                          f"from image files (remove shift, or add the corrupted images as their own task)")
    if not lazy and spec.augment != "none":
        raise ConfigError(f"{where}.augment: {spec.augment!r} applies to image-file datasets; {spec.dataset!r} "
                          f"is in-memory tensors; allowed for it: none")
    if not lazy and spec.image_size is not None:
        raise ConfigError(f"{where}.image_size: applies to image-file datasets; {spec.dataset!r} is in-memory "
                          f"tensors; remove it")
    if not lazy and spec.image_resize != "crop":
        raise ConfigError(f"{where}.image_resize: {spec.image_resize!r} applies to image-file datasets; "
                          f"{spec.dataset!r} is in-memory tensors; remove it")


VTAB_TRAIN, VTAB_VAL = 800, 200


def _vtab1k(pool_idx: torch.Tensor, val_idx: torch.Tensor, seed: int, *,
            where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """VTAB-1k (Zhai et al. 2019): 800 training and 200 validation examples drawn uniformly
    at random (not per class) with the split's seed: both from the training pool, or, when
    the dataset has an official validation split (``val_idx``), the 200 from it as VTAB does."""
    gen = torch.Generator().manual_seed(seed)
    official_val = len(val_idx) > 0
    need = VTAB_TRAIN if official_val else VTAB_TRAIN + VTAB_VAL
    checks = [("training pool", pool_idx, need)]
    if official_val:
        checks.append(("official validation split", val_idx, VTAB_VAL))
    for name, idx, n in checks:
        if len(idx) < n:
            raise ConfigError(f"{where}.split.protocol: vtab1k draws {n} examples from the {name}, which "
                              f"has {len(idx)} (after any test carve-out and class subset)")
    order = pool_idx.sort().values  # independent of the per-class grouping above
    chosen = order[torch.randperm(len(order), generator=gen)[:need]]
    if not official_val:
        return chosen[:VTAB_TRAIN], chosen[VTAB_TRAIN:]
    val = val_idx.sort().values
    return chosen, val[torch.randperm(len(val), generator=gen)[:VTAB_VAL]]


def _check_class_size(n: int, sp: SplitSpec, *, label: str, where: str) -> int:
    """Validates one class's split sizes; returns its number of validation examples."""
    if n < 2:
        raise ConfigError(f"{where}.split: class {label!r} has {n} example(s) left after the test split; "
                          f"each class needs at least 2 (one to validate, one to train)")
    n_val = sp.val_per_class or max(1, math.floor(n * sp.val_fraction))
    if n_val >= n:
        raise ConfigError(f"{where}.split.val_per_class: {n_val} requested but class {label!r} has "
                          f"{n} examples after the test split; allowed: 1..{n - 1}")
    if sp.shots is not None and sp.shots > n - n_val:
        raise ConfigError(f"{where}.split.shots: {sp.shots} shots requested but class {label!r} has "
                          f"only {n - n_val} training examples after test/val; allowed: 1..{n - n_val}")
    return n_val


def _check_classes(pool: DataPool, classes: Sequence[int | str] | None, where: str, *,
                   dataset: str = "") -> list[int] | None:
    """The pool's indices of a task's ``classes``: an int is an index into the pool's class
    names (the sorted class folder names of an image folder), a string names a class."""
    if classes is None:
        return None
    names = list(pool.class_names)
    chosen = [_class_index(names, c, where, dataset) if isinstance(c, str) else c for c in classes]
    bad = [c for c in chosen if not 0 <= c < pool.num_classes]
    repeated = sorted({c for c in chosen if chosen.count(c) > 1})
    if bad or repeated or len(chosen) < 2:
        why = (f"{name_list([str(c) for c in bad])} out of range" if bad else
               f"{name_list([names[c] for c in repeated])} chosen twice" if repeated else "fewer than two")
        raise ConfigError(f"{where}.classes: {list(classes)} is not a list of at least two distinct classes "
                          f"({why}; indices in 0..{pool.num_classes - 1} or class names)")
    return chosen


def _class_index(names: list[str], name: str, where: str, dataset: str) -> int:
    """The index of the class called ``name``; a ConfigError when none is, or several are."""
    found = [i for i, n in enumerate(names) if n == name]
    if not found:
        of = f"dataset {dataset!r}" if dataset else "the dataset"
        raise ConfigError(f"{where}.classes: {name!r} is not a class name of {of}; available: {name_list(names)}")
    if len(found) > 1:
        raise ConfigError(f"{where}.classes: {name!r} names classes {found}; select one by its index")
    return found[0]


def apply_shift(x: torch.Tensor, shift: ShiftSpec | None, *, where: str = "shift") -> torch.Tensor:
    """Applies a deterministic corruption: additive noise, rotation (2-D) or translation."""
    if shift is None:
        return x
    gen = torch.Generator().manual_seed(shift.seed)
    if shift.kind == "noise":
        return x + shift.severity * torch.randn(x.shape, generator=gen)
    if shift.kind == "translation":  # shift by up to `severity` of the length, per example
        out = torch.empty_like(x)
        length = x.shape[-1]
        offsets = torch.randint(-int(shift.severity * length), int(shift.severity * length) + 1,
                                (len(x),), generator=gen)
        for i, off in enumerate(offsets.tolist()):
            out[i] = torch.roll(x[i], off, dims=-1)
        return out
    if x.dim() != 4:
        raise ConfigError(f"{where}.kind: rotation needs 2-D images, this task's inputs have shape "
                          f"{tuple(x.shape[1:])}; allowed for it: noise, translation")
    angles = (torch.rand(len(x), generator=gen) * 2 - 1) * math.radians(shift.severity)
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
