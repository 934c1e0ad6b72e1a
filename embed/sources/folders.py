"""Folder layouts: split folders ``train/<class>/``, ``unlabeled/``, ``test/`` (+ ``validation/``), Hugging Face
imagefolder (``metadata.csv``) and torchvision ImageFolder (``<class>/`` only)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from embed.images import IMAGE_EXTENSIONS
from embed.sources.csvlist import _COLUMN_HELP, LABEL_COLUMNS, PATH_COLUMNS
from embed.sources.files import (ImageSet, ListedPaths, _class_folders, _display_names, _find_images,
                                 _label_display_names, _read_classes_file, _split_name, _warn_ignored)
from store.layout import SPLITS, VALIDATION_FOLDERS
from store.validation import UserError

log = logging.getLogger(__name__)


#: Hugging Face imagefolder's file of per-image metadata (``file_name`` and optional ``label`` columns)
METADATA = "metadata.csv"


def from_folder(root: str | Path, allow_outside: bool = False) -> ImageSet:
    """Images of a folder, in the first of these layouts that fits.

    - Split folders: ``train/<class>/…`` labeled, ``unlabeled/…`` pool, ``test/…`` to predict;
      ``test/<class>/…`` subfolders named like a training class carry test labels; other test images are unlabeled.
      ``validation/<class>/…`` and ``val/<class>/…`` are labeled train rows too (split ``train``); their ids keep
      the folder name, so that model selection can tell them apart (:func:`store.layout.is_validation_id`).
    - Hugging Face imagefolder: a ``metadata.csv`` in the folder or in its split folders (see
      :func:`from_imagefolder`; ``allow_outside`` lets its rows name files outside ``root``).
    - torchvision ImageFolder: ``<class>/…`` folders and none of the names above: every image is a labeled train
      row (no pool, no test split).

    Other folders are ignored with one warning each. Class ids are the class folder names, exactly; their display
    names (CLIP prompts, pages) come from ``classes.txt`` at the root when present (see :func:`_read_classes_file`;
    it also sets the class order), else from the folder names with ``_`` read as a space; two classes with one
    display name are refused.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; pass --data DIR with train/<class>/ images "
                                "(or --csv FILE)")
    known = (*SPLITS, *VALIDATION_FOLDERS)
    if (root / METADATA).is_file() or any((root / name / METADATA).is_file() for name in known):
        return from_imagefolder(root, allow_outside)
    train = root / "train"
    if not train.is_dir():
        if any((root / name).is_dir() for name in known):
            raise UserError(f"{root} has no train/ folder; expected train/<class>/*, unlabeled/*, test/* "
                             "(or pass --csv FILE with path,label[,split])")
        nested = sorted(d for d in root.iterdir() if d.is_dir() and any((d / name).is_dir() for name in known))
        if nested:  # the folder above the data, not an ImageFolder whose classes hold split folders
            raise UserError(f"{root} has no train/ folder, but {nested[0]} has split folders: pass --data "
                             f"{nested[0]}")
        return _from_class_folders(root)
    _warn_ignored(root, known)
    folders = _class_folders(train)
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        listed, names = _read_classes_file(classes_file)
        missing = sorted(set(folders) - set(listed))
        if missing:
            raise UserError(f"train/ has class folders missing from {classes_file}: {missing}; add them")
        folders = listed
    else:
        names = _display_names(folders, root)
    if not folders:
        raise UserError(f"{train} has no class folders; put labeled images in train/<class>/")
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
                raise UserError(f"{rel}: {top}/{parts[1]}/ is not a class of train/ ({', '.join(folders)}); "
                                 f"rename the folder or add the class to train/")
            raise UserError(f"{rel} is not inside a class folder; move it to {top}/<class>/ (or to unlabeled/)")
        ids.append(rel.as_posix())
        splits.append(split)
        labels.append(label)
    if not ids:
        raise UserError(f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSet(root=root, ids=ids, splits=splits, labels=np.asarray(labels, dtype=np.int64), classes=folders,
                    display_names=names)


def _split_of(folder: str) -> int:
    """Sort key of a top folder: its split's position (validation folders are train rows)."""
    return SPLITS.index("train" if folder in VALIDATION_FOLDERS else folder)


def _from_class_folders(root: Path) -> ImageSet:
    """torchvision's ImageFolder layout, ``<class>/…`` only: every image a labeled train row."""
    folders = _class_folders(root)
    if not folders:
        raise UserError(f"{root} has no train/ folder and no class folders; expected train/<class>/*, "
                         "unlabeled/*, test/* or <class>/* (or pass --csv FILE with path,label[,split])")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        listed, names = _read_classes_file(classes_file)
        missing = sorted(set(folders) - set(listed))
        if missing:
            raise UserError(f"{root} has class folders missing from {classes_file}: {missing}; add them")
        folders = listed
    else:
        names = _display_names(folders, root)
    _warn_ignored(root, tuple(folders))
    index = {f: i for i, f in enumerate(folders)}
    found = _find_images(*(root / f for f in folders if (root / f).is_dir()))
    ids = [path.relative_to(root).as_posix() for path in found]
    if not ids:
        raise UserError(f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    log.info("%s: no train/ folder, read as torchvision's ImageFolder (%d class folders): every image is a labeled "
             "train row", root, len(folders))
    return ImageSet(root=root, ids=ids, splits=["train"] * len(ids),
                    labels=np.asarray([index[i.split("/", 1)[0]] for i in ids], dtype=np.int64), classes=folders,
                    display_names=names)


def from_imagefolder(root: str | Path, allow_outside: bool = False) -> ImageSet:
    """Hugging Face's imagefolder layout: ``metadata.csv`` files with a ``file_name`` column (paths relative to the
    CSV's folder) and an optional ``label`` column (class names).

    A ``metadata.csv`` may sit in the data folder or in a split folder (``train/``, ``validation/`` or ``val/``,
    ``test/``, ``unlabeled/``). A row's split is its ``split`` column, else the split folder it is in (validation
    folders give labeled train rows, as in :func:`from_folder`), else train when labeled and unlabeled when not. A row
    without a label takes the class of its folder when it sits in ``<split>/<class>/`` or ``<class>/`` (imagefolder
    infers labels so) and that class is labeled elsewhere; else it is unknown. Only the files listed are read. Split
    folders without a ``metadata.csv`` are read as in the split-folder layout. Classes: ``classes.txt`` when present,
    else the sorted label names.

    A dataset is often someone else's: a listed file must lie inside ``root`` once resolved (no ``../``, no absolute
    path elsewhere, no link that leads out), unless ``allow_outside``; see
    :class:`~embed.sources.files.ListedPaths`. A file listed twice (two spellings, a link and its target) is one
    row.
    """
    root = Path(root).expanduser()
    known = (*SPLITS, *VALIDATION_FOLDERS)
    rows: list[tuple[str, str, str]] = []  # (split or "", id, label name or "")
    paths = ListedPaths(root, allow_outside)
    for folder in [root] + [root / name for name in known]:
        metadata = folder / METADATA
        if metadata.is_file():
            rows += _metadata_rows(metadata, paths, "" if folder == root else _split_name(folder.name))
        elif folder != root and folder.is_dir() and not (root / METADATA).is_file():  # root's lists every file
            rows += [(_split_name(folder.name), p.relative_to(root).as_posix(), "") for p in _find_images(folder)]
    paths.check()
    _warn_ignored(root, known + tuple({id_.split("/", 1)[0] for _, id_, _ in rows}))  # folders its lists name are read
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
            raise UserError(f"{id_} is a train row without a label; give it one in {METADATA}'s label column, "
                             "put it in train/<class>/, or list it with split unlabeled")
    if not rows:
        raise UserError(f"{root}: {METADATA} lists no images")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        classes, shown = _read_classes_file(classes_file)
        unknown = sorted(names - set(classes))
        if unknown:
            raise UserError(f"labels {unknown} in {root}'s {METADATA} are not listed in {classes_file}; add them")
    else:
        classes = sorted(names)
        shown = _label_display_names(classes)
    index = {name: i for i, name in enumerate(classes)}
    seen: dict[str, tuple[str, str]] = {}
    for split, id_, label in rows:
        if seen.setdefault(id_, (split, label)) != (split, label):
            raise UserError(f"{root}: {id_} is listed twice with different labels or splits; keep one row")
    entries = sorted(set(rows), key=lambda e: (SPLITS.index(e[0]), e[1]))
    log.info("%s: read as a Hugging Face imagefolder (%s)", root, METADATA)
    return ImageSet(root=root, ids=[e[1] for e in entries], splits=[e[0] for e in entries],
                    labels=np.asarray([index[lab] if lab else -1 for _, _, lab in entries], dtype=np.int64),
                    classes=classes, display_names=shown)


def _parent(image_id: str) -> str:
    parts = image_id.split("/")
    return parts[-2] if len(parts) > 1 else ""


def _metadata_rows(metadata: Path, paths: ListedPaths, default_split: str) -> list[tuple[str, str, str]]:
    """``(split, id, label)`` of each row of an imagefolder ``metadata.csv`` (ids relative to the data folder)."""
    with metadata.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{metadata} is empty; expected a header with a file_name column")
        names = [h.strip().lower() for h in header]
        path_col = next((names.index(n) for n in PATH_COLUMNS if n in names), None)
        if path_col is None:
            raise UserError(f"{metadata} has no file_name column (header: {','.join(header)}); Hugging Face's "
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
                raise UserError(f"{metadata} row {reader.line_num}: split {split!r} must be one of "
                                 f"{list(SPLITS) + list(VALIDATION_FOLDERS)}")
            if not cell(path_col):
                raise UserError(f"{metadata} row {reader.line_num}: the file_name is empty")
            id_ = paths.id_of(cell(path_col), metadata, reader.line_num, base=metadata.parent)
            rows.append((_split_name(split) if split else default_split, id_, cell(label_col)))
    return rows
