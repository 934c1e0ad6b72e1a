"""Pooled intermediate-stage features of a timm backbone for the rows of a benchmark store (the ``layers`` lever of
:mod:`benchmarks.levers`), computed once and cached next to the store.

The stages are the last :data:`~embed.backbones.stages_kind.STAGES` feature stages of the network before its head,
as timm's ``forward_intermediates(x, indices=STAGES)`` gives them (for ``tf_efficientnet_lite0``: blocks 2, 4 and
6, with 40, 112 and 320 channels at strides 8, 16 and 32); each is global-average-pooled. The same pass also gives the
plain pooled features, which are checked against the store's own rows: a store embedded with other weights or another
preprocessing is refused rather than joined to features of another model. The same features, joined, are what
``embed run --backbone stages:<name>`` stores (:mod:`embed.backbones.stages_kind`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embed.backbones import load_backbone
from embed.backbones.stages_kind import STAGES, pooled_stages
from embed.engines.local import ImageRows, collate
from store import FeatureStore
from store.atomic import atomic_write
from store.validation import UserError

log = logging.getLogger(__name__)

#: Smallest cosine between the recomputed plain features and the store's rows that counts as the same model.
SAME_MODEL_COSINE = 0.999


def cache_path(store_path: Path) -> Path:
    """Where the layer features of ``store_path`` are cached: ``<store>-layers<STAGES>.npz`` beside it."""
    return store_path.with_name(f"{store_path.stem}-layers{STAGES}.npz")


def _embed(paths: list[Path], spec: str, image_size: int | None, batch_size: int) -> tuple[np.ndarray, list]:
    """Plain features (n, D) and pooled stages [(n, C_s)] of the images ``paths``, decoded as ``embed run`` does."""
    backbone = load_backbone(spec, device="cpu", image_size=image_size, offline=True)
    loader = DataLoader(ImageRows(paths, np.arange(len(paths)), backbone), batch_size=batch_size, collate_fn=collate)
    heads, blocks = [], []
    for rows, ok, x, _views, _sha, errors in loader:
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise UserError(f"{paths[rows[bad]]} cannot be decoded ({errors[bad]}); re-embed the store")
        with torch.inference_mode():
            head, stages, _ = pooled_stages(backbone.model, x)
        heads.append(head.numpy())
        blocks.append([s.numpy() for s in stages])
        log.info("layer features: %d / %d images", rows[-1] + 1, len(paths))
    return np.vstack(heads), [np.vstack(parts) for parts in zip(*blocks)]


def _check_same_model(head: np.ndarray, stored: np.ndarray, spec: str) -> None:
    """Refuse when the recomputed plain features are not the store's (other weights, size or preprocessing)."""
    cosine = np.sum(head * stored, axis=1) / (np.linalg.norm(head, axis=1) * np.linalg.norm(stored, axis=1) + 1e-12)
    if cosine.min() < SAME_MODEL_COSINE:
        raise UserError(f"{spec} recomputed gives other features than the store's (cosine {cosine.min():.4f}): the "
                        "store was embedded with other weights, image size or preprocessing; re-embed it")


def _cached(path: Path, fingerprint: str, spec: str, ids: np.ndarray) -> list[np.ndarray] | None:
    """The cached blocks when ``path`` was written for these rows of this store and backbone, else None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["fingerprint"]) != fingerprint or str(z["spec"]) != spec or not np.array_equal(z["ids"], ids):
            log.info("%s is for other rows or another backbone: computing again", path)
            return None
        return [z[f"stage{s}"] for s in range(STAGES)]


def layer_features(store_path: Path, spec: str, image_size: int | None, batch_size: int = 32) -> list[np.ndarray]:
    """The pooled last :data:`STAGES` stages of backbone ``spec`` for the complete rows of ``spec`` in the store at
    ``store_path`` (in :func:`classify.pipeline.load_data`'s row order), [(n, C_s)] from the earliest stage.

    Computed from the image files under the store's root at ``image_size`` (None: the model's own) with the
    backbone's offline weights and timm's preprocessing, then cached in :func:`cache_path`, keyed by the store's
    fingerprint, the backbone and the row ids: a second call reads the cache.
    """
    from classify import pipeline

    with FeatureStore(store_path) as fs:
        data = pipeline.load_data(fs, [spec])
        fingerprint, root = fs.fingerprint, Path(fs.root)
    path = cache_path(store_path)
    blocks = _cached(path, fingerprint, spec, data.ids)
    if blocks is not None:
        return blocks
    head, blocks = _embed([root / i for i in data.ids], spec, image_size, batch_size)
    _check_same_model(head, data.X, spec)
    arrays = {f"stage{s}": b.astype(np.float32) for s, b in enumerate(blocks)}
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, fingerprint=np.str_(fingerprint), spec=np.str_(spec), ids=data.ids.astype(str), **arrays)
    log.info("cached %s layer features (%s) in %s", spec, ", ".join(str(b.shape[1]) for b in blocks), path)
    return blocks
