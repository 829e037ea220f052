"""An explicit name → class registry with clear errors (no import side effects).

Every entry has an origin: ``tlbench`` for the built-ins, else where a plugin came from (a
file and its hash, or a distribution and its version). The sources of plugin entries are
part of the code version (:func:`plugin_sources`), so caches never outlive a plugin edit.
"""

from __future__ import annotations

from typing import Generic, Iterator, Literal, TypeVar

from tlbench.core.errors import ConfigError

T = TypeVar("T")
BUILTIN = "tlbench"
#: What a registry holds, as the code version tells plugins apart.
PluginKind = Literal["strategy", "backbone", "dataset", "scorer"]
#: origin → (kind, a digest of the plugin's code), for every plugin entry of every registry
_PLUGIN_SOURCES: dict[str, tuple[str, str]] = {}


def plugin_sources(kinds: tuple[PluginKind, ...] | None = None) -> dict[str, str]:
    """The origins and code digests of every plugin registered in this process (of ``kinds`` only, when
    given)."""
    return {origin: source for origin, (kind, source) in sorted(_PLUGIN_SOURCES.items())
            if kinds is None or kind in kinds}


class Registry(Generic[T]):
    """Maps names to subclasses of ``base``; refuses duplicates and wrong base classes.

    Args:
        kind: what the entries are, used in error messages ("strategy", "backbone").
        base: the class every entry must subclass.
    """

    def __init__(self, kind: str, base: type[T], *, plugin_kind: PluginKind = "strategy") -> None:
        self.kind = kind
        self.plugin_kind = plugin_kind
        self.base = base
        self._entries: dict[str, type[T]] = {}
        self._origins: dict[str, str] = {}
        self._sources: dict[str, str] = {}
        self._files: dict[str, dict[str, str]] = {}

    def add(self, cls: type[T], name: str | None = None, *, origin: str = BUILTIN,
            source: str | None = None, files: dict[str, str] | None = None) -> type[T]:
        """Registers ``cls`` under ``name`` (default: its ``name`` class attribute).

        Args:
            origin: where ``cls`` comes from (a plugin's file or distribution).
            source: a digest of a plugin's code (part of the code version).
            files: that code file by file (name → digest), for messages that say which file changed.

        Registering the same class from the same origin again (a plugin loaded twice in one
        process) is a no-op; any other clash is an error naming both origins.
        """
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not a subclass of {self.base.__name__}")
        key = name or getattr(cls, "name", None)
        if not key or not isinstance(key, str):
            raise TypeError(f"{cls.__name__} has no name to register under (set its `name` class attribute)")
        if key in self._entries:
            known = self._entries[key]
            if self._origins[key] == origin and known.__qualname__ == cls.__qualname__:
                self._entries[key] = cls
                return cls
            raise ValueError(f"duplicate {self.kind} name {key!r}: {self._origins[key]} has it already "
                             f"({known.__module__}.{known.__qualname__})")
        self._entries[key] = cls
        self._origins[key] = origin
        if source is not None:
            self._sources[key] = source
            _PLUGIN_SOURCES[origin] = (self.plugin_kind, source)
        if files is not None:
            self._files[key] = dict(files)
        return cls

    def source(self, name: str) -> str | None:
        """The code digest of plugin entry ``name`` (None for a built-in)."""
        return self._sources.get(name)

    def files(self, name: str) -> dict[str, str]:
        """The files of plugin entry ``name``'s code by name → digest (empty for a built-in or when unknown)."""
        return dict(self._files.get(name, {}))

    def origin(self, name: str) -> str:
        """Where entry ``name`` came from (``tlbench`` for a built-in)."""
        return self._origins[name]

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
