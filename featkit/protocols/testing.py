"""The conformance suite: what every protocol, built-in or plugin, promises featkit.

In the spirit of scikit-learn's ``check_estimator``: each check is a named function
that fits the protocol on small separable blobs and raises :class:`ProtocolCheckError`
(an ``AssertionError``) naming the protocol and the broken promise::

    from featkit.protocols.testing import check_protocol
    check_protocol("knn")                          # a registered name, every check
    check_protocol(MyProtocol, params={"k": 5})    # a class, with quick settings

With pytest, one test per check::

    @pytest.mark.parametrize("check", CHECKS)
    def test_conformance(check):
        check_protocol(MyProtocol, checks=[check])

The promises are those of :mod:`featkit.protocols.base`: ``__init__`` only stores
settings; ``fit`` returns self; ``predict`` gives int64 labels from ``classes_`` (cluster
ids for label-free protocols); ``predict_proba``/``decision_function``, where they
exist, agree with ``predict``; bad input is a :class:`~featkit.errors.FeatkitError`;
equal settings give equal results; fitted protocols pickle; ``fitted_params_`` goes into
a JSON result record; ``fit_many`` gives what ``fit`` gives on each set.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol
from featkit.protocols.params import parameters
from featkit.protocols.registry import get_protocol_class

# Least accuracy on the separable blobs (clusters: after one-to-one matching).
MIN_ACCURACY = 0.9


class ProtocolCheckError(AssertionError):
    """A protocol broke a promise of the contract: ``protocol NAME, check CHECK: what``."""


@dataclass
class Subject:
    """The protocol under test, its settings, and the blobs every check fits on."""

    cls: type[Protocol]
    params: dict[str, Any]
    X: NDArray[np.float32] = field(init=False)
    y: NDArray[np.int64] = field(init=False)
    X_test: NDArray[np.float32] = field(init=False)
    y_test: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        # Three well-separated, unequal classes away from the origin (a protocol that
        # forgets to centre or normalise still sees them; one that mixes up classes fails).
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(3, 12)) * 4
        labels = np.repeat(np.arange(3), [30, 20, 14])
        features = (centres[labels] + rng.normal(size=(labels.size, 12)) + 5).astype(np.float32)
        test = np.arange(labels.size) % 4 == 0
        self.X, self.y = features[~test], labels[~test]
        self.X_test, self.y_test = features[test], labels[test]

    @property
    def label(self) -> str:
        return self.cls.name or self.cls.__name__

    def make(self, **extra: Any) -> Protocol:
        settings = {**self.params, **extra}
        if not self.cls.supervised and self.cls.n_classes_param:
            settings.setdefault(self.cls.n_classes_param, 3)
        return self.cls(**settings)

    def fit(self, X: Any = None, y: Any = None, **extra: Any) -> Protocol:
        X = self.X if X is None else X
        if not self.cls.supervised:
            return self.make(**extra).fit(X)
        return self.make(**extra).fit(X, self.y if y is None else y)


def _raises(call: Callable[[], Any], needle: str) -> str | None:
    """None when ``call`` raises a FeatkitError mentioning ``needle``, else what happened."""
    try:
        call()
    except FeatkitError as error:
        return None if needle in str(error) else f"error {str(error)!r} lacks {needle!r}"
    except Exception as error:
        return f"raised {type(error).__name__} ({error}) instead of a FeatkitError"
    return "raised nothing"


def _ensure(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_declarations(s: Subject) -> None:
    """Class attributes are of the declared kinds and name real constructor settings."""
    cls = s.cls
    _ensure(isinstance(cls.supervised, bool), "supervised: expected a bool")
    _ensure(isinstance(cls.default, bool), "default: expected a bool")
    _ensure(isinstance(cls.display_order, int), "display_order: expected an int")
    names = cls.param_names()
    for attribute in ("seed_param", "n_classes_param"):
        value = getattr(cls, attribute)
        _ensure(value is None or value in names, f"{attribute}: {value!r} is not a setting")
    _ensure([p.name for p in parameters(cls)] == names, "parameters(): expected every setting")


def check_params_round_trip(s: Subject) -> None:
    """``__init__`` only stores settings: ``cls(**get_params())`` has the same ones."""
    model = s.make()
    params = model.get_params()
    _ensure(list(params) == model.param_names(), "get_params: expected every setting")
    _ensure(s.cls(**params).get_params() == params, "cls(**get_params()) changed settings")
    _ensure(type(model).__name__ in repr(model), "repr: expected the class name")


def check_fit_predict(s: Subject) -> None:
    """``fit`` returns self; ``predict`` gives one int64 label per row from ``classes_``."""
    model = s.make()
    fitted = model.fit(s.X, s.y) if s.cls.supervised else model.fit(s.X)
    _ensure(fitted is model, "fit: expected to return self")
    predicted = model.predict(s.X_test)
    _ensure(predicted.shape == s.y_test.shape, f"predict: shape {predicted.shape}")
    _ensure(predicted.dtype == np.int64, f"predict: dtype {predicted.dtype}, expected int64")
    if s.cls.supervised:
        _ensure(model.classes_.tolist() == [0, 1, 2], f"classes_: {model.classes_}")
    _ensure(set(predicted.tolist()) <= set(model.classes_.tolist()), "predict: not in classes_")


def check_learns_blobs(s: Subject) -> None:
    """Separable blobs are learnt (clusters: after matching them to the classes)."""
    from featkit.clustering import clustering_metrics

    predicted = s.fit().predict(s.X_test)
    if s.cls.supervised:
        accuracy = float(np.mean(predicted == s.y_test))
    else:
        accuracy = clustering_metrics(s.y_test, predicted)["accuracy"]
    _ensure(accuracy >= MIN_ACCURACY, f"accuracy {accuracy:.2f} on separable blobs")


def check_scores_agree(s: Subject) -> None:
    """``predict_proba`` rows are distributions over ``classes_``; its argmax and
    ``decision_function``'s are ``predict``."""
    model = s.fit()
    predicted = model.predict(s.X_test)
    for method in ("predict_proba", "decision_function"):
        if not hasattr(model, method):
            continue
        scores = np.asarray(getattr(model, method)(s.X_test))
        expected = (s.y_test.size, model.classes_.size)
        _ensure(scores.shape == expected, f"{method}: shape {scores.shape}, expected {expected}")
        argmax = model.classes_[np.argmax(scores, axis=1)]
        _ensure(np.array_equal(argmax, predicted), f"{method}: argmax disagrees with predict")
        if method == "predict_proba":
            _ensure(bool(np.all(scores >= 0)), "predict_proba: negative probabilities")
            _ensure(np.allclose(scores.sum(axis=1), 1.0, atol=1e-5), "predict_proba: sum ≠ 1")


