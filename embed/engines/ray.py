"""Scale-out embedding on Ray Data: the local runner's embedding loop, with Ray actors decoding and embedding.

Each actor loads the model once (``map_batches`` with a callable class; GPU actors when GPUs are asked for) and
turns batches of ``(row, path)`` into :class:`store.writers.Batch` columns with :class:`embed.engines.local.ImageRows`,
:func:`embed.engines.local.collate` and :class:`embed.engines.local.Mapper` --
the same code as the local runner. The driver is
the single writer: :func:`store.writers.write_batches` hands every batch to a :class:`store.shards.ShardWriter`,
which writes each shard atomically once all its rows are in, so a killed job, started again, skips every shard
already written. Shards keep the backbone's raw features (float32 unless ``dtype`` says otherwise) and its
classifier probabilities, so the store they are imported into equals the local runner's row for row;
``python -m store export`` writes the L2-normalised float16 shards embedding-reader and autofaiss expect.

Multi-node: ``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others, then
``python -m embed run ... --engine ray --address HEAD:6379``. Every node must see the images and the shard folder
at the same paths (a shared filesystem); the driver receives every feature (4 bytes per value in float32), which
bounds the rate at roughly its network bandwidth.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from embed.sources import ImageSet
from store import display_id, image_list_sha256
from store.layout import rows_sha256
from store.shard_format import shard_rows
from store.shards import ShardWriter
from store.writers import Batch, write_batches
from store.validation import UserError

if TYPE_CHECKING:
    from embed.engines.local import RunSummary

log = logging.getLogger(__name__)


class EmbedActor:
    """A Ray Data actor: one backbone per process, batches of ``{"row", "path"}`` → :class:`Batch` columns."""

    def __init__(self, spec: str, image_size: int | None, device: str, threads: int):
        import torch

        from embed.backbones import load_backbone
        from embed.engines.local import Mapper, resolve_device

        torch.set_num_threads(max(1, threads))
        device = resolve_device(device)
        self.mapper = Mapper(load_backbone(spec, device=str(device), image_size=image_size), device)

    def __call__(self, batch: dict) -> dict:
        from embed.engines.local import ImageRows, collate

        rows = np.asarray(batch["row"], dtype=np.int64)
        # Paths travel as bytes: Arrow strings must be UTF-8, file names need not be.
        images = ImageRows([os.fsdecode(bytes(p)) for p in batch["path"]], rows, self.mapper.backbone)
        return self.mapper(*collate([images[k] for k in range(len(images))])).columns()


def shard_meta(images: ImageSet, backbone, shard_size: int, templates: list[str] | None,
               dtype: str = "float32") -> dict:
    """Provenance of a shard folder of raw features (see :mod:`store.shards`), from
    :func:`embed.engines.local.provenance`."""
    from embed.engines.local import provenance

    described = backbone.describe()
    meta = {key: value for key, value in provenance(backbone, dtype).items() if key not in ("views", "view_kinds")}
    meta.update(normalized=False, classes=list(images.classes), display_names=list(images.display_names),
                root=str(images.root),
                image_list_sha256=image_list_sha256(images.ids, images.splits, images.labels, images.classes),
                rows_sha256=rows_sha256(images.ids),
                n_images=len(images), shard_size=shard_size, n_shards=math.ceil(len(images) / shard_size),
                dim=described["dim"])
    if described["has_text"]:
        meta.update(templates=list(templates), logit_scale=backbone.logit_scale)
    if described["has_probs"]:
        meta["prob_classes"] = list(backbone.prob_classes)
    if backbone.classifier_head() is not None:
        meta["head_classes"] = list(backbone.prob_classes)
    return meta


def _write_side_arrays(writer: ShardWriter, backbone, classes: list[str], templates: list[str]) -> None:
    """The CLIP text embeddings and the classifier head, computed once on the driver."""
    import torch

    if backbone.logit_scale is not None:
        with torch.inference_mode():
            writer.write_extra("text_emb", backbone.encode_text(classes, templates))  # (C, T, D)
    if (head := backbone.classifier_head()) is not None:
        writer.write_extra("head_weight", head[0])  # (K, D)
        writer.write_extra("head_bias", head[1])  # (K,)


def _start_ray(address: str | None, num_cpus: int | None):
    """The ``ray`` module, connected (to ``address``, or a new local Ray with ``num_cpus`` CPUs)."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'ray[data]' (or this project's [ray] extra)") from None
    if not ray.is_initialized():
        # actors on other nodes do not inherit this process's environment: --offline must reach them explicitly
        offline = {"env_vars": {"HF_HUB_OFFLINE": "1"}} if os.environ.get("HF_HUB_OFFLINE") == "1" else None
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, runtime_env=offline)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in order: shards complete one after another
    ctx.enable_progress_bars = False  # ours counts images
    return ray


