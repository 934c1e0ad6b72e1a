"""The writing side of :class:`store.FeatureStore`: backbone groups, rows batch by batch, text, heads, invalidation.

Crash safety (see :mod:`store.h5store`): rows only overwrite preallocated bytes, data is flushed before the ``done``
flags that mark it, and objects written whole are built under ``/partial`` and moved into place by one link.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

import h5py
import numpy as np

from store.integrity import sane_rows, writes
from store.layout import (ERROR_BYTES, IDENTITY_ATTRS, OK, STAGING, attr_value, clip_message, create_rows_dataset,
                          display_id, group_name, selector, short)
from store.reading import RowChunks
from store.validation import UserError

log = logging.getLogger(__name__)


class StoreWriting:
    """Writing methods of :class:`store.FeatureStore` (which provides ``path``, ``_f``, ``_group``, the image list)."""

    def _staging(self, kind: str, name: str) -> h5py.Group:
        """A fresh, empty group where an object is built before it is moved into place (debris of a failed attempt
        at the same object is dropped first)."""
        path = f"{STAGING}/{kind}/{name}"
        if path in self._f:
            del self._f[path]
        return self._f.require_group(f"{STAGING}/{kind}").create_group(name)

    @writes
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
            self._check_same_origin(backbones[name], attrs)
            return self._redo_damaged_rows(spec, backbones[name])
        n, views = len(self), int(provenance.get("views", 0))
        g = self._staging("backbone", name)
        g.attrs.update(attrs)
        dtype = np.dtype(provenance["dtype"])
        create_rows_dataset(g, "features", (n, dim), dtype, fill=False)
        if views:
            create_rows_dataset(g, "views", (n, views, dim), dtype, fill=False)
        if prob_classes is not None:
            probs = create_rows_dataset(g, "probs", (n, len(prob_classes)), np.float16, fill=False)
            probs.attrs["classes"] = json.dumps(list(prob_classes))
        create_rows_dataset(g, "done", (n,), bool, fill=True)
        self._f.flush()
        self._f.move(g.name, f"backbones/{name}")  # one link: the group appears complete or not at all
        self._f.flush()
        return np.zeros(n, dtype=bool)

    def _check_same_origin(self, g: h5py.Group, attrs: dict) -> None:
        """Refuse to write features of another origin into an existing group; warn about other library versions."""
        spec = attrs["spec"]
        for key in IDENTITY_ATTRS + ("dim",):
            old, new = attr_value(g.attrs.get(key)), attr_value(attrs.get(key))
            if old != new:
                raise UserError(f"store {self.path} already holds features of {spec!r} with a different {key} "
                                 f"({_difference(old, new)}); refusing to mix origins -- write to a new "
                                 "--store, or use a different backbone spec")
        if attr_value(g.attrs["versions"]) != attrs["versions"]:
            log.warning("library versions differ from the run that started %s: %s (was %s)", spec,
                        attrs["versions"], g.attrs["versions"])

    def _redo_damaged_rows(self, spec: str, g: h5py.Group) -> np.ndarray:
        """The done mask, with done ok rows whose features are damaged (not finite, absurdly large) marked not done."""
        done = g["done"][:]
        index = np.flatnonzero(done & (self.status == OK))
        bad = []
        for start, X in RowChunks(g["features"], index, 65536).chunks():
            bad.append(index[start:start + len(X)][~sane_rows(X)])
        bad = np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)
        if bad.size:
            log.warning("%s: %d row(s) of %s hold damaged features (e.g. %s); embedding them again", self.path,
                        bad.size, spec, display_id(str(self.ids[bad[0]])))
            g["done"][selector(bad)] = False
            self._f.flush()
            done[bad] = False
        return done

    @writes
    def set_text(self, spec: str, embeddings: np.ndarray, templates: Sequence[str], logit_scale: float | None) -> None:
        """Store (or replace) a CLIP backbone's text embeddings, (C, T, D), one row per class and template.

        Written whole under ``/partial`` and moved into place: a reader sees the old embeddings, none, or the new."""
        c, t, _ = embeddings.shape
        if c != len(self.classes) or t != len(templates):
            raise UserError(f"text embeddings of shape {embeddings.shape} do not match {len(self.classes)} classes "
                             f"x {len(templates)} templates")
        g = self._group(spec)
        stage = self._staging("text", g.name.rsplit("/", 1)[-1])
        d = stage.create_dataset("text", data=np.asarray(embeddings, dtype=np.float32))  # (C, T, D)
        d.attrs["templates"] = json.dumps(list(templates))
        d.attrs["logit_scale"] = float(logit_scale) if logit_scale is not None else float("nan")
        self._f.flush()
        if "text" in g:
            del g["text"]
        self._f.move(d.name, f"{g.name}/text")
        del self._f[stage.name]
        self._f.flush()

    @writes
    def set_head(self, spec: str, weight: np.ndarray, bias: np.ndarray, classes: Sequence[str]) -> None:
        """Store a backbone's linear classifier (K, D) + (K,) over ``classes``: logits = features @ W.T + b.

        Written whole under ``/partial`` and moved into place, ``head_weight`` last: :meth:`head` reads a head only
        when both parts are there, so a failure part-way leaves no head and the rerun writes it again."""
        g = self._group(spec)
        stage = self._staging("head", g.name.rsplit("/", 1)[-1])
        stage.create_dataset("head_weight", data=np.asarray(weight, dtype=np.float32)).attrs["classes"] = json.dumps(
            list(classes))  # (K, D)
        stage.create_dataset("head_bias", data=np.asarray(bias, dtype=np.float32))  # (K,)
        self._f.flush()
        for part in ("head_weight", "head_bias"):
            if part in g:
                del g[part]
        for part in ("head_bias", "head_weight"):
            self._f.move(f"{stage.name}/{part}", f"{g.name}/{part}")
        del self._f[stage.name]
        self._f.flush()

    def _checked_features(self, spec: str, dtype: np.dtype, rows: np.ndarray, status: np.ndarray,
                          features: np.ndarray, views: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``features`` (n_ok, D) and ``views`` (n_ok, V, D) in the storage dtype; ValueError when any is not sane."""
        with np.errstate(over="ignore"):  # a value float16 cannot hold becomes inf, refused just below
            features = np.asarray(features, dtype=dtype)  # (n_ok, D)
            views = None if views is None else np.asarray(views, dtype=dtype)  # (n_ok, V, D)
        sane = sane_rows(features)
        if views is not None:
            sane &= sane_rows(views.reshape(len(views), -1))
        if not sane.all():
            first = display_id(str(self.ids[rows[status == OK][np.argmin(sane)]]))
            hint = ", or embed with --dtype float32 (float16 overflows above 65504)" if dtype == np.float16 else ""
            raise UserError(f"backbone {spec!r} gave non-finite or out-of-range features (in {dtype}) for "
                             f"{int((~sane).sum())} image(s) of a batch, e.g. {first}; nothing of the batch was "
                             f"written; check the backbone's weights{hint}")
        return features, views

    @writes
    def write_rows(self, spec: str, rows: np.ndarray, status: np.ndarray, sha256: Sequence[str | None],
                   errors: Sequence[str | None], features: np.ndarray | None = None, views: np.ndarray | None = None,
                   probs: np.ndarray | None = None) -> None:
        """Write one batch: per-image status for ``rows`` and the features of its ok rows, then mark them done.

        Features (and views) must be finite and within :data:`store.integrity.MAX_ABS_FEATURE` in the storage dtype
        (float16 overflows above 65504): a batch that is not is refused whole (ValueError) before anything of it is
        written, so every ok row on disk is sane and a bad value read later means the file was damaged.

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
        status = np.asarray(status, dtype=np.uint8)
        if features is not None:
            features, views = self._checked_features(spec, g["features"].dtype, rows, status, features, views)
        sel = selector(rows)
        img = self._f["images"]
        img["status"][sel] = status
        img["sha256"][sel] = np.array([(s or "").encode() for s in sha256], dtype="S64")
        img["error"][sel] = np.array([clip_message(e or "") for e in errors], dtype=f"S{ERROR_BYTES}")
        ok_rows = rows[status == OK]
        if ok_rows.size:
            ok_sel = selector(ok_rows)
            if features is not None:
                g["features"][ok_sel] = features
            if views is not None:
                g["views"][ok_sel] = views
            if probs is not None:
                g["probs"][ok_sel] = np.asarray(probs, dtype=np.float16)
        self._f.flush()  # data first ...
        g["done"][sel] = True
        self._f.flush()  # ... then the resume marker

    @writes
    def invalidate_rows(self, rows: np.ndarray) -> None:
        """Forget rows (their files changed): not done for any backbone, status pending, digest and error cleared.

        The ``done`` flags go first, so a failure part-way leaves rows that the next run embeds again."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if not rows.size:
            return
        sel = selector(rows)
        for g in self._f["backbones"].values():
            g["done"][sel] = False
        self._f.flush()
        img = self._f["images"]
        img["status"][sel] = np.zeros(rows.size, dtype=np.uint8)
        img["sha256"][sel] = np.zeros(rows.size, dtype="S64")
        img["error"][sel] = np.zeros(rows.size, dtype=f"S{ERROR_BYTES}")
        self._f.flush()


def _difference(old, new) -> str:
    """What differs between two settings, for a message: for JSON objects (preprocessing) only the keys that differ,
    each as ``key old -> new``; else the two values, cut short."""
    try:
        before, after = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        before = after = None
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return f"{short(old)} != {short(new)}"
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return "; ".join(f"{k} {short(before.get(k), 40)} -> {short(after.get(k), 40)}" for k in keys)

