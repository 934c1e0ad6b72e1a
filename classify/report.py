"""Failure analysis of a fitted model: an HTML page (``index.html``) with the confusion-matrix heatmap, per-class
precision and recall, and the most-confused pairs with thumbnails of their misclassified images; and the same as
PNG, CSV and JSON files."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from store.outputs import csv_bytes, write_files

log = logging.getLogger(__name__)

#: the files of a report folder (besides ``thumbs/``), the page last
REPORT_FILES = ("per_class.csv", "confused_pairs.csv", "confusion.png", "report.json", "index.html")


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
                 extra: dict | None = None, images: Sequence[str | Path] | None = None,
                 captions: Sequence[str] | None = None, pairs_shown: int = 6, per_pair: int = 8) -> dict:
    """Write ``index.html``, ``confusion.png``, ``per_class.csv``, ``confused_pairs.csv`` and ``report.json`` under
    ``out``.

    Everything is computed (the heatmap drawn, the page built) before any of these files is written, and they are
    replaced together (:func:`store.outputs.write_files`); class names are drawn as text (no ``$...$`` mathtext). A
    failure, a full disk included, leaves the previous report, not half of a new one.

    Parameters
    ----------
    out : str or Path
        The report folder (created).
    y_true : ndarray of shape (n,)
        True class indices.
    y_pred : ndarray of shape (n,)
        Predicted class indices.
    classes : sequence of str
        Class names, by index.
    title : str
        The report's title.
    extra : dict, optional
        More JSON fields of ``report.json`` (``protocol`` is also shown on the page).
    images : sequence of str or Path, optional
        The image file of each row: the most confused pairs show thumbnails of their misclassified images.
    captions : sequence of str, optional
        The caption of each row's thumbnail (default: the file name).
    pairs_shown : int
        How many of the most confused pairs the page shows with thumbnails.
    per_pair : int
        Thumbnails per pair.

    Returns
    -------
    dict
        The content of ``report.json``: title, n, accuracy, per_class, confused_pairs and ``extra``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.arange(len(classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [{"class": c, "n": int(n), "recall": float(r), "precision": float(p), "f1": float(f)}
                 for c, n, r, p, f in zip(classes, support, recall, precision, f1)]
    pairs = confused_pairs(cm, classes, top=20)
    heatmap = _heatmap(cm, classes, title)
    summary = {"title": title, "n": int(len(y_true)), "accuracy": float((y_true == y_pred).mean()),
               "per_class": per_class, "confused_pairs": pairs, **(extra or {})}
    index = _page(out, summary, y_true, y_pred, classes, images, captions, pairs_shown, per_pair)
    write_files([(out / "per_class.csv", csv_bytes(list(per_class[0]), per_class)),
                 (out / "confused_pairs.csv", csv_bytes(["true", "predicted", "count", "share_of_true"], pairs)),
                 (out / "confusion.png", heatmap), (out / "report.json", json.dumps(summary, indent=2).encode()),
                 (out / "index.html", index.encode("utf-8", "replace"))])
    return summary


def _heatmap(cm: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """The row-normalised confusion matrix as PNG bytes; text is drawn as written (class names may hold ``$``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _draw(plt, cm, classes, title)


def _draw(plt, cm: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    labels = np.arange(len(classes))
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
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _page(out: Path, summary: dict, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str],
          images, captions, pairs_shown: int, per_pair: int) -> str:
    """The report as one static page: summary line, heatmap, per-class table, confused pairs with thumbnails."""
    from classify.pages import Group, contact_sheet, page, table

    per_class = summary["per_class"]
    recalls = [row["recall"] for row in per_class if row["n"]]
    mean_recall = float(np.mean(recalls)) if recalls else 0.0
    subtitle = (f"{summary['n']} images, accuracy {summary['accuracy']:.3f}, mean per-class recall {mean_recall:.3f}"
                + (f" — {summary['protocol']}" if summary.get("protocol", "") not in summary["title"] else ""))
    rows = [(r["class"], r["n"], r["precision"], r["recall"], r["f1"]) for r in per_class]
    weak = weak_classes(per_class, summary["accuracy"])
    body = ['<h2>Confusion matrix</h2><p class="meta">Rows: true class; columns: predicted; colour: share of the true '
            'class.</p><img class="heatmap" src="confusion.png" alt="confusion matrix heatmap">',
            "<h2>Per class</h2><p class='meta'>Recall is the share of a class's images predicted as that class; "
            "the weakest classes are highlighted.</p>",
            table(["class", "images", "precision", "recall", "F1"], rows,
                  ["weak" if r["class"] in weak else "" for r in per_class]),
            "<h2>Most confused pairs</h2>"]
    pairs = summary["confused_pairs"][:pairs_shown]
    if not pairs:
        body.append('<p class="meta">No misclassified images.</p>')
    groups = []
    index = {name: i for i, name in enumerate(classes)}
    for pair in pairs:
        t, p = index[pair["true"]], index[pair["predicted"]]
        rows_ij = np.flatnonzero((y_true == t) & (y_pred == p))[:per_pair]
        shown = [images[r] for r in rows_ij] if images is not None else []
        names = ([captions[r] for r in rows_ij] if captions is not None else [Path(str(s)).name for s in shown])
        n = pair["count"]
        groups.append(Group(title=f"{pair['true']} → predicted {pair['predicted']}: {n} image{'s' * (n != 1)} "
                                  f"({pair['share_of_true']:.0%} of {pair['true']})",
                            images=shown, captions=names,
                            note="" if images is not None else "no image paths: thumbnails not available"))
    body.append(contact_sheet(groups, out))
    body.append('<p class="meta">Files: <a href="report.json">report.json</a>, <a href="per_class.csv">per_class.csv'
                '</a>, <a href="confused_pairs.csv">confused_pairs.csv</a>.</p>')
    return page(summary["title"], "\n".join(body), subtitle)


def weak_classes(per_class: list[dict], accuracy: float) -> set[str]:
    """The classes a report highlights: the weakest fifth by recall (at least one), every class tied with the last of
    them included (one recall, one colour), and only those below the overall accuracy."""
    recalls = sorted(row["recall"] for row in per_class if row["n"])
    if not recalls:
        return set()
    cutoff = recalls[max(1, len(recalls) // 5) - 1]
    return {row["class"] for row in per_class if row["n"] and row["recall"] <= cutoff and row["recall"] < accuracy}

