"""The HDF5 feature store: one file per image list, one group per backbone, provenance on every group.

Layout (``FORMAT_VERSION`` 1)::

    /                      attrs: format, format_version, image_list_sha256, classes (JSON), root, created
    /images/id             (N,)  utf-8 path relative to the data root
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

Crash safety: every per-row dataset is contiguous with its storage allocated when it is created, so the row loop
only ever overwrites raw bytes -- no chunk index, heap or other metadata changes while embedding. Rows are
written, the file flushed, and only then their ``done`` flags set and flushed again: a process killed at any
moment leaves a readable file whose ``done`` rows are complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
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


def image_list_sha256(ids: Sequence[str], splits: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> str:
    """Fingerprint of what a store is about: the image ids, their splits and labels, and the class names."""
    h = hashlib.sha256()
    h.update(json.dumps(list(classes)).encode())
    for i, s, y in zip(ids, splits, labels):
        h.update(f"{i}\0{s}\0{int(y)}\n".encode())
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
            raise ValueError(f"{self.path} is not a readable HDF5 feature store ({err}); point --store at a store "
                             "written by `python -m embed run`") from None
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise ValueError(f"{self.path} is an HDF5 file but not a feature store; point --store at a store written "
                             "by `python -m embed run`")
        self._cache: dict[str, np.ndarray] = {}

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
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, classes=json.dumps(list(classes)),
                           image_list_sha256=image_list_sha256(ids, splits, labels, classes),
                           root=str(root or ""), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            g = f.create_group("images")
            g.create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("split", data=np.array([SPLITS.index(s) for s in splits], dtype=np.uint8).reshape(n))
            g.create_dataset("label", data=labels.reshape(n))
            _create_rows_dataset(g, "sha256", (n,), "S64", fill=True)
            _create_rows_dataset(g, "status", (n,), np.uint8, fill=True)
            _create_rows_dataset(g, "error", (n,), f"S{ERROR_BYTES}", fill=True)
            f.create_group("backbones")
        tmp.replace(path)
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
    def fingerprint(self) -> str:
        """sha256 of the image list (ids, splits, labels, classes) the store was built for."""
        return str(self._f.attrs["image_list_sha256"])

    @property
    def classes(self) -> list[str]:
        """Class names, in class-index order."""
        return json.loads(self._f.attrs["classes"])

    @property
    def root(self) -> str:
        """The data folder the ids are relative to (informational)."""
        return str(self._f.attrs["root"])

    def __len__(self) -> int:
        return int(self._f["images/id"].shape[0])

    def _images(self, name: str) -> np.ndarray:
        if name not in self._cache:  # ids, splits and labels never change after creation
            data = self._f[f"images/{name}"][:]
            if name == "id":
                data = data.astype(str)  # h5py returns bytes for variable-length strings
            self._cache[name] = data
        return self._cache[name]

    @property
    def ids(self) -> np.ndarray:
        """(N,) image ids, paths relative to the data root."""
        return self._images("id")

    @property
    def splits(self) -> np.ndarray:
        """(N,) split name of every image."""
        return np.asarray(SPLITS)[self._images("split")]

    @property
    def labels(self) -> np.ndarray:
        """(N,) class index of every image, -1 unknown."""
        return self._images("label").astype(np.int64)

    @property
    def status(self) -> np.ndarray:
        """(N,) 0 pending (never read), 1 decoded, 2 failed."""
        return self._f["images/status"][:]

    @property
    def sha256(self) -> np.ndarray:
        """(N,) hex sha256 of every file read so far ("" for files never read)."""
        return self._f["images/sha256"][:].astype(str)

    def errors(self) -> list[tuple[str, str]]:
        """(id, message) of every file that failed to decode."""
        bad = np.flatnonzero(self.status == ERROR)
        messages = self._f["images/error"][:]
        return [(str(self.ids[i]), messages[i].decode("utf-8", "replace")) for i in bad]

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

    def provenance(self, spec: str) -> dict:
        """Every provenance attribute of a backbone group, JSON values decoded."""
        out = {}
        for key, value in self._group(spec).attrs.items():
            out[key] = json.loads(value) if key in ("preprocessing", "versions", "view_kinds") else _plain(value)
        return out

    def rows_done(self, spec: str) -> np.ndarray:
        """(N,) bool: rows already processed by this backbone (features written, or the file failed)."""
        return self._group(spec)["done"][:]

    def begin_backbone(self, provenance: dict, dim: int, prob_classes: Sequence[str] | None = None) -> np.ndarray:
        """Create the group for a backbone, or check that an existing one has the same origin.

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
        if name in self._f["backbones"]:
            g = self._f["backbones"][name]
            for key in IDENTITY_ATTRS + ("dim",):
                old, new = _plain(g.attrs.get(key)), _plain(attrs.get(key))
                if old != new:
                    raise ValueError(f"store {self.path} already holds features of {spec!r} with a different {key} "
                                     f"({_short(old)} != {_short(new)}); refusing to mix origins -- write to a new "
                                     "--store, or use a different backbone spec")
            if _plain(g.attrs["versions"]) != attrs["versions"]:
                log.warning("library versions differ from the run that started %s: %s (was %s)", spec,
                            attrs["versions"], g.attrs["versions"])
            return g["done"][:]
        n, views = len(self), int(provenance.get("views", 0))
        g = self._f["backbones"].create_group(name)
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
        return np.zeros(n, dtype=bool)

    def set_text(self, spec: str, embeddings: np.ndarray, templates: Sequence[str], logit_scale: float | None) -> None:
        """Store (or replace) a CLIP backbone's text embeddings, (C, T, D), one row per class and template."""
        c, t, _ = embeddings.shape
        if c != len(self.classes) or t != len(templates):
            raise ValueError(f"text embeddings of shape {embeddings.shape} do not match {len(self.classes)} classes "
                             f"x {len(templates)} templates")
        g = self._group(spec)
        if "text" in g:
            del g["text"]
        d = g.create_dataset("text", data=np.asarray(embeddings, dtype=np.float32))
        d.attrs["templates"] = json.dumps(list(templates))
        d.attrs["logit_scale"] = float(logit_scale) if logit_scale is not None else float("nan")
        self._f.flush()

    def set_head(self, spec: str, weight: np.ndarray, bias: np.ndarray, classes: Sequence[str]) -> None:
        """Store a backbone's linear classifier (K, D) + (K,) over ``classes``: logits = features @ W.T + b."""
        g = self._group(spec)
        for name in ("head_weight", "head_bias"):
            if name in g:
                del g[name]
        g.create_dataset("head_weight", data=np.asarray(weight, dtype=np.float32)).attrs["classes"] = json.dumps(
            list(classes))
        g.create_dataset("head_bias", data=np.asarray(bias, dtype=np.float32))
        self._f.flush()

    def head(self, spec: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """The backbone's own classifier ``(W (K, D), b (K,), class names)``, or None when it has none."""
        g = self._group(spec)
        if "head_weight" not in g:
            return None
        return g["head_weight"][:], g["head_bias"][:], json.loads(g["head_weight"].attrs["classes"])

    def write_rows(self, spec: str, rows: np.ndarray, status: np.ndarray, sha256: Sequence[str | None],
                   errors: Sequence[str | None], features: np.ndarray | None = None, views: np.ndarray | None = None,
                   probs: np.ndarray | None = None) -> None:
        """Write one batch: per-image status for ``rows`` and the features of its ok rows, then mark them done.

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
        sel = _selector(rows)
        img = self._f["images"]
        img["status"][sel] = np.asarray(status, dtype=np.uint8)
        img["sha256"][sel] = np.array([(s or "").encode() for s in sha256], dtype="S64")
        img["error"][sel] = np.array([_clip_message(e or "") for e in errors], dtype=f"S{ERROR_BYTES}")
        ok_rows = rows[np.asarray(status) == OK]
        if ok_rows.size:
            ok_sel = _selector(ok_rows)
            dtype = g["features"].dtype
            if features is not None:
                g["features"][ok_sel] = np.asarray(features, dtype=dtype)
            if views is not None:
                g["views"][ok_sel] = np.asarray(views, dtype=dtype)
            if probs is not None:
                g["probs"][ok_sel] = np.asarray(probs, dtype=np.float16)
        self._f.flush()  # data first ...
        g["done"][sel] = True
        self._f.flush()  # ... then the resume marker

    # ------------------------------------------------------------------ reading
    def load(self, spec: str, split: str | Iterable[str] | None = None, *, dtype=np.float32) -> Rows:
        """Features, labels and ids of the decoded rows of ``split`` (None: all splits) for one backbone.

        Failed images are excluded. Raises ``ValueError`` when some wanted rows have not been embedded yet.
        """
        g = self._group(spec)
        index = self.row_index(spec, split)
        return Rows(X=self._read_rows(g["features"], index).astype(dtype, copy=False), y=self.labels[index],
                    ids=self.ids[index], index=index)

    def features_block(self, spec: str, start: int, stop: int) -> np.ndarray:
        """(stop - start, D) float32 raw feature rows ``start:stop`` (all rows, failed ones included): for streaming
        exports; use :meth:`load` for the decoded rows of a split."""
        return self._group(spec)["features"][start:stop].astype(np.float32)

    def row_chunks(self, spec: str, index: np.ndarray, chunk_rows: int = 65536) -> "RowChunks":
        """Rows ``index`` of a backbone's features, read on demand in chunks (for data larger than memory)."""
        return RowChunks(self._group(spec)["features"], np.asarray(index, dtype=np.int64), chunk_rows)

    def row_index(self, spec: str, split: str | Iterable[str] | None = None) -> np.ndarray:
        """Store rows of the decoded images of ``split`` (None: all); ValueError when some are not embedded yet."""
        want = self.split_mask(split) & (self.status != ERROR)
        missing = want & ~self._group(spec)["done"][:]
        if missing.any():
            raise ValueError(f"backbone {spec!r} in {self.path} is incomplete: {int(missing.sum())} rows not embedded "
                             "yet; rerun the same `python -m embed run` command to finish it")
        return np.flatnonzero(want)

    def views(self, spec: str, index: np.ndarray) -> np.ndarray:
        """(n, V, D) float32 augmented-view features of rows ``index``; kinds in ``provenance(spec)['view_kinds']``."""
        g = self._group(spec)
        if "views" not in g:
            raise ValueError(f"backbone {spec!r} in {self.path} has no augmented views; embed with --views K")
        return self._read_rows(g["views"], index).astype(np.float32)

    def probs(self, spec: str, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(n, K) float32 classifier probabilities of rows ``index`` and the K class names."""
        g = self._group(spec)
        if "probs" not in g:
            raise ValueError(f"backbone {spec!r} in {self.path} kept no classifier probabilities (only ImageNet "
                             "classifiers with pretrained heads have them)")
        return self._read_rows(g["probs"], index).astype(np.float32), json.loads(g["probs"].attrs["classes"])

    def text(self, spec: str) -> tuple[np.ndarray, list[str], float | None]:
        """CLIP text embeddings (C, T, D), their templates, and the logit scale; ValueError when absent."""
        g = self._group(spec)
        if "text" not in g:
            raise ValueError(f"backbone {spec!r} in {self.path} has no text embeddings; zero-shot needs a CLIP "
                             "backbone (clip:<arch>/<tag>) embedded with `python -m embed run`")
        d = g["text"]
        scale = float(d.attrs["logit_scale"])
        return d[:], json.loads(d.attrs["templates"]), (None if np.isnan(scale) else scale)

    def has_text(self, spec: str) -> bool:
        """Whether a backbone group holds CLIP text embeddings."""
        return "text" in self._group(spec)

    @staticmethod
    def _read_rows(dataset: h5py.Dataset, index: np.ndarray) -> np.ndarray:
        if index.size == dataset.shape[0]:
            return dataset[:]
        if index.size == 0:
            return np.empty((0,) + dataset.shape[1:], dtype=dataset.dtype)
        lo, hi = int(index[0]), int(index[-1]) + 1
        return dataset[lo:hi][index - lo]  # one contiguous read beats h5py's per-row fancy indexing

    # ------------------------------------------------------------------ summary
    def info(self) -> dict:
        """The JSON summary of ``python -m store info`` (keys documented in DESIGN.md)."""
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
                "failed": [{"id": i, "error": e} for i, e in self.errors()],
                "duplicates": self.duplicates()}


class RowChunks:
    """Selected rows of a feature dataset, read lazily: ``sample(k)`` for some of them, ``chunks()`` for all.

    ``shape`` is (len(index), D); chunks are float32 and follow ``index`` order (which must be increasing).
    """

    def __init__(self, dataset: h5py.Dataset, index: np.ndarray, chunk_rows: int):
        if index.size and np.any(np.diff(index) <= 0):
            raise ValueError("row index must be strictly increasing")
        self._dataset, self._index, self._chunk = dataset, index, int(chunk_rows)
        self.shape = (int(index.size), int(dataset.shape[1]))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Store rows ``rows`` (increasing), one contiguous read per ``chunk_rows`` span: memory stays bounded."""
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)
        start = 0
        while start < rows.size:
            stop = int(np.searchsorted(rows, rows[start] + self._chunk))  # rows within one chunk-sized span
            out[start:stop] = FeatureStore._read_rows(self._dataset, rows[start:stop])
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
    data = " ".join(message.split()).encode("utf-8")
    return data[:ERROR_BYTES].decode("utf-8", "ignore").encode("utf-8")


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
