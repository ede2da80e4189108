"""A protocol that would repeat another's fit on a draw reuses it, and its rows do not change.

``balanced`` on a few-shot episode (every class with as many images) has equal class
weights and an adjustment equal for every class, so it predicts what its base predicts;
the probe sweep then adopts the base's fit of the same draw instead of fitting again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featkit import create_protocol
from featkit.evaluation.probe import ProbeSettings, ProtocolSpec, evaluate_arrays
from featkit.evaluation.shots import parse_shots
from tests.test_evaluate import toy_data

COLUMNS = ["shots", "episode", "metric", "value", "test_se", "correct"]


def test_balanced_reuses_its_base_only_when_every_class_has_as_many_images() -> None:
    balanced = create_protocol("balanced", base="logistic", base_params={"c": 0.5})
    assert balanced.reuses(np.array([0, 0, 1, 1, 2, 2])) == ("logistic", {"c": 0.5})
    assert balanced.reuses(np.array([0, 0, 0, 1, 1, 2])) is None
    assert create_protocol("logistic").reuses(np.array([0, 1])) is None


def test_adopted_balanced_predicts_what_a_fitted_one_predicts() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 6)
    X = (rng.normal(size=(3, 5))[y] + rng.normal(size=(18, 5))).astype(np.float32)
    queries = rng.normal(size=(40, 5)).astype(np.float32)
    base = create_protocol("logistic").fit(X, y)
    adopted = create_protocol("balanced").adopt(base, X, y)
    fitted = create_protocol("balanced").fit(X, y)
    np.testing.assert_array_equal(adopted.predict(queries), fitted.predict(queries))
    np.testing.assert_allclose(
        adopted.predict_proba(queries), fitted.predict_proba(queries), atol=1e-6
    )
    assert adopted.fitted_params_["C"] == fitted.fitted_params_["C"]


def test_sweep_rows_are_the_same_with_and_without_the_reused_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from featkit_protocols.logistic import Logistic

    fits = {"n": 0}  # training sets fitted, one by one or together
    real_fit, real_fit_many = Logistic.fit, Logistic.fit_many

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        fits["n"] += 1
        return real_fit(self, *args, **kwargs)

    def counted_many(self, sets):  # type: ignore[no-untyped-def]
        fits["n"] += len(sets)
        return real_fit_many(self, sets)

    monkeypatch.setattr(Logistic, "fit", counted)
    monkeypatch.setattr(Logistic, "fit_many", counted_many)
    data = toy_data()
    common = {"shots": parse_shots("2,5,all"), "episodes": 3, "bootstrap": 50}
    both = evaluate_arrays(
        data,
        ProbeSettings(
            protocols=(ProtocolSpec.of("logistic"), ProtocolSpec.of("balanced")), **common
        ),
    ).results
    fits_with_reuse, fits["n"] = fits["n"], 0
    alone = evaluate_arrays(
        data, ProbeSettings(protocols=(ProtocolSpec.of("balanced"),), **common)
    ).results
    # 6 few-shot draws reuse logistic's fit; "all" (imbalanced) fits balanced itself.
    assert fits_with_reuse == 7 + 1 and fits["n"] == 7
    mine = both[both["protocol"] == "balanced"][COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone[COLUMNS].reset_index(drop=True))
