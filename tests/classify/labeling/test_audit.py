"""``classify.labeling.audit``: out-of-fold confident learning finds planted label flips; bad input is one line."""
import csv

import numpy as np
import pytest

from classify.labeling import audit
from labelstore import SPEC, make_store


def planted(seed=0, per_class=15, n_classes=4, dim=8, flips=6, unlabeled=40):
    """Separated Gaussian classes, ``per_class`` labels each, ``flips`` of them moved to another class."""
    rng = np.random.default_rng(seed)
    means = np.eye(n_classes, dim) * 6.0
    truth = np.repeat(np.arange(n_classes), per_class + unlabeled // n_classes)  # (n,)
    X = (means[truth] + rng.normal(size=(truth.size, dim))).astype(np.float32)  # (n, D)
    y = np.full(truth.size, -1)
    for c in range(n_classes):
        y[np.flatnonzero(truth == c)[:per_class]] = c
    flipped = np.sort(rng.choice(np.flatnonzero(y >= 0), size=flips, replace=False))
    y[flipped] = (y[flipped] + rng.integers(1, n_classes, size=flips)) % n_classes
    return X, y, truth, flipped


@pytest.mark.parametrize("method", ["linear", "knn"])
def test_planted_flips_come_first(method):
    X, y, truth, flipped = planted()
    result = audit.audit_arrays(X, y, method=method, folds=5, seed=0)
    assert sorted(result.index[:flipped.size].tolist()) == flipped.tolist()
    flagged = set(result.index[result.is_label_issue].tolist())
    assert flagged <= set(flipped) and len(flagged) >= flipped.size // 2  # only flips, at least half of them
    assert np.array_equal(result.suggested[:flipped.size], truth[result.index[:flipped.size]])
    assert np.array_equal(result.given, y[result.index])
    assert (np.diff(result.label_quality) >= 0).all()  # lowest label quality first
    assert result.index.size == (y >= 0).sum() and result.proba.shape == (result.index.size, 4)
    again = audit.audit_arrays(X, y, method=method, folds=5, seed=0)
    assert np.array_equal(result.index, again.index) and np.allclose(result.label_quality, again.label_quality)


def test_clean_labels_are_rarely_flagged():
    X, y, truth, _ = planted(flips=0)
    y[y >= 0] = truth[y >= 0]
    result = audit.audit_arrays(X, y, method="linear")
    assert result.is_label_issue.sum() <= 1


def test_a_class_with_one_label_and_bad_folds():
    X, y, _, _ = planted()
    lonely = np.flatnonzero(y == 2)
    y[lonely[1:]] = -1
    with pytest.raises(ValueError, match="class 2 has a single labeled image.*at least 2 per class"):
        audit.audit_arrays(X, y)
    with pytest.raises(ValueError, match="--folds"):
        audit.audit_arrays(*planted()[:2], folds=1)
    X, y, _, _ = planted()
    y[y >= 0] = 0
    with pytest.raises(ValueError, match="at least 2 classes"):
        audit.audit_arrays(X, y)


def test_store_audit_csv_and_sheet(tmp_path, capsys):
    path, *_ = make_store(tmp_path / "s.h5")
    with pytest.raises(ValueError, match="no features for backbone"):
        audit.audit_store(path, backbone="timm:other")
    # make_store labels 3 train images per class, separated; test labels never reach the audit
    rows, _ = audit.audit_store(path, folds=3)
    assert len(rows) == 9 and all(r["id"].startswith("train/") for r in rows)
    assert rows[0]["path"] == f"/data/{rows[0]['id']}"
    out = tmp_path / "suspects.csv"
    written, notes = audit.audit_command(str(path), backbone=SPEC, out=str(out), folds=3, all_rows=True)
    with open(out, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["rank", "id", "path", "given", "suggested", "label_quality", "is_label_issue"]
    assert [r[1] for r in table[1:]] == [r["id"] for r in written] and len(written) == 9
    assert "labels look wrong" in notes[0] and capsys.readouterr().out == ""  # the library says, the CLI prints
    flagged_only, _ = audit.audit_command(str(path), out=str(tmp_path / "s2.csv"), folds=3)
    assert flagged_only == [r for r in written if r["is_label_issue"]]
    groups = audit.sheet_groups(written)
    assert len(groups) == 1 and [p for p, _ in groups[0][1]] == [r["path"] for r in written]
    assert groups[0][1][0][1].startswith("#1 ")
    assert audit.sheet_groups([]) == []
