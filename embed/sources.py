"""Image sources: the challenge folder layout, a CSV list, and the built-in demo (scikit-learn digits as files).

Every source becomes an :class:`ImageSet`: ids (paths relative to the data root, POSIX style), splits, labels
(-1 unknown) and class names, in a deterministic order (sorted by split, then id).
"""
from __future__ import annotations

import csv
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.images import IMAGE_EXTENSIONS
from store import SPLITS

log = logging.getLogger(__name__)

DEMO_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class ImageSet:
    """The images of one dataset, in store row order."""

    root: Path
    ids: list[str]
    splits: list[str]
    labels: np.ndarray  # (N,) int64, -1 unknown
    classes: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def paths(self) -> list[Path]:
        """Absolute path of every image."""
        return [self.root / i for i in self.ids]


def _find_images(*folders: Path) -> list[Path]:
    """Every image file under ``folders``, recursively, hidden files and folders skipped, sorted.

    Nothing is opened, only listed and stat'ed. A file counts when its name has an image extension and it is not
    a directory: regular files, and also broken links, FIFOs and devices, which `load_image` reports as errors
    without reading them (a pipe would block, ``/dev/zero`` never ends). Every directory is searched once: the
    real folders first, then directory symlinks, each followed only when it leads to a directory not searched
    yet and not an ancestor of ``folders`` (a loop like ``train/zero/up -> ..`` would otherwise list every
    image again under ``zero``, and a link to ``/`` would search the whole disk). Paths keep the names they
    were found by (``train/cat/more/x.png`` for a link ``train/cat/more``), so a linked folder's images take
    the label of the folder holding the link.
    """
    # Directories are identified by (device, inode): two names for one directory (a link, a bind mount) match.
    searched: set[tuple[int, int]] = set()
    ancestors: set[tuple[int, int]] = set()
    for folder in folders:
        for parent in Path(os.path.realpath(folder)).parents:
            ancestors.add(_identity(os.stat(parent)))
    found: list[Path] = []
    # The real trees of every start folder first, so that a link into one of them is seen as searched already;
    # links found while searching a linked folder queue behind those found before them.
    pending: deque[Path] = deque(Path(f) for f in folders)
    links: deque[Path] = deque()
    while pending or links:
        if pending:
            top = pending.popleft()
        else:
            top = links.popleft()
            try:
                key = _identity(os.stat(top))
            except OSError as exc:
                log.warning("skipping the link %s: %s", top, exc.strerror or exc)
                continue
            if key in searched or key in ancestors:
                log.warning("not following the link %s -> %s: it leads to a folder already searched, or to one "
                            "that holds the data", top, os.readlink(top))
                continue
        found += _search_tree(top, searched, links)
    return sorted(found)


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _search_tree(top: Path, searched: set[tuple[int, int]], links: deque[Path]) -> list[Path]:
    """Image files under ``top`` without following links; directory links found are appended to ``links``."""
    found = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            key = _identity(os.stat(folder))
            if key in searched:  # a bind mount, or a start folder given twice
                continue
            searched.add(key)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s; its images are skipped", folder, exc.strerror or exc)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(path)
                elif entry.is_symlink() and entry.is_dir():
                    links.append(path)
                elif path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(path)
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror or exc)
        stack += reversed(subfolders)  # depth first, in name order: links are queued in a predictable order
    return found


