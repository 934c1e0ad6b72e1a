"""A small store WITH its image files, for the browser labeling app (``python -m classify label``).

Three classes (``cat`` red discs, ``dog`` green squares, ``fox`` blue triangles) drawn on 48 px images, a few labeled
train images per class, an unlabeled pool and labeled test images. Every other pool image is a PNG whose background is
transparent (it must show on white, as the embedding sees it). Features are synthetic (no backbone runs): each class a
Gaussian around its own mean, so a method learns from the answers. The store's data root is the absolute image folder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from store import FeatureStore

SPEC = "timm:a"
CLASSES = ("cat", "dog", "fox")
COLOURS = {"cat": (220, 30, 30), "dog": (30, 170, 60), "fox": (40, 70, 220)}
SIDE = 48


def draw(name: str, rng: np.random.Generator, transparent: bool) -> Image.Image:
    """An image of class ``name``: a coloured shape of random size and place (so no two images are the same file),
    on white or on a transparent background."""
    image = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0) if transparent else (255, 255, 255, 255))
    pen = ImageDraw.Draw(image)
    left, top = (int(v) for v in rng.integers(2, 14, size=2))
    right, bottom = (int(v) for v in SIDE - rng.integers(2, 14, size=2))
    shade = tuple(int(min(255, max(0, v + rng.integers(-25, 26)))) for v in COLOURS[name])
    if name == "cat":
        pen.ellipse((left, top, right, bottom), fill=shade)
    elif name == "dog":
        pen.rectangle((left, top, right, bottom), fill=shade)
    else:
        pen.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=shade)
    return image


def make_app_store(folder, n_train: int = 2, n_pool: int = 30, n_test: int = 3, seed: int = 0,
                   noise: float = 1.0) -> tuple[Path, dict[str, str]]:
    """Write images under ``folder/data`` and their store ``folder/feats.h5``.

    Returns
    -------
    store : Path
    truth : dict
        The true class of every pool image, by id (what a perfect labeler answers).
    """
    folder = Path(folder)
    data = (folder / "data").resolve()
    rng = np.random.default_rng(seed)
    ids, splits, labels, sha, truth = [], [], [], [], {}
    for split, count in (("train", n_train), ("unlabeled", n_pool), ("test", n_test)):
        for k in range(count):
            for c, name in enumerate(CLASSES):
                if split == "unlabeled":
                    index = k * len(CLASSES) + c
                    image_id = f"unlabeled/img{index:03d}.png"
                    truth[image_id] = name
                else:
                    image_id = f"{split}/{name}/{k}.png"
                path = data / image_id
                path.parent.mkdir(parents=True, exist_ok=True)
                draw(name, rng, transparent=split == "unlabeled" and k % 2 == 1).save(path)
                ids.append(image_id)
                splits.append(split)
                labels.append(-1 if split == "unlabeled" else c)
                sha.append(hashlib.sha256(path.read_bytes()).hexdigest())
    true_class = np.array([CLASSES.index(truth.get(i, i.split("/")[1] if "/" in i else "")) for i in ids])
    means = rng.normal(size=(len(CLASSES), 8)) * 3
    feats = means[true_class] + rng.normal(size=(len(ids), 8)) * noise  # (n, 8)
    store = folder / "feats.h5"
    with FeatureStore.create(store, ids, splits, labels, list(CLASSES), root=str(data)) as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, feats.shape[1])
        fs.write_rows(SPEC, np.arange(len(ids)), np.ones(len(ids), dtype=np.uint8), sha, [None] * len(ids),
                      features=feats)
    return store, truth
