"""Where the head and the labels come from: an ``--init`` model or LP-FT's probe, the validation split, and
pseudo-labels from a fitted classify model (``selftrain``'s class-aware rule)."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from classify import pipeline
from classify.finetune.data import ImageViews, collate_views
from classify.methods.linear import LinearProbe
from classify.methods.thresholds import ClassAwareThresholds, classaware_pool_mask
from embed.backbones import Backbone
from embed.sources import ImageSet
from store import FeatureStore
from store.validation import UserError

log = logging.getLogger(__name__)

INIT_METHODS = ("linear", "zeroshot")


# --------------------------------------------------------------------------------------------------- heads & labels
def load_fitted(model) -> pipeline.FittedModel:
    return pipeline.load_model(model) if isinstance(model, (str, Path)) else model


def model_class_ids(fitted, images: ImageSet) -> list[str]:
    """The class ids of ``images`` a fitted model predicts, in its ``classes_`` order; a model of a store written
    before class ids and display names were told apart names its classes by their display names."""
    shown = dict(zip(images.display_names, images.classes))
    names = [fitted.classes[int(c)] for c in fitted.estimator.classes_]
    return [name if name in images.classes else shown.get(name, name) for name in names]


def head_from_model(model, classes: Sequence[str] | ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """The head ``(W (C, D), b (C,))`` of a fitted ``linear`` / ``zeroshot`` model, rows in the order of ``classes``.

    Parameters
    ----------
    model : str, Path or FittedModel
        A model saved by ``python -m classify fit --method linear|zeroshot``.
    classes : list of str, or ImageSet
        Class ids of the data being fine-tuned on (matched by name), or its images.
    """
    fitted = load_fitted(model)
    if fitted.method not in INIT_METHODS or not hasattr(fitted.estimator, "linear_head"):
        raise UserError(f"--init must be a model of method {' or '.join(INIT_METHODS)} (a head on the backbone's "
                         f"features), not {fitted.method!r}; fit one with `python -m classify fit --method linear "
                         "--store S --out M`")
    if len(fitted.backbones) != 1:
        raise UserError(f"--init model was fitted on {len(fitted.backbones)} backbones; fit it on the one backbone "
                         "being fine-tuned")
    W, b = fitted.estimator.linear_head()  # (C', D), (C',) rows follow estimator.classes_
    if isinstance(classes, ImageSet):
        names, classes = model_class_ids(fitted, classes), classes.classes
    else:
        names = [fitted.classes[int(c)] for c in fitted.estimator.classes_]
    if sorted(names) != sorted(classes):
        raise UserError(f"--init model predicts classes {names} but the data has {list(classes)}; fit it on a store "
                         "of this data folder")
    order = [names.index(c) for c in classes]
    return np.asarray(W)[order], np.asarray(b)[order]


def split_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: per class ``round(fraction * n)`` rows (at least one when the class has two
    or more rows and ``fraction > 0``), never a class's last row."""
    labels = np.asarray(labels)
    val = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return val
    rng = np.random.default_rng([seed, 17])
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        val[rows[:k]] = True
    return val


def select_pseudo_labels(model, store: str | Path, images: ImageSet, train_counts: np.ndarray, threshold: float,
                         steps: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Confident predictions of a fitted classify model on the store's unlabeled rows, as image rows of ``images``.

    Selection is ``selftrain``'s "classaware" rule, the same function
    (:func:`~classify.methods.thresholds.classaware_pool_mask`)
   : thresholds starting at ``threshold`` with the labeled class
    prior as target, stepped ``steps`` times on the pool, each class keeping the most lenient threshold of the EMA
    window.

    Returns
    -------
    rows : ndarray (n,) int
        Rows of ``images`` (the same ids as the store's).
    labels : ndarray (n,) int
        Class index in ``images.classes``.
    report : dict
        JSON-able counts per class and final thresholds.
    """
    fitted = load_fitted(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones, "unlabeled", views=fitted.views)
    if not len(data.ids):
        raise UserError(f"{store} has no decoded unlabeled rows to pseudo-label; drop --pseudo or embed unlabeled/")
    names = model_class_ids(fitted, images)
    unknown = sorted(set(names) - set(images.classes))
    if unknown:
        raise UserError(f"--pseudo model predicts classes {unknown} that the data folder lacks; use a model fitted on "
                         "a store of this data folder")
    proba = np.zeros((len(data.ids), len(images.classes)))  # (n_u, C)
    proba[:, [images.classes.index(n) for n in names]] = fitted.estimator.predict_proba(data.X)
    counts = np.asarray(train_counts, dtype=np.float64)
    thresholds = ClassAwareThresholds(len(images.classes), tau0=threshold,
                                      target=counts if np.all(counts > 0) else None)
    mask, details = classaware_pool_mask(proba, thresholds, steps)  # (n_u,): selftrain's rule, the same code
    index = {image_id: row for row, image_id in enumerate(images.ids)}
    missing = [i for i in data.ids[mask] if i not in index]
    if missing:
        raise UserError(f"{len(missing)} unlabeled ids of {store} (e.g. {missing[0]}) are not in the data folder; "
                         "pass the store built from this --data folder")
    rows = np.array([index[i] for i in data.ids[mask]], dtype=np.int64)
    labels = proba[mask].argmax(axis=1).astype(np.int64)
    report = {"model": fitted.method, "n_pool": int(len(data.ids)), "n_selected": int(mask.sum()),
              "per_class": np.bincount(labels, minlength=len(images.classes)).tolist(),
              **details}
    log.info("pseudo-labels from %s: %d of %d unlabeled rows kept, per class %s", fitted.method, mask.sum(),
             len(mask), report["per_class"])
    return rows, labels, report


def probe_head(images: ImageSet, backbone: Backbone, rows: np.ndarray, device: torch.device, workers: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LP-FT's first stage: a :class:`LinearProbe` on the frozen features of ``rows`` (eval transform)."""
    target = backbone.resize_size
    loader = DataLoader(ImageViews(images.paths, [(int(r), 0) for r in rows], [backbone.eval_transform], target),
                        batch_size=64, num_workers=workers, collate_fn=collate_views)
    feats, got_rows = [], []
    cuda = device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
        for got, x in loader:
            if x is None:
                continue
            x = x[:, 0].to(device)
            feats.append(backbone.encode_images(x.contiguous(memory_format=torch.channels_last) if cuda else x)[0]
                         .cpu().numpy())  # (B, D)
            got_rows.append(got.numpy())
    if not feats:
        raise UserError("no labeled training image could be decoded")
    X, y = np.concatenate(feats), images.labels[np.concatenate(got_rows)]  # (n, D), (n,)
    missing = sorted(set(range(len(images.classes))) - set(np.unique(y).tolist()))
    if missing:
        raise UserError(f"classes {[images.classes[c] for c in missing]} have no decodable training image")
    probe = LinearProbe(random_state=seed).fit(X, y)
    log.info("initial head: linear probe (C=%g) on %d frozen training features", probe.C_, len(y))
    return probe.linear_head()
