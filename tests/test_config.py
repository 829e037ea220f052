"""Suite-file and command-line validation.

Every bad input must end as ONE line ``tlbench: error: ...`` on stderr naming the file,
the field and the bad / allowed values, with exit code 2 and no traceback. Good suites
(the bundled ones, ``include:`` merges, CLI overrides) must plan cleanly.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from tlbench.cli.main import main
from tlbench.run.plan import Cell, load_plan
from tlbench.suites.schema import parse_suite

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "suites" / "quick.yaml"
SMOKE = ROOT / "suites" / "smoke.yaml"


# --------------------------------------------------------------------------- helpers


def write_suite(tmp_path: Path, body: str, *, include: bool = True, name: str = "suite.yaml") -> Path:
    """Writes a suite file; by default it starts with ``include:`` of the bundled quick suite."""
    path = tmp_path / name
    head = f'include: "{QUICK}"\n' if include else ""
    path.write_text(head + textwrap.dedent(body).lstrip("\n"))
    return path


def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], suite: Path | str,
            *extra: str) -> tuple[int, str, str]:
    """Runs ``tlbench run SUITE --dry-run`` in-process; returns (exit code, stdout, stderr)."""
    rc = main(["run", str(suite), "--dry-run", "--out", str(tmp_path / "o"), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc: int, out: str, err: str, *needles: str) -> str:
    """Exit code 2, exactly one non-empty stderr line containing every needle, no traceback."""
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one error line, got {err!r}"
    line = lines[0]
    assert line.startswith("tlbench: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# ------------------------------------------------------- bad suite files, via the CLI

# (id, suite body appended after `include: quick.yaml`, strings the error line must contain)
BAD_SUITES: list[tuple[str, str, tuple[str, ...]]] = [
    ("unknown-strategy", "strategies: [linear_probe, bogus]",
     ("strategies[1]", "'bogus'", "linear_probe", "full_finetune", "scratch")),
    ("duplicate-strategy", "strategies: [scratch, scratch]", ("strategies", "twice")),
    ("strategy-not-a-list", "strategies: scratch", ("strategies", "list", "'scratch'")),
    ("unknown-dataset", """
        tasks:
          digits-2shot:
            dataset: nope
        """, ("tasks.digits-2shot.dataset", "'nope'", "cifar10, cifar100, digits, dtd")),
    ("unknown-source-dataset", """
        source_tasks:
          glyphs-alnum:
            dataset: nope
        """, ("source_tasks.glyphs-alnum.dataset", "'nope'", "cifar10, cifar100, digits, dtd")),
    ("unknown-arch", """
        backbones:
          glyph-cnn:
            arch: vgg
        """, ("backbones.glyph-cnn.arch", "'vgg'", "cnn1d, cnn2d, convnext")),
    ("bad-backbone-arg", """
        backbones:
          glyph-cnn:
            args: {widht: 8}
        """, ("backbones.glyph-cnn.args.widht", "in_channels, width, depth")),
    ("undefined-backbone", """
        tasks:
          digits-2shot:
            backbones: [nope]
        """, ("tasks.digits-2shot.backbones", "'nope'", "glyph-cnn", "signal-cnn")),
    ("no-backbones", """
        tasks:
          digits-2shot:
            backbones: []
        """, ("tasks.digits-2shot.backbones", "glyph-cnn", "signal-cnn")),
    ("undefined-pretrain-task", """
        backbones:
          glyph-cnn:
            pretrain: {task: nope}
        """, ("backbones.glyph-cnn.pretrain.task", "'nope'", "glyphs-alnum", "mnist1d-source",
              "digits-2shot", "mnist1d-shifted")),
    ("two-weight-sources", """
        backbones:
          glyph-cnn:
            weights: DEFAULT
        """, ("backbones.glyph-cnn", "at most one of weights, checkpoint, pretrain")),
    ("image-size-typo", """
        tasks:
          digits-2shot:
            image_size: nativ
        """, ("tasks.digits-2shot.image_size", "a number of pixels from 8 to 1024, or native", "'nativ'")),
    ("image-size-too-small", """
        tasks:
          digits-2shot:
            image_size: 0
        """, ("tasks.digits-2shot.image_size", "from 8 to 1024, or native", "(got 0)")),
    ("misspelled-top-field", "trails: 3", ("trails", "unknown field")),
    ("misspelled-split-field", """
        tasks:
          digits-2shot:
            split: {shot: 2}
        """, ("tasks.digits-2shot.split.shot", "unknown field")),
    ("misspelled-task-field", """
        tasks:
          digits-2shot:
            backbone: [glyph-cnn]
        """, ("tasks.digits-2shot.backbone", "unknown field")),
    ("trials-not-int", "trials: many", ("trials", "integer", "'many'")),
    ("seeds-negative", "seeds: -1", ("seeds", "greater than 0", "-1")),
    ("epochs-unordered", "training: {epochs: [5, 2]}", ("training", "epochs", "[5, 2]")),
    ("test-fraction-range", """
        tasks:
          digits-2shot:
            split: {test_fraction: 1.5}
        """, ("tasks.digits-2shot.split.test_fraction", "less than 1", "1.5")),
    ("shots-too-many", """
        tasks:
          digits-2shot:
            split: {shots: 500}
        """, ("tasks.digits-2shot.split.shots", "500", "allowed: 1..")),
    ("shots-zero", """
        tasks:
          digits-2shot:
            split: {shots: 0}
        """, ("tasks.digits-2shot.split.shots", "greater than 0", "0")),
    ("glyphs-n-negative", """
        source_tasks:
          glyphs-alnum:
            args: {n: -5}
        """, ("source_tasks.glyphs-alnum.args.n", "greater than 0", "(got -5)")),
    ("glyphs-unknown-arg", """
        source_tasks:
          glyphs-alnum:
            args: {bogus: 1}
        """, ("source_tasks.glyphs-alnum.args.bogus", "unknown field (got 1); allowed: n, size, classes, seed, max_rotation")),
    ("glyphs-bad-charset", """
        source_tasks:
          glyphs-alnum:
            args: {classes: greek}
        """, ("source_tasks.glyphs-alnum.args.classes", "'greek'", "'digits'", "'letters'", "'alnum'")),
    ("digits-takes-no-args", """
        tasks:
          digits-2shot:
            args: {n: 5}
        """, ("tasks.digits-2shot.args.n", "5")),
    ("mnist1d-unknown-arg", """
        tasks:
          mnist1d-shifted:
            args: {num_sample: 100}
        """, ("tasks.mnist1d-shifted.args.num_sample", "num_samples")),
    ("rotation-on-1d", """
        tasks:
          mnist1d-shifted:
            shift: {kind: rotation, severity: 10}
        """, ("tasks.mnist1d-shifted.shift.kind", "rotation", "noise, translation")),
    ("unknown-shift-kind", """
        tasks:
          digits-2shot:
            shift: {kind: blur, severity: 1}
        """, ("tasks.digits-2shot.shift.kind", "'blur'", "'noise', 'rotation' or 'translation'")),
    ("bad-classes", """
        tasks:
          digits-2shot:
            classes: [3, 11]
        """, ("tasks.digits-2shot.classes", "[3, 11]", "0..9")),
    ("task-in-both-groups", """
        source_tasks:
          digits-2shot: {dataset: digits}
        """, ("tasks and source_tasks", "digits-2shot")),
]


@pytest.mark.parametrize("body,needles", [pytest.param(b, n, id=i) for i, b, n in BAD_SUITES])
def test_bad_suite_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     body: str, needles: tuple[str, ...]) -> None:
    """Each bad field names the file, the field path and the bad or allowed values."""
    path = write_suite(tmp_path, body)
    rc, out, err = run_cli(tmp_path, capsys, path)
    assert_one_error(rc, out, err, str(path), *needles)


def test_shots_error_gives_allowed_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Too many shots: the message gives a numeric allowed range within the class size."""
    path = write_suite(tmp_path, """
        tasks:
          digits-2shot:
            split: {shots: 500}
        """)
    line = assert_one_error(*run_cli(tmp_path, capsys, path))
    match = re.search(r"allowed: 1\.\.(\d+)", line)
    assert match, line
    # digits-2shot keeps half of each class (~174..183) for test and 5 for val.
    assert 70 <= int(match.group(1)) < 183


