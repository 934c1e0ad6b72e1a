"""Probability-averaging ensemble of several methods, optionally each on its own slice of the feature columns."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier, resolve_estimator
from classify.methods.features import align_proba, checked_labeled_mask
from classify.methods.registry import register_method
from store.validation import UserError

log = logging.getLogger(__name__)


@register_method("ensemble")
class EnsembleClassifier(FewShotClassifier):
    """Weighted average of the members' ``predict_proba``, with class sets aligned into their union.

    Parameters
    ----------
    methods : list of estimators or registered method names
        The members; each is cloned and fitted on ``(X[:, slice], y)`` (unlabeled rows ``y = -1`` are passed
        through, each member treats them its own way).
    weights : list of float, default=None
        Non-negative member weights (normalised to sum to one); None weighs members equally.
    feature_slices : list of (start, stop), default=None
        Column range of ``X`` for each member, e.g. to ensemble one method over several backbones whose
        features are concatenated in X. None gives every member all columns.

    Attributes
    ----------
    estimators_ : list of fitted estimators
    weights_ : ndarray of shape (n_methods,)
        Normalised weights.
    classes_ : ndarray of shape (n_classes,)
        Union of the members' classes; a member lacking a class gives it probability 0.
    n_features_in_ : int
    """

    def __init__(self, methods=None, weights=None, feature_slices=None):
        self.methods = methods
        self.weights = weights
        self.feature_slices = feature_slices

    def _slices(self, n_features: int) -> list[slice]:
        n = len(self.methods)
        if self.feature_slices is None:
            return [slice(None)] * n
        if len(self.feature_slices) != n:
            raise UserError(f"feature_slices has {len(self.feature_slices)} ranges for {n} methods; give one "
                             "(start, stop) per method")
        out = []
        for rng in self.feature_slices:
            try:
                start, stop = (int(v) for v in rng)
            except (TypeError, ValueError):
                raise UserError(f"feature_slices entries must be (start, stop) pairs, got {rng!r}") from None
            if not 0 <= start < stop <= n_features:
                raise UserError(f"feature slice {rng!r} is not a non-empty range within the {n_features} "
                                 "feature columns")
            out.append(slice(start, stop))
        return out

    def fit(self, X, y):
        """Fit a clone of every member on its feature slice."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        checked_labeled_mask(y)
        if not self.methods:
            raise UserError("ensemble needs methods: a list of estimators or registered method names, "
                             "e.g. methods=['linear', 'knn']")
        n = len(self.methods)
        if self.weights is None:
            w = np.full(n, 1.0 / n)
        else:
            w = np.asarray(self.weights, dtype=np.float64).ravel()
            if w.size != n or np.any(w < 0) or not w.sum() > 0 or not np.all(np.isfinite(w)):
                raise UserError(f"weights must be {n} non-negative numbers with a positive sum, got {self.weights!r}")
            w = w / w.sum()
        slices = self._slices(X.shape[1])
        self.estimators_ = [resolve_estimator(m).fit(X[:, sl], y) for m, sl in zip(self.methods, slices)]
        self.weights_ = w
        self.classes_ = np.unique(np.concatenate([np.asarray(e.classes_) for e in self.estimators_]))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Weighted mean of the members' probabilities, shape (n, len(classes_))."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        P = np.zeros((X.shape[0], len(self.classes_)))  # (n, C)
        for est, sl, w in zip(self.estimators_, self._slices(X.shape[1]), self.weights_):
            P += w * align_proba(est.predict_proba(X[:, sl]), est.classes_, self.classes_)
        return P
