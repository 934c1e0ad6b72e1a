"""The output files of every command: one check of an output path before any work, atomic writers, and CSV files that
a spreadsheet opens as text.

- :func:`check_output` refuses, before a command does any work, an output path that is empty, a folder where a file
  is wanted (or a file where a folder is wanted), under a folder that cannot be written (a path under a regular file,
  a read-only folder, ``/proc``), or that is one of the command's inputs (the same file, by resolved path or
  ``os.path.samefile``): writing it would destroy the input.
- :func:`write_text`, :func:`write_bytes` and :func:`write_csv` replace a file whole or not at all
  (:func:`store.atomic.atomic_write`): a kill or a full disk leaves the previous file.
- :func:`csv_cell` neutralises spreadsheet formulas (OWASP's CSV injection advice: a text cell starting with ``=``,
  ``+``, ``-``, ``@``, tab or carriage return is written with a leading single quote) and :func:`csv_value` gives a
  reader the true value back, so the suite reads its own CSVs (``classify predict --order``) exactly. Numbers stay
  numbers: a cell that is a number, or a text that is one (``-0.25``), is written as it is.

It lives in ``store`` because every package imports ``store`` and no other package.
"""
from __future__ import annotations

import contextlib
import csv
import io
import numbers
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from store.atomic import atomic_write
from store.validation import UserError

#: first characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


# ------------------------------------------------------------------------------------------------- CSV cells
def csv_cell(value):
    """``value`` as a CSV cell a spreadsheet shows as written: a text starting like a formula gets a leading ``'``.

    Numbers (``int``, ``float``, numpy numbers) and texts that are plain numbers (``-1``, ``-0.25``) are returned
    unchanged. A text that already starts with quotes followed by a formula character gets one more quote, so that
    :func:`csv_value` undoes exactly one.
    """
    if isinstance(value, (numbers.Number, bool)) or value is None:
        return value
    text = str(value)
    body = text.lstrip("'")
    if body[:1] in FORMULA_START and not (len(body) == len(text) and _NUMBER.fullmatch(text)):
        return "'" + text
    return text


def csv_value(cell: str) -> str:
    """The true text of a cell written by :func:`csv_cell` (the inverse: one leading quote before quotes and a
    formula character is dropped; every other cell is returned as it is)."""
    if cell.startswith("'") and cell.lstrip("'")[:1] in FORMULA_START:
        return cell[1:]
    return cell


def read_csv(handle: Iterable[str]) -> list[list[str]]:
    """Rows of a CSV opened as text, each cell as :func:`csv_value` gives it back (a CSV this suite wrote reads as
    the values it was given)."""
    return [[csv_value(cell) for cell in row] for row in csv.reader(handle)]


# ------------------------------------------------------------------------------------------------- writers
def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` whole or not at all (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", errors: str = "strict") -> Path:
    """Replace ``path`` with ``text`` whole or not at all (its folder is created)."""
    return write_bytes(path, text.encode(encoding, errors))


def write_files(files: Sequence[tuple[str | os.PathLike, bytes]]) -> list[Path]:
    """Replace several files together: each ``(path, bytes)`` is written to a temporary file first, and only when all
    are complete are they renamed into place, in the given order. A full disk or an error leaves every old file."""
    paths = [Path(path) for path, _ in files]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for path, (_, data) in reversed(list(zip(paths, files))):  # the stack renames in reverse order of entry
            stack.enter_context(atomic_write(path)).write_bytes(data)
    return paths


def csv_bytes(header: Sequence, rows: Iterable[Sequence | Mapping]) -> bytes:
    """The bytes :func:`write_csv` writes."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(name) for name in header])
    for row in rows:
        values = [row[name] for name in header] if isinstance(row, Mapping) else row
        writer.writerow([csv_cell(value) for value in values])
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def write_csv(path: str | os.PathLike, header: Sequence, rows: Iterable[Sequence | Mapping]) -> Path:
    """Write a CSV whole or not at all, every cell through :func:`csv_cell`.

    Parameters
    ----------
    path : path-like
        The file (its folder is created).
    header : sequence
        The column names (the first row).
    rows : iterable of sequences or mappings
        One per line; a mapping is read by the names of ``header``.

    Text is UTF-8; ids that are not UTF-8 file names (surrogates) are written as their original bytes, so that they
    match the files.
    """
    return write_bytes(path, csv_bytes(header, rows))


# ------------------------------------------------------------------------------------------------- path checks
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: ``os.path.samefile`` when both exist, else equal resolved paths."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:  # a path that cannot even be resolved names no existing input
        return False


def _existing_ancestor(path: Path) -> Path:
    """The nearest part of ``path`` (itself or a parent) that exists."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _probe(folder: Path, shown: str) -> None:
    """Create and remove a file in ``folder``: a folder that cannot be written is refused now, not after the work."""
    try:
        handle, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as err:
        raise UserError(f"cannot write {shown}: {folder} is not writable ({err.strerror}); choose a writable "
                         "folder") from None
    os.close(handle)
    os.unlink(name)


def check_output(path, flag: str = "--out", inputs: Mapping[str, object] | None = None, folder: bool = False,
                 files: Sequence[str] = ()) -> Path:
    """Check an output path before any work; return it (``~`` expanded).

    Parameters
    ----------
    path : path-like
        The value of the output flag.
    flag : str
        The flag's name, for messages.
    inputs : mapping, optional
        What each input is ("--store", "--model") -> its path (None entries are skipped). An output that is one of
        them is refused.
    folder : bool
        The output is a folder of files (``classify report --out``) rather than one file.
    files : sequence of str
        With ``folder``: the names of the files written in it, each checked against the inputs.

    Raises
    ------
    UserError
        An empty path, a folder given for a file (or a file for a folder), a path under a regular file, a folder
        that cannot be written, or an output that is an input.
    """
    text = "" if path is None else os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if not text.strip():
        raise UserError(f"{flag} is empty: pass a {'folder' if folder else 'file'} path")
    out = Path(text).expanduser()
    shown = f"{flag} {out}"
    if folder and out.exists() and not out.is_dir():
        raise UserError(f"{shown} is a file, and the output is a folder of files; pass a folder path")
    if not folder and out.is_dir():
        raise UserError(f"{shown} is a folder; pass a file path (e.g. {out / 'out'}{out.suffix or ''})")
    ancestor = _existing_ancestor(out if folder else out.parent)
    if not ancestor.is_dir():
        raise UserError(f"cannot write {shown}: {ancestor} is a file, not a folder; choose another path")
    targets = [out / name for name in files] if folder else [out]
    for what, given in (inputs or {}).items():
        if given is None or not str(given):
            continue
        for target in targets:
            if same_file(target, given):
                raise UserError(f"{flag} {target} is the input {what} {given}: writing it would destroy the input; "
                                 f"choose another {flag}")
    _probe(ancestor, shown)
    return out
