"""The user's question in plain words: which route reaches a target, and at what label cost.

A *route* is one configuration of the comparison (a model, a method, a shot count). Routes
are ordered by what they cost the user: labels per class first (label-free, then 1, 5, 10
… shots, then fractions, then the full training split), then compute (a frozen probe
before a fine-tune at the same labels). The answer claims only what the 95 % intervals
support:

* **reaches**: the lower end of the interval is at or above the target;
* **may reach**: the interval contains the target (the mean alone is not evidence);
* **falls short**: the upper end is below the target.

When no route of a model reaches the target, the labels per class it would need are
estimated from the measured shots curve: the error ``e(n) = 1 − metric`` of each probe is
fitted as a power law ``e(n) = a · n^(−b)`` over the measured shot counts (least squares
in log–log space), and the fit is repeated on means drawn from each point's interval
(a parametric bootstrap) to give a 95 % range. That number is an extrapolation and is
always labelled as one; beyond ``MAX_EXTRAPOLATION`` × the largest measured shot count it
is not given at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from featkit.errors import FeatkitError
from featkit.evaluation.shots import shots_sort_key
from featkit.metrics import Z95
from featkit.results.io import FINETUNE_PREFIX

# Far beyond the measured shots a power law says little; the answer refuses to guess there.
MAX_EXTRAPOLATION = 10.0
BOOTSTRAP_DRAWS = 500

REACHES = "reaches"
MAY_REACH = "may reach"
FALLS_SHORT = "falls short"


@dataclass(frozen=True)
class Extrapolation:
    """Labels per class a probe would need, from its fitted shots curve."""

    protocol: str
    params: str
    feature: str
    label: str  # the method as the comparison table names it
    shots_measured: tuple[int, ...]
    labels_needed: float  # median over the bootstrap; inf when the curve never gets there
    low: float
    high: float


@dataclass
class Answer:
    """Per (dataset, model): the cheapest route's verdict, and the paragraph that says it."""

    target: float
    metric: str
    routes: pd.DataFrame  # one row per route with its verdict, in cost order
    verdicts: pd.DataFrame  # one row per (dataset, model)
    extrapolations: dict[tuple[str, str], Extrapolation | None] = field(default_factory=dict)
    paragraph: str = ""


def route_cost(shots: str, protocol: str) -> tuple[int, float, int]:
    """Sort key of a route: labels per class first, then probe before fine-tune."""
    kind_rank, amount, _ = shots_sort_key(shots)
    return (kind_rank, amount, 1 if protocol.startswith(FINETUNE_PREFIX) else 0)


def verdict(low: float, high: float, target: float) -> str:
    if low >= target:
        return REACHES
    if high >= target:
        return MAY_REACH
    return FALLS_SHORT


def _per_class(shots: str) -> str:
    return f"{shots} label per class" if shots == "1" else f"{shots} labels per class"


def _route_name(row: pd.Series) -> str:
    protocol = str(row["protocol"])
    shots = str(row["shots"])
    label = str(row["label"])
    if protocol.startswith(FINETUNE_PREFIX):
        return f"{label} with {_per_class(shots)}"
    if shots == "0":
        return f"{label} with no labels"
    if shots == "all":
        return f"{label} on the full training split"
    return f"{label} with {_per_class(shots)}"


