"""Cross-modal linear probe: class text embeddings are extra training samples of their class.

Lin et al., "Multimodality Helps Unimodality: Cross-Modal Few-Shot Learning with Multimodal Models", CVPR 2023.
CLIP maps images and texts into one space, so each (class, template) text embedding, L2-normalised like the image
features, is one more labeled sample of its class for a multinomial logistic regression. Every class has text
samples, so the probe covers classes without a single labeled image, and with zero labeled images it is a
text-only probe (a zero-shot classifier trained rather than averaged).

With unlabeled rows it composes with ``selftrain``: as the teacher (``teacher="crossmodal"``) or as the head
trained on pseudo-labels (``head="crossmodal"``; ``fit`` takes ``sample_weight`` for soft / weighted labels).
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier, NotApplicable
from classify.methods.features import checked_labeled_mask, cv_splits, l2_normalize, single_threaded_blas
from classify.methods.linear import DEFAULT_CS
from classify.methods.text import text_class_weights, zeroshot_class_weights
from classify.methods.registry import register_method
from store.validation import DICT, NONE, Int, ListOf, Options, Real, UserError

log = logging.getLogger(__name__)


def text_samples(text_embeddings, templates=None, template_subset=None) -> tuple[np.ndarray, np.ndarray]:
    """One unit-norm training sample per (class, template): ``(X_text (C*T', D), y_text (C*T',))``, class-major.

    Uses :func:`~classify.methods.text.zeroshot_class_weights` on one template at a time, so the template
    selection and checks are zero-shot's.
    """
    zeroshot_class_weights(text_embeddings, templates, template_subset)  # validates shapes, values and the subset
    raw = np.asarray(text_embeddings, dtype=np.float32)
    raw = raw[:, None, :] if raw.ndim == 2 else raw  # (C, T, D)
    chosen = range(raw.shape[1]) if template_subset is None else template_subset
    per_template = [zeroshot_class_weights(raw, templates, [t]) for t in chosen]  # T' arrays (C, D)
    X_text = np.stack(per_template, axis=1).reshape(-1, raw.shape[2])  # (C*T', D), class-major
    y_text = np.repeat(np.arange(raw.shape[0]), len(per_template))  # (C*T',)
    return X_text, y_text


@register_method("crossmodal", needs_text=True)
class CrossModalProbe(FewShotClassifier):
    """Logistic-regression probe on L2-normalised image features plus the class text embeddings as samples.

    Rows labeled ``-1`` are unlabeled and ignored. Labels are class indices into ``text_embeddings``' first axis
    and ``classes_`` is ``arange(C)``.

    Parameters
    ----------
    text_embeddings : array-like of shape (C, T, D), default=None
        CLIP text embeddings per class and template, of the same CLIP model as X (required).
    templates : list of str of length T, default=None
        The template strings of ``text_embeddings``' T axis (the pipeline takes them from the store); needed only
        to name templates by string in ``template_subset``.
    template_subset : list of str or int, default=None
        Templates (strings or indices into the T axis) whose embeddings become text samples, one per class and
        template; None uses all T.
    text_weight : float, default=1.0
        Sample weight of each text sample relative to a labeled image (weight 1). 0 makes it the plain probe.
    Cs : sequence of float, default=None
        Grid of inverse regularisation strengths; None uses ``linear.DEFAULT_CS``. A single value fixes C.
    cv : int, default=5
        Maximum number of stratified folds over the labeled images (``min(cv, smallest class count)``); every
        fold trains on all text samples and scores held-out images only. When CV is impossible (a class with a
        single labeled image, or no images) C is the grid's median (a warning is logged).
    class_weight : dict, "balanced" or None, default=None
        Passed to :class:`~sklearn.linear_model.LogisticRegression`.
    max_iter : int, default=1000
        Maximum iterations of the lbfgs solver of :class:`~sklearn.linear_model.LogisticRegression`, in every CV
        fit and the final fit; a fit that hits it stops unconverged (sklearn warns).
    tol : float, default=1e-4
        Stopping tolerance of that solver (``LogisticRegression(tol=...)``): lbfgs stops once the largest
        projected-gradient component falls below it.
    random_state : int, default=0
        Seeds the CV fold shuffle.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    C_ : float
    probe_ : LogisticRegression
        Fitted on images and texts with ``C_``.
    cv_results_ : dict or None
        ``GridSearchCV.cv_results_`` of the C search; None when no CV ran.
    n_text_samples_ : int
    n_features_in_ : int
    """

    _parameter_constraints = {"text_weight": [Real(0)], "Cs": [NONE, ListOf(Real(0, low_open=True))], "cv": [Int(2)],
                              "class_weight": [NONE, Options("balanced"), DICT], "max_iter": [Int(1)],
                              "tol": [Real(0, low_open=True)]}

    def __init__(self, text_embeddings=None, templates=None, template_subset=None, text_weight=1.0, Cs=None, cv=5,
                 class_weight=None, max_iter=1000, tol=1e-4, random_state=0):
        self.text_embeddings = text_embeddings
        self.templates = templates
        self.template_subset = template_subset
        self.text_weight = text_weight
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        """Fit on the labeled rows of ``X`` and the text samples.

        Parameters
        ----------
        X : array-like of shape (n_rows, D)
        y : array-like of shape (n_rows,)
            Class indices; -1 marks an unlabeled row (ignored).
        sample_weight : array-like of shape (n_rows,), default=None
            Weights of the image rows (e.g. ``selftrain``'s pseudo-label weights).

        Returns
        -------
        self
        """
        if self.text_embeddings is None:
            raise NotApplicable("crossmodal needs CLIP text embeddings (embed with a clip:<arch>/<tag> backbone); "
                             "for other backbones use the plain probe, method 'linear'")
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if w.shape != (len(X),) or np.any(w < 0):
            raise UserError(f"sample_weight must hold {len(X)} non-negative numbers, one per row of X")
        labeled = checked_labeled_mask(y)
        text_class_weights(self, X, y)  # checks the text dim and that labels index its classes
        X_text, y_text = text_samples(self.text_embeddings, self.templates, self.template_subset)
        n_classes = int(y_text.max()) + 1
        yl = y[labeled]
        Cs = np.asarray(DEFAULT_CS if self.Cs is None else self.Cs, dtype=np.float64).ravel()

        Xl = l2_normalize(X[labeled]).astype(X_text.dtype)  # (n_l, D)
        X_all = np.vstack([Xl, X_text])  # (n_l + C*T', D): images first, then texts
        y_all = np.concatenate([yl.astype(np.int64), y_text])
        w_all = np.concatenate([w[labeled], np.full(len(y_text), float(self.text_weight))])
        self.classes_ = np.arange(n_classes)
        self.n_text_samples_ = len(y_text)
        self.cv_results_ = None
        n_splits = cv_splits(yl, self.cv) if yl.size else 0
        lr = LogisticRegression(class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol)
        with single_threaded_blas():
            if Cs.size == 1 or n_splits < 2:
                self.C_ = float(Cs[0] if Cs.size == 1 else np.median(Cs))
                if Cs.size > 1:
                    log.warning("crossmodal: too few labeled images per class to cross-validate C; using C=%g",
                                self.C_)
                self.probe_ = lr.set_params(C=self.C_).fit(X_all, y_all, sample_weight=w_all)
            else:
                # every fold trains on its images plus all texts and scores held-out images only
                texts = np.arange(len(yl), len(y_all))
                folds = [(np.concatenate([tr, texts]), te) for tr, te in
                         StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state).split(Xl, yl)]
                search = GridSearchCV(lr, {"C": list(Cs)}, cv=folds).fit(X_all, y_all, sample_weight=w_all)
                self.C_, self.probe_ = float(search.best_params_["C"]), search.best_estimator_
                self.cv_results_ = search.cv_results_
        assert np.array_equal(self.probe_.classes_, self.classes_)  # text samples cover every class
        log.info("crossmodal: C=%g on %d labeled images + %d text samples", self.C_, len(yl), len(y_text))
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        Xn = l2_normalize(validate_data(self, X, dtype=[np.float32, np.float64], reset=False))  # (n, D)
        d = self.probe_.decision_function(Xn)
        return np.stack([-d, d], axis=1) / 2 if d.ndim == 1 else d  # (n, C); binary: softmax([-d/2, d/2])
