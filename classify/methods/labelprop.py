"""Label propagation on a faiss k-nearest-neighbour graph (Zhou et al. 2004; Iscen et al., CVPR 2019).

Transductive over every row given to ``fit`` (labeled, unlabeled, and test rows passed with ``y = -1``)::

    x  ->  feature transform (power-norm, centre, PCA-whiten)  ->  L2-normalise             # (N, d)
    kNN by inner product (faiss)                         ->  A_ij = max(s_ij, 0) ** power   # N*k entries
    W = A + A^T,   S = D^-1/2 W D^-1/2                                                      # sparse (N, N)
    solve (I - alpha S) Z = Y   per class by conjugate gradient                             # (N, C)
    label_distributions_ = rownorm(max(Z, 0))

Memory is linear in ``N * k`` (the graph) plus ``N * d`` (the transformed rows kept for inductive predict).
"""
from __future__ import annotations

import logging
import os
import time

from threadpoolctl import threadpool_limits
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier
from classify.methods.features import checked_labeled_mask, l2_normalize, single_threaded_blas
from classify.methods.graph import EXACT_MAX_ROWS, faiss_use_gpu, knn_graph, knn_search, normalized_graph
from classify.methods.registry import register_method
from classify.methods.transform import FeatureTransform
from store.validation import BOOL, DICT, NONE, Int, Options, Real, UserError

log = logging.getLogger(__name__)

#: Cosine similarity from which a query counts as a duplicate of a fitted row in ``predict_proba``.
DUPLICATE_COS = 1.0 - 1e-5
#: fits of more rows than this log each stage (feature transform, graph, each class's solve) as it happens
PROGRESS_ROWS = 50_000
#: ``fit_chunks`` estimates the mean and the PCA basis on this many evenly strided rows.
CHUNKED_SAMPLE_ROWS = 65536
#: A class whose propagation ends with a larger relative residual than this is reported (raise ``max_iter``).
CG_WARN_RESIDUAL = 1e-2


def _progress_log(n_rows: int):
    """``log.info`` for fits of more than :data:`PROGRESS_ROWS` rows (their stages take minutes), else
    ``log.debug``."""
    return log.info if n_rows > PROGRESS_ROWS else log.debug


