"""Local image folders (dataset ``image_folder``) as researchers' real trees hold them: hidden
folders and files (notebook checkpoints, macOS metadata) are never classes nor images, image
extensions in any case, one-line errors naming the class folders a val/test tree lacks or adds
and the folders without images, and ``classes:`` selecting folders by name."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.core.errors import ConfigError
from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import read_all
from tlbench.data.views import ImageView
from tlbench.suites.datasets import DataAccess, load_pool
from tlbench.suites.images import identity_of, image_extensions, visible_image_folder
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task

WHERE = "s.yaml: tasks.t"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def png(path: Path, level: int = 128) -> None:
    """A tiny uniform grey PNG (its parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), level, dtype=np.uint8)).save(path, format="PNG")


def tree(root: Path, classes: list[str], per_class: int = 3) -> None:
    """``root/<class>/<i>.png``, the grey level telling the classes apart."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", 40 + 50 * (c % 5))


def spec(args: dict, classes: list | None = None, **split: object) -> TaskSpec:
    """A task spec; ``classes`` is set without validation, so class names reach the task
    builder whatever type ``TaskSpec.classes`` declares (see the name tests below)."""
    base = TaskSpec(dataset="image_folder", args=args, split=SplitSpec(**split))
    return base if classes is None else base.model_copy(update={"classes": classes})


def build(root: Path, args: dict, classes: list | None = None, **split: object):
    return build_task("t", spec(args, classes, **split), where=WHERE, data=DataAccess(root))


def error(root: Path, args: dict, classes: list | None = None, **split: object) -> str:
    """The one-line ConfigError message building the task raises."""
    with pytest.raises(ConfigError) as err:
        build(root, args, classes, **split)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(WHERE)
    return msg


def files_of(pool) -> list[str]:
    """The pool's files (train and test trees), relative to their tree's root."""
    out = []
    for view in (pool.x, pool.test_x):
        if view is None:
            continue
        parts = getattr(view.source, "datasets", [view.source])
        for ds in parts:
            out += [str(Path(p).relative_to(ds.root)) for p, _ in ds.samples]
    return sorted(out)


# --------------------------------------------------------------------------- hidden entries


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path: Path) -> None:
    root = tmp_path / "f"
    tree(root, ["cat", "dog"], 2)
    png(root / ".ipynb_checkpoints" / "a.png")  # hidden folders at the top: not classes
    (root / ".DS_Store").mkdir()
    png(root / ".DS_Store" / "b.png")
    png(root / ".cache" / "x" / "c.png")
    png(root / "__MACOSX" / "cat" / "._0.png")  # a zip made on macOS
    (root / ".DS_Store.file").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden files in a class folder
    (root / "cat" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble, not a png")
    png(root / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png")  # hidden folder inside a class
    png(root / "dog" / "sub" / ".hidden.png")
    png(root / "dog" / "sub" / "kept.png")  # visible files in subfolders are read, as torchvision does
    png(root / "dog" / "UPPER.PNG")  # any case of an accepted extension
    png(root / "dog" / "mixed.JpEg")
    (root / "dog" / "notes.txt").write_text("not an image")
    pool = load_pool("image_folder", {"path": "f"}, data=DataAccess(tmp_path))
    assert pool.class_names == ("cat", "dog")
    assert files_of(pool) == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/UPPER.PNG",
                              "dog/mixed.JpEg", "dog/sub/kept.png"]
    assert pool.y.tolist() == [0, 0, 1, 1, 1, 1, 1]
    x = torch.cat(list(read_all(pool.x.bound(Preprocess(8, 6)), device=torch.device("cpu"), batch_size=4)))
    assert x.shape == (7, 3, 6, 6)  # nothing unreadable (the ._ file) is read


def test_a_tree_inside_a_hidden_folder_is_read(tmp_path: Path) -> None:
    """Only names below the tree's root count: a root under ``~/.data`` is not hidden."""
    tree(tmp_path / ".data" / "train", ["a", "b"], 2)
    tree(tmp_path / ".data" / "test", ["a", "b"], 1)
    t = build(tmp_path, {"path": ".data/train", "test": ".data/test"}, val_per_class=1)
    assert (len(t.train), len(t.val), len(t.test)) == (2, 2, 2)


def test_hidden_entries_leave_the_identity_as_torchvision_gave_it(tmp_path: Path) -> None:
    """A tree without hidden entries keeps plain ImageFolder's identity (caches and stored
    results keyed on it stay valid); hidden files added later change nothing."""
    import torchvision

    root = tmp_path / "f"
    tree(root, ["a", "b"], 3)
    plain = identity_of(torchvision.datasets.ImageFolder(str(root)), tmp_path)
    visible = visible_image_folder()
    assert identity_of(visible(str(root)), tmp_path) == plain
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    png(root / ".ipynb_checkpoints" / "x.png")
    assert identity_of(visible(str(root)), tmp_path) == plain
    png(root / "b" / "new.png")
    assert identity_of(visible(str(root)), tmp_path) != plain


