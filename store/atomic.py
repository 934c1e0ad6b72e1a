"""One way to write a file atomically: into a temporary file beside it, renamed into place once complete.

A process killed at any moment leaves the old file or the new one, never half of one; a failed write (disk full, an
exception in the writer) removes its temporary file and leaves the old file untouched. The temporary name carries
the process id, so concurrent writers of the same path never share a temporary file, and ``.tmp`` in it, so debris
of a killed writer is recognisable.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary file :func:`atomic_write` uses for ``path``: hidden, beside it, ending in ``.tmp`` + ``suffix``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path``, on any exception it is removed.

    An OSError that names no file (a write on a full disk) is given ``path`` as its ``filename``, so that the
    command-line error names the file (:func:`store.clitools.path_error`).

    Parameters
    ----------
    path : path-like
        The file to write (its folder must exist).
    fsync : bool
        Force the new file's bytes (and then the folder's entry) to disk before and after the rename, so that a
        power cut cannot leave an empty file under the new name (checkpoints); plain renames suffice against kills.
    suffix : str
        Ending of the temporary name, for writers that insist on one (``numpy.save`` appends ``.npy`` otherwise).

    Examples
    --------
    >>> with atomic_write(folder / "x.npy", suffix=".npy") as tmp:  # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    path = Path(path)
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            try:
                _fsync(path.parent, directory=True)
            except OSError:  # some file systems cannot fsync a folder; the rename itself is done
                pass
    except OSError as err:
        if err.filename is None:  # a write that failed (a full disk) names no file: name the one being written
            err.filename = os.fspath(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)
