r"""The label state of a store and its history: what may change after the rows were embedded, and how, atomically.

Layout (format version 2; a version-1 store gets it on its first label change)::

    /labels/state              (3,) int64: committed entries, applied entries, generation G
    /labels/id_hash            (N,) uint64: a 64-bit hash of every id (:func:`id_hashes`), to find an answer's row
                               without reading every id
    /labels/g<G>               attrs: classes (JSON) -- the store's current class names
        log                    (capacity,) LOG_DTYPE: one entry per row change, oldest first; the first
                               ``committed`` entries are the history
        source_label (N,) int32, source_split (N,) uint8
                               what the data source (folder, CSV list) said of every row at the last
                               ``embed run``: a rerun keeps answers given since unless the source changed its mind

``/images/label`` and ``/images/split`` hold the current labels and splits once every committed entry is applied.

Crash safety: a batch of changes is committed by one small raw write, the ``state`` vector, into its preallocated
contiguous dataset -- no metadata changes. In order: the batch's entries are written beyond the committed ones
(invisible), flushed; ``state`` says they are committed (the commit point), flushed; ``/images/label`` and
``/images/split`` are overwritten, flushed; ``state`` says they are applied. A process killed before the commit point
leaves the old state; after it, the new one: readers apply the committed entries not yet applied (each entry holds
absolute values, so applying one twice changes nothing) and the next writer finishes the job. What is rarer -- more
entries than the log holds, new classes, new source labels -- goes into a new generation group built beside the
current one and switched to by the same ``state`` write; the old group is dropped after, and debris of a killed
attempt (a group that ``state`` does not name) is never read and dropped by the next writer.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Sequence

import h5py
import numpy as np

from store.layout import SPLITS, STAGING, create_rows_dataset, id_bytes

GROUP = "labels"
#: one history entry: store row, time (Unix seconds, UTC), batch number (from 1), the batch it undoes (0: none),
#: old and new class index (-1 unlabeled), old and new split index, who made it (UTF-8, at most 64 bytes)
LOG_DTYPE = np.dtype([("row", "<i8"), ("time", "<f8"), ("batch", "<i4"), ("undoes", "<i4"), ("old", "<i4"),
                      ("new", "<i4"), ("old_split", "u1"), ("new_split", "u1"), ("source", "S64")])
#: entries a new log holds before it grows (doubling)
INITIAL_CAPACITY = 1024
#: most entries a history may hold
MAX_HISTORY = 2**31 - 1
COMMITTED, APPLIED, GENERATION = 0, 1, 2


def generation_name(generation: int) -> str:
    """The group of generation ``generation`` inside ``/labels``."""
    return f"g{int(generation)}"


def read_state(f: h5py.File) -> np.ndarray:
    """(3,) int64: committed entries, applied entries, generation."""
    return f[f"{GROUP}/state"][:]


def current_group(f: h5py.File) -> h5py.Group:
    """The generation group ``state`` names."""
    return f[GROUP][generation_name(read_state(f)[GENERATION])]


def _build_generation(parent: h5py.Group, name: str, log: np.ndarray, capacity: int, classes: Sequence[str],
                      source_label: np.ndarray, source_split: np.ndarray) -> h5py.Group:
    """A generation group ``name`` in ``parent`` (debris of an earlier attempt replaced), its log holding ``log``."""
    if name in parent:
        del parent[name]
    g = parent.create_group(name)
    g.attrs["classes"] = json.dumps(list(classes))
    d = create_rows_dataset(g, "log", (int(capacity),), LOG_DTYPE, fill=True)
    if log.size:
        d[: log.size] = log
    g.create_dataset("source_label", data=np.asarray(source_label, dtype=np.int32))
    g.create_dataset("source_split", data=np.asarray(source_split, dtype=np.uint8))
    return g


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """(N,) uint64: the first 8 bytes of the BLAKE2b digest of each id's bytes."""
    return np.array([int.from_bytes(hashlib.blake2b(id_bytes(i), digest_size=8).digest(), "little") for i in ids],
                    dtype=np.uint64).reshape(len(ids))


def create_label_group(f: h5py.File, ids: Sequence[str], classes: Sequence[str], labels: np.ndarray,
                       splits: np.ndarray) -> None:
    """Give ``f`` an empty history whose source labels are ``labels`` and ``splits`` (indices): built under
    ``/partial`` and linked in whole (a version-1 store upgraded by its first label change)."""
    staging = f.require_group(STAGING)
    if GROUP in staging:
        del staging[GROUP]
    g = staging.create_group(GROUP)
    create_rows_dataset(g, "state", (3,), np.int64, fill=True)
    g.create_dataset("id_hash", data=id_hashes(ids))
    _build_generation(g, generation_name(0), np.empty(0, LOG_DTYPE), INITIAL_CAPACITY, classes, labels, splits)
    f.flush()
    f.move(g.name, f"/{GROUP}")
    f.attrs["format_version"] = 2
    f.flush()


def pending_entries(f: h5py.File) -> np.ndarray:
    """The committed entries not yet applied to ``/images`` (a writer was stopped between the two)."""
    committed, applied, _ = read_state(f)
    if applied >= committed:
        return np.empty(0, LOG_DTYPE)
    return current_group(f)["log"][int(applied):int(committed)]


