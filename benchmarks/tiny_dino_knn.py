"""k-NN check of a pretrained backbone against the same architecture with random weights.

The measurement behind docs/tiny-dino.md: CLS features of every image, the featkit
train/test split, then the official DINO k-NN (cosine, k=20, votes weighted by
exp(sim / 0.07)) scored on the test split by balanced accuracy.

    python benchmarks/tiny_dino_knn.py DATA --model featkit-tiny-dino [--weights CKPT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from featkit.backbones import create_backbone
from featkit.data.images import discover, load_image
from featkit.evaluation.splits import train_test_split


def knn_predict(
    train: np.ndarray, train_y: np.ndarray, test: np.ndarray, k: int = 20, t: float = 0.07
) -> np.ndarray:
    """DINO's weighted k-NN on L2-normalised rows: [N, D], [N], [M, D] -> [M] labels."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = b @ a.T
    top = np.argsort(-sims, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, axis=1) / t)
    votes = np.zeros((len(test), int(train_y.max()) + 1))
    np.add.at(votes, (np.arange(len(test))[:, None], train_y[top]), weights)
    return np.asarray(votes.argmax(axis=1))


@torch.no_grad()
def cls_features(name: str, data: Path, weights: str | None, pretrained: bool) -> tuple:
    dataset = discover(data)
    backbone = create_backbone(name, weights=weights, pretrained=pretrained)
    transform = backbone.preprocessing.transform()
    images = torch.stack([transform(load_image(dataset.root / r.path)) for r in dataset.records])
    feats = torch.cat([backbone(images[i : i + 256]).cls for i in range(0, len(images), 256)])
    labels = np.array([dataset.label_names.index(r.label) for r in dataset.records])
    return feats.numpy(), labels, [r.path for r in dataset.records]


def balanced_knn(name: str, data: Path, weights: str | None, pretrained: bool) -> float:
    x, y, paths = cls_features(name, data, weights, pretrained)
    train, test = train_test_split(paths, y, seed=0)
    pred = knn_predict(x[train], y[train], x[test])
    return float(balanced_accuracy_score(y[test], pred))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", default="featkit-tiny-dino")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    trained = balanced_knn(args.model, args.data, args.weights, pretrained=True)
    torch.manual_seed(0)  # the seed `featkit extract --random-init` uses
    random = balanced_knn(args.model, args.data, None, pretrained=False)
    print(f"{args.model}: k-NN balanced accuracy {trained:.4f}, random init {random:.4f}")
    print(f"margin {100 * (trained - random):.1f} points")


if __name__ == "__main__":
    main()
