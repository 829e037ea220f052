"""The remaining torchvision image datasets (STL-10, Flowers-102, Oxford-IIIT Pet, Food-101,
Caltech-101, FGVC-Aircraft, Stanford Cars) on tiny files written in each one's real on-disk
layout: pool sizes, class names, label ranges, official splits, the images read back through
the project's lazy views, and the content identity of the file lists."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.core.errors import ConfigError
from tlbench.data.preprocess import Preprocess
from tlbench.data.splits import Task
from tlbench.suites.datasets import DataAccess, DataPool, load_pool
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task

# a uniform grey level per class, so a test can tell which file a position decoded
LEVELS = (40, 110, 180, 250)
PLAIN = Preprocess(16, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean 0 / std 1: pixels stay in [0, 1]


def _trust_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """STL-10 and Flowers-102 check the md5 of the official files; the test files are not
    those. The patched check still requires each file to exist."""
    for module in ("stl10", "flowers102"):
        monkeypatch.setattr(f"torchvision.datasets.{module}.check_integrity",
                            lambda fpath, md5=None: os.path.isfile(fpath))


def _jpg(path: Path, level: int, *, index: int = 0) -> None:
    """A tiny uniform JPEG of grey ``level``: sizes vary, every fourth file is grayscale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (12 + 4 * (index % 3), 16)  # (width, height)
    pixels = np.full((size[1], size[0], 3), level, dtype=np.uint8)
    if index % 4 == 3:
        Image.fromarray(pixels[..., 0], "L").save(path, quality=95)
    else:
        Image.fromarray(pixels).save(path, quality=95)


def _levels(x: torch.Tensor) -> list[int]:
    """The mean grey level (0..255) of each image of a batch read with ``PLAIN``."""
    return [round(v) for v in (x.mean(dim=(1, 2, 3)) * 255).tolist()]


def _near(got: list[int], want: list[int], tol: int = 4) -> bool:
    return len(got) == len(want) and all(abs(a - b) <= tol for a, b in zip(got, want))


def task(dataset: str, root: Path, *, args: dict | None = None, classes: list[int] | None = None,
         **split: object) -> Task:
    spec = TaskSpec(dataset=dataset, args=args or {}, classes=classes, split=SplitSpec(**split))
    return build_task("t", spec, where="s.yaml: tasks.t", data=DataAccess(root))


def _sizes(t: Task) -> tuple[int, int, int]:
    return len(t.train), len(t.val), len(t.test)


def _reads_rgb(t: Task, crop: int = 16, n: int = 3) -> None:
    """A couple of images of each split come back as RGB tensors of the crop size."""
    bound = t.bound(Preprocess(crop + 4, crop))
    for split in (bound.train, bound.val, bound.test):
        x = split.x.head(n)
        assert x.shape == (min(n, len(split)), 3, crop, crop) and x.dtype == torch.float32


# --------------------------------------------------------------------------- writers


STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root: Path, labels: tuple[int, ...] = (1, 5, 10), *, n_train: int = 4, n_test: int = 2,
                alt: bool = False) -> None:
    """stl10_binary/: {train,test}_X.bin of N x 3 x 96 x 96 uint8 stored column-major (each
    channel transposed), {train,test}_y.bin of 1-based uint8 labels, class_names.txt; an
    (empty) unlabeled_X.bin, which torchvision's integrity check lists."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7 if alt else 0)
    for split, per in (("train", n_train), ("test", n_test)):
        y = np.repeat(np.asarray(labels, dtype=np.uint8), per)
        img = np.zeros((len(y), 3, 96, 96), dtype=np.uint8)  # (N, C, H, W) as the images look
        img[:, 0, 0, :] = 255  # red top row: shows rows and columns come out the right way
        img[:, 1] = (y * 10)[:, None, None]  # green encodes the label
        img[:, 2] = rng.integers(0, 256, (len(y), 96, 96), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(img.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes(y.tobytes())
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")


def write_flowers102(root: Path, labels: tuple[int, ...] = (1, 51, 102), *, per: tuple[int, int, int] = (2, 2, 3),
                     alt: bool = False) -> dict[str, list[int]]:
    """flowers-102/: jpg/image_XXXXX.jpg (1-based ids), imagelabels.mat (``labels``: 1 x N,
    1-based classes by image id), setid.mat (``trnid``, ``valid``, ``tstid``: image ids,
    interleaved over the id range as in the real file). Returns each split's 0-based labels."""
    from scipy.io import savemat

    base = root / "flowers-102"
    split_labels = {s: [c for c in labels for _ in range(n)] for s, n in zip(("trnid", "valid", "tstid"), per)}
    total = sum(len(v) for v in split_labels.values())
    ids = np.random.default_rng(3 if alt else 0).permutation(np.arange(1, total + 1))
    image_labels = np.zeros(total, dtype=np.uint8)
    setid, start = {}, 0
    for key, ys in split_labels.items():
        chosen = ids[start:start + len(ys)]
        start += len(ys)
        setid[key] = chosen.reshape(1, -1).astype(np.uint16)
        for i, (image_id, c) in enumerate(zip(chosen, ys)):
            image_labels[image_id - 1] = c
            _jpg(base / "jpg" / f"image_{image_id:05d}.jpg", LEVELS[labels.index(c)], index=i)
    savemat(base / "imagelabels.mat", {"labels": image_labels.reshape(1, -1)})
    savemat(base / "setid.mat", setid)
    return {k: [c - 1 for c in v] for k, v in split_labels.items()}


