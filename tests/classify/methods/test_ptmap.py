"""ptmap: Sinkhorn marginals, the balanced assignment of the fit rows, the gain over class means, persistence."""
import fewshot_data
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from classify import persist
from classify.methods.ptmap import PTMap, sinkhorn


def test_sinkhorn_meets_row_and_column_marginals():
    rng = np.random.default_rng(0)
    P = rng.random((40, 4)) ** 4  # (n, C), very uneven
    mass = np.array([0.1, 0.2, 0.3, 0.4]) * 40
    Q = sinkhorn(P, mass, n_iter=500, tol=1e-10)
    np.testing.assert_allclose(Q.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(Q.sum(axis=0), mass, rtol=1e-6)
    ratio = Q / (P / P.sum(axis=1, keepdims=True))  # a diagonal scaling: rank one
    np.testing.assert_allclose(ratio / ratio[:, :1], (ratio / ratio[:, :1])[0][None, :].repeat(40, 0), rtol=1e-6)


def _offset_blobs(seed=0):
    """Positive features (like pooled CNN activations); one labeled row per class, far from its class centre."""
    X, y, y_true = fewshot_data.blobs(n_per=60, n_classes=4, dim=10, n_labeled=1, seed=seed, spread=1.2)
    return np.abs(X) + 0.1, y, y_true


def test_unlabeled_rows_move_the_prototypes_past_the_class_means():
    gains = []
    for seed in range(4):
        X, y, y_true = _offset_blobs(seed)
        test = y == -1
        means = PTMap(n_steps=0).fit(X, y)  # no update: the nearest labeled-class-mean rule
        full = PTMap().fit(X, y)
        gains.append(np.mean(full.predict(X[test]) == y_true[test]) - np.mean(means.predict(X[test]) == y_true[test]))
    assert np.mean(gains) > 0.05, gains


@pytest.mark.parametrize("prior", ["uniform", "estimated", "labeled"])
def test_fit_rows_get_their_assignment_labeled_rows_their_label(prior):
    X, y, _ = _offset_blobs()
    y = np.where(y >= 0, y * 3 + 2, -1)  # labels 2, 5, 8, 11: not 0..C-1
    model = PTMap(prior=prior, lam=10.0).fit(X, y)  # a soft assignment: Sinkhorn converges in its 50 scalings
    np.testing.assert_array_equal(model.classes_, [2, 5, 8, 11])
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, model.label_distributions_, atol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(X[y >= 0]), y[y >= 0])
    unl = model.label_distributions_[y < 0]  # the balanced shares of the unlabeled rows
    np.testing.assert_allclose(unl.sum(axis=0), model.prior_ * unl.shape[0], rtol=1e-3)
    if prior == "uniform":
        np.testing.assert_allclose(model.prior_, 0.25)


def test_new_rows_get_the_prototype_posterior():
    X, y, y_true = _offset_blobs()
    model = PTMap().fit(X, y)
    new = X[y < 0][:20] * 1.01 + 0.02  # not fit rows
    proba = model.predict_proba(new)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.mean(model.classes_[proba.argmax(axis=1)] == y_true[y < 0][:20]) > 0.6


def test_sklearn_tools_and_parameter_checks():
    X, y_true = fewshot_data.blobs(n_per=20, n_classes=3, dim=6, n_labeled=20, seed=1, spread=0.3)[::2]
    X = X - X.min() + 0.1
    assert cross_val_score(clone(PTMap()), X, y_true, cv=3).mean() > 0.8  # fully labeled: class means
    for bad in ({"lam": 0}, {"alpha": 1.5}, {"prior": "balanced"}, {"n_steps": -1}, {"whiten": "yes"}):
        with pytest.raises(ValueError, match="ptmap: " + next(iter(bad))):
            PTMap(**bad).fit(X, y_true)
    with pytest.raises(ValueError, match="at least one labeled row"):
        PTMap().fit(X, np.full(len(X), -1))


def test_saved_model_loads_and_predicts_the_same(tmp_path):
    X, y, _ = _offset_blobs()
    model = PTMap(n_components=5, whiten=True).fit(X, y)
    loaded = persist.load(persist.save(model, tmp_path / "ptmap.skops"))
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))
