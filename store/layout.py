r"""What a feature store file holds and how its names and ids are encoded (see :mod:`store.h5store` for the layout).

File names: ids are the file names' bytes. A name that is valid UTF-8 (every name on macOS and Windows, nearly every
one on Linux) is stored as such; a name that is not (a Linux byte string such as ``b"bad\xff.png"``, which Python
holds as ``"bad\udcff.png"``, the ``surrogateescape`` convention of :func:`os.fsdecode`) is stored as its raw bytes,
so the variable-length UTF-8 dataset may then hold bytes that are not UTF-8. The store reads ids back with
``surrogateescape``, so every id round-trips exactly; :func:`display_id` shows such bytes as ``\xNN`` (``store
info``, error messages). Stores written before this convention hold plain UTF-8 and read unchanged.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Sequence
from urllib.parse import quote

import h5py
import numpy as np

FORMAT = "fewshot-feature-store"
FORMAT_VERSION = 2  # 2: labels, splits and classes may change after creation, with a history (store.labellog)
SPLITS = ("train", "unlabeled", "test")
#: Top folders of labeled images set apart for model selection: their rows are train rows whose id starts with one of
#: them (``validation/cat/x.png``). ``classify evaluate`` scores them held out of the fit when there is no labeled test
#: split; ``store info`` counts them as their own split.
VALIDATION_FOLDERS = ("validation", "val")
PENDING, OK, ERROR = 0, 1, 2
ERROR_BYTES = 256
# Provenance attributes that must match for two runs to write into the same backbone group.
IDENTITY_ATTRS = ("spec", "weights_sha256", "preprocessing", "dtype", "views", "view_kinds")
# Provenance attributes stored as JSON text.
JSON_ATTRS = ("preprocessing", "versions", "view_kinds")
# Where objects written whole are built before one link operation moves them into place.
STAGING = "partial"


@dataclass(frozen=True)
class Rows:
    """Rows of one split read from a store: features, labels, ids and their row indices in the store."""

    X: np.ndarray  # (n, D) float32
    y: np.ndarray  # (n,) int, -1 unknown
    ids: np.ndarray  # (n,) str
    index: np.ndarray  # (n,) int row indices in the store


def display_id(name: str) -> str:
    """An id (or any text holding file names) as readable text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def id_bytes(name: str) -> bytes:
    """The bytes an id is stored as: UTF-8, and the original bytes of a name that was not UTF-8."""
    return name.encode("utf-8", "surrogateescape")


def stays_inside(image_id: str) -> bool:
    """Whether an id names a file inside its data folder: a relative path without ``..`` parts, in POSIX or Windows
    spelling (a received list may come from either)."""
    if not image_id or "\0" in image_id:
        return False
    posix, windows = PurePosixPath(image_id), PureWindowsPath(image_id)
    return not posix.is_absolute() and not windows.anchor and ".." not in posix.parts + windows.parts


def rows_sha256(ids: Sequence[str]) -> str:
    """Fingerprint of what a store's rows are: the image ids, in order (features belong to rows; labels do not)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(id_bytes(f"{i}\0"))
    return h.hexdigest()


def image_list_sha256(ids: Sequence[str], splits: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> str:
    """Fingerprint of an image list with its label state: the ids, their splits and labels, and the class names (a
    store of format version 1 was named by it; now the provenance of the labels a result was computed with)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(classes)).encode())
    for i, s, y in zip(ids, splits, labels):
        h.update(id_bytes(f"{i}\0{s}\0{int(y)}\n"))  # the same digest as plain UTF-8 for every UTF-8 name
    return h.hexdigest()


def group_name(spec: str) -> str:
    """HDF5-safe group name of a backbone spec (specs contain ``/``); the real spec lives in the ``spec`` attr."""
    return quote(spec, safe="")


def create_rows_dataset(group: h5py.Group, name: str, shape: tuple, dtype, fill: bool) -> h5py.Dataset:
    """A contiguous dataset whose file space is allocated now, so later row writes change no metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # Fill small bookkeeping datasets with zeros now; leave big feature blocks sparse (never read before written).
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC if fill else h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def selector(rows: np.ndarray):
    """A slice when rows are contiguous (fast path in h5py), else the index array."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def clip_message(message: str) -> bytes:
    """One line of at most ERROR_BYTES UTF-8 bytes; file names in it that are not UTF-8 shown as ``\\xNN``."""
    data = display_id(" ".join(message.split())).encode("utf-8")
    return data[:ERROR_BYTES].decode("utf-8", "ignore").encode("utf-8")


def attr_value(value):
    """h5py attribute values as plain Python objects, for comparisons and JSON."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def short(value, limit: int = 60) -> str:
    """``str(value)``, cut to ``limit`` characters."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_validation_id(image_id: str) -> bool:
    """Whether an image id comes from a ``validation/`` or ``val/`` folder (see :data:`VALIDATION_FOLDERS`)."""
    return str(image_id).split("/", 1)[0] in VALIDATION_FOLDERS
