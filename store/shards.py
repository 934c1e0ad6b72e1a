"""Sharded feature export in the layout embedding-reader / autofaiss / clip-retrieval read, and its import.

Layout of a shard folder::

    meta.json                          provenance: spec, weights_sha256, preprocessing, versions, classes, templates,
                                       image_list_sha256, n_images, shard_size, n_shards, dim
    text_emb.npy                       optional CLIP text embeddings (C, T, D) float32
    head_weight.npy, head_bias.npy     optional classifier head of the backbone
    img_emb/img_emb_{N}.npy            (rows of shard N, D) float16, L2-normalised (zeros for failed images)
    metadata/metadata_{N}.parquet      id, split, label, sha256, status, error -- same row order as img_emb_N;
                                       id_bytes (binary) too when some file name is not UTF-8
    done/{N}                           written last: shard N is complete

Shard N holds store rows ``[N * shard_size, (N + 1) * shard_size)``. Every file is written under a temporary name
and renamed into place, so a killed writer never leaves a partial shard that looks complete, and a failed write
(disk full) removes its temporary file.

File names: ``id`` is a string column (Arrow strings are UTF-8), holding :func:`store.display_id` of each id, so
names that are not UTF-8 read as ``\\xNN``. Those exact bytes then travel in ``id_bytes``, which the import prefers.

Import checks the whole folder (meta.json keys, every shard's columns and array shape, the side arrays) before it
writes anything, and names the damaged file and the fix in one ``ValueError``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from store.h5store import ERROR, OK, SPLITS, FeatureStore, display_id, open_for_images

log = logging.getLogger(__name__)

SHARDS_FORMAT = "fewshot-feature-shards/1"
STATUS_NAMES = {OK: "ok", ERROR: "error"}
METADATA_COLUMNS = ("id", "split", "label", "sha256", "status", "error")
# meta.json keys import needs, with their JSON types.
META_KEYS = {"spec": str, "weights_sha256": str, "weights_source": str, "preprocessing": dict, "versions": dict,
             "classes": list, "n_shards": int, "dim": int}
REWRITE = ("rerun the command that wrote the folder (`python -m embed run --engine ray` rewrites shards whose done/N "
           "marker you delete; `python -m store export` rewrites all)")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("sharded export/import needs pyarrow: pip install pyarrow (or the project's [ray] extra)") \
            from None
    return pa, pq


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``; on failure the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise ValueError(f"writing {path} failed ({' '.join(str(err).split())}); free disk space (or fix the disk) "
                             "and rerun the same command: finished shards are kept") from None
        raise


def _save_npy(array: np.ndarray):
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array)
    return write


def l2_normalize_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero), float32."""
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class ShardWriter:
    """Writes one shard folder; ``done(n)`` tells which shards already exist (for resume)."""

    def __init__(self, folder: str | Path, meta: dict):
        self.folder = Path(folder)
        for sub in ("img_emb", "metadata", "done"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            old = read_meta(self.folder)
            for key in ("spec", "weights_sha256", "preprocessing", "image_list_sha256", "shard_size"):
                if old.get(key) != meta.get(key):
                    raise ValueError(f"{self.folder} holds shards of another run (different {key}); use a new "
                                     "--shards folder")
        else:
            _atomic(meta_path, lambda p: p.write_text(json.dumps({"format": SHARDS_FORMAT, **meta}, indent=1)))
        self.meta = meta

    def done(self, n: int) -> bool:
        return (self.folder / "done" / str(n)).is_file()

    def forget(self, n: int) -> None:
        """Drop shard ``n``'s done marker, so that it is written again (e.g. one of its files changed)."""
        (self.folder / "done" / str(n)).unlink(missing_ok=True)

    def sha256(self, n: int) -> np.ndarray:
        """(rows,) sha256 recorded in finished shard ``n``'s metadata ("" for files never read)."""
        return np.asarray(_read_table(self.folder / "metadata" / f"metadata_{n}.parquet")["sha256"], dtype=object)

    def write_extra(self, name: str, array: np.ndarray) -> None:
        """A side array such as ``text_emb`` or ``head_weight`` (``name.npy``)."""
        _atomic(self.folder / f"{name}.npy", _save_npy(np.asarray(array)))

    def write_shard(self, n: int, features: np.ndarray, ids, splits, labels, sha256, status, errors) -> None:
        """Shard ``n``: (rows, D) features (normalised here, stored float16) and per-row metadata, then its marker."""
        pa, pq = _pyarrow()
        emb = l2_normalize_rows(features).astype(np.float16)
        emb[np.asarray(status) != OK] = 0
        _atomic(self.folder / "img_emb" / f"img_emb_{n}.npy", _save_npy(emb))
        ids = [str(i) for i in ids]
        shown = [display_id(i) for i in ids]
        columns = {"id": shown, "split": [str(s) for s in splits], "label": np.asarray(labels, dtype=np.int64),
                   "sha256": [s or "" for s in sha256], "status": [STATUS_NAMES[int(s)] for s in status],
                   "error": [display_id(e or "") for e in errors]}
        if shown != ids:  # some name is not UTF-8: keep its exact bytes
            columns["id_bytes"] = pa.array([i.encode("utf-8", "surrogateescape") for i in ids], type=pa.binary())
        table = pa.table(columns)
        _atomic(self.folder / "metadata" / f"metadata_{n}.parquet", lambda p: pq.write_table(table, p))
        _atomic(self.folder / "done" / str(n), lambda p: p.write_text(""))


def read_meta(folder: str | Path) -> dict:
    """The checked ``meta.json`` of a shard folder; ValueError naming the file and the fix when it is damaged."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a shard folder (no meta.json); write one with `python -m embed run "
                                "--engine ray` or `python -m store export`")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is damaged ({' '.join(str(err).split())}); {REWRITE}") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{path} is not a fewshot shard folder's meta.json; point at a folder written by "
                         "`python -m embed run --engine ray` or `python -m store export`")
    for key, kind in META_KEYS.items():
        # bool is an int in Python, never a valid count here
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"{path} is damaged: {key!r} is missing or not a JSON {kind.__name__}; {REWRITE}")
    if meta["n_shards"] < 0 or meta["dim"] < 1:
        raise ValueError(f"{path} is damaged: n_shards {meta['n_shards']} / dim {meta['dim']} are out of range; "
                         f"{REWRITE}")
    return meta


def _read_table(path: Path) -> dict:
    """One shard's metadata as lists, checked: every column there, equal lengths, known splits and statuses."""
    _, pq = _pyarrow()
    if not path.is_file():
        raise ValueError(f"{path} is missing; {REWRITE}")
    try:
        table = pq.read_table(path).to_pydict()
    except Exception as err:  # noqa: BLE001 - pyarrow raises its own ArrowInvalid / OSError kinds for damaged files
        raise ValueError(f"{path} is not a readable parquet file ({' '.join(str(err).split())}); {REWRITE}") from None
    missing = [c for c in METADATA_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} (a shard's metadata has {list(METADATA_COLUMNS)}); "
                         f"{REWRITE}")
    if "id_bytes" in table:
        table["id"] = [bytes(b).decode("utf-8", "surrogateescape") for b in table["id_bytes"]]
    lengths = {len(v) for v in table.values()}
    bad_values = (set(table["split"]) - set(SPLITS)) | (set(table["status"]) - set(STATUS_NAMES.values()))
    if len(lengths) > 1 or bad_values or any(not isinstance(y, int) for y in table["label"]):
        raise ValueError(f"{path} is damaged (columns of different lengths, unknown split/status values "
                         f"{sorted(map(str, bad_values))[:5]}, or labels that are not integers); {REWRITE}")
    return table


def _check_npy(path: Path, shape: tuple) -> None:
    """ValueError naming ``path`` unless it is a readable .npy of numbers with ``shape``."""
    if not path.is_file():
        raise ValueError(f"{path} is missing; {REWRITE}")
    try:
        array = np.load(path, mmap_mode="r")  # header only; no pickles (allow_pickle is False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array ({' '.join(str(err).split())}); {REWRITE}") from None
    if array.shape != shape or array.dtype.kind not in "fiu":
        raise ValueError(f"{path} holds a {array.dtype} array of shape {array.shape}, expected numbers of shape "
                         f"{shape}; {REWRITE}")


def import_shards(folder: str | Path, store_path: str | Path) -> dict:
    """Copy every complete shard of ``folder`` into the HDF5 store at ``store_path`` (created when missing).

    The backbone group gets the shards' provenance (float16, L2-normalised); the store refuses shards of another
    image list or another origin, as for any write. The whole folder is checked before anything is written: a
    damaged file gives a ValueError naming it and the fix.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    n_shards, dim = meta["n_shards"], meta["dim"]
    missing = [n for n in range(n_shards) if not (folder / "done" / str(n)).is_file()]
    if missing:
        shown = f"{missing[:5]}{'…' if len(missing) > 5 else ''}"
        raise ValueError(f"{folder} is incomplete: shards {shown} are missing; "
                         "rerun the same `python -m embed run --engine ray` command to finish them")
    tables = [_read_table(folder / "metadata" / f"metadata_{n}.parquet") for n in range(n_shards)]
    for n, table in enumerate(tables):
        _check_npy(folder / "img_emb" / f"img_emb_{n}.npy", (len(table["id"]), dim))
    head = folder / "head_weight.npy"
    text = folder / "text_emb.npy"
    if head.is_file():
        if not isinstance(meta.get("head_classes"), list):
            raise ValueError(f"{folder / 'meta.json'} is damaged: head_weight.npy is there but 'head_classes' is "
                             f"missing; {REWRITE}")
        _check_npy(head, (len(meta["head_classes"]), dim))
        _check_npy(folder / "head_bias.npy", (len(meta["head_classes"]),))
    if text.is_file():
        if not isinstance(meta.get("templates"), list):
            raise ValueError(f"{folder / 'meta.json'} is damaged: text_emb.npy is there but 'templates' is missing; "
                             f"{REWRITE}")
        _check_npy(text, (len(meta["classes"]), len(meta["templates"]), dim))
    ids = [i for t in tables for i in t["id"]]
    splits = [s for t in tables for s in t["split"]]
    labels = [y for t in tables for y in t["label"]]
    provenance = {key: meta[key] for key in ("spec", "weights_sha256", "weights_source", "versions")}
    provenance.update(preprocessing={**meta["preprocessing"], "l2_normalized": True}, dtype="float16", views=0,
                      view_kinds=[])
    with open_for_images(store_path, ids, splits, labels, meta["classes"], root=meta.get("root")) as fs:
        done = fs.begin_backbone(provenance, dim, prob_classes=meta.get("head_classes") if head.is_file() else None)
        known = fs.sha256
        start = 0
        for n, table in enumerate(tables):
            rows = np.arange(start, start + len(table["id"]))
            start = rows[-1] + 1 if rows.size else start
            # A file read again with other bytes (it changed, and its shard was written again): forget the old row.
            stale = rows[done[rows] & (known[rows] != np.asarray(table["sha256"], dtype=str))]
            if stale.size:
                log.info("%s: %d row(s) of shard %d hold a changed file; replacing them", store_path, stale.size, n)
                fs.invalidate_rows(stale)
                done[stale] = False
            if done[rows].all():
                continue
            emb = np.load(folder / "img_emb" / f"img_emb_{n}.npy")
            status = np.array([OK if s == "ok" else ERROR for s in table["status"]], dtype=np.uint8)
            fs.write_rows(meta["spec"], rows, status, table["sha256"], table["error"], features=emb[status == OK])
        if text.is_file():
            fs.set_text(meta["spec"], np.load(text), meta["templates"], meta.get("logit_scale"))
        if head.is_file():
            fs.set_head(meta["spec"], np.load(head), np.load(folder / "head_bias.npy"), meta["head_classes"])
        return fs.info()


def export_shards(store_path: str | Path, spec: str, folder: str | Path, shard_size: int = 100_000) -> Path:
    """Write one backbone of a store as a shard folder (the reverse of :func:`import_shards`)."""
    if shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    folder = Path(folder)
    with FeatureStore(store_path) as fs:
        n = len(fs)
        prov = fs.provenance(spec)
        done = fs.rows_done(spec)
        if not done.all():
            raise ValueError(f"backbone {spec!r} in {store_path} is incomplete; finish `python -m embed run` first")
        meta = {key: prov[key] for key in ("spec", "weights_sha256", "weights_source", "preprocessing", "versions")}
        meta.update(image_list_sha256=fs.fingerprint, classes=fs.classes, root=fs.root, n_images=n,
                    shard_size=shard_size, n_shards=-(-n // shard_size), dim=int(prov["dim"]))
        text = fs.text(spec) if fs.has_text(spec) else None
        head = fs.head(spec)
        if text is not None:
            meta.update(templates=text[1], logit_scale=text[2])
        if head is not None:
            meta["head_classes"] = head[2]
        writer = ShardWriter(folder, meta)
        if text is not None:
            writer.write_extra("text_emb", text[0])
        if head is not None:
            writer.write_extra("head_weight", head[0])
            writer.write_extra("head_bias", head[1])
        ids, splits, labels, sha, status = fs.ids, fs.splits, fs.labels, fs.sha256, fs.status
        messages = dict(fs.errors())
        for s in range(meta["n_shards"]):
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            writer.write_shard(s, fs.features_block(spec, lo, hi), ids[lo:hi], splits[lo:hi], labels[lo:hi],
                               sha[lo:hi], status[lo:hi], [messages.get(i) for i in ids[lo:hi]])
    return folder
