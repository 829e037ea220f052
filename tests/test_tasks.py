"""The split protocol of suites/tasks.py and the dataset pools of suites/datasets.py.

Exact index bookkeeping is checked on a synthetic pool whose rows encode their own
index; the real datasets (digits, glyphs, mnist1d) are checked by row content.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch

import tlbench.suites.datasets as datasets
import tlbench.suites.splitting as tasks
from tlbench.core.errors import ConfigError
from tlbench.data.splits import Split, Task
from tlbench.suites.datasets import DataPool, load_pool
from tlbench.suites.schema import ShiftSpec, SplitSpec, TaskSpec
from tlbench.suites.splitting import apply_shift, build_task

M1D = {"num_samples": 600, "seed": 3}          # 480 pool rows, 120 official test rows
GLYPHS = {"n": 600, "classes": "digits", "seed": 1}


# --------------------------------------------------------------------------- helpers


def synthetic_pool(counts: list[int], *, official_test: int = 0) -> DataPool:
    """A pool whose row i is filled with the value i (test rows: -(i + 1)); class c has counts[c] rows."""
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(123))]
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1).expand(-1, 1, 3).clone()
    names = tuple(f"c{c}" for c in range(len(counts)))
    if not official_test:
        return DataPool(x, y, names)
    ty = torch.arange(official_test) % len(counts)
    tx = -(torch.arange(official_test, dtype=torch.float32) + 1).view(-1, 1, 1).expand(-1, 1, 3).clone()
    return DataPool(x, y, names, tx, ty)


def use_pool(monkeypatch: pytest.MonkeyPatch, pool: DataPool) -> None:
    """Makes build_task draw from ``pool`` whatever the spec's (registered) dataset."""
    monkeypatch.setattr(tasks, "load_pool", lambda name, args, **kwargs: pool)


def indices(split: Split) -> set[int]:
    """The pool row indices of a split built from a synthetic pool."""
    ids = split.x[:, 0, 0].long().tolist()
    assert len(set(ids)) == len(ids), "a row appears twice in one split"
    return set(ids)


def rows(x: torch.Tensor) -> set[bytes]:
    """The set of rows of ``x`` as bytes, for content-based disjointness checks."""
    flat = x.reshape(len(x), -1).contiguous().numpy()
    return {r.tobytes() for r in flat}


