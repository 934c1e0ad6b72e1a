"""Balanced transductive prototypes (PT-MAP): power transform, centring, Sinkhorn-balanced soft k-means.

Every row of the fit (labeled, unlabeled and, transductively, the test rows) is power-transformed, centred on the
mean of all rows and L2-normalised. Class prototypes start at the labeled class means; each step

1. scores every unlabeled row against every prototype, ``P = exp(-lam * ||z - mu_c||^2)``  # (n_u, C)
2. balances ``P`` by Sinkhorn scaling so that each row sums to 1 and class ``c`` receives ``n_u * prior_c`` rows
   (an optimal-transport assignment: no class can swallow the pool, none is starved);
3. moves each prototype a step ``alpha`` towards the mean of its labeled rows and its soft-assigned unlabeled rows.

``prior="uniform"`` assumes balanced classes among the unlabeled rows (the classical PT-MAP); ``prior="estimated"``
re-estimates the class shares each step from the unbalanced posteriors (an EM update of the class prior), so an
imbalanced pool is not forced into equal shares; ``prior="labeled"`` takes the shares of the labeled rows.

Reference: Hu, Gripon, Pateux, "Leveraging the Feature Distribution in Transfer-based Few-Shot Learning" (2021).
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier
from classify.methods.features import checked_labeled_mask, single_threaded_blas
from classify.methods.graph import knn_search
from classify.methods.labelprop import DUPLICATE_COS
from classify.methods.transform import FeatureTransform
from classify.methods.registry import register_method
from store.validation import BOOL, NONE, Int, Options, Real, UserError

log = logging.getLogger(__name__)


def sinkhorn(P: np.ndarray, col_mass: np.ndarray, n_iter: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Scale ``P`` (n, C) so every row sums to 1 and column ``c`` to ``col_mass[c]`` (which must sum to n).

    Parameters
    ----------
    P : ndarray of shape (n, C), positive
    col_mass : ndarray of shape (C,)
    n_iter : int
        Maximum alternating row / column scalings.
    tol : float
        Stop when no column is more than ``tol`` (relative) off its mass.

    Returns
    -------
    ndarray of shape (n, C)
    """
    P = P / P.sum(axis=1, keepdims=True)  # (n, C)
    for _ in range(n_iter):
        cols = P.sum(axis=0)  # (C,)
        P = P * (col_mass / np.maximum(cols, 1e-300))[None, :]
        P = P / P.sum(axis=1, keepdims=True)
        if np.max(np.abs(P.sum(axis=0) - col_mass) / np.maximum(col_mass, 1e-12)) < tol:
            break
    return P


