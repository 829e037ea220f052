"""Image-file datasets on small files the tests write in the real on-disk formats (CIFAR's
pickled batches, SVHN's .mat, ImageFolder and DTD trees): lazy views, split protocols,
preprocessing from backbone weights, DataLoader reading, and the missing-data errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.core.errors import ConfigError
from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import Loading, Reader, read_all
from tlbench.data.views import ImageView
from tlbench.suites.datasets import DataAccess, load_pool
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task
from tlbench.training.loop import Execution, NullReporter, fit_epochs, predict_logits

ROOT = Path(__file__).resolve().parents[1]


def _trust_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the md5 of the official archives; the test files are not those
    (torchvision's own dataset tests patch the same check)."""
    for module in ("cifar", "svhn"):
        monkeypatch.setattr(f"torchvision.datasets.{module}.check_integrity", lambda *a, **k: True)


def write_cifar(root: Path, *, per_batch: int = 20, n_test: int = 30, hundred: bool = False) -> None:
    """CIFAR-10 (or -100) python batches: pickled dicts of uint8 rows (3x32x32, channel-major)."""
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    n_classes, key = (100, "fine_labels") if hundred else (10, "labels")

    def batch(path: Path, n: int, offset: int) -> None:
        labels = [(offset + i) % n_classes for i in range(n)]
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        data[:, 0] = np.asarray(labels, dtype=np.uint8)  # the red top-left pixel encodes the label
        with path.open("wb") as fh:
            pickle.dump({"data": data, key: labels}, fh)

    if hundred:
        batch(folder / "train", 5 * per_batch, 0)
        batch(folder / "test", n_test, 0)
        meta = {"fine_label_names": [f"class{c}" for c in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
        return
    for b in range(1, 6):
        batch(folder / f"data_batch_{b}", per_batch, b)
    batch(folder / "test_batch", n_test, 0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    """SVHN's MATLAB files: X is 32x32x3xN uint8, y is Nx1 with the digit 0 stored as 10."""
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    (root / "svhn").mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = (np.arange(n) % 10) + 1
        savemat(root / "svhn" / f"{split}_32x32.mat",
                {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": y.reshape(-1, 1).astype(np.uint8)})


def write_folder(root: Path, classes: list[str], per_class: int, *, seed: int = 0) -> None:
    """``root/<class>/<i>.png|.jpg``: mixed sizes, RGB and grayscale files."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 4 * (i % 3), 24)
            # brightness encodes the class (a signal a small network learns), plus noise
            pixels = np.clip(60 + 60 * c + rng.integers(-30, 30, (*size[::-1], 3)), 0, 255).astype(np.uint8)
            if i % 4 == 3:  # grayscale files must come out as 3 channels
                Image.fromarray(pixels[..., 0], "L").save(root / name / f"{i}.png")
            else:
                Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")


def write_dtd(root: Path, classes: list[str], per_split: int) -> None:
    """DTD: dtd/dtd/images/<class>/<file>.jpg and labels/{train,val,test}1.txt listing class/file."""
    data = root / "dtd" / "dtd"
    write_folder(data / "images", classes, 3 * per_split)
    (data / "labels").mkdir(parents=True)
    for s, split in enumerate(("train", "val", "test")):
        lines = [f"{c}/{i}.{'jpg' if i % 2 else 'png'}" for c in classes
                 for i in range(s * per_split, (s + 1) * per_split)]
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def task(dataset: str, root: Path, *, args: dict | None = None, **split: object):
    spec = TaskSpec(dataset=dataset, args=args or {}, split=SplitSpec(**split))
    return build_task("t", spec, where="s.yaml: tasks.t", data=DataAccess(root))


# --------------------------------------------------------------------------- formats


def test_cifar10_batches_load_lazily_with_official_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _trust_files(monkeypatch)
    write_cifar(tmp_path)
    pool = load_pool("cifar10", {}, data=DataAccess(tmp_path))
    assert isinstance(pool.x, ImageView) and len(pool.x) == 100 and pool.num_classes == 10
    assert pool.class_names[0] == "airplane" and pool.test_y is not None and len(pool.test_y) == 30
    t = task("cifar10", tmp_path, seed=1, val_per_class=2).bound(Preprocess(32, 32, (0, 0, 0), (1, 1, 1)))
    assert (len(t.train), len(t.val), len(t.test)) == (80, 20, 30) and t.input_shape == (3, 32, 32)
    x = predict_logits(torch.nn.Identity(), t.train.x, device=torch.device("cpu"))
    # identity "network", mean 0 / std 1: the label pixel comes back exactly
    assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), t.train.y)


def test_cifar100_and_svhn_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _trust_files(monkeypatch)
    write_cifar(tmp_path, hundred=True)
    pool = load_pool("cifar100", {}, data=DataAccess(tmp_path))
    assert pool.num_classes == 100 and pool.class_names[5] == "class5" and len(pool.x) == 100
    write_svhn(tmp_path)
    svhn = load_pool("svhn", {}, data=DataAccess(tmp_path))
    assert len(svhn.x) == 40 and svhn.test_y is not None and len(svhn.test_y) == 20
    assert sorted(set(svhn.y.tolist())) == list(range(10))  # the stored 10 is the digit 0
    assert ImageView.head(svhn.x.bound(Preprocess(32, 32)), 2).shape == (2, 3, 32, 32)


def test_image_folder_trees_with_test_split_and_grayscale(tmp_path: Path) -> None:
    write_folder(tmp_path / "pets" / "train", ["cat", "dog", "fox"], 8)
    write_folder(tmp_path / "pets" / "test", ["cat", "dog", "fox"], 3, seed=1)
    t = task("image_folder", tmp_path, args={"path": "pets/train", "test": "pets/test"}, val_per_class=2)
    assert (len(t.train), len(t.val), len(t.test)) == (18, 6, 9) and t.lazy
    bound = t.bound(Preprocess(20, 16))
    x = bound.train.x.head(4)
    assert x.shape == (4, 3, 16, 16)  # resized, cropped, grayscale converted to RGB
    (tmp_path / "pets2").mkdir()  # the same file names holding other images: another identity
    write_folder(tmp_path / "pets2" / "train", ["cat", "dog", "fox"], 8, seed=5)
    write_folder(tmp_path / "pets2" / "test", ["cat", "dog", "fox"], 3, seed=1)
    t2 = task("image_folder", tmp_path, args={"path": "pets2/train", "test": "pets2/test"}, val_per_class=2)
    assert t2.bound(Preprocess(20, 16)).train.fingerprint != t.bound(Preprocess(20, 16)).train.fingerprint
    other = t.bound(Preprocess(20, 12))
    assert other.train.fingerprint != bound.train.fingerprint  # preprocessing is part of the content
    assert bound.bound(Preprocess(20, 16)).train.fingerprint == bound.train.fingerprint


def test_dtd_official_protocol_uses_the_official_val(tmp_path: Path) -> None:
    classes = ["banded", "dotted", "striped"]
    write_dtd(tmp_path, classes, per_split=4)
    official = task("dtd", tmp_path, protocol="official")
    assert (len(official.train), len(official.val), len(official.test)) == (12, 12, 12)
    pooled = task("dtd", tmp_path, val_per_class=2)  # default: train and val pooled, val carved
    assert (len(pooled.train), len(pooled.val)) == (18, 6)
    few = task("dtd", tmp_path, protocol="official", shots=2)
    assert len(few.train) == 6 and torch.equal(torch.bincount(few.train.y), torch.tensor([2, 2, 2]))


def test_eurosat_has_no_official_test(tmp_path: Path) -> None:
    write_folder(tmp_path / "eurosat" / "2750", ["Forest", "River"], 10)
    t = task("eurosat", tmp_path, test_fraction=0.3, val_per_class=2)
    assert (len(t.train), len(t.val), len(t.test)) == (10, 4, 6)
    with pytest.raises(ConfigError, match=r"tasks\.t\.split\.protocol: dataset 'eurosat' has no official test"):
        task("eurosat", tmp_path, protocol="official")


def test_vtab1k_on_image_files_is_seeded_and_sized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _trust_files(monkeypatch)
    write_cifar(tmp_path, per_batch=220)
    a = task("cifar10", tmp_path, protocol="vtab1k", seed=3)
    b = task("cifar10", tmp_path, protocol="vtab1k", seed=3)
    c = task("cifar10", tmp_path, protocol="vtab1k", seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (800, 200, 30)
    assert a.train.fingerprint == b.train.fingerprint and a.info["train_indices"] == b.info["train_indices"]
    assert a.train.fingerprint != c.train.fingerprint
    drawn = set(a.train.x.indices.tolist()) | set(a.val.x.indices.tolist())  # type: ignore[union-attr]
    assert len(drawn) == 1000


# --------------------------------------------------------------------------- errors


def test_missing_data_is_one_line_naming_path_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        task("cifar10", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("s.yaml: tasks.t: dataset cifar10: not found at ")
    assert str(tmp_path / "cifar-10-batches-py") in msg and "download: true" in msg and "data_batch_1" in msg
    with pytest.raises(ConfigError, match=r"image_folder: args\.path: .*nope is not a folder"):
        task("image_folder", tmp_path, args={"path": "nope"})
    write_folder(tmp_path / "a", ["x", "y"], 3)
    write_folder(tmp_path / "b", ["x", "z"], 3)
    with pytest.raises(ConfigError, match=r"args\.test: .* the trees need the same class folders"):
        task("image_folder", tmp_path, args={"path": "a", "test": "b"})
    (tmp_path / "empty" / "x").mkdir(parents=True)  # a class folder without images
    with pytest.raises(ConfigError, match=r"image_folder: args\.path: .*empty: .*; expected one folder per class"):
        task("image_folder", tmp_path, args={"path": "empty"})


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(ConfigError) as err:
        build_task("t", TaskSpec(dataset="cifar10"), where="s.yaml: tasks.t", data=DataAccess(tmp_path, True))
    msg = str(err.value)
    assert "\n" not in msg and "download into" in msg and "URLError" in msg and "cifar-10-batches-py" in msg


def test_download_fetches_every_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SVHN downloads one file per split: ``download: true`` must fetch the test file too."""
    fetched = []

    def fake_download(url: str, root: str, filename: str, md5: str | None = None) -> None:
        fetched.append(filename)
        if not (tmp_path / "src" / "svhn").exists():
            write_svhn(tmp_path / "src")
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes((tmp_path / "src" / "svhn" / filename).read_bytes())

    monkeypatch.setattr("torchvision.datasets.svhn.download_url", fake_download)
    monkeypatch.setattr("torchvision.datasets.svhn.check_integrity", lambda path, md5=None: Path(path).is_file())
    pool = load_pool("svhn", {}, data=DataAccess(tmp_path / "data", download=True))
    assert sorted(fetched) == ["test_32x32.mat", "train_32x32.mat"]
    assert len(pool.x) == 40 and pool.test_y is not None and len(pool.test_y) == 20


def _truncated_png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()[:60]


@pytest.mark.parametrize("workers, content, why", [
    (0, b"not a jpeg at all", "not an image: Pillow recognises no image format in its 17 bytes, beginning "
                              "b'not a jpeg a'"),
    (2, b"<!DOCTYPE html><html>Forbidden</html>", "not an image: Pillow recognises no image format in its 37 "
                                                  "bytes, beginning b'<!DOCTYPE ht'"),
    (0, b"", "the file is empty (0 bytes)"),
    (0, None, "the image is cut off (60 bytes; the rest of the file is missing)"),
])
def test_a_corrupt_image_is_one_line_naming_the_file_and_why(tmp_path: Path, workers: int, content, why) -> None:
    """Pillow says "cannot identify image file <_io.BufferedReader name=…>"; the line says what is wrong in
    plain words: not an image (with the bytes it begins with: an error page saved as a JPEG shows it), an
    empty file, an image cut off."""
    from tlbench.core.errors import UnreadableData

    write_folder(tmp_path / "f", ["a", "b"], 4)
    (tmp_path / "f" / "b" / "broken.jpg").write_bytes(_truncated_png() if content is None else content)
    view = task("image_folder", tmp_path, args={"path": "f"}, val_per_class=1).bound(Preprocess(16, 16))
    with pytest.raises(UnreadableData) as err:  # wherever the seeded split put the file
        for x in (view.train.x, view.val.x, view.test.x):
            list(read_all(x, device=torch.device("cpu"), loading=Loading(workers=workers), batch_size=4))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot read {tmp_path / 'f' / 'b' / 'broken.jpg'}: {why}; "), msg
    assert "fix or remove the file" in msg and "BufferedReader" not in msg


def test_in_memory_datasets_reject_image_options(tmp_path: Path) -> None:
    spec = TaskSpec(dataset="digits", augment="flip")
    with pytest.raises(ConfigError, match=r"tasks\.t\.augment: 'flip' applies to image-file datasets"):
        build_task("t", spec, where="s.yaml: tasks.t")
    with pytest.raises(ConfigError, match=r"tasks\.t\.image_size: applies to image-file datasets; 'digits'"):
        build_task("t", TaskSpec(dataset="digits", image_size=32), where="s.yaml: tasks.t")
    write_folder(tmp_path / "f", ["x", "y"], 4)
    spec = TaskSpec(dataset="image_folder", args={"path": str(tmp_path / "f")},
                    shift={"kind": "noise", "severity": 0.1})
    with pytest.raises(ConfigError, match=r"tasks\.t\.shift: corruptions apply to in-memory datasets"):
        build_task("t", spec, where="s.yaml: tasks.t", data=DataAccess(tmp_path))


# --------------------------------------------------------------------------- preprocessing and reading


def test_preprocessing_comes_from_the_weights() -> None:
    import torchvision

    from tlbench.suites.schema import parse_suite

    suite = parse_suite(ROOT / "suites" / "cifar10-resnet50.yaml")
    from tlbench.run.pretrain import preprocess_for

    got = preprocess_for("resnet50", suite)
    ref = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert (got.resize, got.crop, got.interpolation) == (ref.resize_size[0], ref.crop_size[0], "bilinear")
    assert got.mean == tuple(ref.mean) and got.std == tuple(ref.std)
    assert preprocess_for("resnet50", suite, 160).crop == 160 and preprocess_for("resnet50", suite, 160).resize == 166
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    assert torch.allclose(got.transform()(image), ref(image), atol=1e-5)  # same pipeline as torchvision's


def test_workers_read_the_same_batches_in_the_same_order(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", ["a", "b"], 6)
    view = task("image_folder", tmp_path, args={"path": "f"}, val_per_class=1).bound(Preprocess(16, 16)).train.x
    order = [torch.tensor([3, 1]), torch.tensor([0, 2, 4])]
    cpu = torch.device("cpu")
    inline = list(Reader(view, device=cpu)(order))
    assert [len(xb) for xb in inline] == [2, 3]
    workers = Reader(view, device=cpu, loading=Loading(workers=2))
    for _ in range(2):  # persistent workers serve a second epoch
        got = list(workers(order))
        assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(inline, got))
    assert torch.equal(torch.cat(list(read_all(view, device=cpu, batch_size=4))), view.head(len(view)))


def test_training_on_image_files_is_seeded_and_learns(tmp_path: Path) -> None:
    from tlbench.training.backbones import Classifier, SmallCNN2d

    write_folder(tmp_path / "f", ["a", "b", "c"], 12)
    t = task("image_folder", tmp_path, args={"path": "f"}, val_per_class=3, test_fraction=0.25)
    runs = []
    for aug, workers in (("crop_flip", 0), ("crop_flip", 0), ("crop_flip", 2), ("none", 0)):
        bound = t.bound(Preprocess(20, 16), aug)  # type: ignore[arg-type]
        torch.manual_seed(0)
        backbone = SmallCNN2d(in_channels=3, width=8, depth=2)
        model = Classifier(backbone, backbone.new_head(3))
        torch.rand(workers + 1)  # the global random state must not matter
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        hist = fit_epochs(model, opt, (bound.train.x, bound.train.y), (bound.val.x, bound.val.y), epochs=6,
                          batch_size=8, seed=0, device=torch.device("cpu"), reporter=NullReporter(),
                          execution=Execution(loading=Loading(workers=workers)))
        runs.append((hist, model.state_dict()))
    for again in (runs[1], runs[2]):  # augmentation is seeded, whatever the number of workers
        assert again[0] == runs[0][0] and all(torch.equal(runs[0][1][k], again[1][k]) for k in runs[0][1])
    assert not torch.equal(runs[0][1]["head.weight"], runs[3][1]["head.weight"])  # and does something
    assert max(runs[3][0]) > 0.5  # the brightness signal is learnt


def test_a_distillation_student_reads_images_as_its_own_weights_expect(tmp_path: Path, runtime) -> None:
    import dataclasses

    from helpers import make_members

    from tlbench.strategies import STRATEGIES
    from tlbench.training.backbones import SmallCNN2d, identify

    write_folder(tmp_path / "f", ["a", "b", "c"], 8)
    plain = task("image_folder", tmp_path, args={"path": "f"}, val_per_class=2)
    cell, own = plain.bound(Preprocess(20, 16)), plain.bound(Preprocess(14, 12))
    torch.manual_seed(0)
    teacher = identify(SmallCNN2d(in_channels=3, width=4, depth=2), "t")
    student = identify(SmallCNN2d(in_channels=3, width=2, depth=2), "s")
    adamw = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "warmup_fraction": 0.0}
    members = make_members(cell, teacher, backbones={"tiny-backbone": teacher, "small": student},
                           params={"full_finetune": {**adamw, "epochs": 2}},
                           task_for=lambda name: own if name == "small" else cell)
    kd = STRATEGIES.get("distillation")(epochs=(2, 2), batch_size=8, options={"student": "small"})
    predictor = kd.fit(teacher, cell, {**adamw, "epochs": 2, "temperature": 2.0, "alpha": 0.5}, seed=0,
                       reporter=NullReporter(), runtime=dataclasses.replace(runtime, members=members))
    assert predictor.own[cell.test.fingerprint] is own.test  # 12 px crops, not the teacher's 16
    expected = predict_logits(predictor.model, own.test.x, device=torch.device("cpu"))
    assert torch.equal(predictor.logits(cell.test), expected)


def write_pretraining_suite(root: Path, *, target: str, backbone: str) -> Path:
    """``root/s.yaml``: a source task ``src`` of image files (2 classes of 6 images under
    ``root/data/src``, 16 px) and the given target task and backbone (YAML lines)."""
    write_folder(root / "data" / "src", ["a", "b"], 6)
    path = root / "s.yaml"
    path.write_text(textwrap.dedent("""
        name: src
        strategies: [linear_probe]
        data_root: data
        source_tasks:
          src: {dataset: image_folder, args: {path: src}, split: {val_per_class: 1}, image_size: 16}
        tasks:
          TARGET
        backbones:
          BACKBONE
    """).replace("TARGET", target).replace("BACKBONE", backbone))
    return path


def test_pretraining_on_image_files_is_cached_by_their_content(tmp_path: Path) -> None:
    """A source task of image files: the spec does not fix its content, so the checkpoint's
    cache key includes the files' identity."""
    from tlbench.run.pretrain import materialize_backbone
    from tlbench.suites.schema import parse_suite

    suite = parse_suite(write_pretraining_suite(
        tmp_path, target="digits: {dataset: digits, backbones: [cnn]}",
        backbone="cnn: {arch: cnn2d, args: {in_channels: 3, width: 4, depth: 2}, pretrain: {task: src, epochs: 1}}"))

    def weights_id() -> str:
        return materialize_backbone("cnn", suite, cache_dir=tmp_path / "cache", device=torch.device("cpu"),
                                    log=lambda _: None).weights_id

    first = weights_id()
    assert weights_id() == first  # a cache hit
    extra = tmp_path / "data" / "src" / "a" / "new.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(extra)
    from tlbench.suites import datasets

    datasets._POOLS.clear()  # a new process would list the folder again
    assert weights_id() != first


# --------------------------------------------------------------------------- suites and CLI


def tlbench(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TLBENCH_DATA"}
    return subprocess.run([sys.executable, "-m", "tlbench.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**environ, "PYTHONPATH": str(ROOT), **env})


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["vtab1k", "kornblith", "cifar10-resnet50"])
def test_bundled_real_suites_dry_run_without_data(suite: str, tmp_path: Path) -> None:
    r = tlbench("run", suite, "--dry-run", "--data-root", str(tmp_path / "nodata"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr  # the console writes to stderr
    assert f"data root {tmp_path / 'nodata'}" in out and "MISSING" in out
    assert "task(s) lack their data" in out and "trials" in out


@pytest.mark.slow
def test_the_default_data_root_follows_the_cache_directory(tmp_path: Path) -> None:
    r = tlbench("run", "cifar10-resnet50", "--dry-run", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert r.returncode == 0 and f"data root {tmp_path / 'cache' / 'data'} " in r.stderr, r.stderr
    r = tlbench("run", "cifar10-resnet50", "--dry-run", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path,
                TLBENCH_DATA=str(tmp_path / "shared"))
    assert r.returncode == 0 and f"data root {tmp_path / 'shared'} " in r.stderr, r.stderr


def test_missing_data_run_exits_2_before_training(tmp_path: Path) -> None:
    r = tlbench("run", "cifar10-resnet50", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"),
                cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "dataset cifar10: not found at" in r.stderr and "download: true" in r.stderr
    assert not (tmp_path / "out").exists()


def write_folder_suite(root: Path, *, seeds: int, image_size: int, augment: str, backbone: str) -> Path:
    """A suite of one image-folder task (3 classes, 10 train and 4 test images each) under
    ``root``, with linear probing and fine-tuning on ``backbone`` (a YAML flow mapping)."""
    write_folder(root / "data" / "shapes" / "train", ["a", "b", "c"], 10)
    write_folder(root / "data" / "shapes" / "test", ["a", "b", "c"], 4, seed=1)
    path = root / "s.yaml"
    path.write_text(textwrap.dedent(f"""
        name: folder
        trials: 2
        seeds: {seeds}
        strategies: [linear_probe, full_finetune]
        training: {{epochs: [2, 3], batch_size: 8}}
        data_root: data
        tasks:
          shapes:
            dataset: image_folder
            args: {{path: shapes/train, test: shapes/test}}
            split: {{val_per_class: 2}}
            image_size: {image_size}
            augment: {augment}
            backbones: [net]
        backbones:
          net: {backbone}
    """))
    return path


@pytest.mark.slow
def test_image_folder_suite_runs_end_to_end(tmp_path: Path) -> None:
    write_folder_suite(tmp_path, seeds=2, image_size=16, augment="flip",
                       backbone="{arch: cnn2d, args: {in_channels: 3, width: 8, depth: 2}}")
    r = tlbench("run", "s.yaml", "--out", "out", "--cache-dir", "cache", "--report", "tables", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd

    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert set(runs["strategy"]) == {"linear_probe", "full_finetune"} and len(runs) == 4
    assert (runs["n_test"] == 12).all()


@pytest.mark.slow
def test_dry_run_prints_classes_and_input_size_against_the_pretrained_size(tmp_path: Path) -> None:
    write_folder_suite(tmp_path, seeds=1, image_size=16, augment="none",
                       backbone="{arch: resnet, args: {variant: resnet18}, weights: DEFAULT}")
    r = tlbench("run", "s.yaml", "--dry-run", "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("  task shapes: dataset image_folder"))
    assert "3 classes (a, b, c); net reads 3×16×16 (pretrained at 224×224)" in line, line
    assert ("warning: task shapes: backbone net reads 16×16 inputs but was pretrained at 224×224; "
            "set tasks.shapes.image_size to match") in r.stderr, r.stderr
    (tmp_path / "s.yaml").write_text((tmp_path / "s.yaml").read_text().replace("image_size: 16", "image_size: 224"))
    r = tlbench("run", "s.yaml", "--dry-run", "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 0 and "net reads 3×224×224 (pretrained at 224×224)" in r.stderr, r.stderr
    assert "warning" not in r.stderr, r.stderr


def test_a_grayscale_backbone_on_rgb_folders_points_to_in_channels(tmp_path: Path) -> None:
    write_folder_suite(tmp_path, seeds=1, image_size=16, augment="none", backbone="{arch: cnn2d}")
    r = tlbench("run", "s.yaml", "--dry-run", "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "s.yaml: tasks.shapes.backbones: backbone 'net' (cnn2d) cannot take this task's inputs of shape " \
           "(3, 16, 16)" in r.stderr
    assert r.stderr.rstrip().endswith("set backbones.net.args.in_channels: 3"), r.stderr


def test_dry_run_of_a_missing_local_folder_does_not_suggest_downloading(tmp_path: Path) -> None:
    write_folder_suite(tmp_path, seeds=1, image_size=16, augment="none",
                       backbone="{arch: cnn2d, args: {in_channels: 3}}")
    (tmp_path / "s.yaml").write_text((tmp_path / "s.yaml").read_text().replace("shapes/train", "shapez/train"))
    r = tlbench("run", "s.yaml", "--dry-run", "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "shapez/train (MISSING)" in r.stderr and "download: true" not in r.stderr, r.stderr
    assert "1 task(s) lack their files, which cannot be downloaded (shapes): place them at the paths" in r.stderr


def test_an_evaluation_stopped_by_an_unreadable_test_image_is_failed_not_left_running(tmp_path: Path) -> None:
    """Fine-tuning reads the training tree; the test tree is first read when the trained model
    is scored, after the run was claimed: the claim must be failed on the way out."""
    import optuna

    from tlbench.store.opening import open_existing_storage

    write_folder_suite(tmp_path, seeds=1, image_size=16, augment="none",
                       backbone="{arch: cnn2d, args: {in_channels: 3, width: 4, depth: 2}}")
    broken = tmp_path / "data" / "shapes" / "test" / "b" / "broken.png"
    broken.write_bytes(b"not a png")
    r = tlbench("run", "s.yaml", "--out", "out", "--cache-dir", "cache", "--strategies", "full_finetune",
                "--report", "none", cwd=tmp_path)
    assert r.returncode == 2 and f"cannot read {broken}" in r.stderr, r.stderr[-2000:]
    storage = open_existing_storage(str(tmp_path / "out" / "store.journal"))
    evaluations = [s for s in optuna.get_all_study_summaries(storage) if "eval" in s.study_name]
    assert evaluations, [s.study_name for s in optuna.get_all_study_summaries(storage)]
    trials = [t for s in evaluations for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
    assert trials and all(t.state == optuna.trial.TrialState.FAIL for t in trials), [t.state for t in trials]
    assert all(f"cannot read {broken}" in t.user_attrs["failed_reason"] for t in trials)


def test_a_grayscale_backbone_pretrained_on_an_rgb_folder_points_to_in_channels(tmp_path: Path) -> None:
    write_folder(tmp_path / "data" / "tgt", ["a", "b"], 4)
    write_pretraining_suite(tmp_path, backbone="net: {arch: cnn2d, pretrain: {task: src, epochs: 1}}",
                            target="tgt: {dataset: image_folder, args: {path: tgt}, image_size: 16, "
                                   "split: {val_per_class: 1}, backbones: [net]}")
    r = tlbench("run", "s.yaml", "--dry-run", "--cache-dir", "cache", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert ("s.yaml: backbones.net.pretrain.task: backbone 'net' (cnn2d) cannot take the inputs of source_tasks.src "
            "of shape (3, 16, 16)") in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith("set backbones.net.args.in_channels: 3"), r.stderr