def check_any_label_values(s: Subject) -> None:
    """Labels outside 0 … K−1 come back as given, or are refused with a FeatkitError."""
    if not s.cls.supervised:
        return
    values = np.array([3, 7, 42])
    try:
        model = s.fit(y=values[s.y])
    except FeatkitError:
        return
    _ensure(model.classes_.tolist() == values.tolist(), f"classes_: {model.classes_}")
    predicted = model.predict(s.X_test)
    _ensure(set(predicted.tolist()) <= set(values.tolist()), "predict: labels not as given")
    accuracy = float(np.mean(predicted == values[s.y_test]))
    _ensure(accuracy >= MIN_ACCURACY, f"accuracy {accuracy:.2f} with labels 3, 7, 42")


def check_input_dtypes(s: Subject) -> None:
    """float64 features and int32 labels give what float32 and int64 give."""
    reference = s.fit().predict(s.X_test)
    model = s.fit(X=s.X.astype(np.float64), y=s.y.astype(np.int32))
    again = model.predict(s.X_test.astype(np.float64))
    _ensure(np.array_equal(again, reference), "float64/int32 input changed the predictions")


def check_deterministic(s: Subject) -> None:
    """Two protocols with equal settings fitted on equal data predict the same."""
    first = s.fit().predict(s.X_test)
    _ensure(np.array_equal(first, s.fit().predict(s.X_test)), "equal settings, other results")


def check_refuses_bad_features(s: Subject) -> None:
    """1-D, NaN or infinite features, predict before fit and a wrong column count are
    FeatkitErrors that say what was expected."""
    nan, inf = s.X.copy(), s.X.copy()
    nan[3, 2], inf[5, 1] = np.nan, np.inf
    fitted = s.fit()
    problems = {
        "1-D features": _raises(lambda: s.fit(X=s.X[:, 0]), "2-D"),
        "NaN features": _raises(lambda: s.fit(X=nan), "finite"),
        "infinite features": _raises(lambda: s.fit(X=inf), "finite"),
        "predict before fit": _raises(lambda: s.make().predict(s.X_test), "fit"),
        "1-D predict": _raises(lambda: fitted.predict(s.X_test[0]), "2-D"),
        "fewer columns": _raises(lambda: fitted.predict(s.X_test[:, :5]), "columns"),
    }
    broken = [f"{case}: {problem}" for case, problem in problems.items() if problem]
    _ensure(not broken, "; ".join(broken))


