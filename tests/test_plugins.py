"""Plugins: a strategy from a file next to the suite, one from an installed package's entry
point, ``tlbench check``, and every way a plugin can be wrong (one line, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tlbench.cli.main import main
from tlbench.core.codeversion import code_version, package_version
from tlbench.core.registry import _PLUGIN_SOURCES
from tlbench.run import plugins
from tlbench.strategies import STRATEGIES
from tlbench.suites.datasets import DATASETS
from tlbench.testing import PROPERTIES
from tlbench.training.backbones import BACKBONES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlbench.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_a_plugin_file_runs_beside_the_built_ins(tmp_path: Path) -> None:
    got = cli("run", str(EXAMPLES / "reinit" / "suite.yaml"), "--out", str(tmp_path), "--trials", "2",
              "--seeds", "2", "--report", "tables")
    assert got.returncode == 0, got.stderr[-2000:]
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert set(runs["strategy"]) == {"linear_probe", "full_finetune", "reinit"}
    reinit = runs[runs["strategy"] == "reinit"]
    assert len(reinit) == 2 * 2  # tasks × seeds
    origin = reinit["strategy_origin"].iloc[0]
    assert origin.startswith(f"file {EXAMPLES / 'reinit' / 'reinit.py'} (sha256 ")
    assert (runs[runs["strategy"] != "reinit"]["strategy_origin"] == "tlbench").all()
    # re-initialised or not, every parameter trains, as in full fine-tuning; the searched count is recorded
    full = runs[runs["strategy"] == "full_finetune"]
    assert set(reinit["trainable_parameters"]) == set(full["trainable_parameters"])
    assert all("reinit_groups" in p for p in reinit["params"])
    assert "| reinit |" in (tmp_path / "table.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "plugins" in html and "reinit.py" in html


@pytest.mark.slow
def test_an_installed_entry_point_is_found_without_a_suite_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "--target", str(site),
                          str(EXAMPLES / "tlbench-example-plugin")], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    env = {"PYTHONPATH": str(site)}
    listed = cli("list", "strategies", env=env)
    assert listed.returncode == 0 and "norm_tune" in listed.stdout, listed.stderr
    assert "norm_tune" not in cli("list", "strategies").stdout  # only where the package is installed
    out = tmp_path / "run"
    ran = cli("run", str(EXAMPLES / "tlbench-example-plugin" / "suite.yaml"), "--out", str(out), "--trials", "2",
              "--seeds", "2", "--report", "tables", env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    runs = pd.read_parquet(out / "runs.parquet")
    origins = set(runs[runs["strategy"] == "norm_tune"]["strategy_origin"])
    assert origins == {"distribution tlbench-example-plugin 0.1.0 (tlbench_example_plugin:NormTune)"}
    checked = cli("check", "norm_tune", env=env)
    assert checked.returncode == 0 and checked.stdout.count("PASS") == len(PROPERTIES), checked.stdout + checked.stderr


def test_tlbench_check_passes_the_example(capsys: pytest.CaptureFixture[str], registries) -> None:
    assert main(["check", str(EXAMPLES / "reinit" / "reinit.py:ReInit")]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(PROPERTIES) and "FAIL" not in out


def test_the_same_check_runs_from_python(registries) -> None:
    from tlbench.testing import check_strategy

    plugin = plugins.load_plugin(str(EXAMPLES / "reinit" / "reinit.py"), base=ROOT, where="test")
    [cls] = plugin.classes
    report = check_strategy(cls)
    report.assert_ok()
    assert STRATEGIES.origin("reinit") == plugin.origin


def test_each_cache_is_keyed_on_the_code_that_can_change_it(tmp_path: Path, registries) -> None:
    """A strategy plugin's code keys its own models, not the pretrained backbones or the features; the
    plugin's code is its file and the helpers it imports, not every file beside it."""
    from tlbench.core.codeversion import features_version, pretraining_version, strategy_version

    assert code_version() == package_version()
    pretraining, features = pretraining_version(), features_version()
    full = strategy_version(STRATEGIES.get("full_finetune"))
    source = (EXAMPLES / "reinit" / "reinit.py").read_text()

    def load(folder: str, text: str, helper: str | None = None, unrelated: str | None = None) -> str:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.py").write_text(text)
        if helper is not None:
            (tmp_path / folder / "helper.py").write_text(helper)
        if unrelated is not None:
            (tmp_path / folder / "notes.py").write_text(unrelated)
        for registry_map in (STRATEGIES._entries, STRATEGIES._origins, STRATEGIES._sources, STRATEGIES._files):
            registry_map.pop("reinit", None)
        _PLUGIN_SOURCES.clear()
        plugins.load_plugin(f"{folder}/m.py", base=tmp_path, where="test")
        return strategy_version(STRATEGIES.get("reinit"), source=STRATEGIES.source("reinit"))

    a = load("a", source)
    assert code_version() != package_version()  # the whole package's code with every plugin's
    assert (pretraining_version(), features_version()) == (pretraining, features)  # a strategy plugin: not these
    assert strategy_version(STRATEGIES.get("full_finetune")) == full  # nor another strategy's models
    assert load("b", source + "\n# edited\n") != a  # an edit, even a comment, re-keys its models
    assert load("c", source, unrelated="x = 1\n") == a  # a file beside it that it does not import: nothing
    uses_helper = source.replace("from __future__ import annotations\n",
                                 "from __future__ import annotations\n\nimport helper  # noqa: F401\n", 1)
    assert "import helper" in uses_helper
    with_helper = load("d", uses_helper, helper="A = 1\n")
    assert load("e", uses_helper, helper="A = 2\n") != with_helper  # a helper it imports: its code
    assert STRATEGIES.files("reinit") == {"helper.py": STRATEGIES.files("reinit")["helper.py"],
                                          "m.py": STRATEGIES.files("reinit")["m.py"]}


