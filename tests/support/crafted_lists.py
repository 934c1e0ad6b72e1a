"""Hostile lists and datasets as someone else might hand them over, one crafting function each, to compose in tests.

A received list (a ``--csv`` file, a Hugging Face ``metadata.csv``) or a ``classes.txt`` is text someone else wrote:

- `write_list_folder`: a data folder with a few real images under ``imgs/`` (the good part every list names);
- `escaping_path`: an image outside the data folder and the path a row uses to reach it -- ``../``, an absolute
  path, a symlinked file or a symlinked folder inside the data folder that leads out;
- `write_escaping_csv` / `write_escaping_metadata`: a ``--csv`` list / an imagefolder ``metadata.csv`` with good rows
  and then rows that leave the folder (returns the line number of the first one);
- `write_respelled_csv`: one file listed twice under two spellings (``imgs/0.png`` and ``sub/../imgs/0.png``, or a
  symlink to it);
- `write_nul_csv`: a row whose path holds a NUL byte;
- `write_duplicate_display_names`: a split-folder layout whose ``classes.txt`` gives two folders one display name;
- `write_latin1_classes`: a ``classes.txt`` saved as Latin-1 (not UTF-8);
- `link_to`: the data folder reached through a symlink (the user's own link, which is fine).

Every function writes under the folders it is given and returns what a test needs to check the refusal.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from PIL import Image

from imagegen import good_pixels, write_good_images

#: the ways a row's path can leave its folder (see `escaping_path`)
ESCAPES = ("dotdot", "absolute", "file_link", "folder_link")


def write_list_folder(root: str | os.PathLike[str], n: int = 4, seed: int = 0) -> list[str]:
    """``n`` real PNG images under ``root/imgs/`` (``imgs/0.png`` ...); returns their paths relative to ``root``."""
    folder = Path(root) / "imgs"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(good_pixels(i, seed=seed), mode="RGB").save(folder / f"{i}.png")
    return [f"imgs/{i}.png" for i in range(n)]


def escaping_path(root: str | os.PathLike[str], outside: str | os.PathLike[str], how: str) -> str:
    """Write a real image in ``outside`` (a folder beside ``root``, not in it) and return a path, as a row of a list
    in ``root`` would write it, that reaches that image: ``../<outside>/secret.png`` (``dotdot``), its absolute path
    (``absolute``), ``imgs/secret.png`` a symlink to it (``file_link``) or ``linked/secret.png`` through a symlinked
    folder ``linked -> outside`` (``folder_link``)."""
    root, outside = Path(root), Path(outside)
    secret = write_good_images(outside, 1, seed=99)[0].rename(outside / "secret.png")
    if how == "dotdot":
        return Path(os.path.relpath(secret, root)).as_posix()
    if how == "absolute":
        return str(secret.resolve())
    if how == "file_link":
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        (root / "imgs" / "secret.png").symlink_to(secret)
        return "imgs/secret.png"
    if how == "folder_link":
        (root / "linked").symlink_to(outside, target_is_directory=True)
        return "linked/secret.png"
    raise ValueError(f"how must be one of {ESCAPES}, got {how!r}")


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def write_escaping_csv(root: str | os.PathLike[str], outside: str | os.PathLike[str], how: str,
                       extra: int = 1) -> tuple[Path, int]:
    """``root/list.csv`` (header ``path,label``): the images of `write_list_folder`, then ``extra`` rows that leave
    the folder (``how`` as in `escaping_path`; further ones as ``../<outside>/secret.png``). Returns the CSV and the
    line number of the first row that leaves."""
    root = Path(root)
    good = write_list_folder(root)
    escaping = [escaping_path(root, outside, how)]
    escaping += [Path(os.path.relpath(Path(outside) / "secret.png", root)).as_posix()] * (extra - 1)
    rows = [["path", "label"]] + [[p, "cat" if i % 2 else "dog"] for i, p in enumerate(good)]
    first = len(rows) + 1
    rows += [[p, "cat"] for p in escaping]
    return _write_csv(root / "list.csv", rows), first


def write_escaping_metadata(root: str | os.PathLike[str], outside: str | os.PathLike[str],
                            how: str) -> tuple[Path, int]:
    """A Hugging Face imagefolder: ``root/metadata.csv`` (``file_name,label``) listing the images of
    `write_list_folder` and then one that leaves the folder (``how`` as in `escaping_path`). Returns the
    ``metadata.csv`` and the line number of the row that leaves."""
    root = Path(root)
    good = write_list_folder(root)
    rows = [["file_name", "label"]] + [[p, "cat" if i % 2 else "dog"] for i, p in enumerate(good)]
    rows.append([escaping_path(root, outside, how), "cat"])
    return _write_csv(root / "metadata.csv", rows), len(rows)


def write_respelled_csv(root: str | os.PathLike[str], labels: tuple[str, str] = ("cat", "dog"),
                        spelling: str = "dotdot") -> Path:
    """``root/list.csv`` naming ``imgs/0.png`` twice: as itself with ``labels[0]``, then with ``labels[1]`` as
    ``sub/../imgs/0.png`` (``dotdot``; ``sub/`` exists), ``./imgs//0.png`` (``dots``) or ``imgs/again.png``, a
    symlink to it (``link``). The other images are listed once, labeled."""
    root = Path(root)
    good = write_list_folder(root)
    (root / "sub").mkdir(exist_ok=True)
    if spelling == "link":
        (root / "imgs" / "again.png").symlink_to("0.png")
    other = {"dotdot": "sub/../imgs/0.png", "dots": "./imgs//0.png", "link": "imgs/again.png"}[spelling]
    rows = [["imgs/0.png", labels[0]], [other, labels[1]]] + [[p, "cat"] for p in good[1:]]
    return _write_csv(root / "list.csv", rows)


def write_nul_csv(root: str | os.PathLike[str]) -> tuple[Path, int]:
    """``root/list.csv`` (headerless rows) whose third row's path holds a NUL byte; returns the CSV and that line."""
    root = Path(root)
    good = write_list_folder(root)
    rows = [[good[0], "cat"], [good[1], "dog"], ["imgs/2\x00.png", "cat"], [good[3], "dog"]]
    return _write_csv(root / "list.csv", rows), 3


def write_duplicate_display_names(root: str | os.PathLike[str]) -> Path:
    """A split-folder layout with ``train/one``, ``train/zero`` and a ``classes.txt`` that names both ``digit``."""
    root = Path(root)
    write_good_images(root / "train" / "one", 2, seed=1)
    write_good_images(root / "train" / "zero", 2, seed=2)
    write_good_images(root / "test", 1, seed=3)
    (root / "classes.txt").write_text("one,digit\nzero,digit\n", encoding="utf-8")
    return root


def write_latin1_classes(root: str | os.PathLike[str]) -> Path:
    """A split-folder layout with ``train/cafe`` and ``train/the``, and a ``classes.txt`` saved as Latin-1 whose display
    names hold an ``é`` (byte 0xE9, not UTF-8). Returns the ``classes.txt``."""
    root = Path(root)
    write_good_images(root / "train" / "cafe", 2, seed=1)
    write_good_images(root / "train" / "the", 2, seed=2)
    write_good_images(root / "test", 1, seed=3)
    path = root / "classes.txt"
    path.write_bytes("cafe,café au lait\nthe,thé vert\n".encode("latin-1"))
    return path


def link_to(folder: str | os.PathLike[str], link: str | os.PathLike[str]) -> Path:
    """A symlink ``link -> folder`` (a user's data folder reached through a link of their own)."""
    link = Path(link)
    link.symlink_to(Path(folder).resolve(), target_is_directory=True)
    return link
