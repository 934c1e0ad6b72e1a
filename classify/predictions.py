"""The predictions CSV users hand in: ids as Kaggle wants them (``--id-format``), rows in a sample submission's
order (``--order``)."""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np
from store.outputs import read_csv
from store.validation import UserError

log = logging.getLogger(__name__)


ID_FORMATS = ("relpath", "name", "stem")


def format_ids(ids, id_format: str = "relpath") -> list[str]:
    """Image ids as a predictions CSV names them: ``relpath`` (the store's id, ``test/a/0001.png``), ``name``
    (``0001.png``) or ``stem`` (``0001``); ids that become equal are refused, naming a few.

    ``relpath`` never writes an absolute path: the CSV is handed to others, and would show where this machine keeps
    files. ``embed run`` stores ids relative to the data folder (``../photos/x.png`` for a file listed outside it
    with ``--allow-outside``); an absolute id (a store made before that) is refused, asking for ``name`` or
    ``stem``, which write only the file name.
    """
    if id_format not in ID_FORMATS:
        raise UserError(f"--id-format must be one of {', '.join(ID_FORMATS)}, got {id_format!r}")
    paths = [PurePosixPath(str(i)) for i in ids]
    absolute = [str(p) for p in paths if p.is_absolute()]
    if id_format == "relpath" and absolute:
        raise UserError(f"{len(absolute)} image id(s) are absolute paths of this machine (e.g. {absolute[0]}), which "
                        "--id-format relpath would write into the predictions; pass --id-format name (or stem), or "
                        "embed the data again with this version (ids relative to the data folder)")
    shown = [str(p) if id_format == "relpath" else p.name if id_format == "name" else p.stem for p in paths]
    if len(set(shown)) < len(shown):
        seen: dict[str, str] = {}
        clashes = []
        for original, value in zip(ids, shown):
            if value in seen:
                clashes.append(f"{seen[value]} and {original}")
            seen.setdefault(value, str(original))
        raise UserError(f"--id-format {id_format} gives {len(clashes)} images the id of another ("
                         f"{'; '.join(clashes[:3])}{' ...' if len(clashes) > 3 else ''}); use --id-format relpath")
    return shown


def read_order(path: str, header: list[str]) -> tuple[list[str], list[str]]:
    """The ids of a sample submission (its first column, after the header row) and the id and label column names
    it uses (``header`` where it has fewer than two columns). Cells are read as the suite writes them
    (:func:`store.outputs.csv_value`): a predictions CSV of ``classify predict`` gives back its exact ids."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"--order file {source} does not exist; pass the sample_submission.csv to follow")
    with source.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        rows = [row for row in read_csv(handle) if row and any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise UserError(f"--order file {source} lists no ids; expected a header row, then one id per row")
    names = [cell.strip() for cell in rows[0]]
    header = [names[0], names[1] if len(names) > 1 and names[1] else header[1]]
    return [row[0].strip() for row in rows[1:]], header


def rows_in_order(ids: list[str], wanted: list[str], order: str, split: str, store: str) -> np.ndarray:
    """Row of each wanted id, in the wanted order; ids missing from the split are refused, naming a few."""
    where = {value: i for i, value in enumerate(ids)}
    missing = [value for value in wanted if value not in where]
    if missing:
        raise UserError(f"{len(missing)} of the {len(wanted)} ids of {order} are not in the {split} split of "
                         f"{store}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; check --id-format "
                         f"(these ids look like {ids[0]!r}) and --split")
    extra = len(ids) - len(set(wanted))
    if extra > 0:
        log.info("%d images of the %s split are not in %s and are left out", extra, split, order)
    return np.asarray([where[value] for value in wanted], dtype=np.int64)