BROKEN = "\n".join([
    "import itertools",
    "from tlbench.strategies.full_finetune import FullFinetune",
    "CALLS = itertools.count(1000)",  # a seed of its own for every fit (a random one collided about once in 99)
    "class Broken(FullFinetune):",
    "    name = 'broken'",
    "    description = 'ignores its seed'",
    "    def fit(self, backbone, task, params, *, seed, reporter, runtime):",
    "        return super().fit(backbone, task, params, seed=next(CALLS), reporter=reporter, runtime=runtime)",
])

BAD_PLUGINS = [
    ("missing-file", {}, "plugins: [nope.py]", ("plugins[0] 'nope.py'", "no such file")),
    ("syntax-error", {"bad.py": "def broken(:\n    pass\n"}, "plugins: [bad.py]",
     ("plugins[0] 'bad.py'", "syntax error at line 1")),
    ("import-error-inside", {"bad.py": "x = 1\nimport not_a_module_anywhere\n"}, "plugins: [bad.py]",
     ("'bad.py'", "import failed: ModuleNotFoundError", "not_a_module_anywhere", "(line 2)")),
    ("error-inside", {"bad.py": "raise RuntimeError('no GPU here')\n"}, "plugins: [bad.py]",
     ("'bad.py'", "RuntimeError: no GPU here (line 1)")),
    ("duplicate-name", {"dup.py": "from tlbench import Strategy\nfrom tlbench.strategies.linear_probe import "
                        "LinearProbe\nclass Mine(LinearProbe):\n    name = 'linear_probe'\n"},
     "plugins: [dup.py]", ("'dup.py'", "Mine", "duplicate strategy name 'linear_probe'", "tlbench has it already")),
    ("nothing-to-register", {"empty.py": "class Helper:\n    pass\n"}, "plugins: [empty.py]",
     ("'empty.py'", "defines no public Strategy, Backbone or Dataset subclass")),
    ("no-such-module", {}, "plugins: [no_such_plugin_module]",
     ("'no_such_plugin_module'", "no such module, and no such file")),
]


@pytest.mark.parametrize("files, line, needles", [case[1:] for case in BAD_PLUGINS],
                         ids=[case[0] for case in BAD_PLUGINS])
