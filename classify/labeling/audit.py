"""Which given labels look wrong: out-of-fold probabilities, cleanlab's label quality, and a flag only where the
evidence supports one.

Every labeled row gets a probability from a model that did not see its label: stratified K-fold over the labeled
rows, each fold fitting the method transductively on every row with the held-out labels hidden (as
:func:`classify.evaluation.cross_val_predictions` does). Each label then gets cleanlab's ``label_quality``
(``get_label_quality_scores``, self-confidence: the out-of-fold probability of the given label; lower = worse) and
the rows are ranked by it, lowest first, as cleanlab ranks label issues (self-confidence put more planted flips on
top than the normalized margin on Fashion-MNIST in ``python -m benchmarks audit``, as many elsewhere).

As cleanlab does with an estimated number of issues, the flags are the top of that ranking: the ``n`` lowest labels
(``is_label_issue``), where ``n`` counts the labels the out-of-fold evidence says are wrong:

- another class leads the given one by at least as much as the model typically leads with the given label where it
  agrees with it (the median lead over those rows), and by at least :data:`MIN_LEAD`: a pooled form of confident
  learning's per-class threshold (Northcutt et al. 2021, a class's mean self-confidence), which with 5 to 10 labels
  per class rests on too few rows per class: on the out-of-fold probabilities of ``python -m benchmarks audit``,
  cleanlab's ``find_label_issues`` flagged 2.5 times as many labels as were flipped on Fashion-MNIST (precision
  0.33), the pooled count a third of that (precision 0.85), and on digits it found more of the flips;
- and only when the model is strong enough to judge: it agrees with at least :data:`MIN_AGREEMENT` (half) of the
  given labels. Below that it is wrong more often than right, most of its disagreements are its own mistakes (on the
  21-class clip-art set, 5 to 10 labels per class, agreement 0.2 to 0.4, at most one flag in five was a flipped
  label): nothing is flagged, the command and the page say so, and the ranking (``--all-rows``) is there to read by
  eye.

A label the model agrees with is never flagged. cleanlab is used rather than rewritten: it is the reference
implementation, depends only on numpy, scikit-learn, pandas, tqdm and termcolor, and imports in well under a second.

Python API: :func:`audit_arrays` over ``X``, ``y`` (``-1`` unlabeled), :func:`audit_store` over a feature store,
:func:`audit_command` (writes the CSV, says what it found) and :func:`sheet_groups` (the HTML contact sheet's groups).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from classify import pipeline
from classify.labeling.suggest import _backbone, image_paths, write_csv
from classify.methods.features import UNLABELED, align_proba
from store import FeatureStore, display_id
from store.validation import UserError

log = logging.getLogger(__name__)

CSV_COLUMNS = ("rank", "id", "path", "given", "suggested", "label_quality", "is_label_issue")
#: below this out-of-fold agreement with the given labels, nothing is flagged: the model is too weak to judge
MIN_AGREEMENT = 0.5
#: a flagged label's out-of-fold probability trails another class's by at least this much, whatever the model's habit
MIN_LEAD = 0.1


@dataclass
class Audit:
    """Labeled rows ranked by cleanlab's label quality, lowest (most likely wrong) first.

    Attributes
    ----------
    index : ndarray of shape (n_labeled,)
        Row indices into ``X``, lowest label quality first (ties by row).
    given, suggested : ndarray of shape (n_labeled,)
        The given label and the most probable out-of-fold class of each row.
    label_quality : ndarray of shape (n_labeled,)
        cleanlab's self-confidence, the out-of-fold probability of the given label, in [0, 1]: lower = worse.
    is_label_issue : ndarray of shape (n_labeled,) bool
        Labels the out-of-fold evidence says are wrong (see the module docstring): the first
        ``is_label_issue.sum()`` rows; none when ``judged`` is False.
    proba : ndarray of shape (n_labeled, C)
        Out-of-fold probabilities in ranking order, columns following ``classes``.
    classes : ndarray of shape (C,)
    folds : int
        The folds used.
    agreement : float
        Share of the labeled rows whose given label is the out-of-fold prediction.
    judged : bool
        Whether ``agreement`` reached :data:`MIN_AGREEMENT`, so that flags were given.
    lead : float
        How far another class must lead the given one for a label to count as wrong.
    """

    index: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    label_quality: np.ndarray
    is_label_issue: np.ndarray
    proba: np.ndarray
    classes: np.ndarray
    folds: int
    agreement: float
    judged: bool
    lead: float


def _check_counts(y_labeled: np.ndarray, class_names: Sequence[str] | None) -> None:
    classes, counts = np.unique(y_labeled, return_counts=True)
    if classes.size < 2:
        raise UserError("the audit needs labeled images of at least 2 classes (it asks which class each belongs to)")
    lonely = classes[counts < 2]
    if lonely.size:
        shown = [str(class_names[int(c)]) if class_names is not None else str(c) for c in lonely[:5]]
        raise UserError(f"class{'es' if lonely.size > 1 else ''} {', '.join(shown)}"
                         f"{' …' if lonely.size > 5 else ''} {'have' if lonely.size > 1 else 'has'} a single labeled "
                         "image; the audit's cross-validation needs at least 2 per class: label another, or leave the "
                         "class out")


def out_of_fold_proba(X: np.ndarray, y: np.ndarray, estimator, folds: int = 5, seed: int = 0,
                      class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Out-of-fold probabilities of the labeled rows.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    y : ndarray of shape (n,)
        Labels, ``-1`` unlabeled (unlabeled rows join every fit, transductively).
    estimator : sklearn estimator
        Cloned for each fold.
    folds : int
        At most this many folds (fewer when a class has fewer labels), at least 2.
    seed : int
        Seeds the fold assignment.
    class_names : sequence of str, optional
        For the error naming a class with a single label.

    Returns
    -------
    labeled : ndarray of shape (m,)
        Row indices of the labeled rows.
    proba : ndarray of shape (m, C)
        Each labeled row's probabilities from the fold that hid its label, columns following ``classes``.
    classes : ndarray of shape (C,)
    k : int
        The folds used.
    """
    y = np.asarray(y)
    labeled = np.flatnonzero(y != UNLABELED)  # (m,)
    _check_counts(y[labeled], class_names)
    classes = np.unique(y[labeled])
    k = int(min(folds, np.unique(y[labeled], return_counts=True)[1].min()))
    proba = np.zeros((labeled.size, classes.size))  # (m, C)
    for _, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(labeled, y[labeled]):
        y_fold = y.copy()
        y_fold[labeled[held]] = UNLABELED
        model = clone(estimator).fit(X, y_fold)
        proba[held] = align_proba(model.predict_proba(X[labeled[held]]), model.classes_, classes)
    return labeled, proba, classes, k


