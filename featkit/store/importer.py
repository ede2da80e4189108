"""``featkit import``: a store from features computed elsewhere."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np

from featkit.diskspace import require_free_space
from featkit.errors import FeatkitError
from featkit.store.writer import READ_BLOCK, SPLITS, STATUS_OK, TMP_SUFFIX, StoreWriter, atomic_hdf5


def _read_labels_csv(labels_csv: Path, num_rows: int) -> tuple[list[str], list[str], list[str]]:
    """(labels, paths, splits) of an import CSV, validated against the feature count."""
    import pandas as pd

    if not labels_csv.is_file():
        raise FeatkitError(f"labels CSV {labels_csv}: expected a CSV file, found nothing")
    try:
        frame = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FeatkitError(f"labels CSV {labels_csv}: expected a readable CSV ({err})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "label" not in frame.columns:
        raise FeatkitError(
            f"labels CSV {labels_csv}: expected a 'label' column, got columns "
            f"{', '.join(frame.columns) or '(none)'}"
        )
    if len(frame) != num_rows:
        raise FeatkitError(
            f"labels CSV {labels_csv}: expected {num_rows} rows (one per feature row), "
            f"got {len(frame)}"
        )
    labels = [s.strip() for s in frame["label"].tolist()]
    width = max(6, len(str(num_rows)))
    if "path" in frame.columns:
        paths = [s.strip() for s in frame["path"].tolist()]
        dupes = [p for p, c in Counter(paths).items() if c > 1]
        if dupes or any(not p for p in paths):
            raise FeatkitError(
                f"labels CSV {labels_csv}: expected a unique, non-empty 'path' per row, "
                f"got {'duplicates such as ' + repr(dupes[0]) if dupes else 'empty paths'}"
            )
    else:
        # Zero-padded row numbers sort like the rows themselves.
        paths = [f"{i:0{width}d}" for i in range(num_rows)]
    if "split" in frame.columns:
        splits = [s.strip().lower() for s in frame["split"].tolist()]
        bad = sorted({s for s in splits if s not in SPLITS})
        if bad:
            raise FeatkitError(
                f"labels CSV {labels_csv}: expected split values train, val, test or empty, "
                f"got {', '.join(repr(b) for b in bad[:5])}"
            )
    else:
        splits = [""] * num_rows
    return labels, paths, splits


def import_features(
    features: np.ndarray,
    labels_csv: Path,
    name: str,
    workspace: Path,
    *,
    dataset: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``features`` (``[N, D]``, finite) with the labels of ``labels_csv`` as a store.

    The store lands at ``<workspace>/<dataset>/<name>.h5`` (``dataset`` defaults to the
    CSV's stem) with feature kind ``"cls"`` only. Rows are sorted by the CSV's ``path``
    column (or kept in order when there is none). Returns the store path.
    """
    from featkit import __version__
    from featkit.workspace import store_path

    labels_csv = Path(labels_csv)
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise FeatkitError(f"features: expected a 2-D array [N, D], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise FeatkitError(f"features: expected a real numeric array, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FeatkitError(f"features: expected at least one row and column, got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad_rows):
        shown = ", ".join(str(int(r)) for r in bad_rows[:5])
        more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
        raise FeatkitError(
            f"features: expected finite values, got NaN or inf in {len(bad_rows)} row(s): "
            f"{shown}{more} (0-based)"
        )
    labels, paths, splits = _read_labels_csv(labels_csv, arr.shape[0])
    dataset = dataset or labels_csv.stem
    out = store_path(Path(workspace), dataset, name)
    if out.exists() and not overwrite:
        raise FeatkitError(
            f"store {out}: expected a new store name, a store already exists "
            "(pass --overwrite / overwrite=True to replace it)"
        )
    require_free_space(
        out.parent,
        arr.nbytes + arr.shape[0] * 256 + (1 << 16),
        f"importing {arr.shape[0]} rows into {out.name}",
    )
    label_names = sorted({lab for lab in labels if lab})
    index = {lab: i for i, lab in enumerate(label_names)}
    order = np.argsort(np.asarray(paths, dtype=object), kind="stable")
    fingerprint = {
        "featkit_version": __version__,
        "model": name,
        "source": "import",
        "features_sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
        "dim": int(arr.shape[1]),
    }
    _remove_stale_imports(out)
    # Imports take no extraction lock: a private temporary name keeps two racing imports
    # from writing into one file; the last complete one wins the os.replace.
    with atomic_hdf5(out, out.with_name(f".{out.name}.{os.getpid()}{TMP_SUFFIX}")) as h5:
        writer = StoreWriter(
            h5,
            num_rows=arr.shape[0],
            dim=arr.shape[1],
            dataset=dataset,
            model=name,
            label_names=label_names,
            fingerprint=fingerprint,
            patch_mean=False,
        )
        for start in range(0, len(order), READ_BLOCK):
            writer.write_features(start, arr[order[start : start + READ_BLOCK]])
        writer.write_images(
            paths=[paths[i] for i in order],
            labels=np.array([index[labels[i]] if labels[i] else -1 for i in order]),
            splits=[splits[i] for i in order],
            status=[STATUS_OK] * len(order),
            errors=[""] * len(order),
        )
    return out


def _remove_stale_imports(out: Path) -> None:
    """Delete temporary files of earlier imports of ``out`` whose process is gone.

    A killed import leaves ``.<name>.<pid>.tmp`` (as large as the store); one whose
    process still runs is another import in progress and is left alone.
    """
    prefix = f".{out.name}."
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f"{prefix}*{TMP_SUFFIX}"):
        pid = tmp.name[len(prefix) : -len(TMP_SUFFIX)]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except OSError:
            pass  # alive but not ours (EPERM): leave it
