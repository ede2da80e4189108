"""How many training images per class a setting uses: ``0``, ``k``, a fraction or ``all``.

:class:`Shots` is the one parser of ``--shots`` text and the one reading order of shots
labels (tables, plots and the answer sort by :func:`shots_sort_key`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from featkit.errors import FeatkitError

ShotsKind = Literal["zero", "count", "fraction", "all"]


@dataclass(frozen=True)
class Shots:
    """How many training images per class: ``0``, ``k``, a fraction ``f`` or ``all``."""

    kind: ShotsKind
    value: float = 0.0  # k for "count", f in (0, 1] for "fraction", unused otherwise

    def __str__(self) -> str:
        if self.kind == "zero":
            return "0"
        if self.kind == "all":
            return "all"
        if self.kind == "fraction":
            return f"{self.value * 100:g}%"
        return str(int(self.value))

    @property
    def sort_key(self) -> tuple[int, float]:
        return ({"zero": 0, "count": 1, "fraction": 2, "all": 3}[self.kind], self.value)

    @classmethod
    def parse(cls, text: str | int) -> Shots:
        """``"0"``, ``"5"``, ``"10%"`` or ``"all"``."""
        token = str(text).strip().lower()
        if token == "all":
            return cls("all")
        if re.fullmatch(r"\d+(\.\d+)?%", token):
            fraction = float(token[:-1]) / 100.0
            if not 0.0 < fraction <= 1.0:
                raise FeatkitError(f"--shots: expected a fraction in (0%, 100%], got {text!r}")
            return cls("fraction", fraction)
        if re.fullmatch(r"\d+", token):
            k = int(token)
            return cls("zero") if k == 0 else cls("count", float(k))
        raise FeatkitError(
            f"--shots: expected integers, fractions like 10% or 'all', got {str(text)!r}"
        )


def shots_sort_key(text: str) -> tuple[int, float, str]:
    """Reading order of a shots label (``0, 1, 5, …, 1%, …, all``); unknown text goes last."""
    try:
        kind, value = Shots.parse(text).sort_key
    except FeatkitError:
        return (4, 0.0, str(text))
    return (kind, value, "")


def parse_shots(spec: str | Sequence[str | int]) -> tuple[Shots, ...]:
    """``"1,5,10,all"`` → sorted unique :class:`Shots`."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t for t in tokens if str(t).strip()]
    if not tokens:
        raise FeatkitError("--shots: expected at least one value like 1,5,10,all, got nothing")
    return tuple(sorted({Shots.parse(t) for t in tokens}, key=lambda s: s.sort_key))
