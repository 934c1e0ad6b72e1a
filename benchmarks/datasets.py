"""Datasets that exist offline here, each written once as real image files in the split-folder layout.

Each adapter puts its whole labeled pool in ``train/<class>/`` (the benchmark draws the few-shot labels from it and
hides the rest, which becomes the unlabeled pool) and a labeled ``test/<class>/`` split.

- ``digits``: scikit-learn's 8x8 digit scans (10 classes, grey).
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (10 classes, grey 28x28 product photos).
- ``clipart``: Debian's ``openclipart-png`` (Open Clip Art Library 0.18, public domain): colour drawings of
  everyday objects in 24 object categories, some of them confusable groups (food: fruit, desserts, beverages, breads,
  meats; animals: mammals, birds, bugs, fish; transport: vehicles, boats). The realistic regime: many classes, 5-10
  labels per class, a few hundred unlabeled images.
- ``tuxpaint``: Debian's ``tuxpaint-stamps-default`` (Tux Paint's stamps): 24 object classes of mostly photographs
  cut out on white (animals, food, plants, vehicles, buildings, coins, road signs, hand signs, ...) mixed with colour
  drawings; the same regime with photographs.
"""
from __future__ import annotations

import gzip
import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from embed import sources
from store.validation import UserError

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


OPENCLIPART_DIR = Path(os.environ.get("OPENCLIPART_DIR", "/usr/share/openclipart/png"))
#: class folder -> folders of ``openclipart-png`` (relative to its png/ root) whose images it takes; a trailing
#: ``/**`` also takes every subfolder. Object categories only (no icons, symbols, flags, shapes or maps), each with
#: at least 21 colour drawings; specific classes come before the catch-all folders (dish, office_supply, plant, tool).
CLIPART_CLASSES: dict[str, tuple[str, ...]] = {
    "mammal": ("animals/mammals/**",), "bird": ("animals/birds/**",), "bug": ("animals/bugs/**",),
    "house": ("buildings/homes/**",), "computer_hardware": ("computer/hardware/**",),
    "electronics": ("electronics/**",), "beverage": ("food/beverages/**",), "dessert": ("food/desserts/**",),
    "fruit": ("food/fruit/**",), "dish": ("food",), "office_supply": ("office",),
    "clothing": ("people/clothing/**",), "flower": ("plants/flowers/**",), "plant": ("plants",),
    "musical_instrument": ("recreation/music/**",), "party": ("recreation/party/**",),
    "sport": ("recreation/sports/**",), "toy": ("recreation/toys/**",), "tool": ("tools",),
    "boat": ("transportation/boating/**",), "vehicle": ("transportation/vehicles/**",),
}
_MAX_PIXELS = 16_000_000  # a few drawings are rendered at 13k x 13k px; they are skipped unread


