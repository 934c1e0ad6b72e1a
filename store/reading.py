"""The reading side of :class:`store.FeatureStore`: a backbone's features, views, probabilities, text, head, summary.

Every read of features checks them (finite, within :data:`store.integrity.MAX_ABS_FEATURE`): a bad ok row was
damaged after it was written, and reading it is one ``ValueError`` naming the store, the backbone and the fix.
"""
from __future__ import annotations

import functools
import json
from typing import Callable, Iterable

import h5py
import numpy as np

from store.integrity import reads, sane_rows
from store.layout import (ERROR, JSON_ATTRS, OK, PENDING, SPLITS, Rows, attr_value, display_id, group_name,
                          is_validation_id)
from store.validation import UserError


def read_rows(dataset: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` (increasing) of a dataset: one contiguous read, which beats h5py's per-row fancy indexing."""
    if index.size == dataset.shape[0]:
        return dataset[:]
    if index.size == 0:
        return np.empty((0,) + dataset.shape[1:], dtype=dataset.dtype)
    lo, hi = int(index[0]), int(index[-1]) + 1
    return dataset[lo:hi][index - lo]


def normalized(group: h5py.Group) -> bool:
    """Whether a backbone group's features were L2-normalised (imported from normalised shards): the backbone's
    classifier head does not apply to them, so the store offers no head and no probabilities for them."""
    return bool(json.loads(group.attrs.get("preprocessing", "{}")).get("l2_normalized", False))


class StoreReading:
    """Reading methods of :class:`store.FeatureStore` (which provides ``path``, ``_f``, the image-list arrays)."""

    @property
    @reads
    def backbones(self) -> list[str]:
        """Specs of every backbone with a group in this store."""
        return sorted(str(g.attrs["spec"]) for g in self._f["backbones"].values())

    def _group(self, spec: str) -> h5py.Group:
        name = group_name(spec)
        if name not in self._f["backbones"]:
            have = ", ".join(self.backbones) or "none"
            raise UserError(f"store {self.path} has no features for backbone {spec!r} (it has: {have}); run "
                             f"`python -m embed run --backbone {spec} --store {self.path}` first")
        return self._f["backbones"][name]

    @reads
    def provenance(self, spec: str) -> dict:
        """Every provenance attribute of a backbone group, JSON values decoded."""
        return {key: json.loads(value) if key in JSON_ATTRS else attr_value(value)
                for key, value in self._group(spec).attrs.items()}

    @reads
    def rows_done(self, spec: str) -> np.ndarray:
        """(N,) bool: rows already processed by this backbone (features written, or the file failed)."""
        return self._group(spec)["done"][:]

    @reads
    def load(self, spec: str, split: str | Iterable[str] | None = None, *, dtype=np.float32) -> Rows:
        """Features, labels and ids of the decoded rows of ``split`` (None: all splits) for one backbone.

        Failed images are excluded. Raises ``ValueError`` when some wanted rows have not been embedded yet, or when
        stored features were damaged (not finite, or absurdly large) after they were written.
        """
        g = self._group(spec)
        index = self.row_index(spec, split)
        X = read_rows(g["features"], index)  # (n, D)
        self._check_features(spec, X, index)
        return Rows(X=X.astype(dtype, copy=False), y=self.labels[index], ids=self.ids[index], index=index)

    def _check_features(self, spec: str, X: np.ndarray, index: np.ndarray) -> None:
        """ValueError naming the store, the backbone and the fix when rows ``index`` (features ``X``) are damaged."""
        if not X.size:
            return
        bad = ~sane_rows(X.reshape(len(X), -1))
        if bad.any():
            first = display_id(str(self.ids[index[np.argmax(bad)]]))
            raise UserError(f"store {self.path} is damaged: {int(bad.sum())} row(s) of backbone {spec!r} hold "
                             f"non-finite or absurdly large features (first: {first}); re-embed them: rerun "
                             f"`python -m embed run --backbone {spec} --store {self.path}` with the same data")

    @reads
    def features_block(self, spec: str, start: int, stop: int) -> np.ndarray:
        """(stop - start, D) float32 raw feature rows ``start:stop`` (all rows, failed ones included): for streaming
        exports; use :meth:`load` for the decoded rows of a split. Damaged done ok rows raise as in :meth:`load`."""
        g = self._group(spec)
        block = g["features"][start:stop].astype(np.float32)  # (stop - start, D)
        ok = np.flatnonzero((self.status[start:stop] == OK) & g["done"][start:stop])
        self._check_features(spec, block[ok], start + ok)
        return block

    @reads
    def row_chunks(self, spec: str, index: np.ndarray, chunk_rows: int = 65536) -> "RowChunks":
        """Rows ``index`` of a backbone's features, read on demand in chunks (for data larger than memory); reading
        a damaged row raises ``ValueError`` as :meth:`load` does."""
        dataset = self._group(spec)["features"]
        return RowChunks(dataset, np.asarray(index, dtype=np.int64), chunk_rows,
                         read=functools.partial(self._read_checked, spec, dataset))

    @reads
    def _read_checked(self, spec: str, dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
        block = read_rows(dataset, rows)
        self._check_features(spec, block, rows)
        return block

    @reads
    def row_index(self, spec: str, split: str | Iterable[str] | None = None) -> np.ndarray:
        """Store rows of the decoded images of ``split`` (None: all); ValueError when some are not embedded yet."""
        want = self.split_mask(split) & (self.status != ERROR)
        missing = want & ~self._group(spec)["done"][:]
        if missing.any():
            raise UserError(f"backbone {spec!r} in {self.path} is incomplete: {int(missing.sum())} rows not embedded "
                             "yet; rerun the same `python -m embed run` command to finish it")
        return np.flatnonzero(want)

    @reads
    def views(self, spec: str, index: np.ndarray) -> np.ndarray:
        """(n, V, D) float32 augmented-view features of rows ``index``; kinds in ``provenance(spec)['view_kinds']``."""
        g = self._group(spec)
        if "views" not in g:
            raise UserError(f"backbone {spec!r} in {self.path} has no augmented views; embed with --views K")
        index = np.asarray(index)
        views = read_rows(g["views"], index)  # (n, V, D)
        self._check_features(spec, views, index)
        return views.astype(np.float32)

    @reads
    def has_probs(self, spec: str) -> bool:
        """Whether a backbone group holds its classifier's probabilities (never for L2-normalised features)."""
        g = self._group(spec)
        return "probs" in g and not normalized(g)

    @reads
    def probs(self, spec: str, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(n, K) float32 classifier probabilities of rows ``index`` and the K class names."""
        g = self._group(spec)
        if not self.has_probs(spec):
            raise UserError(f"backbone {spec!r} in {self.path} kept no classifier probabilities (only ImageNet "
                             "classifiers with pretrained heads have them, embedded by `python -m embed run`)")
        return read_rows(g["probs"], np.asarray(index)).astype(np.float32), json.loads(g["probs"].attrs["classes"])

    @reads
    def text(self, spec: str) -> tuple[np.ndarray, list[str], float | None]:
        """CLIP text embeddings (C, T, D), their templates, and the logit scale; ValueError when absent."""
        g = self._group(spec)
        if not self.has_text(spec):
            if "text" in g and g["text"].shape[0] < len(self.classes):
                added = self.classes[g["text"].shape[0]:]
                raise UserError(f"backbone {spec!r} in {self.path} has no text embeddings of the classes added since "
                                 f"it was embedded ({', '.join(added)[:200]}); rerun `python -m embed run` with "
                                 f"--backbone {spec} and the same data to embed them")
            raise UserError(f"backbone {spec!r} in {self.path} has no text embeddings; zero-shot needs a CLIP "
                             "backbone (clip:<arch>/<tag>) embedded with `python -m embed run`")
        d = g["text"]
        scale = float(d.attrs["logit_scale"])
        return d[:], json.loads(d.attrs["templates"]), (None if np.isnan(scale) else scale)

    @reads
    def has_text(self, spec: str) -> bool:
        """Whether a backbone group holds CLIP text embeddings of every class (complete: an older release could leave
        them without their attributes, and classes added since leave them short; the runner then writes them again)."""
        g = self._group(spec)
        return ("text" in g and all(key in g["text"].attrs for key in ("templates", "logit_scale"))
                and g["text"].shape[0] == len(self.classes))

    @reads
    def head(self, spec: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """The backbone's own classifier ``(W (K, D), b (K,), class names)``, or None when it has none.

        None too for L2-normalised features (imported from normalised shards): the head maps the backbone's raw
        features to logits, and applied to unit vectors it gives near-uniform probabilities."""
        g = self._group(spec)
        if "head_weight" not in g or "head_bias" not in g or "classes" not in g["head_weight"].attrs:
            return None  # none, or part of one left by an older release (the runner writes it again)
        if normalized(g):
            return None
        return g["head_weight"][:], g["head_bias"][:], json.loads(g["head_weight"].attrs["classes"])

    @reads
    def info(self) -> dict:
        """The JSON summary of ``python -m store info`` (images, ok, errors, splits, classes, backbones, ...).

        Ids in ``failed`` and ``duplicates`` are shown with :func:`display_id` (valid UTF-8 whatever the names)."""
        status, splits = self.status, self.splits
        validation = (splits == "train") & np.array([is_validation_id(i) for i in self.ids], dtype=bool)
        # validation/ rows are train rows in the file; shown as their own split (train counts the others)
        split_masks = {s: (splits == s) & ~validation for s in SPLITS} | {"validation": validation}
        backbones = {}
        for g in self._f["backbones"].values():
            done = g["done"][:]
            backbones[str(g.attrs["spec"])] = {
                "dim": int(g.attrs["dim"]), "rows": int((done & (status == OK)).sum()),
                "complete": bool(done.all()), "dtype": str(g.attrs["dtype"]), "views": int(g.attrs["views"]),
                "text": "text" in g, "probs": "probs" in g and not normalized(g),
                "weights_sha256": str(g.attrs["weights_sha256"])}
        return {"path": str(self.path), "images": len(self), "ok": int((status == OK).sum()),
                "errors": int((status == ERROR).sum()), "pending": int((status == PENDING).sum()),
                "splits": {s: int(m.sum()) for s, m in split_masks.items()},
                "labeled": {s: int((m & (self.labels >= 0)).sum()) for s, m in split_masks.items()},
                "classes": self.classes, "display_names": self.display_names, "backbones": backbones,
                "fingerprint": self.fingerprint,
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
            raise UserError("row index must be strictly increasing")
        self._index, self._chunk = index, int(chunk_rows)
        self._read_block = read or functools.partial(read_rows, dataset)
        self.shape = (int(index.size), int(dataset.shape[1]))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Store rows ``rows`` (increasing), one contiguous read per ``chunk_rows`` span: memory stays bounded."""
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)  # (m, D)
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
