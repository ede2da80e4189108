"""The per-row table of a store (``/images/*``): path, label, split, status, error and
the file stats of every image. It is small, so it is read whole and checked at every
open; the features are read in blocks by :class:`featkit.store.reader.Store`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featkit.errors import FeatkitError
from featkit.store.integrity import CHECKSUM_ATTR, Hasher
from featkit.store.writer import STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    import h5py


def _read_str(ds: h5py.Dataset) -> np.ndarray:
    if ds.shape[0] == 0:
        return np.zeros(0, dtype=object)
    return np.asarray(ds.asstr()[:], dtype=object)


@dataclass(frozen=True)
class RowTable:
    """The ``/images`` arrays, row-aligned with the features (sorted by path)."""

    paths: np.ndarray  # object (str)
    labels: np.ndarray  # int64, index into label_names, -1 = unlabelled
    splits: np.ndarray  # object (str), "" when the data named none
    status: np.ndarray  # object (str), "ok" | "failed"
    errors: np.ndarray  # object (str), "" for ok rows
    stats: tuple[np.ndarray, np.ndarray] | None  # (size, mtime_ns) when recorded

    @classmethod
    def read(cls, images: h5py.Group) -> RowTable:
        stats = [images[k] for k in ("size", "mtime_ns") if k in images]
        return cls(
            paths=_read_str(images["path"]),
            labels=np.asarray(images["label"][:], dtype=np.int64),
            splits=_read_str(images["split"]),
            status=_read_str(images["status"]),
            errors=_read_str(images["error"]),
            stats=(
                (np.asarray(stats[0][:], np.int64), np.asarray(stats[1][:], np.int64))
                if len(stats) == 2
                else None
            ),
        )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def ok(self) -> np.ndarray:
        """Boolean ``[N]``: the rows whose image was extracted."""
        return np.asarray(self.status == STATUS_OK)

    def _arrays(self) -> dict[str, np.ndarray]:
        """Dataset name under ``/images`` → the values read from it."""
        arrays = {
            "path": self.paths,
            "label": self.labels,
            "split": self.splits,
            "status": self.status,
            "error": self.errors,
        }
        if self.stats is not None:
            arrays["size"], arrays["mtime_ns"] = self.stats
        return arrays

    def length_damage(self) -> str:
        """The first array whose length differs from ``/images/path``'s ("" if none)."""
        n = len(self)
        for name, values in self._arrays().items():
            if len(values) != n:
                return f"/images/{name} has {len(values)} rows, /images/path has {n}"
        return ""

    def value_damage(self, images: h5py.Group, classes: int) -> str:
        """The first label out of range, unknown status or checksum mismatch ("" if none)."""
        bad = np.flatnonzero((self.labels < -1) | (self.labels >= classes))
        if len(bad):
            row = int(bad[0])
            return (
                f"label {int(self.labels[row])} in row {row} ({self.paths[row]}) is out of "
                f"range for {classes} classes ({len(bad)} such rows)"
            )
        odd = sorted(set(self.status.tolist()) - {STATUS_OK, STATUS_FAILED})
        if odd:
            return f"status values {', '.join(repr(v) for v in odd[:3])} are not ok/failed"
        # Checksums last: a label out of range says more than "does not match".
        for name, values in self._arrays().items():
            recorded = images[name].attrs.get(CHECKSUM_ATTR)
            if recorded is not None:
                hasher = Hasher(values.dtype)
                hasher.update(values)
                if hasher.hexdigest() != str(recorded):
                    return f"/images/{name} does not match its checksum"
        return ""

    def mask(self, split: str | None, *, include_failed: bool, where: str) -> np.ndarray:
        """Boolean ``[N]``: the rows of ``split`` (all when None), failed ones only on request.

        ``where`` names the store in the error for a split it does not hold.
        """
        keep = np.ones(len(self), dtype=bool)
        if not include_failed:
            keep &= self.ok
        if split is not None:
            present = set(self.splits.tolist())
            if split not in present:
                shown = ", ".join(repr(s) for s in sorted(present)) or "none"
                raise FeatkitError(
                    f"{where}: expected a split present in the store, got "
                    f"{split!r} (splits here: {shown})"
                )
            keep &= self.splits == split
        return keep

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every failed row, in path order."""
        bad = ~self.ok
        return [(str(p), str(e)) for p, e in zip(self.paths[bad], self.errors[bad], strict=True)]

    def counts(self, label_names: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int]]:
        """Ok images per class (``"(unlabelled)"`` last when any) and per split."""
        ok = self.ok
        counts = Counter(self.labels[ok].tolist())
        label_counts = {name: int(counts.get(i, 0)) for i, name in enumerate(label_names)}
        if counts.get(-1):
            label_counts["(unlabelled)"] = int(counts[-1])
        split_counts = {str(k): int(v) for k, v in sorted(Counter(self.splits[ok]).items())}
        return label_counts, split_counts
