"""Evaluation on a store: metrics as CLIP_benchmark names them, the labeled test split (or held-out validation
folders, or stratified CV over the labeled train rows), and the provenance of every result.

The few-shot protocol of ``python -m benchmarks run`` lives here too (:func:`draw_labels`, :func:`few_shot_labels`,
:func:`fit_predict`), so that ``classify evaluate --shots N`` reproduces its tables to the digit."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, top_k_accuracy_score
from sklearn.model_selection import StratifiedKFold

from classify.methods.features import UNLABELED, align_proba, single_threaded_blas
from classify.pipeline import Data, build_for_store, fit_rows, load_data, unpredictable_classes, uses_views
from store import FeatureStore
from store.layout import is_validation_id
from store.validation import NONE, Int, UserError, check_params

log = logging.getLogger(__name__)


def scores(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None = None,
           n_classes: int | None = None) -> dict[str, float]:
    """The metrics of an evaluation, with the names CLIP_benchmark uses beside the suite's own.

    Parameters
    ----------
    y_true : ndarray of shape (n,)
        True class indices.
    y_pred : ndarray of shape (n,)
        Predicted class indices.
    proba : ndarray of shape (n, n_classes), optional
        Class probabilities, column c for class index c; gives ``acc5``.
    n_classes : int, optional
        Classes of the store; ``acc5`` is reported when there are at least 5 (default: the columns of ``proba``).

    Returns
    -------
    dict
        ``accuracy`` and ``acc1`` (top-1, the same number), ``acc5`` (top-5, with ``proba`` and >= 5 classes),
        ``mean_per_class_recall`` (balanced accuracy over the classes present in ``y_true``) and ``macro_f1``.
    """
    accuracy = float(accuracy_score(y_true, y_pred))
    result = {"accuracy": accuracy, "acc1": accuracy}
    n_classes = n_classes if n_classes is not None else None if proba is None else proba.shape[1]
    if proba is not None and n_classes is not None and n_classes >= 5:
        y_true, proba = np.asarray(y_true), np.asarray(proba)
        ranked = np.isfinite(proba).all(axis=1)  # a row without probabilities (NaN) ranks no class: a top-5 miss
        hits = top_k_accuracy_score(y_true[ranked], proba[ranked], k=5, labels=np.arange(proba.shape[1]),
                                    normalize=False) if ranked.any() else 0
        result["acc5"] = float(hits / len(y_true))
    result["mean_per_class_recall"] = float(balanced_accuracy_score(y_true, y_pred))
    result["macro_f1"] = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    return result


def class_proba(estimator, X: np.ndarray, n_classes: int) -> np.ndarray | None:
    """``predict_proba`` with column c for class index c (0 for classes the estimator does not know); None when the
    estimator has no probabilities."""
    if not hasattr(estimator, "predict_proba"):
        return None
    return align_proba(np.asarray(estimator.predict_proba(X)), estimator.classes_, np.arange(n_classes))


def described(estimator) -> dict[str, Any]:
    """``{method name: estimator.describe()}`` for a fitted method that accounts for its own choices (``auto``: the
    candidate it chose, each candidate's CV estimate and why), else ``{}``: the entry results carry per fit."""
    describe = getattr(estimator, "describe", None)
    if not callable(describe):
        return {}
    return {getattr(type(estimator), "method_name", type(estimator).__name__): describe()}


def effective_params(estimator, given: dict | None = None) -> dict[str, Any]:
    """Every parameter the method ran with, defaults included (what a result needs to be reproduced), as plain JSON:
    a nested estimator by its method name, arrays the store supplied (text embeddings, ...) left out. With several
    backbones combined per backbone (``--combine ensemble``), the parameters given."""
    if not hasattr(estimator, "get_params"):
        return dict(given or {})
    def plain(value):
        if hasattr(value, "get_params"):  # a teacher, a base model, auto's candidates
            return getattr(value, "method_name", type(value).__name__)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None), dict)) else str(value)

    return {name: plain(value) for name, value in estimator.get_params(deep=False).items()
            # store context (text embeddings, templates) is recorded in provenance, not here
            if not isinstance(value, np.ndarray) and not (isinstance(value, (list, tuple)) and len(value) > 64)}


