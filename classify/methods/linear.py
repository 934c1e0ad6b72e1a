"""Linear probe: multinomial logistic regression on L2-normalised features, optionally mixed with zero-shot CLIP."""
from __future__ import annotations

import logging

import numpy as np
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier
from classify.methods.features import checked_labeled_mask, cv_splits, l2_normalize, single_threaded_blas
from classify.methods.text import text_class_weights
from classify.methods.registry import persistable, register_method
from store.validation import DICT, NONE, Int, ListOf, Options, Real, UserError

log = logging.getLogger(__name__)

#: Default grid of inverse regularisation strengths. On unit-norm features a useful probe needs weight
#: norms of ~10-100, so the grid reaches far into weak regularisation.
DEFAULT_CS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: Default grid of zero-shot/probe mixing weights (0 = pure zero-shot, 1 = pure probe).
DEFAULT_ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


@register_method("linear")
class LinearProbe(FewShotClassifier):
    """Linear probe on L2-normalised features with C chosen by stratified CV on the labeled rows.

    Rows labeled ``-1`` are unlabeled and ignored. With ``text_embeddings`` the probe is interpolated
    with the CLIP zero-shot classifier, WiSE-style::

        logits = (1 - alpha) * zeroshot_logits + alpha * probe_logits

    where ``zeroshot_logits = logit_scale * cos(x, class_text)``. Both heads are linear in the same
    normalised features (the zero-shot head has weights ``logit_scale * W_text`` and no bias), so mixing
    logits is exactly WiSE-FT's interpolation of the head weights. The two are on a common scale because
    each is a log-probability up to a per-row constant (softmax is shift-invariant): zero-shot at CLIP's
    trained temperature, the probe at the maximum-likelihood scale of its fit. The mix is therefore a
    weighted geometric mean of the two predictive distributions. What is left of a scale mismatch
    comes from C (strong regularisation shrinks the probe's logits), which is why C and alpha are
    chosen *jointly* on the same out-of-fold logits.

    Parameters
    ----------
    Cs : sequence of float, default=None
        Grid of inverse regularisation strengths; None uses ``DEFAULT_CS``. A single value fixes C.
    class_weight : dict, "balanced" or None, default=None
        Passed to :class:`~sklearn.linear_model.LogisticRegression`.
    cv : int, default=5
        Maximum number of stratified folds; the actual count is ``min(cv, smallest class count)``.
        With a class of a single labeled row CV is impossible: C falls back to the grid's median and
        alpha to 0.5 (a warning is logged).
    text_embeddings : array-like of shape (C, T, D), default=None
        CLIP text embeddings (see ``zeroshot``); enables the zero-shot interpolation. Labels must then be
        class indices into its first axis and ``classes_`` is ``arange(C)``.
    templates : list of str of length T, default=None
        The template strings of ``text_embeddings``' T axis (the pipeline takes them from the store); needed only
        to name templates by string in ``template_subset``.
    template_subset : list of str or int, default=None
        Templates (strings or indices into the T axis) averaged into the zero-shot class embeddings (CLIP's prompt
        ensembling); None uses all T.
    logit_scale : float, default=100.0
        Multiplies the zero-shot head's cosines, ``zeroshot_logits = logit_scale * cos(x, class_text)``, before
        the mix with the probe (CLIP's learned temperature is 100). Ignored without text embeddings.
    alpha : float in [0, 1], default=None
        Mixing weight of the probe; None chooses it by CV from ``alphas``. Ignored without text embeddings
        (then alpha is 1).
    alphas : sequence of float, default=None
        Grid for alpha; None uses ``DEFAULT_ALPHAS``.
    max_iter : int, default=1000
        Maximum iterations of the lbfgs solver of :class:`~sklearn.linear_model.LogisticRegression`, in every CV
        fit and the final probe fit; a fit that hits it stops unconverged (sklearn warns).
    tol : float, default=1e-4
        Stopping tolerance of that solver (``LogisticRegression(tol=...)``): lbfgs stops once the largest
        projected-gradient component falls below it.
    random_state : int, default=0
        Seeds the CV fold shuffle.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    C_ : float
        Chosen inverse regularisation strength.
    alpha_ : float
        Chosen mixing weight (1.0 without text embeddings).
    cv_scores_ : ndarray of shape (len(Cs), len(alphas)) or None
        Out-of-fold accuracy (weighted by ``class_weight``) of each (C, alpha); None when no CV ran.
    probe_ : LogisticRegression
        Fitted on the normalised labeled rows with ``C_``.
    class_weights_ : ndarray of shape (n_classes, D) or None
        Zero-shot class embeddings when text embeddings are given.
    n_iter_ : ndarray of shape (1,)
        Solver iterations of the final probe fit.
    n_features_in_ : int
    """

    _parameter_constraints = {"class_weight": [NONE, Options("balanced"), DICT], "cv": [Int(2)],
                              "logit_scale": [Real(0, low_open=True)], "alpha": [NONE, Real(0, 1)],
                              "Cs": [NONE, ListOf(Real(0, low_open=True))], "alphas": [NONE, ListOf(Real(0, 1))],
                              "max_iter": [Int(1)], "tol": [Real(0, low_open=True)]}

    def __init__(self, Cs=None, class_weight=None, cv=5, text_embeddings=None, templates=None, template_subset=None,
                 logit_scale=100.0, alpha=None, alphas=None, max_iter=1000, tol=1e-4, random_state=0):
        self.Cs = Cs
        self.class_weight = class_weight
        self.cv = cv
        self.text_embeddings = text_embeddings
        self.templates = templates
        self.template_subset = template_subset
        self.logit_scale = logit_scale
        self.alpha = alpha
        self.alphas = alphas
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        """Fit on the labeled rows of ``X`` (rows with ``y == -1`` are ignored)."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        mask = checked_labeled_mask(y)
        Xl, yl = l2_normalize(X[mask]), y[mask]  # (n_l, D), (n_l,)
        probe_classes = np.unique(yl)
        if probe_classes.size < 2:
            raise UserError(f"linear probe needs labeled rows of at least 2 classes, got {probe_classes.size} class"
                             f"{'' if probe_classes.size == 1 else 'es'}; label more rows (y = -1 marks unlabeled)")
        Cs = np.asarray(DEFAULT_CS if self.Cs is None else self.Cs, dtype=np.float64).ravel()

        if self.text_embeddings is not None:
            W = text_class_weights(self, X, y)  # (C, D)
            self.class_weights_ = W
            self.classes_ = np.arange(W.shape[0])
            if self.alpha is not None:
                alphas = np.array([self.alpha], dtype=np.float64)
            else:
                alphas = np.asarray(DEFAULT_ALPHAS if self.alphas is None else self.alphas, dtype=np.float64).ravel()
            missing = np.setdiff1d(self.classes_, probe_classes)
            if missing.size:
                log.warning("%d classes have no labeled rows; the probe ranks them last, only zero-shot can "
                            "predict them", missing.size)
        else:
            self.class_weights_ = None
            self.classes_ = probe_classes
            alphas = np.array([1.0])
        self._probe_cols = np.searchsorted(self.classes_, probe_classes)  # probe column -> classes_ column
        y_idx = np.searchsorted(self.classes_, yl)  # (n_l,) column of each labeled row
        zs_logits = self._zeroshot_logits(Xl)  # (n_l, C) or None

        n_splits = cv_splits(yl, self.cv)
        self.cv_scores_ = None
        with single_threaded_blas():
            if Cs.size == 1 and alphas.size == 1:
                self.C_, self.alpha_ = float(Cs[0]), float(alphas[0])
            elif n_splits < 2:
                self.C_, self.alpha_ = float(np.median(Cs)), float(alphas[np.argmin(np.abs(alphas - 0.5))])
                log.warning("a class has a single labeled row, so C and alpha cannot be cross-validated; "
                            "using C=%g, alpha=%g", self.C_, self.alpha_)
            else:
                self._select(Xl, yl, y_idx, zs_logits, Cs, alphas, n_splits)
            self.probe_ = self._make_lr(self.C_).fit(Xl, yl)
        self.n_iter_ = self.probe_.n_iter_
        log.info("linear probe: C=%g alpha=%g on %d labeled rows", self.C_, self.alpha_, len(yl))
        return self

    def _make_lr(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol)

    def _select(self, Xl, yl, y_idx, zs_logits, Cs, alphas, n_splits) -> None:
        """Choose (C, alpha) jointly by out-of-fold accuracy; ties go to the lower out-of-fold log-loss.

        Both are weighted by ``class_weight`` (so "balanced" selects by balanced accuracy, consistent with
        the training objective). Hand-written instead of GridSearchCV because one ``cross_val_predict`` per
        C gives out-of-fold probe logits that every alpha reuses (alpha is a post-hoc mix; refitting per
        alpha would be waste).
        """
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        w = compute_sample_weight(self.class_weight, yl) if self.class_weight is not None else np.ones(len(yl))
        w = w / w.sum()  # (n_l,)
        acc = np.zeros((Cs.size, alphas.size))
        loss = np.zeros((Cs.size, alphas.size))
        rows = np.arange(len(y_idx))
        # With fewer labeled rows than dims (the few-shot case) the L2-penalised solution lies in the row
        # span of the training rows (representer theorem; the intercept is unpenalised), and every fold's
        # rows lie in the span of all labeled rows. Fitting on coordinates in an orthonormal basis of that
        # span gives the same out-of-fold logits (up to solver tolerance) with n instead of D weights per
        # class: measured 5-8x faster for 150 rows x 1280 dims. The final probe is refitted on Xl itself.
        Z = Xl
        if Xl.shape[0] < Xl.shape[1]:
            _, S, Vt = np.linalg.svd(Xl.astype(np.float64), full_matrices=False)  # Vt: (n_l, D)
            Z = Xl.astype(np.float64) @ Vt[S > S[0] * 1e-10].T  # (n_l, rank)
        for i, C in enumerate(Cs):
            d = cross_val_predict(self._make_lr(C), Z, yl, cv=folds, method="decision_function")
            probe = self._full_probe_logits(d)  # (n_l, C)
            for j, a in enumerate(alphas):
                logits = probe if zs_logits is None else (1.0 - a) * zs_logits + a * probe
                acc[i, j] = w @ (logits.argmax(axis=1) == y_idx)
                loss[i, j] = -(w @ log_softmax(logits, axis=1)[rows, y_idx])
        best = np.lexsort((loss.ravel(), -acc.ravel()))[0]  # max accuracy, then min log-loss, then first
        i, j = np.unravel_index(best, acc.shape)
        self.C_, self.alpha_, self.cv_scores_ = float(Cs[i]), float(alphas[j]), acc

    # ------------------------------------------------------------------ predict
    def _full_probe_logits(self, d: np.ndarray) -> np.ndarray:
        """Probe decision values (n,) or (n, K) -> logits (n, len(classes_)).

        A binary LogisticRegression returns one margin d with P(class 1) = sigmoid(d) = softmax([0, d]).
        Classes without labeled rows get the row's lowest probe logit (the probe ranks them last).
        """
        d = np.asarray(d, dtype=np.float64)
        if d.ndim == 1:
            d = np.stack([np.zeros_like(d), d], axis=1)  # (n, 2)
        if d.shape[1] == len(self.classes_):
            return d
        out = np.repeat(d.min(axis=1, keepdims=True), len(self.classes_), axis=1)  # (n, C)
        out[:, self._probe_cols] = d
        return out

    def _zeroshot_logits(self, Xn: np.ndarray):
        if self.class_weights_ is None:
            return None
        return float(self.logit_scale) * (Xn @ self.class_weights_.T.astype(Xn.dtype)).astype(np.float64)  # (n, C)

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        Xn = l2_normalize(validate_data(self, X, dtype=[np.float32, np.float64], reset=False))  # (n, D)
        probe = self._full_probe_logits(self.probe_.decision_function(Xn))  # (n, C)
        if self.class_weights_ is None:
            return probe
        return (1.0 - self.alpha_) * self._zeroshot_logits(Xn) + self.alpha_ * probe

    def linear_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The fitted model as one linear layer on L2-normalised features (e.g. to start a fine-tuning head).

        ``predict_proba(X) == softmax(l2_normalize(X) @ W.T + b)``, the WiSE blend with zero-shot included.

        Returns
        -------
        W : ndarray of shape (len(classes_), D), float64
        b : ndarray of shape (len(classes_),), float64

        Raises
        ------
        ValueError
            Some class has no labeled row and the probe has weight (``alpha_ > 0``): the probe then ranks that
            class at each row's lowest logit, which no linear layer reproduces.
        """
        check_is_fitted(self)
        coef = np.asarray(self.probe_.coef_, dtype=np.float64)  # (K, D), or (1, D) for two classes
        intercept = np.asarray(self.probe_.intercept_, dtype=np.float64)  # (K,) or (1,)
        if coef.shape[0] == 1:  # binary: logits [0, d] (see _full_probe_logits)
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        if coef.shape[0] != len(self.classes_) and self.alpha_ > 0:
            raise UserError("the probe has no labeled rows for some classes, so it is not one linear layer; label "
                             "every class, or fit with alpha=0")
        W = np.zeros((len(self.classes_), coef.shape[1]))  # (C, D)
        b = np.zeros(len(self.classes_))  # (C,)
        W[self._probe_cols], b[self._probe_cols] = coef, intercept
        if self.class_weights_ is None:
            return W, b
        zs = float(self.logit_scale) * self.class_weights_.astype(np.float64)  # (C, D) zero-shot head, no bias
        return (1.0 - self.alpha_) * zs + self.alpha_ * W, self.alpha_ * b


@persistable
class FineTunedHead(FewShotClassifier):
    """The head trained by ``finetune``, as a classify estimator: ``softmax(l2_normalize(X) @ weight.T + bias)``.

    ``fit`` learns nothing (the weights come from fine-tuning); it checks shapes and sets ``classes_ = arange(C)``.

    Parameters
    ----------
    weight : array-like of shape (C, D)
    bias : array-like of shape (C,)
    """

    def __init__(self, weight=None, bias=None):
        self.weight = weight
        self.bias = bias

    def fit(self, X, y=None) -> "FineTunedHead":
        """Check that ``X`` has D columns; set ``classes_``."""
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        W = np.asarray(self.weight, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != X.shape[1] or np.shape(self.bias) != (W.shape[0],):
            raise UserError(f"weight {np.shape(self.weight)} / bias {np.shape(self.bias)} do not fit {X.shape[1]} "
                             "features")
        self.classes_ = np.arange(W.shape[0])
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return l2_normalize(X.astype(np.float64)) @ np.asarray(self.weight, np.float64).T + np.asarray(self.bias)
