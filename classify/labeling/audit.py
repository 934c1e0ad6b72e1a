"""Which given labels look wrong: out-of-fold probabilities and confident learning (cleanlab).

Every labeled row gets a probability from a model that did not see its label: stratified K-fold over the labeled
rows, each fold fitting the method transductively on every row with the held-out labels hidden (as
:func:`classify.evaluation.cross_val_predictions` does). cleanlab's ``find_label_issues`` then flags the rows whose
given label disagrees with the class the out-of-fold probabilities confidently put them in, with one threshold per
class (the class's mean self-confidence: confident learning, Northcutt et al. 2021), and
``get_label_quality_scores`` ranks them. Confident learning is used from cleanlab rather than rewritten: it is the
reference implementation, depends only on numpy, scikit-learn, pandas, tqdm and termcolor, and imports in well
under a second.

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
from classify.labeling.suggest import _backbone, image_path, write_csv
from classify.methods.features import UNLABELED, align_proba
from store import FeatureStore, display_id
from store.validation import UserError

log = logging.getLogger(__name__)

CSV_COLUMNS = ("id", "path", "given", "suggested", "score")
#: below this out-of-fold agreement with the given labels, ``audit_command`` warns that flags are unreliable
WEAK_AGREEMENT = 0.7


@dataclass
class Audit:
    """Labeled rows ranked by how likely their given label is wrong (most suspect first).

    Attributes
    ----------
    index : ndarray of shape (n_labeled,)
        Row indices into ``X``, most suspect first.
    given, suggested : ndarray of shape (n_labeled,)
        The given label and the most probable out-of-fold class of each row.
    score : ndarray of shape (n_labeled,)
        1 - cleanlab's label quality (self-confidence: the out-of-fold probability of the given label), in [0, 1].
    flagged : ndarray of shape (n_labeled,) bool
        Rows confident learning flags as label issues (per-class thresholds). The ranking itself is by score alone
        (putting the flagged rows first ranked fewer planted flips on top in ``python -m benchmarks audit``).
    proba : ndarray of shape (n_labeled, C)
        Out-of-fold probabilities in ranking order, columns following ``classes``.
    classes : ndarray of shape (C,)
    folds : int
        The folds used.
    agreement : float
        Share of the labeled rows whose given label is the out-of-fold prediction. Flags are only as good as the
        probabilities: well below 0.7 (a weak backbone for these images, or very few labels), many flags are the
        model's mistakes, not the labels'.
    """

    index: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    proba: np.ndarray
    classes: np.ndarray
    folds: int
    agreement: float


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


def audit_arrays(X: np.ndarray, y: np.ndarray, method="labelprop", params: dict | None = None, folds: int = 5,
                 seed: int = 0, context: dict | None = None, class_names: Sequence[str] | None = None) -> Audit:
    """Rank the labeled rows of ``X`` by how likely their label is wrong.

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
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UserError(f"--folds must be a whole number >= 2, got {folds!r}")
    estimator = pipeline.build(method, params, context)
    labeled, proba, classes, k = out_of_fold_proba(X, y, estimator, folds, seed, class_names)
    given = np.searchsorted(classes, np.asarray(y)[labeled])  # (m,) column of the given label
    proba = np.clip(proba, 0.0, None)
    proba = proba / np.maximum(proba.sum(axis=1, keepdims=True), 1e-12)  # (m, C) rows sum to 1, as cleanlab needs
    quality = get_label_quality_scores(given, proba, method="self_confidence")  # (m,)
    issues = find_label_issues(given, proba, filter_by="prune_by_noise_rate", n_jobs=1)  # (m,) bool
    order = np.lexsort((np.arange(labeled.size), quality))  # least quality (most suspect) first, ties by row
    log.info("audit: %d of %d labels flagged (%d folds)", int(issues.sum()), labeled.size, k)
    return Audit(index=labeled[order], given=classes[given[order]], suggested=classes[proba[order].argmax(axis=1)],
                 score=1.0 - quality[order], flagged=issues[order], proba=proba[order], classes=classes, folds=k,
                 agreement=float(np.mean(proba.argmax(axis=1) == given)))