def test_missing_required_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A standalone suite without ``tasks:`` names the missing field."""
    path = write_suite(tmp_path, """
        name: lonely
        strategies: [scratch]
        backbones:
          b: {arch: cnn2d}
        """, include=False)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "tasks", "required field is missing")


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty file is a suite with every required field missing (reports one of them)."""
    path = write_suite(tmp_path, "", include=False)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "required field is missing")


def test_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A YAML list at the top level is refused with the type it got."""
    path = write_suite(tmp_path, "- a\n- b\n", include=False)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "mapping", "list")


def test_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Broken YAML: file, line number, 'not valid YAML'."""
    path = write_suite(tmp_path, "trials: [1, 2\nseeds: 3\n")
    line = assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "not valid YAML")
    assert re.search(r"line \d+", line), line


def test_invalid_yaml_says_why_a_tab_most_of_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_suite(tmp_path, "training:\n\tepochs: [2, 4]\n")
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "line 3, column 1",
                     "a tab in the indentation (YAML indents with spaces only)")
    path = write_suite(tmp_path, "trials: [1, 2\nseeds: 3\n")
    assert_one_error(*run_cli(tmp_path, capsys, path), "not valid YAML (expected ',' or ']', but got ':')")


@pytest.mark.parametrize("body, where, hint", [
    ("search_space:\n  full_finetune:\n    lr_sgd: {low: 1e-3, high: 0.1, log: true}\n",
     "search_space.full_finetune.lr_sgd.low", "got '1e-3'; YAML reads 1e-3 as text: write 1.0e-3"),
    ("search_space:\n  full_finetune:\n    lr_sgd: 3e-4\n",
     "search_space.full_finetune.lr_sgd", "got '3e-4'; YAML reads 3e-4 as text: write 3.0e-4"),
    ("search_space:\n  full_finetune:\n    lr_sgd: {high: 1.5e1}\n",
     "search_space.full_finetune.lr_sgd.high", "got '1.5e1'; YAML reads 1.5e1 as text: write 1.5e+1"),
])
def test_a_number_yaml_reads_as_text_gets_the_spelling_it_needs(tmp_path: Path, capsys, body, where, hint) -> None:
    path = write_suite(tmp_path, body)
    assert_one_error(*run_cli(tmp_path, capsys, path), where, hint)


