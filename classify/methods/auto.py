"""``auto``: the linear probe, unless cross-validation on the labeled rows shows that another method beats it by more
than the noise of that estimate.

Whether unlabeled data helps depends on the data, and users cannot tell in advance: with EfficientNet-Lite0
features the best semi-supervised method beats the probe by 5-12 points on digits and Fashion-MNIST, and loses to it
by up to 9 points on a 12-class clip-art sample with 5 labels per class. ``auto`` measures instead of guessing.

The rule, and why:

- Candidates (default ``linear``, ``selftrain``, ``labelprop``) are scored by stratified k-fold CV over the labeled
  rows only. Each fold's held-out labels are hidden (-1) in a fit on every row, so the semi-supervised candidates see
  the unlabeled pool and the held-out rows without labels, exactly as they see test rows in a transductive fit.
  ``moe`` is not a default candidate: in the suite's tables it is within 0.1 point of ``selftrain`` (its flat model)
  at 3-5 times the fit time, and every extra candidate is one more chance to win the CV by luck.
- The first candidate (the probe) is the baseline. A challenger replaces it only when its mean paired gain over the
  rows, ``d_i = [challenger right on row i] - [baseline right on row i]``, exceeds ``z`` standard errors of that mean
  (``std(d) / sqrt(n)``); among the challengers that pass, the one of highest CV accuracy wins. Pairing by row is
  McNemar's comparison of two classifiers on the same examples, which Dietterich (1998, "Approximate statistical
  tests for comparing supervised classification learning algorithms") found to hold its error rate, unlike a t-test
  over k-fold differences. With 3 folds that t-test would have 2 degrees of freedom: its standard error would itself
  be too noisy to gate anything. The row-level standard error ignores the correlation between folds that share
  training rows, so it understates the noise somewhat.
- With a class of a single labeled row no fold can hold it out and keep it in training: nothing is
  cross-validated and the baseline is kept.

Cost: ``folds`` fits of every candidate on fewer labels, then one fit of the winner on every row. Work is shared
where it is the same fit: ``selftrain``'s default teacher is ``labelprop`` with its defaults, fitted on the same rows
and hidden labels, so in each fold the ``labelprop`` candidate is that fitted teacher rather than a second fit
(``shared_with`` in ``cv_results_``); measured on a shared machine at a median 5.5 times the fit of the slowest
candidate with the sharing and 6.5 without (``benchmarks/README.md``). Fewer folds would cost less but chose worse on
the development draws: two folds lost 0.4 points on average and 1.2 on clip art at 10 labels
(``benchmarks/results/auto-rule*-folds2.md``).

``z=0.5`` was chosen on development draws (seeds 100-109, 5 and 10 labels per class drawn from the train rows, scored
on the hidden train rows, never on test rows) of digits and clip art (224 and 112 px) with EfficientNet-Lite0 features
(``python -m benchmarks.auto_rule``, tables in ``benchmarks/results/auto-rule*.md``): ``z=1`` stayed with the probe
on 80 % of the 112 px clip-art draws at 10 labels and lost 2.6 points to self-training there; ``z=0.5`` was within
1.3 points of the best single method in every column and 0.25 points below ``z=0`` on average, keeping a margin
against a challenger that wins the CV by luck. On every one of those sets the unlabeled data helped, so the margin
is a safety choice, not a measured optimum.

The gain is measured in accuracy (``score="accuracy"``). ``score="brier"`` or ``"loglik"`` measure it instead on the
predicted probabilities (minus the Brier score, or the log-probability of the true label), far less coarse on 100
labels. On development draws (``benchmarks/results/auto-rule-scores.md``: digits, clip art at 224 and 112 px,
tuxpaint, Fashion-MNIST, 5 and 10 labels) neither was adopted: at ``z=0.5`` the Brier rule gained 1.4 points on
tuxpaint at 5 labels and 0.3 on Fashion-MNIST at 10, but kept the better-calibrated probe on 80 % of the 112 px
clip-art draws at 5 labels and lost 2.4 points there (30.9 vs 33.3 %); the log-likelihood rule lost 1.8 there and
1.5 on Fashion-MNIST at 10 labels. Both trade a calibration comparison for the accuracy one the benchmark scores.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import METHOD, FewShotClassifier, accepts_unlabeled, resolve_estimator
from classify.methods.features import UNLABELED, checked_labeled_mask
from classify.methods.registry import register_method
from store.validation import Int, ListOf, Options, Real, UserError

log = logging.getLogger(__name__)

#: the default candidates; the first is the baseline that is kept unless another beats it beyond the CV noise
DEFAULT_METHODS = ("linear", "selftrain", "labelprop")
#: the per-row scores a paired gain can be measured in (higher is better for each)
SCORES = ("accuracy", "brier", "loglik")
#: the probability floor of the log-likelihood score, so that one confident miss costs at most log(1e-4)
LOGLIK_FLOOR = 1e-4


def row_scores(proba: np.ndarray, truth: np.ndarray, hit: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row scores of out-of-fold predictions, each higher-is-better, keyed by :data:`SCORES`.

    Parameters
    ----------
    proba : ndarray of shape (n, n_classes)
        Predicted class probabilities.
    truth : ndarray of shape (n,)
        Column index of each row's true class in ``proba``.
    hit : ndarray of shape (n,)
        Whether the predicted label is the true one.

    Returns
    -------
    dict
        ``accuracy`` (1 right, 0 wrong), ``brier`` (minus the squared distance of the probabilities to the one-hot
        truth, in [-2, 0]) and ``loglik`` (log-probability of the true class, floored at :data:`LOGLIK_FLOOR`).
    """
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(truth)), truth] = 1.0
    p_true = proba[np.arange(len(truth)), truth]
    return {"accuracy": hit.astype(np.float64), "brier": -((proba - onehot) ** 2).sum(axis=1),
            "loglik": np.log(np.clip(p_true, LOGLIK_FLOOR, 1.0))}