def counts(y: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def build(dataset: str, args: dict[str, Any] | None = None, **kw: Any) -> Task:
    """Builds a task from a dataset with the given TaskSpec fields."""
    split = kw.pop("split", {})
    spec = TaskSpec(dataset=dataset, args=args or {}, split=SplitSpec(**split), **kw)
    return build_task("t", spec, where="test: tasks.t")


def assert_same(a: Task, b: Task) -> None:
    """Two tasks hold identical tensors and fingerprints in every split."""
    for name in ("train", "val", "test", "shifted_test"):
        sa, sb = getattr(a, name), getattr(b, name)
        if sa is None or sb is None:
            assert sa is sb
            continue
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
        assert sa.fingerprint == sb.fingerprint
    assert a.fingerprint == b.fingerprint


# --------------------------------------------------- split protocol, synthetic pool


def test_fraction_splits_partition_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without shots, test / val / train are disjoint, cover the pool and are stratified."""
    class_sizes = [40, 33, 27, 50]
    use_pool(monkeypatch, synthetic_pool(class_sizes))
    t = build("digits", split={"seed": 5, "test_fraction": 0.3, "val_fraction": 0.2})
    tr, va, te = indices(t.train), indices(t.val), indices(t.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(sum(class_sizes)))
    n_test = [max(1, round(n * 0.3)) for n in class_sizes]
    n_val = [max(1, math.floor((n - k) * 0.2)) for n, k in zip(class_sizes, n_test)]
    assert counts(t.test.y, 4) == n_test
    assert counts(t.val.y, 4) == n_val
    assert counts(t.train.y, 4) == [n - k - v for n, k, v in zip(class_sizes, n_test, n_val)]
    assert t.num_classes == 4 and t.input_shape == (1, 3)
    assert t.info["n_train"] == len(t.train) and t.info["n_val"] == len(t.val)
    assert t.info["n_test"] == len(t.test) and t.info["split_seed"] == 5


def test_labels_follow_their_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every split keeps each row's own label (x and y are indexed together)."""
    pool = synthetic_pool([12, 15, 9])
    use_pool(monkeypatch, pool)
    t = build("digits", split={"seed": 2, "shots": 3, "val_per_class": 2})
    for split in (t.train, t.val, t.test):
        ids = split.x[:, 0, 0].long()
        assert torch.equal(pool.y[ids], split.y)


def test_shots_and_val_per_class_exact_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """shots per class in train and val_per_class per class in val, exactly."""
    use_pool(monkeypatch, synthetic_pool([30, 25, 40, 22, 31]))
    t = build("digits", split={"seed": 1, "shots": 4, "val_per_class": 3, "test_fraction": 0.4})
    assert counts(t.train.y, 5) == [4] * 5 and len(t.train) == 4 * 5
    assert counts(t.val.y, 5) == [3] * 5 and len(t.val) == 3 * 5
    assert not (indices(t.train) & indices(t.val)) and not (indices(t.train) & indices(t.test))
    assert not (indices(t.val) & indices(t.test))
    assert t.info["shots"] == 4


def test_shots_limit_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The largest class-fitting shot count works; one more is a ConfigError naming split.shots."""
    use_pool(monkeypatch, synthetic_pool([20, 30]))
    # class c0: 20 rows, 6 test (0.3), 2 val -> 12 training examples left.
    t = build("digits", split={"shots": 12, "val_per_class": 2})
    assert counts(t.train.y, 2) == [12, 12]
    with pytest.raises(ConfigError, match=r"test: tasks\.t\.split\.shots: 13 shots .*'c0'.*allowed: 1\.\.12"):
        build("digits", split={"shots": 13, "val_per_class": 2})


def test_official_test_split_is_used_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an official test split, test is exactly that split and train/val come from the pool."""
    use_pool(monkeypatch, synthetic_pool([20, 20, 20], official_test=30))
    t = build("digits", split={"seed": 4, "val_per_class": 5, "test_fraction": 0.5})
    assert len(t.test) == 30 and (t.test.x < 0).all()
    assert indices(t.train) | indices(t.val) == set(range(60))
    assert counts(t.val.y, 3) == [5, 5, 5] and counts(t.train.y, 3) == [15, 15, 15]


def test_max_test_caps_the_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_test keeps a seeded subset of the test split; train and val do not change."""
    use_pool(monkeypatch, synthetic_pool([30, 30, 30]))
    full = build("digits", split={"seed": 3, "val_per_class": 4})
    capped = build("digits", split={"seed": 3, "val_per_class": 4, "max_test": 10})
    assert len(full.test) == 27 and len(capped.test) == 10
    assert indices(capped.test) <= indices(full.test)
    assert torch.equal(capped.train.x, full.train.x) and torch.equal(capped.val.x, full.val.x)
    assert_same(capped, build("digits", split={"seed": 3, "val_per_class": 4, "max_test": 10}))
    big = build("digits", split={"seed": 3, "val_per_class": 4, "max_test": 1000})
    assert torch.equal(big.test.x, full.test.x)


def test_split_seed_changes_the_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed → identical split; another seed → another train set (same sizes)."""
    use_pool(monkeypatch, synthetic_pool([25, 25, 25]))
    split = {"seed": 0, "shots": 3, "val_per_class": 3}
    a, b = build("digits", split=split), build("digits", split=split)
    assert_same(a, b)
    c = build("digits", split={**split, "seed": 1})
    assert indices(c.train) != indices(a.train)
    assert c.train.fingerprint != a.train.fingerprint and c.fingerprint != a.fingerprint
    assert counts(c.train.y, 3) == counts(a.train.y, 3)


# ------------------------------------------------------------------- real datasets


def test_digits_task_sizes_and_fingerprints() -> None:
    """The quick suite's digits-2shot protocol: 2 shots, 5 val per class, half of each class tested."""
    from sklearn.datasets import load_digits

    class_sizes = np.bincount(load_digits().target).tolist()
    t = build("digits", split={"seed": 0, "shots": 2, "val_per_class": 5, "test_fraction": 0.5})
    assert len(t.train) == 2 * 10 and counts(t.train.y, 10) == [2] * 10
    assert len(t.val) == 5 * 10 and counts(t.val.y, 10) == [5] * 10
    assert counts(t.test.y, 10) == [max(1, round(n * 0.5)) for n in class_sizes]
    assert t.input_shape == (1, 8, 8) and t.num_classes == 10
    fps = {t.train.fingerprint, t.val.fingerprint, t.test.fingerprint}
    assert len(fps) == 3
    pool = load_pool("digits", {})
    if len(rows(pool.x)) == len(pool.x):  # only meaningful when the pool has no duplicate images
        tr, va, te = rows(t.train.x), rows(t.val.x), rows(t.test.x)
        assert not (tr & va) and not (tr & te) and not (va & te)


def test_mnist1d_splits_disjoint_and_official_test() -> None:
    """mnist1d: test is the official split (num_samples * (1 - train_split)); no row is shared."""
    pool = load_pool("mnist1d", M1D)
    t = build("mnist1d", M1D, split={"seed": 0, "shots": 10, "val_per_class": 10})
    assert len(t.test) == round(M1D["num_samples"] * (1 - 0.8)) == 120
    assert torch.equal(t.test.x, pool.test_x) and torch.equal(t.test.y, pool.test_y)
    assert len(t.train) == 100 and len(t.val) == 100 and t.input_shape == (1, 40)
    all_rows = rows(torch.cat([pool.x, pool.test_x]))
    assert len(all_rows) == len(pool.x) + len(pool.test_x)  # sanity: rows are unique
    tr, va, te = rows(t.train.x), rows(t.val.x), rows(t.test.x)
    assert len(tr) == 100 and len(va) == 100
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va <= rows(pool.x)


@pytest.mark.parametrize("train_split", [0.75, 0.9])
def test_mnist1d_train_split_arg_sets_test_size(train_split: float) -> None:
    """The generator's train_split decides the official test size."""
    args = {"num_samples": 400, "train_split": train_split, "seed": 0}
    t = build("mnist1d", args, split={"val_per_class": 2})
    assert len(t.test) == round(400 * (1 - train_split))
    assert len(t.train) + len(t.val) == round(400 * train_split)


def test_glyphs_splits_disjoint() -> None:
    """glyphs (no official test split): test / val / train share no image."""
    pool = load_pool("glyphs", GLYPHS)
    assert len(rows(pool.x)) == len(pool.x)  # sanity: rendered images are unique
    t = build("glyphs", GLYPHS, split={"seed": 2, "test_fraction": 0.2, "val_fraction": 0.1})
    tr, va, te = rows(t.train.x), rows(t.val.x), rows(t.test.x)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr) + len(va) + len(te) == len(pool.x)


def test_mnist1d_max_test() -> None:
    """max_test caps the official test split to a subset of it (and the shifted copy too)."""
    pool = load_pool("mnist1d", M1D)
    t = build("mnist1d", M1D, split={"seed": 0, "val_per_class": 5, "max_test": 50},
              shift={"kind": "noise", "severity": 0.3})
    assert len(t.test) == 50 and t.shifted_test is not None and len(t.shifted_test) == 50
    assert rows(t.test.x) <= rows(pool.test_x)
    assert t.info["n_test"] == 50


def test_determinism_across_fresh_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regenerating mnist1d from scratch gives the same split tensors and fingerprints."""
    kw: dict[str, Any] = {"split": {"seed": 7, "shots": 5, "val_per_class": 5},
                          "shift": {"kind": "translation", "severity": 0.1}}
    a = build("mnist1d", M1D, **kw)
    monkeypatch.setattr(datasets, "_POOLS", {})
    b = build("mnist1d", M1D, **kw)
    assert_same(a, b)
    c = build("mnist1d", M1D, **{**kw, "split": {**kw["split"], "seed": 8}})
    assert not torch.equal(c.train.x, a.train.x) and c.train.fingerprint != a.train.fingerprint
    assert torch.equal(c.test.x, a.test.x)  # the official test split does not depend on the seed


def test_class_subset_is_remapped() -> None:
    """classes [3, 5, 8] → labels 0, 1, 2 holding images of digits 3, 5 and 8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    target = torch.tensor(bunch.target)
    t = build("digits", classes=[3, 5, 8], split={"seed": 0, "shots": 4, "val_per_class": 3})
    assert t.num_classes == 3 and t.info["classes"] == [3, 5, 8]
    assert counts(t.train.y, 3) == [4, 4, 4] and counts(t.val.y, 3) == [3, 3, 3]
    n_sub = [int((target == d).sum()) for d in (3, 5, 8)]
    assert counts(t.test.y, 3) == [max(1, round(n * 0.3)) for n in n_sub]
    flat = images.reshape(len(images), -1)
    for split in (t.train, t.val, t.test):
        assert set(split.y.tolist()) <= {0, 1, 2}
        for xi, yi in zip(split.x.reshape(len(split), -1), split.y.tolist()):
            matches = target[(flat == xi).all(1)]
            assert len(matches) and int(matches[0]) == [3, 5, 8][yi]


