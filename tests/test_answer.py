"""The plain-words answer and the data summary, against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from featkit.errors import FeatkitError
from featkit.report.answer import (
    FALLS_SHORT,
    MAY_REACH,
    REACHES,
    answer,
    extrapolate,
    fit_power_law,
    labels_for,
)
from featkit.report.datasummary import MIN_TEST_IMAGES, summarize_data


def _summary(rows: list[tuple[str, str, str, float, float, float]]) -> pd.DataFrame:
    """(model, protocol, shots, mean, low, high) → the frame the report summarises to."""
    return pd.DataFrame(
        [
            {
                "dataset": "d",
                "model": model,
                "feature": "cls",
                "protocol": protocol,
                "params": "",
                "shots": shots,
                "mean": mean,
                "low": low,
                "high": high,
            }
            for model, protocol, shots, mean, low, high in rows
        ]
    )


def test_the_cheapest_route_whose_interval_clears_the_target_is_named() -> None:
    summary = _summary(
        [
            ("m", "knn", "1", 0.60, 0.50, 0.70),
            ("m", "knn", "5", 0.82, 0.76, 0.88),  # mean above, interval not: "may reach"
            ("m", "logistic", "10", 0.85, 0.81, 0.89),  # cheapest that reaches
            ("m", "finetune-lora", "10", 0.95, 0.93, 0.97),  # better but costs training
            ("m", "logistic", "all", 0.97, 0.96, 0.98),
        ]
    )
    result = answer(summary, target=0.8, metric="balanced_accuracy")
    row = result.verdicts.iloc[0]
    assert row["verdict"] == REACHES
    assert row["route"] == "logistic with 10 labels per class"
    assert "m reaches it with logistic with 10 labels per class: 85.0 %" in result.paragraph
    assert "81.0–89.0" in result.paragraph
    by_route = dict(zip(result.routes["route"], result.routes["verdict"], strict=True))
    assert by_route["knn with 5 labels per class"] == MAY_REACH
    assert by_route["knn with 1 label per class"] == FALLS_SHORT
    # Probe before fine-tune at the same label count.
    order = list(result.routes["protocol"])
    assert order.index("logistic") < order.index("finetune-lora")


def test_a_mean_above_the_target_is_not_called_reached() -> None:
    summary = _summary([("m", "knn", "5", 0.82, 0.70, 0.94)])
    result = answer(summary, target=0.8, metric="accuracy")
    assert result.verdicts.iloc[0]["verdict"] == MAY_REACH
    assert " reaches it" not in result.paragraph
    assert "not yet shown" in result.paragraph


def test_power_law_recovers_labels_needed_by_hand() -> None:
    # error = 0.5 · n^-0.5 → 1 - target = 0.1 at n = (0.1 / 0.5)^-2 = 25.
    shots = np.array([1.0, 5.0, 10.0])
    a, b = fit_power_law(shots, 0.5 * shots**-0.5)
    assert a == pytest.approx(0.5) and b == pytest.approx(0.5)
    assert labels_for(a, b, 0.1) == pytest.approx(25.0)
    assert labels_for(0.5, -0.1, 0.1) == math.inf  # a curve that worsens never gets there
    curve = pd.DataFrame({"shots": ["1", "5", "10"], "mean": 1 - 0.5 * shots**-0.5})
    curve["low"] = curve["high"] = curve["mean"]
    point, low, high = extrapolate(curve, target=0.9)  # type: ignore[misc]
    assert point == pytest.approx(25.0) and low == pytest.approx(25.0)
    assert high == pytest.approx(25.0)
    wide = curve.assign(low=curve["mean"] - 0.05, high=curve["mean"] + 0.05)
    _, low_wide, high_wide = extrapolate(wide, target=0.9)  # type: ignore[misc]
    assert low_wide < 25.0 < high_wide  # uncertainty in the points widens the range


def test_falling_short_gives_the_gap_and_a_labelled_extrapolation() -> None:
    shots = np.array([1, 5, 10])
    means = 1 - 0.5 * shots**-0.5  # 50.0, 77.6, 84.2; target 90 needs 25 shots
    summary = _summary(
        [("m", "knn", str(s), v, v - 0.01, v + 0.01) for s, v in zip(shots, means, strict=True)]
    )
    result = answer(summary, target=0.9, metric="balanced_accuracy")
    row = result.verdicts.iloc[0]
    assert row["verdict"] == FALLS_SHORT
    assert row["gap"] == pytest.approx(0.9 - means[-1])
    found = result.extrapolations[("d", "m")]
    assert found is not None and math.ceil(found.labels_needed) == 25
    assert "5.8 points below the target" in result.paragraph
    assert "about 25 labels per class" in result.paragraph
    assert "estimate, not a result" in result.paragraph


def test_no_estimate_far_beyond_the_measured_shots() -> None:
    shots = np.array([1, 5, 10])
    means = 1 - 0.5 * shots**-0.1  # flat curve: 99 % needs ~10^17 shots
    summary = _summary(
        [("m", "knn", str(s), v, v - 0.01, v + 0.01) for s, v in zip(shots, means, strict=True)]
    )
    result = answer(summary, target=0.99, metric="balanced_accuracy")
    assert "no label count is estimated" in result.paragraph
    assert "about" not in result.paragraph


def test_bad_target_is_one_line_error() -> None:
    with pytest.raises(FeatkitError, match="--target"):
        answer(_summary([("m", "knn", "1", 0.5, 0.4, 0.6)]), target=80, metric="accuracy")


def test_data_summary_counts_the_probes_split_on_real_digits() -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(digits.target == c))[: 60 - 5 * c] for c in range(10)]
    )
    labels = digits.target[keep]
    paths = [f"img_{i}.png" for i in keep]
    names = [str(c) for c in range(10)]
    summary = summarize_data("digits", paths, labels, names, failed=2)
    table = summary.per_class.set_index("class")
    counts = np.bincount(labels, minlength=10)
    # The default 20 % test fraction, rounded per class, at least one test image.
    for c in range(10):
        assert table.loc[str(c), "train"] + table.loc[str(c), "test"] == counts[c]
        assert table.loc[str(c), "test"] == min(max(round(0.2 * counts[c]), 1), counts[c] - 1)
    assert summary.imbalance_ratio == pytest.approx(table["train"].max() / table["train"].min())
    name, smallest = summary.smallest_test_class
    assert smallest == table["test"].min() and table.loc[name, "test"] == smallest
    small = int((table["test"] < MIN_TEST_IMAGES).sum())
    assert small > 0  # 15 images of class 9 → 3 test images
    assert any(f"{small} classes have fewer than {MIN_TEST_IMAGES}" in w for w in summary.lines())
    assert "2 failed to decode" in summary.lines()[0]


def test_shots_panels_one_panel_per_model_shared_axis_best_finetune_starred(tmp_path) -> None:
    from featkit.viz.shots_panels import plot_shots_panels

    rows = []
    for model in ("a", "b", "c", "d"):
        for method in ("knn", "logistic"):
            for shots, mean in (("1", 0.4), ("5", 0.6), ("10", 0.7), ("all", 0.8)):
                rows.append((model, method, method, shots, mean))
    rows += [("a", "finetune-lora", "finetune-lora", "10", 0.85)]
    rows += [("a", "finetune-linear", "finetune-linear", "10", 0.75)]
    summary = pd.DataFrame(rows, columns=["model", "method", "protocol", "shots", "mean"])
    summary["low"], summary["high"] = summary["mean"] - 0.05, summary["mean"] + 0.05
    path = tmp_path / "shots.png"
    fig = plot_shots_panels(summary, "balanced_accuracy", path, title="digits")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c", "d"]
    assert len({ax.get_ylim() for ax in panels}) == 1  # one y axis for every model
    stars = [line for ax in panels for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_ydata()[0] == pytest.approx(85.0)
    assert stars[0].axes.get_title() == "a"
    # x positions follow the reading order 1, 5, 10, all.
    labels = [t.get_text() for t in panels[0].get_xticklabels()]
    assert labels == ["1", "5", "10", "all"]


def test_routes_are_named_as_the_table_names_methods() -> None:
    summary = _summary([("m", "knn", "5", 0.9, 0.85, 0.95)])
    summary["params"] = "index=auto;k=20;temperature=0.07"
    summary["method"] = "knn"
    result = answer(summary, target=0.8, metric="accuracy")
    assert "m reaches it with knn with 5 labels per class" in result.paragraph
    assert "index=auto" not in result.paragraph
