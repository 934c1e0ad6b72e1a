r"""The HDF5 feature store: one file per image list, one group per backbone, provenance on every group.

Layout (``FORMAT_VERSION`` 1)::

    /                      attrs: format, format_version, image_list_sha256, classes (JSON), root, created
    /images/id             (N,)  path relative to the data root, UTF-8 (see "File names" below)
    /images/split          (N,)  uint8 index into SPLITS
    /images/label          (N,)  int32 class index, -1 unknown
    /images/sha256         (N,)  S64 hex digest of the file bytes ("" until read)
    /images/status         (N,)  uint8: 0 pending, 1 ok, 2 error
    /images/error          (N,)  S256 utf-8 one-line error message ("" when ok)
    /backbones/<quoted spec>/            attrs: spec, weights_sha256, weights_source, preprocessing, versions,
                                                dtype, dim, views, view_kinds, image_list_sha256
        features           (N, D)     float32 or float16
        done               (N,)       bool: row written (features or error) -- the resume marker
        views              (N, V, D)  optional augmented views
        probs              (N, K)     optional ImageNet-classifier probabilities (float16), attrs: classes
        head_weight/_bias  (K, D), (K,) optional: the classifier giving those probabilities from the features
        text               (C, T, D)  optional CLIP text embeddings, attrs: templates, logit_scale
    /partial/<kind>/<quoted spec>        objects under construction (see "Crash safety"); never read

File names: ids are the file names' bytes. A name that is valid UTF-8 (every name on macOS and Windows, nearly every
one on Linux) is stored as such; a name that is not (a Linux byte string such as ``b"bad\xff.png"``, which Python
holds as ``"bad\udcff.png"``, the ``surrogateescape`` convention of :func:`os.fsdecode`) is stored as its raw bytes,
so the variable-length UTF-8 dataset may then hold bytes that are not UTF-8. The store reads ids back with
``surrogateescape``, so every id round-trips exactly; :func:`display_id` shows such bytes as ``\xNN`` (``store
info``, error messages). Stores written before this convention hold plain UTF-8 and read unchanged.

Crash safety: every per-row dataset is contiguous with its storage allocated when it is created, so the row loop
only ever overwrites raw bytes -- no chunk index, heap or other metadata changes while embedding. Rows are
written, the file flushed, and only then their ``done`` flags set and flushed again: a process killed at any
moment leaves a readable file whose ``done`` rows are complete. Objects written whole (a backbone group with its
datasets, the classifier head, the text embeddings) are built under ``/partial`` and moved into place by one link
operation once complete, so a failure part-way (disk full, a kill) leaves the old state, which the same command
resumes from; debris under ``/partial`` is replaced by the next attempt. Features are checked on write and on read:
an ok row is finite and below :data:`MAX_ABS_FEATURE`, so a row that is not was damaged after it was written.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import quote

import h5py
import numpy as np

log = logging.getLogger(__name__)

FORMAT = "fewshot-feature-store"
FORMAT_VERSION = 1
SPLITS = ("train", "unlabeled", "test")
PENDING, OK, ERROR = 0, 1, 2
ERROR_BYTES = 256
# Provenance attributes that must match for two runs to write into the same backbone group.
IDENTITY_ATTRS = ("spec", "weights_sha256", "preprocessing", "dtype", "views", "view_kinds")
# Largest |value| an ok feature may hold. Real image features stay far below it (float16 storage cannot even exceed
# 65504), while random bytes read as float32 exceed it in about 40 % of values: a row beyond it was damaged.
MAX_ABS_FEATURE = 1e8
# What h5py raises when the file's structure is damaged (bad heap, B-tree, object header, attribute, string).
_DAMAGE_ERRORS = (json.JSONDecodeError, UnicodeError, OSError, RuntimeError, KeyError, IndexError, TypeError)
STAGING = "partial"


def display_id(name: str) -> str:
    """An id (or any text holding file names) as readable text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _id_bytes(name: str) -> bytes:
    """The bytes an id is stored as: UTF-8, and the original bytes of a name that was not UTF-8."""
    return name.encode("utf-8", "surrogateescape")