@register_method("ptmap")
class PTMap(FewShotClassifier):
    """Transductive few-shot classifier: Sinkhorn-balanced soft k-means started from the labeled class means.

    Needs unlabeled rows to help (``y = -1``; the test rows when fitted transductively); with none it is the
    nearest-class-mean classifier on the transformed features.

    Parameters
    ----------
    lam : float, default=150
        Inverse temperature of the assignment ``exp(-lam * squared distance)`` on unit-norm features. The
        original 10 (for 640-d ResNet features) leaves the 1280-d EfficientNet-Lite assignments nearly uniform;
        150 and ``prior="uniform"`` won the nested-CV sweep on the drawn labels (``python -m benchmarks.sweep
        --dataset clipart --grid ptmap``; with lam=10 the estimated prior collapses onto a few classes).
    alpha : float in (0, 1], default=0.2
        Step of each prototype update towards the new class mean.
    n_steps : int, default=30
        Prototype updates.
    prior : "uniform", "estimated" or "labeled", default="uniform"
        Class shares the balanced assignment gives the unlabeled rows (see the module docstring).
    feature_power : float or None, default=0.5
        Power transform applied first (0.5: square root of the non-negative pooled features); None skips.
    n_components : int or None, default=None
        PCA dimension after centring (whitened with ``whiten``); None keeps every dimension.
    whiten : bool, default=False
        Whiten the principal components (only with ``n_components``).
    sinkhorn_iter : int, default=50
        Maximum Sinkhorn scalings per step.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    transform_ : FeatureTransform
        Power transform, centring (and PCA) fitted on every fit row.
    prototypes_ : ndarray of shape (n_classes, d)
        Final class prototypes in the transformed space.
    prior_ : ndarray of shape (n_classes,)
        Final class shares of the unlabeled rows.
    X_ : ndarray of shape (n_rows, d)
        Transformed fit rows (predictions of these rows are their transductive assignments).
    label_distributions_ : ndarray of shape (n_rows, n_classes)
        Assignment of every fit row (one-hot for labeled rows).
    """

    _parameter_constraints = {"lam": [Real(0, None, low_open=True)], "alpha": [Real(0, 1, low_open=True)],
                              "n_steps": [Int(0)], "prior": [Options("uniform", "estimated", "labeled")],
                              "feature_power": [Real(0, None, low_open=True), NONE], "n_components": [Int(1), NONE],
                              "whiten": [BOOL], "sinkhorn_iter": [Int(1)]}

    def __init__(self, lam: float = 150.0, alpha: float = 0.2, n_steps: int = 30, prior: str = "uniform",
                 feature_power: float | None = 0.5, n_components: int | None = None, whiten: bool = False,
                 sinkhorn_iter: int = 50) -> None:
        self.lam = lam
        self.alpha = alpha
        self.n_steps = n_steps
        self.prior = prior
        self.feature_power = feature_power
        self.n_components = n_components
        self.whiten = whiten
        self.sinkhorn_iter = sinkhorn_iter

    def _scores(self, Z: np.ndarray, protos: np.ndarray) -> np.ndarray:
        """``-lam * ||z - mu||^2`` shifted per row for a stable exponential, shape (n, C)."""
        d2 = (Z ** 2).sum(axis=1)[:, None] - 2.0 * Z @ protos.T + (protos ** 2).sum(axis=1)[None, :]  # (n, C)
        s = -self.lam * d2
        return s - s.max(axis=1, keepdims=True)

    def fit(self, X, y) -> "PTMap":
        """Fit on labeled and unlabeled rows (``y = -1``).

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        y : array-like of shape (n_rows,)

        Returns
        -------
        self
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        labeled = checked_labeled_mask(y)
        if not labeled.any():
            raise UserError("ptmap needs at least one labeled row (y != -1)")
        self.classes_, cls_idx = np.unique(y[labeled], return_inverse=True)
        n_classes = len(self.classes_)
        with single_threaded_blas():
            self.transform_ = FeatureTransform(self.feature_power, True, self.n_components, self.whiten)
            Z = self.transform_.fit_transform(X).astype(np.float64)  # (n, d) unit rows, centred on all rows
            Zl, Zu = Z[labeled], Z[~labeled]  # (n_l, d), (n_u, d)
            onehot = np.zeros((len(Zl), n_classes))  # (n_l, C)
            onehot[np.arange(len(Zl)), cls_idx] = 1.0
            counts = onehot.sum(axis=0)  # (C,)
            protos = onehot.T @ Zl / counts[:, None]  # (C, d) labeled class means
            prior = counts / counts.sum() if self.prior == "labeled" else np.full(n_classes, 1.0 / n_classes)
            Pu = np.zeros((len(Zu), n_classes))  # (n_u, C)
            for _ in range(self.n_steps if len(Zu) else 0):
                Pu, prior = self._assign(Zu, protos, prior)
                target = (onehot.T @ Zl + Pu.T @ Zu) / (counts + Pu.sum(axis=0))[:, None]  # (C, d)
                protos = protos + self.alpha * (target - protos)
            if len(Zu):
                Pu, prior = self._assign(Zu, protos, prior)
        self.prototypes_, self.prior_, self.X_ = protos, prior, Z.astype(np.float32)
        F = np.zeros((len(Z), n_classes))  # (n, C)
        F[labeled] = onehot
        F[~labeled] = Pu
        self.label_distributions_ = F
        log.info("ptmap: %d labeled, %d unlabeled rows, %d classes, d=%d; unlabeled class shares %.3f-%.3f",
                 len(Zl), len(Zu), n_classes, Z.shape[1], prior.min(), prior.max())
        return self

    def _assign(self, Zu: np.ndarray, protos: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        E = np.exp(self._scores(Zu, protos))  # (n_u, C)
        if self.prior == "estimated":
            post = E * prior[None, :]
            post /= post.sum(axis=1, keepdims=True)
            prior = np.maximum(post.mean(axis=0), 1e-3 / len(prior))  # EM step of the class shares
            prior = prior / prior.sum()
        return sinkhorn(E, prior * len(Zu), self.sinkhorn_iter), prior

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, n_classes): a fit row's balanced assignment, else its prototype posterior.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        with single_threaded_blas():
            Z = self.transform_.transform(X).astype(np.float32)  # (m, d)
            post = np.exp(self._scores(Z.astype(np.float64), self.prototypes_)) * self.prior_[None, :]  # (m, C)
            post /= post.sum(axis=1, keepdims=True)
        sims, ids = knn_search(self.X_, Z, 1, "cpu", "flat")  # (m, 1) the closest fit row
        seen = (ids[:, 0] >= 0) & (sims[:, 0] >= DUPLICATE_COS)
        post[seen] = self.label_distributions_[ids[seen, 0]]
        return post
