"""Cosine k-nearest-neighbour baseline (faiss exact inner-product search on L2-normalised features)."""
from __future__ import annotations

import logging

import faiss
import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier
from classify.methods.features import checked_labeled_mask, l2_normalize
from classify.methods.registry import register_method
from store.validation import Int, Options, Real, UserError

log = logging.getLogger(__name__)

_DISTANCE_EPS = 1e-6


@register_method("knn")
class KNNClassifier(FewShotClassifier):
    """Cosine kNN over the labeled rows; ``predict_proba`` is the weighted share of neighbour votes.

    Rows labeled ``-1`` are unlabeled and ignored.

    Parameters
    ----------
    k : int, default=10
        Neighbours per query (capped at the number of labeled rows).
    weights : "uniform", "distance" or float, default=0.07
        Vote weight of a neighbour with cosine similarity ``s``: 1 ("uniform"); ``1 / max(1 - s, 1e-6)``
        ("distance", cosine distance, so an exact duplicate dominates); or ``exp(s / T)`` for a float
        temperature ``T`` (softmax-weighted votes, as in DINO's kNN evaluation with T = 0.07). The default
        keeps the nearest neighbour decisive when k exceeds the labels per class (uniform votes over 10
        neighbours drawn from 1-shot labels are a tie between classes).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    X_fit_ : ndarray of shape (n_labeled, D), float32
        The normalised labeled rows (the index is rebuilt from these at predict time: building a flat
        index is a copy, far cheaper than the search, and keeps the estimator picklable).
    y_fit_ : ndarray of shape (n_labeled,)
        Column in ``classes_`` of each labeled row.
    n_features_in_ : int
    """

    _parameter_constraints = {"k": [Int(1)], "weights": [Options("uniform", "distance"), Real(0, low_open=True)]}

    def __init__(self, k=10, weights=0.07):
        self.k = k
        self.weights = weights

    def fit(self, X, y):
        """Store the normalised labeled rows."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        mask = checked_labeled_mask(y)
        if not mask.any():
            raise UserError("knn needs labeled rows (y = -1 marks unlabeled); every row is unlabeled")
        self.classes_, self.y_fit_ = np.unique(y[mask], return_inverse=True)
        self.X_fit_ = np.ascontiguousarray(l2_normalize(X[mask]), dtype=np.float32)  # (n_l, D)
        return self

    def _neighbours(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        Q = np.ascontiguousarray(l2_normalize(X), dtype=np.float32)  # (n, D)
        index = faiss.IndexFlatIP(self.X_fit_.shape[1])
        index.add(self.X_fit_)
        k = min(int(self.k), self.X_fit_.shape[0])
        sims, idx = index.search(Q, k)  # (n, k), (n, k)
        return sims.astype(np.float64), idx

    def _vote_weights(self, sims: np.ndarray) -> np.ndarray:
        if self.weights == "uniform":
            return np.ones_like(sims)
        if self.weights == "distance":
            return 1.0 / np.maximum(1.0 - sims, _DISTANCE_EPS)
        # softmax temperature: subtract the row max first for stability (the votes are normalised anyway)
        return np.exp((sims - sims.max(axis=1, keepdims=True)) / float(self.weights))

    def predict_proba(self, X) -> np.ndarray:
        """Weighted neighbour votes per class, normalised to sum to one; shape (n, n_classes)."""
        sims, idx = self._neighbours(X)
        w = self._vote_weights(sims)  # (n, k)
        n, n_classes = sims.shape[0], len(self.classes_)
        flat = np.arange(n)[:, None] * n_classes + self.y_fit_[idx]  # (n, k) cell of each vote in (n, C)
        votes = np.bincount(flat.ravel(), weights=w.ravel(), minlength=n * n_classes).reshape(n, n_classes)
        return votes / votes.sum(axis=1, keepdims=True)
