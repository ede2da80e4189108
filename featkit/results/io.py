"""The results files of a workspace: write, merge, read and summarise.

``results/results.csv`` is long: one row per measured number (the contract in docs/internals.md).
Every row carries a ``run_id``, a hash of what produced it (store fingerprint, dataset
name, the data itself: paths, labels and splits via ``data_id``, feature, protocol,
params, shots, seed, test fraction, episode); writing a run replaces the rows with its
``run_id`` instead of appending them twice, and rows of another dataset or other data
never share one. ``per_class.csv`` and ``confusion.csv`` follow the same rule, and
``summary.csv`` is recomputed from all rows after each write.

The four files are replaced as one generation under an exclusive lock file
(:mod:`featkit.results.files`), so a crash or ``kill -9`` leaves the old generation or the
new one, and two concurrent writers do not lose each other's rows.

Who writes: the probe (``featkit.evaluation.probe``) and fine-tuning (protocol
``finetune-lora`` …). Who reads: reports. Example::

    base = dict(dataset="pets", model="dinov2_vits14", feature="cls",
                protocol="finetune-lora", params="r=8", shots="10", episode=0,
                effective_shots=10, n_train=370, n_test=740, seed=0, store="…",
                run_id=run_id(fingerprint, "cls", "finetune-lora", "r=8", "10", 0, 0,
                              dataset="pets", data=data_id("pets", paths, labels)))
    write_results(workspace, result_rows(base, {"accuracy": 0.91, "macro_f1": 0.88}))
    table = read_results(workspace)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featkit.errors import FeatkitError
from featkit.metrics import combined_half_width, student_t_quantile
from featkit.results.files import (
    TEXT_COLUMNS,
    commit,
    current_generation,
    locked,
    read_csv,
    settle,
    settled,
)
from featkit.workspace import results_dir

# Fine-tune rows name their protocol finetune-<method> (featkit.tune.episode).
FINETUNE_PREFIX = "finetune-"

# One experimental configuration; its episodes are summarised together.
CONFIG_COLUMNS = ("dataset", "model", "feature", "protocol", "params", "shots")
RESULT_COLUMNS = (
    *CONFIG_COLUMNS,
    "episode",
    "metric",
    "value",
    "effective_shots",
    "n_train",
    "n_test",
    "seed",
    "run_id",
    "store",
    # Added after the contract columns (see featkit.evaluation.records): the stratified-bootstrap
    # standard error over test images, the data identity, per-image correctness bits,
    # and what the protocol chose while fitting (JSON: a selected C, an index kind).
    "test_se",
    "data_id",
    "correct",
    "fitted",
    # What the episode cost (featkit.cost): wall seconds of fit + predict (a probe) or of
    # the whole tune (a fine-tune), and peak memory in MiB. Older files lack them.
    "seconds",
    "peak_mb",
)
GROUP_COLUMNS = (*CONFIG_COLUMNS, "metric")
# ci95_low/high include the test-set variance; the *_episodes pair is the interval over
# episodes alone (the support sampling), kept so both can be read apart.
SUMMARY_COLUMNS = (
    *GROUP_COLUMNS,
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "n_episodes",
    "ci95_low_episodes",
    "ci95_high_episodes",
    "test_se",
    "effective_shots",
    "n_test",
)
PER_CLASS_COLUMNS = (
    *CONFIG_COLUMNS,
    "episode",
    "class",
    "n_train",
    "n_test",
    "recall",
    "run_id",
)
CONFUSION_COLUMNS = (*CONFIG_COLUMNS, "episode", "true", "pred", "count", "run_id")

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.csv"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion.csv"


def canonical_params(params: Mapping[str, Any]) -> str:
    """``{"t": 0.07, "k": 20}`` → ``"k=20;t=0.07"`` (sorted keys, ``repr``-free floats)."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:g}" if value == float(f"{value:g}") else repr(value)
        if isinstance(value, Mapping):
            return "{" + ",".join(f"{k}:{text(v)}" for k, v in sorted(value.items())) + "}"
        return str(value)

    return ";".join(f"{key}={text(params[key])}" for key in sorted(params))


