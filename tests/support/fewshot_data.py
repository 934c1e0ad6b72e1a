"""Small labeled / unlabeled data sets shared by the method tests (y = -1 marks an unlabeled row)."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits


def blobs(n_per=80, n_classes=3, dim=8, n_labeled=5, seed=0, spread=1.0, shuffle=False):
    """Gaussian blobs with ``n_labeled`` labeled rows per class (the rest -1). Returns X, y, y_true."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 2
    y_true = np.repeat(np.arange(n_classes), n_per)
    X = (centers[y_true] + spread * rng.normal(size=(len(y_true), dim))).astype(np.float32)
    y = np.full(len(y_true), -1)
    for c in range(n_classes):
        y[np.flatnonzero(y_true == c)[:n_labeled]] = c
    if shuffle:
        perm = rng.permutation(len(y))
        return X[perm], y[perm], y_true[perm]
    return X, y, y_true


def digits_few(per_class: int = 10, seed: int = 0):
    """sklearn digits, ``per_class`` labeled rows per class, the rest unlabeled (y = -1) and used as the test set.

    Returns X (float32), y (true labels), y_semi, labeled indices, test indices.
    """
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    lab = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    y_semi = np.full_like(y, -1)
    y_semi[lab] = y[lab]
    test = np.setdiff1d(np.arange(len(y)), lab)
    return X.astype(np.float32), y, y_semi, lab, test


def softmax(z):
    """Row-wise softmax of (n, C) scores."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def clip_like(n_per_class, n_classes=3, dim=8, noise=0.6, text_noise=0.3, n_templates=2, scale=3.0, seed=0):
    """CLIP-like features: images near their class centre (times ``scale``, a raw scale methods must normalise),
    text embeddings of ``n_templates`` prompts near the same centres. Returns X (n, D), y, text (C, T, D)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    text = centres[:, None, :] + text_noise * rng.normal(size=(n_classes, n_templates, dim))  # (C, T, D)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = scale * (centres[y] + noise * rng.normal(size=(len(y), dim)))
    return X.astype(np.float32), y, text.astype(np.float32)
