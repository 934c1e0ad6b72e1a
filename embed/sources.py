"""Image sources: the challenge folder layout, a CSV list, and the built-in demo (scikit-learn digits as files).

Every source becomes an :class:`ImageSet`: ids (paths relative to the data root, POSIX style), splits, labels
(-1 unknown) and class names, in a deterministic order (sorted by split, then id).
"""
from __future__ import annotations

import csv
import logging
import os
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


def _is_image(path: Path) -> bool:
    # A broken symlink named like an image is still a file the user gave us: keep it, it fails at decode time.
    return path.suffix.lower() in IMAGE_EXTENSIONS and (path.is_file() or path.is_symlink())


def _find_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, hidden files and folders skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and _is_image(Path(dirpath) / f)]
    return sorted(found)


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


def from_folder(root: str | Path) -> ImageSet:
    """The challenge layout: ``train/<class>/…`` labeled, ``unlabeled/…`` pool, ``test/…`` to predict.

    ``test/<class>/…`` subfolders named like a training class carry test labels; other test images are unlabeled.
    Class names come from ``classes.txt`` at the root when present (see :func:`_read_classes_file`), else from the
    training folder names with ``_`` read as a space.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; pass --data DIR with train/<class>/ images "
                                "(or --csv FILE)")
    train = root / "train"
    if not train.is_dir():
        raise ValueError(f"{root} has no train/ folder; expected train/<class>/*, unlabeled/*, test/* "
                         "(or pass --csv FILE with path,label[,split])")
    folders = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
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
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        for path in _find_images(folder):
            rel = path.relative_to(root)
            parts = rel.parts
            label = index.get(parts[1], -1) if len(parts) > 2 and split in ("train", "test") else -1
            if split == "train" and label < 0:
                raise ValueError(f"{rel} is not inside a class folder; move it to train/<class>/ "
                                 "(or to unlabeled/)")
            ids.append(rel.as_posix())
            splits.append(split)
            labels.append(label)
    if not ids:
        raise ValueError(f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSet(root=root, ids=ids, splits=splits, labels=np.asarray(labels, dtype=np.int64), classes=classes)


def from_csv(csv_path: str | Path, root: str | Path | None = None) -> ImageSet:
    """A CSV ``path,label[,split]`` (header optional); paths relative to ``root`` (default: the CSV's folder).

    ``label`` is a class name, or empty for unknown; ``split`` defaults to train when labeled, else unlabeled.
    Classes come from ``classes.txt`` beside the CSV when present, else the sorted distinct labels.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file {csv_path} does not exist; pass --csv FILE with rows path,label[,split]")
    root = Path(root).expanduser() if root else csv_path.parent
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{csv_path} lists no images; expected rows path,label[,split]")
    entries = []
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or len(row) > 3:
            raise ValueError(f"{csv_path} row {n}: expected path,label[,split], got {row}")
        path, label = row[0].strip(), row[1].strip()
        split = row[2].strip() if len(row) == 3 and row[2].strip() else ("train" if label else "unlabeled")
        if split not in SPLITS:
            raise ValueError(f"{csv_path} row {n}: split {split!r} must be one of {list(SPLITS)}")
        entries.append((split, path, label))
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
    ids = [_relative_id(Path(p), root) for _, p, _ in entries]
    return ImageSet(root=root, ids=ids, splits=[e[0] for e in entries],
                    labels=np.asarray([index[lab] if lab else -1 for _, _, lab in entries], dtype=np.int64),
                    classes=classes)


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