def image_list_sha256(ids: Sequence[str], splits: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> str:
    """Fingerprint of what a store is about: the image ids, their splits and labels, and the class names."""
    h = hashlib.sha256()
    h.update(json.dumps(list(classes)).encode())
    for i, s, y in zip(ids, splits, labels):
        h.update(_id_bytes(f"{i}\0{s}\0{int(y)}\n"))  # the same digest as plain UTF-8 for every UTF-8 name
    return h.hexdigest()


def group_name(spec: str) -> str:
    """HDF5-safe group name of a backbone spec (specs contain ``/``); the real spec lives in the ``spec`` attr."""
    return quote(spec, safe="")


@dataclass(frozen=True)
class Rows:
    """Rows of one split read from a store: features, labels, ids and their row indices in the store."""

    X: np.ndarray  # (n, D) float32
    y: np.ndarray  # (n,) int, -1 unknown
    ids: np.ndarray  # (n,) str
    index: np.ndarray  # (n,) int row indices in the store


def _reads(method):
    """Turn what h5py raises on a damaged file into one ValueError naming the store and the fix."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except _DAMAGE_ERRORS as err:
            log.debug("reading %s failed", self.path, exc_info=True)
            raise self._damaged(err) from None
    return wrapper


def _writes(method):
    """Turn an OSError while writing (disk full, I/O error) into one ValueError saying the rerun resumes."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            log.debug("writing %s failed", self.path, exc_info=True)
            raise ValueError(f"writing {self.path} failed ({_one_line(err)}); free disk space (or fix the disk) and "
                             "rerun the same command: it resumes where it stopped") from None
    return wrapper


def _create_rows_dataset(group: h5py.Group, name: str, shape: tuple, dtype, fill: bool) -> h5py.Dataset:
    """A contiguous dataset whose file space is allocated now, so later row writes change no metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # Fill small bookkeeping datasets with zeros now; leave big feature blocks sparse (never read before written).
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC if fill else h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


class FeatureStore:
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
            raise _open_error(self.path, err) from None
        try:
            fmt = self._f.attrs.get("format")
        except _DAMAGE_ERRORS as err:
            self._f.close()
            raise self._damaged(err) from None
        if fmt != FORMAT:
            self._f.close()
            raise ValueError(f"{self.path} is an HDF5 file but not a feature store; point --store at a store written "
                             "by `python -m embed run`")
        self._cache: dict[str, np.ndarray] = {}

    def _damaged(self, err: BaseException) -> ValueError:
        return ValueError(f"store {self.path} is damaged ({type(err).__name__}: {_one_line(err)}); re-embed: move it "
                          "aside and rerun `python -m embed run` with the same --store path")

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | Path, ids: Sequence[str], splits: Sequence[str], labels: Sequence[int],
               classes: Sequence[str], root: str | Path | None = None) -> "FeatureStore":
        """Write a new store for an image list (atomically: a temporary file renamed into place)."""
        path = Path(path)
        if path.exists():
            raise ValueError(f"{path} already exists; open it instead or choose another --store path")
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split(s) {bad}; splits must be one of {list(SPLITS)}")
        n = len(ids)
        labels = np.asarray(labels, dtype=np.int32)
        if labels.size and (labels.min() < -1 or labels.max() >= len(classes)):
            raise ValueError(f"labels must be -1 (unknown) or a class index below {len(classes)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fingerprint = image_list_sha256(ids, splits, labels, classes)
        root_text = os.fspath(root or "")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: a failure removes only its own file
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, classes=json.dumps(list(classes)),
                               image_list_sha256=fingerprint, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                # A root that is not UTF-8 is kept as its bytes (read back with surrogateescape, like the ids).
                f.attrs["root"] = root_text if root_text == display_id(root_text) else np.bytes_(_id_bytes(root_text))
                g = f.create_group("images")
                g.create_dataset("id", data=np.array([_id_bytes(i) for i in ids], dtype=object).reshape(n),
                                 dtype=h5py.string_dtype())
                g.create_dataset("split", data=np.array([SPLITS.index(s) for s in splits], dtype=np.uint8).reshape(n))
                g.create_dataset("label", data=labels.reshape(n))
                _create_rows_dataset(g, "sha256", (n,), "S64", fill=True)
                _create_rows_dataset(g, "status", (n,), np.uint8, fill=True)
                _create_rows_dataset(g, "error", (n,), f"S{ERROR_BYTES}", fill=True)
                f.create_group("backbones")
            tmp.replace(path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
                raise ValueError(f"cannot create the store {path} ({_one_line(err)}); free disk space or choose "
                                 "another --store path") from None
            raise
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
    @_reads
    def fingerprint(self) -> str:
        """sha256 of the image list (ids, splits, labels, classes) the store was built for."""
        return str(self._f.attrs["image_list_sha256"])

    @property
    @_reads
    def classes(self) -> list[str]:
        """Class names, in class-index order."""
        return json.loads(self._f.attrs["classes"])

    @property
    @_reads
    def root(self) -> str:
        """The data folder the ids are relative to (informational)."""
        value = self._f.attrs["root"]
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)

    @_reads
    def __len__(self) -> int:
        return int(self._f["images/id"].shape[0])

    def _images(self, name: str) -> np.ndarray:
        if name not in self._cache:  # ids, splits and labels never change after creation
            dataset = self._f[f"images/{name}"]
            if name == "id":  # exact file names back, bytes that are not UTF-8 included (see the module docstring)
                data = np.array(dataset.asstr(errors="surrogateescape")[:].tolist(), dtype=str).reshape(-1)
            else:
                data = dataset[:]
                high = len(SPLITS) if name == "split" else len(self.classes)
                if data.size and (data.min() < (0 if name == "split" else -1) or data.max() >= high):
                    raise IndexError(f"/images/{name} holds values outside [0, {high})")
            self._cache[name] = data
        return self._cache[name]

    @property
    @_reads
    def ids(self) -> np.ndarray:
        """(N,) image ids, paths relative to the data root (exact: names that are not UTF-8 hold surrogates)."""
        return self._images("id")

    @property
    @_reads
    def splits(self) -> np.ndarray:
        """(N,) split name of every image."""
        return np.asarray(SPLITS)[self._images("split")]

    @property
    @_reads
    def labels(self) -> np.ndarray:
        """(N,) class index of every image, -1 unknown."""
        return self._images("label").astype(np.int64)

    @property
    @_reads
    def status(self) -> np.ndarray:
        """(N,) 0 pending (never read), 1 decoded, 2 failed."""
        status = self._f["images/status"][:]
        if status.size and status.max() > ERROR:
            raise IndexError("/images/status holds values other than pending, ok and error")
        return status

    @property
    @_reads
    def sha256(self) -> np.ndarray:
        """(N,) hex sha256 of every file read so far ("" for files never read)."""
        return self._f["images/sha256"][:].astype(str)

    @_reads
    def errors(self) -> list[tuple[str, str]]:
        """(id, message) of every file that failed to decode."""
        bad = np.flatnonzero(self.status == ERROR)
        messages = self._f["images/error"][:]
        return [(str(self.ids[i]), messages[i].decode("utf-8", "replace")) for i in bad]

    @_reads
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
            raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
        return np.isin(self.splits, names)

    # ------------------------------------------------------------------ backbones
    @property
    @_reads
    def backbones(self) -> list[str]:
        """Specs of every backbone with a group in this store."""
        return sorted(str(g.attrs["spec"]) for g in self._f["backbones"].values())

    def _group(self, spec: str) -> h5py.Group:
        name = group_name(spec)
        if name not in self._f["backbones"]:
            have = ", ".join(self.backbones) or "none"
            raise ValueError(f"store {self.path} has no features for backbone {spec!r} (it has: {have}); run "
                             f"`python -m embed run --backbone {spec} --store {self.path}` first")
        return self._f["backbones"][name]

    def _staging(self, kind: str, name: str) -> h5py.Group:
        """A fresh, empty group where an object is built before it is moved into place (debris of a failed attempt
        at the same object is dropped first)."""
        path = f"{STAGING}/{kind}/{name}"
        if path in self._f:
            del self._f[path]
        return self._f.require_group(f"{STAGING}/{kind}").create_group(name)

    @_reads
    def provenance(self, spec: str) -> dict:
        """Every provenance attribute of a backbone group, JSON values decoded."""
        out = {}
        for key, value in self._group(spec).attrs.items():
            out[key] = json.loads(value) if key in ("preprocessing", "versions", "view_kinds") else _plain(value)
        return out

    @_reads
    def rows_done(self, spec: str) -> np.ndarray:
        """(N,) bool: rows already processed by this backbone (features written, or the file failed)."""
        return self._group(spec)["done"][:]

    @_writes
    def begin_backbone(self, provenance: dict, dim: int, prob_classes: Sequence[str] | None = None) -> np.ndarray:
        """Create the group for a backbone, or check that an existing one has the same origin.

        The group is built complete under ``/partial`` and then moved into place, so a failure part-way (disk full)
        leaves no group and the rerun starts it again. On resume, done rows whose features are not finite (damaged
        since they were written) are marked not done, so that the run embeds them again.

        Parameters
        ----------
        provenance : dict
            ``spec, weights_sha256, weights_source, preprocessing (dict), versions (dict), dtype, views (int),
            view_kinds (list)``.
        dim : int
            Feature dimension D.
        prob_classes : list of str, optional
            Class names of the backbone's own classifier, when its probabilities are kept.

        Returns
        -------
        numpy.ndarray
            (N,) bool mask of rows already done (all False for a new group).
        """
        spec = provenance["spec"]
        attrs = {**provenance, "preprocessing": json.dumps(provenance["preprocessing"], sort_keys=True),
                 "versions": json.dumps(provenance["versions"], sort_keys=True),
                 "view_kinds": json.dumps(list(provenance.get("view_kinds", []))),
                 "dim": int(dim), "image_list_sha256": self.fingerprint}
        name = group_name(spec)
        backbones = self._f["backbones"]
        if name in backbones and "done" not in backbones[name]:
            # Releases before the /partial staging created the group first: a failure then left it without datasets.
            log.warning("%s: rebuilding the group of %s left incomplete by an interrupted run", self.path, spec)
            del backbones[name]
        if name in backbones:
            g = backbones[name]
            for key in IDENTITY_ATTRS + ("dim",):
                old, new = _plain(g.attrs.get(key)), _plain(attrs.get(key))
                if old != new:
                    raise ValueError(f"store {self.path} already holds features of {spec!r} with a different {key} "
                                     f"({_short(old)} != {_short(new)}); refusing to mix origins -- write to a new "
                                     "--store, or use a different backbone spec")
            if _plain(g.attrs["versions"]) != attrs["versions"]:
                log.warning("library versions differ from the run that started %s: %s (was %s)", spec,
                            attrs["versions"], g.attrs["versions"])
            return self._redo_damaged_rows(spec, g)
        n, views = len(self), int(provenance.get("views", 0))
        g = self._staging("backbone", name)
        g.attrs.update(attrs)
        dtype = np.dtype(provenance["dtype"])
        _create_rows_dataset(g, "features", (n, dim), dtype, fill=False)
        if views:
            _create_rows_dataset(g, "views", (n, views, dim), dtype, fill=False)
        if prob_classes is not None:
            probs = _create_rows_dataset(g, "probs", (n, len(prob_classes)), np.float16, fill=False)
            probs.attrs["classes"] = json.dumps(list(prob_classes))
        _create_rows_dataset(g, "done", (n,), bool, fill=True)
        self._f.flush()
        self._f.move(g.name, f"backbones/{name}")  # one link: the group appears complete or not at all
        self._f.flush()
        return np.zeros(n, dtype=bool)

    def _redo_damaged_rows(self, spec: str, g: h5py.Group) -> np.ndarray:
        """The done mask, with done ok rows whose features are damaged (not finite, absurdly large) marked not done."""
        done = g["done"][:]
        index = np.flatnonzero(done & (self.status == OK))
        bad = []
        for start, X in RowChunks(g["features"], index, 65536).chunks():
            bad.append(index[start:start + len(X)][~_sane_rows(X)])
        bad = np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)
        if bad.size:
            log.warning("%s: %d row(s) of %s hold damaged features (e.g. %s); embedding them again", self.path,
                        bad.size, spec, display_id(str(self.ids[bad[0]])))
            g["done"][_selector(bad)] = False
            self._f.flush()
            done[bad] = False
        return done

    @_writes
    def set_text(self, spec: str, embeddings: np.ndarray, templates: Sequence[str], logit_scale: float | None) -> None:
        """Store (or replace) a CLIP backbone's text embeddings, (C, T, D), one row per class and template.

        Written whole under ``/partial`` and moved into place: a reader sees the old embeddings, none, or the new."""
        c, t, _ = embeddings.shape
        if c != len(self.classes) or t != len(templates):
            raise ValueError(f"text embeddings of shape {embeddings.shape} do not match {len(self.classes)} classes "
                             f"x {len(templates)} templates")
        g = self._group(spec)
        stage = self._staging("text", g.name.rsplit("/", 1)[-1])
        d = stage.create_dataset("text", data=np.asarray(embeddings, dtype=np.float32))
        d.attrs["templates"] = json.dumps(list(templates))
        d.attrs["logit_scale"] = float(logit_scale) if logit_scale is not None else float("nan")
        self._f.flush()
        if "text" in g:
            del g["text"]
        self._f.move(d.name, f"{g.name}/text")
        del self._f[stage.name]
        self._f.flush()

    @_writes
    def set_head(self, spec: str, weight: np.ndarray, bias: np.ndarray, classes: Sequence[str]) -> None:
        """Store a backbone's linear classifier (K, D) + (K,) over ``classes``: logits = features @ W.T + b.

        Written whole under ``/partial`` and moved into place, ``head_weight`` last: :meth:`head` reads a head only
        when both parts are there, so a failure part-way leaves no head and the rerun writes it again."""
        g = self._group(spec)
        stage = self._staging("head", g.name.rsplit("/", 1)[-1])
        stage.create_dataset("head_weight", data=np.asarray(weight, dtype=np.float32)).attrs["classes"] = json.dumps(
            list(classes))
        stage.create_dataset("head_bias", data=np.asarray(bias, dtype=np.float32))
        self._f.flush()
        for part in ("head_weight", "head_bias"):
            if part in g:
                del g[part]
        for part in ("head_bias", "head_weight"):
            self._f.move(f"{stage.name}/{part}", f"{g.name}/{part}")
        del self._f[stage.name]
        self._f.flush()

    @_reads
    def head(self, spec: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """The backbone's own classifier ``(W (K, D), b (K,), class names)``, or None when it has none."""
        g = self._group(spec)
        if "head_weight" not in g or "head_bias" not in g or "classes" not in g["head_weight"].attrs:
            return None  # none, or part of one left by an older release (the runner writes it again)
        return g["head_weight"][:], g["head_bias"][:], json.loads(g["head_weight"].attrs["classes"])

    @_writes
    def write_rows(self, spec: str, rows: np.ndarray, status: np.ndarray, sha256: Sequence[str | None],
                   errors: Sequence[str | None], features: np.ndarray | None = None, views: np.ndarray | None = None,
                   probs: np.ndarray | None = None) -> None:
        """Write one batch: per-image status for ``rows`` and the features of its ok rows, then mark them done.

        Features (and views) must be finite and within :data:`MAX_ABS_FEATURE` in the storage dtype (float16
        overflows above 65504): a batch that is not is refused whole (ValueError) before anything of it is written,
        so every ok row on disk is sane and a bad value read later means the file was damaged.

        Parameters
        ----------
        rows : (B,) int, strictly increasing row indices
        status : (B,) uint8 OK or ERROR
        sha256, errors : (B,) per-row digest and error message (None where unknown / ok)
        features : (n_ok, D) rows of ``rows[status == OK]``; views (n_ok, V, D); probs (n_ok, K)
        """
        rows = np.asarray(rows, dtype=np.int64)
        assert rows.ndim == 1 and np.all(np.diff(rows) > 0), "rows must be strictly increasing"
        g = self._group(spec)
        dtype = g["features"].dtype
        status = np.asarray(status, dtype=np.uint8)
        if features is not None:
            with np.errstate(over="ignore"):  # a value float16 cannot hold becomes inf, refused just below
                features = np.asarray(features, dtype=dtype)  # (n_ok, D)
                views = None if views is None else np.asarray(views, dtype=dtype)  # (n_ok, V, D)
            sane = _sane_rows(features)
            if views is not None:
                sane &= _sane_rows(views.reshape(len(views), -1))
            if not sane.all():
                first = display_id(str(self.ids[rows[status == OK][np.argmin(sane)]]))
                hint = ", or embed with --dtype float32 (float16 overflows above 65504)" if dtype == np.float16 else ""
                raise ValueError(f"backbone {spec!r} gave non-finite or out-of-range features (in {dtype}) for "
                                 f"{int((~sane).sum())} image(s) of a batch, e.g. {first}; nothing of the batch was "
                                 f"written; check the backbone's weights{hint}")
        sel = _selector(rows)
        img = self._f["images"]
        img["status"][sel] = status
        img["sha256"][sel] = np.array([(s or "").encode() for s in sha256], dtype="S64")
        img["error"][sel] = np.array([_clip_message(e or "") for e in errors], dtype=f"S{ERROR_BYTES}")
        ok_rows = rows[status == OK]
        if ok_rows.size:
            ok_sel = _selector(ok_rows)
            if features is not None:
                g["features"][ok_sel] = features
            if views is not None:
                g["views"][ok_sel] = views
            if probs is not None:
                g["probs"][ok_sel] = np.asarray(probs, dtype=np.float16)
        self._f.flush()  # data first ...
        g["done"][sel] = True
        self._f.flush()  # ... then the resume marker

    @_writes
    def invalidate_rows(self, rows: np.ndarray) -> None:
        """Forget rows (their files changed): not done for any backbone, status pending, digest and error cleared.

        The ``done`` flags go first, so a failure part-way leaves rows that the next run embeds again."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if not rows.size:
            return
        sel = _selector(rows)
        for g in self._f["backbones"].values():
            g["done"][sel] = False
        self._f.flush()
        img = self._f["images"]
        img["status"][sel] = np.zeros(rows.size, dtype=np.uint8)
        img["sha256"][sel] = np.zeros(rows.size, dtype="S64")
        img["error"][sel] = np.zeros(rows.size, dtype=f"S{ERROR_BYTES}")
        self._f.flush()

    # ------------------------------------------------------------------ reading
    @_reads
    def load(self, spec: str, split: str | Iterable[str] | None = None, *, dtype=np.float32) -> Rows:
        """Features, labels and ids of the decoded rows of ``split`` (None: all splits) for one backbone.

        Failed images are excluded. Raises ``ValueError`` when some wanted rows have not been embedded yet, or when
        stored features were damaged (not finite, or absurdly large) after they were written.
        """
        g = self._group(spec)
        index = self.row_index(spec, split)
        X = self._read_rows(g["features"], index)
        self._check_features(spec, X, index)
        return Rows(X=X.astype(dtype, copy=False), y=self.labels[index], ids=self.ids[index], index=index)

    def _check_features(self, spec: str, X: np.ndarray, index: np.ndarray) -> None:
        """ValueError naming the store, the backbone and the fix when rows ``index`` (features ``X``) are damaged."""
        if not X.size:
            return
        bad = ~_sane_rows(X.reshape(len(X), -1))
        if bad.any():
            first = display_id(str(self.ids[index[np.argmax(bad)]]))
            raise ValueError(f"store {self.path} is damaged: {int(bad.sum())} row(s) of backbone {spec!r} hold "
                             f"non-finite or absurdly large features (first: {first}); re-embed them: rerun "
                             f"`python -m embed run --backbone {spec} --store {self.path}` with the same data")

    @_reads
    def features_block(self, spec: str, start: int, stop: int) -> np.ndarray:
        """(stop - start, D) float32 raw feature rows ``start:stop`` (all rows, failed ones included): for streaming
        exports; use :meth:`load` for the decoded rows of a split. Damaged done ok rows raise as in :meth:`load`."""
        g = self._group(spec)
        block = g["features"][start:stop].astype(np.float32)
        ok = np.flatnonzero((self.status[start:stop] == OK) & g["done"][start:stop])
        self._check_features(spec, block[ok], start + ok)
        return block

    @_reads
    def row_chunks(self, spec: str, index: np.ndarray, chunk_rows: int = 65536) -> "RowChunks":
        """Rows ``index`` of a backbone's features, read on demand in chunks (for data larger than memory); reading
        a damaged row raises ``ValueError`` as :meth:`load` does."""
        dataset = self._group(spec)["features"]
        return RowChunks(dataset, np.asarray(index, dtype=np.int64), chunk_rows,
                         read=functools.partial(self._read_checked, spec, dataset))

    @_reads
    def _read_checked(self, spec: str, dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
        block = self._read_rows(dataset, rows)
        self._check_features(spec, block, rows)
        return block

    @_reads
    def row_index(self, spec: str, split: str | Iterable[str] | None = None) -> np.ndarray:
        """Store rows of the decoded images of ``split`` (None: all); ValueError when some are not embedded yet."""
        want = self.split_mask(split) & (self.status != ERROR)
        missing = want & ~self._group(spec)["done"][:]
        if missing.any():
            raise ValueError(f"backbone {spec!r} in {self.path} is incomplete: {int(missing.sum())} rows not embedded "
                             "yet; rerun the same `python -m embed run` command to finish it")
        return np.flatnonzero(want)

    @_reads
    def views(self, spec: str, index: np.ndarray) -> np.ndarray:
        """(n, V, D) float32 augmented-view features of rows ``index``; kinds in ``provenance(spec)['view_kinds']``."""
        g = self._group(spec)
        if "views" not in g:
            raise ValueError(f"backbone {spec!r} in {self.path} has no augmented views; embed with --views K")
        index = np.asarray(index)
        views = self._read_rows(g["views"], index)
        self._check_features(spec, views, index)
        return views.astype(np.float32)

    @_reads
    def probs(self, spec: str, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(n, K) float32 classifier probabilities of rows ``index`` and the K class names."""
        g = self._group(spec)
        if "probs" not in g:
            raise ValueError(f"backbone {spec!r} in {self.path} kept no classifier probabilities (only ImageNet "
                             "classifiers with pretrained heads have them)")
        return self._read_rows(g["probs"], index).astype(np.float32), json.loads(g["probs"].attrs["classes"])

    @_reads
    def text(self, spec: str) -> tuple[np.ndarray, list[str], float | None]:
        """CLIP text embeddings (C, T, D), their templates, and the logit scale; ValueError when absent."""
        g = self._group(spec)
        if not self.has_text(spec):
            raise ValueError(f"backbone {spec!r} in {self.path} has no text embeddings; zero-shot needs a CLIP "
                             "backbone (clip:<arch>/<tag>) embedded with `python -m embed run`")
        d = g["text"]
        scale = float(d.attrs["logit_scale"])
        return d[:], json.loads(d.attrs["templates"]), (None if np.isnan(scale) else scale)

    @_reads
    def has_text(self, spec: str) -> bool:
        """Whether a backbone group holds CLIP text embeddings (complete: an older release could leave them without
        their attributes, which the runner then writes again)."""
        g = self._group(spec)
        return "text" in g and all(key in g["text"].attrs for key in ("templates", "logit_scale"))

    @staticmethod
    def _read_rows(dataset: h5py.Dataset, index: np.ndarray) -> np.ndarray:
        if index.size == dataset.shape[0]:
            return dataset[:]
        if index.size == 0:
            return np.empty((0,) + dataset.shape[1:], dtype=dataset.dtype)
        lo, hi = int(index[0]), int(index[-1]) + 1
        return dataset[lo:hi][index - lo]  # one contiguous read beats h5py's per-row fancy indexing

    # ------------------------------------------------------------------ summary
    @_reads
    def info(self) -> dict:
        """The JSON summary of ``python -m store info`` (keys documented in DESIGN.md).

        Ids in ``failed`` and ``duplicates`` are shown with :func:`display_id` (valid UTF-8 whatever the names)."""
        status, splits = self.status, self.splits
        backbones = {}
        for g in self._f["backbones"].values():
            done = g["done"][:]
            backbones[str(g.attrs["spec"])] = {
                "dim": int(g.attrs["dim"]), "rows": int((done & (status == OK)).sum()),
                "complete": bool(done.all()), "dtype": str(g.attrs["dtype"]), "views": int(g.attrs["views"]),
                "text": "text" in g, "probs": "probs" in g, "weights_sha256": str(g.attrs["weights_sha256"])}
        return {"path": str(self.path), "images": len(self), "ok": int((status == OK).sum()),
                "errors": int((status == ERROR).sum()), "pending": int((status == PENDING).sum()),
                "splits": {s: int((splits == s).sum()) for s in SPLITS},
                "labeled": {s: int(((splits == s) & (self.labels >= 0)).sum()) for s in SPLITS},
                "classes": self.classes, "backbones": backbones, "fingerprint": self.fingerprint,
                "failed": [{"id": display_id(i), "error": e} for i, e in self.errors()],
                "duplicates": [[display_id(i) for i in group] for group in self.duplicates()]}


class RowChunks:
    """Selected rows of a feature dataset, read lazily: ``sample(k)`` for some of them, ``chunks()`` for all.

    ``shape`` is (len(index), D); chunks are float32 and follow ``index`` order (which must be increasing).
    ``read(rows)``, when given, reads a block of store rows in place of a plain read (the store passes one that
    checks the rows for damage).
    """

    def __init__(self, dataset: h5py.Dataset, index: np.ndarray, chunk_rows: int,
                 read: Callable[[np.ndarray], np.ndarray] | None = None):
        if index.size and np.any(np.diff(index) <= 0):
            raise ValueError("row index must be strictly increasing")
        self._index, self._chunk = index, int(chunk_rows)
        self._read_block = read or functools.partial(FeatureStore._read_rows, dataset)
        self.shape = (int(index.size), int(dataset.shape[1]))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Store rows ``rows`` (increasing), one contiguous read per ``chunk_rows`` span: memory stays bounded."""
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)
        start = 0
        while start < rows.size:
            stop = int(np.searchsorted(rows, rows[start] + self._chunk))  # rows within one chunk-sized span
            out[start:stop] = self._read_block(rows[start:stop])
            start = stop
        return out

    def sample(self, positions: np.ndarray) -> np.ndarray:
        """(m, D) float32 rows at ``positions`` (increasing) of the selection."""
        return self._read(self._index[np.asarray(positions, dtype=np.int64)])

    def chunks(self):
        """Yield ``(start, (c, D) float32)`` over the whole selection, ``chunk_rows`` at a time."""
        for start in range(0, self.shape[0], self._chunk):
            yield start, self._read(self._index[start:start + self._chunk])


def open_for_images(path: str | Path, ids: Sequence[str], splits: Sequence[str], labels: Sequence[int],
                    classes: Sequence[str], root: str | Path | None = None) -> FeatureStore:
    """Open the store at ``path`` for appending when it was built for this image list, or create it.

    A store built from another image list is refused (and left untouched).
    """
    path = Path(path)
    if not path.exists():
        return FeatureStore.create(path, ids, splits, labels, classes, root=root)
    with FeatureStore(path, "r") as existing:  # check read-only first: a refusal must not touch the file
        if existing.fingerprint != image_list_sha256(ids, splits, labels, classes):
            raise ValueError(f"store {path} was built from a different image list ({len(existing)} images, classes "
                             f"{_short(existing.classes)}); use a new --store path for this data")
    return FeatureStore(path, "a")


def _selector(rows: np.ndarray):
    """A slice when rows are contiguous (fast path in h5py), else the index array."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _clip_message(message: str) -> bytes:
    """One line of at most ERROR_BYTES UTF-8 bytes; file names in it that are not UTF-8 shown as ``\\xNN``."""
    data = display_id(" ".join(message.split())).encode("utf-8")
    return data[:ERROR_BYTES].decode("utf-8", "ignore").encode("utf-8")


def _sane_rows(X: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of ``X`` (n, D) that are finite and within MAX_ABS_FEATURE."""
    with np.errstate(invalid="ignore", over="ignore"):  # float16 data: the bound itself overflows to inf
        return np.isfinite(X).all(axis=1) & (np.abs(X) <= MAX_ABS_FEATURE).all(axis=1)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _open_error(path: Path, err: OSError) -> ValueError:
    """The one-line reason h5py could not open ``path``: in use by another process, or not an HDF5 store."""
    text = _one_line(err)
    if "unable to lock file" in text:
        if isinstance(err, BlockingIOError) or err.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "errno = 11" in text:
            return ValueError(f"store {path} is in use by another process (HDF5 allows one writer and no readers at a "
                              f"time); wait for the other `python -m embed run` / `classify` command to finish (or "
                              f"stop it; `fuser -v {path}` names it), then retry")
        return ValueError(f"cannot lock {path}: its file system does not support file locking ({text}); set "
                          "HDF5_USE_FILE_LOCKING=FALSE and make sure no other process writes the store")
    return ValueError(f"{path} is not a readable HDF5 feature store ({text}); point --store at a store written by "
                      "`python -m embed run`")


def _plain(value):
    """h5py attribute values as plain Python objects, for comparisons and JSON."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _short(value, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
