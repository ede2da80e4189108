"""Protocol settings from text: what ``featkit probe --param knn.k=10,20`` means.

A setting's type is its constructor annotation (``k: int = 20``), or the type of its
default when it has none. Settings of other types (a dict of a wrapped protocol's
settings) are set from Python, not from text. ``none`` stands for None where the
annotation allows it.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol
from featkit.protocols.registry import get_protocol_class

# Tried in this order, so "1" is an int where both int and float are allowed.
_SCALARS: tuple[type, ...] = (type(None), bool, int, float, str)
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


@dataclass(frozen=True)
class ParamInfo:
    """One constructor setting: its name, the scalar types text may give, its default."""

    name: str
    types: tuple[type, ...]  # empty: not settable from text
    default: Any

    def type_text(self) -> str:
        if not self.types:
            return "set from Python only"
        # As annotations read: "float | None".
        shown = sorted(self.types, key=lambda t: t is type(None))
        return " | ".join("None" if t is type(None) else t.__name__ for t in shown)


def _types(annotation: Any, default: Any) -> tuple[type, ...]:
    if annotation is inspect.Parameter.empty:
        return (type(default),) if isinstance(default, _SCALARS) else ()
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = set(typing.get_args(annotation))
    else:
        members = {annotation}
    if not members <= set(_SCALARS):
        return ()
    return tuple(t for t in _SCALARS if t in members)


def parameters(cls: type[Protocol]) -> list[ParamInfo]:
    """The constructor settings of ``cls`` in signature order."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation naming something only type checkers import
        hints = {}
    signature = inspect.signature(cls.__init__)
    return [
        ParamInfo(p.name, _types(hints.get(p.name, inspect.Parameter.empty), p.default), p.default)
        for p in signature.parameters.values()
        if p.name in cls.param_names()
    ]


def parse_value(where: str, info: ParamInfo, token: str) -> Any:
    """``token`` as the first of ``info.types`` that reads it; ``where`` prefixes errors."""
    for kind in info.types:
        if kind is type(None) and token.lower() in ("none", "null"):
            return None
        if kind is bool and token.lower() in (*_TRUE, *_FALSE):
            return token.lower() in _TRUE
        if kind in (int, float):
            try:
                return kind(token)
            except ValueError:
                continue
        if kind is str:
            return token
    if not info.types:
        raise FeatkitError(
            f"{where}: expected a setting of type bool, int, float, str or None, "
            "got one set from Python only"
        )
    raise FeatkitError(f"{where}: expected {info.type_text()}, got {token!r}")


def parse_param(text: str, option: str = "--param") -> tuple[str, str, list[Any]]:
    """``"knn.k=10,20"`` → ``("knn", "k", [10, 20])``, typed by the protocol's constructor."""
    target, sep, values = text.partition("=")
    name, dot, setting = target.strip().partition(".")
    if not (sep and dot and name and setting):
        raise FeatkitError(
            f"{option}: expected PROTOCOL.SETTING=VALUE[,VALUE…] (e.g. knn.k=10,20), got {text!r}"
        )
    try:
        cls = get_protocol_class(name)
    except FeatkitError as error:
        raise FeatkitError(f"{option} {target}: {error}") from None
    infos = {info.name: info for info in parameters(cls)}
    if setting not in infos:
        close = difflib.get_close_matches(setting, list(infos), n=1)
        hint = f" (did you mean {name}.{close[0]}?)" if close else ""
        raise FeatkitError(
            f"{option} {target}: expected a setting of {name} among "
            f"{', '.join(infos) or 'none'}, got {setting!r}{hint}"
        )
    tokens = [t.strip() for t in values.split(",") if t.strip()]
    if not tokens:
        raise FeatkitError(f"{option} {target}: expected at least one value, got none")
    return name, setting, [parse_value(f"{option} {target}", infos[setting], t) for t in tokens]
