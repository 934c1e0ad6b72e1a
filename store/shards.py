"""Shard folders: the layout embedding-reader / autofaiss / clip-retrieval read, and their import into a store.

Layout of a shard folder::

    meta.json                          provenance: format, spec, weights_sha256, weights_source, preprocessing,
                                       versions, classes, root, image_list_sha256, rows_sha256, n_images, shard_size,
                                       n_shards, dim, normalized, dtype; optional templates + logit_scale,
                                       head_classes, prob_classes
    text_emb.npy                       optional CLIP text embeddings (C, T, D) float32
    head_weight.npy, head_bias.npy     optional classifier head of the backbone
    img_emb/img_emb_{N}.npy            (rows of shard N, D) features (zeros for failed images)
    probs/probs_{N}.npy                optional (rows of shard N, K) float16 classifier probabilities
    metadata/metadata_{N}.parquet      id, split, label, sha256, status, error -- same row order as img_emb_N;
                                       id_bytes (binary) too when some file name is not UTF-8
    done/{N}                           written last: shard N is complete

Two kinds of folder, told apart by ``normalized`` in meta.json:

- raw (``normalized: false``): the backbone's own features in ``dtype`` (float32 unless asked), with the
  probabilities of its classifier head. ``python -m embed run --engine ray`` writes these: imported into a store
  they are row for row what the local runner writes, so every method (ConSE's head included) sees the same numbers.
- normalised (``normalized: true``, float16, no probabilities): what embedding-reader and autofaiss expect;
  ``python -m store export`` writes these by default (``normalize=False`` for a lossless copy). Imported, the
  store records ``l2_normalized`` in the preprocessing and keeps no head or probabilities: the head maps raw
  features, and applied to unit vectors it would give near-uniform probabilities.

Shard N holds store rows ``[N * shard_size, (N + 1) * shard_size)``. Folders of format 1 (before raw features)
read as normalised. A run resumes a folder of the same rows (``rows_sha256``) and features' origin; labels are
metadata, so a run with other labels, splits or classes rewrites them in the finished shards' metadata and meta.json
(``image_list_sha256`` names that label state).

File names: ``id`` is a string column (Arrow strings are UTF-8), holding :func:`store.display_id` of each id, so
names that are not UTF-8 read as ``\\xNN``. Those exact bytes then travel in ``id_bytes``, which the import prefers.

Import checks the whole folder (meta.json keys and values, every shard's row count, columns and array shape, the side
arrays, ids listed once) before it writes anything, and names the damaged file and the fix in one ``ValueError``. A
folder can come from someone else, so it is read only inside itself unless the user trusts it (``allow_outside``,
``--allow-outside``): no file linked from elsewhere, no id leaving the data folder, and the store it creates names
the shard folder, not meta.json's ``root``, as its data folder.

Export writes the folder whole beside its place and moves it there once complete, so a failed or killed export
never leaves new shards among an earlier export's.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from store.atomic import temporary_path
from store.h5store import ERROR, OK, FeatureStore, display_id, image_list_sha256, open_for_images
from store.layout import rows_sha256, stays_inside
from store.shard_format import (REWRITE, SHARDS_FORMAT, ShardWriter, check_npy, check_same_run, l2_normalize_rows,
                                read_meta, read_table, shard_rows)
from store.writers import Batch, StoreWriter, write_batches
from store.validation import UserError, one_line

log = logging.getLogger(__name__)

__all__ = ["SHARDS_FORMAT", "ShardWriter", "export_shards", "import_shards", "l2_normalize_rows", "read_meta"]


OUTSIDE = "a received folder is read only inside itself: pass --allow-outside if you trust it"


def _inside(folder: Path, path: Path, allow_outside: bool) -> Path:
    """``path``, after checking that it lies inside ``folder`` once links are followed (unless ``allow_outside``)."""
    if not allow_outside:
        real, base = path.resolve(), folder.resolve()
        if real != base and base not in real.parents:
            raise UserError(f"{path} leads outside the shard folder (to {real}); {OUTSIDE}")
    return path


def _check_side_arrays(folder: Path, meta: dict, tables: list[dict], allow_outside: bool) -> None:
    """ValueError naming the file unless every shard array and side array lies in the folder and has the shape
    meta.json implies."""
    dim = meta["dim"]

    def check(name: str, shape: tuple) -> None:
        check_npy(_inside(folder, folder / name, allow_outside), shape)

    for n, table in enumerate(tables):
        check(f"img_emb/img_emb_{n}.npy", (len(table["id"]), dim))
        if not meta["normalized"] and "prob_classes" in meta:
            check(f"probs/probs_{n}.npy", (len(table["id"]), len(meta["prob_classes"])))
    if (folder / "head_weight.npy").is_file():
        if "head_classes" not in meta:
            raise UserError(f"{folder / 'meta.json'} is damaged: head_weight.npy is there but 'head_classes' is "
                             f"missing; {REWRITE}")
        check("head_weight.npy", (len(meta["head_classes"]), dim))
        check("head_bias.npy", (len(meta["head_classes"]),))
    if (folder / "text_emb.npy").is_file():
        if "templates" not in meta:
            raise UserError(f"{folder / 'meta.json'} is damaged: text_emb.npy is there but 'templates' is missing; "
                             f"{REWRITE}")
        check("text_emb.npy", (len(meta["classes"]), len(meta["templates"]), dim))


def _checked_tables(folder: Path, meta: dict, allow_outside: bool) -> list[dict]:
    """Every shard's metadata, after checking that every shard is complete, holds the rows meta.json says and that
    every array is readable."""
    missing = [n for n in range(meta["n_shards"]) if not (folder / "done" / str(n)).is_file()]
    if missing:
        shown = f"{missing[:5]}{'…' if len(missing) > 5 else ''}"
        raise UserError(f"{folder} is incomplete: shards {shown} are missing; "
                         "rerun the same `python -m embed run --engine ray` command to finish them")
    tables = [read_table(_inside(folder, folder / "metadata" / f"metadata_{n}.parquet", allow_outside),
                         rows=shard_rows(n, meta["shard_size"], meta["n_images"]).size)
              for n in range(meta["n_shards"])]
    _check_side_arrays(folder, meta, tables, allow_outside)
    return tables


def _check_rows(folder: Path, meta: dict, tables: list[dict], allow_outside: bool) -> None:
    """ValueError naming the file unless every id is listed once, stays inside the data folder (unless
    ``allow_outside``) and every label is a class index or -1."""
    seen: dict[str, int] = {}
    n_classes = len(meta["classes"])
    for n, table in enumerate(tables):
        name = folder / "metadata" / f"metadata_{n}.parquet"
        for image_id, label in zip(table["id"], table["label"]):
            if not allow_outside and not stays_inside(image_id):
                raise UserError(f"{name} lists the id {display_id(image_id)!r}, which leads outside the data folder "
                                 f"(an absolute path, or one through ..); {OUTSIDE}")
            if image_id in seen:
                raise UserError(f"{name} lists the id {display_id(image_id)!r} twice (also in shard {seen[image_id]}); "
                                 f"a shard folder lists every image once: {REWRITE}")
            seen[image_id] = n
            if not -1 <= label < n_classes:
                raise UserError(f"{name} gives {display_id(image_id)!r} the label {label}, not -1 or a class index "
                                 f"below {n_classes}; {REWRITE}")


def _store_provenance(meta: dict) -> tuple[dict, list[str] | None]:
    """The store provenance of a shard folder's features, and the class names of the probabilities it keeps."""
    provenance = {key: meta[key] for key in ("spec", "weights_sha256", "weights_source", "versions")}
    preprocessing = {**meta["preprocessing"], "l2_normalized": True} if meta["normalized"] else meta["preprocessing"]
    provenance.update(preprocessing=preprocessing, dtype=meta["dtype"], views=0, view_kinds=[])
    keeps_probs = not meta["normalized"] and isinstance(meta.get("prob_classes"), list)
    return provenance, (meta["prob_classes"] if keeps_probs else None)


