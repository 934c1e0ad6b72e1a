"""Pseudo-label self-training: a teacher labels the unlabeled rows, a selection rule keeps some, a head learns them.

Defaults (balanced selection of an equal share of the pool per class, one round, hard labels, pseudo weight 1,
logistic head with C=3 on 256 PCA dims) were chosen on development seeds, never on test rows
(``python -m benchmarks.quality_bar --sweep selftrain``).

Round 1 takes the teacher's class probabilities of the unlabeled rows (a transductive teacher such as
``labelprop`` gives its transductive ``label_distributions_``); round r > 1 takes the previous round's head.
Each round selects pseudo-labels (``classify.methods.thresholds``) and fits a fresh head on the labeled rows (weight 1)
plus the selected rows (weight ``pseudo_weight``, hard arg-max labels or the soft distribution). ``rounds=0`` is
the teacher alone.

Design choice: later rounds re-label with the *head*, not a re-fitted teacher. Re-fitting a transductive teacher
on its own pseudo-labels (same graph, same features) only re-propagates what it already said, whereas the head
is a different, inductive model whose errors differ from the teacher's.
"""
from __future__ import annotations

import logging
import numbers
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, has_fit_parameter, validate_data

from classify.methods.base import METHOD, FewShotClassifier, accepts_unlabeled, resolve_estimator
from classify.methods.features import align_proba, checked_labeled_mask, single_threaded_blas
from classify.methods.labelprop import KNNLabelPropagation
from classify.methods.registry import persistable, register_method
from classify.methods.thresholds import (ClassAwareThresholds, balanced_topk_mask, classaware_pool_mask,
                                         fixed_threshold_mask)
from classify.methods.transform import FeatureTransform
from store.validation import BOOL, NONE, Int, Options, Real, UserError

log = logging.getLogger(__name__)

SELECTIONS = ("fixed", "classaware", "balanced", "all")


