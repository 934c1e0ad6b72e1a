"""Scale-out embedding on Ray Data: the local runner's per-image and per-batch code, run by Ray actors.

Each actor loads the model once (``map_batches`` with a callable class; GPU actors when GPUs are asked for) and
turns batches of ``(row, path)`` into L2-normalised features with :class:`embed.runner.ImageRows`,
:func:`embed.runner.collate` and :func:`embed.runner.forward` -- the same code as the local runner. The driver is
the single writer: it gathers rows per shard and writes each complete shard atomically (see :mod:`store.shards`),
so a killed job, started again, skips every shard already written.

Multi-node: ``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others, then
``python -m embed run ... --engine ray --address HEAD:6379``. Every node must see the images and the shard folder
at the same paths (a shared filesystem); the driver receives every feature (float16), which bounds the rate at
roughly its network bandwidth.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from embed.sources import ImageSet
from store import ERROR, OK, display_id, image_list_sha256
from store.shards import ShardWriter

log = logging.getLogger(__name__)


class EmbedActor:
    """A Ray Data actor: one backbone per process, batches of ``{"row", "path"}`` → features and status."""

    def __init__(self, spec: str, image_size: int | None, device: str, threads: int):
        import torch

        from embed.backbones import load_backbone
        from embed.runner import resolve_device

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.backbone = load_backbone(spec, device=str(self.device), image_size=image_size)

    def __call__(self, batch: dict) -> dict:
        import torch

        from embed.runner import ImageRows, collate, forward

        rows = np.asarray(batch["row"], dtype=np.int64)
        # Paths travel as bytes: Arrow strings must be UTF-8, file names need not be.
        images = ImageRows([os.fsdecode(bytes(p)) for p in batch["path"]], rows, self.backbone)
        rows, ok, x, _, sha, errors = collate([images[k] for k in range(len(images))])
        features = np.zeros((len(rows), self.backbone.dim), dtype=np.float32)  # (B, D), zeros for failed files
        if x is not None:
            cuda = self.device.type == "cuda"
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                features[ok] = forward(self.backbone, x, self.device, cuda)[0]
        return {"row": rows, "features": features, "status": np.where(ok, OK, ERROR).astype(np.uint8),
                "sha256": np.array([s or "" for s in sha], dtype=object),
                "error": np.array([display_id(e or "") for e in errors], dtype=object)}


def shard_meta(images: ImageSet, backbone, shard_size: int, templates: list[str] | None) -> dict:
    """Provenance of a shard folder (see :mod:`store.shards`)."""
    meta = {"spec": backbone.spec, "weights_sha256": backbone.weights_sha256,
            "weights_source": backbone.weights_source, "preprocessing": backbone.preprocessing,
            "versions": backbone.versions, "classes": list(images.classes), "root": str(images.root),
            "image_list_sha256": image_list_sha256(images.ids, images.splits, images.labels, images.classes),
            "n_images": len(images), "shard_size": shard_size, "n_shards": math.ceil(len(images) / shard_size),
            "dim": backbone.dim}
    if backbone.logit_scale is not None:
        meta.update(templates=list(templates), logit_scale=backbone.logit_scale)
    if backbone.classifier_head() is not None:
        meta["head_classes"] = list(backbone.prob_classes)
    return meta


def embed_shards(images: ImageSet, spec: str, folder: str | Path, *, address: str | None = None,
                 num_cpus: int | None = None, num_gpus: int = 0, batch_size: int = 64, shard_size: int = 10_000,
                 image_size: int | None = None, templates: list[str] | None = None, progress: bool = True) -> dict:
    """Embed ``images`` with one backbone on Ray into a shard folder.

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
    """
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'ray[data]' (or this project's [ray] extra)") from None
    import torch

    from embed.backbones import load_backbone
    from embed.templates import DEFAULT_TEMPLATES

    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be at least 1")
    templates = list(templates or DEFAULT_TEMPLATES)
    backbone = load_backbone(spec, image_size=image_size)  # provenance, text side and head: once, on the driver
    writer = ShardWriter(folder, shard_meta(images, backbone, shard_size, templates))
    if backbone.logit_scale is not None:
        with torch.inference_mode():
            writer.write_extra("text_emb", backbone.encode_text(list(images.classes), templates))
    if (head := backbone.classifier_head()) is not None:
        writer.write_extra("head_weight", head[0])
        writer.write_extra("head_bias", head[1])
    n_shards = writer.meta["n_shards"]
    changed = _forget_changed_shards(writer, images, shard_size, progress)
    pending = [s for s in range(n_shards) if not writer.done(s)]
    if not pending:
        log.info("%s: all %d shards already in %s", spec, n_shards, folder)
        return {"spec": backbone.spec, "shards": n_shards, "written": 0, "rows": 0, "changed": changed}
    if len(pending) < n_shards:
        log.info("%s: resuming, %d of %d shards already written", spec, n_shards - len(pending), n_shards)
    rows = np.concatenate([np.arange(s * shard_size, min(len(images), (s + 1) * shard_size)) for s in pending])
    paths = images.paths

    if not ray.is_initialized():
        # actors on other nodes do not inherit this process's environment: --offline must reach them explicitly
        offline = {"env_vars": {"HF_HUB_OFFLINE": "1"}} if os.environ.get("HF_HUB_OFFLINE") == "1" else None
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, runtime_env=offline)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in order: shards complete one after another
    ctx.enable_progress_bars = False  # ours counts images
    if num_gpus:
        actors, actor_cpus = max(1, int(ray.cluster_resources().get("GPU", 0) // num_gpus)), 1
    else:
        actors, actor_cpus = cluster_cpus, 1
    data = ray.data.from_items([{"row": int(r), "path": os.fsencode(paths[r])} for r in rows])
    embedded = data.map_batches(EmbedActor, fn_constructor_kwargs={
        "spec": spec, "image_size": image_size, "device": "cuda" if num_gpus else "cpu", "threads": actor_cpus},
        batch_size=batch_size, concurrency=actors, num_cpus=actor_cpus, num_gpus=num_gpus or None,
        batch_format="numpy")

    buffers: dict[int, list[dict]] = {}
    written = 0
    with tqdm(total=len(rows), unit="img", desc=f"{spec} (ray)", disable=not progress) as bar:
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            for s in np.unique(batch["row"] // shard_size):
                part = batch["row"] // shard_size == s
                buffers.setdefault(int(s), []).append({k: v[part] for k, v in batch.items()})
            bar.update(len(batch["row"]))
            for s in [s for s, parts in buffers.items() if sum(len(p["row"]) for p in parts) == _size(s, shard_size,
                                                                                                       len(images))]:
                _write(writer, images, s, buffers.pop(s))
                written += 1
    assert not buffers, f"rows of shards {sorted(buffers)} never completed"
    return {"spec": backbone.spec, "shards": n_shards, "written": written, "rows": int(rows.size), "changed": changed}


def _forget_changed_shards(writer: ShardWriter, images: ImageSet, shard_size: int, progress: bool) -> list[str]:
    """Ids of files that changed since a finished shard read them; those shards lose their done marker.

    Each file a finished shard read is hashed again and compared with the sha256 in the shard's metadata (as the
    local runner does on resume), so another picture under the same name is embedded again, never kept silently.
    """
    from embed.runner import changed_rows

    finished = [s for s in range(writer.meta["n_shards"]) if writer.done(s)]
    if not finished:
        return []
    rows = np.concatenate([np.arange(s * shard_size, min(len(images), (s + 1) * shard_size)) for s in finished])
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


def _size(shard: int, shard_size: int, n: int) -> int:
    return min(n, (shard + 1) * shard_size) - shard * shard_size


def _write(writer: ShardWriter, images: ImageSet, shard: int, parts: list[dict]) -> None:
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["row"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    rows = merged["row"]
    writer.write_shard(shard, merged["features"], [images.ids[r] for r in rows], [images.splits[r] for r in rows],
                       images.labels[rows], list(merged["sha256"]), merged["status"], list(merged["error"]))
