"""``classify audit`` flags only what the out-of-fold evidence supports: with ~5 labels per class and a few planted
flips, few flags and the planted ones first; nothing flagged (and the page says why) when the out-of-fold model is
too weak to judge. Columns follow cleanlab: ``label_quality`` (lower = worse) and ``is_label_issue``."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from classify.cli import main
from classify.labeling import audit
from labelstore import make_image_store

FLIPS = ((0, 0), (2, 1), (4, 3))
COLUMNS = ["rank", "id", "path", "given", "suggested", "label_quality", "is_label_issue"]


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def twelve_classes(seed, flips=4, per_class=5, separation=5.0, dim=16, pool=120):
    """12 Gaussian classes, ``per_class`` labels each (the issue's 60 labels), ``flips`` of them filed under
    another class."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(12), per_class + pool // 12)
    X = np.eye(12, dim)[truth] * separation + rng.normal(size=(truth.size, dim))
    y = np.full(truth.size, -1)
    for c in range(12):
        y[np.flatnonzero(truth == c)[:per_class]] = c
    flipped = np.sort(rng.choice(np.flatnonzero(y >= 0), size=flips, replace=False))
    y[flipped] = (y[flipped] + rng.integers(1, 12, size=flips)) % 12
    return X.astype(np.float32), y, flipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sixty_labels_few_flags_the_planted_ones_first(seed):
    X, y, flipped = twelve_classes(seed)
    result = audit.audit_arrays(X, y, method="linear", seed=seed)
    flagged = result.index[result.is_label_issue]
    assert result.judged and 1 <= flagged.size and set(flagged.tolist()) <= set(flipped.tolist())  # few, all right
    assert sorted(result.index[:flipped.size].tolist()) == flipped.tolist()  # every planted flip ranked first
    assert (np.diff(result.label_quality) >= 0).all() and result.is_label_issue[:flagged.size].all()


def test_csv_columns_flags_and_ranking_through_the_cli(tmp_path, capsys):
    store, _, _, flipped = make_image_store(tmp_path, per_class=5, pool=6, classes=tuple("abcdef"), flips=FLIPS)
    out = tmp_path / "suspects.csv"
    main(["audit", "--store", str(store), "--method", "linear", "--out", str(out)])
    rows = read(out)
    assert list(rows[0]) == COLUMNS
    assert {r["id"] for r in rows} == set(flipped) and all(r["is_label_issue"] == "True" for r in rows)
    assert "3 of 30 labels look wrong" in capsys.readouterr().out
    main(["audit", "--store", str(store), "--method", "linear", "--out", str(tmp_path / "all.csv"), "--all-rows"])
    every = read(tmp_path / "all.csv")
    assert len(every) == 30 and [int(r["rank"]) for r in every] == list(range(1, 31))
    assert {r["id"] for r in every[:3]} == set(flipped) and [r["is_label_issue"] for r in every[3:]] == ["False"] * 27
    quality = [float(r["label_quality"]) for r in every]
    assert quality == sorted(quality) and quality[0] < 0.5 < quality[-1]
    page = (tmp_path / "all.html").read_text(encoding="utf-8")
    assert "label_quality" in page and "What to do next" in page


def test_a_model_too_weak_to_judge_flags_nothing_and_says_so_on_the_page(tmp_path, capsys):
    store, *_ = make_image_store(tmp_path, per_class=5, pool=6, classes=tuple("abcdef"), separation=0.0, flips=FLIPS)
    out = tmp_path / "suspects.csv"
    main(["audit", "--store", str(store), "--method", "linear", "--out", str(out)])
    printed = capsys.readouterr().out
    assert read(out) == [] and "no label flagged" in printed and "too few to tell a wrong label" in printed
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    assert "too few to tell a wrong label" in page and 'class="caution"' in page
    main(["audit", "--store", str(store), "--method", "linear", "--out", str(tmp_path / "all.csv"), "--all-rows"])
    assert {r["is_label_issue"] for r in read(tmp_path / "all.csv")} == {"False"}
