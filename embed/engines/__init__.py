"""Embedding engines: one decode-preprocess-forward loop (:mod:`~embed.engines.local`, single process) and its
scale-out over Ray Data actors (:mod:`~embed.engines.ray`), both writing through :mod:`store`; :func:`embed` picks
the engine."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embed.sources import ImageSet
from store.validation import UserError

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
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if engine == "ray":
        from embed.engines.ray import embed_store  # Ray is an optional extra

        return embed_store(images, store, specs, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                           shards=shards, shard_size=shard_size, batch_size=batch_size, image_size=image_size,
                           templates=templates, views=views, dtype=dtype, progress=progress)
    from embed.engines.local import embed as embed_locally

    return embed_locally(images, store, specs, device=device, batch_size=batch_size, workers=workers, dtype=dtype,
                         views=views, templates=templates, image_size=image_size, seed=seed, progress=progress)