def _shard_batches(folder: Path, meta: dict, tables: list[dict], fs: FeatureStore, done: np.ndarray):
    """Batches of the shards the store lacks (a row whose file changed since the store read it is forgotten)."""
    known, start = fs.sha256, 0
    for n, table in enumerate(tables):
        rows = np.arange(start, start + len(table["id"]))
        start += rows.size
        stale = rows[done[rows] & (known[rows] != np.asarray(table["sha256"], dtype=str))]
        if stale.size:  # a file read again with other bytes (it changed, and its shard was written again)
            log.info("%s: %d row(s) of shard %d hold a changed file; replacing them", fs.path, stale.size, n)
            fs.invalidate_rows(stale)
            done[stale] = False
        if done[rows].all():
            continue
        probs = folder / "probs" / f"probs_{n}.npy"
        yield Batch(rows=rows, status=[OK if s == "ok" else ERROR for s in table["status"]], sha256=table["sha256"],
                    errors=table["error"], features=np.load(folder / "img_emb" / f"img_emb_{n}.npy"),
                    probs=np.load(probs) if probs.is_file() and not meta["normalized"] else None)


def import_shards(folder: str | Path, store_path: str | Path, allow_outside: bool = False,
                  root: str | Path | None = None) -> dict:
    """Copy every complete shard of ``folder`` into the HDF5 store at ``store_path`` (created when missing).

    The backbone group gets the shards' provenance; the store refuses shards of another image list or another
    origin, as for any write. The whole folder is checked before anything is written: a damaged file gives a
    ValueError naming it and the fix. Returns the store's :meth:`~store.FeatureStore.info`.

    A folder can come from someone else, so it is read only inside itself: files linked from elsewhere and ids that
    leave the data folder (absolute, or through ``..``) are refused, and a new store names the shard folder as its
    data folder (not the ``root`` meta.json names, which could be ``/``), unless ``allow_outside``.

    Parameters
    ----------
    folder, store_path : path
        The shard folder and the store.
    allow_outside : bool
        Trust the folder: read its files wherever its links lead, accept any id, and name the data folder its
        meta.json names.
    root : path, optional
        The data folder the ids are relative to, when the caller knows it (``embed run --engine ray`` passes its
        ``--data``); recorded instead of either.
    """
    folder = Path(folder)
    if (folder / "meta.json").is_file():
        _inside(folder, folder / "meta.json", allow_outside)
    meta = read_meta(folder)
    tables = _checked_tables(folder, meta, allow_outside)
    _check_rows(folder, meta, tables, allow_outside)
    provenance, prob_classes = _store_provenance(meta)
    ids = [i for t in tables for i in t["id"]]
    splits = [s for t in tables for s in t["split"]]
    labels = [y for t in tables for y in t["label"]]
    if root is None:
        root = meta.get("root") if allow_outside else folder.resolve()
        if not allow_outside and meta.get("root"):
            log.info("%s names %s as its data folder; the store names the shard folder instead (pass --allow-outside "
                     "to use %s)", folder, display_id(meta["root"]), display_id(meta["root"]))
    shown = meta.get("display_names")
    shown = shown if isinstance(shown, list) and len(shown) == len(meta["classes"]) else None
    with open_for_images(store_path, ids, splits, labels, meta["classes"], root=root, display_names=shown) as fs:
        done = fs.begin_backbone(provenance, meta["dim"], prob_classes=prob_classes)
        write_batches(_shard_batches(folder, meta, tables, fs, done), StoreWriter(fs, meta["spec"]))
        if (folder / "text_emb.npy").is_file():
            fs.set_text(meta["spec"], np.load(folder / "text_emb.npy"), meta["templates"], meta.get("logit_scale"))
        if (folder / "head_weight.npy").is_file() and not meta["normalized"]:
            fs.set_head(meta["spec"], np.load(folder / "head_weight.npy"), np.load(folder / "head_bias.npy"),
                        meta["head_classes"])
        elif (folder / "head_weight.npy").is_file():
            log.info("%s: the features are L2-normalised, so the backbone's classifier head (which maps raw features) "
                     "is not imported; methods that need it (conse) need `python -m embed run`", folder)
        return fs.info()