def run_id(
    fingerprint: Mapping[str, Any] | str,
    feature: str,
    protocol: str,
    params: str,
    shots: str,
    seed: int,
    episode: int,
    **extra: Any,
) -> str:
    """A stable 16-hex-digit id of one evaluation run (what produced a set of rows).

    ``extra`` settings that change the numbers (e.g. the test fraction) join the hash.
    """
    payload = {
        "fingerprint": fingerprint,
        "feature": feature,
        "protocol": protocol,
        "params": params,
        "shots": str(shots),
        "seed": int(seed),
        "episode": int(episode),
        **{k: extra[k] for k in sorted(extra)},
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _frame(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> pd.DataFrame:
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=list(columns))
    missing = [c for c in columns if c not in frame.columns and c in ("run_id", "metric", "value")]
    if missing:
        raise FeatkitError(f"result rows: expected columns {', '.join(missing)}, got none")
    for column in columns:
        if column not in frame.columns:
            frame[column] = ""
    for column in TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].fillna("").astype(str)
    extra = [c for c in frame.columns if c not in columns]
    return frame[[*columns, *extra]]


def generation(workspace: Path) -> str:
    """Id of the current generation of the four result files ("" before the first write)."""
    return current_generation(results_dir(workspace))


def _replaced_runs(old: pd.DataFrame, new: pd.DataFrame) -> set[str]:
    """``run_id``s of old rows that the new rows supersede.

    A rerun replaces its own rows (same ``run_id``). When a configuration (dataset,
    model, feature, protocol, params, shots) comes back with other settings — another
    seed, or the same episode under another ``run_id`` (new weights, another test
    fraction, changed images, labels or splits) — every old row of that configuration
    goes, so a summary never averages two different experiments. New episodes of
    unchanged settings add to the old ones.
    """
    replaced = set(new["run_id"])
    if old.empty or new.empty:
        return replaced
    key, episode = list(CONFIG_COLUMNS), [*CONFIG_COLUMNS, "episode"]
    old_text = old[[*episode, "seed"]].astype(str)
    new_text = new[[*episode, "seed"]].astype(str)

    def rows_of(frame: pd.DataFrame, columns: list[str]) -> pd.MultiIndex:
        return pd.MultiIndex.from_frame(frame[columns])

    # Only old rows of a configuration that comes back can be superseded.
    back = rows_of(old_text, key).isin(rows_of(new_text, key))
    if not back.any():
        return replaced
    old_text, old_run = old_text[back], old["run_id"][back]
    same_episode = rows_of(old_text, episode).isin(rows_of(new_text, episode))
    moved = old_text[key][same_episode & ~old_run.isin(replaced).to_numpy()]
    old_seeds = old_text.groupby(key)["seed"].agg(frozenset)
    new_seeds = new_text.groupby(key)["seed"].agg(frozenset).reindex(old_seeds.index)
    gone = set(moved.itertuples(index=False, name=None))
    gone |= set(old_seeds.index[(old_seeds != new_seeds).to_numpy()])
    if gone:
        replaced |= set(old_run[rows_of(old_text, key).isin(list(gone))])
    return replaced


def _merge(old: pd.DataFrame, new: pd.DataFrame, replaced: set[str]) -> pd.DataFrame:
    kept = old[~old["run_id"].isin(replaced)] if not old.empty else old
    frames = [f for f in (kept, new) if not f.empty]
    if not frames:
        return new.reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


def summarize_results(results: pd.DataFrame) -> pd.DataFrame:
    """One summary row per (dataset … shots, metric) group: the one summary of featkit.

    ``mean``/``std`` over episodes; ``ci95_low_episodes``/``ci95_high_episodes`` the 95 %
    Student-t interval over episodes; ``test_se`` the mean over episodes of each row's
    bootstrap standard error over test images (episodes share one test set, so their test
    errors move together and the mean of the standard errors bounds the mean's); and
    ``ci95_low``/``ci95_high`` both sources combined (:func:`combined_half_width`).
    """
    if results.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    # One grouped pass (a loop over the groups cost 0.7 s per write of a 1,600-row sweep).
    index = pd.MultiIndex.from_frame(results[list(GROUP_COLUMNS)])
    values = pd.to_numeric(results["value"], errors="coerce").to_numpy(dtype=float)
    columns = {"value": np.where(np.isfinite(values), values, np.nan)}
    for name in ("test_se", "effective_shots", "n_test"):
        column = results[name] if name in results else pd.Series(np.nan, index=results.index)
        columns[name] = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    groups = pd.DataFrame(columns, index=index).groupby(level=list(range(len(GROUP_COLUMNS))))
    n = groups["value"].count().to_numpy()
    means = groups["value"].mean()
    mean = means.to_numpy()
    std = np.where(n > 1, groups["value"].std(ddof=1).to_numpy(), np.where(n == 1, 0.0, np.nan))
    t = np.array([student_t_quantile(int(k) - 1) if k > 1 else 0.0 for k in n])
    episode_half = t * std / np.sqrt(np.maximum(n, 1))
    se = groups["test_se"].mean().to_numpy()  # NaN where no row has one
    half = combined_half_width(episode_half, se)
    summary = means.index.to_frame(index=False)
    summary.columns = list(GROUP_COLUMNS)
    summary["mean"], summary["std"] = mean, std
    summary["ci95_low"], summary["ci95_high"] = mean - half, mean + half
    summary["n_episodes"] = n
    summary["ci95_low_episodes"] = mean - episode_half
    summary["ci95_high_episodes"] = mean + episode_half
    summary["test_se"] = se
    for name, reduce in (("effective_shots", "min"), ("n_test", "max")):
        found = groups[name].agg(reduce).to_numpy()
        summary[name] = [int(v) if np.isfinite(v) else "" for v in found]
    return summary[list(SUMMARY_COLUMNS)]