def _class_folders(train: Path) -> list[str]:
    """The class folders in ``train``, sorted; a link that `_find_images` would not follow is no class."""
    folders = sorted((d for d in train.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    taken = {_identity(d.stat()) for d in folders if not d.is_symlink()}
    real_train = Path(os.path.realpath(train))
    taken |= {_identity(os.stat(p)) for p in (real_train, *real_train.parents)}
    names = []
    for folder in folders:
        if folder.is_symlink():
            key = _identity(folder.stat())
            if key in taken:  # its images are found (and labelled) in the folder it leads to, or it loops
                log.warning("%s -> %s is not a class folder: it leads to one already listed, or to one that holds "
                            "the data", folder, os.readlink(folder))
                continue
            taken.add(key)
        names.append(folder.name)
    return names


def _read_classes_file(path: Path) -> tuple[list[str], list[str]]:
    """``classes.txt``: one class per line in index order, ``<folder>`` or ``<folder>,<display name>``."""
    folders, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        folder, _, name = line.partition(",")
        folders.append(folder.strip())
        names.append(name.strip() or folder.strip().replace("_", " "))
    if len(set(folders)) != len(folders):
        raise ValueError(f"{path} lists a class twice; each line must name a different class folder")
    return folders, names


#: folders of labeled images for model selection (Hugging Face's and Keras' names): read as labeled train rows
VALIDATION_FOLDERS = ("validation", "val")
#: Hugging Face imagefolder's file of per-image metadata (``file_name`` and optional ``label`` columns)
METADATA = "metadata.csv"


def is_validation_id(image_id: str) -> bool:
    """Whether an image id comes from ``validation/`` or ``val/``: labeled train rows a user set apart for model
    selection (see :func:`from_folder`)."""
    return str(image_id).split("/", 1)[0] in VALIDATION_FOLDERS


def from_folder(root: str | Path) -> ImageSet:
    """Images of a folder, in the first of these layouts that fits.

    - The challenge layout: ``train/<class>/…`` labeled, ``unlabeled/…`` pool, ``test/…`` to predict;
      ``test/<class>/…`` subfolders named like a training class carry test labels; other test images are unlabeled.
      ``validation/<class>/…`` and ``val/<class>/…`` are labeled train rows too (split ``train``); their ids keep
      the folder name, so that model selection can tell them apart (:func:`is_validation_id`).
    - Hugging Face imagefolder: a ``metadata.csv`` in the folder or in its split folders (see
      :func:`from_imagefolder`).
    - torchvision ImageFolder: ``<class>/…`` folders and none of the names above: every image is a labeled train
      row (no pool, no test split).

    Other folders are ignored with one warning each. Class names come from ``classes.txt`` at the root when present
    (see :func:`_read_classes_file`), else from the class folder names with ``_`` read as a space.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; pass --data DIR with train/<class>/ images "
                                "(or --csv FILE)")
    known = (*SPLITS, *VALIDATION_FOLDERS)
    if (root / METADATA).is_file() or any((root / name / METADATA).is_file() for name in known):
        return from_imagefolder(root)
    train = root / "train"
    if not train.is_dir():
        if any((root / name).is_dir() for name in known):
            raise ValueError(f"{root} has no train/ folder; expected train/<class>/*, unlabeled/*, test/* "
                             "(or pass --csv FILE with path,label[,split])")
        nested = sorted(d for d in root.iterdir() if d.is_dir() and any((d / name).is_dir() for name in known))
        if nested:  # the folder above the data, not an ImageFolder whose classes hold split folders
            raise ValueError(f"{root} has no train/ folder, but {nested[0]} has split folders: pass --data "
                             f"{nested[0]}")
        return _from_class_folders(root)
    _warn_ignored(root, known)
    folders = _class_folders(train)
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        listed, classes = _read_classes_file(classes_file)
        missing = sorted(set(folders) - set(listed))
        if missing:
            raise ValueError(f"train/ has class folders missing from {classes_file}: {missing}; add them")
        folders = listed
    else:
        classes = [f.replace("_", " ") for f in folders]
    if not folders:
        raise ValueError(f"{train} has no class folders; put labeled images in train/<class>/")
    index = {f: i for i, f in enumerate(folders)}
    ids, splits, labels = [], [], []
    # One search over all splits: a link from one split into another is then seen as a folder already listed.
    found = _find_images(*(root / name for name in known if (root / name).is_dir()))
    for rel in sorted((path.relative_to(root) for path in found), key=lambda rel: _split_of(rel.parts[0])):
        top, parts = rel.parts[0], rel.parts
        split = "train" if top in VALIDATION_FOLDERS else top
        label = index.get(parts[1], -1) if len(parts) > 2 and split in ("train", "test") else -1
        if split == "train" and label < 0:
            if top in VALIDATION_FOLDERS and len(parts) > 2:
                raise ValueError(f"{rel}: {top}/{parts[1]}/ is not a class of train/ ({', '.join(folders)}); "
                                 f"rename the folder or add the class to train/")
            raise ValueError(f"{rel} is not inside a class folder; move it to {top}/<class>/ (or to unlabeled/)")
        ids.append(rel.as_posix())
        splits.append(split)
        labels.append(label)
    if not ids:
        raise ValueError(f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSet(root=root, ids=ids, splits=splits, labels=np.asarray(labels, dtype=np.int64), classes=classes)


def _split_of(folder: str) -> int:
    """Sort key of a top folder: its split's position (validation folders are train rows)."""
    return SPLITS.index("train" if folder in VALIDATION_FOLDERS else folder)


def _warn_ignored(root: Path, known: tuple[str, ...]) -> None:
    """One warning per folder under ``root`` the layout does not read, and one for images lying in ``root``."""
    loose = 0
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in known:
            continue
        if entry.is_dir():
            log.warning("ignoring %s/: not a folder the suite reads (%s)", entry,
                        ", ".join(f"{name}/" for name in known))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            loose += 1
    if loose:
        log.warning("ignoring %d image(s) directly in %s: put them in train/<class>/, unlabeled/ or test/", loose,
                    root)


def _from_class_folders(root: Path) -> ImageSet:
    """torchvision's ImageFolder layout, ``<class>/…`` only: every image a labeled train row."""
    folders = _class_folders(root)
    if not folders:
        raise ValueError(f"{root} has no train/ folder and no class folders; expected train/<class>/*, "
                         "unlabeled/*, test/* or <class>/* (or pass --csv FILE with path,label[,split])")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        listed, classes = _read_classes_file(classes_file)
        missing = sorted(set(folders) - set(listed))
        if missing:
            raise ValueError(f"{root} has class folders missing from {classes_file}: {missing}; add them")
        folders = listed
    else:
        classes = [f.replace("_", " ") for f in folders]
    _warn_ignored(root, tuple(folders))
    index = {f: i for i, f in enumerate(folders)}
    found = _find_images(*(root / f for f in folders if (root / f).is_dir()))
    ids = [path.relative_to(root).as_posix() for path in found]
    if not ids:
        raise ValueError(f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    log.info("%s: no train/ folder, read as torchvision's ImageFolder (%d class folders): every image is a labeled "
             "train row", root, len(folders))
    return ImageSet(root=root, ids=ids, splits=["train"] * len(ids),
                    labels=np.asarray([index[i.split("/", 1)[0]] for i in ids], dtype=np.int64), classes=classes)


def from_imagefolder(root: str | Path) -> ImageSet:
    """Hugging Face's imagefolder layout: ``metadata.csv`` files with a ``file_name`` column (paths relative to the
    CSV's folder) and an optional ``label`` column (class names).

    A ``metadata.csv`` may sit in the data folder or in a split folder (``train/``, ``validation/`` or ``val/``,
    ``test/``, ``unlabeled/``). A row's split is its ``split`` column, else the split folder it is in (validation
    folders give labeled train rows, as in :func:`from_folder`), else train when labeled and unlabeled when not. A row
    without a label takes the class of its folder when it sits in ``<split>/<class>/`` or ``<class>/`` (imagefolder
    infers labels so) and that class is labeled elsewhere; else it is unknown. Only the files listed are read. Split
    folders without a ``metadata.csv`` are read as in the challenge layout. Classes: ``classes.txt`` when present,
    else the sorted label names.
    """
    root = Path(root).expanduser()
    known = (*SPLITS, *VALIDATION_FOLDERS)
    rows: list[tuple[str, str, str]] = []  # (split or "", id, label name or "")
    for folder in [root] + [root / name for name in known]:
        metadata = folder / METADATA
        if metadata.is_file():
            rows += _metadata_rows(metadata, root, "" if folder == root else _split_name(folder.name))
        elif folder != root and folder.is_dir() and not (root / METADATA).is_file():  # root's lists every file
            rows += [(_split_name(folder.name), p.relative_to(root).as_posix(), "") for p in _find_images(folder)]
    _warn_ignored(root, known)
    rows = [(split or _split_name(id_.split("/", 1)[0]) if "/" in id_ else split, id_, label)
            for split, id_, label in rows]
    # imagefolder infers labels from folders: <split>/<class>/x of a train split names a class; a train or test row
    # (or one of no split) without a label takes its folder's name when that is a class
    folder_classes = {_parent(id_) for split, id_, label in rows
                      if split == "train" and not label and id_.count("/") >= 2 and id_.split("/")[0] in known}
    names = {label for _, _, label in rows if label} | folder_classes
    rows = [(split, id_, label or (_parent(id_) if split != "unlabeled" and _parent(id_) in names else ""))
            for split, id_, label in rows]
    rows = [(split or ("train" if label else "unlabeled"), id_, label) for split, id_, label in rows]
    for split, id_, label in rows:
        if split == "train" and not label:
            raise ValueError(f"{id_} is a train row without a label; give it one in {METADATA}'s label column, "
                             "put it in train/<class>/, or list it with split unlabeled")
    if not rows:
        raise ValueError(f"{root}: {METADATA} lists no images")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        listed, classes = _read_classes_file(classes_file)
        unknown = sorted(names - set(listed))
        if unknown:
            raise ValueError(f"labels {unknown} in {root}'s {METADATA} are not listed in {classes_file}; add them")
        index = {name: i for i, name in enumerate(listed)}
    else:
        classes = sorted(names)
        index = {name: i for i, name in enumerate(classes)}
    seen: dict[str, tuple[str, str]] = {}
    for split, id_, label in rows:
        if seen.setdefault(id_, (split, label)) != (split, label):
            raise ValueError(f"{root}: {id_} is listed twice with different labels or splits; keep one row")
    entries = sorted(set(rows), key=lambda e: (SPLITS.index(e[0]), e[1]))
    log.info("%s: read as a Hugging Face imagefolder (%s)", root, METADATA)
    return ImageSet(root=root, ids=[e[1] for e in entries], splits=[e[0] for e in entries],
                    labels=np.asarray([index[lab] if lab else -1 for _, _, lab in entries], dtype=np.int64),
                    classes=classes)


def _split_name(folder: str) -> str:
    """The split of a top folder (validation folders hold labeled train rows); "" for other folders."""
    return "train" if folder in VALIDATION_FOLDERS else folder if folder in SPLITS else ""


def _parent(image_id: str) -> str:
    parts = image_id.split("/")
    return parts[-2] if len(parts) > 1 else ""


def _metadata_rows(metadata: Path, root: Path, default_split: str) -> list[tuple[str, str, str]]:
    """``(split, id, label)`` of each row of an imagefolder ``metadata.csv`` (ids relative to ``root``)."""
    with metadata.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{metadata} is empty; expected a header with a file_name column")
        names = [h.strip().lower() for h in header]
        path_col = next((names.index(n) for n in PATH_COLUMNS if n in names), None)
        if path_col is None:
            raise ValueError(f"{metadata} has no file_name column (header: {','.join(header)}); Hugging Face's "
                             f"imagefolder names it file_name ({_COLUMN_HELP})")
        label_col = next((names.index(n) for n in LABEL_COLUMNS if n in names), None)
        split_col = names.index("split") if "split" in names else None
        rows = []
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            def cell(i, row=row):
                return row[i].strip() if i is not None and i < len(row) else ""

            split = cell(split_col)
            if split and not _split_name(split):
                raise ValueError(f"{metadata} row {reader.line_num}: split {split!r} must be one of "
                                 f"{list(SPLITS) + list(VALIDATION_FOLDERS)}")
            if not cell(path_col):
                raise ValueError(f"{metadata} row {reader.line_num}: the file_name is empty")
            path = Path(cell(path_col))
            id_ = _relative_id(path, root) if path.is_absolute() else (metadata.parent.relative_to(root) / path)
            rows.append((_split_name(split) if split else default_split, Path(id_).as_posix(), cell(label_col)))
    return rows


# Column names recognised in a CSV header (case-insensitive), the common ones of image datasets; Hugging Face
# imagefolder's metadata.csv names its path column file_name.
PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "category", "target")
SPLIT_COLUMNS = ("split",)
_NO_LABEL = "(no label)"
_COLUMN_HELP = (f"name the path column one of {', '.join(PATH_COLUMNS)}, the label column one of "
                f"{', '.join(LABEL_COLUMNS)} and the optional split column split")


def from_csv(csv_path: str | Path, root: str | Path | None = None) -> ImageSet:
    """A CSV of images and labels; paths relative to ``root`` (default: the CSV's folder).

    With a header, columns are found by name, case-insensitive, in any order: the path (one of `PATH_COLUMNS`,
    e.g. ``path``, ``filename``, ``file_name`` as in Hugging Face's ``metadata.csv``), the label (one of
    `LABEL_COLUMNS`, e.g. ``label``, ``class``) and optionally ``split``; other columns are ignored. Without a
    header, rows are positional: ``path,label[,split]``.

    ``label`` is a class name, or empty for unknown; ``split`` defaults to train when labeled, else unlabeled.
    Classes come from ``classes.txt`` beside the CSV when present, else the sorted distinct labels. The file is
    read as UTF-8 (a byte-order mark is skipped); bytes that are not UTF-8 are kept as the exact bytes of the
    file name (Python's ``surrogateescape``).

    A path listed twice with the same label and split is kept once, with a warning; with different labels or
    splits the CSV is refused, listing the rows.

    Raises
    ------
    FileNotFoundError
        If the CSV does not exist.
    ValueError
        If the CSV lists no images, a header lacks a path or label column or looks like a header without
        recognised names, a row has the wrong number of values or an unknown split, a path is listed with
        conflicting labels or splits, or a label is missing from ``classes.txt``.
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
        raise ValueError(f"{csv_path} lists no images; expected rows path,label[,split]")
    entries = _csv_entries(rows, columns, csv_path, root)
    classes_file = csv_path.parent / "classes.txt"
    names = sorted({label for _, _, label in entries if label})
    if classes_file.is_file():
        listed, classes = _read_classes_file(classes_file)
        unknown = sorted(set(names) - set(listed))
        if unknown:
            raise ValueError(f"labels {unknown} in {csv_path} are not listed in {classes_file}; add them")
        index = {name: i for i, name in enumerate(listed)}
    else:
        classes = names
        index = {name: i for i, name in enumerate(names)}
    entries.sort(key=lambda e: (SPLITS.index(e[0]), e[1]))
    return ImageSet(root=root, ids=[e[1] for e in entries], splits=[e[0] for e in entries],
                    labels=np.asarray([index[lab] if lab else -1 for _, _, lab in entries], dtype=np.int64),
                    classes=classes)


def _csv_header(cells: list[str], csv_path: Path) -> dict[str, int] | None:
    """``{"path": i, "label": j[, "split": k], "width": n}`` when ``cells`` name a path column, else None."""
    roles = {"path": PATH_COLUMNS, "label": LABEL_COLUMNS, "split": SPLIT_COLUMNS}
    names = [c.strip().lower() for c in cells]
    found: dict[str, int] = {}
    for role, accepted in roles.items():
        where = [i for i, name in enumerate(names) if name in accepted]
        if len(where) > 1:
            raise ValueError(f"{csv_path} has two {role} columns ({', '.join(cells[i].strip() for i in where)}); "
                             "keep one")
        if where:
            found[role] = where[0]
    if "path" not in found:
        return None
    if "label" not in found:
        raise ValueError(f"{csv_path} has no label column (header: {','.join(c.strip() for c in cells)}); add one "
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
    raise ValueError(f"{csv_path}: first row {','.join(c.strip() for c in cells)!r} looks like a header with "
                     f"unrecognised column names; {_COLUMN_HELP} (or remove the row)")


def _csv_entries(rows: list[tuple[int, list[str]]], columns: dict[str, int] | None, csv_path: Path,
                 root: Path) -> list[tuple[str, str, str]]:
    """``(split, id, label)`` once per path; conflicting duplicates refused, exact ones dropped with a warning."""
    seen: dict[str, list[tuple[int, str, str]]] = {}  # id -> (line, label, split) of every row naming it
    entries = []
    for line, row in rows:
        if columns is None:
            if len(row) < 2 or len(row) > 3:
                raise ValueError(f"{csv_path} row {line}: expected path,label[,split], got {row}")
            cells = {"path": row[0], "label": row[1], "split": row[2] if len(row) == 3 else ""}
        else:
            if len(row) > columns["width"]:
                raise ValueError(f"{csv_path} row {line}: expected {columns['width']} values (the header's "
                                 f"columns), got {len(row)}: {row}; quote values that contain commas")
            cells = {role: row[i] if i < len(row) else "" for role, i in columns.items() if role != "width"}
        path, label, split = cells["path"].strip(), cells["label"].strip(), cells.get("split", "").strip()
        if not path:
            raise ValueError(f"{csv_path} row {line}: the path is empty; every row needs an image path")
        split = split or ("train" if label else "unlabeled")
        if split not in SPLITS:
            raise ValueError(f"{csv_path} row {line}: split {split!r} must be one of {list(SPLITS)}")
        id_ = _relative_id(Path(path), root)
        if id_ not in seen:
            entries.append((split, id_, label))
        seen.setdefault(id_, []).append((line, label, split))
    conflicts = {i: uses for i, uses in seen.items() if len({u[1:] for u in uses}) > 1}
    if conflicts:
        shown = [f"{i} ({'; '.join(f'row {line}: {label or _NO_LABEL} {split}' for line, label, split in uses)})"
                 for i, uses in list(conflicts.items())[:5]]
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        n = len(conflicts)
        raise ValueError(f"{csv_path}: {n} path{' is' if n == 1 else 's are'} listed more than once with different "
                         f"labels or splits: {', '.join(shown)}{more}; keep one row per path")
    repeats = [(i, line) for i, uses in seen.items() for line, _, _ in uses[1:]]
    if repeats:
        shown = ", ".join(f"{i} (row {line})" for i, line in repeats[:5])
        log.warning("%s: %d row%s an earlier one and %s skipped: %s%s", csv_path, len(repeats),
                    " repeats" if len(repeats) == 1 else "s repeat", "is" if len(repeats) == 1 else "are", shown,
                    f" and {len(repeats) - 5} more" if len(repeats) > 5 else "")
    return entries


def _relative_id(path: Path, root: Path) -> str:
    """An id relative to ``root`` when the path lies under it; absolute paths elsewhere stay absolute."""
    if path.is_absolute() and path.is_relative_to(root):
        path = path.relative_to(root)
    return path.as_posix()


def write_demo(folder: str | Path, shots: int = 15, test_per_class: int = 36, size: int = 32, seed: int = 0) -> Path:
    """Write scikit-learn's digits (1,797 real 8×8 scans) as PNG files in the challenge layout.

    ``shots`` labeled training images and ``test_per_class`` labeled test images per class; the rest become the
    unlabeled pool. Idempotent: an existing complete demo folder is reused.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = Path(folder).expanduser()
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    taken = {c: 0 for c in range(10)}
    for i in order:
        c = int(digits.target[i])
        k = taken[c]
        taken[c] += 1
        if k < test_per_class:
            out = folder / "test" / DEMO_CLASSES[c] / f"{i:04d}.png"
        elif k < test_per_class + shots:
            out = folder / "train" / DEMO_CLASSES[c] / f"{i:04d}.png"
        else:
            out = folder / "unlabeled" / f"{i:04d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        pixels = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)  # dark ink on white paper, like a scan
        Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(out)
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in DEMO_CLASSES))  # index = the digit
    marker.write_text("scikit-learn digits\n")
    log.info("wrote the demo dataset (scikit-learn digits) to %s", folder)
    return folder
