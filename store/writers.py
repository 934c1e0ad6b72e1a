"""What an embedding engine hands to a writer: a :class:`Batch` of rows; and :class:`StoreWriter`, the HDF5 sink.

Both writers (:class:`StoreWriter` here, :class:`store.shard_format.ShardWriter` for shard folders) take batches
with ``write(batch)`` and finish with ``flush()``, so an engine's loop does not depend on where rows land
(see :func:`write_batches`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Protocol

import numpy as np

from store.layout import OK, display_id

#: per-row arrays of a Batch besides ``rows``, in column order
ARRAYS = ("status", "sha256", "errors", "features", "views", "probs")


@dataclass
class Batch:
    """Rows of one embedding batch: per-image status and, for every row, its features (ignored unless ok).

    Attributes
    ----------
    rows : ndarray of shape (B,)
        Store rows, strictly increasing.
    status : ndarray of shape (B,)
        uint8 :data:`store.OK` or :data:`store.ERROR`.
    sha256, errors : ndarray of shape (B,)
        Object arrays: the file's hex digest ("" when it could not be read) and the error message ("" when ok).
    features : ndarray of shape (B, D), optional
        float32 raw (un-normalised) features; rows that are not ok hold zeros.
    views : ndarray of shape (B, V, D), optional
        Augmented-view features.
    probs : ndarray of shape (B, K), optional
        The backbone's classifier probabilities.
    """

    rows: np.ndarray
    status: np.ndarray
    sha256: np.ndarray
    errors: np.ndarray
    features: np.ndarray | None = None
    views: np.ndarray | None = None
    probs: np.ndarray | None = None

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.status = np.asarray(self.status, dtype=np.uint8)
        self.sha256 = np.array([s or "" for s in self.sha256], dtype=object)
        self.errors = np.array([e or "" for e in self.errors], dtype=object)

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def ok(self) -> np.ndarray:
        """(B,) bool: rows whose image decoded."""
        return self.status == OK

    def take(self, index: np.ndarray) -> "Batch":
        """The rows at ``index`` (positions or a boolean mask)."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                        for f in fields(self)})

    @classmethod
    def concat(cls, parts: list["Batch"]) -> "Batch":
        """One batch of every row of ``parts``, in row order."""
        merged = {f.name: None if getattr(parts[0], f.name) is None else
                  np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        batch = cls(**merged)
        return batch.take(np.argsort(batch.rows, kind="stable"))

    def columns(self) -> dict[str, np.ndarray]:
        """The batch as named columns for Arrow (Ray Data): messages shown readably (Arrow strings are UTF-8), and
        probabilities as float16, the precision every writer keeps (a 1000-class head would otherwise send 4 KB
        per image)."""
        out = {"row": self.rows, "status": self.status, "sha256": self.sha256,
               "errors": np.array([display_id(e) for e in self.errors], dtype=object)}
        out.update({name: getattr(self, name) for name in ("features", "views") if getattr(self, name) is not None})
        if self.probs is not None:
            out["probs"] = self.probs.astype(np.float16)  # (B, K)
        return out

    @classmethod
    def from_columns(cls, columns: dict) -> "Batch":
        """The inverse of :meth:`columns`."""
        return cls(rows=columns["row"], **{name: columns.get(name) for name in ARRAYS})


class Writer(Protocol):
    """Where an engine's batches go."""

    def write(self, batch: Batch) -> None:
        """Take one batch (rows already taken are never handed over again)."""

    def flush(self) -> None:
        """Make everything written so far durable."""


class StoreWriter:
    """Writes batches of one backbone into an open :class:`store.FeatureStore` (its group begun already).

    Each batch is written and flushed before its rows are marked done (see :meth:`store.FeatureStore.write_rows`),
    so a run killed at any moment resumes after the last batch written.
    """

    def __init__(self, store, spec: str):
        self.store, self.spec = store, spec

    def write(self, batch: Batch) -> None:
        """Status of every row, and the features (views, probabilities) of the ok ones."""
        ok = batch.ok
        self.store.write_rows(self.spec, batch.rows, batch.status, list(batch.sha256), list(batch.errors),
                              **{name: None if getattr(batch, name) is None else getattr(batch, name)[ok]
                                 for name in ("features", "views", "probs")})

    def flush(self) -> None:
        """Push everything to disk."""
        self.store.flush()


def write_batches(batches: Iterable[Batch], writer: Writer, progress=None) -> int:
    """The loop both engines share: every batch to ``writer``, then ``writer.flush()``; returns the rows written.

    ``progress``, when given, is a tqdm-like bar advanced by each batch's row count.
    """
    rows = 0
    for batch in batches:
        writer.write(batch)
        rows += len(batch)
        if progress is not None:
            progress.update(len(batch))
    writer.flush()
    return rows
