"""`tlbench completion bash|zsh`: a completion script generated from the parser, exercised in a real
bash the way bash calls it (COMP_WORDS, COMP_CWORD, then reading COMPREPLY)."""

from __future__ import annotations

import sys
import subprocess
from pathlib import Path

import pytest

from tlbench.cli.main import build_parser, main
from tlbench.suites import bundled_suites


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "tlbench.bash"
    proc = subprocess.run([sys.executable, "-m", "tlbench.cli", "completion", "bash"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    path.write_text(proc.stdout)
    return path


def complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last word of ``line`` (a trailing space: a new, empty word)."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    array = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _tlbench; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    return sorted(w for w in out.stdout.splitlines() if w)


def test_subcommands_options_and_values_complete(script: Path) -> None:
    assert complete(script, "tlbench r") == ["report", "run"]
    assert complete(script, "tlbench --v") == ["--version"]
    assert complete(script, "tlbench run --rep") == ["--report"]
    assert complete(script, "tlbench run --report t") == ["tables"]
    assert complete(script, "tlbench run quick --device c") == ["cpu", "cuda"]
    assert complete(script, "tlbench status --j") == ["--json"]
    assert complete(script, "tlbench list sc") == ["scorers"]
    assert complete(script, "tlbench launch x.yaml --on s") == ["slurm", "submitit-local"]
    assert complete(script, "tlbench run quick --trials ") == []  # a number: nothing to offer
    assert complete(script, "tlbench completion ") == ["bash", "zsh"]


def test_a_suite_is_a_bundled_name_or_a_yaml_file(script: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    (tmp_path / "model.py").write_text("")
    (tmp_path / "runs").mkdir()
    assert complete(script, "tlbench run q", cwd=tmp_path) == ["quick"]
    assert complete(script, "tlbench run m", cwd=tmp_path) == ["mine.yaml"]  # not model.py
    assert complete(script, "tlbench status r", cwd=tmp_path) == ["runs/"]
    assert set(complete(script, "tlbench run ", cwd=tmp_path)) >= set(bundled_suites()) | {"mine.yaml"}
    assert complete(script, "tlbench check mo", cwd=tmp_path) == ["model.py"]


def test_every_subcommand_and_option_of_the_parser_is_in_the_script(script: Path) -> None:
    """Generated from the parser: a new option cannot be missing from it."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    text = script.read_text()
    for name, sub in commands.items():
        assert f"        {name})\n" in text
        for action in sub._actions:  # noqa: SLF001
            for option in action.option_strings:
                assert option in text, (name, option)


def test_the_zsh_script_wraps_the_same_function(capsys) -> None:
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert main(["completion", "bash"]) == 0
    bash = capsys.readouterr().out
    assert "bashcompinit" in zsh and zsh.endswith(bash)
    assert subprocess.run(["bash", "-n"], input=bash, text=True, timeout=60).returncode == 0
    assert main(["completion", "fish"]) == 2  # one line: the shells it knows
    assert "invalid choice: 'fish'" in capsys.readouterr().err
