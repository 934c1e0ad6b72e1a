"""Integrity checks of a feature store: sane features, damaged files and failed writes as one-line errors.

Features are checked on write and on read: an ok row is finite and below :data:`MAX_ABS_FEATURE`, so a row that is
not was damaged after it was written. What h5py raises on a damaged file (bad heap, B-tree, object header, attribute,
string) becomes one ``ValueError`` naming the store and the fix; an ``OSError`` while writing (disk full) one saying
that the same command resumes.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
from pathlib import Path

import numpy as np

from store.validation import UserError, one_line

log = logging.getLogger(__name__)

# Largest |value| an ok feature may hold. Real image features stay far below it (float16 storage cannot even exceed
# 65504), while random bytes read as float32 exceed it in about 40 % of values: a row beyond it was damaged.
MAX_ABS_FEATURE = 1e8
# What h5py raises when the file's structure is damaged (bad heap, B-tree, object header, attribute, string).
DAMAGE_ERRORS = (json.JSONDecodeError, UnicodeError, OSError, RuntimeError, KeyError, IndexError, TypeError)


def sane_rows(X: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of ``X`` (n, D) that are finite and within MAX_ABS_FEATURE."""
    with np.errstate(invalid="ignore", over="ignore"):  # float16 data: the bound itself overflows to inf
        return np.isfinite(X).all(axis=1) & (np.abs(X) <= MAX_ABS_FEATURE).all(axis=1)


def damaged_error(path: Path, err: BaseException) -> UserError:
    """The one-line error of a store whose file structure is damaged."""
    return UserError(f"store {path} is damaged ({type(err).__name__}: {one_line(err)}); re-embed: move it aside and "
                      "rerun `python -m embed run` with the same --store path")


def reads(method):
    """Turn what h5py raises on a damaged file into one ValueError naming the store and the fix."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DAMAGE_ERRORS as err:
            log.debug("reading %s failed", self.path, exc_info=True)
            raise damaged_error(self.path, err) from None
    return wrapper


def writes(method):
    """Turn an OSError while writing (disk full, I/O error) into one ValueError saying the rerun resumes."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            log.debug("writing %s failed", self.path, exc_info=True)
            raise UserError(f"writing {self.path} failed ({one_line(err)}); free disk space (or fix the disk) and "
                             "rerun the same command: it resumes where it stopped") from None
    return wrapper


def open_error(path: Path, err: OSError) -> UserError:
    """The one-line reason h5py could not open ``path``: in use by another process, or not an HDF5 store."""
    text = one_line(err)
    if "unable to lock file" in text:
        if isinstance(err, BlockingIOError) or err.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "errno = 11" in text:
            return UserError(f"store {path} is in use by another process (HDF5 allows one writer and no readers at a "
                              f"time); wait for the other `python -m embed run` / `classify` command to finish (or "
                              f"stop it; `fuser -v {path}` names it), then retry")
        return UserError(f"cannot lock {path}: its file system does not support file locking ({text}); set "
                          "HDF5_USE_FILE_LOCKING=FALSE and make sure no other process writes the store")
    return UserError(f"{path} is not a readable HDF5 feature store ({text}); point --store at a store written by "
                      "`python -m embed run`")
