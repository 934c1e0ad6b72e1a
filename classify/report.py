"""Failure analysis of a fitted model: confusion-matrix heatmap, per-class accuracy, most-confused pairs."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

log = logging.getLogger(__name__)


def confused_pairs(cm: np.ndarray, classes: Sequence[str], top: int = 10) -> list[dict]:
    """The ``top`` off-diagonal cells of a confusion matrix, largest first (true class, predicted class, count)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:top]
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, cm.shape)
        if off[i, j] == 0:
            break
        pairs.append({"true": classes[i], "predicted": classes[j], "count": int(off[i, j]),
                      "share_of_true": float(off[i, j] / max(cm[i].sum(), 1))})
    return pairs


def write_report(out: str | Path, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], title: str,
                 extra: dict | None = None) -> dict:
    """Write ``confusion.png``, ``per_class.csv``, ``confused_pairs.csv`` and ``report.json`` under ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.arange(len(classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [{"class": c, "n": int(n), "accuracy": float(r), "precision": float(p), "f1": float(f)}
                 for c, n, r, p, f in zip(classes, support, recall, precision, f1)]
    with (out / "per_class.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(per_class[0]))
        writer.writeheader()
        writer.writerows(per_class)
    pairs = confused_pairs(cm, classes, top=20)
    with (out / "confused_pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["true", "predicted", "count", "share_of_true"])
        writer.writeheader()
        writer.writerows(pairs)

    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (C, C) row-normalised
    side = max(5.0, 0.32 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(labels, labels=classes, rotation=90, fontsize=8)
    ax.set_yticks(labels, labels=classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if len(classes) <= 20:
        for i in labels:
            for j in labels:
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="black" if rates[i, j] > 0.5 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)

    summary = {"title": title, "n": int(len(y_true)), "accuracy": float((y_true == y_pred).mean()),
               "per_class": per_class, "confused_pairs": pairs, **(extra or {})}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary
