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

The other strategies are the baselines the benchmark measures it against (``python -m benchmarks.active``):
``"margin"`` (uncertainty alone), ``"typiclust"`` (coverage alone: k-means over every row with ``n_labeled + budget``
clusters, the most typical image of each cluster no label covers yet; Hacohen et al. 2022) and ``"random"``. On
digits (3 labels per class, 10 per round, labelprop, 3 seeds) ``diverse`` reached random's accuracy after +60 labels
with +30, on Fashion-MNIST with +40; two other designs measured worse on digits: margin x typicality over
TypiClust's clusters (plateaued below random), and weighting the uncertainty by density ("information density":
+40). On the 21-class clip-art set (31-50 % accuracy) coverage alone, ``"typiclust"``, is the best of the four.

Hand-written rather than taken from a library: the selection is a few lines of numpy around scikit-learn's KMeans,
PCA and NearestNeighbors; the active-learning libraries (modAL, ALiPy, scikit-activeml) wrap a model and a query
loop of their own and do not take a transductive method's probabilities or a class-balance rule.

Python API: :func:`suggest_arrays` over ``X``, ``y`` (``-1`` unlabeled), :func:`suggest_store` over a feature store,
:func:`suggest_command` (writes the CSV, prints a summary) and :func:`sheet_groups` (the HTML contact sheet's groups).
"""
from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from classify import pipeline
from classify.features import UNLABELED, align_proba, l2_normalize
from store import FeatureStore, display_id
from store.validation import UserError

log = logging.getLogger(__name__)

STRATEGIES = ("diverse", "margin", "typiclust", "random")
CSV_COLUMNS = ("id", "path", "predicted", "score", "reason")
#: features are reduced to this many PCA components before k-means and the neighbour search (speed, less noise)
PCA_DIM = 64
#: neighbours whose mean distance measures how typical (dense) a row is
TYPICALITY_K = 20
#: the diverse strategy clusters the ``PREFILTER * budget`` most uncertain candidates into ``budget`` groups
PREFILTER = 10


@dataclass
class Selection:
    """Rows chosen to label next, in the order they were chosen.

    Attributes
    ----------
    index : ndarray of shape (budget,)
        Row indices into ``X``.
    predicted : ndarray of shape (budget,)
        The method's predicted class of each row (an entry of ``classes``).
    score : ndarray of shape (budget,)
        How useful labeling the row looks, in [0, 1] (higher: more useful).
    reason : list of str
        One short explanation per row.
    classes : ndarray
        The classes of the probabilities.
    """

    index: np.ndarray
    predicted: np.ndarray
    score: np.ndarray
    reason: list[str]
    classes: np.ndarray


def duplicate_free(candidates: np.ndarray, keys: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """Candidates whose key (file sha256, or feature bytes) is no labeled row's key, the first of each repeated key.

    Parameters
    ----------
    candidates, labeled : ndarray of shape (n,) bool
    keys : ndarray of shape (n,)
        Equal keys mean identical images; empty strings count as unknown (never duplicates).

    Returns
    -------
    ndarray of shape (n,) bool, a subset of ``candidates``.
    """
    keys = np.asarray(keys)
    known = keys != "" if keys.dtype.kind in "US" else np.ones(len(keys), dtype=bool)
    taken = set(keys[labeled & known].tolist())
    keep = candidates.copy()
    for i in np.flatnonzero(candidates & known):
        key = keys[i].item() if hasattr(keys[i], "item") else keys[i]
        if key in taken:
            keep[i] = False
        else:
            taken.add(key)
    return keep


def feature_keys(X: np.ndarray) -> np.ndarray:
    """(n,) one key per row, equal for rows with identical features (duplicates when no file hash is known)."""
    X = np.ascontiguousarray(X)
    return np.array([hashlib.sha256(row.tobytes()).hexdigest() for row in X.reshape(len(X), -1)])


def _check_budget(budget, n_pool: int, what: str) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise UserError(f"--budget must be a whole number of images >= 1, got {budget!r}")
    if n_pool == 0:
        raise UserError(f"{what} has no unlabeled images to suggest (none left once failed images and duplicates of "
                         "labeled images are removed); add images to DATA/unlabeled/ and embed them "
                         "(`python -m embed run` with the same command resumes)")
    if budget > n_pool:
        raise UserError(f"--budget {budget} is larger than the pool of {n_pool} unlabeled images that can be "
                         f"suggested; use --budget {n_pool} or less")
    return int(budget)


def _embedding(X: np.ndarray, seed: int) -> np.ndarray:
    """Unit rows reduced by PCA to at most :data:`PCA_DIM` dims, unit again: the geometry k-means and typicality use."""
    Z = l2_normalize(np.asarray(X, dtype=np.float32))  # (n, D)
    dim = min(PCA_DIM, Z.shape[1], Z.shape[0] - 1)
    if dim >= 2 and dim < Z.shape[1]:
        Z = PCA(dim, random_state=seed).fit_transform(Z)  # (n, dim)
    return l2_normalize(Z).astype(np.float32)


def typicality(Z: np.ndarray, k: int = TYPICALITY_K) -> np.ndarray:
    """(n,) TypiClust's typicality: the inverse mean distance of each row to its ``k`` nearest other rows."""
    k = int(min(k, len(Z) - 1))
    if k < 1:
        return np.ones(len(Z))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)  # (n, k+1), first column: the row itself
    return 1.0 / (dist[:, 1:].mean(axis=1) + 1e-8)


