"""The settings a suite was run with, kept in the store beside its fingerprint.

The fingerprint (:meth:`tlbench.suites.schema.Suite.fingerprint`) keeps runs of different
settings apart; the settings themselves, stored once per fingerprint in the suite's plan study
(``settings:<fingerprint>``), let a refusal name the fields that differ instead of two hashes, a
report say what the command line's ``--set`` arguments changed (``overrides:<fingerprint>``), and
``tlbench compare`` list the settings two stores differ in.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlbench.store.records import plan_study


def store_settings(storage: BaseStorage, suite: str, fingerprint: str, settings: dict[str, Any],
                   overrides: tuple[str, ...] = ()) -> None:
    """Keeps ``settings`` under ``settings:<fingerprint>`` (written once: every run of that
    fingerprint has the same) and adds ``overrides`` to those stored under ``overrides:<fingerprint>``."""
    study = optuna.create_study(study_name=plan_study(suite), storage=storage, load_if_exists=True)
    attrs = study.user_attrs
    if attrs.get(f"settings:{fingerprint}") != settings:
        study.set_user_attr(f"settings:{fingerprint}", settings)
    known = attrs.get(f"overrides:{fingerprint}", [])
    merged = sorted(set(known if isinstance(known, list) else []) | set(overrides))
    if merged != known and overrides:
        study.set_user_attr(f"overrides:{fingerprint}", merged)


def stored_settings(storage: BaseStorage, suite: str, *, names: list[str] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """fingerprint → ``{"settings": …, "overrides": [...]}`` for every fingerprint of ``suite`` the
    store recorded settings of (stores written before settings were kept: none)."""
    names = optuna.get_all_study_names(storage) if names is None else names
    if plan_study(suite) not in names:
        return {}
    attrs = optuna.load_study(study_name=plan_study(suite), storage=storage).user_attrs
    out: dict[str, dict[str, Any]] = {}
    for key, value in attrs.items():
        if key.startswith("settings:") and isinstance(value, dict):
            fingerprint = key.removeprefix("settings:")
            overrides = attrs.get(f"overrides:{fingerprint}", [])
            out[fingerprint] = {"settings": value, "overrides": overrides if isinstance(overrides, list) else []}
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as dotted paths (``training.weight_decay``) → the JSON text of each leaf."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def shown(text: str | None) -> str:
    """A leaf of :func:`flatten` as a message shows it: a string without its JSON quotes; ``default``
    for a field left out (settings leave out fields added in later releases while at their defaults)."""
    if text is None:
        return "default"
    if text.startswith('"') and text.endswith('"'):
        return str(json.loads(text))
    return text


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted fields whose values differ, each as ``path: before → after``."""
    a, b = flatten(before), flatten(after)
    return [f"{name}: {shown(a.get(name))} → {shown(b.get(name))}" for name in sorted(set(a) | set(b))
            if a.get(name) != b.get(name)]
