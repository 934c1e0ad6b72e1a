"""Saved models that cannot run code when loaded: ``skops.io`` with an explicit allow-list of the suite's own types.

Users share fitted models (colleagues, Kaggle), so a model file is untrusted input. ``pickle`` / ``joblib`` run any
code a crafted file names *before* a format check could look at the result, so they are never used to load. skops
stores an object tree as JSON plus ``.npy`` arrays (read with ``allow_pickle=False``) in a zip file, and refuses to
build any type not on an allow-list. Its default list covers scikit-learn, numpy and scipy types; we add exactly the
classes of this package that fitted methods hold (registered methods and the helpers marked with
:func:`classify.methods.registry.persistable`), and refuse a file naming anything else, listing the types.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from classify.methods.registry import trusted_types
from store.atomic import atomic_write
from store.validation import UserError


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
        A pickle / joblib file (refused: loading it could run code), a file that is not a skops zip, or one that
        names types outside the allow-list (listed in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; {fix}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a {what} saved by this suite (models are skops files since 0.2; pickle and "
                         f".joblib files are refused because loading them can run code); {fix}")
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