def test_the_folder_class_pickles_by_name_for_spawned_workers(tmp_path: Path) -> None:
    from tlbench.suites.images import VisibleImageFolder

    tree(tmp_path / "f", ["a", "b"], 2)
    (tmp_path / "f" / "a" / "._0.png").write_bytes(b"junk")
    ds = VisibleImageFolder(str(tmp_path / "f"))
    assert VisibleImageFolder is visible_image_folder() and type(ds).__module__ == "tlbench.suites.images"
    again = pickle.loads(pickle.dumps(ds))
    assert again.samples == ds.samples and again.classes == ["a", "b"]
    # a fresh interpreter (as a spawned DataLoader worker) finds the class by its name
    code = "import pickle, sys; ds = pickle.load(sys.stdin.buffer); print(type(ds).__name__, len(ds), ds.classes)"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(ds), capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == ["VisibleImageFolder", "4", "['a',", "'b']"]


def test_accepted_extensions_are_torchvisions() -> None:
    assert image_extensions() == EXTENSIONS


# --------------------------------------------------------------------------- val/test trees


def test_a_test_tree_names_the_classes_it_lacks_and_adds(tmp_path: Path) -> None:
    tree(tmp_path / "train", ["cat", "dog"])
    tree(tmp_path / "test", ["dgo", "dog"])
    msg = error(tmp_path, {"path": "train", "test": "test"})
    assert msg == (f"{WHERE}: dataset image_folder: args.test: {tmp_path / 'test'} lacks classes ['cat'] and has "
                   f"extra ['dgo'] compared with the training tree args.path; the trees need the same class folders")
    tree(tmp_path / "val", ["cat"])
    msg = error(tmp_path, {"path": "train", "val": "val"})
    assert f"args.val: {tmp_path / 'val'} lacks classes ['dog'] compared with the training tree" in msg
    assert "extra" not in msg
    tree(tmp_path / "more", ["cat", "dog", "eel"])
    png(tmp_path / "more" / ".ipynb_checkpoints" / "x.png")  # hidden: not an extra class
    msg = error(tmp_path, {"path": "train", "test": "more"})
    assert "more has extra ['eel'] compared with the training tree args.path" in msg and "lacks" not in msg


def test_many_differing_classes_are_counted_past_twenty(tmp_path: Path) -> None:
    names = [f"c{i:02d}" for i in range(30)]
    tree(tmp_path / "train", names, 1)
    tree(tmp_path / "test", ["c00"], 1)
    msg = error(tmp_path, {"path": "train", "test": "test"})
    assert f"lacks classes {names[1:21]} and 9 more compared with" in msg


def test_matching_trees_with_hidden_entries_load(tmp_path: Path) -> None:
    tree(tmp_path / "train", ["a", "b"], 3)
    tree(tmp_path / "test", ["a", "b"], 2)
    (tmp_path / "test" / ".DS_Store").mkdir()
    (tmp_path / "test" / "b" / "._1.png").write_bytes(b"junk")
    t = build(tmp_path, {"path": "train", "test": "test"}, val_per_class=1)
    assert (len(t.train), len(t.val), len(t.test)) == (4, 2, 4)


# --------------------------------------------------------------------------- folders without images


def test_class_folders_without_images_are_all_named_with_every_extension(tmp_path: Path) -> None:
    tree(tmp_path / "f", ["a", "b"], 2)
    (tmp_path / "f" / "x").mkdir()
    (tmp_path / "f" / "z" / ".ipynb_checkpoints").mkdir(parents=True)
    png(tmp_path / "f" / "z" / ".ipynb_checkpoints" / "0-checkpoint.png")  # hidden: not an image of z
    (tmp_path / "f" / "z" / "photo.gif").write_bytes(b"GIF89a")  # not an accepted extension
    msg = error(tmp_path, {"path": "f"})
    assert f"dataset image_folder: args.path: {tmp_path / 'f'}: class folder(s) ['x', 'z'] hold no images" in msg
    assert "hidden files are not read" in msg and msg.endswith("; any case)")
    listed = msg[msg.rindex("(") + 1:]
    assert all(ext in listed for ext in EXTENSIONS)


def test_a_test_tree_with_an_empty_class_folder(tmp_path: Path) -> None:
    tree(tmp_path / "train", ["a", "b"], 2)
    tree(tmp_path / "test", ["a"], 1)
    (tmp_path / "test" / "b").mkdir()
    (tmp_path / "test" / "b" / ".DS_Store").write_bytes(b"junk")
    msg = error(tmp_path, {"path": "train", "test": "test"})
    assert f"args.test: {tmp_path / 'test'}: class folder(s) ['b'] hold no images" in msg


