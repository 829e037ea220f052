"""MkDocs hook: the reference pages that are generated from the code, so they cannot drift from it.

``reference/suite.md`` walks the pydantic models of the suite file (``tlbench.suites.schema``):
every field with its type, default, constraints, allowed values and the comment or docstring the
source gives it. ``reference/cli.md`` walks the argparse parser of ``tlbench``
(``tlbench.cli.main.build_parser``): every subcommand with its usage, options and examples.
``reference/python.md`` renders, with mkdocstrings, the docstring of every public name
(``tlbench.__all__``, from the module that defines it).
None of them is committed: ``mkdocs build`` and ``mkdocs serve`` write them into the site from the
code as it is (``tests/test_docs.py`` checks they list every field, subcommand and public name).
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import io
import os
import re
import shutil
import tempfile
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

try:
    from mkdocs.plugins import event_priority
except ImportError:  # the page generators alone (tests/test_docs.py) need no MkDocs
    def event_priority(priority: float):  # noqa: ANN201
        return lambda hook: hook

GENERATED = {"reference/suite.md": "suite_page", "reference/cli.md": "cli_page", "reference/python.md": "python_page"}


def package_tree() -> str:
    """A folder holding ``tlbench`` as one tree, for mkdocstrings (griffe) to read statically.

    The repository's folders are mapped into the ``tlbench`` namespace by pyproject.toml (``harness/``
    is the package, ``strategies/``, ``suites/`` and ``reports/`` its subpackages), which griffe
    cannot follow from the editable install; a temporary folder of symbolic links puts them where
    their import names say."""
    root = Path(__file__).resolve().parents[1]
    tree = Path(tempfile.mkdtemp(prefix="tlbench-docs-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    package = tree / "tlbench"
    package.mkdir()
    for entry in (root / "harness").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for sub in ("strategies", "suites", "reports"):
        (package / sub).symlink_to(root / sub)
    return str(tree)


@event_priority(100)  # before mkdocstrings reads its handlers' settings
def on_config(config):  # noqa: ANN001, ANN201 - MkDocs' hook signature
    handlers = config["plugins"]["mkdocstrings"].config["handlers"]
    handlers.setdefault("python", {})["paths"] = [package_tree()]
    return config


def on_files(files, config):  # noqa: ANN001, ANN201 - MkDocs' hook signature
    from mkdocs.structure.files import File

    for uri, maker in GENERATED.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=globals()[maker]()))
    return files


# --- the suite file --------------------------------------------------------------------------------


def suite_models() -> list[tuple[str, type]]:
    """The suite file's blocks, top-level first, each with the paths it sits at in the YAML: every
    pydantic model the fields of ``Suite`` hold, at any depth (a new block is listed by itself)."""
    from pydantic import BaseModel

    from tlbench.suites.schema import Suite

    paths: dict[type, list[str]] = {}

    def nested(annotation: Any, path: str) -> list[tuple[type, str]]:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [(annotation, path)]
        if origin is dict:
            return nested(args[1], f"{path}.NAME")
        if origin in (list, tuple):
            return [found for arg in args for found in nested(arg, f"{path}[i]")]
        return [found for arg in args for found in nested(arg, path)]

    def walk(model: type, path: str) -> None:
        paths.setdefault(model, []).append(path)
        for name, info in model.model_fields.items():
            for child, where in nested(info.annotation, f"{path}.{name}".lstrip(".")):
                if path.count(".") < 20:  # the schema has no cycles; a bound in case one appears
                    walk(child, where)

    walk(Suite, "")
    return [(", ".join(p for p in where if p) or "(top level)", model) for model, where in paths.items()]


def field_comments(model: type) -> dict[str, str]:
    """The comment the model's source gives each field: the comment lines right above it and the
    comment at the end of its line."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    field = re.compile(r"^    ([a-z_][a-z0-9_]*)\s*:")
    lines = source.splitlines()
    inline = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.line.strip() != tok.string.strip():
            inline[tok.start[0]] = tok.string.lstrip("#").strip()
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#") and line.startswith("    ") and not line.startswith("     "):
            above.append(stripped.lstrip("#").strip())
            continue
        match = field.match(line)
        if match:
            text = " ".join(above + ([inline[number]] if number in inline else []))
            if text:
                comments[match.group(1)] = text
        above = []
    return comments


