"""Model selection end to end: scores stored beside the runs, resumable and kill-safe, ranked in the
report; plugins; and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tlbench.cli.main import main
from tlbench.selection.scorers import SCORERS
from tlbench.store.opening import open_storage
from tlbench.store.scores import load_scores, parse_score_study, score_records

SUITE = """\
name: {name}
seed: 0
trials: 2
seeds: 2
strategies: [linear_probe]
training:
  epochs: [2, 3]
{plugins}
source_tasks:
  glyphs-digits:
    dataset: glyphs
    args: {{n: 600, size: 8, classes: digits, seed: 0}}
    split: {{test_fraction: 0.1, val_fraction: 0.1}}
backbones:
  wide:
    arch: cnn2d
    args: {{width: 8, depth: 2}}
    pretrain: {{task: glyphs-digits, epochs: 1}}
  narrow:
    arch: cnn2d
    args: {{width: 4, depth: 2}}
    pretrain: {{task: glyphs-digits, epochs: 1}}
  random:
    arch: cnn2d
    args: {{width: 8, depth: 2}}
tasks:
  digits:
    dataset: digits
    split: {{seed: 0, shots: 5, val_per_class: 5, test_fraction: 0.5}}
    backbones: [wide, narrow, random]
model_selection:
{selection}
"""


@pytest.fixture(autouse=True)
def forget_plugins():
    """Scorer plugins loaded in-process are forgotten after each test (the code version of the
    process, and every later test, must not see them)."""
    from tlbench.core.registry import _PLUGIN_SOURCES
    from tlbench.run import plugins

    saved = [(r, dict(r._entries), dict(r._origins), dict(r._sources), dict(r._files)) for r in plugins.GROUPS.values()]
    sources = dict(_PLUGIN_SOURCES)
    path = list(sys.path)
    yield
    sys.path[:] = path
    for registry, entries, origins, srcs, files in saved:
        registry._entries, registry._origins, registry._sources, registry._files = entries, origins, srcs, files
    _PLUGIN_SOURCES.clear()
    _PLUGIN_SOURCES.update(sources)


def write_suite(folder: Path, *, name: str = "sel", selection: str = "  seeds: 2", plugins: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, selection=selection, plugins=plugins))
    return path


def score_trials(out: Path) -> dict[str, list[TrialState]]:
    storage = open_storage(None, out)
    found = {}
    for s in optuna.get_all_study_summaries(storage):
        if parse_score_study(s.study_name):
            found[s.study_name] = [t.state for t in optuna.load_study(study_name=s.study_name,
                                                                      storage=storage).get_trials()]
    return found


def values(out: Path) -> dict[tuple[str, str, str], list[float]]:
    return {(r.task, r.backbone, r.scorer): r.values for r in score_records(open_storage(None, out))}


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("selection")
    suite = write_suite(root)
    assert main(["run", str(suite), "--out", str(root / "out"), "--threads", "1"]) == 0
    return root


def test_every_scorer_is_stored_per_backbone(selection_run: Path) -> None:
    out = selection_run / "out"
    frame = load_scores(open_storage(None, out))
    assert set(frame["scorer"]) == set(SCORERS.names())
    assert set(frame["backbone"]) == {"wide", "narrow", "random"}
    nleep = frame[(frame["scorer"] == "nleep") & (frame["backbone"] == "wide")]
    assert sorted(nleep["seed"]) == [0, 1]  # a randomised scorer, repeated over the block's 2 seeds
    # the random-init backbone has no source head: LEEP, NCE and source accuracy skip it, saying why
    skipped = frame[frame["value"].isna()]
    assert set(zip(skipped["backbone"], skipped["scorer"])) == {("random", "leep"), ("random", "nce"),
                                                                 ("random", "source_accuracy")}
    assert set(skipped["skipped"]) == {"needs source probs", "needs source accuracy"}
    # self-pretrained backbones keep their source head: finite source probabilities and accuracy
    pretrained = frame[(frame["backbone"] == "wide") & frame["scorer"].isin(["leep", "nce", "source_accuracy"])]
    assert pretrained["value"].notna().all()
    assert (frame["n_train"] == 50).all() and (frame["n_val"] == 50).all()  # train and val only, never test


def test_status_counts_the_scores(selection_run: Path, capsys) -> None:
    assert main(["status", str(selection_run / "sel.yaml"), "--out", str(selection_run / "out")]) == 0
    assert f"model selection: {3 * len(SCORERS)} scores stored on 3 task × backbone pairs" in capsys.readouterr().out
    assert main(["status", str(selection_run / "sel.yaml"), "--out", str(selection_run / "out"), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["model_selection"] == {"pairs": 3, "stored": 3 * len(SCORERS), "running": 0, "failed": 0}


def test_scores_read_the_probes_features_no_second_pass(tiny_task, tiny_backbone, runtime) -> None:
    """The scores' features are the linear probe's cache entries: scoring, then probing, runs the
    backbone once per split (train and val for the scores; the probe adds nothing for them)."""
    from helpers import sample_params

    from tlbench.run.selection import feature_inputs
    from tlbench.strategies import STRATEGIES
    from tlbench.training.backbones import SourceHead
    from tlbench.training.loop import NullReporter

    tiny_backbone.source_head = SourceHead(torch.zeros(5, tiny_backbone.feature_dim), torch.zeros(5), 0.5)
    inputs, seconds = feature_inputs(tiny_backbone, tiny_task, runtime, where="test")
    assert runtime.features.computed == 2 and seconds > 0
    assert inputs.source_probs.shape == (len(tiny_task.train), 5) and inputs.source_accuracy == 0.5
    assert inputs.val_labels is not None and len(inputs.val_labels) == len(tiny_task.val)
    probe = STRATEGIES.get("linear_probe")(epochs=(2, 3), batch_size=8)
    probe.fit(tiny_backbone, tiny_task, sample_params(probe, tiny_backbone), seed=0, reporter=NullReporter(),
              runtime=runtime)
    assert runtime.features.computed == 2


def test_rerun_scores_nothing(selection_run: Path, tmp_path: Path) -> None:
    out = selection_run / "out"
    before = score_trials(out)
    assert main(["run", str(selection_run / "sel.yaml"), "--out", str(out), "--report", "none", "--threads", "1"]) == 0
    assert score_trials(out) == before
    assert all(states == [TrialState.COMPLETE] * len(states) for states in before.values())


@pytest.mark.slow
def test_the_report_ranks_the_scorers(selection_run: Path) -> None:
    out = selection_run / "out"
    markdown = (out / "table.md").read_text()
    assert "Model selection: transferability scores against linear_probe's test accuracy" in markdown
    for name in SCORERS.names():
        assert f"| {name} " in markdown or f"| **{name}** " in markdown
    assert "leep skipped for random (needs source probs): ranked on the other backbones only." in markdown
    assert "Model selection" in (out / "table.tex").read_text()
    html = (out / "report.html").read_text()
    assert "Model selection" in html and "selection_linear_probe" not in html.split("<body")[0]
    assert (out / "figures" / "selection_linear_probe.png").is_file()
    assert "<figcaption style=\"font-weight:400\">Each scorer&#x27;s value (x) against" in html  # drawn on the page
    # `tlbench report` reads the same tables from the store alone
    again = selection_run / "again"
    assert main(["report", str(out), "--out", str(again)]) == 0
    assert main(["report", str(out), "--out", str(selection_run / "again2")]) == 0
    pdf = (again / "figures" / "selection_linear_probe.pdf").read_bytes()
    assert pdf == (selection_run / "again2" / "figures" / "selection_linear_probe.pdf").read_bytes()  # no date
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType fonts, as publishers ask
    table = markdown[markdown.index("**Model selection"):]
    assert table[:2000] == (again / "table.md").read_text()[(again / "table.md").read_text().index(
        "**Model selection"):][:2000]


PLUGIN = '''
import numpy as np
from tlbench import Scorer


class MeanNorm(Scorer):
    """A researcher's own score: the mean feature norm."""

    name = "{name}"
    definition = "mean L2 norm of the train features"

    def score(self, inputs, rng):
        {body}
