"""Finding image files under a data folder: every folder once (links followed once, loops skipped), pipes and
devices listed but never opened; the :class:`ImageSet` every source returns."""
from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.images import IMAGE_EXTENSIONS
from store import SPLITS
from store.validation import UserError

log = logging.getLogger(__name__)


#: folders of labeled images for model selection (Hugging Face's and Keras' names): read as labeled train rows
VALIDATION_FOLDERS = ("validation", "val")


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
        raise UserError(f"{path} lists a class twice; each line must name a different class folder")
    return folders, names


def _split_name(folder: str) -> str:
    """The split of a top folder (validation folders hold labeled train rows); "" for other folders."""
    return "train" if folder in VALIDATION_FOLDERS else folder if folder in SPLITS else ""


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


def _relative_id(path: Path, root: Path) -> str:
    """An id relative to ``root`` when the path lies under it; absolute paths elsewhere stay absolute."""
    if path.is_absolute() and path.is_relative_to(root):
        path = path.relative_to(root)
    return path.as_posix()
