"""What a fine-tune reads: the labelled rows of a store (images under ``--data``) or of a
data folder / CSV manifest, and the checks that they fit the backbone given."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from featkit.backbones import Backbone
from featkit.errors import FeatkitError


@dataclass(frozen=True)
class LabelledImages:
    """The rows a fine-tune draws from: what a store (or a data folder) says about images."""

    dataset: str
    root: Path  # folder the relative paths are under
    paths: tuple[str, ...]
    labels: np.ndarray  # int64 [N], -1 = unlabelled
    splits: tuple[str, ...]  # "train" | "val" | "test" | "" per row
    label_names: tuple[str, ...]
    store: Path | None = None  # the store the rows came from, if any
    store_model: str | None = None
    fingerprint: dict[str, Any] | None = None


def labelled_images(source: Path, data: Path | None = None) -> LabelledImages:
    """Rows from a store (``.h5``: images under ``data``) or a data folder / CSV manifest."""
    from featkit.data.images import discover

    source = Path(source)
    if source.suffix == ".h5" and source.is_file():
        return _from_store(source, data)
    if data is not None:
        raise FeatkitError(
            f"--data {data}: expected it only with a store as input, got a data source {source}"
        )
    dataset = discover(source)
    labels = np.asarray(dataset.label_indices(), dtype=np.int64)
    return LabelledImages(
        dataset=dataset.name,
        root=dataset.root,
        paths=tuple(r.path for r in dataset.records),
        labels=labels,
        splits=tuple(r.split or "" for r in dataset.records),
        label_names=dataset.label_names,
    )


def _from_store(path: Path, data: Path | None) -> LabelledImages:
    from featkit.data.images import discover
    from featkit.store.reader import open_store

    with open_store(path) as store:
        rows = LabelledImages(
            dataset=store.dataset,
            root=Path(),
            paths=tuple(store.paths()),
            labels=store.labels(),
            splits=tuple(store.splits()),
            label_names=tuple(store.label_names),
            store=path,
            store_model=store.model,
            fingerprint=dict(store.fingerprint),
        )
        # A store that records its image folder needs no --data (none does yet).
        recorded = getattr(store, "data_root", None) or store.fingerprint.get("data_root")
    if data is not None:
        root = discover(data).root if Path(data).is_file() else Path(data).resolve()
    elif recorded:
        root = Path(recorded)
    else:
        raise FeatkitError(
            f"{path}: the store does not record where its images are; "
            "expected --data FOLDER (the image folder or CSV manifest it was extracted from)"
        )
    missing = next((p for p in rows.paths if not (root / p).is_file()), None)
    if missing is not None:
        raise FeatkitError(
            f"--data {root}: expected the images of store {path.name} under it, "
            f"got a missing file ({missing})"
        )
    return replace(rows, root=root)


def require_labels(rows: LabelledImages) -> None:
    """Fine-tuning is supervised: refuse unlabelled data before any model is built."""
    if not np.any(rows.labels >= 0):
        raise FeatkitError(
            f"{rows.store or rows.root}: fine-tuning expected labelled images (class "
            "sub-folders or a label column), got none: every image is unlabelled"
        )


def check_store_backbone(rows: LabelledImages, backbone: Backbone) -> None:
    """Refuse to label tuned rows with a store's model when the weights or input size
    differ from those the store (and so the probe's rows) was made with."""
    from featkit.store.fingerprint import parameters_sha256

    if not rows.fingerprint:
        return
    recorded = rows.fingerprint.get("weights_sha256")
    if recorded:
        given = backbone.weights_sha256 or f"params:{parameters_sha256(backbone)}"
        if given != recorded:
            raise FeatkitError(
                f"{rows.store}: expected the weights the store was extracted with "
                f"({str(recorded)[:19]}), got {given[:19]}; pass the same --weights"
            )
    size = rows.fingerprint.get("image_size")
    if size is not None and int(size) != backbone.preprocessing.crop:
        raise FeatkitError(
            f"{rows.store}: expected --image-size {size} like the store, "
            f"got {backbone.preprocessing.crop}"
        )
