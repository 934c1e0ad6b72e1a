"""Embedding engines: one decode-preprocess-forward loop (:mod:`~embed.engines.local`, single process) and its
scale-out over Ray Data actors (:mod:`~embed.engines.ray`), both writing through :mod:`store`; :func:`embed` picks
the engine."""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from embed.sources import ImageSet
from store.validation import UserError

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def embed(images: ImageSet, store: str | Path, specs: Sequence[str], *, engine: str = "local", device: str = "auto",
          batch_size: int = 64, workers: int | None = None, dtype: str = "float32", views: int = 0,
          templates: Sequence[str] | None = None, image_size: int | None = None, seed: int = 0, progress: bool = True,
          address: str | None = None, num_cpus: int | None = None, num_gpus: int = 0,
          shards: str | Path | None = None, shard_size: int = 100_000):
    """Embed ``images`` with each backbone of ``specs`` into ``store`` (created, or resumed) on ``engine``.

    ``local`` (:func:`embed.engines.local.embed`) runs in this process with decode workers; ``ray``
    (:func:`embed.engines.ray.embed_store`) on a Ray cluster (``address``, ``num_cpus``, ``num_gpus``) through shard
    folders (``shards``, ``shard_size``), and stores no augmented views. Both give the same store, row for row.
    Returns the run's :class:`~embed.engines.local.RunSummary`.

    A store that exists is first brought in line with ``images`` (:func:`store.sync.sync_store`): labels, splits and
    classes updated, files moved or added or removed taken into account, features reused by content; the engine then
    embeds only what the store lacks. The store records the data folder as an absolute path.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    images = dataclasses.replace(images, root=Path(os.path.abspath(images.root)))
    synced = _sync(images, store, progress) if Path(store).exists() else None
    if engine == "ray":
        from embed.engines.ray import embed_store  # Ray is an optional extra

        summary = embed_store(images, store, specs, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                              shards=shards, shard_size=shard_size, batch_size=batch_size, image_size=image_size,
                              templates=templates, views=views, dtype=dtype, progress=progress,
                              fresh=bool(synced and synced.rebuilt))
    else:
        from embed.engines.local import embed as embed_locally

        summary = embed_locally(images, store, specs, device=device, batch_size=batch_size, workers=workers,
                                dtype=dtype, views=views, templates=templates, image_size=image_size, seed=seed,
                                progress=progress, check_content=not (synced and synced.rebuilt))
    summary.sync = synced
    if synced is not None and synced.rebuilt:
        _warn_stale(store, summary)
    return summary


def _sync(images: ImageSet, store: str | Path, progress: bool):
    """Bring an existing store in line with ``images`` (:func:`store.sync.sync_store`), hashing the listed files
    only when their ids changed."""
    from embed.engines.local import file_digests
    from store.sync import sync_store

    from store import FeatureStore

    with FeatureStore(store) as fs:  # a store written before class ids and display names were told apart holds
        classes = images.classes if fs.has_display_names else images.display_names  # the display names as classes
    synced = sync_store(store, images.ids, images.splits, images.labels, classes, images.root,
                        lambda: file_digests(images.paths, progress))
    log.info("%s: %s", store, synced.line())
    return synced


def _warn_stale(store: str | Path, summary) -> None:
    """Backbones of the store that this run did not embed lack the rows of new files: say how to finish them."""
    from store import FeatureStore

    with FeatureStore(store) as fs:
        stale = [spec for spec in fs.backbones if spec not in summary.embedded and not fs.rows_done(spec).all()]
    if stale:
        log.warning("%s: new files lack features of %s: rerun with --backbone %s", store, ", ".join(stale),
                    " --backbone ".join(stale))