def _margins(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margin p1 - p2 (n,), the most and second most probable class positions (n,) of probabilities (n, C)."""
    order = np.argsort(-proba, axis=1, kind="stable")  # (n, C)
    top = np.take_along_axis(proba, order[:, :2], axis=1) if proba.shape[1] > 1 else \
        np.hstack([proba, np.zeros((len(proba), 1))])  # (n, 2)
    second = order[:, 1] if proba.shape[1] > 1 else order[:, 0]
    return top[:, 0] - top[:, 1], order[:, 0], second


def select(X: np.ndarray, y: np.ndarray, proba: np.ndarray, classes: Sequence, budget: int,
           candidates: np.ndarray | None = None, strategy: str = "diverse", seed: int = 0,
           class_names: Sequence[str] | None = None) -> Selection:
    """Choose ``budget`` candidate rows to label, from features and the method's probabilities.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Features of every row (labeled, pool, and any other unlabeled rows the method saw).
    y : ndarray of shape (n,)
        Labels, ``-1`` unlabeled.
    proba : ndarray of shape (n, C)
        Class probabilities of every row, columns following ``classes``.
    classes : sequence of length C
        The classes of ``proba``'s columns.
    budget : int
        How many rows to choose.
    candidates : ndarray of shape (n,) bool, optional
        The rows that may be chosen (default: every unlabeled row).
    strategy : {"diverse", "margin", "typiclust", "random"}
        See the module docstring.
    seed : int
        Seeds k-means, PCA and tie-breaking: the same inputs and seed give the same selection.
    class_names : sequence of str, optional
        Names for ``classes`` in the reasons (default: the classes themselves).

    Returns
    -------
    Selection
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    y = np.asarray(y)
    classes = np.asarray(classes)
    labeled = y != UNLABELED
    candidates = ~labeled if candidates is None else np.asarray(candidates, dtype=bool) & ~labeled
    pool = np.flatnonzero(candidates)  # (m,)
    budget = _check_budget(budget, pool.size, "the data")
    names = [str(c) for c in (class_names if class_names is not None else classes)]
    margin, first, second = _margins(np.asarray(proba, dtype=np.float64))  # (n,) each
    rng = np.random.default_rng(seed)

    def reason_margin(i):
        return f"margin {margin[i]:.2f} between {names[first[i]]} and {names[second[i]]}"

    if strategy == "random":
        picked = rng.choice(pool, size=budget, replace=False)
        return Selection(picked, classes[first[picked]], np.zeros(budget), ["random draw"] * budget, classes)
    if strategy == "margin":
        order = pool[np.lexsort((rng.random(pool.size), margin[pool]))][:budget]  # smallest margin first
        return Selection(order, classes[first[order]], 1.0 - margin[order], [reason_margin(i) for i in order], classes)

    if strategy == "typiclust":
        regions = _coverage_regions(X, labeled, pool, budget, seed)
    else:
        regions = _uncertain_regions(X, pool, margin, budget, seed, rng)
    available = candidates.copy() if strategy == "typiclust" else regions.pop("available")
    chosen, reasons = _serve_balanced(y, labeled, classes, first, candidates, available, budget, strategy, rng,
                                      names, reason_margin, **regions)
    return Selection(chosen, classes[first[chosen]], regions["score"][chosen], reasons, classes)


def _coverage_regions(X, labeled, pool, budget: int, seed: int) -> dict:
    """TypiClust: k-means over every row (labeled rows cover their cluster); score = typicality over the pool."""
    Z = _embedding(X, seed)  # (n, d)
    n_clusters = int(min(len(Z), labeled.sum() + budget))
    cluster = KMeans(n_clusters, n_init=3, random_state=seed).fit_predict(Z)  # (n,)
    mass = np.bincount(cluster, minlength=n_clusters).astype(np.float64)  # (K,) images per cluster
    covered = np.zeros(n_clusters, dtype=bool)
    covered[cluster[labeled]] = True
    typical = typicality(Z)  # (n,)
    return {"cluster": cluster, "mass": mass, "covered": covered, "score": typical / typical[pool].max()}


def _uncertain_regions(X, pool, margin, budget: int, seed: int, rng) -> dict:
    """The most uncertain candidates, clustered with their uncertainty as weight (Zhdanov 2019); score = uncertainty,
    central rows of a cluster first."""
    uncertainty = 1.0 - margin  # (n,)
    uncertain = pool[np.lexsort((rng.random(pool.size), -uncertainty[pool]))][:PREFILTER * budget]  # (m',)
    available = np.zeros(len(X), dtype=bool)
    available[uncertain] = True
    weight = uncertainty[uncertain] + 1e-6  # (m',)
    Z = _embedding(X[uncertain], seed)  # (m', d): only these rows are clustered, so a large pool costs little
    km = KMeans(budget, n_init=3, random_state=seed).fit(Z, sample_weight=weight)
    cluster = np.full(len(X), -1)
    cluster[uncertain] = km.labels_
    mass = np.bincount(km.labels_, weights=weight, minlength=budget)  # (K,) uncertainty per cluster
    centrality = np.zeros(len(X))
    dist = np.linalg.norm(Z - km.cluster_centers_[km.labels_], axis=1)  # (m',)
    centrality[uncertain] = 1.0 - dist / max(dist.max(), 1e-12)  # 1 at a centre
    return {"available": available, "cluster": cluster, "mass": mass, "covered": np.zeros(budget, dtype=bool),
            "score": uncertainty * (0.5 + 0.5 * centrality)}  # (n,) uncertain first, central within a cluster


def _serve_balanced(y, labeled, classes, first, candidates, available, budget: int, strategy: str, rng, names,
                    reason_margin, cluster, mass, covered, score) -> tuple[np.ndarray, list[str]]:
    """Class balance: labels + suggestions per predicted class; the class with the fewest is served next, with the
    best row of the heaviest region no label or suggestion covers yet."""
    label_pos = {c: j for j, c in enumerate(classes)}
    count = np.zeros(len(classes), dtype=np.int64)
    for label in y[labeled]:
        if label in label_pos:
            count[label_pos[label]] += 1
    tiebreak = rng.permutation(len(classes))  # equal counts: a seeded class order
    open_classes = set(np.unique(first[available]).tolist())
    chosen, reasons = [], []
    while len(chosen) < budget:
        if not open_classes:  # every class left without candidates: fill from all of them
            available |= candidates & ~np.isin(np.arange(len(y)), chosen)
            open_classes = set(np.unique(first[available]).tolist())
        c = min(open_classes, key=lambda j: (count[j], tiebreak[j]))
        rows = np.flatnonzero(available & (first == c))
        if not rows.size:
            open_classes.discard(c)
            continue
        fresh = rows[(cluster[rows] >= 0) & ~covered[np.maximum(cluster[rows], 0)]]
        if fresh.size:  # a region no label covers yet: the heaviest such region, its best row
            heavy = fresh[mass[cluster[fresh]] == mass[cluster[fresh]].max()]
            i = int(heavy[np.lexsort((heavy, -score[heavy]))][0])
            where = (f"typical of a cluster of {int(mass[cluster[i]])} images with no label yet"
                     if strategy == "typiclust" else "central in a group of uncertain images no suggestion covers")
        else:
            i = int(rows[np.lexsort((rows, -score[rows]))][0])
            where = "every group of its class is covered already"
        if cluster[i] >= 0:
            covered[cluster[i]] = True
        available[i] = False
        count[c] += 1
        chosen.append(i)
        parts = [where, f"{names[c]} has {count[c] - 1} labels+suggestions before it"]
        if strategy == "diverse":
            parts.insert(0, reason_margin(i))
        reasons.append("; ".join(parts))
    return np.asarray(chosen, dtype=np.int64), reasons


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
    _check_budget(budget, int(candidates.sum()), "the data")
    estimator = pipeline.build(method, params, context)
    estimator.fit(X, y)
    classes = np.unique(y[labeled])
    proba = align_proba(estimator.predict_proba(X), estimator.classes_, classes)  # (n, C)
    return select(X, y, proba, classes, budget, candidates, strategy, seed, class_names)


def _backbone(store: FeatureStore, backbone) -> str:
    """The one backbone spec to use: the given one (checked), or the store's only backbone."""
    specs = pipeline.as_list(backbone)
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


def image_path(store: FeatureStore, image_id: str) -> str:
    """The file of an id: under the store's data root (ids are relative to it)."""
    root = store.root
    return str(Path(root) / image_id) if root else str(image_id)


def suggest_store(store: FeatureStore | str, backbone: str | None = None, method="labelprop", budget: int = 20,
                  seed: int = 0, strategy: str = "diverse", params: dict | None = None) -> list[dict]:
    """Suggestions for a store: unlabeled-split images only, never a failed image or a duplicate of a labeled one.

    Parameters
    ----------
    store : FeatureStore or path
    backbone : str, optional
        Backbone spec (default: the store's only backbone).
    method, budget, seed, strategy, params
        As for :func:`suggest_arrays`; the method sees every decoded row, test rows without their labels.

    Returns
    -------
    list of dict
        One per suggestion, in the order chosen: ``id``, ``path``, ``predicted`` (class name), ``score``,
        ``reason``, and ``row`` (store row) and ``class_index``.
    """
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as fs:
            return suggest_store(fs, backbone, method, budget, seed, strategy, params)
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
    return [{"id": str(data.ids[i]), "path": image_path(store, str(data.ids[i])), "predicted": classes[int(c)],
             "score": float(s), "reason": r, "row": int(data.index[i]), "class_index": int(c)}
            for i, c, s, r in zip(sel.index, sel.predicted, sel.score, sel.reason)]


def write_csv(rows: list[dict], out: str | Path, columns: Sequence[str]) -> Path:
    """Rows as CSV (ids written back as their original bytes, like ``classify predict``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row[c]:.4f}" if isinstance(row[c], float) else row[c] for c in columns])
    return out


def sheet_groups(rows: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Groups of the HTML contact sheet: the suggestions grouped by predicted class (classes in the order they were
    first chosen), each image captioned with its rank, its id (the file to label) and its score.

    Returns
    -------
    list of (group title, [(image path, caption), ...])
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for rank, row in enumerate(rows, 1):
        caption = f"#{rank} {display_id(row['id'])} ({row['score']:.2f})"
        groups.setdefault(str(row["predicted"]), []).append((row["path"], caption))
    return [(f"predicted {name} ({len(items)})", items) for name, items in groups.items()]


def suggest_command(store: str, backbone: str | None = None, method: str = "labelprop", budget: int = 20,
                    out: str = "to_label.csv", seed: int = 0, strategy: str = "diverse", **params) -> list[dict]:
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
        The CSV to write: id, path, predicted, score, reason (most useful first).
    seed : int
        The same store and seed give the same suggestions.
    strategy : str
        diverse (uncertainty x typicality over uncovered clusters, class-balanced; default), margin, typiclust or
        random.
    **params
        The method's parameters, e.g. --k 20.

    Returns
    -------
    list of dict
        The rows written (also for :func:`sheet_groups`).
    """
    rows = suggest_store(store, backbone, method, budget, seed, strategy, params)
    write_csv(rows, out, CSV_COLUMNS)
    per_class: dict[str, int] = {}
    for row in rows:
        per_class[row["predicted"]] = per_class.get(row["predicted"], 0) + 1
    spread = ", ".join(f"{name} {n}" for name, n in sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"suggested {len(rows)} images to label -> {out} (predicted classes: {spread})")
    return rows
