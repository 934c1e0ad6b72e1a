"""What a labeling session keeps on disk besides the store: the answers CSV and a small state file.

- The answers CSV (``id,label,time``; default ``<store>.answers.csv`` beside the store) gets one line per answer,
  appended and forced to disk (fsync) before the store is written, so a killed server loses no answer; a line a kill
  cut short is dropped when the file is opened again. A changed answer is a later line of the same id; so is an undone
  one (the undo button): its line gives the label the image had before, empty for unlabeled again.
- The state file (``<store>.labeling/state.json``, beside the thumbnails) holds the current batch, the skipped images,
  the audit decisions, the accuracy after each batch and how many lines of the answers CSV the store has taken; it is
  replaced whole (:func:`store.outputs.write_text`), so a restart continues where the session was.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from store.outputs import csv_cell, read_csv, write_text
from store.validation import UserError

log = logging.getLogger(__name__)

HEADER = ("id", "label", "time")
STATE_VERSION = 1


def now() -> str:
    """The time of an answer: ISO 8601, UTC, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cache_folder(store: str | os.PathLike) -> Path:
    """The folder beside the store holding the app's thumbnails and state: ``<store stem>.labeling``."""
    store = Path(store)
    return store.with_name(store.stem + ".labeling")


def default_answers(store: str | os.PathLike) -> Path:
    """The answers CSV beside the store: ``<store stem>.answers.csv``."""
    store = Path(store)
    return store.with_name(store.stem + ".answers.csv")


class AnswersLog:
    """The answers CSV: one ``id,label,time`` line per answer, appended and fsynced.

    Parameters
    ----------
    path : str or Path
        The CSV (created with its header by the first answer). An existing file must be an answers CSV; a last line
        that a kill cut short is removed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._repair()
        self.count = len(self.rows())

    def _repair(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a last line cut short (%d bytes)", self.path, len(data) - keep)
            os.truncate(self.path, keep)

    def rows(self) -> list[tuple[str, str, str]]:
        """Every answer line, oldest first: ``(id, label, time)``."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        with self.path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
            lines = read_csv(handle)
        if not lines or tuple(lines[0][:3]) != HEADER:
            raise UserError(f"--answers {self.path} is not an answers CSV (its first line is not "
                             f"{','.join(HEADER)}); pass another --answers path")
        return [(row[0], row[1], row[2] if len(row) > 2 else "") for row in lines[1:] if row]

    def append(self, image_id: str, label: str, when: str) -> int:
        """Append one answer and force it to disk; return the file's size before, for :meth:`truncate`."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            before = os.fstat(fd).st_size
            if before == 0:
                writer.writerow(HEADER)
            writer.writerow([csv_cell(image_id), csv_cell(label), when])
            os.write(fd, buffer.getvalue().encode("utf-8", "surrogateescape"))  # one write: one whole line
            os.fsync(fd)
        finally:
            os.close(fd)
        self.count += 1
        return before

    def truncate(self, size: int) -> None:
        """Undo the last :meth:`append` (the store refused the answer): cut the file back to ``size`` bytes."""
        os.truncate(self.path, size)
        self.count -= 1


@dataclass
class SessionState:
    """What a restart needs to continue a session (see the module docstring)."""

    batch_number: int = 0
    batch: list[dict] = field(default_factory=list)  # id, predicted, score, reason, answer
    batch_note: str = ""
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)
    answers: str = ""  # the answers CSV these counts refer to
    applied: int = 0  # lines of it the store has taken

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SessionState":
        """The saved state, or a fresh one when there is none (or it cannot be read: it is a cache of the session,
        the answers themselves are in the store and the CSV)."""
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("version", None) != STATE_VERSION:
                raise ValueError("another version")
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, OSError) as err:
            log.warning("%s cannot be read (%s): starting a new batch", path, err)
            return cls()

    def save(self, path: str | os.PathLike) -> None:
        """Replace the state file whole (ids that are not UTF-8 kept as JSON escapes)."""
        write_text(path, json.dumps({"version": STATE_VERSION, **asdict(self)}, ensure_ascii=True, indent=1))
