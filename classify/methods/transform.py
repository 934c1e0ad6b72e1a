"""The feature transform graph methods apply before cosine similarity: power-norm, centring, PCA(-whitening), L2."""
from __future__ import annotations

import numpy as np
import scipy.linalg

from classify.methods.features import l2_normalize
from classify.methods.registry import persistable

#: The PCA basis is estimated on at most this many evenly strided rows (the covariance costs rows * D**2).
PCA_MAX_ROWS = 4096


@persistable
class FeatureTransform:
    """Fitted feature preprocessing applied before cosine similarity: power-norm, centring, PCA(-whitening), L2.

    Plain NumPy state, so estimators holding one pickle and clone cleanly.

    Parameters
    ----------
    power : float or None
        Signed power normalisation ``sign(x) |x|**power`` applied first (0.5 = signed square root); None skips.
    center : bool
        Subtract the mean of the fitted rows.
    n_components : int or None
        Project on the top principal components (fitted on at most ``PCA_MAX_ROWS`` evenly strided rows);
        None keeps every dimension. Clipped to ``min(n_features, n_pca_rows - 1)``.
    whiten : bool
        Divide each principal component by the square root of its eigenvalue (only with ``n_components``).
    """

    def __init__(self, power: float | None = None, center: bool = True, n_components: int | None = None,
                 whiten: bool = False) -> None:
        self.power = power
        self.center = center
        self.n_components = n_components
        self.whiten = whiten

    @staticmethod
    def _float(X) -> np.ndarray:
        X = np.asarray(X)
        return X if X.dtype in (np.float32, np.float64) else X.astype(np.float32)

    def _pow(self, X: np.ndarray) -> np.ndarray:
        if self.power is None or self.power == 1:
            return X
        mag = np.sqrt(np.abs(X)) if self.power == 0.5 else np.abs(X) ** X.dtype.type(self.power)
        return mag if X.min(initial=0) >= 0 else np.sign(X) * mag  # post-ReLU features need no sign

    def fit(self, X: np.ndarray, sample_weight: np.ndarray | None = None) -> "FeatureTransform":
        """Fit the mean and principal components on ``X`` of shape (n, D), optionally weighting rows (n,)."""
        X = self._pow(self._float(X))
        n, dim = X.shape
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if not (self.center or self.n_components):
            self.mean_ = np.zeros(dim, X.dtype)
        elif w is None:
            self.mean_ = X.mean(axis=0)
        else:
            self.mean_ = (w @ X / max(w.sum(), 1e-300)).astype(X.dtype)
        self.components_ = None  # (D, d) projection, whitening folded in
        if self.n_components is not None:
            stride = max(1, -(-n // PCA_MAX_ROWS))
            sub = X[::stride] - self.mean_  # (n', D)
            d = int(min(self.n_components, dim, max(1, sub.shape[0] - 1)))  # centred rank <= n' - 1
            if w is None:
                cov = (sub.T @ sub) / sub.shape[0]  # (D, D)
            else:
                ws = w[::stride].astype(X.dtype)
                cov = (sub.T * ws) @ sub / max(float(ws.sum()), 1e-30)
            evals, evecs = scipy.linalg.eigh(cov, subset_by_index=[dim - d, dim - 1], driver="evr")
            evals, evecs = evals[::-1].astype(np.float64), evecs[:, ::-1]  # (d,), (D, d), descending
            keep = evals > max(evals[0], 0.0) * 1e-6  # drop directions without variance (their basis is arbitrary)
            keep[0] = True
            evals, evecs = evals[keep], evecs[:, keep]
            if self.whiten:
                evecs = evecs / np.sqrt(np.maximum(evals, evals[0] * 1e-6 + 1e-12))
            self.components_ = np.ascontiguousarray(evecs, dtype=X.dtype)
        return self

    def fit_transform(self, X: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
        """``fit(X).transform(X)`` computing the power normalisation once."""
        X = self._float(X)
        P = self._pow(X)
        saved, self.power = self.power, None
        try:
            return self.fit(P, sample_weight).transform(P)
        finally:
            self.power = saved

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Transformed, L2-normalised rows (n, d), C-contiguous; float64 input stays float64, else float32."""
        X = self._float(X)
        Z = self._pow(X) - self.mean_.astype(X.dtype, copy=False)  # (n, D)
        if self.components_ is not None:
            Z = Z @ self.components_.astype(X.dtype, copy=False)  # (n, d)
        return np.ascontiguousarray(l2_normalize(Z))