def write_results(
    workspace: Path,
    rows: pd.DataFrame | Iterable[Mapping[str, Any]],
    per_class: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None,
    confusion: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None,
) -> Path:
    """Merge rows into the workspace's CSVs (same ``run_id`` → replaced) and re-summarise.

    Returns the results folder. Rows need ``run_id``, ``metric`` and ``value``; other
    contract columns that are missing are written empty. The four files are replaced
    as one generation (see above).
    """
    folder = results_dir(workspace)
    new = _frame(rows, RESULT_COLUMNS)
    with locked(folder):
        settle(folder)
        previous = read_csv(folder / RESULTS_FILE, RESULT_COLUMNS)
        replaced = _replaced_runs(previous, new)
        merged = _merge(previous, new, replaced)
        frames = {RESULTS_FILE: merged, SUMMARY_FILE: summarize_results(merged)}
        for extra_rows, name, columns in (
            (per_class, PER_CLASS_FILE, PER_CLASS_COLUMNS),
            (confusion, CONFUSION_FILE, CONFUSION_COLUMNS),
        ):
            if extra_rows is None and not replaced:
                continue
            # Rows of a superseded run go even when the new run brings none of these.
            frame = _frame(extra_rows if extra_rows is not None else [], columns)
            frames[name] = _merge(read_csv(folder / name, columns), frame, replaced)
        # per_class and confusion before results: a reader of an old-style folder sees
        # them only with their result rows.
        order = [PER_CLASS_FILE, CONFUSION_FILE, RESULTS_FILE, SUMMARY_FILE]
        commit(folder, {name: frames[name] for name in order if name in frames})
    return folder


# What a reader needs of each file; the writer adds the rest.
REQUIRED = {
    RESULTS_FILE: (*CONFIG_COLUMNS, "episode", "metric", "value"),
    SUMMARY_FILE: (*GROUP_COLUMNS, "mean", "std", "n_episodes"),
    PER_CLASS_FILE: (*CONFIG_COLUMNS, "class", "n_train", "recall"),
    CONFUSION_FILE: (*CONFIG_COLUMNS, "true", "pred", "count"),
}


def read_results(workspace: Path) -> pd.DataFrame:
    """All result rows (text columns as str, ``value`` as float); empty when none yet."""
    folder = results_dir(workspace)
    settled(folder)
    frame = read_csv(folder / RESULTS_FILE, RESULT_COLUMNS, REQUIRED[RESULTS_FILE])
    for column in ("episode", "seed"):
        if column in frame.columns and not frame.empty:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def read_summary(workspace: Path) -> pd.DataFrame:
    folder = results_dir(workspace)
    settled(folder)
    return read_csv(folder / SUMMARY_FILE, SUMMARY_COLUMNS, REQUIRED[SUMMARY_FILE])


def read_per_class(workspace: Path) -> pd.DataFrame:
    folder = results_dir(workspace)
    settled(folder)
    return read_csv(folder / PER_CLASS_FILE, PER_CLASS_COLUMNS, REQUIRED[PER_CLASS_FILE])


def read_confusion(workspace: Path) -> pd.DataFrame:
    folder = results_dir(workspace)
    settled(folder)
    return read_csv(folder / CONFUSION_FILE, CONFUSION_COLUMNS, REQUIRED[CONFUSION_FILE])


def result_rows(base: Mapping[str, Any], metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """One contract row per metric: ``base`` holds every other column."""
    return [
        {**base, "metric": name, "value": float(value)}
        for name, value in metrics.items()
        if value is not None and np.isfinite(value)
    ]
