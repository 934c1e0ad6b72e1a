"""``classify suggest`` ranks what it suggests: the CSV's order follows the score (a rank column, the score falling
with it), the score is explained in --help and on the page, the thumbnails lie beside the output, and the page ends
with the commands to run next."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from classify.cli import main
from classify.labeling import suggest
from labelstore import make_image_store


def blobs(seed=0, n_classes=4, shots=3, pool=60, dim=6):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_classes), shots + pool // n_classes)
    X = np.eye(n_classes, dim)[truth] * 2.5 + rng.normal(size=(truth.size, dim))
    y = np.full(truth.size, -1)
    for c in range(n_classes):
        y[np.flatnonzero(truth == c)[:shots]] = c
    return X.astype(np.float32), y


@pytest.mark.parametrize("strategy", ["diverse", "margin", "typiclust"])
def test_the_score_falls_with_rank(strategy):
    X, y = blobs()
    sel = suggest.suggest_arrays(X, y, budget=10, method="linear", seed=0, strategy=strategy)
    assert (np.diff(sel.score) <= 1e-12).all(), sel.score
    assert len(set(sel.predicted.tolist())) >= 3  # still spread over the classes


def test_csv_rank_page_text_thumbnails_and_next_steps(tmp_path, monkeypatch, capsys):
    store, data, _, _ = make_image_store(tmp_path, per_class=3, pool=10, separation=2.0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out" / "to_label.csv"
    main(["suggest", "--store", str(store), "--method", "linear", "--budget", "6", "--out", str(out)])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert (out.parent / "thumbs").is_dir() and not (elsewhere / "thumbs").exists()
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    assert "1 − (p1 − p2)" in page and "rank 1" in page  # what the score measures, and the order
    tail = page[page.index("What to do next"):]
    for command in (f"python -m embed run --data {data}", f"python -m classify evaluate --store {store}",
                    f"python -m store label --store {store} --labels", f"python -m classify label --store {store}"):
        assert command in tail, command
    assert f"{data}/train/" in tail
    assert not re.search(r"<img|<figure", tail)  # the next steps end the page, after every thumbnail


def test_help_explains_the_score(capsys):
    main(["suggest", "--help"])
    text = capsys.readouterr().out
    assert "1 − (p1 − p2)" in text and "rank" in text and "typicality" in text
