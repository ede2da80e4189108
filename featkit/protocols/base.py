"""What every protocol is: a small scikit-learn-shaped estimator on feature arrays.

``__init__`` only stores keyword settings; ``fit(X, y) -> self`` learns state whose
names end in ``_``; ``predict(X)`` returns labels (cluster ids for label-free
protocols). ``predict_proba``/``decision_function`` exist where they mean something.
Protocols never read stores, print or touch ``torch.distributed``: arrays in, labels
out. Input checks raise :class:`~featkit.errors.FeatkitError` with precise messages.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError


class Protocol:
    """Base class: parameter handling and input validation shared by all protocols."""

    name: ClassVar[str] = ""  # the registry name (the entry point's), set on registration
    supervised: ClassVar[bool] = True  # False: fit ignores y, evaluated with shots = 0
    supports_sample_weight: ClassVar[bool] = False  # fit(X, y, sample_weight=…) is honoured
    # What the probe sweep, the CLI and the report read instead of naming protocols:
    default: ClassVar[bool] = False  # run by `featkit probe` when --protocols is not given
    display_order: ClassVar[int] = 1000  # position in tables and listings (then by name)
    # Label-free protocols: the setting the evaluation sets to the episode number (left
    # out of the recorded params), and the one it sets to the number of test classes
    # when left at None.
    seed_param: ClassVar[str | None] = None
    n_classes_param: ClassVar[str | None] = None

    classes_: NDArray[np.int64]

    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor settings, as sklearn's ``get_params(deep=False)``."""
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({settings})"

    def reuses(self, y: ArrayLike) -> tuple[str, dict[str, Any]] | None:
        """``(name, settings)`` of a protocol whose fit this one would repeat on labels
        ``y`` — it then predicts exactly what :meth:`adopt` makes of that fitted model —
        or None (the default). A sweep that has already fitted that protocol on the same
        training images passes it to :meth:`adopt` instead of fitting again."""
        return None

    def adopt(self, fitted: Protocol, X: ArrayLike, y: ArrayLike) -> Protocol:
        """This protocol fitted on ``(X, y)`` from ``fitted``, the model :meth:`reuses` named."""
        raise NotImplementedError(f"{type(self).__name__} reuses no other protocol's fit")

    # -- checks ------------------------------------------------------------------------

    def _check_X(self, X: ArrayLike, *, fitting: bool = False) -> NDArray[np.float32]:
        array = np.asarray(X)
        if array.ndim != 2:
            raise FeatkitError(
                f"{self.name} features: expected a 2-D array [n_samples, n_features], "
                f"got {array.ndim}-D"
            )
        if array.shape[0] == 0:
            raise FeatkitError(f"{self.name} features: expected at least one row, got 0")
        if not np.issubdtype(array.dtype, np.number):
            raise FeatkitError(f"{self.name} features: expected numbers, got {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            bad = int((~np.isfinite(array)).any(axis=1).sum())
            raise FeatkitError(
                f"{self.name} features: expected finite values, got NaN/inf in {bad} row(s)"
            )
        if not fitting:
            self._check_fitted()
            expected = getattr(self, "n_features_in_", array.shape[1])
            if array.shape[1] != expected:
                raise FeatkitError(
                    f"{self.name} features: expected {expected} columns as in fit, "
                    f"got {array.shape[1]}"
                )
        return array

    def _check_Xy(
        self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float64] | None]:
        features = self._check_X(X, fitting=True)
        labels = np.asarray(y)
        if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise FeatkitError(
                f"{self.name} labels: expected a 1-D array of {features.shape[0]} labels, "
                f"got shape {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise FeatkitError(f"{self.name} labels: expected integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
        if np.unique(labels).size < 2:
            raise FeatkitError(
                f"{self.name} labels: expected at least 2 classes, got {np.unique(labels).size}"
            )
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != labels.shape or np.any(weights < 0):
                raise FeatkitError(
                    f"{self.name} sample_weight: expected {labels.size} weights ≥ 0, "
                    f"got shape {weights.shape}"
                )
        self.n_features_in_ = features.shape[1]
        return features, labels, weights

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise FeatkitError(f"{self.name}: expected fit() before predict, got an unfitted one")

    # -- interface ---------------------------------------------------------------------

    @property
    def fitted_params_(self) -> dict[str, Any]:
        """Settings chosen while fitting (a selected C, an index kind), for the result record.

        Empty for protocols that choose nothing; keys never repeat a constructor setting.
        """
        return {}

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Protocol:
        raise NotImplementedError

    def fit_many(self, sets: Sequence[tuple[ArrayLike, ArrayLike]]) -> Sequence[Protocol]:
        """This protocol's settings fitted on each ``(X, y)`` alone, in order.

        A sweep fits all episodes of a shots setting through this one call. The default
        fits fresh copies one after the other; a protocol that solves many small sets
        faster together (``logistic``) overrides it, and must return what :meth:`fit`
        returns on each set.
        """
        return [type(self)(**self.get_params()).fit(X, y) for X, y in sets]

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        raise NotImplementedError


def l2_normalize(X: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows scaled to unit L2 norm, ``[N, D]`` (an all-zero row stays zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def softmax(logits: NDArray[np.floating]) -> NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# From this many feature values on, BLAS/OpenMP may use all their threads.
THREADED_ABOVE = 1_000_000


def threads_for(n_values: int) -> AbstractContextManager[Any]:
    """One BLAS/OpenMP thread for small problems, the libraries' default for large ones.

    Few-shot fits are thousands of tiny products; extra threads only add
    synchronisation, which costs 10-400x on a busy machine (measured: a 64-point faiss
    k-means takes 1.9 s with 2 spinning OpenMP threads under load, 5 ms with one).
    """
    if n_values >= THREADED_ABOVE:
        return nullcontext()
    return _loaded_thread_pools().limit(limits=1)


_CONTROLLERS: dict[int, Any] = {}


def _loaded_thread_pools() -> Any:
    """threadpoolctl's controller of the loaded BLAS/OpenMP libraries.

    Finding them scans every loaded shared library (3 ms, and a sweep limits threads a
    hundred times), so the controller is kept while no module has been imported since:
    a new library (faiss's OpenMP) comes with an import.
    """
    from threadpoolctl import ThreadpoolController

    modules = len(sys.modules)
    if modules not in _CONTROLLERS:
        _CONTROLLERS.clear()
        _CONTROLLERS[modules] = ThreadpoolController()
    return _CONTROLLERS[modules]
