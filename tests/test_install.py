"""tlbench installs as one `tlbench` package, beside a distribution that owns a generic name.

The package index has an unrelated distribution called ``reports`` (a top-level ``reports``
module, like the folder tlbench keeps its report code in). Both are installed into a fresh
virtual environment — tlbench from a wheel built from this checkout, so the real installed
layout is tested, not the editable one — and both import. tlbench's own dependencies come
from the environment running the tests (a path file), so nothing large is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "harness", "strategies", "suites", "reports")


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what is installed counts
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src)
    assert built.returncode == 0, built.stderr[-2000:]
    [whl] = dist.glob("tlbench-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_installs_nothing_but_the_tlbench_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tlbench"}
    for module in ("tlbench/__init__.py", "tlbench/cli/main.py", "tlbench/cli/__main__.py", "tlbench/core/errors.py",
                   "tlbench/store/lock.py", "tlbench/data/reader.py", "tlbench/training/loop.py",
                   "tlbench/run/runner.py", "tlbench/testing/__init__.py", "tlbench/strategies/base.py",
                   "tlbench/suites/quick.yaml", "tlbench/reports/build.py"):
        assert module in names, module


@pytest.mark.slow
def test_tlbench_and_the_index_reports_distribution_import_side_by_side(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # tlbench's dependencies (torch, optuna, …) from this environment, after the venv's own packages
    (site / "zz_tlbench_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    got = run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "reports")
    if got.returncode != 0:
        reason = (got.stderr.strip().splitlines() or ["no output"])[-1]
        if any(s in got.stderr for s in ("No matching distribution", "Could not find a version",
                                          "connection", "Connection", "Network", "resolve")):
            pytest.skip(f"the package index cannot be reached to install 'reports': {reason}")
        pytest.fail(f"pip install reports failed: {reason}")
    installed = run(python, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", wheel)
    assert installed.returncode == 0, installed.stderr[-2000:]
    check = run(python, "-c", """
import importlib.util, pathlib, sys
for folder in ("harness", "strategies", "suites"):  # the repository's folders are not modules
    assert importlib.util.find_spec(folder) is None, folder
import reports, reports.htmltable
import tlbench, tlbench.reports.results, tlbench.strategies, tlbench.cli
site = pathlib.Path(sys.argv[1])
assert pathlib.Path(reports.__file__).parent == site / "reports", reports.__file__
assert pathlib.Path(tlbench.reports.results.__file__).parent == site / "tlbench" / "reports"
assert hasattr(reports, "Report") and tlbench.Strategy.__name__ == "Strategy"
assert "linear_probe" in tlbench.STRATEGIES
print("ok", tlbench.__version__)
""", site, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.startswith("ok ")
    listed = run(venv / "bin" / "tlbench", "list", "suites", cwd=tmp_path)
    assert listed.returncode == 0 and "quick" in listed.stdout, listed.stderr
