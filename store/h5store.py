r"""The HDF5 feature store: one file per image list, one group per backbone, provenance on every group.

Layout (``FORMAT_VERSION`` 2)::

    /                      attrs: format, format_version, rows_sha256, classes (JSON, as created), display_names
                                  (JSON, optional), root, created
    /images/id             (N,)  path relative to the data root, UTF-8 (see "File names" below)
    /images/split          (N,)  uint8 index into SPLITS (now; contiguous, overwritten on a label change)
    /images/label          (N,)  int32 class index, -1 unknown (now; likewise)
    /images/sha256         (N,)  S64 hex digest of the file bytes ("" until read)
    /images/status         (N,)  uint8: 0 pending, 1 ok, 2 error
    /images/error          (N,)  S256 utf-8 one-line error message ("" when ok)
    /backbones/<quoted spec>/            attrs: spec, weights_sha256, weights_source, preprocessing, versions,
                                                dtype, dim, views, view_kinds, image_list_sha256
        features           (N, D)     float32 or float16
        done               (N,)       bool: row written (features or error) -- the resume marker
        views              (N, V, D)  optional augmented views
        probs              (N, K)     optional ImageNet-classifier probabilities (float16), attrs: classes; absent
                                      for L2-normalised features (preprocessing ``l2_normalized``: imported from
                                      normalised shards), whose head is not offered either
        head_weight/_bias  (K, D), (K,) optional: the classifier giving those probabilities from the features
        text               (C, T, D)  optional CLIP text embeddings, attrs: templates, logit_scale
    /labels/...            the current classes, the label history and what the data source said of each row
                           (see :mod:`store.labellog`)
    /partial/<kind>/<quoted spec>        objects under construction (see "Crash safety"); never read

What the rows are (ids, and so the features) is fixed when a store is created and named by ``rows_sha256`` (the
sha256 of the ids), which backbone groups and fitted models must match; labels, splits and classes are metadata that
:mod:`store.labels` changes in place, atomically and with a history. Version 1 (no ``/labels``, the fingerprint
``image_list_sha256`` of ids, splits, labels and classes) still reads; its first label change adds ``/labels``.

File names: ids are the file names' exact bytes (see :mod:`store.layout`).

Classes: ``classes`` are the class ids users get back (folder names, or labels as a list writes them), in class-index
order; ``display_names`` (one per class, written since class ids and display names were told apart) are what CLIP
prompts and pages show (``musical_instrument`` -> ``musical instrument``, or ``classes.txt``). A store without them
(older ones kept display names in ``classes``) shows its classes as they are.

Crash safety: every per-row dataset is contiguous with its storage allocated when it is created, so the row loop
only ever overwrites raw bytes -- no chunk index, heap or other metadata changes while embedding. Rows are
written, the file flushed, and only then their ``done`` flags set and flushed again: a process killed at any
moment leaves a readable file whose ``done`` rows are complete. Objects written whole (a backbone group with its
datasets, the classifier head, the text embeddings) are built under ``/partial`` and moved into place by one link
operation once complete, so a failure part-way (disk full, a kill) leaves the old state, which the same command
resumes from; debris under ``/partial`` is replaced by the next attempt. Features are checked on write and on read:
an ok row is finite and below :data:`~store.integrity.MAX_ABS_FEATURE`, so a row that is not was damaged after it
was written.

Received stores: a store may come from someone else, so opening one checks, before any data is read, that it reads
only its own bytes (no external storage, links out of the file or virtual datasets) and declares no more than its
size holds (shapes that fit N images, D features, C classes; see :mod:`store.structure`).

The rooms: :mod:`store.layout` (constants, id encoding, dataset creation), :mod:`store.integrity` (sane features,
damage and write errors), :mod:`store.structure` (what a file may hold, checked on open), :mod:`store.reading` and
:mod:`store.writing` (the two halves of :class:`FeatureStore`), this module (opening, creating, the image list).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from store.atomic import atomic_write
from store.integrity import DAMAGE_ERRORS, damaged_error, open_error, reads
from store.labellog import GROUP, apply_entries, check_label_values, create_label_group, current_group, pending_entries
from store.layout import (ERROR, ERROR_BYTES, FORMAT, FORMAT_VERSION, OK, PENDING, SPLITS, Rows,
                          create_rows_dataset, display_id, id_bytes, image_list_sha256, rows_sha256, short)
from store.reading import RowChunks, StoreReading
from store.structure import check_format, check_id_lengths, check_structure
from store.writing import StoreWriting
from store.validation import UserError, one_line

__all__ = ["ERROR", "OK", "PENDING", "SPLITS", "FeatureStore", "Rows", "RowChunks", "display_id", "image_list_sha256",
           "open_for_images"]


class FeatureStore(StoreReading, StoreWriting):
    """An HDF5 feature store opened for reading (``mode="r"``) or appending (``mode="a"``).

    Parameters
    ----------
    path : str or Path
        The ``.h5`` file; it must exist (use :meth:`create` or :func:`open_for_images` to make one).
    mode : {"r", "a"}
        Read-only, or read/write.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no feature store at {self.path}: build one with `python -m embed run --store "
                                    f"{self.path}`")
        try:
            self._f = h5py.File(self.path, mode)
        except OSError as err:
            raise open_error(self.path, err) from None
        try:
            if not check_format(self._f):
                raise UserError(f"{self.path} is an HDF5 file but not a feature store; point --store at a store "
                                 "written by `python -m embed run`")
            check_structure(self._f, self.path)  # before any data is read: its own bytes, shapes that fit its size
        except UserError:
            self._f.close()
            raise
        except DAMAGE_ERRORS + (ValueError,) as err:  # h5py's ValueErrors on damaged headers too
            self._f.close()
            raise damaged_error(self.path, err) from None
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | Path, ids: Sequence[str], splits: Sequence[str], labels: Sequence[int],
               classes: Sequence[str], root: str | Path | None = None,
               display_names: Sequence[str] | None = None) -> "FeatureStore":
        """Write a new store for an image list (atomically: a temporary file renamed into place); ``display_names``:
        one per class, for prompts and pages (default: the classes)."""
        path = Path(path)
        if path.exists():
            raise UserError(f"{path} already exists; open it instead or choose another --store path")
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise UserError(f"unknown split(s) {bad}; splits must be one of {list(SPLITS)}")
        labels = np.asarray(labels, dtype=np.int32)
        if labels.size and (labels.min() < -1 or labels.max() >= len(classes)):
            raise UserError(f"labels must be -1 (unknown) or a class index below {len(classes)}")
        if display_names is not None and len(display_names) != len(classes):
            raise UserError(f"{len(display_names)} display names for {len(classes)} classes; give one per class")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
                _write_image_list(f, ids, splits, labels, classes, root, display_names)
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise UserError(f"cannot create the store {path} ({one_line(err)}); free disk space or choose "
                             "another --store path") from None
        return cls(path, "a")

    # ------------------------------------------------------------------ context management
    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def flush(self) -> None:
        """Push everything written so far to disk."""
        self._f.flush()

    # ------------------------------------------------------------------ image list
    @property
    @reads
    def fingerprint(self) -> str:
        """What the rows are: sha256 of the ids (``rows_sha256``), or of the whole image list for a store of format
        version 1 (``image_list_sha256``, whose labels never changed). Backbone groups and fitted models must match
        it; label changes leave it as it is (see :attr:`labels_fingerprint`)."""
        key = "rows_sha256" if "rows_sha256" in self._f.attrs else "image_list_sha256"
        return str(self._f.attrs[key])

    @property
    @reads
    def labels_fingerprint(self) -> str:
        """The label state: sha256 of the ids, splits, labels and classes as they are now (provenance of a result,
        so that two evaluations on other labels are told apart). Equals :attr:`fingerprint` for a store of format
        version 1 that was never relabeled."""
        return image_list_sha256(self.ids, self.splits, self.labels, self.classes)

    def matches_rows(self, fingerprint: str) -> bool:
        """Whether ``fingerprint`` names this store's rows: :attr:`fingerprint`, or the sha256 of its ids (what a
        model fitted outside any store, the fine-tuned head, records)."""
        return fingerprint in (self.fingerprint, rows_sha256(self.ids))

    @property
    @reads
    def classes(self) -> list[str]:
        """Class ids (folder names, or the labels of a list), in class-index order: what predictions, ``p_`` columns,
        reports and answers carry."""
        if "classes" not in self._cache:
            attrs = current_group(self._f).attrs if GROUP in self._f else self._f.attrs
            self._cache["classes"] = json.loads(attrs["classes"])
        return list(self._cache["classes"])

    @property
    def version(self) -> int:
        """The file's format version (1: labels fixed at creation, 2: labels with a history)."""
        return 2 if GROUP in self._f else 1

    @property
    def has_display_names(self) -> bool:
        """Whether the store keeps display names beside its class ids (older stores hold display names as classes)."""
        return "display_names" in self._f.attrs

    @property
    @reads
    def display_names(self) -> list[str]:
        """One display name per class (``_`` read as a space, or ``classes.txt``), for CLIP prompts and pages (a
        class added since the store was written reads its id with ``_`` as a space, an older store's classes show as
        they are)."""
        classes = self.classes
        if not self.has_display_names:
            return classes
        names = json.loads(self._f.attrs["display_names"])
        return [names[i] if i < len(names) else c.replace("_", " ") for i, c in enumerate(classes)]

    @property
    @reads
    def root(self) -> str:
        """The data folder the ids are relative to (informational)."""
        value = self._f.attrs["root"]
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)

    @reads
    def __len__(self) -> int:
        return int(self._f["images/id"].shape[0])

    def _images(self, name: str) -> np.ndarray:
        if name not in self._cache:  # cached until the labels change (see store.labels)
            if name == "id":  # exact file names back, bytes that are not UTF-8 included (see store.layout)
                dataset = self._f["images/id"]
                check_id_lengths(dataset, self.path)
                self._cache[name] = np.array(dataset.asstr(errors="surrogateescape")[:].tolist(),
                                             dtype=str).reshape(-1)
            else:
                self._cache["label"], self._cache["split"] = self._label_state()
        return self._cache[name]

    def _label_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) int32 labels and (N,) uint8 split indices as they are now: ``/images`` with the committed history
        entries that a stopped writer had not applied yet (see :mod:`store.labellog`)."""
        labels, splits = self._f["images/label"][:], self._f["images/split"][:]
        if GROUP in self._f:
            apply_entries(labels, splits, pending_entries(self._f))
        check_label_values(labels, splits, len(self.classes), "/images")
        return labels, splits

    def _forget_labels(self) -> None:
        """Drop the cached label state (after a change)."""
        for name in ("label", "split", "classes"):
            self._cache.pop(name, None)

    @property
    @reads
    def ids(self) -> np.ndarray:
        """(N,) image ids, paths relative to the data root (exact: names that are not UTF-8 hold surrogates)."""
        return self._images("id")

    @property
    @reads
    def splits(self) -> np.ndarray:
        """(N,) split name of every image."""
        return np.asarray(SPLITS)[self._images("split")]

    @property
    @reads
    def labels(self) -> np.ndarray:
        """(N,) class index of every image, -1 unknown."""
        return self._images("label").astype(np.int64)

    @property
    @reads
    def status(self) -> np.ndarray:
        """(N,) 0 pending (never read), 1 decoded, 2 failed."""
        status = self._f["images/status"][:]
        if status.size and status.max() > ERROR:
            raise IndexError("/images/status holds values other than pending, ok and error")
        return status

    @property
    @reads
    def sha256(self) -> np.ndarray:
        """(N,) hex sha256 of every file read so far ("" for files never read)."""
        return self._f["images/sha256"][:].astype(str)

    @reads
    def errors(self) -> list[tuple[str, str]]:
        """(id, message) of every file that failed to decode."""
        bad = np.flatnonzero(self.status == ERROR)
        messages = self._f["images/error"][:]
        return [(str(self.ids[i]), messages[i].decode("utf-8", "replace")) for i in bad]

    @reads
    def duplicates(self) -> list[list[str]]:
        """Groups of ids whose files have identical bytes (same sha256), each group sorted."""
        sha = self.sha256
        groups: dict[str, list[str]] = {}
        for i in np.flatnonzero(sha != ""):
            groups.setdefault(sha[i], []).append(str(self.ids[i]))
        return sorted(sorted(g) for g in groups.values() if len(g) > 1)

    def split_mask(self, split: str | Iterable[str] | None) -> np.ndarray:
        """(N,) bool mask of the rows in ``split`` (a name, several names, or None for all)."""
        if split is None:
            return np.ones(len(self), dtype=bool)
        names = [split] if isinstance(split, str) else list(split)
        unknown = sorted(set(names) - set(SPLITS))
        if unknown:
            raise UserError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
        return np.isin(self.splits, names)


def _write_image_list(f: h5py.File, ids: Sequence[str], splits: Sequence[str], labels: np.ndarray,
                      classes: Sequence[str], root: str | Path | None, display_names: Sequence[str] | None) -> None:
    """The root attributes and ``/images`` of a new store file ``f``, and an empty ``/backbones``."""
    n = len(ids)
    f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, classes=json.dumps(list(classes)),
                   rows_sha256=rows_sha256(ids), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    f.attrs["display_names"] = json.dumps(list(classes if display_names is None else display_names))
    root_text = os.fspath(root or "")
    # A root that is not UTF-8 is kept as its bytes (read back with surrogateescape, like the ids).
    f.attrs["root"] = root_text if root_text == display_id(root_text) else np.bytes_(id_bytes(root_text))
    g = f.create_group("images")
    g.create_dataset("id", data=np.array([id_bytes(i) for i in ids], dtype=object).reshape(n),
                     dtype=h5py.string_dtype())
    split_index = np.array([SPLITS.index(s) for s in splits], dtype=np.uint8).reshape(n)
    for name, values in (("split", split_index), ("label", labels.reshape(n))):  # overwritten in place on a change
        create_rows_dataset(g, name, (n,), values.dtype, fill=True)[:] = values
    create_rows_dataset(g, "sha256", (n,), "S64", fill=True)
    create_rows_dataset(g, "status", (n,), np.uint8, fill=True)
    create_rows_dataset(g, "error", (n,), f"S{ERROR_BYTES}", fill=True)
    f.create_group("backbones")
    create_label_group(f, ids, classes, labels.reshape(n), split_index)


def open_for_images(path: str | Path, ids: Sequence[str], splits: Sequence[str], labels: Sequence[int],
                    classes: Sequence[str], root: str | Path | None = None,
                    display_names: Sequence[str] | None = None) -> FeatureStore:
    """Open the store at ``path`` for appending when it was built for this image list, or create it.

    A store of other rows (other ids, or another order) is refused and left untouched. Labels are metadata: a store
    of the same rows keeps its own labels, splits and classes (change them with :mod:`store.labels`).
    """
    path = Path(path)
    if not path.exists():
        return FeatureStore.create(path, ids, splits, labels, classes, root=root, display_names=display_names)
    with FeatureStore(path, "r") as existing:  # check read-only first: a refusal must not touch the file
        if len(existing) != len(ids) or list(existing.ids) != list(ids):
            raise UserError(f"store {path} was built from a different image list ({len(existing)} images, classes "
                             f"{short(existing.classes)}); use a new --store path for this data")
    return FeatureStore(path, "a")
