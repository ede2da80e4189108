"""The files under ``results/``: read one CSV, lock the folder, replace the four CSVs as one
generation (see :mod:`featkit.results.io` for what the rows mean).

The files are written to temporaries first; then ``.generation.json`` names the
temporaries (the commit point, itself replaced atomically); then each is renamed into
place. A crash before the commit leaves the old generation whole; a crash after it is
rolled forward by the next reader or writer, so ``per_class.csv`` never describes runs
that ``results.csv`` lacks. Temporaries of an interrupted write are removed then too.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from featkit.atomic import FILE_MODE, atomic_path, fsync_dir, fsync_file
from featkit.errors import FeatkitError
from featkit.locks import file_lock

# Columns read as text so that "10%", "all", "" and names like "1e5" survive a round trip.
TEXT_COLUMNS = (
    "dataset",
    "model",
    "feature",
    "protocol",
    "params",
    "shots",
    "metric",
    "run_id",
    "store",
    "class",
    "true",
    "pred",
    "data_id",
    "correct",
    "fitted",
)


def read_csv(path: Path, columns: Sequence[str], required: Sequence[str] = ()) -> pd.DataFrame:
    """The one reader and validator of a results CSV (empty frame when the file is absent).

    Text columns stay text; number columns are parsed strictly: an empty or ``nan`` cell is
    NaN, any other text is a one-line error naming the file, column and cell. ``required``
    columns must be present in a non-empty file.
    """
    if not path.is_file():
        return pd.DataFrame(columns=list(columns))
    dtypes = {c: str for c in TEXT_COLUMNS}
    try:
        frame = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FeatkitError(
            f"results file {path}: expected a CSV table, could not parse it ({error})"
        ) from None
    missing = [c for c in required if c not in frame.columns]
    if missing and not frame.empty:
        raise FeatkitError(
            f"results file {path}: expected columns {', '.join(required)}; "
            f"missing {', '.join(missing)}"
        )
    for column in _NUMERIC_COLUMNS:
        if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            text = frame[column].astype(str).str.strip()
            empty = text.str.lower().isin(["", "nan"])
            values = pd.to_numeric(text.mask(empty), errors="coerce")
            bad = values.isna() & ~empty
            if bad.any():
                raise FeatkitError(
                    f"results file {path}: expected numbers in column {column!r}, "
                    f"got {frame.loc[bad, column].iloc[0]!r}"
                )
            frame[column] = values
    return frame


_NUMERIC_COLUMNS = (
    "value",
    "recall",
    "n_train",
    "n_test",
    "count",
    "n_episodes",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "ci95_low_episodes",
    "ci95_high_episodes",
    "test_se",
)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    with file_lock(folder / ".lock"):
        yield


MANIFEST_FILE = ".generation.json"


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(folder: Path, generation: str, pending: Mapping[str, str]) -> None:
    with atomic_path(folder / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps({"generation": generation, "pending": dict(pending)}))


def settle(folder: Path) -> None:
    """Finish a committed generation and remove stale temporaries (caller holds the lock)."""
    manifest = _manifest(folder)
    pending = manifest.get("pending") or {}
    for name, tmp in pending.items():
        if (folder / tmp).is_file():
            os.replace(folder / tmp, folder / name)
    if pending:
        fsync_dir(folder)
        _write_manifest(folder, str(manifest.get("generation", "")), {})
    for stale in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def commit(folder: Path, frames: Mapping[str, pd.DataFrame]) -> str:
    generation = uuid.uuid4().hex[:12]
    pending: dict[str, str] = {}
    try:
        for name, frame in frames.items():
            tmp = folder / f".{name}.{generation}.tmp"
            pending[name] = tmp.name
            frame.to_csv(tmp, index=False)
            fsync_file(tmp)
            os.chmod(tmp, FILE_MODE)
        _write_manifest(folder, generation, pending)
    except BaseException:  # before the commit point: the old generation stays, whole
        for name in pending.values():
            with contextlib.suppress(OSError):
                (folder / name).unlink()
        raise
    settle(folder)
    return generation


def settled(folder: Path) -> None:
    """Roll a half-renamed generation forward before reading (no-op when there is none)."""
    if not folder.is_dir() or not (_manifest(folder).get("pending") or {}):
        return
    with locked(folder):
        settle(folder)


def current_generation(folder: Path) -> str:
    """Id of the current generation of the result files ("" before the first write)."""
    settled(folder)
    return str(_manifest(folder).get("generation", ""))