@register_method("labelprop")
class KNNLabelPropagation(FewShotClassifier):
    """Label propagation on a kNN graph, solved by conjugate gradient (Iscen et al., CVPR 2019).

    Rows with ``y == -1`` are unlabeled. Every row passed to ``fit`` is labeled transductively
    (``transduction_``, ``label_distributions_``, like sklearn's ``LabelSpreading``); pass the test rows to
    ``fit`` with ``y = -1`` for the full transductive effect. ``predict_proba`` on new rows averages the label
    distributions of their ``k`` nearest fitted rows weighted by ``max(cos, 0) ** power``; a row that duplicates
    a fitted row (cosine >= 1 - 1e-5 after the transform) gets that row's transductive distribution.

    Rows that receive no propagated mass (no positive-affinity path to a labeled row, e.g. isolated rows or a
    component without labels) fall back to their affinity to the class prototypes (mean transformed labeled
    row per class): ``max(cos, 0) ** power`` renormalised, or uniform when every cosine is <= 0. They are
    counted in ``n_isolated_``.

    The defaults were chosen by a grid search on development seeds (labels drawn from train rows, scored on
    left-over train rows, never on test rows) of EfficientNet-Lite0 features of Fashion-MNIST
    (``python -m benchmarks.quality_bar --sweep labelprop``). The preprocessing (signed square root, PCA-whitening
    to 128 dims) suits pooled CNN/ViT embeddings; for low-dimensional or Gaussian-like features try
    ``feature_power=None, n_components=None``.

    Parameters
    ----------
    k : int, default=20
        Neighbours per row in the graph and in inductive prediction (clipped to ``n_rows - 1``).
    alpha : float in (0, 1), default=0.95
        Propagation strength; ``Z = (I - alpha S)^-1 Y``. Close to 1 propagates further.
    power : float, default=3.0
        Affinity exponent gamma in ``max(cos, 0) ** gamma`` (Iscen et al. use 3).
    max_iter : int, default=20
        Conjugate-gradient iterations per class.
    tol : float, default=1e-6
        Relative residual at which CG stops.
    class_weight : {"balanced"} or dict or None, default="balanced"
        Scales the columns of the seed matrix Y: "balanced" divides each class column by its labeled count
        (Iscen et al.'s normalisation; the sklearn formula ``n / (n_classes * count)``, which has the same
        effect after row normalisation), a dict maps class label -> weight, None keeps one-hot rows
        (sklearn ``LabelSpreading``).
    feature_power : float or None, default=0.5
        Signed power normalisation of the raw features before centring (0.5 = signed square root).
    center : bool, default=True
        Centre the features on the mean of the fitted rows before L2 normalisation.
    n_components : int or None, default=128
        PCA dimensions (fitted on the rows given to ``fit``); None keeps every dimension. Fewer dimensions make
        the exact kNN search cheaper.
    whiten : bool, default=True
        PCA-whiten (only with ``n_components``).
    index : {"auto", "flat", "ivf", "hnsw"}, default="auto"
        kNN search: "flat" is exact (faiss ``IndexFlatIP``), "ivf" approximate (``IndexIVFFlat`` with 4 sqrt(n) lists,
        16 probed), "hnsw" approximate (``IndexHNSWFlat``), "auto" exact up to 50,000 fitted rows and IVF above
        (exact search is quadratic in rows; ``python -m benchmarks labelprop-scale`` compares them).
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where faiss searches; "auto" uses a GPU when faiss has GPU support and one is present.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    X_ : ndarray of shape (n_rows, d), float32
        Transformed, L2-normalised fitted rows (the inductive index).
    label_distributions_ : ndarray of shape (n_rows, n_classes)
        Row-normalised propagated class mass of every fitted row.
    transduction_ : ndarray of shape (n_rows,)
        Arg-max label of every fitted row (labeled rows included; propagation may relabel a labeled row).
    transform_ : FeatureTransform
    prototypes_ : ndarray of shape (n_classes, d)
        Normalised mean transformed labeled row per class (fallback for isolated rows).
    n_iter_ : ndarray of shape (n_classes,)
        CG iterations used per class.
    cg_residual_ : ndarray of shape (n_classes,)
        Relative residual ``||y - (I - alpha S) f|| / ||y||`` of each class's solve; a warning is logged above
        ``CG_WARN_RESIDUAL``.
    n_isolated_ : int
        Fitted rows that received no propagated mass.
    n_features_in_ : int
    """

    _parameter_constraints = {"k": [Int(1)], "alpha": [Real(0, 1, low_open=True, high_open=True)],
                              "power": [Real(0, low_open=True)], "max_iter": [Int(1)], "tol": [Real(0, low_open=True)],
                              "class_weight": [NONE, Options("balanced"), DICT],
                              "feature_power": [NONE, Real(0, low_open=True)], "center": [BOOL],
                              "n_components": [NONE, Int(1)], "whiten": [BOOL],
                              "index": [Options("auto", "flat", "ivf", "hnsw")],
                              "device": [Options("auto", "cpu", "cuda")]}

    def __init__(self, k: int = 20, alpha: float = 0.95, power: float = 3.0, max_iter: int = 20, tol: float = 1e-6,
                 class_weight: str | dict | None = "balanced", feature_power: float | None = 0.5, center: bool = True,
                 n_components: int | None = 128, whiten: bool = True, index: str = "auto",
                 device: str = "auto") -> None:
        self.k = k
        self.alpha = alpha
        self.power = power
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.feature_power = feature_power
        self.center = center
        self.n_components = n_components
        self.whiten = whiten
        self.index = index
        self.device = device

    def _check_params(self) -> None:
        self._validate_params()
        faiss_use_gpu(self.device)  # refuses device="cuda" without a faiss GPU build

    def _column_weights(self, y_lab: np.ndarray) -> np.ndarray:
        counts = np.array([(y_lab == c).sum() for c in self.classes_], dtype=np.float64)  # (C,)
        if self.class_weight is None:
            return np.ones_like(counts)
        if self.class_weight == "balanced":
            return len(y_lab) / (len(self.classes_) * counts)
        unknown = set(self.class_weight) - set(self.classes_.tolist())
        if unknown:
            raise UserError(f"class_weight has labels not in y: {sorted(unknown)}; "
                             f"classes are {self.classes_.tolist()}")
        return np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_.tolist()])

    def fit(self, X, y) -> "KNNLabelPropagation":
        """Propagate the labels of ``y`` over the kNN graph of every row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            Raw backbone features of labeled and unlabeled rows.
        y : array-like of shape (n_rows,)
            Class labels; -1 marks an unlabeled row.

        Returns
        -------
        self
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        with single_threaded_blas():  # faiss keeps its OpenMP threads (see features.single_threaded_blas)
            self.transform_ = FeatureTransform(self.feature_power, self.center, self.n_components, self.whiten)
            Z = self.transform_.fit_transform(X).astype(np.float32, copy=False)  # (n, d), faiss needs float32
            return self._fit(Z, y)

    def fit_chunks(self, rows, y) -> "KNNLabelPropagation":
        """:meth:`fit` on rows too large to hold twice, read chunk by chunk (e.g. ``FeatureStore.row_chunks``).

        The feature transform is fitted on an evenly strided sample of ``CHUNKED_SAMPLE_ROWS`` rows, then every chunk
        is transformed as it is read, so memory holds the transformed rows (n, n_components), the index and the
        graph, never the raw features.

        Parameters
        ----------
        rows : object with ``shape`` (n, D), ``sample(index) -> (m, D)`` and ``chunks() -> iterable of (start, (c, D))``
        y : array-like of shape (n,)
            Class labels; -1 marks an unlabeled row.
        """
        self._check_params()
        y = np.asarray(y)
        n, dim = rows.shape
        if y.shape != (n,):
            raise UserError(f"y has shape {y.shape} but the rows are {rows.shape}; pass one label per row")
        say = _progress_log(n)
        with single_threaded_blas():
            sample = np.unique(np.linspace(0, n - 1, min(n, CHUNKED_SAMPLE_ROWS)).astype(np.int64))
            self.transform_ = FeatureTransform(self.feature_power, self.center, self.n_components, self.whiten)
            say("labelprop: fitting the feature transform on %d of %d rows", len(sample), n)
            self.transform_.fit(rows.sample(sample))
            Z = None
            done, next_report = 0, n / 10
            for start, chunk in rows.chunks():
                part = self.transform_.transform(chunk).astype(np.float32, copy=False)  # (c, d)
                if Z is None:
                    Z = np.empty((n, part.shape[1]), dtype=np.float32)  # (n, d): the only full-size array
                Z[start:start + len(part)] = part
                done += len(part)
                if done >= next_report or done == n:
                    say("labelprop: read and transformed %d of %d rows", done, n)
                    next_report += n / 10
            self.n_features_in_ = dim
            return self._fit(Z, y)

    def _fit(self, Z: np.ndarray, y: np.ndarray) -> "KNNLabelPropagation":
        """Propagate over the transformed, L2-normalised rows ``Z`` (n, d)."""
        t0 = time.perf_counter()
        labeled = checked_labeled_mask(y)
        if not labeled.any():
            raise UserError("labelprop needs at least one labeled row (y != -1) to propagate from")
        self.classes_ = np.unique(y[labeled])
        n, n_classes = Z.shape[0], len(self.classes_)
        self.X_ = Z
        cls_idx = np.searchsorted(self.classes_, y[labeled])  # (n_lab,)
        proto = np.zeros((n_classes, Z.shape[1]), dtype=np.float64)
        np.add.at(proto, cls_idx, Z[labeled])
        self.prototypes_ = l2_normalize(proto).astype(np.float32)  # (C, d)

        say = _progress_log(n)
        say("labelprop: building the %d-nearest-neighbour graph of %d rows (index %s, %s)", self.k, n,
            "ivf" if self.index == "auto" and n > EXACT_MAX_ROWS else "flat" if self.index == "auto" else self.index,
            "GPU" if faiss_use_gpu(self.device) else "CPU")
        t_graph = time.perf_counter()
        # The graph is one big search, not many small problems: give faiss's BLAS (k-means, exact search) every core.
        with threadpool_limits(limits=os.cpu_count() or 1, user_api="blas"):
            A = knn_graph(Z, self.k, self.power, self.device, self.index)  # (n, n), n*k entries
        S, degree = normalized_graph(A)
        say("labelprop: graph of %d edges in %.1f s; solving %d classes by conjugate gradient (at most %d iterations "
            "each)", A.nnz, time.perf_counter() - t_graph, n_classes, self.max_iter)
        t_solve = time.perf_counter()
        Y = np.zeros((n, n_classes))  # (n, C)
        Y[np.flatnonzero(labeled), cls_idx] = 1.0
        Y *= self._column_weights(y[labeled])
        system = (sp.identity(n, format="csr") - self.alpha * S).tocsr()
        F = np.zeros_like(Y)  # (n, C)
        self.n_iter_ = np.zeros(n_classes, dtype=np.int64)
        self.cg_residual_ = np.zeros(n_classes)
        for c in range(n_classes):
            iters = [0]

            def count(_xk, iters=iters):
                iters[0] += 1

            F[:, c], _ = cg(system, Y[:, c], rtol=self.tol, maxiter=self.max_iter, callback=count)
            self.n_iter_[c] = iters[0]
            # max_iter truncates CG on purpose (20 steps reach a relative residual of ~1e-4 on digits), so hitting
            # it is normal; a large residual is not: the result would then still be mostly the seed labels
            self.cg_residual_[c] = np.linalg.norm(Y[:, c] - system @ F[:, c]) / max(np.linalg.norm(Y[:, c]), 1e-300)
            if c + 1 == n_classes or (c + 1) % max(1, n_classes // 10) == 0:
                say("labelprop: solved %d of %d classes (%.1f s)", c + 1, n_classes, time.perf_counter() - t_solve)
        if self.cg_residual_.max() > CG_WARN_RESIDUAL:
            log.warning("labelprop: conjugate gradient stopped after %d iterations with a relative residual of "
                        "%.2g (above %g); raise max_iter for a converged propagation", int(self.n_iter_.max()),
                        float(self.cg_residual_.max()), CG_WARN_RESIDUAL)
        F = np.maximum(F, 0.0)
        mass = F.sum(axis=1)  # (n,)
        isolated = ~(mass > 1e-12 * max(1.0, mass.max(initial=0.0)))
        F[~isolated] /= mass[~isolated, None]
        if isolated.any():
            F[isolated] = self._prototype_proba(Z[isolated])
        self.n_isolated_ = int(isolated.sum())
        self.label_distributions_ = F
        self.transduction_ = self.classes_[F.argmax(axis=1)]
        log.info("labelprop: %d rows (%d labeled, %d isolated, %d without graph edges), d=%d, k=%d, "
                 "CG iterations %s, %.2fs", n, labeled.sum(), self.n_isolated_, int((degree == 0).sum()),
                 Z.shape[1], self.k, self.n_iter_.tolist(), time.perf_counter() - t0)
        return self

    def _prototype_proba(self, Z: np.ndarray) -> np.ndarray:
        """Fallback distribution from the affinity of rows ``Z`` (m, d) to the class prototypes."""
        aff = np.maximum(Z.astype(np.float64) @ self.prototypes_.T.astype(np.float64), 0.0) ** self.power  # (m, C)
        total = aff.sum(axis=1, keepdims=True)
        return np.where(total > 0, aff / np.where(total > 0, total, 1.0), 1.0 / len(self.classes_))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of new rows from their nearest fitted rows.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)

        Returns
        -------
        proba : ndarray of shape (n_rows, n_classes)
            Columns follow ``classes_``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        with single_threaded_blas():
            return self._predict_proba(X)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        Z = self.transform_.transform(X).astype(np.float32, copy=False)  # (m, d)
        k = int(min(self.k, self.X_.shape[0]))
        sims, ids = knn_search(self.X_, Z, k, self.device, self.index)  # (m, k)
        w = np.where(ids >= 0, np.maximum(sims.astype(np.float64), 0.0) ** self.power, 0.0)  # (m, k)
        ids = np.maximum(ids, 0)
        proba = np.einsum("mk,mkc->mc", w, self.label_distributions_[ids])  # (m, C)
        total = w.sum(axis=1)
        ok = total > 0
        proba[ok] /= total[ok, None]
        if not ok.all():
            proba[~ok] = self._prototype_proba(Z[~ok])
        dup = sims[:, 0] >= DUPLICATE_COS
        proba[dup] = self.label_distributions_[ids[dup, 0]]
        return proba
