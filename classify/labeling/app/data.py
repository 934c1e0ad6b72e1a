"""The store of a labeling session, read once: the decoded rows of one backbone (features, ids, labels, splits, file
hashes) and what methods take from the store, kept in memory so that no request reads the whole store again.

The store file is opened only at the start (for appending: a store another process holds is refused then, in one
line) and closed again; answers are written to it by :func:`store.labels.apply_labels`, which opens it for each
answer, and mirrored here (:meth:`StoreData.set_label`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from classify import pipeline
from classify.labeling.suggest import _backbone
from classify.methods.features import UNLABELED
from store import FeatureStore
from store.layout import display_id, stays_inside
from store.validation import UserError, did_you_mean

log = logging.getLogger(__name__)

#: splits whose rows an answer may label: the pool (the row becomes a train row) and train rows (a fix)
ANSWERABLE = ("unlabeled", "train")


class UnknownImage(UserError):
    """An answer named an image the store does not have."""


class StoreData:
    """The decoded rows of one backbone of a store, in memory.

    Parameters
    ----------
    path : str or Path
        The feature store.
    backbone : str, optional
        The backbone spec (default: the store's only backbone).

    Attributes
    ----------
    X : ndarray of shape (n, D)
        Features of the decoded rows.
    ids, rows, splits, keys : ndarray of shape (n,)
        Id, store row, split and file sha256 of each decoded row.
    labels : ndarray of shape (n,)
        Class index of each row, -1 unlabeled (test labels included: :meth:`fit_labels` hides them).
    classes : list of str
    root : Path or None
        The data folder the ids are relative to.
    context : dict
        What methods take from the store (:func:`classify.pipeline.store_context`).
    spec : str
    failed : dict
        Id -> error of each image that could not be decoded.
    """

    def __init__(self, path: str | Path, backbone: str | None = None):
        self.path = Path(path)
        if self.path.is_file() and not os.access(self.path, os.W_OK):
            raise UserError(f"store {self.path} is read-only, and labeling writes every answer into it; make it "
                             "writable (chmod u+w) or label a copy")
        with FeatureStore(self.path, "a") as fs:  # for appending: a store held by another process is refused here
            self.spec = _backbone(fs, backbone)
            data = pipeline.load_data(fs, [self.spec])
            self.context = pipeline.store_context(fs, self.spec)
            self.classes = list(fs.classes)
            self.root = Path(fs.root) if fs.root else None
            self.keys = fs.sha256[data.index]  # (n,) hex, "" when unknown
            self.failed = dict(fs.errors())
        self.X, self.ids, self.rows = data.X, data.ids, data.index
        self.labels = np.asarray(data.y, dtype=np.int64).copy()
        self.splits = np.asarray(data.splits, dtype="<U9").copy()  # fixed width: fast comparisons, "train" fits
        self.position = {str(image_id): i for i, image_id in enumerate(self.ids.tolist())}
        self.row_position = {int(row): i for i, row in enumerate(self.rows.tolist())}
        log.info("labeling %s: %d decoded rows of %s, %d classes", self.path, len(self.ids), self.spec,
                 len(self.classes))

    # ------------------------------------------------------------------ rows and labels
    def fit_labels(self) -> np.ndarray:
        """(n,) the labels a fit sees: train labels (validation/ rows are train rows), -1 elsewhere (test labels are
        never fitted)."""
        return np.where(self.splits == "train", self.labels, UNLABELED)

    def pool(self) -> np.ndarray:
        """(n,) bool: rows still to label (the unlabeled split)."""
        return self.splits == "unlabeled"

    def find(self, image_id) -> int:
        """The position of an id an answer names; a one-line UserError for an id the store lacks, a failed image or
        a test / validation image (whose labels are what evaluation scores)."""
        if not isinstance(image_id, str) or not image_id:
            raise UserError(f"an answer needs the image id as text, got {image_id!r}")
        i = self.position.get(image_id)
        if i is None:
            if image_id in self.failed:
                raise UserError(f"image {display_id(image_id)} could not be decoded ({self.failed[image_id]}), so it "
                                 "cannot be labeled here")
            raise UnknownImage(f"unknown image id {display_id(image_id)!r}: store {self.path} has no such image")
        if self.splits[i] not in ANSWERABLE:
            raise UserError(f"image {display_id(image_id)} is a {self.splits[i]} image: its label is what evaluation "
                             "scores, so it is not labeled here (use `python -m store label` to change it)")
        return i

    def class_index(self, name, new_class: bool = False) -> tuple[int, bool]:
        """``(index, added)`` of a class an answer names; ``new_class`` allows a name the store lacks (it is added).
        A one-line UserError for an unknown name without ``new_class``, or an empty one."""
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"an answer needs a class name, got {name!r}")
        if name in self.classes:
            return self.classes.index(name), False
        if not new_class:
            raise UserError(f"unknown class {name!r}: {did_you_mean(name, self.classes)}to add it as a class, answer "
                             "with \"new class\"")
        if name != name.strip() or any(ch in name for ch in "\n\r\t"):
            raise UserError(f"a new class name must not start or end with spaces or hold line breaks: {name!r}")
        return len(self.classes), True

    def set_label(self, i: int, name: str) -> None:
        """Mirror an answer the store took: row ``i`` gets class ``name`` (a pool row becomes a train row; a new
        name becomes the last class, as :func:`store.labels.apply_labels` adds it)."""
        if name not in self.classes:
            self.classes.append(name)
            self.context["class_names"] = list(self.classes)
        self.labels[i] = self.classes.index(name)
        if self.splits[i] == "unlabeled":
            self.splits[i] = "train"

    def counts(self) -> np.ndarray:
        """(C,) train labels per class."""
        y = self.fit_labels()
        return np.bincount(y[y >= 0], minlength=len(self.classes))

    # ------------------------------------------------------------------ image files
    def image_file(self, i: int) -> Path:
        """The file of row ``i``, inside the data folder: an id that would leave it (``..``, an absolute path, a link
        out) is refused, since a store may come from someone else."""
        image_id = str(self.ids[i])
        if self.root is None or not stays_inside(image_id):
            raise UserError(f"image {display_id(image_id)} has no file inside the store's data folder")
        root = self.root.resolve()
        path = (root / image_id).resolve()
        if not path.is_relative_to(root):
            raise UserError(f"image {display_id(image_id)} links outside the data folder {root}; not shown")
        return path