def test_trials_under_an_epochs_budget_is_said_not_silently_ignored(tmp_path: Path, capsys) -> None:
    path = write_suite(tmp_path, "budget: {epochs: 120}\n")  # the quick suite it includes says trials: 20
    rc, out, err = run_cli(tmp_path, capsys, path)
    assert rc == 0
    assert ("× 120 backbone epochs of tuning (trials: 20 does not apply under an epochs budget; budget.max_trials "
            "caps the trials at 500)") in out + err


def test_the_number_hint_through_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_error(*run_cli(tmp_path, capsys, "smoke", "--set", "search_space.full_finetune.lr_sgd.low=1e-3"),
                     "--set search_space.full_finetune.lr_sgd.low=1e-3", "write 1.0e-3")


def test_suite_path_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing suite file names the path and lists the bundled suites."""
    missing = tmp_path / "nope.yaml"
    assert_one_error(*run_cli(tmp_path, capsys, missing), str(missing), "not found", "quick", "smoke")


def test_include_a_bundled_suite_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin's suite beside the plugin reuses a bundled suite by name, as the command line takes it (an
    installed tlbench has no suites/ folder to point at); a misspelt name lists the bundled ones."""
    path = write_suite(tmp_path, "include: smoke\nname: mine\nseeds: 1\n", include=False)
    rc, out, err = run_cli(tmp_path, capsys, path)
    assert rc == 0 and "suite mine: 22 cells × 3 trials, 1 evaluation seeds" in out + err
    path = write_suite(tmp_path, "include: smok\nname: mine\n", include=False)
    assert_one_error(*run_cli(tmp_path, capsys, path), "include: 'smok' not found", "bundled suites: ", "smoke")


def test_include_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A suite including itself is refused rather than recursing forever."""
    path = tmp_path / "loop.yaml"
    path.write_text(f'include: "{path}"\n')
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "include", "cycle")


# ------------------------------------------------------------ bad command-line flags


@pytest.mark.parametrize("flags,needles", [
    pytest.param(["--trials", "0"], ("--trials 0", "positive integer"), id="trials-0"),
    pytest.param(["--trials", "-3"], ("--trials -3", "positive integer"), id="trials-negative"),
    pytest.param(["--seeds", "0"], ("--seeds 0", "positive integer"), id="seeds-0"),
    pytest.param(["--strategies", "linear_probe,bogus"],
                 ("--strategies", "'bogus'", "full_finetune, gradual_unfreeze"), id="strategies"),
    pytest.param(["--device", "gpu"], ("--device 'gpu'", "auto, cpu, cuda"), id="device-unknown"),
    pytest.param(["--precision", "fp16"], ("--precision 'fp16'", "auto, bf16, fp32"), id="precision-unknown"),
    pytest.param(["--channels-last", "yes"], ("--channels-last 'yes'", "auto, on, off"), id="channels-last-unknown"),
    pytest.param(["--workers", "two"], ("--workers 'two'", "auto or a whole number"), id="workers-unknown"),
    pytest.param(["--workers", "-1"], ("--workers '-1'", "auto or a whole number"), id="workers-negative"),
])
def test_bad_flag_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    flags: list[str], needles: tuple[str, ...]) -> None:
    """A bad flag names the flag, the bad value and what is allowed."""
    assert_one_error(*run_cli(tmp_path, capsys, SMOKE, *flags), *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cuda`` without a GPU is a clear error listing what is allowed here."""
    assert_one_error(*run_cli(tmp_path, capsys, SMOKE, "--device", "cuda"),
                     "--device cuda", "no CUDA", "auto, cpu")


# ------------------------------------------------------------------- good suites


@pytest.mark.parametrize("suite", ["quick", "smoke", str(QUICK), str(SMOKE)])
def test_bundled_suites_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], suite: str) -> None:
    """Bundled suites, by name or by path, plan cleanly and print every cell with split sizes."""
    rc, out, err = run_cli(tmp_path, capsys, suite, "--device", "cpu")
    assert rc == 0, err
    assert "error" not in err and "Traceback" not in out + err
    spec = parse_suite(ROOT / "suites" / f"{Path(suite).stem}.yaml")
    n_cells = sum(len(t.backbones) for t in spec.tasks.values()) * len(spec.strategies)
    assert f"suite {spec.name}: {n_cells} cells × {spec.trials} trials, {spec.seeds} evaluation seeds" in err
    # Split sizes follow from the specs: shots and val_per_class per class; mnist1d's
    # official test split is num_samples * (1 - train_split).
    digits = spec.tasks["digits-2shot"]
    m1d = spec.tasks["mnist1d-shifted"]
    m1d_test = round(m1d.args["num_samples"] * (1 - m1d.args.get("train_split", 0.8)))
    for strategy in spec.strategies:
        assert (f"digits-2shot / glyph-cnn / {strategy}: train {digits.split.shots * 10}, "
                f"val {digits.split.val_per_class * 10}, test ") in err
        assert (f"mnist1d-shifted / signal-cnn / {strategy}: train {m1d.split.shots * 10}, "
                f"val {m1d.split.val_per_class * 10}, test {m1d_test}") in err


def test_include_merges_smoke_over_quick() -> None:
    """smoke.yaml deep-merges over quick.yaml: its values win, untouched quick values stay."""
    quick, smoke = parse_suite(QUICK), parse_suite(SMOKE)
    raw = yaml.safe_load(SMOKE.read_text())
    assert raw["include"] == "quick.yaml"
    # Values smoke sets (today: name smoke, trials 3, width 8) ...
    assert (smoke.name, smoke.trials, smoke.seeds) == (raw["name"], raw["trials"], raw["seeds"])
    assert smoke.name == "smoke" and smoke.trials == 3
    assert smoke.training.epochs == tuple(raw["training"]["epochs"])
    glyph = smoke.backbones["glyph-cnn"]
    assert glyph.args["width"] == raw["backbones"]["glyph-cnn"]["args"]["width"] == 8
    assert glyph.pretrain is not None
    assert glyph.pretrain.epochs == raw["backbones"]["glyph-cnn"]["pretrain"]["epochs"]
    assert smoke.source_tasks["glyphs-alnum"].args["n"] == raw["source_tasks"]["glyphs-alnum"]["args"]["n"]
    m1d_n = raw["tasks"]["mnist1d-shifted"]["args"]["num_samples"]
    assert smoke.tasks["mnist1d-shifted"].args["num_samples"] == m1d_n
    # ... while sibling keys of the same mappings keep quick's values (deep merge).
    qglyph = quick.backbones["glyph-cnn"]
    assert qglyph.pretrain is not None
    assert glyph.arch == qglyph.arch and glyph.args["depth"] == qglyph.args["depth"]
    assert (glyph.pretrain.task, glyph.pretrain.lr) == (qglyph.pretrain.task, qglyph.pretrain.lr)
    assert smoke.strategies == quick.strategies
    assert smoke.training.batch_size == quick.training.batch_size
    q_src, s_src = quick.source_tasks["glyphs-alnum"], smoke.source_tasks["glyphs-alnum"]
    assert {**s_src.args, "n": None} == {**q_src.args, "n": None}
    assert s_src.split == q_src.split
    assert smoke.tasks["digits-2shot"] == quick.tasks["digits-2shot"]
    q_m1d, s_m1d = quick.tasks["mnist1d-shifted"], smoke.tasks["mnist1d-shifted"]
    assert s_m1d.args == {**q_m1d.args, "num_samples": m1d_n}
    assert (s_m1d.split, s_m1d.shift, s_m1d.backbones) == (q_m1d.split, q_m1d.shift, q_m1d.backbones)
    assert smoke.fingerprint() != quick.fingerprint()


