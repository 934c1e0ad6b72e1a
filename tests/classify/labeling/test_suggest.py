"""``classify.labeling.suggest``:
suggestions are deterministic, diverse, class-balanced, from the pool only; bad input is one
line."""
import csv

import numpy as np
import pytest

from classify.labeling import suggest as active
from labelstore import SPEC, make_store

def separated(seed=0, dim=8, sizes=(200, 20, 20, 20), shots=2, copies=6):
    """Four well-separated Gaussian classes; ``shots`` labels each; an imbalanced pool (class 0 ten times larger)
    holding ``copies`` exact copies of one pool row of every class and of one labeled row of class 1."""
    rng = np.random.default_rng(seed)
    means = np.eye(len(sizes), dim) * 12.0  # (C, D) far apart
    truth = np.concatenate([np.full(n + shots, c) for c, n in enumerate(sizes)])  # (n,)
    X = means[truth] + rng.normal(size=(truth.size, dim))  # (n, D)
    y = np.full(truth.size, -1)
    for c in range(len(sizes)):
        y[np.flatnonzero(truth == c)[:shots]] = c
    pool = np.flatnonzero(y == -1)
    for c in range(len(sizes)):
        source = pool[truth[pool] == c][0]
        X[pool[truth[pool] == c][1:1 + copies]] = X[source]  # duplicates inside the pool
    labeled_one = np.flatnonzero(y == 1)[0]
    twins = pool[truth[pool] == 1][-copies:]
    X[twins] = X[labeled_one]  # duplicates of a labeled image
    return X.astype(np.float32), y, truth, twins


@pytest.mark.parametrize("strategy", ["diverse", "typiclust"])
def test_class_balanced_diverse_and_deterministic(strategy):
    X, y, truth, twins = separated()
    sel = active.suggest_arrays(X, y, budget=8, method="linear", seed=3, strategy=strategy)
    assert np.bincount(truth[sel.index], minlength=4).tolist() == [2, 2, 2, 2]  # the pool is 10:1:1:1
    assert np.array_equal(sel.predicted, truth[sel.index])
    assert (y[sel.index] == -1).all()
    assert len({X[i].tobytes() for i in sel.index}) == 8  # no two suggestions are the same image
    assert not np.isin(sel.index, twins).any()  # nor a copy of a labeled image
    again = active.suggest_arrays(X, y, budget=8, method="linear", seed=3, strategy=strategy)
    assert np.array_equal(sel.index, again.index) and np.allclose(sel.score, again.score)
    assert len(sel.reason) == 8 and all(sel.reason)


def test_balance_favours_the_classes_with_fewest_labels():
    X, y, truth, _ = separated()
    y[np.flatnonzero(truth == 0)[2:6]] = 0  # class 0 has 6 labels, the others 2
    sel = active.suggest_arrays(X, y, budget=3, method="linear", seed=0)
    assert sorted(truth[sel.index].tolist()) == [1, 2, 3]


def test_margin_prefers_the_undecided_and_random_is_seeded():
    X, y, _, _ = separated()
    middle = np.flatnonzero(y == -1)[-1]
    X[middle] = (X[np.flatnonzero(y == 2)[0]] + X[np.flatnonzero(y == 3)[0]]) / 2  # halfway between classes 2 and 3
    sel = active.suggest_arrays(X, y, budget=1, strategy="margin", method="knn")
    assert sel.index.tolist() == [middle]
    assert "between" in sel.reason[0]
    first = active.suggest_arrays(X, y, budget=5, strategy="random", seed=1).index
    assert np.array_equal(first, active.suggest_arrays(X, y, budget=5, strategy="random", seed=1).index)
    assert not np.array_equal(first, active.suggest_arrays(X, y, budget=5, strategy="random", seed=2).index)


def test_candidates_limit_the_pool():
    X, y, truth, _ = separated()
    allowed = np.zeros(len(y), dtype=bool)
    allowed[np.flatnonzero((truth == 2) & (y == -1))[-3:]] = True  # no copies among them
    sel = active.suggest_arrays(X, y, budget=3, candidates=allowed)
    assert sorted(sel.index.tolist()) == sorted(np.flatnonzero(allowed).tolist())


@pytest.mark.parametrize("budget, message", [(10_000, "larger than the pool"), (0, ">= 1"), (2.5, ">= 1")])
def test_bad_budget(budget, message):
    X, y, _, _ = separated()
    with pytest.raises(ValueError, match=message):
        active.suggest_arrays(X, y, budget=budget)


def test_no_unlabeled_or_no_labeled_rows():
    X, y, truth, _ = separated()
    with pytest.raises(ValueError, match="no unlabeled images"):
        active.suggest_arrays(X, truth, budget=1)
    with pytest.raises(ValueError, match="no labeled rows"):
        active.suggest_arrays(X, np.full(len(y), -1), budget=1)
    with pytest.raises(ValueError, match="unknown strategy"):
        active.suggest_arrays(X, y, budget=1, strategy="entropy")


def test_store_suggestions_come_from_the_pool_only(tmp_path, capsys):
    path, ids, splits, _ = make_store(tmp_path / "s.h5")
    pool = [i for i, s in enumerate(splits) if s == "unlabeled"]
    n_ok = len(pool) - 2  # minus the failed image and the copy of a labeled one
    rows = active.suggest_store(path, budget=n_ok, seed=0)
    chosen = {r["id"] for r in rows}
    assert len(chosen) == n_ok
    assert all(r["id"].startswith("unlabeled/") for r in rows)
    assert ids[pool[0]] not in chosen and ids[pool[1]] not in chosen
    assert rows[0]["path"] == f"/data/{rows[0]['id']}"
    with pytest.raises(ValueError, match=f"use --budget {n_ok} or less"):
        active.suggest_store(path, budget=n_ok + 1)

    out = tmp_path / "to_label.csv"
    written, summary = active.suggest_command(str(path), backbone=SPEC, budget=6, out=str(out), seed=1)
    with open(out, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["rank", "id", "path", "predicted", "score", "reason"]
    assert [r[1] for r in table[1:]] == [r["id"] for r in written]
    assert sorted(r[3] for r in table[1:]) == ["cat", "cat", "dog", "dog", "fox", "fox"]
    assert "suggested 6 images" in summary and capsys.readouterr().out == ""  # the library says, the CLI prints
    groups = active.sheet_groups(written)
    assert len(groups) == 1 and [caption.split(" ")[0] for _, caption in groups[0][1]] == [f"#{k}" for k in range(1, 7)]
    assert all(p.startswith("/data/unlabeled/") and f"predicted {r['predicted']} " in caption
               for (p, caption), r in zip(groups[0][1], written))


def test_store_errors(tmp_path):
    path, *_ = make_store(tmp_path / "s.h5")
    with pytest.raises(ValueError, match="no features for backbone 'timm:other'.*embed run"):
        active.suggest_store(path, backbone="timm:other", budget=1)
    empty, *_ = make_store(tmp_path / "e.h5", unlabeled=False)
    with pytest.raises(ValueError, match="no unlabeled images"):
        active.suggest_store(empty, budget=1)