@persistable
class LogisticHead(FewShotClassifier):
    """Multinomial logistic regression on transformed, L2-normalised features; accepts ``sample_weight``.

    The default head of ``selftrain``. Features go through :class:`~classify.methods.transform.FeatureTransform`
    (signed power, centring, optional PCA) fitted on the training rows, then L2 normalisation.

    Parameters
    ----------
    C : float, default=3.0
        Inverse L2 regularisation strength of :class:`~sklearn.linear_model.LogisticRegression`.
    feature_power : float or None, default=0.5
        Signed power normalisation of the raw features (0.5 = signed square root); None skips.
    center : bool, default=True
        Centre on the mean of the training rows.
    n_components : int or None, default=256
        PCA dimensions (not whitened); None keeps every dimension. 256 halves the fit time on 1280-d features at
        the same dev accuracy.
    max_iter : int, default=300
        Maximum iterations of the lbfgs solver of :class:`~sklearn.linear_model.LogisticRegression`; a fit that
        hits it stops unconverged (sklearn warns).
    tol : float, default=1e-4
        Stopping tolerance of that solver (``LogisticRegression(tol=...)``): lbfgs stops once the largest
        projected-gradient component falls below it.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    transform_ : FeatureTransform
    lr_ : LogisticRegression
    n_iter_ : ndarray of shape (1,)
    n_features_in_ : int
    """

    _parameter_constraints = {"C": [Real(0, low_open=True)], "feature_power": [NONE, Real(0, low_open=True)],
                              "center": [BOOL], "n_components": [NONE, Int(1)], "max_iter": [Int(1)],
                              "tol": [Real(0, low_open=True)]}

    def __init__(self, C: float = 3.0, feature_power: float | None = 0.5, center: bool = True,
                 n_components: int | None = 256, max_iter: int = 300, tol: float = 1e-4) -> None:
        self.C = C
        self.feature_power = feature_power
        self.center = center
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y, sample_weight=None) -> "LogisticHead":
        """Fit on rows ``X`` (n, D) with labels ``y`` (n,) and optional per-row weights (n,)."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != (len(y),) or not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
                raise UserError(f"sample_weight must be {len(y)} finite non-negative numbers (one per row), got "
                                 f"shape {sample_weight.shape}")
        with single_threaded_blas():
            self.transform_ = FeatureTransform(self.feature_power, self.center, self.n_components)
            Z = self.transform_.fit_transform(X, sample_weight)  # (n, d)
            self.lr_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
            self.lr_.fit(Z, y, sample_weight=sample_weight)
        self.classes_ = self.lr_.classes_
        self.n_iter_ = self.lr_.n_iter_
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns follow ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        with single_threaded_blas():
            return self.lr_.predict_proba(self.transform_.transform(X))


def _fit_weighted(estimator, X, y, weight):
    """Fit ``estimator`` passing ``weight`` as sample weights (to a Pipeline's last step); omitted when all ones."""
    if np.all(weight == 1.0):
        return estimator.fit(X, y)
    if isinstance(estimator, Pipeline):
        return estimator.fit(X, y, **{f"{estimator.steps[-1][0]}__sample_weight": weight})
    if has_fit_parameter(estimator, "sample_weight"):
        return estimator.fit(X, y, sample_weight=weight)
    raise UserError(f"head {type(estimator).__name__} does not accept sample_weight, which labels='soft' or "
                     "pseudo_weight != 1 need; use labels='hard' with pseudo_weight=1.0, or a head whose fit takes "
                     "sample_weight (the default head does)")


@register_method("selftrain")
class SelfTraining(FewShotClassifier):
    """Self-training of a head on a teacher's pseudo-labels, with fixed, class-aware or class-balanced selection.

    Rows with ``y == -1`` are unlabeled. See the module docstring for the round structure.

    Parameters
    ----------
    teacher : estimator, str or None, default=None
        Produces the round-1 probabilities. None is ``labelprop`` with its defaults; a string names a registered
        method. Cloned before fitting. This suite's methods and sklearn's semi-supervised estimators are fitted
        on every row (``-1`` = unlabeled); any other estimator on the labeled rows only. Wrap an already fitted
        teacher (e.g. zero-shot) in :class:`sklearn.frozen.FrozenEstimator` to keep it as is.
    head : estimator or None, default=None
        Trained each round on labeled + pseudo-labeled rows; None is :class:`LogisticHead`. Soft labels or
        ``pseudo_weight != 1`` need a head whose ``fit`` takes ``sample_weight`` (or a Pipeline whose last step
        does). Cloned each round.
    selection : {"fixed", "classaware", "balanced", "all"}, default="balanced"
        "fixed": top probability >= ``threshold`` (starves classes the teacher is unsure about);
        "classaware": per-class thresholds adapted by :class:`~classify.methods.thresholds.ClassAwareThresholds`
        (``classaware_steps`` updates on the whole pool per round, starting from ``tau0``; the state carries over
        between rounds). On a static pool the rule oscillates by ``eps`` around its equilibrium, so a row is kept
        when it passes its class's *lowest* threshold of the last ``ceil(1 / (1 - ema))`` steps (the EMA's
        memory) rather than the last step's. The rule equalises class shares but does not set the total: from
        ``tau0`` above every confidence it settles at about the single most confident row per class, so a low
        ``tau0`` is what gives a large selection. "balanced": the ``per_class_k`` most confident rows of each
        predicted class; "all": every unlabeled row.
    threshold : float, default=0.98
        Fixed threshold (and the class-aware start when ``tau0`` is None).
    tau0 : float or None, default=0.5
        Initial class-aware thresholds; None uses ``threshold``. Sets the size of the class-aware selection
        (see ``selection``): 0.5 was chosen on dev seeds with the labelprop teacher (0.98 and 0.7 kept a few rows
        per class, 0.5 and 0.3 thousands).
    ema : float in [0, 1), default=0.9
        ``selection="classaware"`` only: momentum of the
        :class:`~classify.methods.thresholds.ClassAwareThresholds` moving
        average of each class's share of the pseudo-labels (``share = ema * share + (1 - ema) * step share``). It
        also sets the window of recent thresholds a row may pass, ``ceil(1 / (1 - ema))`` steps (10 for 0.9).
    eps : float, default=0.001
        ``selection="classaware"`` only: how far every class threshold moves per class-aware step, up while its
        class is over-represented among the pseudo-labels relative to ``target``, down while under-represented
        (clipped to [0, 1]); 0 keeps the thresholds at ``tau0``.
    classaware_steps : int, default=1000
        Class-aware updates per round (each on the whole unlabeled pool). 1000 steps of 0.001 let a threshold
        cross the whole [0, 1] range in one round.
    target : {"labeled", "uniform"}, default="labeled"
        Class-aware target ratio: the labeled class prior (uniform when some class has no labeled row) or uniform.
    per_class_k : int or float, default=1.0
        Balanced selection size: an int is rows per class; a float in (0, 1] is a fraction of
        ``n_unlabeled / n_classes`` (1.0 = an equal share of the pool per class).
    rounds : int, default=1
        Self-training rounds; 0 is the teacher alone.
    labels : {"hard", "soft"}, default="hard"
        "hard": each selected row counts once with its arg-max class. "soft": each selected row counts once per
        class with probability >= ``min_soft``, weighted by that (renormalised) probability: the head's weighted
        cross-entropy is then exactly the cross-entropy against that soft distribution, for any head that takes
        ``sample_weight``. Soft labels from labelprop were about a point worse than hard ones on dev seeds.
    pseudo_weight : float, default=1.0
        Weight of a pseudo-labeled row relative to a labeled row (1).
    min_soft : float, default=0.05
        Soft-label entries below this are dropped before renormalising (keeps the expanded training set small:
        every kept entry is one more training row).
    random_state : int or None, default=None
        Passed to teacher and head when they take a ``random_state`` (left as is when None).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The teacher's classes (a superset of the labeled ones, e.g. every zero-shot class).
    teacher_ : estimator
    head_ : estimator or None
        The last round's head (None when ``rounds=0``).
    pseudo_counts_ : ndarray of shape (rounds, n_classes), int
        Pseudo-labels selected per round and class.
    thresholds_ : ndarray of shape (n_classes,) or None
        Final class-aware thresholds (None for other selections).
    fit_report_ : dict
        JSON-able account of the fit: per round the selected count per class, thresholds, starved classes.
    n_features_in_ : int
    """

    _parameter_constraints = {"teacher": [NONE, METHOD], "head": [NONE, METHOD], "selection": [Options(*SELECTIONS)],
                              "threshold": [Real(0, 1)], "tau0": [NONE, Real(0, 1)], "ema": [Real(0, 1)],
                              "eps": [Real(0)], "classaware_steps": [Int(0)], "target": [Options("labeled", "uniform")],
                              "per_class_k": [Int(1), Real(0, 1, low_open=True)], "rounds": [Int(0)],
                              "labels": [Options("hard", "soft")], "pseudo_weight": [Real(0)],
                              "min_soft": [Real(0, 1)], "random_state": [NONE, Int()]}

    def __init__(self, teacher=None, head=None, selection: str = "balanced", threshold: float = 0.98,
                 tau0: float | None = 0.5, ema: float = 0.9, eps: float = 0.001, classaware_steps: int = 1000,
                 target: str = "labeled", per_class_k: float = 1.0, rounds: int = 1, labels: str = "hard",
                 pseudo_weight: float = 1.0, min_soft: float = 0.05, random_state: int | None = None) -> None:
        self.teacher = teacher
        self.head = head
        self.selection = selection
        self.threshold = threshold
        self.tau0 = tau0
        self.ema = ema
        self.eps = eps
        self.classaware_steps = classaware_steps
        self.target = target
        self.per_class_k = per_class_k
        self.rounds = rounds
        self.labels = labels
        self.pseudo_weight = pseudo_weight
        self.min_soft = min_soft
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    @property
    def needs_labels(self) -> bool:
        """False when the teacher needs no labels (zeroshot, conse): self-training then starts from none."""
        teacher = self.teacher
        if isinstance(teacher, str):
            from classify.methods.registry import get

            teacher = get(teacher)
        return teacher is None or getattr(teacher, "needs_labels", True) is not False

    def _build(self, spec, default):
        est = resolve_estimator(spec, default)
        if self.random_state is not None and "random_state" in est.get_params(deep=False):
            est.set_params(random_state=self.random_state)
        return est

    def _k(self, n_unlabeled: int, n_classes: int) -> int:
        k = self.per_class_k
        if isinstance(k, numbers.Integral):
            return int(k)
        return max(1, int(round(k * n_unlabeled / n_classes)))

    def _select(self, proba: np.ndarray, thresholds: ClassAwareThresholds | None) -> tuple[np.ndarray, dict]:
        """Boolean mask (n_u,) of kept rows and the JSON-able selection details."""
        n_u, n_classes = proba.shape
        if self.selection == "fixed":
            return fixed_threshold_mask(proba, self.threshold), {"threshold": float(self.threshold)}
        if self.selection == "classaware":
            return classaware_pool_mask(proba, thresholds, self.classaware_steps)
        if self.selection == "balanced":
            k = self._k(n_u, n_classes)
            return balanced_topk_mask(proba, k), {"k": k}
        return np.ones(n_u, dtype=bool), {}

    def _training_set(self, Xl, yl, Xu, proba, mask):
        """Labeled rows plus selected pseudo-labeled rows: X (m, D), y (m,), weights (m,)."""
        ps = proba[mask]  # (s, C)
        if self.labels == "hard":
            X = np.concatenate([Xl, Xu[mask]])  # one copy
            y = np.concatenate([yl, self.classes_[ps.argmax(axis=1)]])
            return X, y, np.concatenate([np.ones(len(yl)), np.full(len(ps), float(self.pseudo_weight))])
        else:
            q = np.where(ps >= self.min_soft, ps, 0.0)
            q[np.arange(len(q)), ps.argmax(axis=1)] = np.maximum(ps.max(axis=1), 1e-12)  # never drop a whole row
            q /= q.sum(axis=1, keepdims=True)
            rows, cols = np.nonzero(q)
            w = float(self.pseudo_weight) * q[rows, cols]
        X = np.concatenate([Xl, Xu[np.flatnonzero(mask)[rows]]])
        y = np.concatenate([yl, self.classes_[cols]])
        weight = np.concatenate([np.ones(len(yl)), w])
        return X, y, weight

    def _proba(self, model, X) -> np.ndarray:
        return align_proba(model.predict_proba(X), model.classes_, self.classes_)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X, y) -> "SelfTraining":
        """Fit the teacher, then ``rounds`` rounds of pseudo-labeling and head training.

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
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        labeled = checked_labeled_mask(y)
        t0 = time.perf_counter()
        teacher, transductive = self._fit_teacher(X, y, labeled)
        Xl, yl, Xu = X[labeled], y[labeled], X[~labeled]
        thresholds = self._thresholds(yl)
        report = {"method": "selftrain", "selection": self.selection, "labels": self.labels,
                  "rounds": int(self.rounds), "teacher": type(teacher).__name__,
                  "teacher_fit_rows": "all" if transductive else "labeled",
                  "classes": [c.item() if hasattr(c, "item") else c for c in self.classes_],
                  "n_labeled": int(labeled.sum()), "n_unlabeled": len(Xu), "per_round": [], "warnings": []}
        self.pseudo_counts_ = np.zeros((self.rounds, len(self.classes_)), dtype=np.int64)
        model, head = teacher, None
        for r in range(self.rounds):
            if r == 0 and len(Xu) and transductive and getattr(teacher, "label_distributions_", None) is not None \
                    and len(teacher.label_distributions_) == len(y):
                proba = align_proba(np.asarray(teacher.label_distributions_)[~labeled], teacher.classes_,
                                    self.classes_)  # (n_u, C) transductive answer
            else:
                proba = self._proba(model, Xu) if len(Xu) else np.zeros((0, len(self.classes_)))  # (n_u, C)
            model = head = self._round(r, Xl, yl, Xu, proba, thresholds, report)
        self.head_ = head
        self.thresholds_ = None if thresholds is None else thresholds.thresholds.copy()
        report["fit_seconds"] = round(time.perf_counter() - t0, 3)
        self.fit_report_ = report
        return self

    def _fit_teacher(self, X, y, labeled):
        """Fit the teacher (on every row when it is transductive or label-free); sets ``teacher_`` and ``classes_``."""
        teacher = self._build(self.teacher, KNNLabelPropagation)
        label_free = getattr(teacher, "needs_labels", True) is False  # zeroshot, conse: pseudo-labels from nothing
        if not labeled.any() and not label_free:
            raise UserError("selftrain needs at least one labeled row (y != -1), or a teacher that needs none "
                             "(teacher='zeroshot' or 'conse')")
        transductive = accepts_unlabeled(teacher) or label_free
        if transductive:
            teacher.fit(X, y)
        else:
            teacher.fit(X[labeled], y[labeled])
        self.teacher_ = teacher
        self.classes_ = np.asarray(teacher.classes_)
        unknown = np.setdiff1d(np.unique(y[labeled]), self.classes_)
        if unknown.size:
            raise UserError(f"labels {unknown.tolist()} are not among the teacher's classes "
                             f"{self.classes_.tolist()}; give the teacher every class")
        return teacher, transductive

    def _thresholds(self, yl) -> ClassAwareThresholds | None:
        """The class-aware thresholds (``selection="classaware"``), targeting the labeled class prior."""
        if self.selection != "classaware":
            return None
        target = None
        if self.target == "labeled":
            counts = np.array([(yl == c).sum() for c in self.classes_], dtype=np.float64)
            if np.all(counts > 0):
                target = counts
            else:
                log.warning("selftrain: %d classes have no labeled row; class-aware target is uniform",
                            int((counts == 0).sum()))
        tau0 = self.threshold if self.tau0 is None else self.tau0
        return ClassAwareThresholds(len(self.classes_), tau0=tau0, ema=self.ema, eps=self.eps, target=target)

    def _round(self, r: int, Xl, yl, Xu, proba, thresholds, report: dict):
        """Select pseudo-labels from ``proba`` (n_u, C), fit a fresh head on labeled + selected rows; report it."""
        n_u, n_classes = proba.shape
        mask, details = self._select(proba, thresholds) if n_u else (np.zeros(0, dtype=bool), {})
        counts = np.bincount(proba[mask].argmax(axis=1), minlength=n_classes) if n_u else np.zeros(n_classes, int)
        self.pseudo_counts_[r] = counts
        starved = [report["classes"][c] for c in np.flatnonzero(counts == 0)]
        if starved and n_u:
            why = {"fixed": f"; no confidence reached threshold={self.threshold} (try selection='classaware' "
                            f"or 'balanced')",
                   "classaware": "; no row reached its class threshold (raise classaware_steps or lower tau0)",
                   "balanced": "; the teacher predicts none of the pool as these classes",
                   "all": "; the teacher predicts none of the pool as these classes"}[self.selection]
            msg = f"round {r + 1}: no pseudo-labels for class(es) {starved} under selection={self.selection!r}{why}"
            log.warning("selftrain: %s", msg)
            report["warnings"].append(msg)
        head = self._build(self.head, LogisticHead)
        _fit_weighted(head, *self._training_set(Xl, yl, Xu, proba, mask))
        unknown = np.setdiff1d(head.classes_, self.classes_)
        assert unknown.size == 0, f"head learned classes outside classes_: {unknown}"
        report["per_round"].append({"round": r + 1, "source": "teacher" if r == 0 else "head",
                                    "n_selected": int(mask.sum()),
                                    "counts": {str(c): int(n) for c, n in zip(report["classes"], counts)},
                                    "starved": starved, **details})
        log.info("selftrain round %d: %d of %d unlabeled rows selected (%s), per class %s", r + 1,
                 int(mask.sum()), n_u, self.selection, counts.tolist())
        return head

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities from the last head (the teacher when ``rounds=0``).

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
        return self._proba(self.teacher_ if self.head_ is None else self.head_, X)