def _class_files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The PNG files of ``patterns`` (folders relative to ``root``; a trailing ``/**`` also takes every subfolder)."""
    files = []
    for pattern in patterns:
        folder = root / pattern.removesuffix("/**")
        files += folder.rglob("*.png") if pattern.endswith("/**") else folder.glob("*.png")
    return sorted(set(files))


def _on_white(path: Path, size: int, colour_only: bool = True):
    """The image composited on white, longest side ``size``; None for a huge or unreadable image, and with
    ``colour_only`` for a grey one (under 2 % coloured pixels)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
            with Image.open(path) as image:
                if image.width * image.height > _MAX_PIXELS:
                    return None
                image = image.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        log.warning("skipping %s: %s", path, err)
        return None
    if colour_only:
        rgba = np.asarray(image, dtype=np.int16)  # (H, W, 4)
        rgb = rgba[..., :3][rgba[..., 3] > 0]  # (n, 3) visible pixels
        if not rgb.size or np.mean(rgb.max(axis=1) - rgb.min(axis=1) > 24) < 0.02:
            return None
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image, mask=image.getchannel("A"))
    canvas.thumbnail((size, size), Image.Resampling.LANCZOS)
    return canvas


def _write_classes(folder: Path, root: Path, classes: dict[str, tuple[str, ...]], per_class: int,
                   test_per_class: int, size: int, seed: int, colour_only: bool) -> dict[str, int]:
    """Write up to ``per_class`` images of each class (``test_per_class`` to ``test/<class>/``, the rest to
    ``train/<class>/``) as PNG composited on white; an image filed twice (same bytes) belongs to the class listed
    first; two images of a class with the same file name (a photo and its drawing) are both kept. Returns the number of
    images written per class."""
    import hashlib

    files = {name: _class_files(root, patterns) for name, patterns in classes.items()}
    owner: dict[str, str] = {}  # file digest -> the first class (in ``classes`` order) that has the image
    digest = {}
    for name, paths in files.items():
        for path in paths:
            digest[path] = hashlib.sha256(path.read_bytes()).hexdigest()
            owner.setdefault(digest[path], name)
    rng = np.random.default_rng(seed)
    written = {}
    for name, paths in files.items():
        kept, seen = [], set()
        for path in rng.permutation(np.array(paths, dtype=object)):
            if owner[digest[path]] != name or digest[path] in seen:
                continue
            seen.add(digest[path])
            image = _on_white(path, size, colour_only)
            if image is not None:
                kept.append((path, image))
            if len(kept) == per_class:
                break
        stems: set[str] = set()
        for i, (path, image) in enumerate(kept):
            stem = path.stem if path.stem not in stems else f"{path.stem}-{i}"  # fruit/grapes, fruit/cartoon/grapes
            stems.add(stem)
            out = folder / ("test" if i < test_per_class else "train") / name / f"{stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out)
        written[name] = len(kept)
    return written


def write_clipart(folder: Path, per_class: int = 50, test_per_class: int = 8, size: int = 256, seed: int = 0) -> Path:
    """Open Clip Art (Debian ``openclipart-png``): 21 object classes, up to ``per_class`` colour drawings each.

    ``test_per_class`` drawings per class go to ``test/<class>/``, the others (13-42 per class) to ``train/<class>/``;
    drawings are composited on white and written as PNG of longest side ``size``. Grey drawings are left out; a
    drawing the library files in two folders belongs to the class listed first (the specific one: fruit before
    dish). ``OPENCLIPART_DIR`` points at an unpacked copy (``apt-get download openclipart-png && dpkg -x
    openclipart-png_*.deb DIR``: ``DIR/usr/share/openclipart/png``).
    """
    if not OPENCLIPART_DIR.is_dir():
        raise DatasetUnavailable(f"Open Clip Art is not installed ({OPENCLIPART_DIR} is missing): apt-get install "
                                 "openclipart-png, or set OPENCLIPART_DIR to an unpacked copy's png/ folder")
    written = _write_classes(folder, OPENCLIPART_DIR, CLIPART_CLASSES, per_class, test_per_class, size, seed, True)
    for name, count in written.items():
        if count < test_per_class + 13:  # 10 labels and a few unlabeled rows
            raise DatasetUnavailable(f"openclipart-png at {OPENCLIPART_DIR} has only {count} colour drawings of "
                                     f"{name}: reinstall the package (version 0.18 expected)")
    return folder


TUXPAINT_DIR = Path(os.environ.get("TUXPAINT_DIR", "/usr/share/tuxpaint/stamps"))
#: class folder -> folders of ``tuxpaint-stamps-default`` (relative to its stamps/ root), as for CLIPART_CLASSES.
#: Object categories with at least 11 PNG stamps (19 of the 24 have 15-50); letters, digits and other symbols are left
#: out, except the hand signs. Most stamps are photographs cut out on a transparent background, the
#: others colour drawings (the ``cartoon`` subfolders); vector (SVG) stamps are not rendered.
TUXPAINT_CLASSES: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds/**",), "sea_animal": ("animals/fish/**", "animals/shellfish/**",
                                                   "animals/mammals/aquatic/**"),
    "hoofed_mammal": ("animals/mammals/bovines/**", "animals/mammals/equines/**", "animals/mammals/deer/**",
                      "animals/mammals/camel/**"),
    "mammal": ("animals/mammals", "animals/mammals/apes/**", "animals/mammals/bears/**", "animals/mammals/cats/**",
               "animals/mammals/dogs/**", "animals/mammals/rodents/**", "animals/marsupials/**"),
    "insect": ("animals/insects/**",), "clothing": ("clothes/**",), "fruit": ("food/fruit/**",),
    "vegetable": ("food/vegetables/**", "food/nuts/**", "food/spices/**"), "flower": ("plants/flowers/**",),
    "plant": ("plants", "plants/trees/**", "plants/mushrooms/**"), "christmas": ("seasonal/christmas/**",),
    "halloween": ("seasonal/halloween/**",), "easter": ("seasonal/easter/**",), "hanukkah": ("seasonal/hanukkah/**",),
    "space": ("space/**",), "sport": ("sports/**",), "coin": ("symbols/money/**",),
    "road_sign": ("town/roadsigns/**",), "building": ("town/houses/**", "town/monuments/**", "town/cartoon/**"),
    "vehicle": ("vehicles/**", "military/vehicles/**"), "musical_instrument": ("hobbies/music/**",),
    "tool": ("household/tools/**", "household/arttools/**"), "household": ("household", "household/dishes/**"),
    "hand_sign": ("symbols/alphabets/asl/**",),
}


def write_tuxpaint(folder: Path, per_class: int = 50, test_per_class: int = 5, size: int = 256,
                   seed: int = 0) -> Path:
    """Tux Paint's stamps (Debian ``tuxpaint-stamps-default``): 24 object classes of mostly photographs.

    ``test_per_class`` stamps per class go to ``test/<class>/``, the others (6-45 per class, 456 in all) to
    ``train/<class>/``, composited on white as PNG of longest side ``size``; grey photographs (coins, road signs) are
    kept. ``TUXPAINT_DIR`` points at an unpacked copy (``apt-get download tuxpaint-stamps-default && dpkg -x
    tuxpaint-stamps-default_*.deb DIR``: ``DIR/usr/share/tuxpaint/stamps``).
    """
    if not TUXPAINT_DIR.is_dir():
        raise DatasetUnavailable(f"Tux Paint's stamps are not installed ({TUXPAINT_DIR} is missing): apt-get install "
                                 "tuxpaint-stamps-default, or set TUXPAINT_DIR to an unpacked copy's stamps/ folder")
    written = _write_classes(folder, TUXPAINT_DIR, TUXPAINT_CLASSES, per_class, test_per_class, size, seed, False)
    for name, count in written.items():
        if count < test_per_class + 5:  # 5 labels and a test split
            raise DatasetUnavailable(f"tuxpaint-stamps-default at {TUXPAINT_DIR} has only {count} stamps of {name}: "
                                     "reinstall the package (version 2022.06.04 expected)")
    return folder


#: Input resolution the benchmarks embed each built-in dataset at (absent: the backbone's own): the 8 and 28 px scans
#: gain nothing from 224 px and embed 3-4 times faster at 112.
NATIVE_SIZE: dict[str, int] = {"digits": 112, "fashion-mnist": 112}

ADAPTERS: dict[str, Callable[[Path], Path]] = {"digits": write_digits, "fashion-mnist": write_fashion_mnist,
                                               "clipart": write_clipart, "tuxpaint": write_tuxpaint}


def prepare(name: str, cache: Path) -> Path:
    """The split-folder layout of a built-in dataset (written on first use) or of a user folder."""
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
        raise UserError(f"unknown dataset {name!r}: use {', '.join(ADAPTERS)} or a folder in the split-folder layout")
    return folder