def _embedded(ray, rows: np.ndarray, paths, spec: str, image_size: int | None, num_gpus: int, batch_size: int):
    """The Ray dataset of :class:`Batch` columns of ``rows``, embedded by :class:`EmbedActor` actors."""
    if num_gpus:
        actors = max(1, int(ray.cluster_resources().get("GPU", 0) // num_gpus))
    else:
        actors = int(ray.cluster_resources().get("CPU", 1))
    data = ray.data.from_items([{"row": int(r), "path": os.fsencode(paths[r])} for r in rows])
    return data.map_batches(EmbedActor, fn_constructor_kwargs={
        "spec": spec, "image_size": image_size, "device": "cuda" if num_gpus else "cpu", "threads": 1},
        batch_size=batch_size, concurrency=actors, num_cpus=1, num_gpus=num_gpus or None, batch_format="numpy")


def embed_shards(images: ImageSet, spec: str, folder: str | Path, *, address: str | None = None,
                 num_cpus: int | None = None, num_gpus: int = 0, batch_size: int = 64, shard_size: int = 10_000,
                 image_size: int | None = None, templates: list[str] | None = None, dtype: str = "float32",
                 progress: bool = True) -> dict:
    """Embed ``images`` with one backbone on Ray into a shard folder of raw features.

    Returns ``{"spec": canonical spec, "shards": total, "written": shards written now, "rows": rows embedded now,
    "changed": ids of files that changed since a finished shard read them (their shards are written again)}``.

    Parameters
    ----------
    address : str, optional
        An existing Ray cluster (``HOST:6379`` or ``auto``); default: a local Ray with ``num_cpus`` CPUs.
    num_cpus, num_gpus : int
        Local cluster CPUs; GPUs per actor (0: CPU actors, one per CPU of the cluster).
    shard_size : int
        Rows per shard file (the resume granularity).
    dtype : {"float32", "float16"}
        Storage type of the features in the shards (and in the store they are imported into).
    """
    from embed.backbones import load_backbone
    from embed.templates import default_templates

    if shard_size < 1 or batch_size < 1:
        raise UserError("--shard-size and --batch-size must be at least 1")
    if dtype not in ("float32", "float16"):
        raise UserError(f"--dtype must be float32 or float16, not {dtype!r}")
    backbone = load_backbone(spec, image_size=image_size)  # provenance, text side and head: once, on the driver
    templates = list(templates or (default_templates() if backbone.logit_scale is not None else ()))
    writer = ShardWriter(folder, shard_meta(images, backbone, shard_size, templates, dtype), images.ids,
                         images.splits, images.labels)
    _write_side_arrays(writer, backbone, list(images.display_names), templates)  # prompts read display names
    n_shards = writer.meta["n_shards"]
    changed = _forget_changed_shards(writer, images, shard_size, progress)
    pending = [s for s in range(n_shards) if not writer.done(s)]
    result = {"spec": backbone.spec, "shards": n_shards, "written": 0, "rows": 0, "changed": changed}
    if not pending:
        log.info("%s: all %d shards already in %s", spec, n_shards, folder)
        return result
    if len(pending) < n_shards:
        log.info("%s: resuming, %d of %d shards already written", spec, n_shards - len(pending), n_shards)
    rows = np.concatenate([shard_rows(s, shard_size, len(images)) for s in pending])
    ray = _start_ray(address, num_cpus)
    embedded = _embedded(ray, rows, images.paths, spec, image_size, num_gpus, batch_size)
    batches = (Batch.from_columns(c) for c in embedded.iter_batches(batch_size=None, batch_format="numpy"))
    with tqdm(total=len(rows), unit="img", desc=f"{spec} (ray)", disable=not progress) as bar:
        result["rows"] = write_batches(batches, writer, bar)
    result["written"] = sum(writer.done(s) for s in pending)
    return result


def _forget_changed_shards(writer: ShardWriter, images: ImageSet, shard_size: int, progress: bool) -> list[str]:
    """Ids of files that changed since a finished shard read them; those shards lose their done marker.

    Each file a finished shard read is hashed again and compared with the sha256 in the shard's metadata (as the
    local runner does on resume), so another picture under the same name is embedded again, never kept silently.
    """
    from embed.engines.local import changed_rows

    finished = [s for s in range(writer.meta["n_shards"]) if writer.done(s)]
    if not finished:
        return []
    rows = np.concatenate([shard_rows(s, shard_size, len(images)) for s in finished])
    recorded = np.full(len(images), "", dtype=object)
    recorded[rows] = np.concatenate([writer.sha256(s) for s in finished])
    changed = changed_rows(images.paths, recorded, progress)
    for s in np.unique(changed // shard_size):
        writer.forget(int(s))
    ids = [images.ids[r] for r in changed]
    if ids:
        shown = ", ".join(display_id(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
        log.warning("%d file(s) changed since they were embedded; embedding their shards again: %s", len(ids), shown)
    return ids


def embed_store(images: ImageSet, store: str | Path, specs: Sequence[str], *, address: str | None = None,
                num_cpus: int | None = None, num_gpus: int = 0, shards: str | Path | None = None,
                shard_size: int = 100_000, batch_size: int = 64, image_size: int | None = None,
                templates: Sequence[str] | None = None, views: int = 0, dtype: str = "float32",
                progress: bool = True, fresh: bool = False) -> RunSummary:
    """Each backbone on Ray into its shard folder (raw features in ``dtype`` and probabilities), then into the store:
    the same store the local engine writes, row for row. ``shards`` names the folder of a single backbone (default:
    ``<store>.shards/<backbone>``); a killed run resumes from the shards already written.

    Labels are metadata: the shards carry the store's labels, splits and classes (a store is created from ``images``
    first), so a run after ``store label`` or a changed list resumes its shard folder. ``fresh``: the store's rows
    were just matched to the files by content (a rebuilt store), so a backbone that has every row needs no Ray run
    (its shard folder, of the old rows, is left as it is)."""
    from embed.backbones import parse_spec
    from embed.engines.local import RunSummary
    from store import FeatureStore, open_for_images
    from store.shards import import_shards

    if views:
        raise UserError("--engine ray stores no augmented views; drop --views or use --engine local")
    summary = RunSummary(store=Path(store))
    with open_for_images(store, images.ids, images.splits, images.labels, images.classes, root=images.root,
                         display_names=images.display_names) as fs:
        labelled = dataclasses.replace(images, splits=[str(s) for s in fs.splits], labels=np.asarray(fs.labels),
                                       classes=list(fs.classes), display_names=list(fs.display_names))
        complete = {spec for spec in fs.backbones if fresh and fs.rows_done(spec).all()}
    for spec in specs:
        if str(parse_spec(spec)) in complete:
            log.info("%s: every row is already in %s; nothing to embed", spec, store)
            summary.embedded[str(parse_spec(spec))] = 0
            continue
        folder = Path(shards) if shards and len(specs) == 1 else Path(f"{store}.shards") / shard_folder_name(spec)
        result = embed_shards(labelled, spec, folder, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                              batch_size=batch_size, shard_size=shard_size, image_size=image_size,
                              templates=templates, dtype=dtype, progress=progress)
        log.info("%s: %d of %d shards written in this run to %s", spec, result["written"], result["shards"], folder)
        import_shards(folder, store, allow_outside=True, root=images.root)  # our own shards of our own data
        summary.embedded[result["spec"]] = result["rows"]
        summary.changed += [i for i in result["changed"] if i not in summary.changed]
    with FeatureStore(store) as fs:
        summary.errors, summary.duplicates = fs.errors(), fs.duplicates()
    return summary


def shard_folder_name(spec: str) -> str:
    """A readable, unique folder name for a backbone spec (specs hold ':', '/', '@')."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split("@")[0])
    return f"{readable}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
