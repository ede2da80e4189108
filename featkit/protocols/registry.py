"""The protocol registry: every protocol comes in through the ``featkit.protocols``
entry-point group, the built-ins included (they ship in ``featkit_protocols``, declared
in featkit's own pyproject.toml exactly as a third party declares its own)::

    [project.entry-points."featkit.protocols"]
    svm = "my_package.svm:LinearSVM"     # a Protocol subclass

Entry points are loaded on the first ``list_protocols``/``get_protocol_class`` call; one
that fails to import is skipped with a warning rather than breaking every other
protocol. Two distributions declaring one name is an error naming both.
:func:`register_protocol` adds a class by hand (tests, notebooks).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol

log = logging.getLogger("featkit")

ENTRY_POINT_GROUP = "featkit.protocols"

_REGISTRY: dict[str, type[Protocol]] = {}
_SOURCES: dict[str, str] = {}  # name → where it came from, for duplicate errors
_plugins_loaded = False

P = TypeVar("P", bound=type[Protocol])


def register_protocol(name: str) -> Callable[[P], P]:
    """Class decorator: make ``cls`` available as ``create_protocol(name)`` (by hand;
    installed packages declare an entry point instead)."""

    def decorator(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Protocol)):
            raise TypeError(f"register_protocol({name!r}): expected a Protocol subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"protocol {name!r} is already registered by {_SOURCES[name]}")
        _add(name, cls, f"module {cls.__module__}")
        return cls

    return decorator


def _add(name: str, cls: type[Protocol], source: str) -> None:
    if _REGISTRY.get(name) is not cls:
        _SOURCES[name] = source
    cls.name = name
    _REGISTRY[name] = cls


def _distribution(entry: metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"distribution {dist.name}" if dist is not None else "an unnamed distribution"


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as error:  # a broken plugin must not take the others down
            log.warning("protocol plugin %r could not be loaded: %s", entry.name, error)
            continue
        if not (isinstance(loaded, type) and issubclass(loaded, Protocol)):
            log.warning(
                "protocol plugin %r (%s): expected a Protocol subclass, got %r",
                entry.name,
                entry.value,
                loaded,
            )
            continue
        source = f"{_distribution(entry)} ({entry.value})"
        existing = _REGISTRY.get(entry.name)
        if existing is not None and existing is not loaded:
            # Retried on the next call, so the error does not turn into a silent half.
            _plugins_loaded = False
            raise FeatkitError(
                f"protocol {entry.name!r}: expected one owner, got {_SOURCES[entry.name]} "
                f"and {source} (uninstall one)"
            )
        _add(entry.name, loaded, source)


def list_protocols(pattern: str = "*") -> list[str]:
    """Registered protocol names matching a shell-style ``pattern``, sorted."""
    _load_plugins()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def ordered_protocols(*, default_only: bool = False) -> list[str]:
    """Protocol names in display order (``display_order``, then name); with
    ``default_only``, those a probe runs when no protocol is named (``default``)."""
    _load_plugins()
    names = [n for n, cls in _REGISTRY.items() if cls.default or not default_only]
    return sorted(names, key=lambda n: (_REGISTRY[n].display_order, n))


def get_protocol_class(name: str) -> type[Protocol]:
    _load_plugins()
    cls = _REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        known = ", ".join(sorted(_REGISTRY)) or "nothing (is featkit installed? pip install -e .)"
        raise FeatkitError(f"protocol: expected one of {known}, got {name!r}{hint}")
    return cls


def create_protocol(name: str, **params: Any) -> Protocol:
    """A new, unfitted protocol ``name`` with ``params`` (unknown settings are an error)."""
    cls = get_protocol_class(name)
    allowed = cls.param_names()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise FeatkitError(
            f"protocol {name!r}: expected settings among {', '.join(allowed)}, "
            f"got {', '.join(unknown)}{hint}"
        )
    return cls(**params)
