"""The built-in demo: scikit-learn's digits written as PNG files in the split-folder layout."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


DEMO_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_demo(folder: str | Path, shots: int = 15, test_per_class: int = 36, size: int = 32, seed: int = 0) -> Path:
    """Write scikit-learn's digits (1,797 real 8×8 scans) as PNG files in the split-folder layout.

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
