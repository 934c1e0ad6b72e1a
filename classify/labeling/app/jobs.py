"""The background work of a labeling session, on a snapshot of the labels taken when the work was asked for, so that
answering never waits for it: the next batch (``suggest``'s pick: the method fitted on the labels so far), the
cross-validated accuracy of the method on those labels, and ``audit``'s suspected wrong labels. One worker thread runs
them in turn (:class:`Worker`).

On a large pool the pick and the accuracy fit on every label plus a seeded subsample of at most :data:`FIT_CAP`
unlabeled rows (:class:`CappedFit`): semi-supervised methods (and ``auto``, which cross-validates them) cost time in
proportion to the rows they fit, and a few ten thousand unlabeled rows already carry the pool's structure. The pick
still scores every pool row with the fitted estimator's ``predict_proba``. The audit (asked for, not run after each
batch) fits on every row, as ``classify audit`` does.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sklearn.base import BaseEstimator, ClassifierMixin

from classify import pipeline
from classify.labeling.audit import MIN_AGREEMENT, audit_arrays, out_of_fold_proba
from classify.labeling.selection import duplicate_free
from classify.labeling.suggest import suggest_arrays
from classify.methods.features import UNLABELED
from store.validation import UserError, one_line

log = logging.getLogger(__name__)

#: folds of the accuracy shown after each batch (``auto`` reports its own cross-validation, 3 folds by default)
CV_FOLDS = 3
#: folds of the audit, as ``classify audit``'s default
AUDIT_FOLDS = 5
#: unlabeled rows that join a fit of the pick and accuracy jobs at most (a seeded subsample beyond it)
FIT_CAP = 20_000


def fit_rows(y: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """(k,) sorted row indices a capped fit sees: every labeled row and at most ``cap`` unlabeled rows, drawn with
    ``seed`` (all of them when there are no more)."""
    unlabeled = np.flatnonzero(y == UNLABELED)
    if unlabeled.size > cap:
        unlabeled = np.random.default_rng(seed).choice(unlabeled, cap, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(y != UNLABELED), unlabeled]))


class CappedFit(ClassifierMixin, BaseEstimator):
    """``estimator`` fitted on every labeled row and at most ``cap`` unlabeled rows (:func:`fit_rows`); it predicts
    any row. Fitted attributes of the inner estimator (``auto``'s ``cv_results_``, ``chosen_``...) are read through.

    Parameters
    ----------
    estimator : estimator
        Cloned and fitted on the capped rows.
    cap : int
        Unlabeled rows in the fit at most.
    seed : int
        Seeds the subsample.
    """

    def __init__(self, estimator=None, cap: int = FIT_CAP, seed: int = 0):
        self.estimator, self.cap, self.seed = estimator, cap, seed

    def fit(self, X, y):
        from sklearn.base import clone

        y = np.asarray(y)
        rows = fit_rows(y, self.cap, self.seed)
        self.estimator_ = clone(self.estimator).fit(np.asarray(X)[rows], y[rows])
        self.classes_ = self.estimator_.classes_
        self.n_fit_rows_ = int(rows.size)
        return self

    def predict_proba(self, X):
        return self.estimator_.predict_proba(X)

    def predict(self, X):
        return self.estimator_.predict(X)

    def __getattr__(self, name):
        if name.endswith("_") and not name.startswith("__") and "estimator_" in self.__dict__:
            return getattr(self.__dict__["estimator_"], name)
        raise AttributeError(name)


def capped(method: str, params: dict | None, context: dict, seed: int):
    """The method as the pick and accuracy jobs fit it (:class:`CappedFit` at :data:`FIT_CAP`)."""
    return CappedFit(pipeline.build(method, params, context), FIT_CAP, seed)


@dataclass
class Snapshot:
    """The labels at one moment, with what the methods need (arrays are copies; ``X`` is shared, never written)."""

    X: np.ndarray  # (n, D)
    y: np.ndarray  # (n,) fit labels, -1 unlabeled
    candidates: np.ndarray  # (n,) bool: rows a batch may show (the pool less skipped images)
    keys: np.ndarray  # (n,) file sha256
    classes: list[str]
    context: dict
    version: int  # the session's answer count when taken

    @property
    def n_labels(self) -> int:
        return int((self.y != UNLABELED).sum())


def pick_batch(snap: Snapshot, method: str, params: dict | None, size: int, seed: int):
    """The next batch: ``suggest``'s diverse pick (:func:`classify.labeling.suggest.suggest_arrays`) with the method
    fitted on the labels so far; a seeded random draw while fewer than two classes have labels (no method can be
    fitted yet).

    Returns
    -------
    items : list of dict
        ``pos`` (row position), ``predicted`` (class name or ""), ``score``, ``reason``; empty when nothing is left.
    note : str
        One line on how the batch was chosen.
    estimator : estimator or None
        The method as fitted for the pick (``auto`` carries its cross-validation), None for a random draw.
    """
    labeled = snap.y != UNLABELED
    open_rows = duplicate_free(snap.candidates & ~labeled, snap.keys, labeled)  # never a copy of a labeled image
    budget = int(min(size, open_rows.sum()))
    if budget == 0:
        return [], "every image of the pool is labeled (or skipped)", None
    if np.unique(snap.y[labeled]).size < 2:
        picked = np.random.default_rng(seed + snap.version).choice(np.flatnonzero(open_rows), budget, replace=False)
        note = "a random batch: fewer than two classes have labels, so no method can be fitted yet"
        return [{"pos": int(i), "predicted": "", "score": 0.0, "reason": "random draw"} for i in picked], note, None
    estimator = capped(method, params, snap.context, seed)
    sel = suggest_arrays(snap.X, snap.y, budget, estimator, None, seed, open_rows, "diverse", snap.keys, None,
                         snap.classes)
    items = [{"pos": int(i), "predicted": snap.classes[int(c)], "score": float(s), "reason": r}
             for i, c, s, r in zip(sel.index, sel.predicted, sel.score, sel.reason)]
    return items, f"the {budget} images {method} is least sure about, one per group of look-alikes", estimator


def accuracy(snap: Snapshot, estimator, method: str, params: dict | None, seed: int) -> dict:
    """The cross-validated accuracy of the method on the labels of ``snap``: ``auto``'s own cross-validation of the
    candidate it chose, else stratified out-of-fold predictions (each fold's labels hidden in a fit on every row).

    Returns
    -------
    dict
        ``labels`` (count), ``accuracy`` (fraction, or None when it cannot be measured), ``detail`` (one line).
    """
    n = snap.n_labels
    result = {"labels": n, "accuracy": None}
    if estimator is not None and hasattr(estimator, "cv_results_"):  # auto: its cross-validation is the measure
        if not estimator.n_splits_:
            return {**result, "detail": f"not measured: {estimator.reason_}"}
        chosen = estimator.cv_results_[estimator.chosen_]
        return {**result, "accuracy": chosen["mean"],
                "detail": f"{estimator.n_splits_}-fold CV of {estimator.chosen_} (auto's choice) on {n} labels"}
    if np.unique(snap.y[snap.y != UNLABELED]).size < 2:
        return {**result, "detail": "not measured: fewer than two classes have labels"}
    try:
        labeled, proba, classes, k = out_of_fold_proba(snap.X, snap.y, capped(method, params, snap.context, seed),
                                                       CV_FOLDS, seed, snap.classes)
    except UserError as err:
        return {**result, "detail": f"not measured: {err}"}
    hits = classes[proba.argmax(axis=1)] == snap.y[labeled]
    return {**result, "accuracy": float(hits.mean()), "detail": f"{k}-fold CV of {method} on {n} labels"}


def audit(snap: Snapshot, method: str, params: dict | None, seed: int) -> dict:
    """``audit``'s suspected wrong labels (:func:`classify.labeling.audit.audit_arrays`) among the train labels.

    Returns
    -------
    dict
        ``items`` (flagged rows, most suspect first: ``pos``, ``given``, ``suggested``, ``score`` = cleanlab's label
        quality, lower = worse), ``agreement``, ``note`` (one line), ``version``.
    """
    result = audit_arrays(snap.X, snap.y, method, params, AUDIT_FOLDS, seed, snap.context, snap.classes)
    items = [{"pos": int(i), "given": snap.classes[int(g)], "suggested": snap.classes[int(s)], "score": float(q)}
             for i, g, s, q, f in zip(result.index, result.given, result.suggested, result.label_quality,
                                      result.is_label_issue)
             if f]
    how = f"{result.folds}-fold out-of-fold {method}, agreeing with {100 * result.agreement:.0f} % of the labels"
    if result.judged:
        note = f"{len(items)} of {result.index.size} labels look wrong ({how}); score: cleanlab's label quality"
    else:
        note = (f"no label flagged ({how}): the out-of-fold predictions agree with under {100 * MIN_AGREEMENT:.0f} % "
                "of the labels, too few to tell a wrong label from the model's own mistakes; add labels first")
    return {"items": items, "agreement": result.agreement, "note": note, "version": snap.version}


class Worker:
    """One background thread running jobs in turn; each job's result (or its one-line error) goes to its callback.

    Parameters
    ----------
    on_error : callable
        ``on_error(job name, one-line message)`` for a job that raised.
    """

    def __init__(self, on_error: Callable[[str, str], None]):
        self._jobs: queue.Queue = queue.Queue()
        self._on_error = on_error
        self.running: str | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="label-refit", daemon=True)
        self._thread.start()

    def submit(self, name: str, job: Callable[[], object], done: Callable[[object], None]) -> None:
        """Queue ``job`` (no arguments); ``done(result)`` runs on the worker thread when it returns."""
        with self._lock:
            self._pending.append(name)
        self._jobs.put((name, job, done))

    def busy(self) -> list[str]:
        """Names of the running and queued jobs."""
        with self._lock:
            return list(self._pending)

    def _loop(self) -> None:
        while True:
            name, job, done = self._jobs.get()
            start = time.perf_counter()
            try:
                done(job())
                log.info("%s took %.2f s", name, time.perf_counter() - start)
            except (UserError, ValueError) as err:
                log.info("%s failed: %s", name, err)
                self._on_error(name, one_line(err))
            except Exception as err:  # a bug: keep the thread alive, say it on the page, keep the traceback in the log
                log.exception("%s failed", name)
                self._on_error(name, f"{type(err).__name__}: {one_line(err)}")
            finally:
                with self._lock:
                    self._pending.remove(name)
