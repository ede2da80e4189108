"""The protocol contract: base class, registry, text settings, shared helpers and the
conformance suite (:mod:`featkit.protocols.testing`).

The implementations live outside the core and arrive through the ``featkit.protocols``
entry-point group: the built-ins (``knn``, ``logistic``, ``prototype``, ``balanced``,
``kmeans``) in the ``featkit_protocols`` package shipped with featkit, others in their
own distributions. See docs/protocols.md::

    from featkit.protocols import create_protocol, list_protocols
    knn = create_protocol("knn", k=20, temperature=0.07).fit(X_train, y_train)
    predictions = knn.predict(X_test)
"""

from __future__ import annotations

from featkit.protocols.base import Protocol
from featkit.protocols.registry import (
    ENTRY_POINT_GROUP,
    create_protocol,
    get_protocol_class,
    list_protocols,
    ordered_protocols,
    register_protocol,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Protocol",
    "create_protocol",
    "get_protocol_class",
    "list_protocols",
    "ordered_protocols",
    "register_protocol",
]