def test_a_tree_without_class_folders(tmp_path: Path) -> None:
    png(tmp_path / "flat" / "0.png")  # images straight in the root
    png(tmp_path / "flat" / "1.JPG")
    png(tmp_path / "flat" / ".ipynb_checkpoints" / "0.png")
    msg = error(tmp_path, {"path": "flat"})
    assert f"args.path: {tmp_path / 'flat'} has no class folders (2 images lie directly in it" in msg
    assert "hidden folders are skipped; expected one folder per class holding images (.jpg, .jpeg" in msg
    (tmp_path / "hidden" / ".DS_Store").mkdir(parents=True)
    msg = error(tmp_path, {"path": "hidden"})
    assert f"{tmp_path / 'hidden'} has no class folders; hidden folders are skipped" in msg
    (tmp_path / "afile").write_text("x")
    assert f"args.path: {tmp_path / 'afile'} is not a folder; expected one folder per class" in error(
        tmp_path, {"path": "afile"})


# --------------------------------------------------------------------------- classes: by name


def test_classes_select_folders_by_name_or_index(tmp_path: Path) -> None:
    tree(tmp_path / "f", ["cat", "dog", "fox"], 4)
    by_name = build(tmp_path, {"path": "f"}, ["fox", "cat"], val_per_class=1)
    by_index = build(tmp_path, {"path": "f"}, [2, 0], val_per_class=1)
    mixed = build(tmp_path, {"path": "f"}, ["fox", 0], val_per_class=1)
    assert by_name.info["classes"] == by_index.info["classes"] == mixed.info["classes"] == [2, 0]
    assert by_name.num_classes == 2
    for a, b in ((by_name, by_index), (by_name, mixed)):
        for split in ("train", "val", "test"):
            x, y = getattr(a, split), getattr(b, split)
            assert isinstance(x.x, ImageView) and x.x.fingerprint == y.x.fingerprint and torch.equal(x.y, y.y)


def test_numbered_folders_are_selected_by_quoted_name(tmp_path: Path) -> None:
    """Indices follow the sorted names: with folders 1, 2, 10 the index 1 is folder "10"."""
    tree(tmp_path / "f", ["1", "2", "10"], 3)
    assert build(tmp_path, {"path": "f"}, ["2", "10"], val_per_class=1).info["classes"] == [2, 1]
    assert build(tmp_path, {"path": "f"}, [0, 1], val_per_class=1).info["classes"] == [0, 1]  # "1", "10"


def test_an_unknown_class_name_lists_the_names(tmp_path: Path) -> None:
    tree(tmp_path / "f", ["cat", "dog", "fox"], 3)
    msg = error(tmp_path, {"path": "f"}, ["cat", "dgo"])
    assert msg == (f"{WHERE}.classes: 'dgo' is not a class name of dataset 'image_folder'; "
                   f"available: ['cat', 'dog', 'fox']")
    names = [f"k{i:02d}" for i in range(25)]
    tree(tmp_path / "many", names, 2)
    msg = error(tmp_path, {"path": "many"}, ["k00", "nope"])
    assert msg.endswith(f"'nope' is not a class name of dataset 'image_folder'; available: {names[:20]} and 5 more")


def test_bad_class_selections(tmp_path: Path) -> None:
    tree(tmp_path / "f", ["cat", "dog", "fox"], 3)
    for bad, why in ((["cat", 0], "['cat'] chosen twice"), (["cat"], "fewer than two"),
                     ([0, 7, 9], "['7', '9'] out of range")):
        msg = error(tmp_path, {"path": "f"}, bad)
        assert msg == (f"{WHERE}.classes: {bad} is not a list of at least two distinct classes "
                       f"({why}; indices in 0..2 or class names)")


def test_other_datasets_take_class_names_too() -> None:
    t = build_task("t", TaskSpec(dataset="digits").model_copy(update={"classes": ["7", "1"]}), where=WHERE)
    assert t.info["classes"] == [7, 1] and t.num_classes == 2


def test_a_task_spec_accepts_class_names(tmp_path: Path) -> None:
    tree(tmp_path / "f", ["cat", "dog", "fox"], 3)
    task_spec = TaskSpec(dataset="image_folder", args={"path": "f"}, classes=["dog", 2],  # type: ignore[list-item]
                         split=SplitSpec(val_per_class=1))
    assert task_spec.classes == ["dog", 2]
    t = build_task("t", task_spec, where=WHERE, data=DataAccess(tmp_path))
    assert t.info["classes"] == [1, 2]
