"""The batch runner: every backbone runs once over every image; rows land in the store batch by batch.

One writer (this process) and decoding in DataLoader worker processes. Each batch is written and flushed before
the next, so a run killed at any moment resumes with the same command and recomputes nothing already written. The
workers never outlive the run (they hold the store's file, and so its lock): however the loop ends they are stopped
before the store closes, and on Linux the kernel kills them if the run dies without clean-up (``kill -9``).

Resume trusts content, not names: before embedding into an existing store, every file read before is hashed again
and compared with the sha256 recorded when it was embedded; a file that changed (another picture under the same
name) is forgotten by every backbone and embedded again, and the run reports it (``RunSummary.changed`` and a
warning). So a rerun reads every file embedded before once more: hashing goes at disk speed (in threads), far faster
than any backbone embeds. A size + mtime signature would spare that read, but it misses replacements that keep both
(``cp -p``, ``rsync -a``, archives extracted over the folder, formats whose size depends only on the image size).

One embedding loop for both engines: :class:`ImageRows` + :func:`collate` decode (DataLoader workers here, Ray
actors in :mod:`embed.engines.ray`), :class:`Mapper` runs the backbone into a :class:`store.writers.Batch`, and
:func:`store.writers.write_batches` hands each batch to a writer -- a :class:`store.writers.StoreWriter` here, a
:class:`store.shards.ShardWriter` on Ray. :func:`provenance` is what both record about a backbone's features.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import random
import signal
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from embed.backbones import Backbone, load_backbone, resolve_weights
from embed.images import DEFAULT_MAX_BYTES, load_image
from embed.sources import ImageSet
from embed.templates import default_templates
from store import ERROR, OK, FeatureStore, display_id, open_for_images
from store.writers import Batch, StoreWriter, write_batches
from store.validation import UserError

log = logging.getLogger(__name__)

VIEW_KINDS = ("weak", "strong")
# Keys of Backbone.describe() a store records as the provenance of the backbone's features.
PROVENANCE_KEYS = ("spec", "weights_sha256", "weights_source", "preprocessing", "versions")


@dataclass
class RunSummary:
    """What one ``embed`` call did."""

    store: Path
    embedded: dict[str, int] = field(default_factory=dict)  # spec -> rows computed in this run
    errors: list[tuple[str, str]] = field(default_factory=list)  # (id, message) of every failed file
    duplicates: list[list[str]] = field(default_factory=list)  # groups of ids with identical bytes
    changed: list[str] = field(default_factory=list)  # ids whose file changed since it was embedded: embedded again
    sync: object = None  # store.sync.SyncSummary of an existing store brought in line with the data, else None


class ImageRows(Dataset):
    """Decodes and transforms images: item ``k`` is file ``paths[k]``, store row ``rows[k]``.

    The per-image half of every engine: DataLoader workers here, Ray actors in :mod:`embed.engines.ray`.
    """

    def __init__(self, paths: Sequence[Path], rows: np.ndarray, backbone: Backbone, n_views: int = 0,
                 seed: int = 0):
        self.paths, self.rows, self.n_views, self.seed = paths, rows, n_views, seed
        self.transform = backbone.eval_transform
        self.augment = [backbone.augment_transforms[VIEW_KINDS[v % len(VIEW_KINDS)]] for v in range(n_views)]
        # JPEG draft decoding may shrink the image down to the size the transform first resizes to, not below.
        self.draft_size = math.ceil(backbone.input_size / backbone.preprocessing.get("crop_pct", 1.0))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = int(self.rows[k])
        loaded = load_image(self.paths[k], target_size=self.draft_size)
        if loaded.error is not None:
            return row, None, None, loaded.sha256, loaded.error
        x = self.transform(loaded.image)  # (3, H, W)
        views = None
        if self.n_views:
            # Seed per (row, view) so that views are identical whatever the worker count, batch size or resume point.
            out = []
            for v, augment in enumerate(self.augment):
                with seeded((self.seed * 1_000_003 + row * self.n_views + v) % 2**31):
                    out.append(augment(loaded.image))
            views = torch.stack(out)  # (V, 3, H, W)
        return row, x, views, loaded.sha256, None


@contextmanager
def seeded(seed: int):
    """Seed the three RNGs that torchvision / timm augmentations draw from, restoring them afterwards."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def collate(items):
    """Batch of ``ImageRows`` items: rows, ok mask, (B_ok, 3, H, W) images, views, sha256s, errors."""
    rows = np.array([it[0] for it in items], dtype=np.int64)
    ok = np.array([it[1] is not None for it in items])
    good = [it for it in items if it[1] is not None]
    x = torch.stack([it[1] for it in good]) if good else None  # (B_ok, 3, H, W)
    views = torch.stack([it[2] for it in good]) if good and good[0][2] is not None else None  # (B_ok, V, 3, H, W)
    return rows, ok, x, views, [it[3] for it in items], [it[4] for it in items]


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device must be auto, cpu or cuda, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no GPU; use --device cpu (or auto)")
    return torch.device(device)


