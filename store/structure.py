"""What a feature store file may hold, checked when it is opened and before any data is read.

A store can come from someone else, so its file is read as untrusted input: it must read only its own bytes and cost
memory in proportion to what it should hold.

- Its own bytes: HDF5 can keep a dataset's data in another file (external storage), link to objects of other files
  (external links), name objects by path (soft links) and assemble datasets from other files (virtual datasets); it
  also loads filter plugins (shared libraries) for unknown compression filters. The suite writes none of these, so
  every link must be a hard link and every dataset hold its data in the file, stored plainly or with a filter built
  into HDF5. The objects are found by walking the links without following any (:meth:`h5py.Group.visititems_links`).
- Memory in proportion: the suite writes every dataset uncompressed with its space allocated, so the bytes every
  dataset declares (shape x type size) add up to no more than the file's size, and a compressed dataset claiming
  gigabytes in a small file is refused. Shapes must then fit the store: every per-row dataset has exactly N rows
  (N = the length of ``/images/id``), features (N, D) with D the group's ``dim`` (at most :data:`MAX_DIM`), views
  (N, V, D), probabilities (N, K), text embeddings (C, T, D) with C the number of classes, strings as wide as the
  layout says. Attributes are scalars; those holding JSON are size-checked before they are parsed and must parse to
  what they should be (``classes`` a list of strings, ``preprocessing`` an object, ...). Ids are variable-length
  strings whose lengths are only known once read: :func:`check_id_lengths` reads their 16-byte descriptors instead,
  so that ids pointing many times at one long string are refused before they are read.

Every refusal is one :class:`~store.validation.UserError` naming the store, the object and why.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import h5py
import numpy as np

from store.labellog import GROUP, LOG_DTYPE, generation_name
from store.layout import ERROR_BYTES, FORMAT
from store.validation import UserError

#: Most images a store may list (row numbers fit an int32).
MAX_IMAGES = 2**31 - 1
#: Widest feature vector (the largest backbones give a few thousand).
MAX_DIM = 65536
#: Most augmented views per image.
MAX_VIEWS = 64
#: Most classes of a store, of a backbone's classifier (ImageNet-21k has 21843) or of its text embeddings.
MAX_CLASSES = 65536
#: Most prompt templates of text embeddings (CLIP's ImageNet set has 80).
MAX_TEMPLATES = 4096
#: Largest attribute, and largest JSON text parsed (class names, templates, library versions).
MAX_ATTR_BYTES = 16 << 20
#: Longest id in bytes (Linux's PATH_MAX).
MAX_ID_BYTES = 4096
#: HDF5 filters built into the library (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and h5py's lzf.
BUILTIN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}
#: The per-row datasets of /images: (numpy kind, item size), None for a variable-length string.
IMAGE_DATASETS = {"id": None, "split": ("u", 1), "label": ("i", 4), "sha256": ("S", 64), "status": ("u", 1),
                  "error": ("S", ERROR_BYTES)}
FIX = "rebuild it with `python -m embed run`, or ask its sender for a store written by the suite"
OWN_BYTES = "and a store may read only its own bytes"


def refuse(path: Path, what: str) -> UserError:
    """The error of a store that may not be read: ``what`` names the object and why."""
    return UserError(f"store {path} refused: {what}; {FIX}")


def check_structure(f: h5py.File, path: Path) -> None:
    """Raise :class:`UserError` unless the open store file ``f`` reads only its own bytes and declares shapes that a
    store of its size holds (see the module's description). Reads links, attributes and dataset headers only."""
    size = path.stat().st_size
    datasets, attr_bytes = _walk(f, path)
    classes = json_attr(f, "classes", path, list_of_str, "a JSON list of class names")
    if len(classes) > MAX_CLASSES:
        raise refuse(path, f"it lists {len(classes)} classes, more than {MAX_CLASSES}")
    if "display_names" in f.attrs:
        json_attr(f, "display_names", path, lambda v: list_of_str(v) and len(v) <= MAX_CLASSES,
                  f"a JSON list of at most {MAX_CLASSES} class names")
    text_attr(f, "rows_sha256" if "rows_sha256" in f.attrs else "image_list_sha256", path)
    text_attr(f, "root", path)
    n = _check_images(f, path)
    if GROUP in f:
        classes = _check_labels(f, path, n)
    backbones = _group(f, "backbones", path)
    for name in backbones:
        g = _group(backbones, name, path)
        if "done" in g:  # a group without it was left by an interrupted run of an older release: rebuilt, not read
            _check_backbone(g, path, n, len(classes))
    declared = sum(map(_declared_bytes, datasets.values())) + attr_bytes
    if declared > size:
        biggest = max(datasets, key=lambda name: _declared_bytes(datasets[name]))
        raise refuse(path, f"its datasets declare {declared} bytes (/{biggest} alone "
                           f"{_declared_bytes(datasets[biggest])}) in a file of {size} bytes, which the suite's "
                           "uncompressed rows never exceed")
    if GROUP in f:
        _check_label_state(f, path)


def _walk(f: h5py.File, path: Path) -> tuple[dict[str, h5py.Dataset], int]:
    """Every dataset of the file by name and the bytes all attributes declare, after checking that every link is a
    hard link (none is followed), that every dataset keeps its data in the file and every attribute is a scalar of at
    most MAX_ATTR_BYTES."""
    links: list[tuple[str, object]] = []
    f.visititems_links(lambda name, link: links.append((name, link)))
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise refuse(path, f"/{name} is an external link to {link.filename}:{link.path}, {OWN_BYTES}")
        if isinstance(link, h5py.SoftLink):
            raise refuse(path, f"/{name} is a soft link to {link.path} (it can lead to another file; the "
                               "suite writes none)")
        if not isinstance(link, h5py.HardLink):
            raise refuse(path, f"/{name} is a user-defined link (it can lead to another file; the suite writes "
                               "none)")
    datasets, attr_bytes = {}, 0
    for name, obj in [("", f)] + [(name, f[name]) for name, _ in links]:  # every path component is a hard link
        attr_bytes += _check_attrs(obj, path)
        if isinstance(obj, h5py.Dataset):
            _check_own_bytes(obj, path)
            datasets[name] = obj
    return datasets, attr_bytes


def _check_own_bytes(d: h5py.Dataset, path: Path) -> None:
    """Refuse a dataset whose data lies in other files, or which needs a filter plugin (a shared library) to read."""
    if d.is_virtual:
        sources = sorted({m.file_name for m in d.virtual_sources()})
        raise refuse(path, f"{d.name} is a virtual dataset mapping {', '.join(sources)[:200]}, {OWN_BYTES}")
    if d.external:
        raise refuse(path, f"{d.name} keeps its data in another file ({d.external[0][0]!r}, HDF5 external "
                           f"storage), {OWN_BYTES}")
    dcpl = d.id.get_create_plist()
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in BUILTIN_FILTERS:
            raise refuse(path, f"{d.name} needs HDF5 filter {code}, a plugin library the suite never uses")


def _check_attrs(obj, path: Path) -> int:
    """The bytes ``obj``'s attributes declare, once each is known to be a scalar (the suite writes no other) of at
    most MAX_ATTR_BYTES: reading one then costs little."""
    total = 0
    for key in obj.attrs:
        attr = obj.attrs.get_id(key)
        size = attr.get_type().get_size()
        if attr.shape != () or size > MAX_ATTR_BYTES:
            raise refuse(path, f"attribute {key!r} of {obj.name} is an array or larger than {MAX_ATTR_BYTES} bytes")
        total += size
    return total


def _declared_bytes(d: h5py.Dataset) -> int:
    """Bytes a dataset declares in the file: its element count times its file type's size."""
    return math.prod(d.shape) * d.id.get_type().get_size()



def _group(parent: h5py.Group, name: str, path: Path) -> h5py.Group:
    obj = parent.get(name)
    if not isinstance(obj, h5py.Group):
        raise refuse(path, f"{parent.name.rstrip('/')}/{name} is {'missing' if obj is None else 'not a group'}")
    return obj


def _dataset(parent: h5py.Group, name: str, path: Path) -> h5py.Dataset:
    obj = parent.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise refuse(path, f"{parent.name}/{name} is {'missing' if obj is None else 'not a dataset'}")
    return obj


def _check_images(f: h5py.File, path: Path) -> int:
    """The number of images N, after checking every per-row dataset of /images: N rows, the layout's type."""
    images = _group(f, "images", path)
    ids = _dataset(images, "id", path)
    if len(ids.shape) != 1 or ids.shape[0] > MAX_IMAGES:
        raise refuse(path, f"{ids.name} has shape {ids.shape}, not (N,) with N at most {MAX_IMAGES}")
    n = ids.shape[0]
    for name, kind in IMAGE_DATASETS.items():
        d = _dataset(images, name, path)
        if d.shape != (n,):
            raise refuse(path, f"{d.name} has shape {d.shape}, not the {n} rows of /images/id")
        info = h5py.check_string_dtype(d.dtype)
        if kind is None:
            if info is None or info.length is not None:
                raise refuse(path, f"{d.name} holds {d.dtype}, not variable-length strings")
        elif (d.dtype.kind, d.dtype.itemsize) != kind:
            wanted = "S" + str(kind[1]) if kind[0] == "S" else np.dtype(f"{kind[0]}{kind[1]}").name
            raise refuse(path, f"{d.name} holds {d.dtype}, not {wanted}")
    return n


def _check_labels(f: h5py.File, path: Path, n: int) -> list[str]:
    """The current class names, after checking ``/labels`` (see :mod:`store.labellog`): a state of three int64 that
    names an existing generation and counts no more entries than its log holds, a log of the layout's entries, source
    labels of N rows. Reads only the state (24 bytes) and attributes."""
    labels = _group(f, GROUP, path)
    state = _dataset(labels, "state", path)
    if state.shape != (3,) or state.dtype != np.int64:
        raise refuse(path, f"{state.name} holds {state.dtype} of shape {state.shape}, not 3 int64")
    id_hash = _dataset(labels, "id_hash", path)
    if id_hash.shape != (n,) or id_hash.dtype != np.uint64:
        raise refuse(path, f"{id_hash.name} holds {id_hash.dtype} of shape {id_hash.shape}, not {n} uint64")
    classes = None
    for name in labels:  # every generation (the current one and debris of a stopped writer) has the same shape
        if name in ("state", "id_hash"):
            continue
        g = _group(labels, name, path)
        log = _dataset(g, "log", path)
        if log.dtype != LOG_DTYPE or len(log.shape) != 1:
            raise refuse(path, f"{log.name} is not a label history of the suite's layout")
        for key, dtype in (("source_label", np.int32), ("source_split", np.uint8)):
            d = _dataset(g, key, path)
            if d.shape != (n,) or d.dtype != dtype:
                raise refuse(path, f"{d.name} holds {d.dtype} of shape {d.shape}, not {n} {np.dtype(dtype).name}")
        names = json_attr(g, "classes", path, list_of_str, "a JSON list of class names")
        if len(names) > MAX_CLASSES:
            raise refuse(path, f"{g.name} lists {len(names)} classes, more than {MAX_CLASSES}")
        classes = names if classes is None or len(names) > len(classes) else classes
    if classes is None:
        raise refuse(path, f"{labels.name} holds no label history")
    return classes  # the longest list: text embeddings may cover no more classes


def _check_label_state(f: h5py.File, path: Path) -> None:
    """The 24 bytes of ``/labels/state``, read last (once every dataset is known to hold its own bytes and fit the
    file): the generation it names exists and it counts no more entries than that generation's log holds."""
    labels = f[GROUP]
    committed, applied, generation = (int(v) for v in labels["state"][:])
    name = generation_name(generation) if 0 <= generation < MAX_IMAGES else "?"
    if name not in labels:
        raise refuse(path, f"{labels.name}/state names generation {generation}, which it lacks")
    capacity = labels[name]["log"].shape[0]
    if not 0 <= applied <= committed <= capacity:
        raise refuse(path, f"{labels.name}/state counts {committed} entries ({applied} applied) of a history "
                           f"holding {capacity}")


def _check_float(d: h5py.Dataset, path: Path, shape: tuple, itemsize: int | None = None) -> None:
    """A float dataset of exactly ``shape`` (and ``itemsize`` bytes per value when given)."""
    if d.shape != shape:
        raise refuse(path, f"{d.name} has shape {d.shape}, expected {shape}")
    if d.dtype.kind != "f" or (itemsize is not None and d.dtype.itemsize != itemsize):
        raise refuse(path, f"{d.name} holds {d.dtype}, not float{8 * itemsize if itemsize else ''}")


def _check_backbone(g: h5py.Group, path: Path, n: int, n_classes: int) -> None:
    """A backbone group's attributes and the shapes of its datasets (see :mod:`store.h5store`)."""
    text_attr(g, "spec", path)
    text_attr(g, "weights_sha256", path)
    dim = int_attr(g, "dim", path, 1, MAX_DIM)
    views = int_attr(g, "views", path, 0, MAX_VIEWS)
    dtype = text_attr(g, "dtype", path)
    if dtype not in ("float32", "float16"):
        raise refuse(path, f"attribute 'dtype' of {g.name} is {dtype[:40]!r}, not float32 or float16")
    itemsize = np.dtype(dtype).itemsize
    json_attr(g, "preprocessing", path, lambda v: isinstance(v, dict), "a JSON object")
    json_attr(g, "versions", path, lambda v: isinstance(v, dict), "a JSON object")
    json_attr(g, "view_kinds", path, list_of_str, "a JSON list of strings")
    _check_float(_dataset(g, "features", path), path, (n, dim), itemsize)
    done = _dataset(g, "done", path)
    if done.shape != (n,) or done.dtype != np.bool_:
        raise refuse(path, f"{done.name} holds {done.dtype} of shape {done.shape}, not {n} booleans")
    if "views" in g:
        _check_float(_dataset(g, "views", path), path, (n, views, dim), itemsize)
    if "probs" in g:
        probs = _dataset(g, "probs", path)
        k = len(_classes_attr(probs, path))
        _check_float(probs, path, (n, k))
    if "head_weight" in g and "classes" in g["head_weight"].attrs:
        weight = _dataset(g, "head_weight", path)
        k = len(_classes_attr(weight, path))
        _check_float(weight, path, (k, dim))
        if "head_bias" in g:
            _check_float(_dataset(g, "head_bias", path), path, (k,))
    if "text" in g:
        text = _dataset(g, "text", path)
        if "templates" in text.attrs:
            templates = json_attr(text, "templates", path, list_of_str, "a JSON list of strings")
            if not 0 < len(templates) <= MAX_TEMPLATES:
                raise refuse(path, f"{text.name} has {len(templates)} templates, not 1 to {MAX_TEMPLATES}")
            # classes added since the text was embedded (store label --add-classes) leave it short until a rerun
            _check_float(text, path, (min(text.shape[0], n_classes) if text.shape else n_classes, len(templates),
                                      dim))
        if "logit_scale" in text.attrs:
            scale = text.attrs["logit_scale"]
            if not isinstance(scale, numbers.Real) or isinstance(scale, (bool, np.bool_)):
                raise refuse(path, f"attribute 'logit_scale' of {text.name} is not a number")


def _classes_attr(d: h5py.Dataset, path: Path) -> list[str]:
    """The class names of a classifier's probabilities or head: a JSON list of at most MAX_CLASSES strings."""
    classes = json_attr(d, "classes", path, list_of_str, "a JSON list of class names")
    if not 0 < len(classes) <= MAX_CLASSES:
        raise refuse(path, f"{d.name} has {len(classes)} classes, not 1 to {MAX_CLASSES}")
    return classes


def list_of_str(value) -> bool:
    """Whether ``value`` is a list of strings."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def text_attr(obj, key: str, path: Path) -> str:
    """A text attribute (stored as a string or as bytes), at most MAX_ATTR_BYTES (checked by :func:`_check_attrs`)."""
    if key not in obj.attrs:
        raise refuse(path, f"{obj.name} lacks its attribute {key!r}")
    value = obj.attrs[key]
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise refuse(path, f"attribute {key!r} of {obj.name} is {type(value).__name__}, not text")
    if len(value) > MAX_ATTR_BYTES:
        raise refuse(path, f"attribute {key!r} of {obj.name} is longer than {MAX_ATTR_BYTES} characters")
    return value


def int_attr(obj, key: str, path: Path, low: int, high: int) -> int:
    """An integer attribute in ``[low, high]``."""
    value = obj.attrs.get(key)
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or not low <= value <= high:
        raise refuse(path, f"attribute {key!r} of {obj.name} is {str(value)[:40]!r}, not an integer in [{low}, "
                           f"{high}]")
    return int(value)


def json_attr(obj, key: str, path: Path, check, what: str):
    """A JSON attribute parsed, once its text is known to be at most MAX_ATTR_BYTES; ``check(value)`` must hold."""
    text = text_attr(obj, key, path)
    try:
        value = json.loads(text)
        valid = check(value)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's recursion limit
        valid = False
    if not valid:
        raise refuse(path, f"attribute {key!r} of {obj.name} is not {what} ({text[:40]!r})")
    return value


def check_format(f: h5py.File) -> bool:
    """Whether ``f`` says it is a feature store (its ``format`` attribute, read only when it is a small scalar)."""
    if "format" not in f.attrs:
        return False
    attr = f.attrs.get_id("format")
    if attr.shape != () or attr.get_type().get_size() > 256:
        return False
    value = f.attrs["format"]
    return (value.decode("utf-8", "replace") if isinstance(value, bytes) else value) == FORMAT


def check_id_lengths(ids: h5py.Dataset, path: Path) -> None:
    """Refuse ids longer than MAX_ID_BYTES, or longer together than the file (ids pointing many times at one string),
    from the 16-byte descriptors of the variable-length strings, read straight from the file (the suite writes
    ``/images/id`` contiguous); reading the ids themselves could cost far more than the file."""
    n = ids.shape[0]
    if n == 0:
        return
    addr_size = ids.file.id.get_create_plist().get_sizes()[0]
    item = 8 + addr_size  # length (4 bytes), heap collection address, object index (4 bytes)
    offset = ids.id.get_offset()
    if (ids.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS or offset is None
            or ids.id.get_storage_size() != n * item):
        raise refuse(path, f"{ids.name} is not stored as the suite stores it (contiguous variable-length strings)")
    size = path.stat().st_size
    descriptor = np.dtype({"names": ["length"], "formats": ["<u4"], "offsets": [0], "itemsize": item})
    total, longest, block = 0, 0, 1 << 16
    with path.open("rb") as handle:
        handle.seek(offset)
        for start in range(0, n, block):
            count = min(block, n - start)
            raw = handle.read(count * item)
            if len(raw) != count * item:
                raise refuse(path, f"{ids.name} lies beyond the end of the file")
            lengths = np.frombuffer(raw, dtype=descriptor)["length"].astype(np.int64)
            total, longest = total + int(lengths.sum()), max(longest, int(lengths.max()))
    if longest > MAX_ID_BYTES or total > size:
        raise refuse(path, f"{ids.name} holds ids of {total} bytes together (the longest {longest} bytes) in a file "
                           f"of {size} bytes: ids are at most {MAX_ID_BYTES} bytes and each is stored once")


__all__ = ["MAX_ATTR_BYTES", "MAX_CLASSES", "MAX_DIM", "MAX_ID_BYTES", "MAX_IMAGES", "MAX_TEMPLATES", "MAX_VIEWS",
           "check_format", "check_id_lengths", "check_structure", "json_attr", "list_of_str", "refuse"]