def test_include_relative_path(tmp_path: Path) -> None:
    """A relative ``include:`` is resolved against the including file's folder."""
    (tmp_path / "base").mkdir()
    shutil.copy(QUICK, tmp_path / "base" / "quick.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("include: base/quick.yaml\nname: child\ntrials: 2\n")
    suite = parse_suite(child)
    assert (suite.name, suite.trials, suite.seeds) == ("child", 2, parse_suite(QUICK).seeds)
    assert suite.path == str(child)
    assert suite.fingerprint() != parse_suite(QUICK).fingerprint()


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    """A suite without ``name:`` is named after its file."""
    path = write_suite(tmp_path, """
        strategies: [scratch]
        backbones:
          b: {arch: cnn2d}
        tasks:
          t: {dataset: digits, backbones: [b]}
        """, include=False, name="my-suite.yaml")
    assert parse_suite(path).name == "my-suite"


def test_load_plan_overrides() -> None:
    """trials / seeds / strategies overrides replace the suite's values; one cell per strategy."""
    plan = load_plan(SMOKE, trials=5, seeds=2, strategies=["scratch"])
    assert (plan.suite.trials, plan.suite.seeds, plan.suite.strategies) == (5, 2, ["scratch"])
    assert plan.cells == [Cell("digits-2shot", "glyph-cnn", "scratch"),
                          Cell("mnist1d-shifted", "signal-cnn", "scratch")]
    assert set(plan.tasks) == {"digits-2shot", "mnist1d-shifted"}
    assert plan.backbones == ["glyph-cnn", "signal-cnn"]


def test_plan_is_task_x_backbone_x_strategy(tmp_path: Path) -> None:
    """Cells are exactly the product of each task's backbones with the suite's strategies."""
    path = write_suite(tmp_path, """
        strategies: [linear_probe, scratch]
        backbones:
          glyph-small: {arch: cnn2d, args: {width: 4}}
        tasks:
          digits-2shot:
            backbones: [glyph-cnn, glyph-small]
        """)
    plan = load_plan(path)
    task_backbones = {"digits-2shot": ["glyph-cnn", "glyph-small"], "mnist1d-shifted": ["signal-cnn"]}
    expected = {Cell(t, b, s) for t, bs in task_backbones.items() for b in bs
                for s in ("linear_probe", "scratch")}
    assert len(plan.cells) == len(expected) == 6
    assert set(plan.cells) == expected
    assert plan.cells[0].label == "digits-2shot / glyph-cnn / linear_probe"


def test_unknown_override_strategy_raises_config_error() -> None:
    """load_plan itself refuses an unknown strategy override with a ConfigError."""
    from tlbench.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--strategies: unknown strategy 'bogus'"):
        load_plan(SMOKE, strategies=["bogus"])


# ------------------------------------------------- regressions (bugs found in review)


@pytest.mark.parametrize("body,field", [
    pytest.param("classes: [0, 42]", "source_tasks.mnist1d-source.classes", id="classes"),
    pytest.param("split: {shots: 100000}", "source_tasks.mnist1d-source.split.shots", id="shots"),
    pytest.param("shift: {kind: rotation, severity: 5}", "source_tasks.mnist1d-source.shift.kind",
                 id="rotation-1d"),
])
def test_bad_source_task_split_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         body: str, field: str) -> None:
    """An impossible source-task split must fail the dry run, not the later pretraining."""
    path = write_suite(tmp_path, f"source_tasks:\n  mnist1d-source:\n    {body}\n")
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), field)


