"""Take features out of a store: ``.npy`` + CSV, the npy + parquet retrieval layout, or CSV.

Every format holds the ok rows of the store in store order (sorted by path) with their
``path``, ``label`` (the class name, ``""`` when unlabelled) and ``split``; failed rows
have no features and are left out. Layouts under the output folder::

    npy      features.npy  [N, D] float32       metadata.csv  path,label,split
    parquet  img_emb/img_emb_0.npy [N, D]       metadata/metadata_0.parquet
                                                  image_path,label,split
    csv      features.csv  path,label,split,f0,...,f{D-1}

``npy`` is what ``featkit import FEATURES.npy --labels metadata.csv`` reads back. The
``parquet`` layout is the one clip-retrieval's ``inference`` step writes and its
``index`` step (autofaiss / embedding-reader, "parquet_npy") reads: numbered ``.npy``
embedding files with metadata parquet files of the same number and row order. CSV
floats carry 9 significant digits, which restores every float32 exactly.

Each file is written through :func:`featkit.atomic.atomic_path`; features are copied
block by block, so memory stays at one block whatever the store size.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featkit.atomic import atomic_path
from featkit.errors import FeatkitError
from featkit.store.reader import FEATURE_KINDS, READ_BLOCK, Store, open_store

FORMATS = ("npy", "parquet", "csv")

# Metadata columns of every format; clip-retrieval names the path column image_path.
META_COLUMNS = ("path", "label", "split")
PARQUET_PATH_COLUMN = "image_path"

# printf format that round-trips float32 through text (FLT_DECIMAL_DIG = 9).
FLOAT32_TEXT = "%.9g"


@dataclass
class ExportResult:
    """What :func:`export_store` wrote."""

    folder: Path
    files: list[Path] = field(default_factory=list)  # in the order written
    rows: int = 0  # rows exported (ok rows)
    dim: int = 0
    skipped_failed: int = 0  # failed rows left out (they have no features)


def _feature_blocks(store: Store, kind: str) -> Iterator[np.ndarray]:
    """float32 blocks of the ok rows of ``kind``, in store order (contiguous HDF5 slices)."""
    keep = store.mask()
    parts = kind.split("+")
    for start in range(0, store.num_rows, READ_BLOCK):
        stop = min(store.num_rows, start + READ_BLOCK)
        sel = keep[start:stop]
        if not sel.any():
            continue
        arrays = [store.raw_rows(part, start, stop)[sel] for part in parts]
        block = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)
        yield np.asarray(block, dtype=np.float32)


def _metadata(store: Store) -> tuple[list[str], list[str], list[str]]:
    """(paths, label names, splits) of the ok rows, ``""`` for an unlabelled row."""
    names = store.label_names
    labels = [names[i] if i >= 0 else "" for i in store.labels().tolist()]
    return store.paths(), labels, store.splits()


def _check_kind(store: Store, kind: str) -> int:
    if kind not in FEATURE_KINDS:
        raise FeatkitError(
            f"feature kind: expected one of {', '.join(FEATURE_KINDS)}, got {kind!r}"
        )
    for part in kind.split("+"):
        if part not in store.feature_kinds:
            raise FeatkitError(
                f"store {store.path}: expected {part} features, but this store has only "
                f"{', '.join(store.feature_kinds)}; use --feature cls"
            )
    return store.dim * len(kind.split("+"))


def _write_npy(path: Path, store: Store, kind: str, rows: int, dim: int) -> None:
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
        filled = 0
        for block in _feature_blocks(store, kind):
            array[filled : filled + len(block)] = block
            filled += len(block)
        array.flush()
        del array  # close the memory map before the file is renamed


def _write_meta_csv(path: Path, paths: list[str], labels: list[str], splits: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(META_COLUMNS)
        writer.writerows(zip(paths, labels, splits, strict=True))


def _write_parquet(path: Path, paths: list[str], labels: list[str], splits: list[str]) -> None:
    import pandas as pd

    frame = pd.DataFrame({PARQUET_PATH_COLUMN: paths, "label": labels, "split": splits})
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow")


def _write_feature_csv(
    path: Path, store: Store, kind: str, meta: tuple[list[str], list[str], list[str]], dim: int
) -> None:
    paths, labels, splits = meta
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*META_COLUMNS, *(f"f{j}" for j in range(dim))])
        row = 0
        for block in _feature_blocks(store, kind):
            for values in block:
                cells = [FLOAT32_TEXT % v for v in values.tolist()]
                writer.writerow([paths[row], labels[row], splits[row], *cells])
                row += 1


def parquet_available() -> bool:
    """Whether pandas can write parquet here (it needs pyarrow)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def export_store(
    store_path: Path | str, out_dir: Path | str, fmt: str, kind: str = "cls"
) -> ExportResult:
    """Write the ok rows of a store's ``kind`` features with path, label, split under ``out_dir``.

    ``fmt`` is ``"npy"``, ``"parquet"`` (needs pyarrow) or ``"csv"``; see the module doc
    for the files. Existing files of the same names are replaced, each atomically.
    """
    if fmt not in FORMATS:
        raise FeatkitError(f"export format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and not parquet_available():
        raise FeatkitError(
            "export format parquet: expected pyarrow to be installed, it is not "
            "(pip install pyarrow, or use --format npy)"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FeatkitError(f"export folder {out}: expected a folder, got a file")
    with open_store(store_path) as store:
        dim = _check_kind(store, kind)
        meta = _metadata(store)
        rows = len(meta[0])
        if rows == 0:
            raise FeatkitError(f"store {store.path}: expected at least one ok row, got none")
        result = ExportResult(folder=out, rows=rows, dim=dim, skipped_failed=store.num_rows - rows)
        # Features first, metadata last: a reader that finds the metadata finds its rows.
        if fmt == "npy":
            targets = [out / "features.npy", out / "metadata.csv"]
            _write_npy(targets[0], store, kind, rows, dim)
            _write_meta_csv(targets[1], *meta)
        elif fmt == "parquet":
            targets = [out / "img_emb" / "img_emb_0.npy", out / "metadata" / "metadata_0.parquet"]
            _write_npy(targets[0], store, kind, rows, dim)
            _write_parquet(targets[1], *meta)
        else:
            targets = [out / "features.csv"]
            _write_feature_csv(targets[0], store, kind, meta, dim)
    result.files = targets
    return result


def default_export_dir(store_path: Path | str, fmt: str) -> Path:
    """``<store folder>/<store name>-<fmt>/``: beside the store, outside the store glob."""
    path = Path(store_path)
    return path.with_name(f"{path.stem}-{fmt}")