def default_workers(device: torch.device) -> int:
    """Decode workers: on a GPU, enough to keep it fed; on a CPU the forward pass needs the cores itself, and a
    quarter of them decode fast enough (measured with `python -m benchmarks embed` on 2 cores: 1 worker keeps
    0.89 of the raw forward speed, 2 workers 0.83)."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores if device.type == "cuda" else cores // 4))


def embed(images: ImageSet, store_path: str | Path, backbones: Sequence[str], *, device: str = "auto",
          batch_size: int = 64, workers: int | None = None, dtype: str = "float32", views: int = 0,
          templates: Sequence[str] | None = None, image_size: int | None = None, seed: int = 0,
          progress: bool = True, check_content: bool = True) -> RunSummary:
    """Embed ``images`` with each backbone into the store at ``store_path`` (created, or resumed).

    Parameters
    ----------
    images : ImageSet
        What to embed (see :mod:`embed.sources`).
    store_path : path
        The HDF5 store; an existing store must have been built for the same image list.
    backbones : list of str
        Backbone spec strings (``timm:…``, ``clip:…``).
    device : {"auto", "cpu", "cuda"}
    batch_size, workers : int
        Images per forward pass; decode worker processes (0 decodes in this process).
    dtype : {"float32", "float16"}
        Storage type of the features.
    views : int
        Extra passes with random augmentation (alternating weak / strong), stored as ``views`` (N, V, D).
    templates : list of str, optional
        Prompt templates for CLIP text embeddings (default :func:`embed.templates.default_templates`).
    image_size : int, optional
        Override the backbone's input size (e.g. 112 for small images).
    seed : int
        Seed of the augmented views.
    check_content : bool
        Hash the files embedded before and embed again those that changed (False: their content was just checked).
    """
    if dtype not in ("float32", "float16"):
        raise UserError(f"--dtype must be float32 or float16, not {dtype!r}")
    if batch_size < 1 or views < 0:
        raise UserError("--batch-size must be at least 1 and --views at least 0")
    if not backbones:
        raise UserError("no backbone given; pass --backbone SPEC (e.g. timm:tf_efficientnet_lite0)")
    torch_device = resolve_device(device)
    workers = default_workers(torch_device) if workers is None else int(workers)
    templates = list(templates or ())  # empty: the defaults, looked up by a backbone with a text side
    summary = RunSummary(store=Path(store_path))
    # Every download before the store exists: a failed one (after huggingface_hub's retries) leaves nothing behind.
    first = load_backbone(backbones[0], device=str(torch_device), image_size=image_size)
    for spec in backbones[1:]:
        _fetch_weights(spec)
    with open_for_images(store_path, images.ids, images.splits, images.labels, images.classes,
                         root=images.root, display_names=images.display_names) as store:
        changed = changed_rows(images.paths, store.sha256, progress) if check_content else np.empty(0, np.int64)
        if changed.size:
            summary.changed = [str(store.ids[r]) for r in changed]
            shown = ", ".join(display_id(i) for i in summary.changed[:10]) + (", ..." if changed.size > 10 else "")
            log.warning("%d file(s) changed since they were embedded; embedding them again: %s", changed.size, shown)
            store.invalidate_rows(changed)
        for spec in backbones:
            backbone = first or load_backbone(spec, device=str(torch_device), image_size=image_size)
            first = None  # one model in memory at a time
            summary.embedded[backbone.spec] = _embed_one(store, images, backbone, torch_device, batch_size, workers,
                                                         dtype, views, templates, seed, progress)
            del backbone
        stale = [spec for spec in store.backbones if spec not in summary.embedded and not store.rows_done(spec).all()]
        if changed.size and stale:
            log.warning("%s also needs the changed files embedded again: rerun with --backbone %s", store.path,
                        " --backbone ".join(stale))
        summary.errors, summary.duplicates = store.errors(), store.duplicates()
    return summary


def _fetch_weights(spec: str) -> None:
    """Download the weights of ``spec`` into timm's / open_clip's cache when they must be downloaded (the model
    loaded for that is dropped; the run loads it again from the cache when its turn comes)."""
    if resolve_weights(spec).source == "download":
        load_backbone(spec)


def file_sha256(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """sha256 of a regular file's bytes (what :func:`embed.images.load_image` records), or None when it is no
    regular file any more, is larger than the loader reads, or cannot be read."""
    try:
        # As the loader does: stat before opening (a FIFO or device that took the file's place is never opened),
        # then a non-blocking open and fstat of what was opened, in case the name was swapped in between.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def file_digests(paths: Sequence[Path], progress: bool = False) -> list[str | None]:
    """:func:`file_sha256` of every file, in threads (hashlib releases the GIL on large buffers)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = pool.map(file_sha256, paths)
        return list(tqdm(digests, total=len(paths), unit="file", desc="checking files", disable=not progress,
                         leave=False))