@pytest.mark.parametrize("body,flags", [
    pytest.param("strategies: []", [], id="suite"),
    pytest.param("", ["--strategies", ","], id="flag"),
])
def test_empty_strategy_list_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        body: str, flags: list[str]) -> None:
    """A plan with no strategies (hence no cells) is a user error."""
    path = write_suite(tmp_path, body)
    assert_one_error(*run_cli(tmp_path, capsys, path, *flags), "strategies")


def test_backbone_input_mismatch_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 1-D backbone on a 2-D image task must be refused at plan time."""
    path = write_suite(tmp_path, """
        tasks:
          digits-2shot:
            backbones: [signal-cnn]
        """)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "tasks.digits-2shot.backbones",
                     "signal-cnn")


def test_val_per_class_too_large_names_val_per_class(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The error must blame val_per_class and give a sensible (non-negative) range."""
    path = write_suite(tmp_path, """
        tasks:
          digits-2shot:
            split: {val_per_class: 500}
        """)
    line = assert_one_error(*run_cli(tmp_path, capsys, path), str(path),
                            "tasks.digits-2shot.split.val_per_class")
    assert not re.search(r"only -\d", line), line


def test_missing_include_names_including_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``include: nothere.yaml`` must name the file that contains the include line."""
    path = write_suite(tmp_path, "include: nothere.yaml\n", include=False)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "include", "nothere.yaml")


@pytest.mark.parametrize("body,field", [
    pytest.param("path: elsewhere", ": path: ", id="path-key"),
    pytest.param("1: one", ": 1: ", id="int-key"),
])
def test_reserved_or_non_string_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     body: str, field: str) -> None:
    """Such keys must be reported like any unknown field: 'FILE: KEY: unknown field'."""
    path = write_suite(tmp_path, body)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), field)


@pytest.mark.parametrize("body", [
    pytest.param("tasks:\n  mnist1d-shifted:\n    args: {seed: -1}", id="mnist1d-seed"),
    pytest.param("tasks:\n  mnist1d-shifted:\n    args: {num_samples: 5}", id="mnist1d-num-samples"),
    pytest.param("tasks:\n  digits-2shot:\n    dataset: glyphs\n"
                 "    args: {n: 300, classes: digits, seed: -1}", id="glyphs-seed"),
    pytest.param("tasks:\n  digits-2shot:\n    split: {seed: 100000000000000000000000}", id="split-seed"),
])
def test_out_of_range_integer_args(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str) -> None:
    """Out-of-range seeds and sizes must be schema errors (exit 2), not tracebacks."""
    path = write_suite(tmp_path, body + "\n")
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path))


@pytest.mark.parametrize("body,field", [
    pytest.param("trials: yes", "trials", id="bool-as-count"),
    pytest.param("seeds: 2.5", "seeds", id="float-as-count"),
])
def test_counts_must_be_integers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 body: str, field: str) -> None:
    """YAML's `yes` is a boolean, not one trial: counts are strict integers."""
    path = write_suite(tmp_path, body + "\n")
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), field)


@pytest.mark.parametrize("body,field", [
    pytest.param("name: 'a::b'", "name", id="suite-name"),
    pytest.param("tasks:\n  'digits 2shot':\n    dataset: digits\n    backbones: [glyph-cnn]", "tasks",
                 id="task-name"),
])
def test_names_that_would_break_study_names(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            body: str, field: str) -> None:
    path = write_suite(tmp_path, body + "\n")
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), field)


def test_unwritable_storage_and_binary_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_suite(tmp_path, "")
    rc = main(["run", str(path), "--out", str(tmp_path / "o"), "--storage", str(tmp_path) + "/"])
    assert_one_error(rc, *capsys.readouterr(), str(tmp_path), "journal")  # before any training
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    assert_one_error(*run_cli(tmp_path, capsys, binary), str(binary), "UTF-8")


def test_backbone_value_error_on_wrong_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_suite(tmp_path, """
        backbones:
          signal-cnn:
            arch: cnn2d
            args: {in_channels: 2}
        """)
    assert_one_error(*run_cli(tmp_path, capsys, path), str(path), "signal-cnn")


