"""Label propagation at scale: synthetic clustered features, approximate kNN graph, time, memory and recall."""
from __future__ import annotations

import logging
import resource
import time

import numpy as np

from classify.methods.labelprop import KNNLabelPropagation, knn_search

log = logging.getLogger(__name__)


def clustered_features(n: int, dim: int, n_classes: int, noise: float, seed: int = 0, modes: int = 50):
    """``n`` unit vectors: each class a mixture of ``modes`` sub-clusters around a class centre, so that rows have
    real nearest neighbours (isotropic blobs make every row of a class almost equidistant, a worst case for any
    approximate index), built in blocks to bound memory. Returns (X float32, y)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 1, dim)).astype(np.float32)
    subs = centres + 0.8 * rng.normal(size=(n_classes, modes, dim)).astype(np.float32)  # (C, M, dim)
    subs = (subs / np.linalg.norm(subs, axis=2, keepdims=True)).reshape(n_classes * modes, dim)
    mode = rng.integers(0, n_classes * modes, size=n)
    y = mode // modes
    X = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = subs[mode[start:stop]] + noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
        X[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return X, y


def recall_at_k(Z: np.ndarray, k: int, index: str) -> float:
    """Share of the exact k nearest neighbours (self excluded) that the approximate index also returns."""
    _, exact = knn_search(Z, Z, k + 1, device="cpu", index="flat")
    _, approx = knn_search(Z, Z, k + 1, device="cpu", index=index)
    hits = [len(set(e[1:]) & set(a)) for e, a in zip(exact, approx)]
    return float(np.mean(hits) / k)


def measure(n: int = 1_000_000, dim: int = 512, n_classes: int = 20, shots: int = 10, k: int = 20,
            index: str = "auto", noise: float = 0.04, sample: int = 50_000, seed: int = 0) -> dict:
    """Fit labelprop on ``n`` synthetic rows with ``shots`` labels per class; time, peak RSS, accuracy, recall."""
    t0 = time.perf_counter()
    X, y = clustered_features(n, dim, n_classes, noise, seed)
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in range(n_classes)])
    y_fit = np.full(n, -1)
    y_fit[labeled] = y[labeled]
    data_seconds = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # MiB (Linux reports KiB)
    estimator = KNNLabelPropagation(k=k, index=index, device="auto")
    t0 = time.perf_counter()
    estimator.fit(X, y_fit)
    fit_seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    unlabeled = y_fit < 0
    accuracy = float((estimator.transduction_[unlabeled] == y[unlabeled]).mean())
    chosen = index if index != "auto" else ("ivf" if n > 50_000 else "flat")
    pick = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    recall = recall_at_k(estimator.X_[pick], k, chosen) if chosen != "flat" else 1.0
    return {"rows": n, "dim": dim, "classes": n_classes, "labeled": int(labeled.size), "k": k, "index": chosen,
            "fit_seconds": fit_seconds, "data_seconds": data_seconds, "accuracy_unlabeled": accuracy,
            f"recall_at_{k}_on_{pick.size}_sample": recall, "peak_rss_mib": peak,
            "rss_before_fit_mib": rss_before, "features_mib": X.nbytes / 2**20}