def test_class_subset_with_official_test() -> None:
    """A class subset also restricts and remaps mnist1d's official test split."""
    pool = load_pool("mnist1d", M1D)
    assert pool.test_y is not None
    t = build("mnist1d", M1D, classes=[7, 1], split={"val_per_class": 3})
    keep = (pool.test_y == 7) | (pool.test_y == 1)
    assert len(t.test) == int(keep.sum())
    assert torch.equal(t.test.y, (pool.test_y[keep] == 1).long())  # 7 → 0, 1 → 1
    assert torch.equal(t.test.x, pool.test_x[keep])


@pytest.mark.parametrize("classes", [[3, 3], [4], [0, 10], [-1, 2]])
def test_bad_class_subset(classes: list[int]) -> None:
    """Duplicates, a single class or out-of-range indices are ConfigErrors naming .classes."""
    with pytest.raises(ConfigError, match=r"test: tasks\.t\.classes: .*0\.\.9"):
        build("digits", classes=classes)


# ---------------------------------------------------------------------------- shifts


def test_shifted_test_matches_test() -> None:
    """The shifted test set has the test labels and shape, different inputs, and is deterministic."""
    spec = {"split": {"seed": 0, "shots": 2, "val_per_class": 5, "test_fraction": 0.5},
            "shift": {"kind": "rotation", "severity": 25}}
    t = build("digits", **spec)
    s = t.shifted_test
    assert s is not None
    assert torch.equal(s.y, t.test.y) and s.x.shape == t.test.x.shape
    assert not torch.equal(s.x, t.test.x) and s.fingerprint != t.test.fingerprint
    again = build("digits", **spec).shifted_test
    assert again is not None and torch.equal(again.x, s.x) and again.fingerprint == s.fingerprint
    other = build("digits", **{**spec, "shift": {"kind": "rotation", "severity": 25, "seed": 1}})
    assert other.shifted_test is not None and not torch.equal(other.shifted_test.x, s.x)
    assert build("digits", split=spec["split"]).shifted_test is None
    # The shift changes the scored test copy only, never the task fingerprint's splits.
    assert torch.equal(other.test.x, t.test.x) and other.fingerprint == t.fingerprint


def test_apply_shift_none_is_identity() -> None:
    x = torch.randn(4, 1, 8, 8)
    assert apply_shift(x, None) is x


def test_noise_shift() -> None:
    """Additive Gaussian noise of std ``severity``; seeded."""
    x = torch.zeros(200, 1, 40)
    out = apply_shift(x, ShiftSpec(kind="noise", severity=0.5, seed=3))
    assert out.shape == x.shape
    assert abs(out.std().item() - 0.5) < 0.02 and abs(out.mean().item()) < 0.02
    assert torch.equal(out, apply_shift(x, ShiftSpec(kind="noise", severity=0.5, seed=3)))
    assert not torch.equal(out, apply_shift(x, ShiftSpec(kind="noise", severity=0.5, seed=4)))
    assert torch.equal(x, torch.zeros_like(x))  # input untouched