def provenance(store: FeatureStore, backbones: Sequence[str]) -> dict[str, Any]:
    """Where an evaluation's numbers come from: the store (path, data root, fingerprints of its rows and of its label
    state, classes), each backbone's origin (weights hash, preprocessing, dim) and the library versions of this run."""
    import platform

    versions = {"python": platform.python_version(), "numpy": np.__version__, "sklearn": sklearn.__version__}
    for dist in ("fewshot-suite", "torch", "faiss-cpu", "h5py"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    origins = {}
    for spec in backbones:
        info = store.provenance(spec)
        origins[spec] = {key: info[key] for key in ("weights_sha256", "preprocessing", "dim", "dtype") if key in info}
    return {"store": str(store.path), "data_root": store.root, "store_fingerprint": store.fingerprint,
            "store_labels_fingerprint": store.labels_fingerprint, "classes": store.classes, "backbones": origins,
            "versions": versions, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}




#: the protocol of a store with a labeled test split
TEST_SPLIT = "labeled test split"


def held_out(data: Data) -> tuple[Data, str | None]:
    """The rows an evaluation scores, and its protocol: the labeled test split; else, when there is none, the
    labeled train rows from a ``validation/`` or ``val/`` folder, returned as test rows (so that fits see them
    without their labels); else None (cross-validation)."""
    if ((data.splits == "test") & (data.y >= 0)).any():
        return data, TEST_SPLIT
    validation = (data.splits == "train") & (data.y >= 0) & np.array([is_validation_id(i) for i in data.ids])
    if not validation.any() or not ((data.splits == "train") & (data.y >= 0) & ~validation).any():
        return data, None
    splits = np.where(validation, "test", data.splits)
    return dataclasses.replace(data, splits=splits), "validation folder (held out of the fit)"


def saved_model_predictions(store: FeatureStore, fitted, folds: int = 5, seed: int = 0):
    """Predictions of a saved model on the rows :func:`held_out` says an evaluation scores, so that ``report``
    scores a model as ``evaluate`` scores its method.

    The labeled test split is predicted by the saved model itself. ``validation/`` rows were in its fit (``classify
    fit`` trains on every label), so its method is refitted without their labels, as ``evaluate`` does; without either,
    the labeled train rows get out-of-fold predictions (``folds``, ``seed``).

    Returns
    -------
    ids, y_true, y_pred : ndarray
        The scored rows' ids, labels and predictions.
    protocol : str
        How the rows were scored, for the page.
    """
    data, protocol = held_out(load_data(store, fitted.backbones, views=fitted.views))
    test = (data.splits == "test") & (data.y >= 0)
    if protocol == TEST_SPLIT:
        return data.ids[test], data.y[test], np.asarray(fitted.estimator.predict(data.X[test])), protocol
    if protocol is not None:
        estimator = build_for_store(store, fitted.backbones, fitted.method, fitted.params, fitted.combine, data.slices)
        X, y = fit_rows(data, transductive=True)
        y_pred, *_ = fit_predict(estimator, X, y, data.X[test])
        return data.ids[test], data.y[test], y_pred, f"{protocol}; {fitted.method} refitted without their labels"
    ids = data.ids[(data.splits == "train") & (data.y >= 0)]  # the order of cross_val_predictions
    y_true, y_pred, *_, k = cross_val_predictions(store, data, fitted.backbones, fitted.method, fitted.params,
                                                  fitted.combine, folds=folds, seed=seed)
    return ids, y_true, y_pred, f"{k}-fold CV on the labeled train rows"


def draw_labels(y_train: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices into ``y_train`` of ``shots`` rows per class (all rows of a smaller class), seeded by ``(seed, shots)``:
    the label draw of ``python -m benchmarks run`` and ``python -m classify evaluate --shots``."""
    rng = np.random.default_rng([seed, shots])
    picked = [rng.permutation(np.flatnonzero(y_train == c))[:shots] for c in np.unique(y_train[y_train >= 0])]
    return np.sort(np.concatenate(picked))


def few_shot_labels(data: Data, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labels of one few-shot draw: ``shots`` per class drawn (:func:`draw_labels`) from the labeled train rows.

    Parameters
    ----------
    data : Data
        The rows of a store (:func:`classify.pipeline.load_data`).
    shots : int
        Labels per class.
    seed : int
        Seed of the draw.

    Returns
    -------
    y : ndarray of shape (n,)
        The label of each row of ``data`` a fit sees: the drawn rows keep theirs, every other row (the other train
        rows included) is -1.
    labeled : ndarray of shape (n_labeled,)
        The drawn rows, as indices into ``data``.
    """
    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    labeled = train[draw_labels(data.y[train], shots, seed)]
    y = np.full(len(data.y), UNLABELED)
    y[labeled] = data.y[labeled]
    return y, labeled


def fit_predict(estimator, X: np.ndarray, y: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Fit ``estimator`` on ``(X, y)`` and predict ``X_test`` with one BLAS thread (see
    :func:`classify.methods.features.single_threaded_blas`), as evaluations and benchmarks run every method.

    Returns
    -------
    predicted : ndarray of shape (n_test,)
    fit_seconds, predict_seconds : float
    """
    with single_threaded_blas():
        t0 = time.perf_counter()
        estimator.fit(X, y)
        t1 = time.perf_counter()
        predicted = estimator.predict(X_test)
        t2 = time.perf_counter()
    return predicted, t1 - t0, t2 - t1


def evaluate(store: FeatureStore, backbones: Sequence[str], method: str, params: dict | None = None,
             combine: str = "concat", transductive: bool = True, folds: int = 5, seed: int = 0,
             shots: int | None = None, draws: int = 3) -> dict[str, Any]:
    """Metrics on the labeled test split, else on the images of a ``validation/`` (``val/``) folder held out of the
    fit, else by stratified CV over the labeled train rows; with their provenance.

    With ``shots``, the few-shot protocol of ``python -m benchmarks run`` instead: for each of ``draws`` seeds
    (``seed`` .. ``seed + draws - 1``), ``shots`` labels per class are drawn from the labeled train rows
    (:func:`few_shot_labels`), the other train rows join the unlabeled pool without their labels, and the fit is
    scored on the labeled test split (or the held-out validation folder); never by CV.

    Returns a JSON-able dict: the metrics of :func:`scores` (accuracy, acc1, acc5, mean_per_class_recall,
    macro_f1), fit_seconds, predict_seconds, protocol, n_test, method, params, backbones, combine, seed,
    ``provenance`` (:func:`provenance`) and, for methods that report on their fit (self-training's pseudo-label
    counts), ``fit_report``; ``unpredictable_classes``: the store's classes the fits cannot predict (every train image
    failed to decode, or none is labeled), each also logged as a warning; for methods that describe their choices
    (:func:`described`), an entry under the method's name (``"auto": {"chosen": ..., "reason": ...,
    "candidates": ...}``). With ``shots``: each metric is the mean over the draws, with ``<metric>_std`` (the standard
    deviation over draws, as the benchmark tables show), ``shots``, and ``draws``: one dict per draw (seed, accuracy,
    macro_f1, mean_per_class_recall, acc5 when reported, fit_seconds, predict_seconds, n_labeled, and fit_report and
    the method's entry when it has them). By cross-validation: ``per_fold``, one dict per fold with the method's
    entry, when it has one.
    """
    result = _evaluate(store, backbones, method, params, combine, transductive, folds, seed, shots, draws)
    metrics = {k: result[k] for k in ("acc1", "acc5", "mean_per_class_recall", "macro_f1") if k in result}
    return {**result, **clip_benchmark_fields(store, backbones, method), "metrics": metrics}


def clip_benchmark_fields(store: FeatureStore, backbones: Sequence[str], method: str) -> dict[str, Any]:
    """``dataset``, ``model``, ``pretrained`` and ``task`` as CLIP_benchmark names a result, so that result files of
    both tools line up: the data folder's name, each backbone's architecture and weights (``clip:ViT-B-32/openai`` ->
    ``ViT-B-32`` and ``openai``; a checkpoint path for ``@``), and the task (the method's name)."""
    models, pretrained = [], []
    for spec in backbones:
        name = spec.split(":", 1)[-1]
        arch, _, rest = name.partition("@") if "@" in name else name.partition("/")
        models.append(arch)
        pretrained.append(rest or "default")
    root = str(store.root or "").rstrip("/\\")
    return {"dataset": Path(root).name if root else Path(store.path).stem, "model": "+".join(models),
            "pretrained": "+".join(pretrained), "task": f"fewshot_classification/{method}"}


def _evaluate(store: FeatureStore, backbones: Sequence[str], method: str, params: dict | None, combine: str,
              transductive: bool, folds: int, seed: int, shots: int | None, draws: int) -> dict[str, Any]:
    """:func:`evaluate` without the CLIP_benchmark fields."""
    check_params("evaluate", {"shots": shots, "draws": draws}, {"shots": [NONE, Int(1)], "draws": [Int(1)]})
    data, protocol = held_out(load_data(store, backbones, views=uses_views(method)))
    test = (data.splits == "test") & (data.y >= 0)
    n_classes = len(store.classes)
    estimator = build_for_store(store, backbones, method, params, combine, data.slices)
    label_free = getattr(estimator, "needs_labels", True) is False  # zeroshot, conse: every class, without labels
    unpredictable = unpredictable_classes(store, np.arange(n_classes) if label_free else None)
    base = {"method": method, "params": effective_params(estimator, params), "transductive": bool(transductive),
            "backbones": list(backbones), "combine": combine, "seed": seed,
            "provenance": provenance(store, backbones), "unpredictable_classes": unpredictable}
    if shots is not None:
        if protocol is None:
            raise UserError(f"--shots scores on a labeled held-out split and {store.path} has none: add labeled test "
                             "images (test/<class>/) or a validation/<class>/ folder and re-run embed, or drop --shots "
                             "to evaluate on all labels by cross-validation")
        return {**_few_shot(store, data, protocol, backbones, method, params, combine, transductive, seed, shots,
                            draws), **base}
    if protocol is not None:
        X, y = fit_rows(data, transductive)
        pred, fit_seconds, predict_seconds = fit_predict(estimator, X, y, data.X[test])
        proba = class_proba(estimator, data.X[test], n_classes) if n_classes >= 5 else None
        result = {**scores(data.y[test], pred, proba, n_classes), "fit_seconds": fit_seconds,
                  "predict_seconds": predict_seconds, "n_test": int(test.sum()), "protocol": protocol}
        report = getattr(estimator, "fit_report_", None)
        return {**result, **base, **({"fit_report": report} if report is not None else {}), **described(estimator)}
    per_fold: list[dict] = []
    y_cv, predictions, fit_s, pred_s, k, proba = cross_val_predictions(store, data, backbones, method, params,
                                                                       combine, transductive, folds, seed,
                                                                       with_proba=True, details=per_fold)
    return {**scores(y_cv, predictions, proba, n_classes), "fit_seconds": fit_s, "predict_seconds": pred_s,
            "n_test": int(len(y_cv)), "protocol": f"{k}-fold stratified CV on the labeled train rows", **base,
            **({"per_fold": per_fold} if any(per_fold) else {})}


def _few_shot(store: FeatureStore, data: Data, protocol: str, backbones, method, params, combine, transductive,
              seed: int, shots: int, draws: int) -> dict[str, Any]:
    """:func:`evaluate` with ``shots``: one fit per draw, as ``benchmarks.run.run_task`` fits (same rows, labels,
    estimator and :func:`fit_predict`), the metrics as mean and std over the draws."""
    train = (data.splits == "train") & (data.y >= 0)
    if not train.any():
        raise UserError(f"--shots draws its labels from the labeled train rows and {store.path} has none: add "
                         "train/<class>/ images and re-run embed, or drop --shots")
    n_classes = len(store.classes)
    counts = np.bincount(data.y[train], minlength=n_classes)
    short = [store.classes[c] for c in np.flatnonzero((counts > 0) & (counts < shots))]
    if short:
        log.warning("%d class(es) have fewer than %d labeled train images; all of theirs are used: %s", len(short),
                    shots, ", ".join(short[:5]) + (", ..." if len(short) > 5 else ""))
    test = np.flatnonzero((data.splits == "test") & (data.y >= 0))
    keep = np.ones(len(data.y), dtype=bool) if transductive else data.splits != "test"
    X = data.X if transductive else data.X[keep]  # transductive: every row, the test rows without their labels
    per_draw, runs = [], []
    for draw_seed in range(seed, seed + draws):
        y, labeled = few_shot_labels(data, shots, draw_seed)
        estimator = build_for_store(store, backbones, method, params, combine, data.slices)
        predicted, fit_seconds, predict_seconds = fit_predict(estimator, X, y[keep], data.X[test])
        proba = class_proba(estimator, data.X[test], n_classes) if n_classes >= 5 else None
        metrics = scores(data.y[test], predicted, proba, n_classes)
        per_draw.append(metrics)
        run = {"seed": draw_seed, **{k: v for k, v in metrics.items() if k != "acc1"}, "fit_seconds": fit_seconds,
               "predict_seconds": predict_seconds, "n_labeled": int(labeled.size)}
        report = getattr(estimator, "fit_report_", None)
        runs.append({**run, **({"fit_report": report} if report is not None else {}), **described(estimator)})
    result: dict[str, Any] = {}
    for name in per_draw[0]:
        values = np.array([m[name] for m in per_draw])
        result[name], result[f"{name}_std"] = float(values.mean()), float(values.std())
    seeds = f"seed {seed}" if draws == 1 else f"seeds {seed}-{seed + draws - 1}"
    where = "test split" if protocol == "labeled test split" else protocol
    text = (f"{shots} labels per class drawn from the train rows ({draws} draw{'s' if draws > 1 else ''}, {seeds}), "
            f"scored on the {where}" + ("" if transductive else "; test rows kept out of the fit"))
    return {**result, "fit_seconds": float(np.mean([r["fit_seconds"] for r in runs])),
            "predict_seconds": float(np.mean([r["predict_seconds"] for r in runs])), "n_test": int(test.size),
            "protocol": text, "shots": shots, "draws": runs}


def cross_val_predictions(store, data: Data, backbones, method, params, combine, transductive=True, folds=5,
                          seed=0, with_proba=False, details: list | None = None):
    """Out-of-fold predictions for the labeled train rows; each fold's held-out rows are passed unlabeled.

    Returns ``(y_true, predictions, fit_seconds, predict_seconds, k)`` per fold on average, and with
    ``with_proba`` also the out-of-fold probabilities (n, n_classes) (None for a method without them). ``details``,
    a list, receives each fold's :func:`described` estimator.
    """
    labeled = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    if not labeled.size:
        raise UserError(f"{store.path} has no labeled images to score on (neither train/<class>/ nor test/<class>/); "
                         "evaluation needs labels: add labeled images, or use `classify predict` for predictions only")
    counts = np.bincount(data.y[labeled])
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise UserError("cross-validation needs at least 2 labeled images per class and the store has no labeled "
                         "test split; add labeled images (train/<class>/ or test/<class>/)")
    template = build_for_store(store, backbones, method, params, combine, data.slices)
    X_all, y_all = fit_rows(data, transductive)
    keep = data.splits != "test" if not transductive else np.ones(len(data.y), dtype=bool)
    position = np.cumsum(keep) - 1  # row of data -> row of X_all
    predictions = np.empty(len(labeled), dtype=np.int64)
    proba = np.zeros((len(labeled), len(store.classes))) if with_proba else None  # (n, C)
    fit_s = pred_s = 0.0
    for train_idx, held_idx in StratifiedKFold(k, shuffle=True, random_state=seed).split(labeled, data.y[labeled]):
        y_fold = y_all.copy()
        y_fold[position[labeled[held_idx]]] = UNLABELED
        estimator = clone(template)
        t0 = time.perf_counter()
        estimator.fit(X_all, y_fold)
        t1 = time.perf_counter()
        predictions[held_idx] = estimator.predict(data.X[labeled[held_idx]])
        pred_s += time.perf_counter() - t1
        fit_s += t1 - t0
        if details is not None:
            details.append(described(estimator))
        if proba is not None:
            fold_proba = class_proba(estimator, data.X[labeled[held_idx]], proba.shape[1])
            if fold_proba is None:
                proba = None
            else:
                proba[held_idx] = fold_proba
    if with_proba:
        return data.y[labeled], predictions, fit_s / k, pred_s / k, k, proba
    return data.y[labeled], predictions, fit_s / k, pred_s / k, k
