"""Choosing rows to label from features and a method's probabilities: the strategies of :mod:`classify.labeling.suggest`
(diverse, margin, typiclust, random), with duplicate filtering and class-balanced serving.
See :mod:`classify.labeling.suggest` for what each strategy does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from classify.labeling import STRATEGIES
from classify.methods.features import UNLABELED, l2_normalize
from store.validation import UserError

#: features are reduced to this many PCA components before k-means and the neighbour search (speed, less noise)
PCA_DIM = 64
#: neighbours whose mean distance measures how typical (dense) a row is
TYPICALITY_K = 20
#: the diverse strategy clusters the ``PREFILTER * budget`` most uncertain candidates into ``budget`` groups
PREFILTER = 10


@dataclass
class Selection:
    """Rows chosen to label next, ranked by score.

    Attributes
    ----------
    index : ndarray of shape (budget,)
        Row indices into ``X``, the highest score first (ties in the order chosen).
    predicted : ndarray of shape (budget,)
        The method's predicted class of each row (an entry of ``classes``).
    score : ndarray of shape (budget,)
        How useful labeling the row looks, in [0, 1] (higher: more useful; see :data:`classify.labeling.SCORES`),
        falling (or equal) from one row to the next.
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


def check_budget(budget, n_pool: int, what: str) -> int:
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
        The chosen rows ranked by score: which rows are chosen follows the strategy (class balance, one per group),
        the order follows the score alone.
    """
    chosen = _choose(X, y, proba, classes, budget, candidates, strategy, seed, class_names)
    order = np.argsort(-chosen.score, kind="stable")  # (budget,) highest score first, ties as chosen
    return Selection(chosen.index[order], chosen.predicted[order], chosen.score[order],
                     [chosen.reason[i] for i in order], chosen.classes)


def _choose(X, y, proba, classes, budget, candidates, strategy, seed, class_names) -> Selection:
    """:func:`select`'s rows in the order the strategy chooses them."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    y = np.asarray(y)
    classes = np.asarray(classes)
    labeled = y != UNLABELED
    candidates = ~labeled if candidates is None else np.asarray(candidates, dtype=bool) & ~labeled
    pool = np.flatnonzero(candidates)  # (m,)
    budget = check_budget(budget, pool.size, "the data")
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
