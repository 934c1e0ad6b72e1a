"""Saved models that cannot run code when loaded: ``skops.io`` with an explicit allow-list of the suite's own types.

Users share fitted models (colleagues, Kaggle), so a model file is untrusted input. ``pickle`` / ``joblib`` run any
code a crafted file names *before* a format check could look at the result, so they are never used to load. skops
stores an object tree as JSON plus ``.npy`` arrays (read with ``allow_pickle=False``) in a zip file, and refuses to
build any type not on an allow-list. Its default list covers scikit-learn, numpy and scipy types; we add exactly the
classes of this package that fitted methods hold (registered methods and the helpers marked with
:func:`classify.methods.registry.persistable`), and refuse a file naming anything else, listing the types.

A model also costs memory in proportion to what it holds, not to what it claims: skops reads every array member
of the zip while it lists the file's types, before any allow-list check, and one member referenced by many objects
is read once per object. So before skops reads anything, :func:`check_archive` inspects the zip's directory with
:mod:`zipfile` (no decompression) and its ``schema.json``: the number of members, each member's size and
compression ratio, the size of the schema, that each array member is read by one object only, and the total that
loading unpacks, bounded by a multiple of the file's own size. The suite writes models uncompressed, so its own
files unpack to their size; a foreign file past a limit is refused with one line naming it.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from classify.methods.registry import trusted_types
from store.atomic import atomic_write
from store.validation import UserError


#: at most this many members in a model's zip
MAX_MEMBERS = 10_000
#: ``schema.json`` (the object tree, parsed whole by skops) at most this large, unpacked
MAX_SCHEMA_BYTES = 64 * 2**20
#: a member larger than :data:`SMALL_MEMBER_BYTES` unpacks to at most this many times its packed size
MAX_RATIO = 100
#: members up to this size may compress better than :data:`MAX_RATIO` (a small array of zeros)
SMALL_MEMBER_BYTES = 2**20
#: everything a load unpacks is at most ``MAX_RATIO`` times the file's size plus this
SLACK_BYTES = 64 * 2**20
#: skops node types that read a zip member (``state["file"]``); SparseMatrixNode's member is itself a zip (.npz)
_NESTED_ZIP_LOADERS = ("SparseMatrixNode",)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _check_members(infos: list[zipfile.ZipInfo], refuse, holder: str | None = None) -> None:
    """Count and per-member sizes of a zip's directory (claimed sizes: zipfile stops reading a member there);
    ``holder`` names the member the zip is in, for a zip inside the model's zip."""
    inside = f"member {holder} holds " if holder else ""
    if len(infos) > MAX_MEMBERS:
        refuse(f"{inside or 'it has '}{len(infos)} members (at most {MAX_MEMBERS})")
    for info in infos:
        if info.file_size > SMALL_MEMBER_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            refuse(f"{inside}member {info.filename} unpacks to {_size(info.file_size)} from "
                   f"{_size(info.compress_size)} (more than {MAX_RATIO} times)")


def _readers(schema) -> tuple[dict[str, int], set[str]]:
    """How many times loading ``schema`` reads each member (skops reads ``state["file"]`` once per node, and a node
    whose truthy ``__id__`` was seen before is reused instead of read again: skops.io._audit.get_tree), and the
    members that are zips themselves (sparse matrices, ``.npz``)."""
    ids: dict[str, set] = {}
    anonymous: dict[str, int] = {}
    nested: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        if "file" not in node:
            continue
        name, saved_id = node["file"], node.get("__id__")
        if not isinstance(name, str) or isinstance(saved_id, (dict, list)):
            raise ValueError("a member reference that is not a name")
        if saved_id:
            ids.setdefault(name, set()).add(saved_id)
        else:
            anonymous[name] = anonymous.get(name, 0) + 1
        if node.get("__loader__") in _NESTED_ZIP_LOADERS:
            nested.add(name)
    counts = {name: len(ids.get(name, ())) + anonymous.get(name, 0) for name in set(ids) | set(anonymous)}
    return counts, nested


