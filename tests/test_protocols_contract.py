"""The contract every registered protocol keeps (built-ins and plugins alike): the
installed conformance suite, featkit.protocols.testing, over every registered protocol,
and the registry's single door (entry points)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np
import pytest

from featkit.errors import FeatkitError
from featkit.protocols import (
    Protocol,
    create_protocol,
    list_protocols,
    ordered_protocols,
    register_protocol,
    registry,
)
from featkit.protocols.testing import CHECKS, ProtocolCheckError, check_protocol

# Small, quick settings: the contract is about behaviour, not about the defaults' cost.
QUICK: dict[str, dict[str, Any]] = {
    "logistic": {"n_c": 5},
    "balanced": {"base_params": {"n_c": 5}},
    "knn": {"k": 5},
}


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", list_protocols())
def test_conformance(name: str, check: str) -> None:
    assert check_protocol(name, QUICK.get(name), checks=[check]) == [check]


def test_the_built_ins_arrive_through_entry_points_in_display_order() -> None:
    declared = {e.name: e.value for e in metadata.entry_points(group="featkit.protocols")}
    for name in ("knn", "logistic", "prototype", "balanced", "kmeans"):
        assert declared[name].startswith(f"featkit_protocols.{name}:")
    assert ordered_protocols(default_only=True) == [
        "knn",
        "logistic",
        "prototype",
        "balanced",
        "kmeans",
    ]


class _Forgetful(Protocol):
    """Breaks the contract: predicts before fit without an error, returns float labels."""

    def fit(self, X: Any, y: Any = None) -> _Forgetful:
        self._check_Xy(X, y)
        self.classes_ = np.unique(np.asarray(y))
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.zeros(len(X))


def test_the_suite_names_the_protocol_and_the_broken_promise() -> None:
    with pytest.raises(
        ProtocolCheckError, match=r"protocol _Forgetful, check fit_predict: .*int64"
    ):
        check_protocol(_Forgetful, checks=["fit_predict"])
    with pytest.raises(ProtocolCheckError, match="predict before fit: raised nothing"):
        check_protocol(_Forgetful, checks=["refuses_bad_features"])
    with pytest.raises(ValueError, match="expected checks among"):
        check_protocol(_Forgetful, checks=["no_such_check"])


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


class _Dist:
    def __init__(self, name: str) -> None:
        self.name = name


class _EntryPoint:
    """What importlib.metadata hands the registry: a name, a target, its distribution."""

    def __init__(self, name: str, target: Any, dist: str = "majority-plugin") -> None:
        self.name, self.value, self.dist = name, f"tests:{name}", _Dist(dist)
        self.target = target

    def load(self) -> Any:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def _only_entry_points(monkeypatch: pytest.MonkeyPatch, *fake: _EntryPoint) -> None:
    real = list(metadata.entry_points(group="featkit.protocols"))

    def entry_points(group: str) -> list[Any]:
        assert group == "featkit.protocols"
        return [*real, *fake]

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_SOURCES", {})


def test_entry_point_plugins_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    _only_entry_points(
        monkeypatch,
        _EntryPoint("majority", _Plugin),
        _EntryPoint("broken", ImportError("missing dependency")),
        _EntryPoint("not-a-class", len),
    )
    names = list_protocols()
    assert "majority" in names and "knn" in names
    assert "broken" not in names and "not-a-class" not in names
    model = create_protocol("majority").fit(np.ones((4, 2)), [1, 1, 1, 0])
    assert model.predict(np.ones((2, 2))).tolist() == [1, 1]
    # Not a default and no display order: run only when named, listed after the built-ins.
    assert "majority" not in ordered_protocols(default_only=True)
    assert ordered_protocols()[-1] == "majority"


def test_two_distributions_declaring_one_name_is_an_error_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _only_entry_points(monkeypatch, _EntryPoint("knn", _Plugin, dist="knn-deluxe"))
    with pytest.raises(FeatkitError, match=r"distribution featkit .*distribution knn-deluxe"):
        list_protocols()
    with pytest.raises(FeatkitError, match="expected one owner"):  # every call, not once
        create_protocol("prototype")


def test_register_protocol_rejects_a_second_owner_of_a_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    list_protocols()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="already registered by distribution featkit"):
        register_protocol("knn")(_Plugin)
