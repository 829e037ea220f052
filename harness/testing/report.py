"""What a contract check reports: per property, pass or a one-line reason; and the loop that runs a
list of properties over one shared context (each property a function that raises
:class:`CheckFailed`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

#: A property's check: raises CheckFailed (or anything else) when the property does not hold.
Check = Callable[[Any], None]


class CheckFailed(Exception):
    """A property does not hold; the message says why, in one line."""


class Unchecked(CheckFailed):
    """A property that could not be checked because one it depends on failed."""


@dataclass
class CheckResult:
    prop: str
    ok: bool
    reason: str = ""

    def __str__(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.prop}" + (f": {self.reason}" if self.reason else "")


@dataclass
class CheckReport:
    """Per property, pass or a one-line reason."""

    subject: str
    results: list[CheckResult] = field(default_factory=list)
    kind: str = "strategy"  # strategy, backbone, dataset or scorer

    @property
    def strategy(self) -> str:  # the name the report had when it checked strategies only
        return self.subject

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def __str__(self) -> str:
        return "\n".join([f"tlbench check {self.kind} {self.subject}:", *(f"  {r}" for r in self.results)])

    def assert_ok(self) -> None:
        """Raises AssertionError listing the failed properties (for a pytest suite)."""
        if not self.ok:
            raise AssertionError(str(self))


def check_name_and_description(cls: type, *, named_by: str, listed_by: str) -> None:
    """The naming properties every plugin kind shares: a ``name`` (``named_by`` says who uses it)
    and a one-line ``description`` (``listed_by`` says where it is shown)."""
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise CheckFailed(f"set a `name` class attribute ({named_by})")
    description = getattr(cls, "description", "")
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise CheckFailed(f"set a one-line `description` class attribute ({listed_by} shows it)")


def one_line(err: BaseException) -> str:
    """A failed property's reason: the check's own words, or what a crash raised."""
    if isinstance(err, CheckFailed):
        return str(err)
    message = str(err).splitlines()[0] if str(err) else ""
    return f"raised {type(err).__name__}: {message}"


def run_property(check: Check, context: Any) -> CheckResult:
    """One property on ``context``: pass, or why not in one line."""
    name = getattr(check, "prop", check.__name__)
    try:
        check(context)
    except Exception as err:  # noqa: BLE001 - a crash is a failed property, said in one line
        return CheckResult(name, False, one_line(err))
    return CheckResult(name, True)


def properties(checks: dict[str, Check]) -> dict[str, Check]:
    """``checks`` in order, each check knowing its property's name (``check.prop``), so that a
    pytest case or :func:`run_property` can name it."""
    for name, check in checks.items():
        check.prop = name  # type: ignore[attr-defined]
    return dict(checks)


def run_properties(report: CheckReport, checks: dict[str, Check], context: Any) -> CheckReport:
    """Every property of ``checks`` on ``context``, in order, into ``report``."""
    report.results.extend(run_property(check, context) for check in checks.values())
    return report