'''


def test_a_plugin_scorer_is_ranked_beside_the_built_ins(tmp_path: Path) -> None:
    (tmp_path / "myscore.py").write_text(PLUGIN.format(name="mean_norm", body="return float(np.linalg.norm(inputs.features, axis=1).mean())"))
    suite = write_suite(tmp_path, name="plug", selection="  scorers: [logme, mean_norm]",
                        plugins="plugins: [myscore.py]")
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--threads", "1", "--report", "tables"]) == 0
    records = score_records(open_storage(None, tmp_path / "out"))
    mine = [r for r in records if r.scorer == "mean_norm"]
    assert len(mine) == 3 and mine[0].scorer_origin.endswith("myscore.py") or "myscore.py" in mine[0].scorer_origin
    assert {r.scorer for r in records} == {"logme", "mean_norm"}
    assert "mean_norm" in (tmp_path / "out" / "table.md").read_text()


def test_a_plugin_returning_nan_is_one_line_and_damages_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    first = write_suite(tmp_path, name="nan", selection="  scorers: [hscore]")
    assert main(["run", str(first), "--out", str(out), "--threads", "1", "--report", "none"]) == 0
    before = values(out)
    capsys.readouterr()
    (tmp_path / "myscore.py").write_text(PLUGIN.format(name="nan_norm", body="return float('nan')"))
    suite = write_suite(tmp_path, name="nan", selection="  scorers: [hscore, nan_norm]",
                        plugins="plugins: [myscore.py]")
    assert main(["run", str(suite), "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("tlbench: error")]
    assert len(errors) == 1 and "scorer 'nan_norm' returned nan (a score must be a finite number)" in errors[0], err
    trials = score_trials(out)
    assert TrialState.FAIL in [s for states in trials.values() for s in states]
    assert TrialState.RUNNING not in [s for states in trials.values() for s in states]
    assert values(out) == before  # what was scored before stays, readable and unchanged
    # fixed, the same command finishes, scoring only what is missing
    (tmp_path / "myscore.py").write_text(PLUGIN.format(name="nan_norm", body="return 1.0"))
    fixed = subprocess.run([sys.executable, "-m", "tlbench.cli", "run", str(suite), "--out", str(out), "--threads",
                            "1", "--report", "none"], capture_output=True, text=True)  # a new process: a new plugin
    assert fixed.returncode == 0, fixed.stderr
    after = values(out)
    assert {k: v for k, v in after.items() if k[2] == "hscore"} == before
    assert {k[2] for k in after} == {"hscore", "nan_norm"} and len(after) == 6
    capsys.readouterr()
    assert main(["status", str(suite), "--out", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("model selection:"))
    assert line == "model selection: 6 scores stored on 3 task × backbone pairs", line  # the failure was redone


SLOW = '''
import os, time
from pathlib import Path
from tlbench import Scorer