def label_issues(given: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool, float]:
    """cleanlab's label quality of each row and the flags the evidence supports (see the module docstring).

    Parameters
    ----------
    given : ndarray of shape (m,)
        Column of each row's given label in ``proba``.
    proba : ndarray of shape (m, C)
        Out-of-fold probabilities, rows summing to 1.

    Returns
    -------
    label_quality : ndarray of shape (m,)
    is_label_issue : ndarray of shape (m,) bool
    agreement : float
        Share of rows whose given label is more probable than every other class.
    judged : bool
        Whether ``agreement`` reached :data:`MIN_AGREEMENT` (else nothing is flagged).
    need : float
        How far another class must lead the given one for a label to count as wrong.
    """
    from cleanlab.rank import get_label_quality_scores

    rows = np.arange(len(given))
    quality = get_label_quality_scores(given, proba, method="self_confidence")  # (m,) p_given
    others = proba.copy()
    others[rows, given] = -np.inf
    lead = others.max(axis=1) - proba[rows, given]  # (m,) how far another class is ahead (< 0: the given one leads)
    agrees = lead < 0
    agreement = float(agrees.mean()) if lead.size else 0.0
    typical = float(np.median(-lead[agrees])) if agrees.any() else 1.0  # the lead the model gives labels it agrees with
    need = max(MIN_LEAD, typical)
    judged = agreement >= MIN_AGREEMENT
    n = int((lead >= need).sum()) if judged else 0  # how many labels the evidence says are wrong
    issues = np.zeros(len(given), dtype=bool)
    issues[np.lexsort((rows, quality))[:n]] = True  # the n lowest label qualities, as audit_arrays ranks them
    return quality, issues & ~agrees, agreement, judged, need


