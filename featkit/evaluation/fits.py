"""The supervised fits of a sweep: every episode's model, with no fit done twice.

Two savings, both exact:

* a protocol that would repeat another's fit on the same training images
  (:meth:`~featkit.protocols.Protocol.reuses`: ``balanced`` on a few-shot episode,
  where every class has as many images) adopts that fitted model;
* a protocol that solves many small sets faster together (it overrides
  :meth:`~featkit.protocols.Protocol.fit_many`: ``logistic``) fits all episodes of a
  shots setting in one call, on the first of them the sweep reaches.

Each result row is charged what its fit cost: a reused fit its whole cost (the price
of the route alone), a batch an equal share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from featkit.cost import measure
from featkit.evaluation.specs import ProtocolSpec
from featkit.evaluation.splits import Episode
from featkit.protocols import Protocol, get_protocol_class

# One supervised job of a sweep: (feature kind, protocol, draw).
Work = tuple[str, ProtocolSpec, Episode]


def fits_together(spec: ProtocolSpec) -> bool:
    """Whether the protocol solves several training sets faster in one ``fit_many``."""
    return get_protocol_class(spec.name).fit_many is not Protocol.fit_many


class SweepFits:
    """Fitted models of one sweep, asked for job by job (draw by draw, as the sweep runs)."""

    def __init__(
        self, features: dict[str, NDArray[np.float32]], y: NDArray[np.int64], work: Sequence[Work]
    ) -> None:
        self.features, self.y = features, y
        # Jobs fitted together: the draws of one feature, protocol and shots setting.
        self.groups: dict[tuple[str, ProtocolSpec, str], list[Episode]] = {}
        for kind, spec, draw in work:
            if spec.supervised and fits_together(spec):
                self.groups.setdefault((kind, spec, str(draw.shots)), []).append(draw)
        self.batched: dict[tuple[str, ProtocolSpec, int], tuple[Protocol, float]] = {}
        # The current draw's fits by (protocol, its settings as recorded), for a protocol
        # that would repeat one of them.
        self.draw_fits: dict[tuple[str, str], tuple[Protocol, float]] = {}
        self.current: tuple[str, int] | None = None

    def fitted(self, kind: str, spec: ProtocolSpec, draw: Episode) -> tuple[Protocol, float]:
        """``spec`` fitted on the draw's training images, and the seconds that fit cost."""
        if self.current != (kind, id(draw)):
            self.draw_fits, self.current = {}, (kind, id(draw))
        X, y = self.features[kind][draw.train], self.y[draw.train]
        model = spec.create()
        same = model.reuses(y)
        found = None
        if same is not None:
            name, settings = same
            found = self.draw_fits.get((name, ProtocolSpec.of(name, **settings).params_string()))
        if found is not None:
            with measure() as cost:
                model = model.adopt(found[0], X, y)
            result = (model, found[1] + cost.seconds)
        elif same is None and (kind, spec, str(draw.shots)) in self.groups:
            result = self._batch(kind, spec, draw)
        else:
            with measure() as cost:
                model = model.fit(X, y)
            result = (model, cost.seconds)
        self.draw_fits[(spec.name, spec.params_string())] = result
        return result

    def _batch(self, kind: str, spec: ProtocolSpec, draw: Episode) -> tuple[Protocol, float]:
        key = (kind, spec, id(draw))
        if key not in self.batched:
            draws = [
                d
                for d in self.groups[(kind, spec, str(draw.shots))]
                if spec.create().reuses(self.y[d.train]) is None
            ]
            sets: list[tuple[Any, Any]] = [
                (self.features[kind][d.train], self.y[d.train]) for d in draws
            ]
            with measure() as cost:
                models = spec.create().fit_many(sets)
            for d, model in zip(draws, models, strict=True):
                self.batched[(kind, spec, id(d))] = (model, cost.seconds / len(draws))
        return self.batched.pop(key)
