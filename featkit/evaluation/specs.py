"""Which protocols a sweep runs, with which settings, read from the protocols themselves.

The core names no protocol: the default sweep is every registered protocol whose class
says ``default = True``, in ``display_order``; a label-free protocol names the settings
the evaluation fills in per episode (``seed_param``, ``n_classes_param``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featkit.protocols import Protocol, create_protocol, get_protocol_class, ordered_protocols
from featkit.results.io import canonical_params


@dataclass(frozen=True)
class ProtocolSpec:
    """A protocol name with its settings; ``create()`` makes a fresh, unfitted instance."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, **params: Any) -> ProtocolSpec:
        return cls(name, tuple(sorted(params.items())))

    def create(self) -> Protocol:
        return create_protocol(self.name, **dict(self.params))

    @property
    def supervised(self) -> bool:
        return get_protocol_class(self.name).supervised

    def params_string(self) -> str:
        """Canonical ``key=value;…`` of every setting, defaults included (``run_id`` input).

        A label-free protocol's ``seed_param`` is left out: the evaluation sets it to the
        episode number, so episodes of one setting share one ``params``.
        """
        settings = self.create().get_params()
        seed = get_protocol_class(self.name).seed_param
        if not self.supervised and seed:
            settings.pop(seed, None)
        return canonical_params(settings)


def default_specs() -> tuple[ProtocolSpec, ...]:
    """One spec per protocol whose class says ``default = True``, in display order."""
    return tuple(ProtocolSpec(name) for name in ordered_protocols(default_only=True))


def protocol_grid(
    name: str, options: Mapping[str, Sequence[Any]] | None = None
) -> list[ProtocolSpec]:
    """One spec per combination: ``("knn", {"k": [10, 20]})`` → knn(k=10), knn(k=20)."""
    options = {k: list(v) for k, v in (options or {}).items() if len(v)}
    keys = sorted(options)
    return [
        ProtocolSpec(name, tuple(zip(keys, values, strict=True)))
        for values in itertools.product(*(options[k] for k in keys))
    ]


def label_free_protocol(spec: ProtocolSpec, episode: int, n_classes: int) -> Protocol:
    """A label-free protocol seeded by the episode, with its number of clusters set to
    the number of classes unless the spec sets it (the class names both settings)."""
    cls = get_protocol_class(spec.name)
    settings = dict(spec.params)
    if cls.seed_param:
        settings[cls.seed_param] = episode
    if cls.n_classes_param and settings.get(cls.n_classes_param) is None:
        settings[cls.n_classes_param] = n_classes
    return create_protocol(spec.name, **settings)
