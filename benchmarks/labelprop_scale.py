"""Label propagation at scale: synthetic clustered features in a store, read in chunks; time, memory, recall."""
from __future__ import annotations

import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from classify.methods.graph import knn_search
from classify.methods.labelprop import KNNLabelPropagation
from store.validation import UserError

log = logging.getLogger(__name__)


def clustered_features(n: int, dim: int, n_classes: int, noise: float, seed: int = 0, modes: int = 50,
                       block_rows: int = 100_000):
    """Yield ``(start, X block float32, y block)`` of ``n`` unit vectors: each class a mixture of ``modes``
    sub-clusters around a class centre, so that rows have real nearest neighbours (isotropic blobs make every row
    of a class almost equidistant, a worst case for any approximate index); in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 1, dim)).astype(np.float32)
    subs = centres + 0.8 * rng.normal(size=(n_classes, modes, dim)).astype(np.float32)  # (C, M, dim)
    subs = (subs / np.linalg.norm(subs, axis=2, keepdims=True)).reshape(n_classes * modes, dim)
    for start in range(0, n, block_rows):
        mode = rng.integers(0, n_classes * modes, size=min(n, start + block_rows) - start)
        block = subs[mode] + noise * rng.standard_normal((mode.size, dim), dtype=np.float32)
        yield start, block / np.linalg.norm(block, axis=1, keepdims=True), mode // modes


def write_store(path, n: int, dim: int, n_classes: int, noise: float, seed: int = 0) -> np.ndarray:
    """The synthetic rows as a feature store (backbone ``synthetic``); returns the true labels."""
    from store import OK, FeatureStore

    y = np.empty(n, dtype=np.int64)
    with FeatureStore.create(path, [f"{i}" for i in range(n)], ["unlabeled"] * n, [-1] * n,
                             [f"class {c}" for c in range(n_classes)]) as fs:
        fs.begin_backbone({"spec": "synthetic", "weights_sha256": "-", "weights_source": "-", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, dim)
        for start, X, labels in clustered_features(n, dim, n_classes, noise, seed):
            rows = np.arange(start, start + len(X))
            fs.write_rows("synthetic", rows, np.full(len(X), OK), [None] * len(X), [None] * len(X), features=X)
            y[rows] = labels
    return y


def recall_at_k(Z: np.ndarray, k: int, index: str) -> float:
    """Share of the exact k nearest neighbours (self excluded) that the approximate index also returns."""
    _, exact = knn_search(Z, Z, k + 1, device="cpu", index="flat")
    _, approx = knn_search(Z, Z, k + 1, device="cpu", index=index)
    hits = [len(set(e[1:]) & set(a)) for e, a in zip(exact, approx)]
    return float(np.mean(hits) / k)


def measure(n: int = 1_000_000, dim: int = 512, n_classes: int = 20, shots: int = 10, k: int = 20,
            index: str = "auto", noise: float = 0.04, sample: int = 50_000, seed: int = 0) -> dict:
    """Write ``n`` synthetic rows to a store, fit labelprop reading them in chunks (``fit_chunks``), with
    ``shots`` labels per class; fit seconds, peak RSS, accuracy on the unlabeled rows, recall@k of the graph."""
    from store import FeatureStore

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        y = write_store(Path(tmp) / "synthetic.h5", n, dim, n_classes, noise, seed)
        data_seconds = time.perf_counter() - t0
        rng = np.random.default_rng(seed)
        counts = np.bincount(y, minlength=n_classes)
        if counts.min() < shots:
            raise UserError(f"{n} rows give class {int(counts.argmin())} only {int(counts.min())} rows, fewer than "
                             f"--shots {shots}: raise --n or lower --shots / --classes")
        labeled = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in range(n_classes)])
        y_fit = np.full(n, -1)
        y_fit[labeled] = y[labeled]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # MiB (Linux reports KiB)
        estimator = KNNLabelPropagation(k=k, index=index, device="auto")
        with FeatureStore(Path(tmp) / "synthetic.h5") as fs:
            t0 = time.perf_counter()
            estimator.fit_chunks(fs.row_chunks("synthetic", np.arange(n)), y_fit)
            fit_seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    unlabeled = y_fit < 0
    accuracy = float((estimator.transduction_[unlabeled] == y[unlabeled]).mean())
    chosen = index if index != "auto" else ("ivf" if n > 50_000 else "flat")
    pick = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    recall = recall_at_k(estimator.X_[pick], k, chosen) if chosen != "flat" else 1.0
    return {"rows": n, "dim": dim, "classes": n_classes, "labeled": int(labeled.size), "k": k, "index": chosen,
            "fit_seconds": fit_seconds, "data_seconds": data_seconds, "accuracy_unlabeled": accuracy,
            f"recall_at_{k}_on_{pick.size}_sample": recall, "peak_rss_mib": peak, "rss_before_fit_mib": rss_before,
            "features_mib": n * dim * 4 / 2**20, "transformed_mib": estimator.X_.nbytes / 2**20}
