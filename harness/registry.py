"""An explicit name → class registry with clear errors (no import side effects)."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from tlbench.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to subclasses of ``base``; refuses duplicates and wrong base classes.

    Args:
        kind: what the entries are, used in error messages ("strategy", "backbone").
        base: the class every entry must subclass.
    """

    def __init__(self, kind: str, base: type[T]) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, type[T]] = {}

    def add(self, cls: type[T], name: str | None = None) -> type[T]:
        """Registers ``cls`` under ``name`` (default: its ``name`` class attribute)."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{cls!r} is not a subclass of {self.base.__name__}")
        key = name or getattr(cls, "name", None)
        if not key:
            raise TypeError(f"{cls.__name__} has no name to register under")
        if key in self._entries:
            raise ValueError(f"duplicate {self.kind} name {key!r}")
        self._entries[key] = cls
        return cls

    def get(self, name: str, *, where: str = "") -> type[T]:
        """Returns the class for ``name`` or raises a one-line :class:`ConfigError`."""
        try:
            return self._entries[name]
        except KeyError:
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __getitem__(self, name: str) -> type[T]:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[tuple[str, type[T]]]:
        return iter(sorted(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)
