"""Hostile feature stores and shard folders, crafted from good ones: what someone could send a user.

Every function changes a file or folder in place (start from :func:`good_store` or :func:`good_shards`) and returns
the path of what it changed. HDF5 tricks: storage in another file (:func:`external_storage`), links that leave the file
(:func:`external_link`, :func:`soft_link`), datasets mapped from other files (:func:`virtual_dataset`), shapes that
claim far more than the file holds (:func:`lying_shape`), attributes of the wrong kind (:func:`set_attr`). Shard
tricks: :func:`set_meta`, :func:`set_shard_ids`.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from synthstore import A, B, CLASSES, make_store

__all__ = ["A", "B", "CLASSES", "external_link", "external_storage", "features_path", "good_shards", "good_store",
           "lying_shape", "set_attr", "set_meta", "set_shard_ids", "shared_id_heap", "soft_link", "virtual_dataset"]


def good_store(path) -> Path:
    """A valid store (:func:`synthstore.make_store`: 195 images, 3 classes, backbones A (dim 8) and B (dim 6,
    with text embeddings))."""
    return Path(make_store(path)[0])


def features_path(spec: str = A) -> str:
    """The HDF5 path of a backbone's features."""
    from store.layout import group_name

    return f"backbones/{group_name(spec)}/features"


def _replace(f: h5py.File, name: str) -> tuple[tuple, np.dtype, dict]:
    """Delete dataset ``name`` from ``f``; its shape, dtype and attributes."""
    old = f[name]
    shape, dtype, attrs = old.shape, old.dtype, dict(old.attrs)
    del f[name]
    return shape, dtype, attrs


def external_storage(path, name: str, target, offset: int = 0) -> Path:
    """Dataset ``name`` keeps its bytes in the file ``target`` (HDF5 external storage), same shape and dtype."""
    with h5py.File(path, "a") as f:
        shape, dtype, attrs = _replace(f, name)
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(target), offset, h5py.h5f.UNLIMITED)])
        f[name].attrs.update(attrs)
    return Path(path)


def external_link(path, name: str, target_file, target_name: str, data=None) -> Path:
    """Replace ``name`` by an external link to ``target_name`` in ``target_file`` (created holding ``data``, by default
    a copy of the dataset, when it does not exist)."""
    with h5py.File(path, "a") as f:
        copy = f[name][()]
        del f[name]
        if not Path(target_file).exists():
            with h5py.File(target_file, "w") as other:
                other.create_dataset(target_name, data=copy if data is None else data)
        f[name] = h5py.ExternalLink(str(target_file), target_name)
    return Path(path)


def soft_link(path, name: str, target: str) -> Path:
    """Replace ``name`` by a soft link to the path ``target`` (which may pass through an external link)."""
    with h5py.File(path, "a") as f:
        if name in f:
            del f[name]
        f[name] = h5py.SoftLink(target)
    return Path(path)


def virtual_dataset(path, name: str, source_file, source_name: str, data=None) -> Path:
    """Replace dataset ``name`` by a virtual dataset mapped from ``source_name`` in ``source_file`` (created holding
    ``data``, by default a copy of the dataset)."""
    with h5py.File(path, "a") as f:
        copy = f[name][()]
        shape, dtype, attrs = _replace(f, name)
        with h5py.File(source_file, "w") as other:
            other.create_dataset(source_name, data=copy if data is None else data)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(source_file), source_name, shape=shape)
        f.create_virtual_dataset(name, layout).attrs.update(attrs)
    return Path(path)


def lying_shape(path, name: str, shape: tuple, dtype=None) -> Path:
    """Replace dataset ``name`` by a gzip-compressed one declaring ``shape`` (and ``dtype``, default unchanged), with
    the same attributes: the file stays small, reading it would need ``prod(shape)`` elements of memory."""
    with h5py.File(path, "a") as f:
        _, old_dtype, attrs = _replace(f, name) if name in f else ((), np.float32, {})
        chunks = tuple(min(s, 1024) or 1 for s in shape)
        f.create_dataset(name, shape=shape, dtype=old_dtype if dtype is None else dtype, chunks=chunks,
                         compression="gzip").attrs.update(attrs)
    return Path(path)


def shared_id_heap(path, long_id: str) -> Path:
    """Every element of ``/images/id`` points at the same heap string ``long_id``: the file holds it once, reading
    the ids would hold it once per image. Done by copying the first element's 16-byte descriptor over the others
    (the store writes ``/images/id`` contiguous)."""
    with h5py.File(path, "a") as f:
        ids = f["images/id"]
        ids[0] = long_id.encode()
        offset, n = ids.id.get_offset(), ids.shape[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        first = handle.read(16)
        handle.write(first * (n - 1))
    return Path(path)


def set_attr(path, name: str, key: str, value) -> Path:
    """Set attribute ``key`` of object ``name`` ("/" for the file) to ``value`` as it is (JSON text stays text)."""
    with h5py.File(path, "a") as f:
        f[name].attrs[key] = value
    return Path(path)


def good_shards(store_path, out, spec: str = A, shard_size: int = 50, normalize: bool = False) -> Path:
    """A valid shard folder exported from a store (a lossless copy by default)."""
    from store.shards import export_shards

    return Path(export_shards(store_path, spec, out, shard_size=shard_size, normalize=normalize))


def set_meta(folder, **changes) -> Path:
    """Change keys of a shard folder's meta.json (a value None removes the key)."""
    meta_path = Path(folder) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    meta_path.write_text(json.dumps(meta))
    return meta_path


def set_shard_ids(folder, shard: int, ids: dict[int, str]) -> Path:
    """Replace ids of shard ``shard``'s metadata (``{row in the shard: new id}``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(folder) / "metadata" / f"metadata_{shard}.parquet"
    table = pq.read_table(path)
    column = table.column("id").to_pylist()
    for row, new in ids.items():
        column[row] = new
    table = table.set_column(table.column_names.index("id"), "id", pa.array(column, type=pa.string()))
    if "id_bytes" in table.column_names:
        table = table.drop_columns(["id_bytes"])
    pq.write_table(table, path)
    return path
