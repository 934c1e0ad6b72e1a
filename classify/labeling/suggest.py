"""Which unlabeled images to label next: informative, diverse and class-balanced suggestions.

The default strategy (``"diverse"``) combines three measurements on the cached features:

- informativeness: the margin between the two most probable classes of the method's transductive probabilities
  (a small margin is an image the current labels leave undecided); the ``10 * budget`` candidates with the smallest
  margins are kept;
- diversity: those candidates are clustered into ``budget`` groups by k-means weighted by their uncertainty
  (Zhdanov 2019, "Diverse mini-batch active learning"), and each suggestion comes from a group no earlier
  suggestion took, its most uncertain and central image: suggestions are never near-copies of each other;
- class balance: suggestions are taken class by class (by predicted class), always for the class with the fewest
  labels plus suggestions so far, so a budget spreads over the classes instead of piling onto the largest one.

What is chosen follows those rules; the order of the result follows the score alone (rank 1: the highest), so that
the first rows are the ones to label when there is no time for all: see :data:`classify.labeling.SCORES` for what
the score measures under each strategy.

The other strategies are the baselines ``python -m benchmarks active`` measures it against: ``"margin"``
(uncertainty alone), ``"typiclust"`` (coverage alone: k-means over every row with ``n_labeled + budget`` clusters, the
most typical image of each cluster no label covers yet; Hacohen et al. 2022) and ``"random"``. Which wins depends on
how good the model already is (coverage beats uncertainty when the model is weak): see ``benchmarks/README.md``.

Hand-written rather than taken from a library: the selection is a few lines of numpy around scikit-learn's KMeans,
PCA and NearestNeighbors; the active-learning libraries (modAL, ALiPy, scikit-activeml) wrap a model and a query
loop of their own and do not take a transductive method's probabilities or a class-balance rule.

Python API: :func:`suggest_arrays` over ``X``, ``y`` (``-1`` unlabeled), :func:`suggest_store` over a feature store,
:func:`suggest_command` (writes the CSV, says what it wrote) and :func:`sheet_groups` (the HTML contact sheet's groups).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from classify import pipeline
from classify.methods.features import UNLABELED, align_proba
from classify.labeling import STRATEGIES
from classify.labeling.selection import (Selection, check_budget, duplicate_free,
                                feature_keys, select)
from store import FeatureStore, display_id
from store.clitools import as_list
from store.outputs import write_csv as write_rows
from store.paths import data_root as resolve_root, image_files
from store.validation import UserError

log = logging.getLogger(__name__)

CSV_COLUMNS = ("rank", "id", "path", "predicted", "score", "reason")


def suggest_arrays(X: np.ndarray, y: np.ndarray, budget: int = 20, method="labelprop", params: dict | None = None,
                   seed: int = 0, candidates: np.ndarray | None = None, strategy: str = "diverse",
                   keys: np.ndarray | None = None, context: dict | None = None,
                   class_names: Sequence[str] | None = None) -> Selection:
    """The ``budget`` unlabeled rows of ``X`` whose labels would help most.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Features of every row.
    y : ndarray of shape (n,)
        Labels, ``-1`` for unlabeled rows.
    budget : int
        How many rows to suggest.
    method : str or estimator
        The method whose transductive probabilities measure uncertainty (fitted on every row; ignored by the
        ``"typiclust"`` and ``"random"`` strategies' choice, but still used for the predicted labels).
    params : dict, optional
        The method's parameters.
    seed : int
        Same inputs and seed, same suggestions.
    candidates : ndarray of shape (n,) bool, optional
        Rows that may be suggested (default: every unlabeled row).
    strategy : str
        One of :data:`STRATEGIES`.
    keys : ndarray of shape (n,), optional
        Equal keys mark identical images (file sha256); default: identical feature rows. A candidate identical to a
        labeled row, or to an earlier candidate, is never suggested.
    context : dict, optional
        Store context for the method (see :func:`classify.pipeline.store_context`).
    class_names : sequence of str, optional
        Names of the class indices, for the reasons.

    Returns
    -------
    Selection
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    X = np.asarray(X)
    y = np.asarray(y)
    labeled = y != UNLABELED
    if not labeled.any():
        raise UserError("there are no labeled rows: suggestions need a few labels per class first (train/<class>/)")
    candidates = ~labeled if candidates is None else np.asarray(candidates, dtype=bool) & ~labeled
    candidates = duplicate_free(candidates, feature_keys(X) if keys is None else np.asarray(keys), labeled)
    check_budget(budget, int(candidates.sum()), "the data")
    estimator = pipeline.build(method, params, context)
    estimator.fit(X, y)
    classes = np.unique(y[labeled])
    proba = align_proba(estimator.predict_proba(X), estimator.classes_, classes)  # (n, C)
    return select(X, y, proba, classes, budget, candidates, strategy, seed, class_names)


def _backbone(store: FeatureStore, backbone) -> str:
    """The one backbone spec to use: the given one (checked), or the store's only backbone."""
    specs = as_list(backbone)
    have = store.backbones
    if not specs:
        if len(have) != 1:
            raise UserError(f"pass --backbone SPEC; {store.path} has {', '.join(have) or 'no backbones'}")
        return have[0]
    if len(specs) > 1:
        raise UserError(f"pass one --backbone, not {len(specs)}")
    if specs[0] not in have:
        raise UserError(f"store {store.path} has no features for backbone {specs[0]!r} (it has: "
                         f"{', '.join(have) or 'none'}); run `python -m embed run --backbone {specs[0]} --store "
                         f"{store.path}` first, or pass one of those")
    return specs[0]


def image_paths(store: FeatureStore, ids, data_root=None) -> list[str]:
    """The file of each id under the store's data folder (or ``data_root``, see :func:`store.paths.data_root`); ""
    where it cannot be named (no data folder, or an id that reaches outside it)."""
    return [str(p) if p is not None else "" for p in image_files(resolve_root(store, data_root), ids)]


def suggest_store(store: FeatureStore | str, backbone: str | None = None, method="labelprop", budget: int = 20,
                  seed: int = 0, strategy: str = "diverse", params: dict | None = None,
                  data_root: str | None = None) -> list[dict]:
    """Suggestions for a store: unlabeled-split images only, never a failed image or a duplicate of a labeled one.

    Parameters
    ----------
    store : FeatureStore or path
    backbone : str, optional
        Backbone spec (default: the store's only backbone).
    method, budget, seed, strategy, params
        As for :func:`suggest_arrays`; the method sees every decoded row, test rows without their labels.
    data_root : str, optional
        The folder holding the images, when it moved (default: the one the store records).

    Returns
    -------
    list of dict
        One per suggestion, highest score first: ``rank`` (1, 2, ...), ``id``, ``path``, ``predicted`` (class id),
        ``score``, ``reason``, and ``row`` (store row) and ``class_index``.
    """
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as fs:
            return suggest_store(fs, backbone, method, budget, seed, strategy, params, data_root)
    spec = _backbone(store, backbone)
    data = pipeline.load_data(store, [spec])
    X, y = pipeline.fit_rows(data, transductive=True)  # (n, D), (n,): test labels hidden
    pool = data.splits == "unlabeled"
    if not pool.any():
        raise UserError(f"store {store.path} has no unlabeled images to suggest (its unlabeled/ split is empty or "
                         "failed to decode); add images to DATA/unlabeled/ and embed them")
    if not (y != UNLABELED).any():
        raise UserError(f"store {store.path} has no labeled images; label a few per class (train/<class>/) first")
    keys = store.sha256[data.index]  # (n,) hex, "" when unknown
    sel = suggest_arrays(X, y, budget, method, params, seed, pool, strategy, keys,
                         pipeline.store_context(store, spec), store.classes)
    classes = store.classes
    paths = image_paths(store, [str(data.ids[i]) for i in sel.index], data_root)
    return [{"rank": rank, "id": str(data.ids[i]), "path": path, "predicted": classes[int(c)], "score": float(s),
             "reason": r, "row": int(data.index[i]), "class_index": int(c)}
            for rank, (i, c, s, r, path) in enumerate(zip(sel.index, sel.predicted, sel.score, sel.reason, paths), 1)]


def write_csv(rows: list[dict], out: str | Path, columns: Sequence[str]) -> Path:
    """Rows as CSV, whole or not at all, scores with 4 decimals (:func:`store.outputs.write_csv`: ids written back
    as their original bytes, like ``classify predict``, and no cell read as a formula)."""
    return write_rows(out, columns, ([f"{row[c]:.4f}" if isinstance(row[c], float) else row[c] for c in columns]
                                     for row in rows))


def sheet_groups(rows: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The HTML contact sheet's one group: the suggestions in rank order, each captioned with its rank, its id (the
    file to label), the class the method predicts and its score.

    Returns
    -------
    list of (group title, [(image path, caption), ...])
    """
    items = [(row["path"], f"#{row['rank']} {display_id(row['id'])}: predicted {row['predicted']} (score "
                           f"{row['score']:.2f})") for row in rows]
    return [(f"images to label, highest score first ({len(items)})", items)] if items else []


def suggest_command(store: str, backbone: str | None = None, method: str = "labelprop", budget: int = 20,
                    out: str = "to_label.csv", seed: int = 0, strategy: str = "diverse", data_root: str | None = None,
                    **params) -> list[dict]:
    """The unlabeled images whose labels would help most: informative, diverse and class-balanced.

    Parameters
    ----------
    store : str
        The feature store (.h5).
    backbone : str
        Backbone spec in the store (default: the store's only backbone).
    method : str
        The method whose transductive probabilities measure uncertainty (default labelprop).
    budget : int
        How many images to suggest.
    out : str
        The CSV to write: rank, id, path, predicted, score, reason (rank 1, the highest score, first).
    seed : int
        The same store and seed give the same suggestions.
    strategy : str
        diverse (uncertainty x typicality over uncovered clusters, class-balanced; default), margin, typiclust or
        random.
    data_root : str, optional
        The folder holding the images, when it moved (default: the one the store records).
    **params
        The method's parameters, e.g. --k 20.

    Returns
    -------
    rows : list of dict
        The rows written (also for :func:`sheet_groups`).
    summary : str
        One line saying what was written, for the command line to print.
    """
    rows = suggest_store(store, backbone, method, budget, seed, strategy, params, data_root)
    write_csv(rows, out, CSV_COLUMNS)
    per_class: dict[str, int] = {}
    for row in rows:
        per_class[row["predicted"]] = per_class.get(row["predicted"], 0) + 1
    spread = ", ".join(f"{name} {n}" for name, n in sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0])))
    return rows, f"suggested {len(rows)} images to label -> {out} (predicted classes: {spread})"
