"""Datasets that exist offline here, each written once as real image files in the challenge layout.

Each adapter puts its whole labeled pool in ``train/<class>/`` (the benchmark draws the few-shot labels from it and
hides the rest, which becomes the unlabeled pool) and a labeled ``test/<class>/`` split.
"""
from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from embed import sources

log = logging.getLogger(__name__)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [("t-shirt_top", "T-shirt/top"), ("trouser", "trouser"), ("pullover", "pullover"),
                   ("dress", "dress"), ("coat", "coat"), ("sandal", "sandal"), ("shirt", "shirt"),
                   ("sneaker", "sneaker"), ("bag", "bag"), ("ankle_boot", "ankle boot")]


class DatasetUnavailable(RuntimeError):
    """A dataset whose package is not installed; the message names the package."""


def _read_idx(path: Path) -> np.ndarray:
    """The idx format of (Fashion-)MNIST: big-endian header, then uint8 data. numpy reads it directly."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray] | None:
    """(images (n, 28, 28) uint8, labels (n,)) from Debian's dataset-fashion-mnist, or None when not installed."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images, labels = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        return None
    return _read_idx(images), _read_idx(labels)


def write_fashion_mnist(folder: Path, pool_per_class: int = 1000, test_per_class: int = 200, seed: int = 0) -> Path:
    """Fashion-MNIST subset: ``pool_per_class`` train images and ``test_per_class`` test images per class (PNG)."""
    from PIL import Image

    train, test = fashion_mnist_arrays("train"), fashion_mnist_arrays("test")
    if train is None or test is None:
        raise DatasetUnavailable("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    rng = np.random.default_rng(seed)
    for split, (images, labels), per_class in (("train", train, pool_per_class), ("test", test, test_per_class)):
        for c, (name, _) in enumerate(FASHION_CLASSES):
            picked = rng.permutation(np.flatnonzero(labels == c))[:per_class]
            out = folder / split / name
            out.mkdir(parents=True, exist_ok=True)
            for i in picked:
                Image.fromarray(255 - images[i]).save(out / f"{i:05d}.png")  # dark garment on white, like a photo
    (folder / "classes.txt").write_text("".join(f"{f},{n}\n" for f, n in FASHION_CLASSES))
    return folder


def write_digits(folder: Path, test_per_class: int = 50, seed: int = 0) -> Path:
    """scikit-learn's digits: ``test_per_class`` labeled test images per class, every other image in train/."""
    return sources.write_demo(folder, shots=10**9, test_per_class=test_per_class, seed=seed)


ADAPTERS: dict[str, Callable[[Path], Path]] = {"digits": write_digits, "fashion-mnist": write_fashion_mnist}


def prepare(name: str, cache: Path) -> Path:
    """The challenge-layout folder of a built-in dataset (written on first use) or of a user folder."""
    if name in ADAPTERS:
        folder = cache / name
        marker = folder / ".complete"
        if not marker.is_file():
            log.info("writing %s as image files to %s", name, folder)
            ADAPTERS[name](folder)
            marker.write_text(name + "\n")
        return folder
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(f"unknown dataset {name!r}: use {', '.join(ADAPTERS)} or a folder in the challenge layout")
    return folder