def check_archive(path: str | Path, what: str = "model", fix: str = "refit it") -> None:
    """Refuse a skops file that would take more memory to load than its size justifies, before skops reads it.

    Parameters
    ----------
    path : str or Path
        The zip file.
    what, fix : str
        For the message, as in :func:`load`.

    Raises
    ------
    UserError
        Too many members, a member or ``schema.json`` too large or too compressed, a member read by several objects
        (fanned out in memory), or a total unpacked size above :data:`MAX_RATIO` times the file's size plus
        :data:`SLACK_BYTES`; the message names the limit and the fix.
    """
    path = Path(path)

    def refuse(reason: str):
        raise UserError(f"{path} is refused as a {what}: {reason}; models written by this suite are stored "
                         f"uncompressed and never do this; {fix}")

    budget = MAX_RATIO * os.path.getsize(path) + SLACK_BYTES
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        _check_members(infos, refuse)
        try:
            schema_info = archive.getinfo("schema.json")
        except KeyError:
            refuse("it has no schema.json (not a skops file)")
        if schema_info.file_size > MAX_SCHEMA_BYTES:
            refuse(f"its schema.json unpacks to {_size(schema_info.file_size)} (at most {_size(MAX_SCHEMA_BYTES)})")
        try:
            counts, nested = _readers(json.loads(archive.read(schema_info)))
        except (ValueError, RecursionError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not a readable {what} (its schema.json: {type(err).__name__}); {fix}") from None
        total = schema_info.file_size
        for name, count in sorted(counts.items()):
            if name not in archive.NameToInfo:
                continue  # skops refuses a missing member itself, with one line below
            if count > 1:
                refuse(f"its member {name} is read by {count} objects (each one a copy in memory; at most 1)")
            info = archive.getinfo(name)
            total += info.file_size
            if name in nested:
                with zipfile.ZipFile(archive.open(info)) as inner:
                    inner_infos = inner.infolist()
                    _check_members(inner_infos, refuse, name)
                    total += sum(i.file_size for i in inner_infos)
        total = max(total, sum(info.file_size for info in infos))
        if total > budget:
            refuse(f"loading it unpacks {_size(total)} from a file of {_size(os.path.getsize(path))} (at most "
                   f"{MAX_RATIO} times the file's size plus {_size(SLACK_BYTES)})")


def _sio():
    import skops.io  # imported here: it scans every sklearn estimator at import (about a second)

    return skops.io


def save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` (a dict of plain values, arrays and the suite's estimators) to ``path`` atomically.

    A temporary file beside ``path`` is renamed into place, so a crash leaves the old file or the new one; the
    temporary file is removed when writing fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        _sio().dump(obj, tmp)
    return path


def load(path: str | Path, what: str = "model", fix: str = "refit it with `python -m classify fit ... --out M`"):
    """Read a file written by :func:`save`, building only allow-listed types.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What the file is, for error messages ("model", "fine-tuned head").
    fix : str
        How the user gets a good file, for error messages.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        A pickle / joblib file (refused: loading it could run code), a file that is not a skops zip, one that would
        take more memory than its size justifies (:func:`check_archive`), or one that names types outside the
        allow-list (listed in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; {fix}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a {what} saved by this suite (models are skops files since 0.2; pickle and "
                         f".joblib files are refused because loading them can run code); {fix}")
    try:
        check_archive(path, what, fix)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as err:
        raise UserError(f"{path} is not a readable {what} ({type(err).__name__}: {err}); {fix}") from None
    sio = _sio()
    try:
        found = set(sio.get_untrusted_types(file=path))
    except Exception as err:  # a damaged zip or schema; skops raises many types, all mean the same to the user
        raise UserError(f"{path} is not a readable {what} ({type(err).__name__}: {err}); {fix}") from None
    allowed = trusted_types()
    refused = sorted(found - allowed)
    if refused:
        raise UserError(f"{path} names types this suite does not load ({', '.join(refused)}): it was not written by "
                         f"this suite, or by a newer version; {fix}")
    try:
        return sio.load(path, trusted=sorted(found))
    except Exception as err:  # checked types, but a damaged or foreign tree: one line for the user
        raise UserError(f"{path} is not a readable {what} ({type(err).__name__}: {err}); {fix}") from None
