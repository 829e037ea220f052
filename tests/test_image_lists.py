"""Datasets given as list files in the PEFT papers' VTAB-1k layout (dataset ``image_list``): the
exact train800 / val200 / test splits, the final fit on train800val200 (``split.final_fit``), and a
one-line refusal (exit 2 from the command line) for each bad input: a malformed line, a missing list
file or image, a label out of range, a train800val200 list that is not train800 + val200."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tlbench.core.errors import ConfigError
from tlbench.suites.datasets import DataAccess
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task

#: (file, label) per list: 3 classes, train 6, val 3, test 6 — the VTAB-1k layout at a tiny scale.
TRAIN = [(f"images/train/{i}.png", i % 3) for i in range(6)]
VAL = [(f"images/val/{i}.png", i % 3) for i in range(3)]
TEST = [(f"images/test/{i}.png", i % 3) for i in range(6)]


def write_list(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("".join(f"{name} {label}\n" for name, label in rows))


def vtab_folder(root: Path, name: str = "dtd", classes: int = 3) -> Path:
    """``root/<name>/`` with the images and the four list files (train800val200 = train + val, shuffled);
    labels modulo ``classes`` (fewer than 3 for a 2-class task)."""
    folder = root / name
    TRAIN, VAL, TEST = ([(f, label % classes) for f, label in rows] for rows in (globals()["TRAIN"], globals()["VAL"],
                                                                                 globals()["TEST"]))
    for rows in (TRAIN, VAL, TEST):
        for file, label in rows:
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 12, 3), 40 + 80 * label, dtype=np.uint8)).save(folder / file)
    write_list(folder / "train800.txt", TRAIN)
    write_list(folder / "val200.txt", VAL)
    write_list(folder / "train800val200.txt", [*VAL, *reversed(TRAIN)])
    write_list(folder / "test.txt", TEST)
    return folder


def build(root: Path, args: dict | None = None, **split):
    spec = TaskSpec(dataset="image_list", args={"path": "dtd", **(args or {})},
                    split=SplitSpec(protocol="official", **split))
    return build_task("t", spec, where="s.yaml: tasks.t", data=DataAccess(root))


def listed(split) -> list[str]:
    """The list-file paths of a split's examples (relative to the dataset folder), sorted."""
    samples = [s for ds in split.x.source.datasets for s in ds.samples]
    return sorted(samples[int(i)][0].rsplit("/dtd/", 1)[1] for i in split.x.indices)


def test_official_protocol_gives_exactly_the_listed_splits_and_final_fit_joins_train_and_val(tmp_path) -> None:
    vtab_folder(tmp_path)
    task = build(tmp_path)
    assert listed(task.train) == sorted(f for f, _ in TRAIN) and listed(task.val) == sorted(f for f, _ in VAL)
    assert len(task.test) == len(TEST) and task.num_classes == 3 and task.class_names == ("0", "1", "2")
    assert sorted(task.train.y.tolist()) == sorted(label for _, label in TRAIN)
    assert task.final() is task  # final_fit: train (the default) trains the evaluation runs on train
    joined = build(tmp_path, final_fit="train+val")
    final = joined.final()
    assert listed(final.train) == sorted(f for f, _ in [*TRAIN, *VAL])
    assert final.val.fingerprint == joined.val.fingerprint and final.test.fingerprint == joined.test.fingerprint
    assert final.info["final_fit"] == "train+val" and final.info["n_train"] == len(TRAIN) + len(VAL)
    assert joined.train.fingerprint == task.train.fingerprint  # tuning sees train800 either way
    assert "final_fit" not in task.info  # the default leaves older tasks' facts as they were


def test_final_fit_joins_tensor_splits_too() -> None:
    spec = TaskSpec(dataset="digits", classes=[0, 1], split=SplitSpec(seed=0, shots=3, val_per_class=2,
                                                                     final_fit="train+val"))
    task = build_task("d", spec, where="s.yaml: tasks.d")
    final = task.final()
    assert torch.equal(final.train.x, torch.cat([task.train.x, task.val.x]))
    assert torch.equal(final.train.y, torch.cat([task.train.y, task.val.y]))


