"""Where a store's images are on disk: every id is a path relative to the data folder the store records, or to the
folder given with ``--data-root`` when the images moved (another machine, a renamed folder).

The one place ids become file paths for reading images back (pages, thumbnails, the ``path`` column of suggest and
audit): a store may come from someone else, so an id that would reach outside the data folder (absolute, or with a
``..`` component) is never turned into a path, and its file is never read.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable

from store.layout import display_id

log = logging.getLogger(__name__)

def data_root(store, given: str | os.PathLike | None = None) -> Path | None:
    """The folder a store's ids are relative to: ``given`` (``--data-root``), else the one the store records.

    Parameters
    ----------
    store : FeatureStore
    given : path, optional
        ``--data-root``: must be a folder.

    Returns
    -------
    Path or None
        None when the store records no folder. A recorded folder that does not exist here is returned with a warning
        naming ``--data-root`` (images then cannot be shown, but the command's other outputs stand).

    Raises
    ------
    FileNotFoundError
        If ``given`` is not a folder.
    """
    if given is not None and str(given) != "":
        root = Path(given).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data-root {display_id(str(root))} is not a folder; pass the folder that now "
                                    "holds the store's images (the one with train/, unlabeled/, test/)")
        return root
    recorded = store.root
    if not recorded:
        log.warning("%s records no data folder, so its images cannot be shown; pass --data-root DIR", store.path)
        return None
    root = Path(recorded)
    if not root.is_dir():
        log.warning("%s records its images under %s, which is not a folder here, so they cannot be shown; pass "
                    "--data-root DIR, the folder that now holds them", store.path, display_id(recorded))
    return root


def inside(image_id: str) -> bool:
    """Whether an id names a file inside its data folder: relative, without a ``..`` component (either separator)."""
    text = str(image_id)
    if not text or "\0" in text:
        return False
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    return not (posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts
                or ".." in windows.parts)


def image_file(root: str | os.PathLike | None, image_id: str) -> Path | None:
    """The file of ``image_id`` under ``root``; None when the root is unknown or the id reaches outside it."""
    if root is None or not inside(image_id):
        return None
    return Path(root) / image_id


def image_files(root: str | os.PathLike | None, ids: Iterable[str]) -> list[Path | None]:
    """:func:`image_file` of every id, with one warning for all the ids that reach outside the data folder."""
    ids = [str(i) for i in ids]
    outside = [i for i in ids if not inside(i)]
    if outside and root is not None:
        log.warning("%d id(s) reach outside the data folder (absolute, or with '..'), e.g. %s: their files are not "
                    "read (a store may only show images inside its own data folder)", len(outside),
                    display_id(outside[0]))
    return [image_file(root, i) for i in ids]
