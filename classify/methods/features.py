"""Small helpers shared by the methods: L2 normalisation, the ``-1 = unlabeled`` convention, CV fold counts.

Labels follow sklearn's semi-supervised convention: ``-1`` marks an unlabeled row; every other value is a
class label (usually an integer class index, but any sklearn-acceptable label works).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

UNLABELED = -1


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``X`` scaled to unit L2 norm (a new array; all-zero rows stay zero; float dtype kept).

    Parameters
    ----------
    X : ndarray of shape (n, D)
    eps : float
        Norms below ``eps`` are treated as ``eps`` so zero rows do not divide by zero.

    Returns
    -------
    ndarray of shape (n, D), dtype of ``X`` when floating, else float64.
    """
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)  # (n, 1)
    return X / np.maximum(norms, eps).astype(X.dtype, copy=False)


def labeled_mask(y) -> np.ndarray:
    """Boolean mask of the labeled rows of ``y`` (those whose label is not ``-1``).

    Works for integer, float, string and object label arrays (a string array has no ``-1``).
    """
    y = np.asarray(y)
    if y.dtype.kind in "US":  # numpy string arrays cannot hold the integer -1
        return np.ones(y.shape[0], dtype=bool)
    return np.asarray(y != UNLABELED, dtype=bool).reshape(y.shape[0])


def checked_labeled_mask(y) -> np.ndarray:
    """``labeled_mask(y)`` after checking that the labeled rows are classification targets.

    Only the labeled rows are checked, so an object array mixing string labels with ``-1`` is accepted
    (sklearn's semi-supervised convention); continuous targets raise sklearn's "Unknown label type" ValueError.
    """
    mask = labeled_mask(y)
    check_classification_targets(np.asarray(y)[mask])
    return mask


def cv_splits(y_labeled, max_splits: int = 5) -> int:
    """Number of stratified CV folds the labeled rows allow: ``min(max_splits, smallest class count)``.

    Returns a value < 2 when cross-validation is impossible (some class has a single labeled row);
    callers decide how to fall back.
    """
    _, counts = np.unique(np.asarray(y_labeled), return_counts=True)
    return int(min(max_splits, counts.min())) if counts.size else 0


def align_proba(proba: np.ndarray, classes, target_classes) -> np.ndarray:
    """Columns of ``proba`` (ordered as ``classes``) placed into the column order of ``target_classes``.

    Classes missing from ``classes`` get probability 0. Every entry of ``classes`` must be in
    ``target_classes``.

    Parameters
    ----------
    proba : ndarray of shape (n, len(classes))
    classes, target_classes : array-like of labels; ``target_classes`` sorted (as an sklearn ``classes_``).

    Returns
    -------
    ndarray of shape (n, len(target_classes))
    """
    target_classes = np.asarray(target_classes)
    cols = np.searchsorted(target_classes, np.asarray(classes))
    found = target_classes[np.minimum(cols, len(target_classes) - 1)]
    assert np.all(found == np.asarray(classes)), "a class is missing from target_classes"
    out = np.zeros((proba.shape[0], len(target_classes)), dtype=np.float64)  # (n, C_target)
    out[:, cols] = proba
    return out


@contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread inside the block.

    The methods fit many small problems (a few hundred labeled rows × D). On 2 shared cores a
    multi-threaded OpenBLAS was measured 25-40x slower on these than a single thread (thread
    oversubscription); one thread is never much slower for matrices this small.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield
