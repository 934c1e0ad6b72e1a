"""Hostile model files in skops form, for tests of :mod:`classify.persist` (import ``from crafted_models import ...``).

Each function writes a zip that skops would accept as far as types go (only numpy, builtins and the model format's
own fields), but that costs far more memory to load than its size: a deflated array of zeros (a zip bomb), one array
member read by many objects (fan-out), a huge ``schema.json``, a sparse matrix whose ``.npz`` member is itself a
bomb, or very many members. Sizes are parameters: the files are written in streamed chunks, so crafting a 1 GiB bomb
costs no memory (and a test can use a smaller one).
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

MODEL_FORMAT = "fewshot-classifier/2"  # classify.pipeline.MODEL_FORMAT
CHUNK = 2**20


# ------------------------------------------------------------------------------------------------ skops nodes
def json_node(value, node_id: int) -> dict:
    """A str / int / ... value as skops writes it."""
    return {"__class__": type(value).__name__, "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True, "__id__": node_id}


def ndarray_node(member: str, node_id: int | None) -> dict:
    """A numpy array read from zip member ``member`` (``node_id`` None: no ``__id__``, never reused)."""
    node = {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy",
            "file": member}
    if node_id is not None:
        node["__id__"] = node_id
    return node


def sparse_node(member: str, node_id: int) -> dict:
    """A scipy CSR matrix read from zip member ``member`` (an ``.npz``, itself a zip)."""
    return {"__class__": "csr_matrix", "__module__": "scipy.sparse._csr", "__loader__": "SparseMatrixNode",
            "type": "scipy", "file": member, "__id__": node_id}


def list_node(items: list, node_id: int) -> dict:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": items,
            "__id__": node_id}


def dict_node(mapping: dict, node_id: int) -> dict:
    """A dict with str keys, as skops writes it (``key_types`` lists each key's type)."""
    keys = [{"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode", "__id__": 1} for _ in mapping]
    return {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": dict(mapping),
            "key_types": list_node(keys, node_id + 1), "__id__": node_id}


def model_schema(estimator: dict) -> dict:
    """The root of a model file: ``{"format": MODEL_FORMAT, "estimator": <node>}`` plus skops' protocol fields."""
    root = dict_node({"format": json_node(MODEL_FORMAT, 10), "estimator": estimator}, 20)
    root.update(protocol=2, _skops_version="0.16.0")
    return root


# ------------------------------------------------------------------------------------------------ members
def npy_header(shape: tuple, dtype=np.float64) -> bytes:
    """The header of an ``.npy`` file holding an array of ``shape`` and ``dtype``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_zeros(archive: zipfile.ZipFile, name: str, head: bytes, n_zero_bytes: int,
                compress: int = zipfile.ZIP_DEFLATED) -> None:
    """Member ``name``: ``head`` then ``n_zero_bytes`` zero bytes, written in chunks (deflated: a zip bomb)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = compress
    with archive.open(info, "w", force_zip64=True) as handle:
        handle.write(head)
        zeros = bytes(CHUNK)
        left = n_zero_bytes
        while left > 0:
            handle.write(zeros[:min(left, CHUNK)])
            left -= CHUNK


def zeros_npy(archive: zipfile.ZipFile, name: str, n_bytes: int, compress: int = zipfile.ZIP_DEFLATED,
              dtype=np.float64) -> int:
    """An ``.npy`` member of zeros about ``n_bytes`` large (its element count returned)."""
    count = max(1, n_bytes // np.dtype(dtype).itemsize)
    write_zeros(archive, name, npy_header((count,), dtype), count * np.dtype(dtype).itemsize, compress)
    return count


def _zip(path) -> zipfile.ZipFile:
    """A zip for writing; level 1 packs zeros about 1000 times, as level 9 does, in a fraction of the time."""
    return zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)


# ------------------------------------------------------------------------------------------------ hostile files
def deflate_bomb(path: str | Path, unpacked_bytes: int = 2**30) -> Path:
    """A model whose estimator is one array: a deflated ``.npy`` of zeros that unpacks to ``unpacked_bytes`` (the
    issue's 1.1 MB file holding a 1 GiB array)."""
    path = Path(path)
    with _zip(path) as archive:
        zeros_npy(archive, "1.npy", unpacked_bytes)
        archive.writestr("schema.json", json.dumps(model_schema(ndarray_node("1.npy", 100))))
    return path


def fan_out(path: str | Path, member_bytes: int = 16 * 2**20, readers: int = 64, deflated: bool = False,
            with_ids: bool = True) -> Path:
    """A model whose estimator is a list of ``readers`` arrays that all name one ``.npy`` member of ``member_bytes``:
    skops reads the member once per array (``readers`` copies in memory). ``with_ids`` gives each array its own
    ``__id__``; without, the arrays have none (skops never reuses a node without one)."""
    path = Path(path)
    with _zip(path) as archive:
        zeros_npy(archive, "1.npy", member_bytes, zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED)
        items = [ndarray_node("1.npy", 1000 + i if with_ids else None) for i in range(readers)]
        archive.writestr("schema.json", json.dumps(model_schema(list_node(items, 100))))
    return path


def shared_array(path: str | Path, readers: int = 3) -> Path:
    """A harmless file: one small array named by ``readers`` objects with the same ``__id__`` (what skops writes when
    a model holds one array twice; skops reads it once)."""
    path = Path(path)
    with _zip(path) as archive:
        buffer = io.BytesIO()
        np.save(buffer, np.arange(4.0))
        archive.writestr("1.npy", buffer.getvalue(), compress_type=zipfile.ZIP_STORED)
        items = [ndarray_node("1.npy", 1000) for _ in range(readers)]
        archive.writestr("schema.json", json.dumps(model_schema(list_node(items, 100))),
                         compress_type=zipfile.ZIP_STORED)
    return path


def schema_bomb(path: str | Path, unpacked_bytes: int = 2**30) -> Path:
    """A model whose ``schema.json`` is padded with ``unpacked_bytes`` of spaces, deflated (skops parses it whole)."""
    path = Path(path)
    with _zip(path) as archive:
        text = json.dumps(model_schema(json_node("x", 100))).encode()
        info = zipfile.ZipInfo("schema.json")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as handle:
            handle.write(text)
            spaces = b" " * CHUNK
            for start in range(0, unpacked_bytes, CHUNK):
                handle.write(spaces[:min(CHUNK, unpacked_bytes - start)])
    return path


def sparse_bomb(path: str | Path, unpacked_bytes: int = 2**30) -> Path:
    """A model whose estimator is a sparse matrix: a small stored ``.npz`` member whose own arrays are deflated
    zeros unpacking to about ``unpacked_bytes`` (a zip inside the zip)."""
    path = Path(path)
    inner = io.BytesIO()
    with _zip(inner) as npz:
        nnz = zeros_npy(npz, "data.npy", unpacked_bytes // 2)
        zeros_npy(npz, "indices.npy", nnz * 4, dtype=np.int32)
        for name, value in (("indptr", np.array([0, nnz], np.int32)), ("shape", np.array([1, 1])),
                            ("format", np.array("csr"))):
            buffer = io.BytesIO()
            np.save(buffer, value)
            npz.writestr(f"{name}.npy", buffer.getvalue())
    with _zip(path) as archive:
        archive.writestr("1.npz", inner.getvalue(), compress_type=zipfile.ZIP_STORED)
        archive.writestr("schema.json", json.dumps(model_schema(sparse_node("1.npz", 100))))
    return path


def many_members(path: str | Path, members: int = 20_000) -> Path:
    """A model with ``members`` empty extra members (a directory that costs memory to list)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(members):
            archive.writestr(f"{i}.bin", b"")
        archive.writestr("schema.json", json.dumps(model_schema(json_node("x", 100))))
    return path
