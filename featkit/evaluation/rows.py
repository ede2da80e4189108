"""What a probe sweep returns: its result rows, per-class recall and confusion counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from featkit.results.io import (
    CONFUSION_COLUMNS,
    PER_CLASS_COLUMNS,
    RESULT_COLUMNS,
    read_confusion,
    read_per_class,
    read_results,
    write_results,
)


@dataclass
class ProbeResults:
    """Long result rows plus per-class recall and confusion counts (contract columns)."""

    results: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(RESULT_COLUMNS))
    )
    per_class: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(PER_CLASS_COLUMNS))
    )
    confusion: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(CONFUSION_COLUMNS))
    )

    @classmethod
    def read(cls, workspace: Path) -> ProbeResults:
        """Every row a workspace holds."""
        return cls(read_results(workspace), read_per_class(workspace), read_confusion(workspace))

    def write(self, workspace: Path) -> None:
        """Merge these rows into the workspace's results (:func:`write_results`)."""
        write_results(workspace, self.results, self.per_class, self.confusion)

    @classmethod
    def concat(cls, parts: Iterable[ProbeResults]) -> ProbeResults:
        parts = list(parts)
        if not parts:
            return cls()

        def join(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
            frames = [f for f in frames if not f.empty]
            return (
                pd.concat(frames, ignore_index=True)
                if frames
                else pd.DataFrame(columns=list(columns))
            )

        return cls(
            join([p.results for p in parts], RESULT_COLUMNS),
            join([p.per_class for p in parts], PER_CLASS_COLUMNS),
            join([p.confusion for p in parts], CONFUSION_COLUMNS),
        )