def test_backbone_weight_sources_checked_before_training(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad_enum = write_suite(tmp_path, """
        backbones:
          res: {arch: resnet, args: {variant: resnet18, in_channels: 1, small_input: true},
                weights: IMAGENET1K_V9}
        """, name="a.yaml")
    assert_one_error(*run_cli(tmp_path, capsys, bad_enum), str(bad_enum),
                     "backbones.res.weights", "IMAGENET1K_V9", "IMAGENET1K_V1")
    bad_variant = write_suite(tmp_path, """
        backbones:
          res: {arch: vit, args: {variant: vit_z_99}, weights: DEFAULT}
        """, name="e.yaml")
    assert_one_error(*run_cli(tmp_path, capsys, bad_variant), "backbones.res.args.variant", "'vit_z_99'", "vit_b_16")
    no_weights = write_suite(tmp_path, """
        backbones:
          eff: {arch: efficientnet, args: {variant: efficientnet_b42}}
        """, name="f.yaml")
    assert_one_error(*run_cli(tmp_path, capsys, no_weights), "backbones.eff.args.variant", "efficientnet_b0")
    wrong_arch = write_suite(tmp_path, """
        backbones:
          glyph-cnn: {weights: IMAGENET1K_V1, pretrain: null}
        """, name="b.yaml")
    assert_one_error(*run_cli(tmp_path, capsys, wrong_arch), "backbones.glyph-cnn.weights", "resnet")
    missing = write_suite(tmp_path, """
        backbones:
          glyph-cnn: {checkpoint: nothere.pt, pretrain: null}
        """, name="c.yaml")
    assert_one_error(*run_cli(tmp_path, capsys, missing), str(missing),
                     "backbones.glyph-cnn.checkpoint", "nothere.pt")
    import torch

    from tlbench.training.backbones import build_backbone

    torch.save(build_backbone("cnn2d", {"width": 4}).state_dict(), tmp_path / "small.pt")
    misfit = write_suite(tmp_path, """
        backbones:
          glyph-cnn: {checkpoint: small.pt, pretrain: null}
        """, name="d.yaml")
    assert_one_error(*run_cli(tmp_path, capsys, misfit), "backbones.glyph-cnn.checkpoint", "does not fit")


# ------------------------------------------------------------- strategy options

BAD_OPTIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("unknown-strategy", "strategy_options: {bogus: {}}",
     ("strategy_options", "'bogus'", "distillation", "ensemble")),
    ("unknown-field", "strategy_options: {ensemble: {sise: 3}}",
     ("strategy_options.ensemble.sise", "unknown field", "members, size, method, rounds")),
    ("bad-method", "strategy_options: {ensemble: {method: vote}}",
     ("strategy_options.ensemble.method", "'vote'", "greedy_soup")),
    ("bad-size", "strategy_options: {ensemble: {size: 0}}", ("strategy_options.ensemble.size", "0")),
    ("teacher-not-run", "strategies: [linear_probe, distillation]",
     ("strategy_options.distillation", "'full_finetune'", "add it to strategies")),
    ("teacher-unknown", "strategy_options: {distillation: {teacher: bogus}}",
     ("strategy_options.distillation", "'bogus'", "full_finetune")),
    ("member-unknown", "strategy_options: {ensemble: {members: [full_finetune, nope]}}",
     ("strategy_options.ensemble", "'nope'")),
    ("cycle", "strategy_options: {distillation: {teacher: ensemble}, ensemble: {members: [distillation]}}",
     ("strategy_options", "cycle", "distillation -> ensemble -> distillation")),
    ("student-unknown", "strategy_options: {distillation: {student: nope}}",
     ("strategy_options.distillation", "'nope'", "glyph-cnn-small")),
    ("student-wrong-input", "strategy_options: {distillation: {student: {glyph-cnn: signal-cnn-small}}}",
     ("tasks.digits-2shot.backbones", "'signal-cnn-small'", "cannot take")),
]


@pytest.mark.parametrize("body,needles", [pytest.param(b, n, id=i) for i, b, n in BAD_OPTIONS])
def test_bad_strategy_options_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 body: str, needles: tuple[str, ...]) -> None:
    assert_one_error(*run_cli(tmp_path, capsys, write_suite(tmp_path, body)), *needles)