def apply_entries(labels: np.ndarray, splits: np.ndarray, entries: np.ndarray) -> None:
    """Set, in place and in order, each entry's row to its new label and split."""
    n = labels.size
    if entries.size and (entries["row"].min() < 0 or entries["row"].max() >= n):
        raise IndexError(f"/{GROUP} history names rows outside [0, {n})")
    labels[entries["row"]] = entries["new"]  # later entries of a row win: numpy assigns in order
    splits[entries["row"]] = entries["new_split"]


def check_label_values(labels: np.ndarray, splits: np.ndarray, n_classes: int, where: str) -> None:
    """IndexError (a damaged or crafted file) unless labels are -1 or a class index and splits a split index."""
    if labels.size and (labels.min() < -1 or labels.max() >= n_classes):
        raise IndexError(f"{where} holds labels outside [-1, {n_classes})")
    if splits.size and splits.max() >= len(SPLITS):
        raise IndexError(f"{where} holds splits outside [0, {len(SPLITS)})")


def batch_entries(rows: np.ndarray, old: np.ndarray, new: np.ndarray, old_split: np.ndarray,
                  new_split: np.ndarray, batch: int, source: str, undoes: int = 0) -> np.ndarray:
    """One batch's entries, all stamped with the current time."""
    entries = np.zeros(rows.size, LOG_DTYPE)
    entries["row"], entries["old"], entries["new"] = rows, old, new
    entries["old_split"], entries["new_split"] = old_split, new_split
    entries["batch"], entries["undoes"] = batch, undoes
    entries["time"] = time.time()
    entries["source"] = source.encode("utf-8")[:LOG_DTYPE["source"].itemsize].decode("utf-8", "ignore").encode()
    return entries


def read_log(f: h5py.File) -> np.ndarray:
    """Every committed entry, oldest first (values checked: rows, labels and splits in range, batches from 1)."""
    committed = int(read_state(f)[COMMITTED])
    group = current_group(f)
    entries = group["log"][:committed]
    n, n_classes = f["images/id"].shape[0], len(json.loads(group.attrs["classes"]))
    if entries.size:
        for key in ("old", "new"):
            check_label_values(entries[key], entries[f"{key}_split"], n_classes, f"/{GROUP} history")
        if entries["row"].min() < 0 or entries["row"].max() >= n or entries["batch"].min() < 1:
            raise IndexError(f"/{GROUP} history names rows outside [0, {n}) or batches below 1")
    return entries


def commit(f: h5py.File, entries: np.ndarray, labels: np.ndarray, splits: np.ndarray,
           classes: Sequence[str] | None = None, source: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Commit one batch: ``entries`` appended to the history, ``/images`` set to ``labels`` and ``splits`` (the state
    after the batch), and optionally new ``classes`` and new source labels ``(label, split)``, all at one point.

    The caller has applied every pending entry first (:func:`finish_pending`)."""
    state = read_state(f)
    committed, generation = int(state[COMMITTED]), int(state[GENERATION])
    assert int(state[APPLIED]) == committed, "finish the pending entries first"
    group = current_group(f)
    log = group["log"]
    need = committed + entries.size
    if need > MAX_HISTORY:
        raise OverflowError(f"the label history holds at most {MAX_HISTORY} entries")
    if classes is None and source is None and need <= log.shape[0]:
        log[committed:need] = entries
        f.flush()
        _write_state(f, need, committed, generation)  # the commit point
    else:
        capacity = max(log.shape[0], INITIAL_CAPACITY)
        while capacity < need:
            capacity *= 2
        src_label, src_split = source if source is not None else (group["source_label"][:], group["source_split"][:])
        _build_generation(f[GROUP], generation_name(generation + 1), np.concatenate([log[:committed], entries]),
                          capacity, json.loads(group.attrs["classes"]) if classes is None else classes,
                          src_label, src_split)
        f.flush()
        _write_state(f, need, committed, generation + 1)  # the commit point
    _apply(f, labels, splits, need)
    drop_debris(f)


def _write_state(f: h5py.File, committed: int, applied: int, generation: int) -> None:
    f[f"{GROUP}/state"][:] = np.array([committed, applied, generation], dtype=np.int64)
    f.flush()


def _apply(f: h5py.File, labels: np.ndarray, splits: np.ndarray, committed: int) -> None:
    """Write the current labels and splits into ``/images``, then record that the log is applied up to
    ``committed``."""
    f["images/label"][:] = np.asarray(labels, dtype=np.int32)
    f["images/split"][:] = np.asarray(splits, dtype=np.uint8)
    f.flush()
    state = read_state(f)
    _write_state(f, committed, committed, int(state[GENERATION]))


def finish_pending(f: h5py.File, labels: np.ndarray, splits: np.ndarray) -> None:
    """Complete the work of a writer stopped after its commit point: ``labels`` and ``splits`` are the current
    state (read with the pending entries applied)."""
    state = read_state(f)
    if state[APPLIED] < state[COMMITTED]:
        _apply(f, labels, splits, int(state[COMMITTED]))


def drop_debris(f: h5py.File) -> None:
    """Remove generation groups that ``state`` does not name (the one replaced, or a killed attempt's)."""
    keep = generation_name(read_state(f)[GENERATION])
    stale = [name for name in f[GROUP] if name not in ("state", "id_hash", keep)]
    for name in stale:
        del f[GROUP][name]
    if stale:
        f.flush()


def split_index(names: Sequence[str]) -> np.ndarray:
    """Split names as the uint8 indices ``/images/split`` holds."""
    return np.array([SPLITS.index(s) for s in names], dtype=np.uint8)
