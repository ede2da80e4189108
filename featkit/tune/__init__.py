"""Light fine-tuning building blocks: methods, losses, the training loop, adapters.

:mod:`featkit.tune.run` sweeps episodes with these; ``featkit extract --adapter`` uses
:func:`load_tuned_backbone` to extract features with a saved adapter applied.
"""

from featkit.tune.adapter import (
    adapter_fingerprint,
    load_tuned_backbone,
    load_tuned_classifier,
    read_adapter_settings,
    save_adapter,
)
from featkit.tune.images import Augment, ImageSet, load_images
from featkit.tune.losses import LOSSES, make_loss
from featkit.tune.methods import (
    LoraOptions,
    MethodOptions,
    TunedClassifier,
    count_parameters,
    create_classifier,
    list_methods,
    register_method,
)
from featkit.tune.train import Schedule, TrainLog, make_schedule, predict_logits, seeded, train

__all__ = [
    "LOSSES",
    "Augment",
    "ImageSet",
    "LoraOptions",
    "MethodOptions",
    "Schedule",
    "TrainLog",
    "TunedClassifier",
    "adapter_fingerprint",
    "count_parameters",
    "create_classifier",
    "list_methods",
    "load_images",
    "load_tuned_backbone",
    "load_tuned_classifier",
    "make_loss",
    "make_schedule",
    "predict_logits",
    "read_adapter_settings",
    "register_method",
    "save_adapter",
    "seeded",
    "train",
]
