"""The classifier head: trained on standardised CLS features, saved as one plain linear layer.

Frozen CLS features can have a large common offset and per-dimension spreads anywhere
from 1e-5 (a randomly initialised DINOv2 layout, whose LayerScale of 1e-5 leaves every
image with almost the same CLS token) to 10. A head on the raw features then needs
weights of the order of 1/spread: a tiny change of the features moves the logits by
a lot, and an optimiser step of a fixed size on the backbone (AdamW's steps do not
scale with the gradient) throws the logits far off. So the head always reads
z-scores:

- on cached features (``linear``, and the head-first stage of ``lora``/``last-block``)
  it reads ``(x - mean) / std`` with the training images' statistics;
- while the backbone is tuned it reads a :class:`torch.nn.BatchNorm1d` without affine
  parameters, which follows the spread of the features as they change (He et al.,
  MAE 2022, put the same normalisation before their linear head);
- after training the statistics of the final features of the (unaugmented) training
  images are folded into the linear layer, ``W (x - mean) / std + b = W' x + b'``, so
  the saved head is a plain ``nn.Linear`` on the raw CLS token. These statistics are
  those of the inputs the test images resemble; the BatchNorm's running averages come
  from augmented batches and lag behind the last steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featkit.backbones import Backbone
from featkit.tune.losses import LossFn
from featkit.tune.methods import TunedClassifier
from featkit.tune.train import Schedule, TrainLog, predict_logits, train

MIN_STD = 1e-12  # a constant feature gets weight 0 after folding, not a division by 0


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and (biased) standard deviation of ``features [N, D]``, float64.

    float64 because the folded bias ``b - W' mean`` subtracts large, nearly equal terms
    where the spread is 1e-5 of the values: float32 would leave rounding noise there.
    """
    x = features.double()
    mean = x.mean(0)
    std = (x - mean).pow(2).mean(0).sqrt()
    return mean, std


def standardise(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(features - mean) / std`` in float32; dimensions with no spread become 0."""
    z = (features.double() - mean) / std.clamp_min(MIN_STD)
    return torch.where(std > MIN_STD, z, torch.zeros_like(z)).float()


def fold_into(head: nn.Linear, mean: Tensor, std: Tensor) -> None:
    """Turn ``head`` on z-scores into the same map on raw features, in place."""
    with torch.no_grad():
        scale = torch.where(std > MIN_STD, 1.0 / std.clamp_min(MIN_STD), torch.zeros_like(std))
        weight = head.weight.double() * scale.to(head.weight.device)
        bias = head.bias.double() - weight @ mean.to(head.weight.device)
        head.weight.copy_(weight)
        head.bias.copy_(bias)


def train_head(
    head: nn.Linear,
    features: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    schedule: Schedule,
    generator: torch.Generator,
    device: str,
) -> tuple[TrainLog, Tensor, Tensor]:
    """Train ``head`` on the z-scores of ``features [n, D]`` (rows aligned with ``y``).

    The head is left on z-scores; the statistics are returned so the caller can fold
    them (:func:`fold_into`) or hand them to the tuning stage (:func:`norm_from`).
    """
    mean, std = feature_stats(features)
    z = standardise(features, mean, std).to(device)
    log = train(head, lambda idx, _g: z[idx], y, loss_fn, schedule, generator, device=device)
    return log, mean, std


def norm_from(mean: Tensor, std: Tensor) -> nn.Module:
    """A BatchNorm without affine parameters that starts from the given statistics."""
    norm = nn.BatchNorm1d(mean.numel(), affine=False, eps=MIN_STD)
    norm.running_mean = mean.float().clone()
    norm.running_var = std.float().pow(2).clamp_min(MIN_STD)
    return norm


def fold_norm(
    classifier: TunedClassifier,
    images: Tensor,
    *,
    device: str = "cpu",
    precision: str = "fp32",
) -> None:
    """Replace the classifier's BatchNorm by the statistics of its final CLS features on
    ``images`` (the unaugmented training images) folded into the head, in place."""
    classifier.norm = nn.Identity()
    features = predict_logits(
        ClsOnly(classifier.backbone), images, device=device, precision=precision
    )
    mean, std = feature_stats(features)
    fold_into(classifier.head, mean, std)


class ClsOnly(nn.Module):
    """``images -> CLS [B, D]`` of a backbone (for :func:`predict_logits`)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images).cls  # type: ignore[no-any-return]
