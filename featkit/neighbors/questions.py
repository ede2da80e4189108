"""Questions about single images answered from a store: neighbours, duplicates, label noise.

Every search is cosine similarity through :class:`featkit.neighbors.search.NeighborIndex`
(L2-normalised rows, exact below a million rows). Three questions:

- **Nearest images** of a query (:func:`nearest_images`): a path already in the store
  uses its stored row; any other image file is embedded with the store's backbone,
  rebuilt from the fingerprint and checked against it (:func:`embed_images`).
- **Near-duplicate pairs** (:func:`duplicate_pairs`): every pair whose cosine reaches
  ``threshold``, found among each row's ``k`` nearest neighbours, so a group of more
  than ``k + 1`` copies of one image shows only its closest pairs.
- **Likely mislabelled images** (:func:`label_noise`): each labelled image's ``k``
  nearest labelled neighbours (itself left out) vote for a class with weight
  ``exp(sim / T)``, the official DINO k-NN vote (T = 0.07); the disagreement is the
  vote share *not* given to the image's own label, from 0 (all neighbours agree) to 1
  (none does). Images are ranked by disagreement; the top of the ranking is where to
  look first, not a verdict.

The array-level functions (:func:`find_duplicates`, :func:`knn_disagreement`) take
plain arrays; the store-level ones return records with paths and class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.errors import FeatkitError
from featkit.neighbors.search import NeighborIndex
from featkit.store.reader import Store

if TYPE_CHECKING:
    from featkit.backbones import Backbone

#: Temperature of the vote weights exp(sim / T), as in the official DINO k-NN.
VOTE_TEMPERATURE = 0.07
#: Cosine at or above which two images count as near duplicates by default.
DUPLICATE_THRESHOLD = 0.95


@dataclass(frozen=True)
class Neighbor:
    rank: int  # 1 = nearest
    path: str
    label: str  # class name, "" when unlabelled
    split: str
    similarity: float  # cosine


@dataclass(frozen=True)
class DuplicatePair:
    path_a: str  # path_a < path_b in store order
    path_b: str
    label_a: str
    label_b: str
    similarity: float


@dataclass(frozen=True)
class Suspect:
    rank: int  # 1 = most disagreement
    path: str
    label: str  # the label the data gives
    suggested: str  # the class with the largest neighbour vote
    disagreement: float  # vote share not given to ``label``, in [0, 1]


def _without_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop each row's own index from its ``k + 1`` neighbours, keeping ``k``.

    With exact duplicates the row itself need not come first (ties), so it is removed
    by index; a row whose own index is missing loses its last neighbour instead.
    """
    rows = np.arange(len(idx))[:, None]
    is_self = idx == rows
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    return sims[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)