@pytest.mark.parametrize("shape", [(30, 1, 40), (30, 1, 8, 8)])
def test_translation_shift_is_a_roll(shape: tuple[int, ...]) -> None:
    """Each example is rolled along its last axis by at most severity × length."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    severity = 0.25
    limit = int(severity * shape[-1])
    out = apply_shift(x, ShiftSpec(kind="translation", severity=severity, seed=1))
    assert out.shape == x.shape
    offsets = []
    for xi, oi in zip(x, out):
        found = [k for k in range(-limit, limit + 1) if torch.equal(torch.roll(xi, k, dims=-1), oi)]
        assert found, "shifted example is not a roll of the original within the limit"
        offsets.append(found[0])
    assert any(k != 0 for k in offsets) and len(set(offsets)) > 1
    assert torch.equal(out, apply_shift(x, ShiftSpec(kind="translation", severity=severity, seed=1)))


def test_rotation_shift() -> None:
    """Rotation keeps the shape, is seeded, and a near-zero angle is (almost) the identity."""
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = apply_shift(x, ShiftSpec(kind="rotation", severity=30, seed=0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.allclose(out, x)
    assert torch.equal(out, apply_shift(x, ShiftSpec(kind="rotation", severity=30, seed=0)))
    tiny = apply_shift(x, ShiftSpec(kind="rotation", severity=1e-4, seed=0))
    assert torch.allclose(tiny, x, atol=1e-4)


def test_rotation_refused_on_1d() -> None:
    """Rotation of 1-D signals is a ConfigError naming the field and the allowed kinds."""
    with pytest.raises(ConfigError, match=r"where\.kind: rotation .*allowed for it: noise, translation"):
        apply_shift(torch.zeros(3, 1, 40), ShiftSpec(kind="rotation", severity=5), where="where")


# ------------------------------------------------------------------------ data pools


def test_load_pool_memoises() -> None:
    """Same dataset and (validated) args → the very same pool object; other args → another."""
    a = load_pool("glyphs", GLYPHS)
    assert load_pool("glyphs", dict(GLYPHS)) is a
    assert load_pool("glyphs", {**GLYPHS, "size": 8}) is a  # explicit default = same key
    assert load_pool("glyphs", {**GLYPHS, "seed": 2}) is not a
    assert load_pool("digits", {}) is load_pool("digits", {})
    assert load_pool("mnist1d", M1D) is load_pool("mnist1d", dict(M1D))


def test_load_pool_errors() -> None:
    """Unknown datasets and bad args are ConfigErrors naming the field and what is allowed."""
    known = r"known: caltech101, cifar10, .*, digits, .*, mnist1d, .*, svhn$"
    with pytest.raises(ConfigError, match=r"^w\.dataset: unknown dataset 'nope'; " + known):
        load_pool("nope", {}, where="w")
    with pytest.raises(ConfigError, match=r"^w\.args\.n: .*greater than 0 \(got -5\)"):
        load_pool("glyphs", {"n": -5}, where="w")
    with pytest.raises(ConfigError, match=r"^w\.args\.bogus: "):
        load_pool("digits", {"bogus": 1}, where="w")


def test_mnist1d_leaves_global_rngs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """mnist1d reseeds random / numpy globally; loading must restore both (and leave torch alone)."""
    monkeypatch.setattr(datasets, "_POOLS", {})  # force a real generation
    random.seed(2024)
    np.random.seed(2024)
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    t = build("mnist1d", {"num_samples": 200, "seed": 11}, split={"val_per_class": 2},
              shift={"kind": "noise", "severity": 0.1})
    assert len(t.test) == 40
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert tuple(after[2:]) == tuple(np_state[2:])
    assert torch.equal(torch.get_rng_state(), torch_state)  # build_task uses private generators


def test_mnist1d_rng_restored_even_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the generator raises, the global RNG states are still restored."""
    import mnist1d.data

    def boom(args: Any, template: Any = None) -> dict[str, Any]:
        random.seed(0)
        np.random.seed(0)
        raise RuntimeError("boom")

    monkeypatch.setattr(datasets, "_POOLS", {})
    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    random.seed(99)
    np.random.seed(99)
    py_state, np_first = random.getstate(), np.random.get_state()[1].copy()
    with pytest.raises(RuntimeError, match="boom"):
        load_pool("mnist1d", {"num_samples": 100})
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_first)


# ------------------------------------------------- regressions (bugs found in review)


def test_class_subset_on_pool_missing_top_class() -> None:
    """glyphs n=5 over 10 digit classes has labels 0..4 only; classes [0, 9] must be a ConfigError."""
    with pytest.raises(ConfigError):
        build("glyphs", {"n": 5, "classes": "digits"}, classes=[0, 9])