class Slow(Scorer):
    name = "slow"
    definition = "sleeps the first time, so that the test can kill the worker while it scores"

    def score(self, inputs, rng):
        flag = Path(os.environ["SLOW_FLAG"])
        if not flag.exists():
            flag.write_text("scoring")
            time.sleep(120)
        return float(inputs.features.shape[1])
'''


def test_kill_9_while_scoring_is_redone_by_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    suite = write_suite(tmp_path, name="kill", selection="  scorers: [hscore, slow]", plugins="plugins: [slow.py]")
    out = tmp_path / "out"
    flag = tmp_path / "flag"
    env = {**os.environ, "SLOW_FLAG": str(flag)}
    proc = subprocess.Popen([sys.executable, "-m", "tlbench.cli", "run", str(suite), "--out", str(out), "--threads",
                             "1", "--report", "none"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the worker never reached the slow scorer"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    running = [s for states in score_trials(out).values() for s in states if s == TrialState.RUNNING]
    assert running == [TrialState.RUNNING]  # the dead worker's claim
    os.environ["SLOW_FLAG"] = str(flag)
    try:
        assert main(["run", str(suite), "--out", str(out), "--threads", "1", "--report", "none"]) == 0
    finally:
        del os.environ["SLOW_FLAG"]
    got = values(out)
    assert {k[2] for k in got} == {"hscore", "slow"} and len(got) == 6
    clean = tmp_path / "clean"
    os.environ["SLOW_FLAG"] = str(flag)  # exists now: no sleep
    try:
        assert main(["run", str(suite), "--out", str(clean), "--threads", "1", "--report", "none"]) == 0
    finally:
        del os.environ["SLOW_FLAG"]
    assert values(clean) == got


@pytest.mark.parametrize("selection,needle", [
    ("  scorers: [logme, logmee]", "model_selection.scorers[1]: unknown scorer 'logmee'; known: "),
    ("  ground_truth: [full_finetune]", "model_selection.ground_truth[0]: 'full_finetune' is not among the suite's"),
    ("  scorers: [logme, logme]", "model_selection.scorers: 'logme' listed twice"),
    ("  seeds: 0", "model_selection.seeds"),
    ("  scorer: [logme]", "model_selection.scorer"),
])
def test_bad_blocks_are_one_line(tmp_path: Path, capsys, selection: str, needle: str) -> None:
    suite = write_suite(tmp_path, name="bad", selection=selection)
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "store.journal").exists() or score_trials(tmp_path / "out") == {}


def test_check_and_list_know_scorers(capsys, tmp_path: Path) -> None:
    assert main(["check", "logme"]) == 0
    assert "tlbench check scorer logme:" in capsys.readouterr().out
    (tmp_path / "bad.py").write_text(
        "from tlbench import Scorer\n\nclass Upside(Scorer):\n    name = 'upside'\n    definition = 'minus LogME'\n"
        "    def score(self, inputs, rng):\n        from tlbench.selection.scorers import logme, one_hot\n"
        "        return -float(logme(inputs.features, one_hot(inputs.labels, inputs.num_classes)).mean())\n")
    assert main(["check", str(tmp_path / "bad.py")]) == 2
    printed = capsys.readouterr()
    assert "FAIL  ranks separable features above noise" in printed.out
    assert main(["list", "scorers"]) == 0
    assert "logme" in capsys.readouterr().out


def hub_checkpoint(home: Path, variant: str, seed: int = 0) -> object:
    """A torchvision weights file of random weights where the torch hub cache expects it (offline)."""
    import torch
    import torchvision

    member = torchvision.models.get_model_weights(variant).IMAGENET1K_V1
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(torchvision.models.get_model(variant, weights=None).state_dict(), folder / member.url.rsplit("/", 1)[1])
    return member


@pytest.mark.parametrize("arch,variant", [("resnet", "resnet18"), ("mobilenet_v3", "mobilenet_v3_small"),
                                          ("efficientnet", "efficientnet_b0")])
def test_torchvision_weights_keep_their_imagenet_head(tmp_path: Path, monkeypatch, arch: str, variant: str) -> None:
    """The source head on the backbone's features gives exactly the logits of torchvision's network."""
    import torch
    import torchvision

    from tlbench.training.backbones import BACKBONES

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    member = hub_checkpoint(tmp_path, variant)
    cls = BACKBONES.get(arch)
    backbone = cls.with_weights(cls.Args(variant=variant), "IMAGENET1K_V1")
    head = backbone.source_head
    assert head is not None and head.weight.shape == (1000, backbone.feature_dim)
    assert head.accuracy == pytest.approx(member.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100)
    net = torchvision.models.get_model(variant, weights=member).eval()
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.softmax(net(x).double(), dim=1)
        got = head.probabilities(backbone.forward_features(x))
    assert torch.allclose(got, expected, atol=1e-6)
    # a self-made backbone or random weights have no source head
    assert cls(variant=variant).source_head is None


@pytest.mark.slow
def test_a_published_zoo_is_scored_with_its_source_heads(tmp_path: Path) -> None:
    """The same block on published weights (random files in the torch hub and Hugging Face
    caches, offline; image files on disk): LEEP and NCE read the ImageNet heads of torchvision
    and timm weights and a checkpoint file's own head; source accuracy the published top-1 where
    one is published (torchvision's, the checkpoint's), skipped with a note where not (timm)."""
    from test_images import write_folder
    from test_timm import hf_cache_with, timm

    home = tmp_path / "torch"
    members = {v: hub_checkpoint(home, v, seed=i) for i, v in enumerate(["resnet18", "mobilenet_v3_small"])}
    hf_cache_with("test_resnet.r160_in1k", timm.create_model("test_resnet.r160_in1k"), tmp_path / "hf")
    from tlbench.training.backbones import build_backbone

    own = build_backbone("cnn2d", {"in_channels": 3, "width": 4, "depth": 2}, seed=3)
    torch.save({"backbone": own.state_dict(), "source_accuracy": 0.5,
                "head": {"weight": torch.randn(6, own.feature_dim), "bias": torch.zeros(6)}}, tmp_path / "own.pt")
    write_folder(tmp_path / "data" / "shapes" / "train", ["a", "b", "c"], 8)
    write_folder(tmp_path / "data" / "shapes" / "test", ["a", "b", "c"], 3, seed=1)
    (tmp_path / "zoo.yaml").write_text(
        "name: zoo\ntrials: 1\nseeds: 2\nstrategies: [linear_probe]\ntraining: {epochs: [1, 2], batch_size: 8}\n"
        "data_root: data\ntasks:\n  shapes:\n    dataset: image_folder\n"
        "    args: {path: shapes/train, test: shapes/test}\n    split: {val_per_class: 2}\n    image_size: 32\n"
        "    backbones: [r18, mnv3, timm-r, own]\nbackbones:\n"
        "  r18: {arch: resnet, args: {variant: resnet18}, weights: IMAGENET1K_V1}\n"
        "  mnv3: {arch: mobilenet_v3, args: {variant: mobilenet_v3_small}, weights: IMAGENET1K_V1}\n"
        "  timm-r: {arch: 'timm:test_resnet.r160_in1k', weights: DEFAULT}\n"
        "  own: {arch: cnn2d, args: {in_channels: 3, width: 4, depth: 2}, checkpoint: own.pt}\n"
        "model_selection:\n  scorers: [leep, nce, logme, source_accuracy, parameters]\n")
    env = {k: v for k, v in os.environ.items() if k != "TLBENCH_DATA"}
    r = subprocess.run([sys.executable, "-m", "tlbench.cli", "run", "zoo.yaml", "--out", "out", "--cache-dir", "cache",
                        "--report", "tables", "--threads", "1"], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "TORCH_HOME": str(home), "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {(x.backbone, x.scorer): x for x in score_records(open_storage(None, tmp_path / "out"))}
    assert len(got) == 20
    skipped = {k for k, x in got.items() if not x.values}
    assert skipped == {("timm-r", "source_accuracy")} and "source accuracy" in got[("timm-r", "source_accuracy")].skipped
    for name, variant in (("r18", "resnet18"), ("mnv3", "mobilenet_v3_small")):
        published = members[variant].meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100  # type: ignore[attr-defined]
        assert got[(name, "source_accuracy")].values == [pytest.approx(published)]
    assert got[("own", "source_accuracy")].values == [0.5]
    for name in ("r18", "mnv3", "timm-r", "own"):
        assert got[(name, "leep")].values[0] < 0 and got[(name, "nce")].values[0] <= 0
    assert got[("r18", "parameters")].values[0] > got[("mnv3", "parameters")].values[0]
    assert "Model selection" in (tmp_path / "out" / "table.md").read_text()


def test_the_dry_run_says_what_will_be_scored(tmp_path: Path, capsys) -> None:
    suite = write_suite(tmp_path, name="dry", selection="  scorers: [logme, leep]\n  ground_truth: [linear_probe]")
    assert main(["run", str(suite), "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert ("model selection: 2 scorers (logme, leep) on 3 task × backbone pairs, before fine-tuning; ranked "
            "against linear_probe") in printed.out + printed.err


def test_the_bundled_zoo_suite_is_listed_and_plans(capsys) -> None:
    assert main(["list", "suites"]) == 0
    assert "zoo" in capsys.readouterr().out
    from tlbench.run.plan import load_plan
    from tlbench.suites import resolve_suite_path

    plan = load_plan(resolve_suite_path("zoo"), data=False)
    assert len(plan.suite.backbones) >= 8 and len(plan.suite.tasks) >= 3
    assert {s for s in plan.suite.model_selection.ground_truth} == {"full_finetune", "linear_probe"}
    sources = {plan.suite.source_tasks[b.pretrain.task].typed_args().classes for b in plan.suite.backbones.values()}
    assert {"digits", "letters", "alnum", "symbols"} <= sources


def test_a_task_with_one_class_is_refused_before_scoring(tmp_path: Path, capsys) -> None:
    suite = write_suite(tmp_path, name="one")
    suite.write_text(suite.read_text().replace("    dataset: digits\n", "    dataset: digits\n    classes: [3]\n"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tasks.digits.classes: [3] is not a list of at least two distinct classes" in err[0]
    assert not (tmp_path / "out" / "store.journal").exists()


@pytest.mark.slow
def test_a_scorer_scored_again_after_its_code_changed_is_read_once(tmp_path: Path) -> None:
    """An edited plugin scorer is scored again (its unit is keyed by its code); the report reads its
    latest values only, never both versions mixed."""
    (tmp_path / "myscore.py").write_text(PLUGIN.format(name="edited_norm", body="return 1.0"))
    suite = write_suite(tmp_path, name="edit", selection="  scorers: [edited_norm]", plugins="plugins: [myscore.py]")
    out = tmp_path / "out"

    def run() -> None:
        got = subprocess.run([sys.executable, "-m", "tlbench.cli", "run", str(suite), "--out", str(out), "--threads",
                              "1", "--report", "none"], capture_output=True, text=True)
        assert got.returncode == 0, got.stderr[-2000:]

    run()
    (tmp_path / "myscore.py").write_text(PLUGIN.format(name="edited_norm", body="return 2.0"))
    run()
    assert sum(len(states) for states in score_trials(out).values()) == 6  # scored twice per pair
    frame = load_scores(open_storage(None, out))
    assert len(frame) == 3 and set(frame["value"]) == {2.0}



BROKEN_SCORERS = {
    "typo": ("needs = ('featurs',)", "return 1.0",
             "model_selection: scorer 'broken' ({origin}): needs unknown input(s) 'featurs'"),
    "string": ("needs = 'features'", "return 1.0",
               "needs must be a tuple of input names such as ('features',), got 'features'"),
    "raises": ("", "return 1 / 0",
               "model_selection (digits / narrow): scorer 'broken' raised ZeroDivisionError: division by zero "
               "(broken.py, line"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SCORERS))
def test_a_broken_scorer_plugin_is_one_line(tmp_path: Path, capsys, case: str) -> None:
    declaration, body, needle = BROKEN_SCORERS[case]
    (tmp_path / "broken.py").write_text(
        "from tlbench import Scorer\n\n\nclass Broken(Scorer):\n    name = 'broken'\n"
        f"    definition = 'a broken scorer'\n    {declaration}\n\n    def score(self, inputs, rng):\n"
        f"        {body}\n")
    suite = write_suite(tmp_path, name=f"broken{case}", selection="  scorers: [hscore, broken]",
                        plugins="plugins: [broken.py]")
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--threads", "1", "--report", "none"]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tlbench: error")]
    assert len(errors) == 1, errors
    assert needle.format(origin=f"file {tmp_path / 'broken.py'}")[:60] in errors[0] or needle in errors[0], errors[0]


def test_check_finds_a_scorer_reading_an_input_it_did_not_declare(tmp_path: Path, capsys) -> None:
    (tmp_path / "sneaky.py").write_text(
        "from tlbench import Scorer\n\n\nclass Sneaky(Scorer):\n    name = 'sneaky'\n"
        "    definition = 'reads the source head without saying so'\n\n    def score(self, inputs, rng):\n"
        "        return float(inputs.source_probs.max())\n")
    assert main(["check", str(tmp_path / "sneaky.py")]) == 2
    out = capsys.readouterr().out
    assert "FAIL  reads only the inputs it declares: with only the inputs it declares (features) it fails" in out


def test_the_report_shows_the_scorers_the_suite_names_now(tmp_path: Path) -> None:
    out = tmp_path / "out"
    suite = write_suite(tmp_path, name="narrow", selection="  scorers: [logme, hscore]")
    assert main(["run", str(suite), "--out", str(out), "--threads", "1", "--report", "none"]) == 0
    suite = write_suite(tmp_path, name="narrow", selection="  scorers: [hscore]")
    assert main(["run", str(suite), "--out", str(out), "--threads", "1", "--report", "tables"]) == 0
    assert set(load_scores(open_storage(None, out))["scorer"]) == {"hscore"}
    assert "| logme " not in (out / "table.md").read_text()


def test_a_bare_model_selection_line_asks_for_the_defaults(tmp_path: Path, capsys) -> None:
    suite = write_suite(tmp_path, name="bare", selection="")
    assert main(["run", str(suite), "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert f"model selection: {len(SCORERS)} scorers" in printed.out + printed.err


@pytest.mark.slow
def test_two_workers_score_each_unit_once_with_the_single_workers_values(tmp_path: Path) -> None:
    """Two workers started together on one journal share the scoring (each unit claimed once) and
    store exactly the values one worker stores alone."""
    suite = write_suite(tmp_path, name="pair", selection="  scorers: [logme, hscore, nleep]\n  seeds: 2")
    env = {**os.environ}

    def worker(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tlbench.cli", "run", str(suite), "--out", str(out),
                                 "--threads", "1", "--report", "none"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    both = [worker(tmp_path / "shared"), worker(tmp_path / "shared")]
    for proc in both:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    alone = worker(tmp_path / "alone")
    assert alone.wait(timeout=600) == 0, alone.stderr.read()[-2000:]
    shared = values(tmp_path / "shared")
    assert shared == values(tmp_path / "alone") and len(shared) == 9
    states = [s for trials in score_trials(tmp_path / "shared").values() for s in trials]
    assert states.count(TrialState.COMPLETE) == 3  # one finished unit per pair: nothing scored twice
    assert TrialState.RUNNING not in states


@pytest.mark.parametrize("stored,needle", [
    ([{"schema_version": 9}], "score record schema 9 is newer than this tlbench reads (1); upgrade tlbench"),
    ([{"schema_version": 1, "suite": "s"}], "a score record is malformed (task: Field required)"),
    ("not a list", "malformed scores (not a list)"),
])
def test_a_damaged_or_newer_score_record_is_one_line(stored: object, needle: str) -> None:
    from tlbench.store.records import StoreError
    from tlbench.store.scores import score_study_name

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=score_study_name("s", "t", "b"), storage=storage)
    trial = study.ask()
    trial.set_user_attr("scores", stored)
    study.tell(trial, 1.0)
    with pytest.raises(StoreError) as err:
        load_scores(storage)
    assert needle in str(err.value) and "s::t::b::select trial 0" in str(err.value) and "\n" not in str(err.value)
