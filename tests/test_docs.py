"""The documentation site: it builds in strict mode, its generated references list everything the code
has, the plugin guide's Python examples run, and the README and the pages link only to what exists.

The site needs the docs extra (``pip install -e '.[docs]'``; the dev extra includes it). Without it
the build tests skip and say why, except under CI (``CI`` set), where they fail: a test that always
skips in CI checks nothing.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", flags=re.S | re.M)


def hooks():
    """docs/hooks.py, the MkDocs hook that generates the reference pages."""
    spec = importlib.util.spec_from_file_location("tlbench_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need_mkdocs() -> None:
    modules = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        why = f"the docs extra is not installed ({', '.join(missing)} missing): pip install -e '.[docs]'"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must not skip this test")
        pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_mkdocs()
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert seconds < 300, f"the strict build took {seconds:.0f} s"
    return out


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(site: Path) -> None:
    """A broken link, anchor or docstring reference is a warning, and strict mode makes it fail."""
    for page in ("index.html", "getting-started/index.html", "guides/own-strategy/index.html",
                 "reference/suite/index.html", "reference/cli/index.html", "reference/python/index.html",
                 "api/index.html", "architecture/index.html"):
        assert (site / page).is_file(), page
    import tlbench

    python = (site / "reference" / "python" / "index.html").read_text()
    for name in tlbench.__all__:  # every public name, rendered from its docstring
        if name != "__version__":
            assert f'id="{tlbench._EXPORTS[name]}.{name}"' in python, name


def all_models(model: type, seen: set[type] | None = None) -> set[type]:
    """``model`` and every pydantic model its fields hold, at any depth."""
    import typing

    from pydantic import BaseModel

    seen = set() if seen is None else seen
    seen.add(model)

    def walk(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
            all_models(annotation, seen)
        for arg in typing.get_args(annotation):
            walk(arg)

    for info in model.model_fields.values():
        walk(info.annotation)
    return seen


def sections(page: str) -> dict[str, str]:
    """A generated page's ``## `heading` `` sections by heading."""
    parts = re.split(r"^## `([^`]+)`\n", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_suite_reference_lists_every_field_of_every_suite_model() -> None:
    from tlbench.suites.schema import Suite

    module = hooks()
    models = module.suite_models()
    assert {model for _, model in models} == all_models(Suite), "a suite model is missing from the reference"
    page = sections(module.suite_page())
    for path, model in models:
        rows = re.findall(r"^\| `(\w+)` \|", page[path], flags=re.M)
        assert rows == [name for name in model.model_fields if name != "path"], path
    # the allowed values come from the models: a Literal's every value is listed
    assert "`successive_halving` \\| `hyperband`" in page["search"]


def test_the_cli_reference_lists_every_subcommand_and_option() -> None:
    import argparse

    from tlbench.cli.main import build_parser

    module = hooks()
    page = sections(module.cli_page())
    commands = module.subcommands(build_parser())
    assert {"run", "launch", "status", "report", "check", "list", "completion"} <= set(commands)
    assert [f"tlbench {name}" for name in commands] == list(page)
    for name, parser in commands.items():
        text = page[f"tlbench {name}"]
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    assert f"`{flag}`" in text, (name, flag)
        assert parser.epilog.strip() in text, name  # the two real examples of its --help


def test_the_generated_pages_are_in_the_built_site(site: Path) -> None:
    from tlbench.suites.schema import Suite

    suite = (site / "reference" / "suite" / "index.html").read_text()
    for model in all_models(Suite):
        for name in model.model_fields:
            if name != "path":
                assert f"<code>{name}</code>" in suite, (model.__name__, name)
    from tlbench.cli.main import build_parser

    cli = (site / "reference" / "cli" / "index.html").read_text()
    for name in hooks().subcommands(build_parser()):
        assert f"tlbench {name}" in cli, name


# --- the plugin guide's examples ---------------------------------------------------------------------


def python_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(m.group(3)) for m in FENCE.finditer(page.read_text()) if m.group(2) == "python"]


def test_the_plugin_guides_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registries) -> None:
    """Every Python block of the guide runs as shown, in order: a block that starts with ``# NAME.py``
    is that file (written first, so later blocks import it); the complete strategy passes
    ``tlbench check``; and the ULMFiT block is the built-in strategy, statement for statement."""
    from tlbench.cli.main import main
    from tlbench.strategies.ulmfit import ULMFiT

    blocks = python_blocks(DOCS / "guides" / "own-strategy.md")
    assert len(blocks) >= 3
    files = {}
    for block in blocks:
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w.]+\.py", first):
            files[first[2:]] = block
            (tmp_path / first[2:]).write_text(block)
    assert "my_method.py" in files
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespaces = []
    try:
        for number, block in enumerate(blocks):
            namespace = {"__name__": f"guide_block_{number}"}
            exec(compile(block, f"own-strategy.md, Python block {number + 1}", "exec"), namespace)  # noqa: S102
            namespaces.append(namespace)
    finally:
        sys.modules.pop("my_method", None)
    assert main(["check", "my_method.py:ReInit"]) == 0

    (guide,) = [ns["ULMFiT"] for ns in namespaces if "ULMFiT" in ns]
    assert (guide.name, guide.description) == (ULMFiT.name, ULMFiT.description)
    (block,) = [block for block in blocks if "class ULMFiT(Strategy):" in block]
    ours = {node.name: node for node in ast.walk(ast.parse(block)) if isinstance(node, ast.FunctionDef)}
    builtin = {node.name: node for node in ast.walk(ast.parse(inspect.getsource(ULMFiT)))
               if isinstance(node, ast.FunctionDef)}
    for method in ("search_space", "fit"):
        assert ast.dump(ast.Module(ours[method].body, [])) == ast.dump(ast.Module(builtin[method].body, [])), method


# --- the README and the links ------------------------------------------------------------------------


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs (Python-Markdown's toc) make it."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return [m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", text)]


def test_the_readme_is_the_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: the rest belongs on the site)"
    text = README.read_text()
    # the two commands (.ci/run and the install test run these) and the test command
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'\n" in text
    assert "tlbench run suites/quick.yaml --out runs/quick\n" in text
    assert "```bash\npytest\n```" in text
    assert text.count("![") == 1, "one figure"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        generated = resolved.relative_to(DOCS).as_posix() in hooks().GENERATED if resolved.is_relative_to(DOCS) \
            else False
        if not generated and not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and not generated and anchor not in anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: links to nothing: {broken}"