def type_text(annotation: Any) -> str:
    """A field's type as a suite author reads it (``int | None``, ``'crop' | 'stretch'``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_text(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def allowed_values(annotation: Any) -> list[Any]:
    values: list[Any] = []
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        values += allowed_values(arg)
    return values


def constraints(info: Any) -> list[str]:
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "at least", "max_length": "at most"}
    out = []
    for item in info.metadata:
        for name, symbol in symbols.items():
            value = getattr(item, name, None)
            if value is not None:
                out.append(f"{symbol} {value}" + (" items" if "length" in name else ""))
    return out


def default_text(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()
    else:
        value = info.default
    if value is PydanticUndefined:
        return "**required**"
    if hasattr(value, "model_dump"):
        return "its defaults"
    return f"`{value!r}`" if value not in (None, "") else ("`None`" if value is None else '`""`')


def cell(text: str) -> str:
    """Text for a table cell: one line, reST roles and double backticks as Markdown code, and pipes
    outside code spans escaped (a pipe inside one does not split the cell)."""
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text.replace("\n", " ")).replace("``", "`")
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def suite_page() -> str:
    out = ["# Suite file reference", "",
           "Generated from the suite's pydantic models (`tlbench.suites.schema`) when the site is built: "
           "every field a suite file may have, its type, default, constraints and allowed values, and the "
           "comment the source gives it. A field not listed here is refused with one line naming it "
           "(exit 2). How to write a suite, with examples: [Writing a suite](../guides/suites.md).", ""]
    for path, model in suite_models():
        doc = inspect.cleandoc(model.__doc__) if model.__doc__ and model.__module__ != "builtins" else ""
        out += [f"## `{path}`", "", f"Model `{model.__name__}`." + (" " + " ".join(doc.split("\n\n")[0].split())
                                                                     if doc and not doc.startswith(model.__name__ + "(")
                                                                     else ""), ""]
        out += ["| field | type | default | constraints, allowed values | notes |", "|---|---|---|---|---|"]
        comments = field_comments(model)
        for name, info in model.model_fields.items():
            if name == "path":
                continue  # set by the loader: the file the suite was read from
            allowed = allowed_values(info.annotation)
            limits = constraints(info) + ([" | ".join(f"`{v}`" for v in allowed)] if allowed else [])
            note = info.description or comments.get(name, "")
            out.append(f"| `{name}` | `{cell(type_text(info.annotation))}` | {cell(default_text(info))} | "
                       f"{cell(', '.join(limits))} | {cell(note)} |")
        out.append("")
    return "\n".join(out) + "\n"


# --- the command line ------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_row(action: argparse.Action) -> str | None:
    if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        return None
    metavar = action.metavar or action.dest.upper()
    metavar = " ".join(metavar) if isinstance(metavar, tuple) else metavar
    name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{metavar}`"
    if action.choices:
        value = " \\| ".join(f"`{c}`" for c in action.choices)
    elif action.nargs == 0:
        value = "(flag)"
    elif not action.option_strings:
        value = {"?": "(optional)", "*": "(any number)", "+": "(one or more)"}.get(action.nargs, "")
    else:
        value = f"`{metavar}`"
    default = action.default
    default_text = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
    text = (action.help or "").replace("%(default)s", str(default)).replace("%%", "%")
    if action.required and action.option_strings:
        text = "required. " + text
    return f"| {name} | {value} | {cell(default_text)} | {cell(text)} |"


def cli_page() -> str:
    from tlbench.cli.main import build_parser

    os.environ.setdefault("COLUMNS", "100")
    parser = build_parser()
    out = ["# Command-line reference", "",
           "Generated from `tlbench`'s own parser (`tlbench.cli.main.build_parser`) when the site is built: "
           "every subcommand, its options and its examples, as `tlbench SUBCOMMAND --help` prints them. "
           "What the options do together, with the reasons: [Running suites](../guides/command-line.md).", "",
           "```text", parser.format_usage().strip(), "```", ""]
    for name, sub in subcommands(parser).items():
        help_text = next((c.help for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                          for c in a._choices_actions if c.dest == name), "")
        out += [f"## `tlbench {name}`", "", (help_text or "")[:1].upper() + (help_text or "")[1:] + ".", ""]
        if sub.description:
            out += [sub.description, ""]
        out += ["```text", sub.format_usage().strip(), "```", ""]
        rows = [r for r in (option_row(a) for a in sub._actions) if r]
        if rows:
            out += ["| argument | value | default | what it does |", "|---|---|---|---|", *rows, ""]
        if sub.epilog:
            out += ["```text", sub.epilog.strip(), "```", ""]
    return "\n".join(out) + "\n"


# --- the public API from its docstrings ------------------------------------------------------------


def python_page() -> str:
    import tlbench

    out = ["# Python API from docstrings", "",
           "Generated from `tlbench.__all__` when the site is built: every public name, rendered by mkdocstrings "
           "from the docstrings of the module that defines it. The same names with what each is for, in one "
           "table per topic: [The public API](../api.md). Every other module is internal and may change "
           "without notice.", ""]
    for name in tlbench.__all__:
        if name == "__version__":
            continue
        module = tlbench._EXPORTS[name]
        out += [f"::: {module}.{name}", "    options:", "      show_root_full_path: false", ""]
    return "\n".join(out) + "\n"