def audit_store(store: FeatureStore | str, backbone: str | None = None, method="labelprop", folds: int = 5,
                seed: int = 0, params: dict | None = None) -> tuple[list[dict], Audit]:
    """Audit the labeled train images of a store (test rows join the fits without their labels).

    Parameters
    ----------
    store : FeatureStore or path
    backbone : str, optional
        Backbone spec (default: the store's only backbone).
    method, folds, seed, params
        As for :func:`audit_arrays`.

    Returns
    -------
    rows : list of dict
        Every labeled image, most suspect first: ``id``, ``path``, ``given`` and ``suggested`` (class names),
        ``score``, ``flagged``, ``row`` (store row).
    audit : Audit
        The arrays (indices into the store's decoded rows).
    """
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as fs:
            return audit_store(fs, backbone, method, folds, seed, params)
    spec = _backbone(store, backbone)
    data = pipeline.load_data(store, [spec])
    X, y = pipeline.fit_rows(data, transductive=True)  # (n, D), (n,): test labels hidden
    if not (y != UNLABELED).any():
        raise UserError(f"store {store.path} has no labeled images to audit; labels come from train/<class>/")
    classes = store.classes
    result = audit_arrays(X, y, method, params, folds, seed, pipeline.store_context(store, spec), classes)
    rows = [{"id": str(data.ids[i]), "path": image_path(store, str(data.ids[i])), "given": classes[int(g)],
             "suggested": classes[int(s)], "score": float(sc), "flagged": bool(f), "row": int(data.index[i])}
            for i, g, s, sc, f in zip(result.index, result.given, result.suggested, result.score, result.flagged)]
    return rows, result


def sheet_groups(rows: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Groups of the HTML contact sheet: the suspects in rank order, captioned ``#rank id: given → suggested (score)``
    (the id names the file to fix).

    Returns
    -------
    list of (group title, [(image path, caption), ...])
    """
    items = [(row["path"], f"#{rank} {display_id(row['id'])}: {row['given']} → {row['suggested']} ({row['score']:.2f})")
             for rank, row in enumerate(rows, 1)]
    return [(f"suspect labels, most suspect first ({len(items)})", items)] if items else []


def audit_command(store: str, backbone: str | None = None, method: str = "labelprop", out: str = "suspects.csv",
                  folds: int = 5, seed: int = 0, all_rows: bool = False, **params) -> list[dict]:
    """Labeled images ranked by how likely their given label is wrong (out-of-fold confident learning).

    Parameters
    ----------
    store : str
        The feature store (.h5).
    backbone : str
        Backbone spec in the store (default: the store's only backbone).
    method : str
        The method giving the out-of-fold probabilities (default labelprop).
    out : str
        The CSV to write: id, path, given, suggested, score (most suspect first).
    folds : int
        Stratified folds over the labeled images (each class needs at least 2 labels).
    seed : int
        Seeds the folds.
    all_rows : bool
        Write every labeled image, ranked, instead of only those confident learning flags.
    **params
        The method's parameters.

    Returns
    -------
    rows : list of dict
        The rows written (also for :func:`sheet_groups`).
    notes : list of str
        What was found, in one line, and a caution when the out-of-fold model agrees with too few given labels (its
        flags are then often its own mistakes): for the command line and the page.
    """
    rows, result = audit_store(store, backbone, method, folds, seed, params)
    written = rows if all_rows else [r for r in rows if r["flagged"]]
    write_csv(written, out, CSV_COLUMNS)
    flagged = int(result.flagged.sum())
    top = ", ".join(f"{r['id']} ({r['given']} → {r['suggested']})" for r in rows[:3] if r["flagged"])
    notes = [f"{flagged} of {len(rows)} labels look wrong ({result.folds}-fold out-of-fold {method}, confident "
             f"learning) -> {out}" + (f"; most suspect: {top}" if top else "")]
    if result.agreement < WEAK_AGREEMENT:
        notes.append(f"caution: the out-of-fold predictions agree with only {100 * result.agreement:.0f} % of the "
                     "given labels, so many flags may be the model's mistakes rather than the labels'; check them by "
                     "eye, or audit with a stronger backbone (--backbone) or method (--method)")
    return written, notes