def candidate_names(methods) -> list[str]:
    """Display names of candidates (registered names; ``#2``, ``#3`` ... on repeats), in order."""
    names = []
    for spec in methods:
        if isinstance(spec, str):
            name = spec
        elif isinstance(spec, dict):
            rest = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "method")
            name = f"{spec.get('method')}({rest})" if rest else str(spec.get("method"))
        else:
            name = getattr(type(spec), "method_name", type(spec).__name__)
        repeats = sum(1 for n in names if n == name or n.startswith(name + "#"))
        names.append(name if not repeats else f"{name}#{repeats + 1}")
    return names


def fit_candidate(estimator, X, y, labeled):
    """Fit on every row (``-1`` = unlabeled) when the estimator takes unlabeled rows, else on the labeled rows."""
    if accepts_unlabeled(estimator) or getattr(estimator, "needs_labels", True) is False:
        return estimator.fit(X, y)
    return estimator.fit(X[labeled], y[labeled])


@register_method("auto")
class AutoSelect(FewShotClassifier):
    """The default: the linear probe, or a semi-supervised method when cross-validation on the labels shows it beats
    the probe beyond the noise.

    Rows labeled ``-1`` are unlabeled; each candidate receives them as it would on its own. See the module docstring
    for the rule and why.

    Parameters
    ----------
    methods : list of str, dict or estimator, default=("linear", "selftrain", "labelprop")
        The candidates: registered method names, ``{"method": name, **params}`` or estimators (cloned before every
        fit). The first is the baseline, kept unless another candidate beats it beyond the CV noise.
    folds : int, default=3
        Maximum number of stratified folds over the labeled rows; the actual count is ``min(folds, smallest class
        count)``. Each candidate is fitted once per fold.
    z : float, default=0.5
        How many standard errors of the paired per-row gain a challenger's mean gain over the baseline must exceed
        to replace it; 0 takes the candidate of highest CV accuracy (ties keep the baseline), a large value always
        keeps the baseline.
    random_state : int, default=0
        Seeds the fold shuffle.
    score : {"accuracy", "brier", "loglik"}, default="accuracy"
        The per-row score of the paired gain: right/wrong, minus the Brier score of the predicted probabilities, or
        the log-probability of the true class (see :func:`row_scores`).

    Attributes
    ----------
    chosen_ : str
        Name of the chosen candidate (see :func:`candidate_names`).
    estimator_ : estimator
        The chosen candidate, fitted on every row.
    cv_results_ : dict
        Per candidate name: ``mean`` (out-of-fold accuracy over the labeled rows), ``std`` (standard deviation of the
        per-fold accuracies), ``gain`` and ``se`` (mean paired per-row gain over the baseline in ``score`` and its
        standard error), ``scores`` (per score of :data:`SCORES`: its ``mean``, ``gain`` and ``se``),
        ``fit_seconds`` (mean per fold), and ``shared_with`` (the candidate whose fitted teacher it was in
        every fold, when it was not fitted on its own). Empty when nothing was cross-validated.
    reason_ : str
        One line: why ``chosen_`` was chosen ("beat linear by 8.5 ± 2.5 points ..." or "no candidate beat its ...").
    n_splits_ : int
        Folds used (0 when nothing was cross-validated).
    cv_seconds_ : float
        Seconds spent cross-validating.
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    """

    _parameter_constraints = {"methods": [ListOf(METHOD)], "folds": [Int(2)], "z": [Real(0)],
                              "random_state": [Int()], "score": [Options(*SCORES)]}

    def __init__(self, methods=DEFAULT_METHODS, folds: int = 3, z: float = 0.5, random_state: int = 0,
                 score: str = "accuracy") -> None:
        self.methods = methods
        self.folds = folds
        self.z = z
        self.random_state = random_state
        self.score = score

    def fit(self, X, y) -> "AutoSelect":
        """Cross-validate every candidate on the labeled rows, choose, and refit the choice on every row.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        y : array-like of shape (n_rows,)
            Class labels; -1 marks an unlabeled row.

        Returns
        -------
        self
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        if y.dtype.kind in "US":  # a string array cannot hold the -1 that hides a fold's labels
            y = y.astype(object)
        labeled = checked_labeled_mask(y)
        names = candidate_names(self.methods)
        rows = np.flatnonzero(labeled)
        classes, counts = np.unique(y[rows], return_counts=True)
        if classes.size < 2:
            raise UserError(f"auto needs labeled rows of at least 2 classes, got {classes.size} class"
                             f"{'' if classes.size == 1 else 'es'}; label more rows (y = -1 marks unlabeled)")
        k = int(min(self.folds, counts.min()))
        t0 = time.perf_counter()
        self.cv_results_, self.n_splits_ = {}, 0
        if len(names) == 1:
            chosen, self.reason_ = 0, "the only candidate"
        elif k < 2:
            chosen, self.reason_ = 0, "a class has a single labeled row, so the candidates cannot be cross-validated"
        else:
            self.n_splits_ = k
            scores, fold_acc, seconds, shared_with = self._cross_validate(X, y, labeled, rows, k)
            chosen = self._decide(names, scores, fold_acc, seconds, shared_with)
        self.cv_seconds_ = time.perf_counter() - t0
        self.chosen_ = names[chosen]
        self.estimator_ = fit_candidate(resolve_estimator(self.methods[chosen]), X, y, labeled)
        self.classes_ = np.asarray(self.estimator_.classes_)
        log.info("auto: chose %s: %s", self.chosen_, self.reason_)
        return self

    def _cross_validate(self, X, y, labeled, rows, k):
        """Out-of-fold per-row scores (per score of :data:`SCORES`, (m, n_l)), per-fold accuracy (m, k) and summed fit
        seconds (m,) of each candidate, and which candidates were another's fitted teacher (:meth:`_shared_fit`)."""
        m, yl = len(self.methods), y[rows]
        scores = {s: np.zeros((m, rows.size)) for s in SCORES}
        fold_acc = np.zeros((m, k))
        seconds = np.zeros(m)
        shared_with: dict[int, int] = {}  # candidate -> the candidate whose fitted teacher it is, in every fold
        splits = StratifiedKFold(k, shuffle=True, random_state=self.random_state).split(rows, yl)
        for f, (_, held) in enumerate(splits):
            y_fold = y.copy()
            y_fold[rows[held]] = UNLABELED  # held-out labels hidden: those rows join the fit unlabeled
            fold_labeled = labeled.copy()
            fold_labeled[rows[held]] = False
            fitted = {}
            for i, spec in enumerate(self.methods):
                start = time.perf_counter()
                estimator = resolve_estimator(spec)
                shared = self._shared_fit(estimator, fitted)
                if shared is None:
                    estimator = fit_candidate(estimator, X, y_fold, fold_labeled)
                else:
                    shared_with[i], estimator = shared
                fitted[i] = estimator
                seconds[i] += time.perf_counter() - start
                proba = np.asarray(estimator.predict_proba(X[rows[held]]))  # (n_held, n_classes)
                column = {c: j for j, c in enumerate(estimator.classes_)}
                hit = np.asarray(estimator.classes_)[proba.argmax(axis=1)] == yl[held]
                for s, v in row_scores(proba, np.array([column[c] for c in yl[held]]), hit).items():
                    scores[s][i, held] = v
                fold_acc[i, f] = hit.mean()
        return scores, fold_acc, seconds, shared_with

    @staticmethod
    def _shared_fit(estimator, fitted: dict):
        """``(j, teacher)`` when candidate ``j``, already fitted in this fold, holds a fitted ``teacher_`` of the same
        type and parameters as ``estimator`` (selftrain's default teacher is labelprop with its defaults): that
        teacher was fitted on the same rows and hidden labels, so it is ``estimator`` fitted; else None."""
        for j, other in fitted.items():
            teacher = getattr(other, "teacher_", None)
            if type(teacher) is type(estimator) and repr(teacher.get_params()) == repr(estimator.get_params()):
                return j, teacher
        return None

    def _decide(self, names, scores, fold_acc, seconds, shared_with) -> int:
        """Index of the chosen candidate; sets ``cv_results_`` and ``reason_``."""
        n = scores["accuracy"].shape[1]
        paired = {}
        for s, v in scores.items():
            d = v - v[0]  # (m, n) paired per-row gain over the baseline
            paired[s] = (v.mean(axis=1), d.mean(axis=1), d.std(axis=1, ddof=1) / np.sqrt(n))
        acc = paired["accuracy"][0]
        _, gain, se = paired[self.score]
        self.cv_results_ = {name: {"mean": float(acc[i]), "std": float(fold_acc[i].std()), "gain": float(gain[i]),
                                   "se": float(se[i]), "fit_seconds": float(seconds[i] / fold_acc.shape[1]),
                                   "scores": {s: {"mean": float(m[i]), "gain": float(g[i]), "se": float(e[i])}
                                              for s, (m, g, e) in paired.items()}}
                            for i, name in enumerate(names)}
        for i, j in shared_with.items():
            self.cv_results_[names[i]]["shared_with"] = names[j]
        passing = [i for i in range(1, len(names)) if gain[i] > self.z * se[i]]
        where = f"{self.n_splits_}-fold CV on {n} labeled rows"
        sigma = f"{self.z:g} standard error{'s' if self.z != 1 else ''}"
        if self.score == "accuracy":  # gains in points, as the reasons always read
            unit, sigma_unit, gain_unit = "points", "", " points"
            shown = lambda v, sign="": f"{100 * v:{sign}.1f}"  # noqa: E731
        else:
            unit = f"in per-row {self.score}"
            sigma_unit, gain_unit = " " + unit, ""
            shown = lambda v, sign="": f"{v:{sign}.3f}"  # noqa: E731
        if passing:
            best = max(passing, key=lambda i: (gain[i], -i))  # for accuracy: the highest CV accuracy
            self.reason_ = (f"beat {names[0]} by {shown(gain[best])} ± {shown(se[best])} {unit} "
                            f"({100 * acc[best]:.1f} vs {100 * acc[0]:.1f} % accuracy, {where}), more than {sigma}")
            return best
        closest = max(range(1, len(names)), key=lambda i: (gain[i] - self.z * se[i], -i))
        self.reason_ = (f"no candidate beat its {100 * acc[0]:.1f} % accuracy ({where}) by more than {sigma}"
                        f"{sigma_unit}; closest {names[closest]} {shown(gain[closest], '+')} ± {shown(se[closest])}"
                        f"{gain_unit}")
        return 0

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of the chosen candidate, shape (n, len(classes_))."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return np.asarray(self.estimator_.predict_proba(X))

    def describe(self) -> dict:
        """What was chosen and why, JSON-able: ``chosen``, ``reason``, ``folds``, ``z``, ``score``, ``candidates``
        (``cv_results_``); the evaluation results and benchmark records carry it under the method's name."""
        check_is_fitted(self)
        return {"chosen": self.chosen_, "reason": self.reason_, "folds": int(self.n_splits_), "z": float(self.z),
                "score": self.score, "candidates": self.cv_results_}