def audit_arrays(X: np.ndarray, y: np.ndarray, method="labelprop", params: dict | None = None, folds: int = 5,
                 seed: int = 0, context: dict | None = None, class_names: Sequence[str] | None = None) -> Audit:
    """Rank the labeled rows of ``X`` by cleanlab's label quality (lowest first) and flag the labels the out-of-fold
    evidence says are wrong.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Features of every row.
    y : ndarray of shape (n,)
        Labels, ``-1`` unlabeled (unlabeled rows take part in transductive fits).
    method : str or estimator
        The method giving the out-of-fold probabilities (default labelprop: its transductive out-of-fold probabilities
        ranked planted flips higher than the linear probe's in ``python -m benchmarks audit``).
    params : dict, optional
        The method's parameters.
    folds : int
        Stratified folds over the labeled rows (fewer when a class has fewer labels; a class needs 2).
    seed : int
        Seeds the folds: the same inputs and seed give the same ranking.
    context : dict, optional
        Store context for the method (see :func:`classify.pipeline.store_context`).
    class_names : sequence of str, optional
        Names of the class indices, for error messages.

    Returns
    -------
    Audit
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UserError(f"--folds must be a whole number >= 2, got {folds!r}")
    estimator = pipeline.build(method, params, context)
    labeled, proba, classes, k = out_of_fold_proba(X, y, estimator, folds, seed, class_names)
    given = np.searchsorted(classes, np.asarray(y)[labeled])  # (m,) column of the given label
    proba = np.clip(proba, 0.0, None)
    proba = proba / np.maximum(proba.sum(axis=1, keepdims=True), 1e-12)  # (m, C) rows sum to 1, as cleanlab needs
    quality, issues, agreement, judged, need = label_issues(given, proba)
    order = np.lexsort((np.arange(labeled.size), quality))  # lowest quality (most likely wrong) first, ties by row
    log.info("audit: %d of %d labels flagged (%d folds, agreement %.2f)", int(issues.sum()), labeled.size, k,
             agreement)
    return Audit(index=labeled[order], given=classes[given[order]], suggested=classes[proba[order].argmax(axis=1)],
                 label_quality=quality[order], is_label_issue=issues[order], proba=proba[order], classes=classes,
                 folds=k, agreement=agreement, judged=judged, lead=need)


def audit_store(store: FeatureStore | str, backbone: str | None = None, method="labelprop", folds: int = 5,
                seed: int = 0, params: dict | None = None, data_root: str | None = None) -> tuple[list[dict], Audit]:
    """Audit the labeled train images of a store (test rows join the fits without their labels).

    Parameters
    ----------
    store : FeatureStore or path
    backbone : str, optional
        Backbone spec (default: the store's only backbone).
    method, folds, seed, params
        As for :func:`audit_arrays`.
    data_root : str, optional
        The folder holding the images, when it moved (default: the one the store records).

    Returns
    -------
    rows : list of dict
        Every labeled image, lowest label quality first: ``rank``, ``id``, ``path``, ``given`` and ``suggested``
        (class ids), ``label_quality``, ``is_label_issue``, ``row`` (store row).
    audit : Audit
        The arrays (indices into the store's decoded rows).
    """
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as fs:
            return audit_store(fs, backbone, method, folds, seed, params, data_root)
    spec = _backbone(store, backbone)
    data = pipeline.load_data(store, [spec])
    X, y = pipeline.fit_rows(data, transductive=True)  # (n, D), (n,): test labels hidden
    if not (y != UNLABELED).any():
        raise UserError(f"store {store.path} has no labeled images to audit; labels come from train/<class>/")
    classes = store.classes
    result = audit_arrays(X, y, method, params, folds, seed, pipeline.store_context(store, spec), classes)
    paths = image_paths(store, [str(data.ids[i]) for i in result.index], data_root)
    rows = [{"rank": rank, "id": str(data.ids[i]), "path": path, "given": classes[int(g)],
             "suggested": classes[int(s)], "label_quality": float(q), "is_label_issue": bool(f),
             "row": int(data.index[i])}
            for rank, (i, g, s, q, f, path) in enumerate(zip(result.index, result.given, result.suggested,
                                                             result.label_quality, result.is_label_issue, paths), 1)]
    return rows, result


def sheet_groups(rows: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Groups of the HTML contact sheet: the flagged labels, then (with ``--all-rows``) the others, each in rank
    order and captioned ``#rank id: given → suggested (label quality)`` (the id names the file to fix).

    Returns
    -------
    list of (group title, [(image path, caption), ...])
    """
    def item(row):
        return (row["path"], f"#{row['rank']} {display_id(row['id'])}: {row['given']} → {row['suggested']} "
                             f"(quality {row['label_quality']:.2f})")

    flagged = [item(r) for r in rows if r["is_label_issue"]]
    others = [item(r) for r in rows if not r["is_label_issue"]]
    return ([(f"labels that look wrong, lowest label quality first ({len(flagged)})", flagged)] if flagged else []) + (
        [(f"{'the other labels' if flagged else 'every label'}, lowest label quality first ({len(others)})", others)]
        if others else [])


def audit_command(store: str, backbone: str | None = None, method: str = "labelprop", out: str = "suspects.csv",
                  folds: int = 5, seed: int = 0, all_rows: bool = False, data_root: str | None = None,
                  **params) -> tuple[list[dict], list[str]]:
    """Labeled images ranked by cleanlab's label quality; those the out-of-fold evidence says are wrong, flagged.

    Parameters
    ----------
    store : str
        The feature store (.h5).
    backbone : str
        Backbone spec in the store (default: the store's only backbone).
    method : str
        The method giving the out-of-fold probabilities (default labelprop).
    out : str
        The CSV to write: rank, id, path, given, suggested, label_quality, is_label_issue (lowest quality first).
    folds : int
        Stratified folds over the labeled images (each class needs at least 2 labels).
    seed : int
        Seeds the folds.
    all_rows : bool
        Write every labeled image, ranked, instead of only the flagged ones.
    data_root : str, optional
        The folder holding the images, when it moved (default: the one the store records).
    **params
        The method's parameters.

    Returns
    -------
    rows : list of dict
        The rows written (also for :func:`sheet_groups`).
    notes : list of str
        What was found, in one line, and, when the out-of-fold model was too weak to judge, why nothing was flagged:
        for the command line and the page.
    """
    rows, result = audit_store(store, backbone, method, folds, seed, params, data_root)
    written = rows if all_rows else [r for r in rows if r["is_label_issue"]]
    write_csv(written, out, CSV_COLUMNS)
    return written, _notes(rows, result, method, out)


def _notes(rows: list[dict], result: Audit, method: str, out) -> list[str]:
    flagged = int(result.is_label_issue.sum())
    how = f"{result.folds}-fold out-of-fold {method}, agreeing with {100 * result.agreement:.0f} % of the labels"
    if not result.judged:
        return [f"no label flagged ({how}) -> {out}",
                f"caution: the out-of-fold predictions agree with only {100 * result.agreement:.0f} % of the given "
                f"labels (flags need {100 * MIN_AGREEMENT:.0f} %), too few to tell a wrong label from the model's own "
                "mistakes; --all-rows lists every label ranked by label_quality, lowest first, to check by eye; or "
                "audit with a stronger backbone (--backbone) or method (--method), or after adding labels"]
    top = ", ".join(f"{r['id']} ({r['given']} → {r['suggested']})" for r in rows[:3] if r["is_label_issue"])
    line = (f"{flagged} of {len(rows)} labels look wrong ({how}; the lowest label qualities, as many as the labels "
            f"another class leads by {result.lead:.2f} or more) -> {out}")
    return [line + (f"; most likely wrong: {top}" if top else "")]
