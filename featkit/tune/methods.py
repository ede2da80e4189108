"""What a light fine-tune trains: LoRA adapters, the last blocks, or the head alone.

A method is a small function registered by name that takes a fresh
:class:`TunedClassifier` (backbone + linear head on the CLS token), freezes the
backbone and re-enables exactly what it tunes. The head is always trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from featkit.backbones import Backbone
from featkit.errors import FeatkitError


@dataclass(frozen=True)
class LoraOptions:
    """PEFT LoRA on the attention projections named by ``Backbone.lora_targets``."""

    r: int = 8  # rank of the update B·A
    alpha: float | None = None  # scale numerator (update × alpha / r); None = r
    dropout: float = 0.1  # dropout on the adapter's input

    @property
    def effective_alpha(self) -> float:
        return float(self.r if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class MethodOptions:
    """Everything a method needs to set itself up (also saved with the adapter)."""

    lora: LoraOptions = field(default_factory=LoraOptions)
    blocks: int = 1  # last-block: how many final blocks to unfreeze


class TunedClassifier(nn.Module):
    """``images [B, 3, H, W] -> logits [B, C]``: a linear head on the backbone's CLS token."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        # Standardises the CLS token for the head while the backbone is tuned (see
        # featkit.tune.head); an identity otherwise and in every saved classifier.
        self.norm: nn.Module = nn.Identity()
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        # DINO's linear evaluation initialisation: small weights, zero bias.
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def features(self, images: Tensor) -> Tensor:
        return self.backbone(images).cls  # type: ignore[no-any-return]

    def forward(self, images: Tensor) -> Tensor:
        features = self.features(images).float()
        # The head runs in fp32 even under bf16 autocast: folded into raw-feature weights
        # it computes W'x + b' with |W'| ~ 1/std, and where features vary by 1e-5 (a
        # random DINOv2 layout) bf16's 8-bit mantissa cancels the signal to noise.
        with torch.autocast(features.device.type, enabled=False):
            return self.head(self.norm(features))  # type: ignore[no-any-return]


MethodSetup = Callable[[TunedClassifier, MethodOptions], None]
_METHODS: dict[str, MethodSetup] = {}


def register_method(name: str) -> Callable[[MethodSetup], MethodSetup]:
    def decorator(setup: MethodSetup) -> MethodSetup:
        _METHODS[name] = setup
        return setup

    return decorator


def list_methods() -> list[str]:
    return sorted(_METHODS)


def check_method(name: str) -> str:
    if name not in _METHODS:
        raise FeatkitError(
            f"fine-tune method {name!r} is not known; expected one of {', '.join(list_methods())}"
        )
    return name


def create_classifier(
    backbone: Backbone, num_classes: int, method: str, options: MethodOptions | None = None
) -> TunedClassifier:
    """Wrap ``backbone`` (modified in place: pass a fresh copy) and set up ``method``."""
    setup = _METHODS[check_method(method)]
    if num_classes < 2:
        raise FeatkitError(f"fine-tuning needs at least 2 classes, got {num_classes}")
    classifier = TunedClassifier(backbone, num_classes)
    classifier.backbone.requires_grad_(False)
    setup(classifier, options or MethodOptions())
    return classifier


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters())


@register_method("linear")
def _linear(classifier: TunedClassifier, options: MethodOptions) -> None:
    """Head only: the backbone stays frozen (features can be computed once)."""


@register_method("last-block")
def _last_block(classifier: TunedClassifier, options: MethodOptions) -> None:
    blocks = list(classifier.backbone.blocks)
    if not 1 <= options.blocks <= len(blocks):
        raise FeatkitError(
            f"--blocks: expected 1 to {len(blocks)} (the model's depth), got {options.blocks}"
        )
    for block in blocks[-options.blocks :]:
        block.requires_grad_(True)
    classifier.backbone.final_norm.requires_grad_(True)


@register_method("lora")
def _lora(classifier: TunedClassifier, options: MethodOptions) -> None:
    add_lora(classifier.backbone, options.lora)


def add_lora(backbone: Backbone, options: LoraOptions) -> None:
    """Inject PEFT LoRA layers into ``backbone.model`` in place; only they are trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    if options.r < 1:
        raise FeatkitError(f"--lora-r: expected a rank >= 1, got {options.r}")
    if not 0.0 <= options.dropout < 1.0:
        raise FeatkitError(f"--lora-dropout: expected 0 <= p < 1, got {options.dropout}")
    targets = list(backbone.lora_targets)
    if not targets:
        raise FeatkitError(f"model {backbone.name!r} names no LoRA target modules")
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.effective_alpha,  # type: ignore[arg-type]
        lora_dropout=options.dropout,
        target_modules=targets,
        bias="none",
    )
    # In place, without PeftModel's wrapper: the Backbone keeps calling its own model.
    inject_adapter_in_model(config, backbone.model)
    for name, param in backbone.model.named_parameters():
        param.requires_grad_("lora_" in name)


def merge_lora(backbone: Backbone) -> None:
    """Fold every LoRA update into its base layer and drop the wrappers (faster extraction)."""
    from peft.tuners.lora import LoraLayer

    model = backbone.model
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
