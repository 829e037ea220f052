"""Reading a suite file: YAML, size bounds, ``include:`` merged; and the key of a plan
(:func:`plan_key`). No torch, no registries: ``tlbench status`` reads a suite's name and the
plan a run stored with this alone; :mod:`tlbench.suites.schema` validates what it returns."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import format_loc
from tlbench.core.version import __version__

#: Bounds no real suite comes near (the bundled ones are under 3 kB and a few hundred values), so that a
#: hostile or broken file is refused before anything walks, prints or hashes it: YAML aliases let a
#: 1 kB file expand to a billion values, and one huge string makes every message that names it huge.
MAX_SUITE_BYTES = 1 << 20
MAX_SUITE_VALUES = 100_000
MAX_STRING = 4096  # the longest path Linux takes (PATH_MAX)


def _check_size(data: dict[str, Any], path: Path) -> None:
    """Refuses a suite that expands (aliases repeated) to more than ``MAX_SUITE_VALUES`` values or
    holds a key or string longer than ``MAX_STRING`` characters. It stops at the bound, so it
    costs at most that many steps however large the expansion."""
    count = 0
    stack: list[tuple[dict[Any, Any] | list[Any], tuple[object, ...]]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        count += len(value)
        if count > MAX_SUITE_VALUES:
            raise ConfigError(f"{path}: the suite expands to more than {MAX_SUITE_VALUES:,} values (YAML aliases "
                              f"repeating a block?); a suite is far smaller")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > MAX_STRING:
                raise ConfigError(f"{path}: {format_loc(loc) or 'top level'}: a key of {len(key):,} characters; "
                                  f"keys and values are at most {MAX_STRING:,}")
            if isinstance(item, (dict, list)):
                stack.append((item, (*loc, key)))
            elif isinstance(item, str) and len(item) > MAX_STRING:
                raise ConfigError(f"{path}: {format_loc((*loc, key))}: a string of {len(item):,} characters; values "
                                  f"are at most {MAX_STRING:,}")


def yaml_problem(err: yaml.YAMLError, path: Path | None = None) -> str:
    """Why a text is not valid YAML, in one phrase: the line (and column), the parser's problem, and
    for a tab in the indentation (YAML allows none) the fix."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = " ".join(str(getattr(err, "problem", None) or "").split())
    text = ""
    if mark is not None and path is not None:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        text = lines[mark.line] if mark.line < len(lines) else ""
    if "\t" in problem or "\t" in text[: len(text) - len(text.lstrip())] or "tab" in problem:
        return f"{where}not valid YAML: a tab in the indentation (YAML indents with spaces only)"
    return f"{where}not valid YAML ({problem})" if problem else f"{where}not valid YAML"


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    size = path.stat().st_size
    if size > MAX_SUITE_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a suite file is at most {MAX_SUITE_BYTES:,} (is this a suite?)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a suite is a YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_problem(err, path)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite must be a mapping of fields, got {type(data).__name__}")
    _check_size(data, path)
    if seen and isinstance(data.get("plugins"), list):  # an included file's plugins: relative to it
        data["plugins"] = [str((path.parent / p).resolve()) if isinstance(p, str) and (p.endswith(".py") or "/" in p)
                           and not Path(p).is_absolute() else p for p in data["plugins"]]
    include = data.pop("include", None)
    if include is None:
        return data
    base_path = (path.parent / str(include)).resolve()
    if not base_path.is_file():
        from tlbench.suites import bundled_suites

        bundled = bundled_suites()
        if str(include) not in bundled:  # ``include: quick``: a bundled suite by name, as the command line takes it
            raise ConfigError(f"{path}: include: {include!r} not found (looked for {base_path}; bundled suites: "
                              f"{', '.join(bundled)})")
        base_path = bundled[str(include)].resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: include: cycle through {base_path}")
    return _merge(_read_yaml(base_path, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges ``over`` into ``base``; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_suite_file(path: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The suite's fields as the file (and the files it includes) give them, with the command
    line's ``--set PATH=VALUE`` overrides applied (:func:`apply_overrides`), unvalidated."""
    return apply_overrides(_read_yaml(path), overrides)


def apply_overrides(data: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with each ``dotted.path=YAML`` of ``overrides`` set, in order: the value is read
    as YAML (``64``, ``[sgd]``, ``{shots: 5}``); mappings on the way are created when absent, a
    number indexes an existing list. Only the containers on the path are copied, so a list two
    tasks share through a YAML alias changes for the one the path names. A malformed argument
    is one line naming it."""
    for arg in overrides:
        key, sep, text = arg.partition("=")
        parts = key.split(".")
        if not sep or not all(part.strip() == part and part for part in parts):
            raise ConfigError(f"--set {arg}: expected PATH=VALUE with a dotted path, e.g. --set training.batch_size=64 "
                              f"or --set tasks.digits.split.shots=5")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--set {arg}: the value is not YAML ({problem})") from None
        data = _set_at(data, parts, value, arg)
    return data


def _set_at(node: Any, parts: list[str], value: Any, arg: str, done: tuple[str, ...] = ()) -> Any:
    """A copy of ``node`` with ``value`` at ``parts`` (the containers on the way copied)."""
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    where = ".".join(done) or "the suite"
    if isinstance(node, dict):
        out = dict(node)
        out[head] = _set_at(node.get(head, {}) if rest else node.get(head), rest, value, arg, (*done, head))
        return out
    if isinstance(node, list):
        if not head.isdigit() or int(head) >= len(node):
            raise ConfigError(f"--set {arg}: {where} is a list of {len(node)}; {head!r} is not an index of it "
                              f"(0 to {len(node) - 1})")
        items = list(node)
        items[int(head)] = _set_at(node[int(head)], rest, value, arg, (*done, head))
        return items
    raise ConfigError(f"--set {arg}: {where} is {type(node).__name__} {node!r}, not a mapping or a list")


def suite_name(path: Path, data: dict[str, Any]) -> str:
    """The suite's name (its ``name:``, else the file's stem), as the schema sets it."""
    name = data.get("name", path.stem)
    return name if isinstance(name, str) else str(name)


def plan_key(path: Path, data: dict[str, Any], *, trials: int | None, seeds: int | None,
             strategies: list[str] | None, tasks: list[str] | None = None,
             backbones: list[str] | None = None) -> str:
    """What a plan is a function of: the suite's fields, the command line's overrides, the
    plugin files the suite names and the tlbench release. A run stores its cells under it;
    ``tlbench status`` with the same file and flags finds them (another key: it plans)."""
    plugins = []
    for entry in data.get("plugins") or []:
        file = (path.parent / entry) if isinstance(entry, str) and entry.endswith(".py") else None
        plugins.append(hashlib.sha256(file.read_bytes()).hexdigest() if file is not None and file.is_file()
                       else str(entry))
    fields = {"suite": data, "trials": trials, "seeds": seeds, "strategies": strategies,
              "plugins": plugins, "tlbench": __version__}
    for flag, names in (("tasks", tasks), ("backbones", backbones)):
        if names is not None:  # only when given: the keys of runs without them stay what they were
            fields[flag] = names
    blob = json.dumps(fields, sort_keys=True, default=str)
    return "plan:" + hashlib.sha256(blob.encode()).hexdigest()[:16]
