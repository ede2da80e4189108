"""Evaluation protocols on frozen features, one module each, registered by name.

Built in: ``knn``, ``logistic``, ``prototype``, ``balanced`` (wraps another protocol),
``kmeans`` (label-free). See docs/protocols.md for definitions and references::

    from featkit.protocols import create_protocol, list_protocols
    knn = create_protocol("knn", k=20, temperature=0.07).fit(X_train, y_train)
    predictions = knn.predict(X_test)
"""

from __future__ import annotations

# Importing the built-in modules registers them (they are light: faiss and sklearn are
# imported inside fit).
from featkit.protocols import balanced, kmeans, knn, logistic, prototype  # noqa: F401
from featkit.protocols.base import Protocol
from featkit.protocols.registry import (
    ENTRY_POINT_GROUP,
    create_protocol,
    get_protocol_class,
    list_protocols,
    register_protocol,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Protocol",
    "create_protocol",
    "get_protocol_class",
    "list_protocols",
    "register_protocol",
]