def test_a_bad_plugin_is_one_line_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str], registries,
                                                 files: dict[str, str], line: str, needles: tuple[str, ...]) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"include: {ROOT / 'suites' / 'smoke.yaml'}\nname: plug\n{line}\n")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(suite) in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (out / "store.journal").exists()  # stopped before anything was stored


def test_an_entry_point_of_the_wrong_kind_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, registries) -> None:
    dist = tmp_path / "wrong_kind-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wrong-kind\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tlbench.strategies]\nwrong = wrong_kind:NotAStrategy\n")
    (tmp_path / "wrong_kind.py").write_text("class NotAStrategy:\n    name = 'wrong'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins._LOADED_ENTRY_POINTS = None
    assert main(["list", "strategies"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for needle in ("entry point wrong = wrong_kind:NotAStrategy", "wrong-kind 1.0", "'NotAStrategy' is not a "
                   "subclass of Strategy", "must subclass tlbench.Strategy"):
        assert needle in err, (needle, err)


def test_a_strategy_that_fails_the_check_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  registries) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    assert main(["check", str(tmp_path / "broken.py:Broken")]) == 2
    captured = capsys.readouterr()
    assert "FAIL  is deterministic for a seed" in captured.out and captured.out.count("PASS") == len(PROPERTIES) - 1
    [line] = captured.err.strip().splitlines()
    assert "broken.py:Broken" in line
    assert f"strategy broken fails 1 of {len(PROPERTIES)} checks (is deterministic for a seed)" in line
    assert main(["check", str(tmp_path / "broken.py:Other")]) == 2
    assert "no strategy, backbone, dataset or scorer class Other" in capsys.readouterr().err


DATA_AND_BACKBONE = '''
import torch
from pydantic import Field
from tlbench import DataPool, Dataset, Frozen
from tlbench.training.backbones import SmallCNN2d


class BlobArgs(Frozen):
    n: int = Field(300, gt=0)


class Blobs(Dataset):
    name = "blobs"
    description = "three Gaussian blobs as 8x8 images"
    Args = BlobArgs

    def load(self, args, data):
        g = torch.Generator().manual_seed(0)
        y = torch.arange(args.n) % 3
        x = torch.randn(args.n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
        return DataPool(x, y, ("a", "b", "c"))


class WideCNN(SmallCNN2d):
    name = "wide_cnn"
    description = "the small 2-D CNN under another name"
'''


def extras_suite(folder: Path) -> Path:
    """A suite whose dataset and backbone come from the plugin file ``extras.py`` beside it."""
    (folder / "extras.py").write_text(DATA_AND_BACKBONE)
    suite = folder / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        name: extras
        plugins: [extras.py]
        strategies: [linear_probe]
        tasks:
          blobs-5shot:
            dataset: blobs
            args: {n: 240}
            split: {shots: 5, val_per_class: 5}
            backbones: [wide]
        backbones:
          wide: {arch: wide_cnn, args: {width: 4}}
    """))
    return suite


def test_tlbench_check_checks_every_kind_of_plugin_a_file_defines(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    registries) -> None:
    """`tlbench check FILE.py`: the dataset and the backbone it defines, each against its contract; `--args`
    gives a backbone's or dataset's arguments and a malformed one is one line."""
    from tlbench.testing import BACKBONE_PROPERTIES, DATASET_PROPERTIES

    (tmp_path / "extras.py").write_text(DATA_AND_BACKBONE)
    assert main(["check", str(tmp_path / "extras.py")]) == 0
    out = capsys.readouterr().out
    assert "tlbench check dataset blobs:" in out and "tlbench check backbone wide_cnn:" in out
    assert out.count("PASS") == len(BACKBONE_PROPERTIES) + len(DATASET_PROPERTIES) and "FAIL" not in out
    assert main(["check", str(tmp_path / "extras.py:Blobs"), "--args", "{n: 0}"]) == 2
    captured = capsys.readouterr()
    assert "FAIL  its Args take the arguments given: raised ConfigError" in captured.out
    assert "dataset blobs fails 4 of 5 checks" in captured.err
    assert main(["check", str(tmp_path / "extras.py:WideCNN"), "--args", "[1, 2]"]) == 2
    assert "check --args '[1, 2]': give a mapping of arguments" in capsys.readouterr().err


def test_datasets_and_backbones_plug_in_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     registries) -> None:
    suite = extras_suite(tmp_path)
    assert main(["run", str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert DATASETS.origin("blobs").startswith("file ") and BACKBONES.origin("wide_cnn").startswith("file ")
    suite.write_text(suite.read_text().replace("{n: 240}", "{n: -1}"))
    assert main(["run", str(suite), "--dry-run"]) == 2
    assert "tasks.blobs-5shot.args.n: Input should be greater than 0 (got -1)" in capsys.readouterr().err


def test_a_plugin_file_imports_its_own_helpers(tmp_path: Path, registries, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards
    before = list(sys.path)
    (tmp_path / "shared_space.py").write_text("def space(trial):\n    return {'epochs': 2}\n")
    (tmp_path / "uses_helper.py").write_text(
        "from shared_space import space\nfrom tlbench.strategies.full_finetune import FullFinetune\n"
        "class Helped(FullFinetune):\n    name = 'helped'\n    description = 'imports a sibling module'\n")
    plugin = plugins.load_plugin("uses_helper.py", base=tmp_path, where="test")
    assert [c.__name__ for c in plugin.classes] == ["Helped"]
    assert sys.path == [*before, str(tmp_path)]  # appended: it shadows nothing, and lazy imports work


def test_an_included_suites_plugins_are_relative_to_it(tmp_path: Path, registries) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "reinit.py").write_text((EXAMPLES / "reinit" / "reinit.py").read_text())
    (tmp_path / "base" / "base.yaml").write_text(f"include: {ROOT / 'suites' / 'smoke.yaml'}\nplugins: [reinit.py]\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "suite.yaml").write_text("include: ../base/base.yaml\nname: inc\n"
                                                  "strategies: [linear_probe, reinit]\n")
    assert main(["run", str(tmp_path / "mine" / "suite.yaml"), "--dry-run"]) == 0


@pytest.mark.slow
def test_an_edited_plugin_is_not_mixed_into_its_old_runs(tmp_path: Path) -> None:
    (tmp_path / "reinit.py").write_text((EXAMPLES / "reinit" / "reinit.py").read_text())
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"include: {ROOT / 'suites' / 'smoke.yaml'}\nname: edit\nplugins: [reinit.py]\n"
                     "strategies: [reinit]\n")
    args = ("run", str(suite), "--out", str(tmp_path / "out"), "--trials", "1", "--seeds", "1", "--report", "none")
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    (tmp_path / "reinit.py").write_text((tmp_path / "reinit.py").read_text() + "\n# a fix\n")
    again = cli(*args)
    assert again.returncode == 2
    [line] = again.stderr.strip().splitlines()
    assert "the store holds runs of 'reinit' from other plugin code (reinit.py changed; code digest" in line
    assert line.count("sha256") == 0 and "; file " in line  # one pair of digests, and where the plugin is
    assert "another --out" in line
    (tmp_path / "reinit.py").write_text((tmp_path / "reinit.py").read_text().replace("\n# a fix\n", ""))
    (tmp_path / "notes.py").write_text("# a file beside the plugin that it does not import\n")
    assert cli(*args).returncode == 0  # back to the code the store knows: the unrelated file locks nothing


def test_an_edited_plugin_reruns_into_the_same_store_and_the_baselines_are_kept(tmp_path: Path) -> None:
    """Iterating on one method: after an edit, --rerun-edited moves the old code's studies aside (kept, out of the
    report) and runs only that strategy's cells again; the baseline's records are the very same."""
    import optuna

    from tlbench.reports.results import load_results
    from tlbench.store.archive import archived_studies
    from tlbench.store.opening import open_existing_storage

    (tmp_path / "reinit.py").write_text((EXAMPLES / "reinit" / "reinit.py").read_text())
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"include: {ROOT / 'suites' / 'smoke.yaml'}\nname: edit\nplugins: [reinit.py]\n"
                     "strategies: [reinit, linear_probe]\n")
    journal = tmp_path / "out" / "store.journal"
    args = ("run", str(suite), "--out", str(tmp_path / "out"), "--trials", "1", "--seeds", "2", "--report", "none",
            "--tasks", "mnist1d-shifted")
    assert cli(*args).returncode == 0
    before = load_results(str(journal), importances=False).runs
    (tmp_path / "reinit.py").write_text((tmp_path / "reinit.py").read_text() + "\n# a fix\n")
    refused = cli(*args)
    assert refused.returncode == 2 and "--rerun-edited" in refused.stderr
    rerun = cli(*args, "--rerun-edited")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stderr.count("edited plugin code: moved edit::") == 2  # its tuning and evaluation studies
    after = load_results(str(journal), importances=False).runs
    keys = ["strategy", "seed", "started_at", "test_accuracy"]
    baseline = lambda runs: runs[runs["strategy"] == "linear_probe"][keys].reset_index(drop=True)  # noqa: E731
    assert baseline(after).equals(baseline(before)) and len(baseline(after)) == 2  # reused, not rerun
    old, new = (runs[runs["strategy"] == "reinit"] for runs in (before, after))
    assert len(new) == 2 and set(new["started_at"]).isdisjoint(old["started_at"])  # rerun with the new code
    storage = open_existing_storage(str(journal))
    moved = archived_studies(storage)
    assert sorted(moved.values()) == ["edit::mnist1d-shifted::signal-cnn::reinit::eval",
                                      "edit::mnist1d-shifted::signal-cnn::reinit::tune"]
    for archive, source in moved.items():  # nothing lost: every old trial is in its archive
        kept = optuna.load_study(study_name=archive, storage=storage).get_trials(deepcopy=False)
        assert len(kept) >= 1 and archive.startswith(source + "@")
    assert cli(*args).returncode == 0  # the new code is now the store's


def test_archiving_a_study_finishes_a_move_cut_short_and_refuses_live_workers(tmp_path: Path) -> None:
    import optuna

    from tlbench.core.errors import ConfigError
    from tlbench.core.processes import worker_id
    from tlbench.store.archive import ARCHIVED_FROM, archive_name, archive_study, archived_studies
    from tlbench.store.opening import open_storage

    storage = open_storage(str(tmp_path / "store.journal"), tmp_path)
    name = "s::t::b::x::eval"
    study = optuna.create_study(study_name=name, storage=storage)
    for value in (0.1, 0.2, 0.3):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"record": {"v": value}}))
    # killed after copying part of the study, before marking the copy: the copy is made again
    partial = optuna.create_study(study_name=archive_name(name, "abc"), storage=storage)
    partial.add_trial(optuna.trial.create_trial(value=0.1))
    assert archive_study(storage, name, "abc") == archive_name(name, "abc")
    names = optuna.get_all_study_names(storage)
    assert name not in names and archived_studies(storage) == {archive_name(name, "abc"): name}
    copy = optuna.load_study(study_name=archive_name(name, "abc"), storage=storage)
    assert [t.value for t in copy.trials] == [0.1, 0.2, 0.3] and copy.user_attrs[ARCHIVED_FROM] == name
    # killed after marking the copy, before deleting the original: the marked copy is kept
    again = optuna.create_study(study_name=name, storage=storage)
    again.add_trial(optuna.trial.create_trial(value=0.9))
    archive_study(storage, name, "abc")
    assert [t.value for t in optuna.load_study(study_name=archive_name(name, "abc"), storage=storage).trials] == [
        0.1, 0.2, 0.3]
    # a trial a live worker (this process) runs: refused, nothing moved
    live = optuna.create_study(study_name=name, storage=storage)
    trial = live.ask()
    storage.set_trial_user_attr(trial._trial_id, "worker", worker_id())
    from tlbench.store import claims

    claims._HELD.add(trial._trial_id)
    try:
        with pytest.raises(ConfigError, match="still run in worker"):
            archive_study(storage, name, "def")
    finally:
        claims._HELD.discard(trial._trial_id)
    assert name in optuna.get_all_study_names(storage)