def changed_rows(paths: Sequence[Path], sha256: np.ndarray, progress: bool = False) -> np.ndarray:
    """Rows whose file no longer has the recorded ``sha256`` (rows never read, ``""``, are skipped).

    Reads every file read before (:func:`file_digests`).
    """
    known = np.flatnonzero(np.asarray(sha256) != "")
    if not known.size:
        return known
    current = file_digests([paths[r] for r in known], progress)
    return known[np.array([now != sha256[r] for now, r in zip(current, known)], dtype=bool)]


def provenance(backbone: Backbone, dtype: str = "float32", views: int = 0) -> dict:
    """What a store records about a backbone's features: :meth:`Backbone.describe` and how they are stored."""
    described = backbone.describe()
    return {**{key: described[key] for key in PROVENANCE_KEYS}, "dtype": dtype, "views": int(views),
            "view_kinds": [VIEW_KINDS[v % len(VIEW_KINDS)] for v in range(int(views))]}


class Mapper:
    """The model half of both engines: a decoded batch (as :func:`collate` makes it) → a :class:`Batch`.

    Every row of the batch gets raw (un-normalised) float32 features, zeros for images that failed; the backbone's
    classifier probabilities when it has a head; and the features of its ``n_views`` augmented views. On CUDA the
    forward pass runs under bfloat16 autocast on channels-last input.

    Parameters
    ----------
    backbone : Backbone
        A loaded backbone, on ``device``.
    device : torch.device
    n_views : int
        Augmented views per image the batches carry.
    """

    def __init__(self, backbone: Backbone, device: torch.device, n_views: int = 0):
        self.backbone, self.device, self.n_views = backbone, device, int(n_views)
        self.cuda = device.type == "cuda"
        if self.cuda:
            backbone.model.to(memory_format=torch.channels_last)

    def __call__(self, rows: np.ndarray, ok: np.ndarray, x: torch.Tensor | None, views: torch.Tensor | None,
                 sha256: Sequence[str | None], errors: Sequence[str | None]) -> Batch:
        b, dim, classes = len(rows), self.backbone.dim, self.backbone.prob_classes
        features = np.zeros((b, dim), dtype=np.float32)  # (B, D)
        probs = None if classes is None else np.zeros((b, len(classes)), dtype=np.float32)  # (B, K)
        vfeatures = np.zeros((b, self.n_views, dim), dtype=np.float32) if self.n_views else None  # (B, V, D)
        if x is not None:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
            with torch.inference_mode(), autocast:
                features[ok], p = self._forward(x)  # (B_ok, D), (B_ok, K) or None
                if probs is not None:
                    probs[ok] = p
                if vfeatures is not None:
                    n_ok = int(ok.sum())
                    vfeatures[ok] = self._forward(views.flatten(0, 1))[0].reshape(n_ok, self.n_views, dim)
        return Batch(rows, np.where(ok, OK, ERROR), sha256, errors, features, vfeatures, probs)

    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (n, D) and probabilities (n, K) or None, as float32 numpy, of images ``x`` (n, 3, H, W)."""
        x = x.to(self.device, non_blocking=self.cuda)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        features, probs = self.backbone.encode_images(x)  # (n, D), (n, K) or None
        return features.float().cpu().numpy(), (None if probs is None else probs.float().cpu().numpy())


def _embed_one(store: FeatureStore, images: ImageSet, backbone: Backbone, device: torch.device, batch_size: int,
               workers: int, dtype: str, n_views: int, templates: list[str], seed: int, progress: bool) -> int:
    done = store.begin_backbone(provenance(backbone, dtype, n_views), backbone.dim, prob_classes=backbone.prob_classes)
    if backbone.logit_scale is not None:
        _ensure_text(store, backbone, templates)
    head = backbone.classifier_head()
    if head is not None and store.head(backbone.spec) is None:
        store.set_head(backbone.spec, *head, backbone.prob_classes)
    pending = np.flatnonzero(~done)
    if not pending.size:
        log.info("%s: all %d rows already embedded in %s", backbone.spec, len(done), store.path)
        return 0
    if done.any():
        log.info("%s: resuming, %d of %d rows already done", backbone.spec, int(done.sum()), len(done))
    mapper = Mapper(backbone, device, n_views)
    paths = images.paths
    loader = DataLoader(ImageRows([paths[r] for r in pending], pending, backbone, n_views, seed),
                        batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=mapper.cuda,
                        persistent_workers=False, prefetch_factor=4 if workers else None,
                        worker_init_fn=functools.partial(_decode_worker_init, os.getpid()) if workers else None)
    batches = iter(loader)
    try:
        with tqdm(total=len(pending), unit="img", desc=backbone.spec, disable=not progress, smoothing=0.1) as bar:
            return write_batches((mapper(*items) for items in batches), StoreWriter(store, backbone.spec), bar)
    finally:
        # However the loop ends (an error, Ctrl-C, SIGTERM turned into an exception by the command line), the decode
        # workers stop here, before the store closes: DataLoader's own clean-up, which otherwise waits for the
        # iterator to be garbage-collected (a traceback holding it keeps them alive). Done already after a full pass.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


#: prctl(2) option: the signal the calling process receives when its parent dies (Linux)
_PR_SET_PDEATHSIG = 1


def _decode_worker_init(parent: int, worker_id: int) -> None:
    """Run in each decode worker as it starts: the worker never outlives the run.

    A worker is forked with the store's file open, so while it lives it keeps the store's file lock. On Linux it asks
    the kernel to kill it when the run's process dies, however that dies (even ``kill -9``), and quits at once if that
    already happened. SIGTERM gets its default action back: the handler the command line installs is the run's, not
    the worker's (the run stops its workers itself).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)


def _ensure_text(store: FeatureStore, backbone: Backbone, templates: list[str]) -> None:
    """CLIP text side: every class × every template, (C, T, D); recomputed only when the templates changed."""
    templates = templates or default_templates()
    if store.has_text(backbone.spec) and store.text(backbone.spec)[1] == templates:
        return
    with torch.inference_mode():
        text = backbone.encode_text(store.display_names, templates)  # (C, T, D): prompts read display names
    store.set_text(backbone.spec, text, templates, backbone.logit_scale)
    log.info("%s: embedded %d classes x %d prompt templates", backbone.spec, len(store.classes), len(templates))