def check_refuses_bad_labels(s: Subject) -> None:
    """Supervised: no labels, one class, a wrong count or float labels are FeatkitErrors."""
    if not s.cls.supervised:
        return
    problems = {
        "no labels": _raises(lambda: s.make().fit(s.X, None), "labels"),
        "one class": _raises(lambda: s.fit(y=np.zeros(len(s.y), np.int64)), "2 classes"),
        "one label short": _raises(lambda: s.fit(y=s.y[:-1]), "labels"),
        "float labels": _raises(lambda: s.fit(y=s.y + 0.5), "integers"),
    }
    broken = [f"{case}: {problem}" for case, problem in problems.items() if problem]
    _ensure(not broken, "; ".join(broken))


def check_label_free_without_labels(s: Subject) -> None:
    """Label-free: ``fit(X)`` needs no labels, and the evaluation's per-episode seed
    changes nothing that equal seeds do not repeat."""
    if s.cls.supervised:
        return
    clusters = s.make().fit(s.X).predict(s.X_test)
    _ensure(clusters.min() >= 0, "predict: negative cluster ids")
    if s.cls.seed_param:
        seeded = {s.cls.seed_param: 7}
        first = s.make(**seeded).fit(s.X).predict(s.X_test)
        _ensure(np.array_equal(first, s.make(**seeded).fit(s.X).predict(s.X_test)), "seed")


def check_fitted_params(s: Subject) -> None:
    """``fitted_params_`` is a JSON-serialisable dict that repeats no constructor setting."""
    fitted = s.fit().fitted_params_
    _ensure(isinstance(fitted, dict), f"fitted_params_: expected a dict, got {type(fitted)}")
    try:
        json.dumps(fitted, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise AssertionError(f"fitted_params_: not JSON-serialisable ({error})") from None
    repeated = sorted(set(fitted) & set(s.cls.param_names()))
    _ensure(not repeated, f"fitted_params_: repeats settings {repeated}")


def check_pickles(s: Subject) -> None:
    """A fitted protocol survives pickling (process pools, caches) with equal predictions."""
    model = s.fit()
    copy = pickle.loads(pickle.dumps(model))
    _ensure(np.array_equal(copy.predict(s.X_test), model.predict(s.X_test)), "pickle")


def check_sample_weight(s: Subject) -> None:
    """``supports_sample_weight``: fit takes ``sample_weight``; equal weights change nothing."""
    if not s.cls.supports_sample_weight:
        return
    reference = s.fit().predict(s.X_test)
    weighted = s.make().fit(s.X, s.y, sample_weight=np.full(s.y.size, 2.0))  # type: ignore[call-arg]
    _ensure(np.array_equal(weighted.predict(s.X_test), reference), "equal weights changed it")


def check_fit_many(s: Subject) -> None:
    """``fit_many`` on several sets gives, in order, what ``fit`` gives on each alone."""
    if not s.cls.supervised:
        return
    subsets = [np.arange(s.y.size) % 3 != r for r in range(3)]  # three overlapping sets
    sets = [(s.X[rows], s.y[rows]) for rows in subsets]
    together = s.make().fit_many(sets)
    _ensure(len(together) == len(sets), f"{len(sets)} sets, {len(together)} models")
    for (X, y), model in zip(sets, together, strict=True):
        alone = s.make().fit(X, y).predict(s.X_test)
        _ensure(np.array_equal(model.predict(s.X_test), alone), "fit_many differs from fit")


CHECKS: dict[str, Callable[[Subject], None]] = {
    check.__name__.removeprefix("check_"): check
    for check in (
        check_declarations,
        check_params_round_trip,
        check_fit_predict,
        check_learns_blobs,
        check_scores_agree,
        check_any_label_values,
        check_input_dtypes,
        check_deterministic,
        check_refuses_bad_features,
        check_refuses_bad_labels,
        check_label_free_without_labels,
        check_fitted_params,
        check_pickles,
        check_sample_weight,
        check_fit_many,
    )
}


def check_protocol(
    protocol: str | type[Protocol],
    params: Mapping[str, Any] | None = None,
    *,
    checks: Iterable[str] | None = None,
) -> list[str]:
    """Run ``checks`` (default: all of :data:`CHECKS`) on a registered name or a class.

    Returns the names of the checks run; the first broken one raises
    :class:`ProtocolCheckError`.
    """
    cls = get_protocol_class(protocol) if isinstance(protocol, str) else protocol
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise TypeError(f"check_protocol: expected a protocol name or class, got {cls!r}")
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(
            f"check_protocol: expected checks among {', '.join(CHECKS)}, got {unknown}"
        )
    subject = Subject(cls, dict(params or {}))
    for name in names:
        try:
            CHECKS[name](subject)
        except (AssertionError, FeatkitError) as error:
            raise ProtocolCheckError(f"protocol {subject.label}, check {name}: {error}") from error
    return names
