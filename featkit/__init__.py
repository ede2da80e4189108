"""featkit: how far do frozen DINO features get you on a small, imbalanced image set?

The public entry points are re-exported here lazily so that ``import featkit`` stays
fast (torch, timm and h5py are imported only when a function that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access. The workflow verbs,
# in the order a notebook calls them: data, backbone, features, probes, tuning, numbers.
_LAZY = {
    "write_digits": "featkit.data.digits",
    "discover": "featkit.data.images",
    "create_backbone": "featkit.backbones",
    "list_backbones": "featkit.backbones",
    "extract": "featkit.api",
    "open_store": "featkit.store.reader",
    "probe": "featkit.api",
    "list_protocols": "featkit.protocols",
    "create_protocol": "featkit.protocols",
    "finetune": "featkit.api",
    "read_results": "featkit.api",
    "write_report": "featkit.report.build",
    "FeatkitError": "featkit.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