def _self_neighbors(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows: ``(sims [n, k], idx [n, k])``."""
    n = len(features)
    if n < 2:
        raise FeatkitError(f"features: expected at least 2 rows to compare, got {n}")
    if k < 1:
        raise FeatkitError(f"k: expected a positive integer, got {k}")
    k = min(k, n - 1)
    index = NeighborIndex().fit(features)
    sims, idx = index.search(features, k + 1)
    return _without_self(sims, idx, k)


def find_duplicates(
    features: np.ndarray, threshold: float = DUPLICATE_THRESHOLD, k: int = 10
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, ``i < j``, with cosine ≥ ``threshold``, most similar first.

    ``features`` is ``[n, D]``; candidates are each row's ``k`` nearest other rows.
    """
    if not -1.0 <= threshold <= 1.0:
        raise FeatkitError(f"threshold: expected a cosine in [-1, 1], got {threshold}")
    sims, idx = _self_neighbors(features, k)
    best: dict[tuple[int, int], float] = {}
    for i, j in zip(*np.nonzero(sims >= threshold), strict=True):
        other = int(idx[i, j])
        pair = (min(int(i), other), max(int(i), other))
        best[pair] = max(best.get(pair, -2.0), float(sims[i, j]))
    return sorted(((a, b, s) for (a, b), s in best.items()), key=lambda t: (-t[2], t[0], t[1]))


def knn_disagreement(
    features: np.ndarray, labels: np.ndarray, k: int = 10, temperature: float = VOTE_TEMPERATURE
) -> tuple[np.ndarray, np.ndarray]:
    """``(disagreement [n] float64, suggested [n] int64)`` from the ``k``-NN vote of the others.

    ``labels`` are class indices ≥ 0. ``disagreement[i]`` is the share of the
    ``exp(sim / T)``-weighted vote of row ``i``'s ``k`` nearest other rows that goes to
    a class other than ``labels[i]``; ``suggested[i]`` is the class with the largest vote.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(features),):
        raise FeatkitError(f"labels: expected shape ({len(features)},), got {labels.shape}")
    if labels.size and labels.min() < 0:
        raise FeatkitError("labels: expected class indices >= 0, got unlabelled rows (-1)")
    if temperature <= 0:
        raise FeatkitError(f"temperature: expected a positive number, got {temperature}")
    sims, idx = _self_neighbors(features, k)
    # Subtract each row's largest similarity: exp(1/0.07) overflows nothing, but this keeps
    # weights in [0, 1] whatever the temperature.
    weights = np.exp((sims.astype(np.float64) - sims.max(axis=1, keepdims=True)) / temperature)
    n_classes = int(labels.max()) + 1
    votes = np.zeros((len(labels), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(labels)), idx.shape[1]), labels[idx].ravel()),
              weights.ravel())  # fmt: skip
    share = votes / votes.sum(axis=1, keepdims=True)
    disagreement = 1.0 - share[np.arange(len(labels)), labels]
    return disagreement, votes.argmax(axis=1).astype(np.int64)


# -- store level ----------------------------------------------------------------------


def _names(store: Store, labels: np.ndarray) -> list[str]:
    return [store.label_names[i] if i >= 0 else "" for i in labels.tolist()]


def duplicate_pairs(
    store: Store, kind: str = "cls", threshold: float = DUPLICATE_THRESHOLD, k: int = 10
) -> list[DuplicatePair]:
    """Near-duplicate pairs among the store's ok rows, most similar first."""
    names = _names(store, store.labels())
    paths = store.paths()
    return [
        DuplicatePair(paths[a], paths[b], names[a], names[b], s)
        for a, b, s in find_duplicates(store.features(kind), threshold, k)
    ]


def label_noise(
    store: Store, kind: str = "cls", k: int = 10, temperature: float = VOTE_TEMPERATURE
) -> list[Suspect]:
    """Every labelled ok row ranked by k-NN disagreement with its label, highest first."""
    labels = store.labels()
    labelled = labels >= 0
    if labelled.sum() < 2:
        raise FeatkitError(
            f"store {store.path}: expected labelled images to check, got {int(labelled.sum())}"
        )
    features = store.features(kind)[labelled]
    paths = [p for p, keep in zip(store.paths(), labelled, strict=True) if keep]
    disagreement, suggested = knn_disagreement(features, labels[labelled], k, temperature)
    order = np.lexsort((np.arange(len(paths)), -disagreement))
    given = _names(store, labels[labelled])
    proposed = _names(store, suggested)
    return [
        Suspect(rank, paths[i], given[i], proposed[i], float(disagreement[i]))
        for rank, i in enumerate(order.tolist(), start=1)
    ]


def rebuild_backbone(store: Store, weights: Path | None = None) -> Backbone:
    """The backbone that made ``store``, rebuilt from its fingerprint and checked against it.

    Random-init stores are rebuilt as ``featkit extract --random-init`` built them
    (:func:`featkit.backbones.naming.build_backbone`), without touching the caller's
    random state. A backbone whose weights need a local file takes it from ``weights``.
    Any difference in the binding fingerprint keys is an error listing them.
    """
    from featkit.backbones.naming import build_backbone
    from featkit.store.fingerprint import BINDING_KEYS, differences, make_fingerprint

    fp = store.fingerprint
    if fp.get("source") == "import" or "model" not in fp or "precision" not in fp:
        raise FeatkitError(
            f"store {store.path}: expected a store made by featkit extract to embed a new "
            "image, got imported features (no backbone); query a path already in the store"
        )
    random_init = str(fp.get("weights_sha256", "")).startswith("params:") and weights is None
    backbone = build_backbone(
        str(fp["model"]),
        weights=weights,
        image_size=int(fp["image_size"]),
        pretrained=not random_init,
    )
    made = make_fingerprint(backbone, precision=str(fp["precision"]), patches=str(fp["patches"]))
    changed = differences(fp, made, BINDING_KEYS)
    if changed:
        hint = (
            " (pass --weights with the file it was extracted with)"
            if any(c.startswith("weights_sha256") for c in changed)
            else ""
        )
        raise FeatkitError(
            f"store {store.path}: expected the backbone rebuilt from its fingerprint to match, "
            f"got {'; '.join(changed)}{hint}"
        )
    return backbone


def embed_images(
    store: Store,
    images: list[Path],
    kind: str = "cls",
    *,
    backbone: Backbone | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """float32 ``[len(images), D]`` features of image files, computed as the store's were."""
    import torch

    from featkit.data.images import load_image
    from featkit.errors import ImageDecodeError
    from featkit.precision import autocast

    backbone = backbone if backbone is not None else rebuild_backbone(store)
    transform = backbone.preprocessing.transform()
    batch = []
    for path in images:
        try:
            batch.append(transform(load_image(path)))
        except ImageDecodeError as err:
            raise FeatkitError(f"image {path}: expected a decodable image, {err}") from None
    backbone.to(device).eval()
    precision = str(store.fingerprint["precision"])
    with torch.inference_mode(), autocast(precision, device):
        out = backbone(torch.stack(batch).to(device))
    parts: dict[str, Any] = {"cls": out.cls, "patch_mean": out.patches.float().mean(dim=(1, 2))}
    chosen = [parts[p].float().cpu().numpy() for p in kind.split("+")]
    return np.concatenate(chosen, axis=1).astype(np.float32)


def nearest_images(
    store: Store,
    query: str | Path,
    k: int = 5,
    kind: str = "cls",
    *,
    weights: Path | None = None,
    device: str = "cpu",
) -> list[Neighbor]:
    """The ``k`` ok rows most similar to ``query``, nearest first.

    ``query`` is a path as stored (the query row itself is left out of the answer) or
    an image file, embedded with the store's backbone (see :func:`rebuild_backbone`).
    """
    paths = store.paths()
    features = store.features(kind)
    where = {p: i for i, p in enumerate(paths)}
    own = where.get(str(query).replace("\\", "/"))
    if own is not None:
        vector = features[own : own + 1]
    elif Path(query).is_file():
        vector = embed_images(
            store, [Path(query)], kind, backbone=rebuild_backbone(store, weights), device=device
        )
    else:
        raise FeatkitError(
            f"query {query}: expected a path stored in {store.path} or an image file, got neither"
        )
    available = len(paths) - (own is not None)
    if not 1 <= k <= available:
        raise FeatkitError(f"k: expected an integer in [1, {available}], got {k}")
    index = NeighborIndex().fit(features)
    sims, idx = index.search(vector, k + (own is not None))
    hits = [(int(j), float(s)) for j, s in zip(idx[0], sims[0], strict=True) if j != own][:k]
    names = _names(store, store.labels())
    splits = store.splits()
    return [
        Neighbor(rank, paths[j], names[j], splits[j], s)
        for rank, (j, s) in enumerate(hits, start=1)
    ]