def fit_power_law(shots: np.ndarray, error: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``error = a · shots^(−b)`` by least squares on logs."""
    slope, intercept = np.polyfit(np.log(shots), np.log(error), 1)
    return float(math.exp(intercept)), float(-slope)


def labels_for(a: float, b: float, target_error: float) -> float:
    """Shots at which the fitted curve reaches ``target_error`` (inf if it never does)."""
    if b <= 0:
        return math.inf
    return float((target_error / a) ** (-1.0 / b))


def extrapolate(
    curve: pd.DataFrame, target: float, seed: int = 0, draws: int = BOOTSTRAP_DRAWS
) -> tuple[float, float, float] | None:
    """Median and 95 % range of the labels per class needed, or None without a curve.

    ``curve`` holds one row per measured integer shot count with ``shots``, ``mean``,
    ``low`` and ``high`` as fractions. Needs at least two shot counts.
    """
    counts = curve["shots"].astype(float).to_numpy()
    if np.unique(counts).size < 2:
        return None
    eps = 1e-4  # a perfect score has no error to take a log of
    mean = curve["mean"].to_numpy(float)
    sigma = ((curve["high"] - curve["low"]).to_numpy(float) / 2) / Z95
    rng = np.random.default_rng(seed)
    samples = mean + sigma * rng.standard_normal((draws, mean.size))
    needed = np.empty(draws)
    for i, sample in enumerate(samples):
        a, b = fit_power_law(counts, np.clip(1.0 - sample, eps, 1.0))
        needed[i] = labels_for(a, b, max(1.0 - target, eps))
    a, b = fit_power_law(counts, np.clip(1.0 - mean, eps, 1.0))
    point = labels_for(a, b, max(1.0 - target, eps))
    low, high = np.percentile(needed, [2.5, 97.5])
    return point, float(low), float(high)


def _best_extrapolation(routes: pd.DataFrame, target: float, seed: int) -> Extrapolation | None:
    """The probe whose curve needs the fewest labels (every curve is an extrapolation)."""
    counted = routes[
        routes["shots"].astype(str).str.fullmatch(r"[1-9]\d*")
        & ~routes["protocol"].str.startswith(FINETUNE_PREFIX)
    ]
    best: Extrapolation | None = None
    for (protocol, params, feature), curve in counted.groupby(
        ["protocol", "params", "feature"], sort=True
    ):
        result = extrapolate(curve, target, seed)
        if result is None:
            continue
        point, low, high = result
        shots_measured = tuple(sorted(int(s) for s in curve["shots"]))
        label = str(curve["label"].iloc[0])
        found = Extrapolation(
            str(protocol), str(params), str(feature), label, shots_measured, point, low, high
        )
        if best is None or found.labels_needed < best.labels_needed:
            best = found
    return best


def answer(summary: pd.DataFrame, target: float, metric: str, seed: int = 0) -> Answer:
    """Judge every route of ``summary`` against ``target`` (a fraction, e.g. 0.8).

    ``summary`` has one row per configuration with ``dataset``, ``model``, ``feature``,
    ``protocol``, ``params``, ``shots`` and ``mean``, ``low``, ``high`` as fractions.
    """
    if not 0.0 < target <= 1.0:
        raise FeatkitError(f"--target: expected a fraction in (0, 1], got {target}")
    needed = ["dataset", "model", "feature", "protocol", "params", "shots", "mean", "low", "high"]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise FeatkitError(f"summary: expected columns {', '.join(missing)}, found none")
    routes = summary[needed].copy()
    routes["params"] = routes["params"].fillna("").astype(str)
    # The table's short method name when the caller has one ("knn", "knn (k=10)").
    if "method" in summary.columns:
        routes["label"] = summary["method"].astype(str)
    else:
        routes["label"] = routes["protocol"] + [f" ({p})" if p else "" for p in routes["params"]]
    routes["shots"] = routes["shots"].astype(str)
    routes["verdict"] = [
        verdict(lo, hi, target) for lo, hi in zip(routes["low"], routes["high"], strict=True)
    ]
    routes["route"] = [_route_name(row) for _, row in routes.iterrows()]
    cost = [route_cost(s, p) for s, p in zip(routes["shots"], routes["protocol"], strict=True)]
    routes["_cost"] = cost
    routes = routes.sort_values(
        ["dataset", "model", "_cost", "mean"], ascending=[True, True, True, False]
    )
    routes = routes.drop(columns="_cost").reset_index(drop=True)

    verdict_rows = []
    extrapolations: dict[tuple[str, str], Extrapolation | None] = {}
    for (dataset, model), group in routes.groupby(["dataset", "model"], sort=True):
        reaching = group[group["verdict"] == REACHES]
        maybe = group[group["verdict"] == MAY_REACH]
        best = group.iloc[int(np.argmax(group["mean"].to_numpy()))]
        if not reaching.empty:
            chosen, status = reaching.iloc[0], REACHES
        elif not maybe.empty:
            chosen, status = maybe.iloc[0], MAY_REACH
        else:
            chosen, status = best, FALLS_SHORT
        key = (str(dataset), str(model))
        extrapolations[key] = (
            _best_extrapolation(group, target, seed) if status != REACHES else None
        )
        verdict_rows.append(
            {
                "dataset": dataset,
                "model": model,
                "verdict": status,
                "route": chosen["route"],
                "mean": chosen["mean"],
                "low": chosen["low"],
                "high": chosen["high"],
                "gap": target - chosen["mean"],
            }
        )
    verdicts = pd.DataFrame(verdict_rows)
    result = Answer(target, metric, routes, verdicts, extrapolations)
    result.paragraph = plain_words(result)
    return result


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _extrapolation_words(found: Extrapolation | None, target: float) -> str:
    if found is None:
        return " No shots curve with two or more shot counts exists to extrapolate from."
    measured = ", ".join(str(s) for s in found.shots_measured)
    largest = max(found.shots_measured)
    method = found.label
    if not math.isfinite(found.labels_needed) or found.labels_needed > MAX_EXTRAPOLATION * largest:
        return (
            f" Its best shots curve ({method}, measured at {measured} shots) does not reach "
            f"{_pct(target)} % within {MAX_EXTRAPOLATION:g}× the measured range; no label "
            "count is estimated."
        )
    ceiling = MAX_EXTRAPOLATION * largest
    if math.isfinite(found.high) and found.high <= ceiling:
        high = str(math.ceil(found.high))
    else:
        high = f"more than {ceiling:g}"
    return (
        f" Extrapolation: a power law fitted to the {method} curve (measured at {measured} "
        f"shots) reaches it at about {math.ceil(found.labels_needed)} labels per class "
        f"(95 % range {max(1, math.floor(found.low))} to {high}); this lies beyond the "
        "measured shots and is an estimate, not a result."
    )


def plain_words(result: Answer) -> str:
    """One paragraph per dataset, generated from the verdicts and their intervals."""
    target = _pct(result.target)
    lines: list[str] = []
    for dataset, group in result.verdicts.groupby("dataset", sort=True):
        sentences = [f"Target: {target} % {result.metric} on {dataset}."]
        for _, row in group.iterrows():
            interval = f"{_pct(row['mean'])} % (95 % CI {_pct(row['low'])}–{_pct(row['high'])})"
            if row["verdict"] == REACHES:
                sentences.append(f"{row['model']} reaches it with {row['route']}: {interval}.")
            elif row["verdict"] == MAY_REACH:
                sentences.append(
                    f"{row['model']} may reach it with {row['route']}: {interval}; the "
                    "interval includes the target, so this is not yet shown."
                )
            else:
                sentences.append(
                    f"{row['model']} falls short: its best route, {row['route']}, gets "
                    f"{interval}, {_pct(row['gap'])} points below the target."
                )
            if row["verdict"] != REACHES:
                found = result.extrapolations.get((str(dataset), str(row["model"])))
                sentences[-1] += _extrapolation_words(found, result.target)
        lines.append(" ".join(sentences))
    return "\n\n".join(lines)