PET_BREEDS = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("american_pit_bull_terrier", 3, 2)]


def write_pets(root: Path, *, n_trainval: int = 4, n_test: int = 2, alt: bool = False) -> None:
    """oxford-iiit-pet/: images/<Breed_name>_<n>.jpg and annotations/{trainval,test}.txt of
    ``<image id> <class 1..37> <species 1 cat / 2 dog> <breed id>`` lines (plus trimaps/)."""
    base = root / "oxford-iiit-pet"
    (base / "annotations" / "trimaps").mkdir(parents=True)
    offset = 100 if alt else 0
    number = 1
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        lines = []
        for c, (breed, label, species) in enumerate(PET_BREEDS):
            for i in range(n):
                image_id = f"{breed}_{number + offset}"
                number += 1
                lines.append(f"{image_id} {label} {species} {i + 1}")
                _jpg(base / "images" / f"{image_id}.jpg", LEVELS[c], index=i)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


FOODS = ["apple_pie", "baby_back_ribs", "baklava"]


def write_food101(root: Path, *, n_train: int = 4, n_test: int = 2, alt: bool = False) -> None:
    """food-101/: images/<class>/<id>.jpg and meta/{train,test}.json mapping each class to
    its ``<class>/<id>`` entries (plus classes.txt)."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    number = 1000 if alt else 1
    for split, n in (("train", n_train), ("test", n_test)):
        meta: dict[str, list[str]] = {}
        for c, food in reversed(list(enumerate(FOODS))):  # the classes index by sorted name, not file order
            meta[food] = []
            for i in range(n):
                meta[food].append(f"{food}/{number}")
                _jpg(base / "images" / food / f"{number}.jpg", LEVELS[c], index=i)
                number += 1
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    (base / "meta" / "classes.txt").write_text("\n".join(FOODS) + "\n")


CALTECH = ["Faces", "accordion", "airplanes"]  # sorted as os.listdir + sorted gives them
CALTECH_ANNOTATIONS = {"Faces": "Faces_2", "airplanes": "Airplanes_Side_2"}


def write_caltech101(root: Path, *, per: int = 5, alt: bool = False) -> None:
    """caltech101/101_ObjectCategories/<category>/image_XXXX.jpg (1-based, consecutive) with
    the BACKGROUND_Google clutter category torchvision drops, and Annotations/<category>/
    under the annotation names torchvision maps to (Faces_2, Airplanes_Side_2, ...)."""
    base = root / "caltech101"
    categories = [("anchor" if alt and c == "accordion" else c) for c in CALTECH]
    for c, name in enumerate(categories):
        for i in range(per):
            _jpg(base / "101_ObjectCategories" / name / f"image_{i + 1:04d}.jpg", LEVELS[c], index=i)
        (base / "Annotations" / CALTECH_ANNOTATIONS.get(name, name)).mkdir(parents=True)
    for i in range(3):
        _jpg(base / "101_ObjectCategories" / "BACKGROUND_Google" / f"image_{i + 1:04d}.jpg", 5, index=i)


AIRCRAFT = [("707-320", "Boeing 707", "Boeing"), ("737-200", "Boeing 737", "Boeing"), ("A300B4", "A300", "Airbus")]


def write_aircraft(root: Path, *, per: int = 2, alt: bool = False) -> None:
    """fgvc-aircraft-2013b/data/: images/<7-digit id>.jpg, {variants,families,manufacturers}.txt
    and images_{variant,family,manufacturer}_{train,val,trainval,test}.txt of ``<id> <name>``
    lines (names may hold spaces)."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    for level, col in (("variants", 0), ("families", 1), ("manufacturers", 2)):
        names = list(dict.fromkeys(a[col] for a in AIRCRAFT))
        (data / f"{level}.txt").write_text("\n".join(names) + "\n")
    number = 1_000_000 + (5000 if alt else 0)
    rows: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "val", "test"):
        rows[split] = []
        for c in range(len(AIRCRAFT)):
            for i in range(per):
                image_id = f"{number:07d}"
                number += 1
                rows[split].append((image_id, c))
                _jpg(data / "images" / f"{image_id}.jpg", LEVELS[c], index=i)
    rows["trainval"] = rows["train"] + rows["val"]
    for level, col in (("variant", 0), ("family", 1), ("manufacturer", 2)):
        for split, items in rows.items():
            lines = [f"{image_id} {AIRCRAFT[c][col]}" for image_id, c in items]
            (data / f"images_{level}_{split}.txt").write_text("\n".join(lines) + "\n")


CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def write_cars(root: Path, *, n_train: int = 3, n_test: int = 2, alt: bool = False) -> None:
    """stanford_cars/: cars_train/, cars_test/ (<5-digit>.jpg), devkit/cars_meta.mat
    (``class_names``: 1 x K cell), devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat
    (``annotations``: 1 x N struct of bbox_x1..bbox_y2, class (1-based), fname)."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    for split, n, mat in (("train", n_train, base / "devkit" / "cars_train_annos.mat"),
                          ("test", n_test, base / "cars_test_annos_withlabels.mat")):
        annos = np.zeros((1, n * len(CARS)), dtype=fields)
        k = 0
        # interleaved classes, as in the real annotation files
        for i in range(n):
            for c in range(len(CARS)):
                fname = f"{k + 1 + (500 if alt else 0):05d}.jpg"
                annos[0, k] = (np.uint8(1), np.uint8(2), np.uint8(10), np.uint8(14), np.uint8(c + 1), fname)
                _jpg(base / f"cars_{split}" / fname, LEVELS[c], index=i)
                k += 1
        savemat(mat, {"annotations": annos})
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([CARS], dtype=object)})


# --------------------------------------------------------------------------- formats


def test_stl10_binary_files_with_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _trust_files(monkeypatch)
    write_stl10(tmp_path)
    pool = load_pool("stl10", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 12 and pool.test_y is not None and len(pool.test_y) == 6 and pool.val_index is None
    assert pool.num_classes == 10 and pool.class_names == tuple(STL10_NAMES)
    assert pool.y.tolist() == [0] * 4 + [4] * 4 + [9] * 4  # the file's 1..10 become 0..9
    # raw pixels (no resize, mean 0 / std 1): rows and columns as the images were made
    x = pool.x.bound(Preprocess(96, 96, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))).head(12)
    assert x.shape == (12, 3, 96, 96)
    assert bool((x[:, 0, 0, :] == 1).all()) and bool((x[:, 0, 1:, :] == 0).all())
    assert torch.equal((x[:, 1, 5, 7] * 255).round().long(), (pool.y + 1) * 10)
    # three of the ten classes present: a class subset makes a task of them
    t = task("stl10", tmp_path, classes=[0, 4, 9], protocol="official", val_per_class=1)
    assert _sizes(t) == (9, 3, 6) and t.num_classes == 3
    assert sorted(set(t.train.y.tolist())) == [0, 1, 2] and sorted(set(t.test.y.tolist())) == [0, 1, 2]
    _reads_rgb(t, crop=24)
    with pytest.raises(ConfigError, match=r"class 'bird' has 0 example"):  # all ten classes are known
        task("stl10", tmp_path, val_per_class=1)


def test_flowers102_mat_files_with_official_val(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _trust_files(monkeypatch)
    want = write_flowers102(tmp_path)
    pool = load_pool("flowers102", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 12 and pool.test_y is not None and len(pool.test_y) == 9
    assert pool.num_classes == 102 and pool.class_names[0] == "pink primrose"
    assert pool.class_names[101] == "blackberry lily"
    assert pool.y.tolist() == want["trnid"] + want["valid"] and pool.test_y.tolist() == want["tstid"]
    assert pool.val_index is not None and pool.val_index.tolist() == list(range(6, 12))
    # each position decodes the file its label belongs to (ids go through setid.mat)
    by_label = {0: LEVELS[0], 50: LEVELS[1], 101: LEVELS[2]}
    assert _near(_levels(pool.x.bound(PLAIN).head(12)), [by_label[c] for c in pool.y.tolist()])
    official = task("flowers102", tmp_path, protocol="official")
    assert _sizes(official) == (6, 6, 9) and official.num_classes == 102
    assert sorted(official.val.y.tolist()) == sorted(want["valid"])
    few = task("flowers102", tmp_path, classes=[0, 50, 101], protocol="official", shots=1)
    assert len(few.train) == 3 and len(few.val) == 6
    with pytest.raises(ConfigError, match=r"split\.shots: 5 shots requested but class 'pink primrose' has only 2 "
                                          r"official training examples"):
        task("flowers102", tmp_path, classes=[0, 50, 101], protocol="official", shots=5)
    with pytest.raises(ConfigError, match=r"split\.val_per_class: dataset 'flowers102' has an official val split"):
        task("flowers102", tmp_path, protocol="official", val_per_class=1)
    pooled = task("flowers102", tmp_path, classes=[0, 50, 101], val_per_class=1)  # train + val pooled
    assert _sizes(pooled) == (9, 3, 9) and pooled.num_classes == 3 and pooled.train.y.max() == 2
    _reads_rgb(official)


def test_oxford_iiit_pet_trainval_and_test_lists(tmp_path: Path) -> None:
    write_pets(tmp_path)
    pool = load_pool("oxford_iiit_pet", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 12 and pool.test_y is not None and len(pool.test_y) == 6 and pool.val_index is None
    assert pool.class_names == ("Abyssinian", "American Bulldog", "American Pit Bull Terrier")
    assert pool.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and pool.test_y.tolist() == [0] * 2 + [1] * 2 + [2] * 2
    assert _near(_levels(pool.x.bound(PLAIN).head(12)), [LEVELS[c] for c in pool.y.tolist()])
    t = task("oxford_iiit_pet", tmp_path, protocol="official", val_per_class=1)  # no official val: carved
    assert _sizes(t) == (9, 3, 6) and t.num_classes == 3
    _reads_rgb(t)


def test_food101_json_meta(tmp_path: Path) -> None:
    write_food101(tmp_path)
    pool = load_pool("food101", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 12 and pool.test_y is not None and len(pool.test_y) == 6 and pool.val_index is None
    assert pool.class_names == tuple(FOODS) and sorted(set(pool.y.tolist())) == [0, 1, 2]
    assert _near(_levels(pool.x.bound(PLAIN).head(12)), [LEVELS[c] for c in pool.y.tolist()])
    t = task("food101", tmp_path, protocol="official", val_per_class=1)
    assert _sizes(t) == (9, 3, 6)
    assert torch.equal(torch.bincount(t.test.y), torch.tensor([2, 2, 2]))
    _reads_rgb(t)


def test_caltech101_categories_without_background(tmp_path: Path) -> None:
    write_caltech101(tmp_path)
    pool = load_pool("caltech101", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 15 and pool.test_x is None and pool.val_index is None  # BACKGROUND_Google dropped
    assert pool.class_names == tuple(CALTECH) and pool.y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert _near(_levels(pool.x.bound(PLAIN).head(15)), [LEVELS[c] for c in pool.y.tolist()])
    t = task("caltech101", tmp_path, test_fraction=0.4, val_per_class=1)
    assert _sizes(t) == (6, 3, 6) and t.num_classes == 3
    _reads_rgb(t)
    with pytest.raises(ConfigError, match=r"dataset 'caltech101' has no official test"):
        task("caltech101", tmp_path, protocol="official")


def test_fgvc_aircraft_official_splits_and_annotation_levels(tmp_path: Path) -> None:
    write_aircraft(tmp_path)
    pool = load_pool("fgvc_aircraft", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 12 and pool.test_y is not None and len(pool.test_y) == 6
    assert pool.class_names == ("707-320", "737-200", "A300B4")
    assert pool.val_index is not None and pool.val_index.tolist() == list(range(6, 12))
    assert pool.y.tolist() == [0, 0, 1, 1, 2, 2] * 2 and pool.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert _near(_levels(pool.x.bound(PLAIN).head(12)), [LEVELS[c] for c in pool.y.tolist()])
    official = task("fgvc_aircraft", tmp_path, protocol="official")
    assert _sizes(official) == (6, 6, 6)
    _reads_rgb(official)
    family = load_pool("fgvc_aircraft", {"annotation_level": "family"}, data=DataAccess(tmp_path))
    assert family.class_names == ("Boeing 707", "Boeing 737", "A300")
    maker = load_pool("fgvc_aircraft", {"annotation_level": "manufacturer"}, data=DataAccess(tmp_path))
    assert maker.class_names == ("Boeing", "Airbus") and maker.y.tolist() == [0, 0, 0, 0, 1, 1] * 2
    t = task("fgvc_aircraft", tmp_path, args={"annotation_level": "manufacturer"}, protocol="official")
    assert t.num_classes == 2 and _sizes(t) == (6, 6, 6)
    with pytest.raises(ConfigError, match=r"annotation_level"):
        load_pool("fgvc_aircraft", {"annotation_level": "model"}, data=DataAccess(tmp_path))


def test_stanford_cars_devkit_mat_files(tmp_path: Path) -> None:
    write_cars(tmp_path)
    pool = load_pool("stanford_cars", {}, data=DataAccess(tmp_path))
    assert len(pool.x) == 9 and pool.test_y is not None and len(pool.test_y) == 6 and pool.val_index is None
    assert pool.class_names == tuple(CARS)
    assert pool.y.tolist() == [0, 1, 2] * 3 and pool.test_y.tolist() == [0, 1, 2] * 2  # 1-based in the files
    assert _near(_levels(pool.x.bound(PLAIN).head(9)), [LEVELS[c] for c in pool.y.tolist()])
    assert _near(_levels(pool.test_x.bound(PLAIN).head(6)), [LEVELS[c] for c in pool.test_y.tolist()])
    t = task("stanford_cars", tmp_path, protocol="official", val_per_class=1)
    assert _sizes(t) == (6, 3, 6) and t.num_classes == 3
    _reads_rgb(t)


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name, folder", [
    ("stl10", "stl10_binary"), ("flowers102", "flowers-102"), ("oxford_iiit_pet", "oxford-iiit-pet"),
    ("food101", "food-101"), ("caltech101", "caltech101/101_ObjectCategories"),
    ("fgvc_aircraft", "fgvc-aircraft-2013b"), ("stanford_cars", "stanford_cars"),
])
def test_missing_dataset_names_the_folder_torchvision_reads(name: str, folder: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_pool(name, {}, data=DataAccess(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"not found at {tmp_path / folder};" in msg and "download: true" in msg


def test_incomplete_files_are_one_line_errors(tmp_path: Path) -> None:
    write_pets(tmp_path)
    (tmp_path / "oxford-iiit-pet" / "annotations" / "test.txt").unlink()
    with pytest.raises(ConfigError) as err:
        load_pool("oxford_iiit_pet", {}, data=DataAccess(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "cannot be read" in msg and "test.txt" in msg


# --------------------------------------------------------------------------- content identity


WRITERS: dict[str, Callable[..., object]] = {
    "stl10": write_stl10, "flowers102": write_flowers102, "oxford_iiit_pet": write_pets, "food101": write_food101,
    "caltech101": write_caltech101, "fgvc_aircraft": write_aircraft, "stanford_cars": write_cars,
}

@pytest.mark.parametrize("name", sorted(WRITERS))
def test_identity_follows_the_files_not_the_data_root(name: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _trust_files(monkeypatch)
    WRITERS[name](tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    WRITERS[name](tmp_path / "b", alt=True)  # other files (names or pixels), the same labels

    def pool(where: str) -> DataPool:
        return load_pool(name, {}, data=DataAccess(tmp_path / where))

    a, moved, b = pool("a"), pool("moved"), pool("b")
    assert torch.equal(a.y, b.y)
    assert a.x.fingerprint == moved.x.fingerprint  # moving the data root keeps the identity
    assert a.x.fingerprint != b.x.fingerprint  # different files change it