def test_student_mapping_must_cover_every_teacher_backbone(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(QUICK.read_text())
    data["strategy_options"]["distillation"]["student"] = {"glyph-cnn": "glyph-cnn-small"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_one_error(*run_cli(tmp_path, capsys, path), "strategy_options.distillation",
                     "no student for backbone 'signal-cnn'")


def test_cells_run_after_the_strategies_they_reuse(tmp_path: Path) -> None:
    path = write_suite(tmp_path, "strategies: [ensemble, distillation, linear_probe, full_finetune]")
    plan = load_plan(path)
    order = [c.strategy for c in plan.cells if c.task == "digits-2shot"]
    assert order == ["full_finetune", "ensemble", "distillation", "linear_probe"]
    assert "glyph-cnn-small" in plan.backbones and "signal-cnn-small" in plan.backbones


def test_strategy_options_change_the_fingerprint(tmp_path: Path) -> None:
    base = parse_suite(write_suite(tmp_path, "", name="a.yaml")).fingerprint()
    other = parse_suite(write_suite(tmp_path, "strategy_options: {ensemble: {size: 5}}", name="b.yaml"))
    assert other.fingerprint() != base


def test_fields_added_later_keep_older_suites_fingerprints(tmp_path) -> None:
    """Stores and caches are keyed by the suite fingerprint: a field added to the schema
    later must not change it while the suite leaves it at its default."""
    import yaml

    from tlbench.suites import bundled_suites

    (tmp_path / "golden.yaml").write_text(textwrap.dedent("""
        name: golden
        strategies: [linear_probe, full_finetune]
        tasks:
          digits-2shot:
            dataset: digits
            split: {seed: 0, shots: 2, val_per_class: 5, test_fraction: 0.5}
            backbones: [cnn]
        backbones:
          cnn: {arch: cnn2d, args: {width: 8}}
    """))
    # The fingerprint this suite has had since the weight-decay convention changed (no decay on
    # biases and normalisation parameters): "477508426924" from commit ddd54aa until
    # then. That change is the one meant to re-fingerprint every suite: stores of the old
    # convention must not be extended with runs of the new one.
    golden = parse_suite(tmp_path / "golden.yaml")
    assert golden.fingerprint() == "0d69dda125da"
    assert golden.model_copy(update={"plugins": ["x.py"]}).fingerprint() == golden.fingerprint()
    decay_all = golden.model_copy(update={"training": golden.training.model_copy(
        update={"decay_norm_and_bias": True})})
    assert decay_all.fingerprint() != golden.fingerprint()

    quick = parse_suite(bundled_suites()["quick"])
    data = yaml.safe_load(bundled_suites()["quick"].read_text())
    for spec in data["tasks"].values():
        spec.update({"image_size": None, "augment": "none"})
        spec.setdefault("split", {})["train_per_class"] = None
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(data))
    explicit = parse_suite(tmp_path / "quick.yaml")
    assert explicit.fingerprint() == quick.fingerprint()
    dumped = str(quick.model_dump())
    assert "train_per_class" not in dumped and "image_size" not in dumped and "augment" not in dumped
    data["tasks"]["digits-2shot"]["augment"] = "flip"
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(data))
    assert parse_suite(tmp_path / "quick.yaml").fingerprint() != quick.fingerprint()


def test_each_block_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dataset and backbone args are typed when the suite is parsed and strategy options when
    it is planned; building tasks, binding them to backbones and making strategies reuse the
    typed blocks instead of validating again."""
    from tlbench.strategies.ensemble import EnsembleOptions
    from tlbench.suites.datasets import Mnist1dArgs
    from tlbench.training.backbones import SmallCNN1d

    counts: dict[str, int] = {}

    def counting(cls: type) -> None:
        original = cls.__init__

        def init(self, **data):  # type: ignore[no-untyped-def]
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
            original(self, **data)

        monkeypatch.setattr(cls, "__init__", init)

    for cls in (Mnist1dArgs, SmallCNN1d.Args, EnsembleOptions):
        counting(cls)
    plan = load_plan(SMOKE)
    for cell in plan.cells:
        plan.make_strategy(cell.strategy)
        plan.task_for(cell.task, cell.backbone)
    mnist1d_specs = [s for s in (*plan.suite.tasks.values(), *plan.suite.source_tasks.values())
                     if s.dataset == "mnist1d"]
    cnn_specs = [b for b in plan.suite.backbones.values() if b.arch in ("cnn1d", "cnn2d")]
    assert counts["Mnist1dArgs"] == len(mnist1d_specs) == 2
    assert counts[SmallCNN1d.Args.__name__] == len(cnn_specs) == 4  # cnn1d and cnn2d share their Args
    assert counts["EnsembleOptions"] == 1