# --------------------------------------------------- VTAB-1k protocol


def test_vtab1k_draws_800_train_and_200_val_from_the_training_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    use_pool(monkeypatch, synthetic_pool([700, 500, 300], official_test=90))
    t = build("digits", split={"seed": 7, "protocol": "vtab1k"})
    assert len(t.train) == 800 and len(t.val) == 200
    assert not indices(t.train) & indices(t.val) and indices(t.train) | indices(t.val) <= set(range(1500))
    assert len(t.test) == 90 and (t.test.x < 0).all()  # the official test split, whole
    assert t.info["protocol"] == "vtab1k" and t.info["split_seed"] == 7
    assert t.info["train_indices"] and t.info["val_indices"]
    # drawn at random, not per class: class frequencies follow the pool (700:500:300)
    assert counts(t.train.y, 3)[0] > counts(t.train.y, 3)[2]
    assert_same(t, build("digits", split={"seed": 7, "protocol": "vtab1k"}))  # deterministic
    other = build("digits", split={"seed": 8, "protocol": "vtab1k"})
    assert indices(other.train) != indices(t.train) and other.info["train_indices"] != t.info["train_indices"]


def test_vtab1k_without_an_official_test_split_carves_one_first(monkeypatch: pytest.MonkeyPatch) -> None:
    use_pool(monkeypatch, synthetic_pool([800, 800]))
    t = build("digits", split={"seed": 0, "protocol": "vtab1k", "test_fraction": 0.25})
    assert len(t.test) == 400 and len(t.train) == 800 and len(t.val) == 200
    assert not indices(t.test) & (indices(t.train) | indices(t.val))


def test_vtab1k_errors_are_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    use_pool(monkeypatch, synthetic_pool([300, 300], official_test=10))
    with pytest.raises(ConfigError, match=r"tasks\.t\.split\.protocol: vtab1k draws 1000 examples .* which has 600"):
        build("digits", split={"protocol": "vtab1k"})
    with pytest.raises(ValueError, match="remove shots"):
        SplitSpec(protocol="vtab1k", shots=5)


def _with_official_val(pool: DataPool, n_val: int) -> DataPool:
    """``pool`` whose last ``n_val`` rows are the dataset's official validation split."""
    import dataclasses

    return dataclasses.replace(pool, val_index=torch.arange(len(pool.y) - n_val, len(pool.y)))


def test_official_val_split_is_used_by_official_and_vtab1k_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = _with_official_val(synthetic_pool([700, 500, 300], official_test=90), 300)
    use_pool(monkeypatch, pool)
    official_val = set(range(1200, 1500))
    off = build("digits", split={"seed": 1, "protocol": "official"})
    assert indices(off.val) == official_val and indices(off.train) == set(range(1200))
    vtab = build("digits", split={"seed": 1, "protocol": "vtab1k"})  # VTAB: val200 from the official val
    assert len(vtab.train) == 800 and len(vtab.val) == 200
    assert indices(vtab.val) <= official_val and not indices(vtab.train) & official_val
    pooled = build("digits", split={"seed": 1, "val_per_class": 10})  # default: train and val pooled
    assert len(pooled.val) == 30 and indices(pooled.train) & official_val
    sub = build("digits", classes=[2, 0], split={"seed": 1, "protocol": "official"})  # positions survive a subset
    kept = {i for i in official_val if pool.y[i] in (0, 2)}
    assert indices(sub.val) == kept and not indices(sub.train) & official_val
    with pytest.raises(ConfigError, match=r"vtab1k draws 200 examples from the official validation split"):
        use_pool(monkeypatch, _with_official_val(synthetic_pool([700, 500, 300], official_test=9), 150))
        build("digits", split={"protocol": "vtab1k"})


def test_an_official_val_split_never_reaches_a_carved_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    use_pool(monkeypatch, _with_official_val(synthetic_pool([700, 500, 300]), 300))  # val, no test
    official_val = set(range(1200, 1500))
    t = build("digits", split={"seed": 3, "protocol": "vtab1k", "test_fraction": 0.2})
    assert indices(t.val) <= official_val and not (indices(t.test) | indices(t.train)) & official_val
    pooled = build("digits", split={"seed": 3, "test_fraction": 0.2})  # default: val pooled with train
    assert indices(pooled.test) & official_val