def export_shards(store_path: str | Path, spec: str, folder: str | Path, shard_size: int = 100_000,
                  normalize: bool = True) -> Path:
    """Write one backbone of a store as a shard folder (the reverse of :func:`import_shards`).

    The folder is written whole beside its place (a hidden ``.NAME.PID.tmp`` folder) and moved there once complete:
    an export that fails (disk full, a read-only folder) leaves nothing behind, and one that is killed leaves an
    earlier export in ``folder`` as it was, never some new shards among old ones.

    Parameters
    ----------
    store_path, spec
        The store and the backbone whose features are exported.
    folder : path
        The shard folder to write: new, empty, or an earlier export of the same run (which is replaced).
    shard_size : int
        Rows per shard.
    normalize : bool
        True: L2-normalised float16 features, what embedding-reader and autofaiss expect. False: the stored
        features as they are, with the classifier probabilities (a lossless copy, for another store).
    """
    if shard_size < 1:
        raise UserError("--shard-size must be at least 1")
    out = Path(folder)
    _check_export_folder(out)
    with FeatureStore(store_path) as fs:
        prov = fs.provenance(spec)
        if not fs.rows_done(spec).all():
            raise UserError(f"backbone {spec!r} in {store_path} is incomplete; finish `python -m embed run` first")
        # the layout autofaiss indexes holds only images that decoded (a zero vector would be indexed as a neighbour
        # of everything); the failed ones are listed in meta.json with their reason. The lossless copy keeps all.
        keep = fs.status == OK if normalize else np.ones(len(fs), dtype=bool)
        index = np.flatnonzero(keep)
        ids, splits, labels = fs.ids[index], fs.splits[index], fs.labels[index]
        n = int(index.size)
        meta = {key: prov[key] for key in ("spec", "weights_sha256", "weights_source", "preprocessing", "versions")}
        fingerprint = fs.fingerprint if keep.all() else image_list_sha256(ids, splits, labels, fs.classes)
        meta.update(image_list_sha256=fingerprint, rows_sha256=rows_sha256(ids), classes=fs.classes,
                    display_names=fs.display_names, root=fs.root,
                    n_images=n, shard_size=shard_size, n_shards=-(-n // shard_size), dim=int(prov["dim"]),
                    normalized=bool(normalize) or bool(prov["preprocessing"].get("l2_normalized")),
                    dtype="float16" if normalize else str(prov["dtype"]))
        meta["preprocessing"] = {k: v for k, v in meta["preprocessing"].items() if k != "l2_normalized"}
        text, head = (fs.text(spec) if fs.has_text(spec) else None), fs.head(spec)
        if text is not None:
            meta.update(templates=text[1], logit_scale=text[2])
        if head is not None:
            meta["head_classes"] = head[2]
        if fs.has_probs(spec) and not meta["normalized"]:
            meta["prob_classes"] = fs.probs(spec, np.empty(0, dtype=np.int64))[1]
        if not keep.all():
            errors = dict(fs.errors())
            meta["left_out"] = [{"id": display_id(i), "status": "error", "error": errors.get(i, "")}
                                for i in fs.ids[~keep]]
        if (out / "meta.json").is_file():
            check_same_run(out, {"normalized": True, "dtype": "float16", **meta})
        tmp = temporary_path(out)
        try:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a killed export by a process of the same id
            out.parent.mkdir(parents=True, exist_ok=True)
            writer = ShardWriter(tmp, meta, ids, splits, labels)
            if text is not None:
                writer.write_extra("text_emb", text[0])
            if head is not None:
                writer.write_extra("head_weight", head[0])
                writer.write_extra("head_bias", head[1])
            write_batches(_store_batches(fs, spec, index, shard_size, "prob_classes" in meta), writer)
            _replace_folder(tmp, out)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = err if isinstance(err, OSError) else err.__cause__
            if isinstance(cause, OSError):
                raise UserError(f"cannot write the export {out} ({one_line(cause)}); nothing was left there (an "
                                 "earlier export stays as it was): free disk space, or choose a writable --out "
                                 "folder") from None
            raise
    return out


def _check_export_folder(out: Path) -> None:
    """ValueError unless ``out`` is new, an empty folder or a shard folder, which an export may replace whole."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to write the shards into (it is created)")
    if out.is_dir() and not (out / "meta.json").is_file() and any(out.iterdir()):
        raise UserError(f"--out {out} holds other files and no meta.json, so it is not a shard folder an export may "
                         "replace; give a new or empty folder")


def _replace_folder(new: Path, out: Path) -> None:
    """Move the complete folder ``new`` to ``out``, replacing the folder there (renamed aside, then removed)."""
    if not out.exists():
        os.rename(new, out)
        return
    old = temporary_path(out, ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _store_batches(fs: FeatureStore, spec: str, index: np.ndarray, size: int, probs: bool):
    """Store rows ``index`` of one backbone as batches of ``size`` (their rows numbered 0.. in ``index`` order;
    features of failed rows, when kept, are ignored by the writer)."""
    sha, status, messages = fs.sha256, fs.status, dict(fs.errors())
    chunks = fs.row_chunks(spec, index, chunk_rows=size)
    for start, features in chunks.chunks():
        rows = index[start:start + len(features)]
        yield Batch(rows=np.arange(start, start + len(rows)), status=status[rows], sha256=sha[rows],
                    errors=[messages.get(i) for i in fs.ids[rows]], features=features,
                    probs=fs.probs(spec, rows)[0] if probs else None)
