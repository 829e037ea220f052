"""The one frozen, typed base for every validated block, and the one error formatter.

Suite sections, dataset and backbone arguments and strategy options are all :class:`Frozen`
models: unknown fields are refused, instances cannot change after validation. A pydantic
error becomes one line naming the file, the field, the value and what is allowed
(:func:`format_error`), whichever block it came from.
"""

from __future__ import annotations

import re
import reprlib
import types
import typing
from typing import Annotated, Any, ClassVar, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationError,
    model_serializer,
)

from tlbench.core.errors import ConfigError

#: Counts and seeds must be real integers in YAML: `trials: yes` is not 1 trial.
Int = Annotated[int, Strict()]


class Frozen(BaseModel):
    """A frozen, typed block that rejects unknown fields.

    ``LATER_FIELDS`` names fields added after blocks of this kind were first stored: they
    are left out of dumps while at their defaults, so the fingerprints (store and cache keys)
    of older suites stay the same.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.LATER_FIELDS:
            if name in data and data[name] == type(self).model_fields[name].get_default(call_default_factory=True):
                del data[name]
        return data


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never prints a huge value."""
    text = reprlib_repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: A number in scientific notation that YAML 1.1 (PyYAML) reads as text: no dot in the mantissa
#: (``3e-4``) or no sign in the exponent (``1.0e3``).
_TEXT_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?)(\d+)\s*$")


def yaml_number_hint(value: Any) -> str:
    """For a string YAML read from a number written ``3e-4`` (PyYAML's YAML 1.1 needs ``3.0e-4``): the
    hint to write it so; "" for anything else."""
    found = _TEXT_NUMBER.match(value) if isinstance(value, str) else None
    if found is None:
        return ""
    mantissa, sign, exponent = found.groups()
    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
    return f"; YAML reads {value.strip()} as text: write {mantissa}e{sign or '+'}{exponent}"


def got(value: Any) -> str:
    """``got VALUE`` for a message, with :func:`yaml_number_hint`'s hint where it applies."""
    return f"got {short_repr(value)}{yaml_number_hint(value)}"


def reprlib_repr(value: Any) -> str:
    """A repr that stops early in large containers (``reprlib``), so that even a deeply
    nested value costs little to describe."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 120, 120, 8, 8, 3
    return r.repr(value)


def format_loc(loc: tuple[object, ...]) -> str:
    """``("strategies", 1)`` → ``strategies[1]``, ``("tasks", "a", "split")`` → ``tasks.a.split``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def fields_at(model: type[BaseModel], loc: tuple[object, ...]) -> list[str] | None:
    """The field names of the block found by following ``loc`` from ``model`` (None when
    ``loc`` leads to something that is not a block)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f for f in current.model_fields if f != "path"]
    return None


def format_error(err: ValidationError, model: type[BaseModel], where: str, *, sep: str = ".") -> str:
    """One line for the first error of ``err``: ``WHERE<sep>FIELD: what is wrong``.

    Args:
        err: the error raised while validating a ``model``.
        where: what was validated: a file (``suite.yaml``, with ``sep=": "``) or a field of
            one (``suite.yaml: tasks.a.args``).
    """
    first = err.errors()[0]
    loc = format_loc(tuple(first["loc"]))
    at = f"{where}{sep}{loc}" if loc else where
    if first["type"] == "extra_forbidden":
        allowed = fields_at(model, tuple(first["loc"])[:-1])
        hint = "; check its spelling" if allowed is None else f"; allowed: {', '.join(allowed) or 'none'}"
        return f"{at}: unknown field (got {short_repr(first.get('input'))}){hint}"
    if first["type"] == "missing":
        return f"{at}: required field is missing"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error":  # cross-field checks: the message says it all
        return f"{at}: {msg}"
    return f"{at}: {msg} ({got(first.get('input'))})"


F = typing.TypeVar("F", bound=Frozen)


def validate_block(model: type[F], args: Mapping[str, Any] | F | None, *, where: str) -> F:
    """Validates an argument or option block into ``model``; a block already validated
    passes through. Errors are one-line :class:`ConfigError`\\ s (see :func:`format_error`)."""
    if isinstance(args, model):
        return args
    if isinstance(args, Frozen):  # a block of another kind: validate its fields
        args = args.model_dump()
    try:
        return model(**dict(args or {}))
    except ValidationError as err:
        raise ConfigError(format_error(err, model, where)) from None
    except TypeError as err:  # not a mapping
        raise ConfigError(f"{where}: must be a mapping of fields ({err})") from None