def test_train_per_class_keeps_n_per_class_and_tests_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    use_pool(monkeypatch, synthetic_pool([40, 31, 60]))
    t = build("digits", split={"seed": 2, "train_per_class": 30, "val_per_class": 5})
    assert counts(t.train.y, 3) == [25, 25, 25] and counts(t.test.y, 3) == [10, 1, 30]
    assert not indices(t.test) & (indices(t.train) | indices(t.val))
    with pytest.raises(ConfigError, match=r"split\.train_per_class: 31 requested but class 'c1' has 31 examples"):
        build("digits", split={"train_per_class": 31})
    use_pool(monkeypatch, synthetic_pool([40, 40], official_test=10))
    with pytest.raises(ConfigError, match=r"train_per_class: dataset 'digits' has an official test split"):
        build("digits", split={"train_per_class": 5})


# ------------------------------------------------------------------ generated pools kept on disk


@pytest.mark.parametrize("name, args", [("mnist1d", {"num_samples": 200, "seed": 3}),
                                        ("glyphs", {"n": 120, "classes": "digits"}), ("digits", {})])
def test_a_generated_pool_is_made_once_per_cache(name: str, args: dict[str, Any], tmp_path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A later process (here: an emptied memo) reads the pool from the cache instead of generating it; the
    same tensors."""
    access = datasets.DataAccess(tmp_path / "data", pools=tmp_path / "pools")
    monkeypatch.setattr(datasets, "_POOLS", {})
    made = load_pool(name, args, data=access)
    kept = list((tmp_path / "pools").glob(f"{name}-*.pt"))
    assert len(kept) == 1
    monkeypatch.setattr(datasets, "_POOLS", {})
    cls = type(datasets.DATASETS.get(name)())

    def generate(self, args, data):
        raise AssertionError("generated again")

    monkeypatch.setattr(cls, "load", generate)
    read = load_pool(name, args, data=access)
    assert read is not made and torch.equal(read.x, made.x) and torch.equal(read.y, made.y)
    assert read.class_names == made.class_names and isinstance(read.class_names, tuple)
    assert (read.test_x is None) == (made.test_x is None)
    if made.test_x is not None:
        assert torch.equal(read.test_x, made.test_x) and torch.equal(read.test_y, made.test_y)


def test_a_pool_is_kept_per_arguments_and_a_torn_entry_is_made_again(tmp_path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    access = datasets.DataAccess(tmp_path, pools=tmp_path / "pools")
    monkeypatch.setattr(datasets, "_POOLS", {})
    first = load_pool("mnist1d", {"num_samples": 100, "seed": 1}, data=access)
    other = load_pool("mnist1d", {"num_samples": 100, "seed": 2}, data=access)
    assert not torch.equal(first.x, other.x) and len(list((tmp_path / "pools").glob("*.pt"))) == 2
    entry = next(p for p in (tmp_path / "pools").glob("*.pt") if torch.equal(torch.load(p)["x"], first.x))
    entry.write_bytes(entry.read_bytes()[:64])  # torn (a killed writer cannot leave this: writes are atomic)
    monkeypatch.setattr(datasets, "_POOLS", {})
    again = load_pool("mnist1d", {"num_samples": 100, "seed": 1}, data=access)
    assert torch.equal(again.x, first.x) and torch.equal(torch.load(entry)["x"], first.x)  # made and kept again


def test_files_and_plugins_are_not_kept_unless_generated(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not datasets.DATASETS.get("image_folder").generated and not datasets.Dataset.generated

    class Plain(datasets.Dataset):  # a plugin's dataset that does not declare itself generated
        name, description, Args = "plain", "a plugin's", datasets.NoArgs

        def load(self, args, data):
            return DataPool(torch.zeros(4, 1), torch.arange(4) % 2, ("a", "b"))

    kept = datasets.DataAccess(tmp_path, pools=tmp_path / "pools")
    assert datasets._kept(Plain(), datasets.NoArgs(), kept, "plain").x.shape == (4, 1)
    monkeypatch.setattr(datasets, "_POOLS", {})
    load_pool("digits", {}, data=datasets.DataAccess(tmp_path))  # no pool cache given
    assert not (tmp_path / "pools").exists()
