"""Tests for FixMatch on cached views (``fixmatch``): beats its labels-only self, shares selftrain's thresholds,
predicts from the plain features only."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

import classify.methods.thresholds
from classify.methods import fixmatch as fixmatch_module
from classify.methods.fixmatch import FixMatchHead
from classify.pipeline import uses_views

KINDS = ["weak", "strong"]


def _views_data(seed=2, n_classes=4, dim=64, n_labeled=2, n_unlabeled=1000, n_test=200, sep=0.5):
    """Gaussian classes; 2 labels per class; every row carries a weak (small noise) and a strong (large noise) view.

    Returns X (n, 3 D) = [features | weak | strong] with y (-1 unlabeled), and test rows (features repeated).
    """
    rng = np.random.default_rng(seed)
    means = sep * rng.normal(size=(n_classes, dim))

    def sample(n):
        y = np.repeat(np.arange(n_classes), n)
        return means[y] + rng.normal(size=(len(y), dim)), y

    Xl, yl = sample(n_labeled)
    Xu, _ = sample(n_unlabeled)
    Xt, yt = sample(n_test // n_classes)
    X = np.vstack([Xl, Xu])
    X = np.hstack([X, X + 0.3 * rng.normal(size=X.shape), X + 1.0 * rng.normal(size=X.shape)])
    y = np.concatenate([yl, np.full(len(Xu), -1)])
    return X.astype(np.float32), y, np.hstack([Xt] * 3).astype(np.float32), yt


@pytest.fixture(scope="module")
def data():
    return _views_data()


def test_beats_the_same_head_trained_on_labels_only(data):
    X, y, Xt, yt = data
    fixmatch = FixMatchHead(view_kinds=KINDS, epochs=20).fit(X, y)
    labels_only = FixMatchHead(view_kinds=KINDS, epochs=20, lambda_u=0.0).fit(X, y)  # same schedule, no L_u
    acc_fm, acc_lab = (fixmatch.predict(Xt) == yt).mean(), (labels_only.predict(Xt) == yt).mean()
    assert acc_fm >= acc_lab + 0.1, (acc_fm, acc_lab)
    assert fixmatch.fit_report_["per_epoch"][-1]["mask_rate"] > 0.3
    assert labels_only.thresholds_ is None and labels_only.fit_report_["per_epoch"][-1]["mask_rate"] == 0


def test_uses_the_shared_class_aware_thresholds(data, monkeypatch):
    X, y, _, _ = data
    assert fixmatch_module.ClassAwareThresholds is classify.methods.thresholds.ClassAwareThresholds
    seen = []
    real_step = classify.methods.thresholds.ClassAwareThresholds.step

    def spy(self, proba):
        seen.append(self)
        return real_step(self, proba)

    monkeypatch.setattr(classify.methods.thresholds.ClassAwareThresholds, "step", spy)
    model = FixMatchHead(view_kinds=KINDS, epochs=2, threshold=0.9, eps=0.01).fit(X, y)
    steps = 2 * -(-1000 * 4 // (4 * 64))  # epochs * ceil(n_unlabeled / (mu * batch_size))
    assert len(seen) == steps and len(set(map(id, seen))) == 1 and seen[0].n_steps == steps
    np.testing.assert_array_equal(model.thresholds_, seen[0].thresholds)
    np.testing.assert_allclose(seen[0].target, 0.25)  # the labeled class prior
    seen.clear()
    FixMatchHead(view_kinds=KINDS, epochs=2, lambda_u=0.0).fit(X, y)
    assert not seen


def test_predicts_from_the_plain_features_only(data):
    X, y, Xt, _ = data
    model = FixMatchHead(view_kinds=KINDS, epochs=2).fit(X, y)
    D = Xt.shape[1] // 3
    scrambled = Xt.copy()
    scrambled[:, D:] = np.random.default_rng(0).normal(size=(len(Xt), 2 * D))
    np.testing.assert_array_equal(model.predict_proba(scrambled), model.predict_proba(Xt))


def test_deterministic_and_clonable(data):
    X, y, Xt, _ = data
    a = FixMatchHead(view_kinds=KINDS, epochs=2, hidden=16, random_state=3).fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(Xt), b.predict_proba(Xt))
    assert uses_views("fixmatch") and uses_views(a)


def test_views_without_weak_use_the_plain_features(data):
    X, y, Xt, _ = data
    D = X.shape[1] // 3
    strong_only = np.hstack([X[:, :D], X[:, 2 * D:]])
    model = FixMatchHead(view_kinds=["strong"], epochs=2).fit(strong_only, y)
    assert model.fit_report_["consistency"] and model.predict(Xt[:, :2 * D]).shape == (len(Xt),)


def test_errors(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="--views"):
        FixMatchHead().fit(X, y)
    with pytest.raises(ValueError, match="'weak' and 'strong'"):
        FixMatchHead(view_kinds=["weak", "medium"]).fit(X, y)
    with pytest.raises(ValueError, match="multiple of 1 \\+ 3"):
        FixMatchHead(view_kinds=KINDS + ["weak"]).fit(X[:, :99], y)
    with pytest.raises(ValueError, match="2 classes"):
        FixMatchHead(view_kinds=KINDS).fit(X, np.where(y > 0, -1, y))
    with pytest.raises(ValueError, match="epochs"):
        FixMatchHead(view_kinds=KINDS, epochs=-1).fit(X, y)


def test_gridsearch(data):
    X, y, _, _ = data
    labeled = y != -1
    rows = np.concatenate([np.flatnonzero(labeled), np.flatnonzero(~labeled)[:200]])
    search = GridSearchCV(FixMatchHead(view_kinds=KINDS, epochs=1), {"hidden": [None, 8]}, cv=2)
    search.fit(X[labeled], y[labeled])
    assert search.best_params_["hidden"] in (None, 8)
    assert FixMatchHead(view_kinds=KINDS, epochs=1).fit(X[rows], y[rows]).n_features_in_ == X.shape[1]


# With view_kinds=[] (no views) the rows are plain features and the head trains on the labeled rows: sklearn's
# generic checks then apply to the head, its input handling and the -1 convention.
_NEG_LABEL = ("labels {-1, 1}: -1 marks unlabeled rows (the suite's convention, as in sklearn's semi-supervised "
              "estimators, which sklearn exempts from this check by name)")


@parametrize_with_checks([FixMatchHead(view_kinds=[], epochs=30)],
                         expected_failed_checks=lambda est: {"check_classifiers_classes": _NEG_LABEL})
def test_sklearn_compatible(estimator, check):
    check(estimator)