def error(root: Path, args: dict | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        build(root, args)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("s.yaml: tasks.t: ")  # the suite file and task come first
    return msg.removeprefix("s.yaml: tasks.t: ")


def test_each_bad_input_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = vtab_folder(tmp_path)
    assert error(tmp_path, {"path": "nowhere"}).startswith("dataset image_list: args.path: ")
    (folder / "val200.txt").write_text("images/val/0.png 0\nimages/val/1.png one\n")
    assert error(tmp_path) == (f"dataset image_list: args.val: {folder / 'val200.txt'} line 2: expected "
                               "'<relative image path> <integer label>', got 'images/val/1.png one'")
    write_list(folder / "val200.txt", VAL)
    write_list(folder / "test.txt", [*TEST, ("images/test/gone.png", 1), ("images/test/also.png", 2)])
    assert error(tmp_path) == (f"dataset image_list: args.test: {folder / 'test.txt'} line 7: image "
                               f"'images/test/gone.png' does not exist under {folder} (and 1 more)")
    write_list(folder / "test.txt", TEST)
    (folder / "train800.txt").unlink()
    assert error(tmp_path) == (f"dataset image_list: args.train: {folder / 'train800.txt'} does not exist; "
                               "expected a list file of '<relative image path> <integer label>' lines")
    write_list(folder / "train800.txt", TRAIN)
    assert error(tmp_path, {"num_classes": 2}) == (
        f"dataset image_list: args.train: {folder / 'train800.txt'}: label 2 of images/train/2.png is out of range; "
        "allowed: 0..1 (args.num_classes)")
    write_list(folder / "test.txt", [*TEST[:-1], ("images/test/5.png", -1)])
    assert "label -1 of images/test/5.png is out of range; allowed: 0..2" in error(tmp_path)
    write_list(folder / "test.txt", TEST)
    write_list(folder / "train800val200.txt", [*TRAIN, *VAL[:-1]])
    assert error(tmp_path) == (f"dataset image_list: args.train_val: {folder / 'train800val200.txt'} is not exactly "
                               f"train800.txt + val200.txt: it lacks images/val/2.png 2 (0 extra, 1 missing line(s))")
    assert build(tmp_path, {"train_val": None}).num_classes == 3  # not checked when switched off
    (folder / "train800val200.txt").unlink()
    assert len(build(tmp_path).train) == len(TRAIN)  # absent: nothing to check


SUITE = """
name: lists
seed: 0
trials: 2
seeds: 2
strategies: [full_finetune, lora]
training: {epochs: [1, 2], batch_size: 4}
data_root: data
backbones:
  cnn: {arch: cnn2d, args: {in_channels: 3, width: 4, depth: 2}}
tasks:
  dtd:
    dataset: image_list
    args: {path: dtd}
    split: {protocol: official, final_fit: train+val}
    image_size: 12
    backbones: [cnn]
"""


@pytest.mark.slow
def test_a_suite_tunes_on_train_and_fits_the_final_model_on_train_plus_val(tmp_path: Path) -> None:
    vtab_folder(tmp_path / "data")
    (tmp_path / "suite.yaml").write_text(SUITE)
    run = [sys.executable, "-m", "tlbench.cli", "run", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"),
           "--report", "tables"]
    got = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert (runs["n_train"] == len(TRAIN) + len(VAL)).all() and (runs["n_test"] == len(TEST)).all()
    trials = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert len(trials) == 2 * 2
    # a malformed list line stops the run in one line, exit 2, with the store as it was
    (tmp_path / "data" / "dtd" / "test.txt").write_text("images/test/0.png\n")
    bad = subprocess.run([*run, "--seeds", "3"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "dataset image_list: args.test:" in bad.stderr and "line 1: expected" in bad.stderr
    assert len(pd.read_parquet(tmp_path / "out" / "runs.parquet")) == len(runs)


REUSING = """
name: reusing
seed: 0
trials: 2
seeds: 2
strategies: [full_finetune, distillation, ensemble]
training: {epochs: [1, 2], batch_size: 8}
backbones:
  cnn: {arch: cnn2d, args: {width: 4, depth: 2}}
tasks:
  digits:
    dataset: digits
    classes: [0, 1, 7]
    split: {seed: 1, shots: 4, val_per_class: 4, final_fit: train+val}
    backbones: [cnn]
"""


def test_under_final_fit_a_distillation_trial_reuses_a_teacher_that_never_saw_val(tmp_path: Path) -> None:
    """The trials are scored on val: the teacher they distil from is fitted on train alone (model 0,
    made on demand), while the evaluation runs, the ensemble's members and the teachers of the
    evaluation runs are fitted on train + val (a trial once asked the train + val teacher for logits
    on train alone and failed)."""
    from tlbench.cli.main import main
    from tlbench.run.plan import load_plan

    (tmp_path / "suite.yaml").write_text(REUSING)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "suite.yaml"), "--out", str(out), "--report", "tables"]) == 0
    task = load_plan(tmp_path / "suite.yaml").task_for("digits", "cnn")
    train, union = task.train.fingerprint, task.final().train.fingerprint
    assert train != union
    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials.loc[trials["strategy"] == "distillation", "state"] == "COMPLETE").sum() == 2
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["n_train"] == len(task.train) + len(task.val)).all() and len(runs) == 3 * 2
    models = [torch.load(f, weights_only=False) for f in (out / "models").rglob("full_finetune/*.pt")]
    for_trials = [m for m in models if train in m["logits"]]
    assert [m["index"] for m in for_trials] == [0] and union not in for_trials[0]["logits"]
    for_runs = [m for m in models if train not in m["logits"]]
    assert for_runs and all(union in m["logits"] for m in for_runs)
    assert set(runs.loc[runs["strategy"] == "distillation", "teacher"]) == {"full_finetune#0", "full_finetune#1"}


def test_image_resize_stretch_resizes_both_sides_without_cropping(tmp_path: Path) -> None:
    from torchvision.transforms import InterpolationMode, v2

    from tlbench.data.preprocess import Preprocess

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8))
    stretched = Preprocess(resize=16, crop=14).stretched()
    got = stretched.pixels()(image)
    assert got.shape == (3, 14, 14)
    want = v2.Compose([v2.Resize((14, 14), interpolation=InterpolationMode.BILINEAR, antialias=True), v2.ToImage()])
    assert torch.equal(got, want(image))
    assert stretched.describe()["stretch"] is True and "stretch" not in Preprocess().describe()
    vtab_folder(tmp_path)
    spec = TaskSpec(dataset="digits", image_resize="stretch")
    with pytest.raises(ConfigError, match="image_resize: 'stretch' applies to image-file datasets"):
        build_task("d", spec, where="s.yaml: tasks.d")
