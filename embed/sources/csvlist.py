"""A CSV list of images: header found by its column names (Hugging Face's ``file_name,label`` included) or
positional ``path,label[,split]`` rows; conflicting duplicate paths refused."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from embed.images import IMAGE_EXTENSIONS
from embed.sources.files import ImageSet, ListedPaths, _label_display_names, _read_classes_file
from store import SPLITS, display_id
from store.validation import UserError

log = logging.getLogger(__name__)


# Column names recognised in a CSV header (case-insensitive), the common ones of image datasets; Hugging Face
# imagefolder's metadata.csv names its path column file_name.
PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")


LABEL_COLUMNS = ("label", "class", "category", "target")


SPLIT_COLUMNS = ("split",)


_NO_LABEL = "(no label)"


_COLUMN_HELP = (f"name the path column one of {', '.join(PATH_COLUMNS)}, the label column one of "
                f"{', '.join(LABEL_COLUMNS)} and the optional split column split")


def from_csv(csv_path: str | Path, root: str | Path | None = None, allow_outside: bool = False) -> ImageSet:
    """A CSV of images and labels; paths relative to ``root`` (default: the CSV's folder).

    With a header, columns are found by name, case-insensitive, in any order: the path (one of `PATH_COLUMNS`,
    e.g. ``path``, ``filename``, ``file_name`` as in Hugging Face's ``metadata.csv``), the label (one of
    `LABEL_COLUMNS`, e.g. ``label``, ``class``) and optionally ``split``; other columns are ignored. Without a
    header, rows are positional: ``path,label[,split]``.

    ``label`` is a class name, or empty for unknown; ``split`` defaults to train when labeled, else unlabeled.
    Classes come from ``classes.txt`` beside the CSV when present, else the sorted distinct labels. The file is
    read as UTF-8 (a byte-order mark is skipped); bytes that are not UTF-8 are kept as the exact bytes of the
    file name (Python's ``surrogateescape``).

    Every path must name a file inside ``root`` once resolved (no ``../``, no absolute path elsewhere, no link that
    leads out), unless ``allow_outside``: a CSV is often someone else's, and would otherwise make the suite read,
    and copy into pages, any file of this machine. See :class:`~embed.sources.files.ListedPaths` for the ids.

    A file listed twice (under one spelling or two: ``a.png`` and ``sub/../a.png``, or a link and its target) with
    the same label and split is kept once, with a warning; with different labels or splits the CSV is refused,
    listing the rows.

    Raises
    ------
    FileNotFoundError
        If the CSV does not exist.
    ValueError
        If the CSV lists no images, a header lacks a path or label column or looks like a header without
        recognised names, a row has the wrong number of values, an unknown split or a NUL byte in its path, a path
        lies outside ``root`` (without ``allow_outside``), a file is listed with conflicting labels or splits, a
        label is missing from ``classes.txt`` or ``classes.txt`` is not UTF-8 or gives two classes one name.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file {csv_path} does not exist; pass --csv FILE with rows path,label[,split]")
    root = Path(root).expanduser() if root else csv_path.parent
    # utf-8-sig: the byte-order mark Excel writes is not part of the first column's name. surrogateescape: a
    # name that is not UTF-8 keeps its exact bytes (os.fsencode gives them back when the file is opened).
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    columns = _csv_header(rows[0][1], csv_path) if rows else None
    if columns is not None:
        rows = rows[1:]
    elif rows:
        _refuse_unnamed_header(rows[0][1], csv_path, root)
    if not rows:
        raise UserError(f"{csv_path} lists no images; expected rows path,label[,split]")
    entries = _csv_entries(rows, columns, csv_path, ListedPaths(root, allow_outside))
    classes_file = csv_path.parent / "classes.txt"
    names = sorted({label for _, _, label in entries if label})
    if classes_file.is_file():
        classes, shown = _read_classes_file(classes_file)
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise UserError(f"labels {unknown} in {csv_path} are not listed in {classes_file}; add them")
    else:
        classes, shown = names, _label_display_names(names)
    index = {name: i for i, name in enumerate(classes)}
    entries.sort(key=lambda e: (SPLITS.index(e[0]), e[1]))
    return ImageSet(root=root, ids=[e[1] for e in entries], splits=[e[0] for e in entries],
                    labels=np.asarray([index[lab] if lab else -1 for _, _, lab in entries], dtype=np.int64),
                    classes=classes, display_names=shown)


def _csv_header(cells: list[str], csv_path: Path) -> dict[str, int] | None:
    """``{"path": i, "label": j[, "split": k], "width": n}`` when ``cells`` name a path column, else None."""
    roles = {"path": PATH_COLUMNS, "label": LABEL_COLUMNS, "split": SPLIT_COLUMNS}
    names = [c.strip().lower() for c in cells]
    found: dict[str, int] = {}
    for role, accepted in roles.items():
        where = [i for i, name in enumerate(names) if name in accepted]
        if len(where) > 1:
            raise UserError(f"{csv_path} has two {role} columns ({', '.join(cells[i].strip() for i in where)}); "
                             "keep one")
        if where:
            found[role] = where[0]
    if "path" not in found:
        return None
    if "label" not in found:
        raise UserError(f"{csv_path} has no label column (header: {','.join(c.strip() for c in cells)}); add one "
                         f"named one of {', '.join(LABEL_COLUMNS)}, empty where the label is unknown")
    ignored = [cells[i].strip() for i in range(len(cells)) if i not in found.values()]
    if ignored:
        log.info("%s: ignoring columns %s", csv_path, ignored)
    return {**found, "width": len(cells)}


def _refuse_unnamed_header(cells: list[str], csv_path: Path, root: Path) -> None:
    """Refuse a first row that is a header with other names: it would become a phantom class and a failed image."""
    first = cells[0].strip()
    if Path(first).suffix.lower() in IMAGE_EXTENSIONS or (root / first).is_file():
        return
    raise UserError(f"{csv_path}: first row {','.join(c.strip() for c in cells)!r} looks like a header with "
                     f"unrecognised column names; {_COLUMN_HELP} (or remove the row)")


def _csv_entries(rows: list[tuple[int, list[str]]], columns: dict[str, int] | None, csv_path: Path,
                 listed: ListedPaths) -> list[tuple[str, str, str]]:
    """``(split, id, label)`` once per file; rows outside the folder refused (unless allowed), conflicting
    duplicates refused, exact ones dropped with a warning."""
    seen: dict[str, list[tuple[int, str, str, str]]] = {}  # id -> (line, label, split, path) of every row naming it
    entries = []
    for line, row in rows:
        if columns is None:
            if len(row) < 2 or len(row) > 3:
                raise UserError(f"{csv_path} row {line}: expected path,label[,split], got {row}")
            cells = {"path": row[0], "label": row[1], "split": row[2] if len(row) == 3 else ""}
        else:
            if len(row) > columns["width"]:
                raise UserError(f"{csv_path} row {line}: expected {columns['width']} values (the header's "
                                 f"columns), got {len(row)}: {row}; quote values that contain commas")
            cells = {role: row[i] if i < len(row) else "" for role, i in columns.items() if role != "width"}
        path, label, split = cells["path"].strip(), cells["label"].strip(), cells.get("split", "").strip()
        if not path:
            raise UserError(f"{csv_path} row {line}: the path is empty; every row needs an image path")
        split = split or ("train" if label else "unlabeled")
        if split not in SPLITS:
            raise UserError(f"{csv_path} row {line}: split {split!r} must be one of {list(SPLITS)}")
        id_ = listed.id_of(path, csv_path, line)
        if id_ not in seen:
            entries.append((split, id_, label))
        seen.setdefault(id_, []).append((line, label, split, path))
    listed.check()
    conflicts = {i: uses for i, uses in seen.items() if len({u[1:3] for u in uses}) > 1}
    if conflicts:
        shown = [f"{i} ({'; '.join(_use(i, *use) for use in uses)})" for i, uses in list(conflicts.items())[:5]]
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        n = len(conflicts)
        raise UserError(f"{csv_path}: {n} path{' is' if n == 1 else 's are'} listed more than once with different "
                         f"labels or splits: {', '.join(shown)}{more}; keep one row per path")
    repeats = [(i, line) for i, uses in seen.items() for line, *_ in uses[1:]]
    if repeats:
        shown = ", ".join(f"{i} (row {line})" for i, line in repeats[:5])
        log.warning("%s: %d row%s an earlier one and %s skipped: %s%s", csv_path, len(repeats),
                    " repeats" if len(repeats) == 1 else "s repeat", "is" if len(repeats) == 1 else "are", shown,
                    f" and {len(repeats) - 5} more" if len(repeats) > 5 else "")
    return entries


def _use(id_: str, line: int, label: str, split: str, path: str) -> str:
    """One row naming a file, for a message: its line, label and split, and the name it gives the file when that is
    another (a link to it)."""
    other = Path(os.path.normpath(path)).as_posix() != id_
    return f"row {line}: {label or _NO_LABEL} {split}" + (f" (as {display_id(path)})" if other else "")
