"""The protocol registry: a plain dict filled by a decorator, plus entry-point plugins.

``list_protocols`` and ``create_protocol`` are the only ways in. Third-party packages
add protocols without touching featkit by declaring an entry point::

    [project.entry-points."featkit.protocols"]
    svm = "my_package.svm:LinearSVM"     # a Protocol subclass (or a module that registers one)

Plugins are loaded on the first ``list_protocols``/``create_protocol`` call; one that
fails to import is skipped with a warning rather than breaking every other protocol.
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
_plugins_loaded = False

P = TypeVar("P", bound=type[Protocol])


def register_protocol(name: str) -> Callable[[P], P]:
    """Class decorator: make ``cls`` available as ``create_protocol(name)``."""

    def decorator(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Protocol)):
            raise TypeError(f"register_protocol({name!r}): expected a Protocol subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"protocol {name!r} is already registered by {existing.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


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
        is_protocol = isinstance(loaded, type) and issubclass(loaded, Protocol)
        if is_protocol and entry.name not in _REGISTRY:
            register_protocol(entry.name)(loaded)


def list_protocols(pattern: str = "*") -> list[str]:
    """Registered protocol names matching a shell-style ``pattern``, sorted."""
    _load_plugins()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_protocol_class(name: str) -> type[Protocol]:
    _load_plugins()
    cls = _REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FeatkitError(
            f"protocol: expected one of {', '.join(sorted(_REGISTRY))}, got {name!r}{hint}"
        )
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
