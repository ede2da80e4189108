"""The contract every registered protocol keeps (built-ins and plugins alike)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from featkit.errors import FeatkitError
from featkit.metrics import clustering_metrics
from featkit.protocols import Protocol, create_protocol, list_protocols, register_protocol, registry

# Small, quick settings: the contract is about behaviour, not about the defaults' cost.
QUICK: dict[str, dict[str, Any]] = {
    "logistic": {"n_c": 5},
    "balanced": {"base_params": {"n_c": 5}},
    "knn": {"k": 5},
}


def _make(name: str) -> Protocol:
    return create_protocol(name, **QUICK.get(name, {}))


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 12)) * 4
    y = np.repeat(np.arange(3), [30, 20, 14])
    X = (centres[y] + rng.normal(size=(y.size, 12)) + 5).astype(np.float32)
    test = np.arange(y.size) % 4 == 0
    return X[~test], y[~test], X[test], y[test]


@pytest.mark.parametrize("name", list_protocols())
def test_fit_predict_on_blobs(name: str, blobs: tuple[np.ndarray, ...]) -> None:
    X, y, X_test, y_test = blobs
    model = _make(name)
    assert model.fit(X, y) is model
    predicted = model.predict(X_test)
    assert predicted.shape == y_test.shape and predicted.dtype == np.int64
    if model.supervised:
        assert set(model.classes_.tolist()) == {0, 1, 2}
        assert np.mean(predicted == y_test) > 0.9
        if hasattr(model, "predict_proba"):
            proba = model.predict_proba(X_test)
            assert proba.shape == (y_test.size, 3)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    else:
        assert clustering_metrics(y_test, predicted)["accuracy"] > 0.9


@pytest.mark.parametrize("name", list_protocols())
def test_same_settings_same_result(name: str, blobs: tuple[np.ndarray, ...]) -> None:
    X, y, X_test, _ = blobs
    first = _make(name).fit(X, y).predict(X_test)
    second = _make(name).fit(X, y).predict(X_test)
    assert np.array_equal(first, second)


@pytest.mark.parametrize("name", list_protocols())
def test_predict_before_fit_is_an_error(name: str, blobs: tuple[np.ndarray, ...]) -> None:
    with pytest.raises(FeatkitError, match="fit"):
        _make(name).predict(blobs[2])


@pytest.mark.parametrize("name", list_protocols())
def test_one_dimensional_and_nan_input_are_errors(name: str, blobs: tuple[np.ndarray, ...]) -> None:
    X, y, X_test, _ = blobs
    with pytest.raises(FeatkitError, match="expected a 2-D array"):
        _make(name).fit(X[:, 0], y)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(FeatkitError, match="finite"):
        _make(name).fit(bad, y)
    model = _make(name).fit(X, y)
    with pytest.raises(FeatkitError, match="expected a 2-D array"):
        model.predict(X_test[0])
    with pytest.raises(FeatkitError, match="columns"):
        model.predict(X_test[:, :5])


@pytest.mark.parametrize("name", [n for n in list_protocols() if create_protocol(n).supervised])
def test_supervised_protocols_need_two_classes_and_matching_labels(
    name: str, blobs: tuple[np.ndarray, ...]
) -> None:
    X, y, _, _ = blobs
    with pytest.raises(FeatkitError, match="at least 2 classes"):
        _make(name).fit(X, np.zeros(len(X), dtype=np.int64))
    with pytest.raises(FeatkitError, match="labels"):
        _make(name).fit(X, y[:-1])


@pytest.mark.parametrize("name", list_protocols())
def test_pickle_round_trip(name: str, blobs: tuple[np.ndarray, ...]) -> None:
    X, y, X_test, _ = blobs
    model = _make(name).fit(X, y)
    copy = pickle.loads(pickle.dumps(model))
    assert np.array_equal(copy.predict(X_test), model.predict(X_test))


@pytest.mark.parametrize("name", list_protocols())
def test_params_round_trip(name: str) -> None:
    model = _make(name)
    again = create_protocol(name, **model.get_params())
    assert again.get_params() == model.get_params()
    assert name in repr(model) or type(model).__name__ in repr(model)


def test_unknown_names_and_settings_suggest_close_ones() -> None:
    with pytest.raises(FeatkitError, match=r"got 'knnn' \(did you mean knn\?\)"):
        create_protocol("knnn")
    with pytest.raises(FeatkitError, match=r"got kk \(did you mean k\?\)"):
        create_protocol("knn", kk=3)
    assert list_protocols("k*") == ["kmeans", "knn"]


class _Plugin(Protocol):
    """A third-party protocol: always predicts the most frequent training class."""

    def __init__(self, fallback: int = 0) -> None:
        self.fallback = fallback

    def fit(self, X: Any, y: Any = None) -> _Plugin:
        _, labels, _ = self._check_Xy(X, y)
        self.classes_ = np.unique(labels)
        self.majority_ = int(np.bincount(labels).argmax())
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.full(len(self._check_X(X)), self.majority_, dtype=np.int64)


def test_entry_point_plugins_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeEntryPoint:
        name = "majority"

        def load(self) -> type[Protocol]:
            return _Plugin

    class Broken(FakeEntryPoint):
        name = "broken"

        def load(self) -> type[Protocol]:
            raise ImportError("missing dependency")

    def entry_points(group: str) -> list[FakeEntryPoint]:
        assert group == "featkit.protocols"
        return [FakeEntryPoint(), Broken()]

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "majority" in list_protocols() and "broken" not in list_protocols()
    model = create_protocol("majority").fit(np.ones((4, 2)), [1, 1, 1, 0])
    assert model.predict(np.ones((2, 2))).tolist() == [1, 1]


def test_register_protocol_rejects_a_second_owner_of_a_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        register_protocol("knn")(_Plugin)
