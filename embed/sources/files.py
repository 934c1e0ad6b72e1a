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
from store import SPLITS, display_id
from store.layout import VALIDATION_FOLDERS
from store.validation import UserError

log = logging.getLogger(__name__)


#: folders of labeled images for model selection (Hugging Face's and Keras' names): read as labeled train rows


@dataclass(frozen=True)
class ImageSet:
    """The images of one dataset, in store row order.

    ``classes`` are the class ids (folder names, or the labels a list gives), exactly as written: what predictions
    and answers carry. ``display_names`` (one per class; default the ids) are for CLIP prompts and pages only.
    """

    root: Path
    ids: list[str]
    splits: list[str]
    labels: np.ndarray  # (N,) int64, -1 unknown
    classes: list[str]
    display_names: list[str] | None = None

    def __post_init__(self):
        if self.display_names is None:
            object.__setattr__(self, "display_names", list(self.classes))
        elif len(self.display_names) != len(self.classes):
            raise ValueError(f"{len(self.display_names)} display names for {len(self.classes)} classes")

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
    """``classes.txt``: one class per line in index order, ``<folder>`` or ``<folder>,<display name>``.

    Read as UTF-8 (a byte-order mark is skipped). Other encodings are refused rather than guessed: a guess (Latin-1
    decodes any bytes) could silently give folder names that match no folder on disk, or display names that are
    not the ones written, and the display names go into prompts, pages and CSV headers. Two classes with one display
    name are refused too: labels and ``p_`` columns would not tell them apart.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02X} on line {line}); save it as UTF-8 "
                        f"(from Latin-1: iconv -f latin1 -t utf-8 {path.name} > utf8.txt && mv utf8.txt "
                        f"{path.name})") from None
    folders, names = [], []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        folder, _, name = line.partition(",")
        folders.append(folder.strip())
        names.append(name.strip() or folder.strip().replace("_", " "))
    if len(set(folders)) != len(folders):
        raise UserError(f"{path} lists a class twice; each line must name a different class folder")
    _check_display_names(folders, names, f"{path} gives", f"give each its own display name in {path.name}")
    return folders, names


def _display_names(folders: list[str], root: Path) -> list[str]:
    """Display names of class folders without a ``classes.txt``: ``_`` read as a space; two folders that read the
    same are refused."""
    names = [folder.replace("_", " ") for folder in folders]
    _check_display_names(folders, names, f"{root} has", f"rename one, or give each its own display name in "
                         f"{root / 'classes.txt'} (lines <folder>,<display name>)")
    return names


def _label_display_names(labels: list[str]) -> list[str]:
    """Display names of the labels a list gives (without a ``classes.txt``): ``_`` read as a space, unless two labels
    would then read the same (they keep their spelling)."""
    names = [label.replace("_", " ") for label in labels]
    return names if len(set(names)) == len(names) else list(labels)


def _check_display_names(folders: list[str], names: list[str], where: str, fix: str) -> None:
    first: dict[str, str] = {}
    for folder, name in zip(folders, names):
        other = first.setdefault(name, folder)
        if other != folder:
            raise UserError(f"{where} the classes {other!r} and {folder!r} the same display name {name!r}, so "
                            f"labels and p_ columns could not tell them apart; {fix}")


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


class ListedPaths:
    """The paths a received list names (a ``--csv`` file, an imagefolder ``metadata.csv``), as store ids.

    A list is text someone else wrote: it may name ``../``, absolute paths, or links inside the data folder that lead
    out of it. Every path is resolved as the system will open it (links followed, ``..`` taken after them); one
    whose file lies outside the real data folder is *outside*, and the list is refused, naming the first such row,
    unless ``allow_outside``. The data folder itself may be reached through a link of the user's own: both sides
    are resolved.

    Ids are paths relative to ``root``, normalised (``sub/../a.png`` and ``./a.png`` are ``a.png``); an absolute path
    inside the folder becomes relative, one outside (allowed) relative to the data folder's real location
    (``../photos/a.png``), so that no id, nor the predictions CSV made from it, carries an absolute path of this
    machine. Two rows naming one file (two spellings, or a link and its target) get the first row's id, so that
    the duplicate checks see one file.

    Parameters
    ----------
    root : path
        The data folder: ids are relative to it, and files must lie inside it.
    allow_outside : bool
        Read files outside ``root`` too (``--allow-outside``).
    """

    def __init__(self, root: Path, allow_outside: bool = False):
        self.root, self.allow_outside = root, allow_outside
        self.lexical_root, self.real_root = os.path.abspath(root), os.path.realpath(root)
        self.outside: list[tuple[Path, int, str]] = []  # (list, line, path as written) of every row outside
        self._ids: dict[str, str] = {}  # real path -> id of the first row naming it

    def id_of(self, written: str, source: Path, line: int, base: Path | None = None) -> str:
        """The id of the file a row names as ``written`` (relative to ``base``, default the data folder).

        Raises
        ------
        ValueError
            If the path holds a NUL byte, or ``..`` after a linked folder makes it name another file than the id.
        """
        if "\0" in written:
            raise UserError(f"{source} row {line}: the path {display_id(repr(written))} holds a NUL byte, which no "
                            "file name can; fix or remove the row")
        joined = os.path.join(os.path.abspath(base) if base is not None else self.lexical_root, written)
        real, lexical = os.path.realpath(joined), os.path.normpath(joined)
        if not _within(real, self.real_root):
            self.outside.append((source, line, written))
        if _within(lexical, self.lexical_root):
            relative = os.path.relpath(lexical, self.lexical_root)
        elif _within(lexical, self.real_root) or os.path.isabs(written):
            # the system enters the data folder's real location and takes each '..' from there
            relative = os.path.relpath(lexical, self.real_root)
        else:
            relative = os.path.relpath(lexical, self.lexical_root)
        plain = not os.path.isabs(written) and ".." not in Path(written).parts  # then the id reads as written
        if not plain and os.path.realpath(os.path.join(self.lexical_root, relative)) != real:
            # sub/../a.png where sub is a link: the system opens the a.png beside sub's target, not root/a.png
            raise UserError(f"{source} row {line}: {display_id(written)} names {display_id(real)} (a '..' after a "
                            f"linked folder), not {display_id(relative)} as it reads; list the file by its path "
                            "without '..'")
        return self._ids.setdefault(real, Path(relative).as_posix())

    def check(self) -> None:
        """Refuse the list when it names files outside the data folder, unless they are allowed."""
        if not self.outside or self.allow_outside:
            if self.outside:
                log.warning("%d listed file(s) outside %s are read (--allow-outside), e.g. %s", len(self.outside),
                            self.root, display_id(self.outside[0][2]))
            return
        source, line, written = self.outside[0]
        n = len(self.outside)
        raise UserError(f"{source} row {line}: {display_id(written)} lies outside the data folder {self.root} "
                        f"({n} row{'s do' if n > 1 else ' does'}); a received list may only name files inside its "
                        "own folder: move the files in, or pass --allow-outside if you trust the list")


def _within(path: str, folder: str) -> bool:
    """Whether the absolute, normalised ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
