"""Oracle tests for the basic methods (zeroshot, linear, knn, ensemble) and sklearn's estimator checks."""
from __future__ import annotations

import fewshot_data
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from classify import create
from classify.methods.features import align_proba, cv_splits, l2_normalize, labeled_mask
from classify.methods.ensemble import EnsembleClassifier
from classify.methods.knn import KNNClassifier
from classify.methods.linear import DEFAULT_ALPHAS, DEFAULT_CS, LinearProbe
from classify.methods.moe import MixtureOfExperts
from classify.methods.zeroshot import ZeroShotClassifier

TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


_softmax = fewshot_data.softmax


def _clip_like(n_per_class=20, n_classes=3, dim=8, noise=0.6, seed=0):
    """Image features near their class's text embedding: (X, y, text (C, T, D))."""
    return fewshot_data.clip_like(n_per_class, n_classes, dim, noise, 0.3, len(TEMPLATES), 3.0, seed)


@pytest.fixture(scope="module")
def digits_few():
    """sklearn digits, 10 labeled rows per class, the rest unlabeled (y = -1) and used as the test set."""
    return fewshot_data.digits_few()

# ---------------------------------------------------------------- features helpers
def test_features_helpers():
    X = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    n = l2_normalize(X)
    assert n.dtype == np.float32 and np.allclose(n, [[0.6, 0.8], [0.0, 0.0]])
    assert labeled_mask(np.array([2, -1, 0])).tolist() == [True, False, True]
    assert labeled_mask(np.array(["a", "b"])).tolist() == [True, True]
    assert labeled_mask(np.array(["a", -1], dtype=object)).tolist() == [True, False]
    assert cv_splits(np.array([0, 0, 0, 1, 1, 2, 2, 2])) == 2 and cv_splits(np.array([0, 1, 1])) == 1
    P = align_proba(np.array([[0.25, 0.75]]), [1, 3], [0, 1, 2, 3])
    assert np.array_equal(P, [[0.0, 0.25, 0.0, 0.75]])


# ---------------------------------------------------------------- zeroshot
def test_zeroshot_equals_hand_computation():
    rng = np.random.default_rng(1)
    text = rng.normal(size=(3, 2, 4))  # (C=3, T=2, D=4)
    X = rng.normal(size=(5, 4)) * 7.0
    W = np.zeros((3, 4))
    for c in range(3):
        t0 = text[c, 0] / np.sqrt(np.sum(text[c, 0] ** 2))
        t1 = text[c, 1] / np.sqrt(np.sum(text[c, 1] ** 2))
        m = (t0 + t1) / 2
        W[c] = m / np.sqrt(np.sum(m ** 2))
    Xn = X / np.sqrt(np.sum(X ** 2, axis=1, keepdims=True))
    expected = _softmax(100.0 * Xn @ W.T)

    est = ZeroShotClassifier(text_embeddings=text).fit(X, np.full(5, -1))  # needs no labels
    assert np.array_equal(est.classes_, [0, 1, 2])
    np.testing.assert_allclose(est.predict_proba(X), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(est.predict(X), expected.argmax(axis=1))
    # fit without y works too
    np.testing.assert_allclose(ZeroShotClassifier(text_embeddings=text).fit(X).predict_proba(X), expected, atol=1e-6)


def test_zeroshot_template_subset_selects():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(3, 2, 4))
    X = rng.normal(size=(6, 4))
    only_second = ZeroShotClassifier(text_embeddings=text[:, 1:, :]).fit(X)
    by_name = ZeroShotClassifier(text_embeddings=text, templates=TEMPLATES, template_subset=[TEMPLATES[1]]).fit(X)
    by_index = ZeroShotClassifier(text_embeddings=text, template_subset=[1]).fit(X)
    both = ZeroShotClassifier(text_embeddings=text).fit(X)
    np.testing.assert_allclose(by_name.predict_proba(X), only_second.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(by_index.predict_proba(X), only_second.predict_proba(X), atol=1e-6)
    assert not np.allclose(both.predict_proba(X), only_second.predict_proba(X), atol=1e-3)
    w = text[:, 1] / np.linalg.norm(text[:, 1], axis=1, keepdims=True)
    np.testing.assert_allclose(by_name.class_weights_, w, atol=1e-6)


def test_zeroshot_errors():
    X = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="no text embeddings for this backbone.*python -m embed run"):
        ZeroShotClassifier().fit(X)
    with pytest.raises(ValueError, match="dim 5 but image features have dim 4"):
        ZeroShotClassifier(text_embeddings=np.ones((3, 2, 5))).fit(X)
    with pytest.raises(ValueError, match="unknown template"):
        ZeroShotClassifier(text_embeddings=np.ones((3, 2, 4)), templates=TEMPLATES, template_subset=["nope"]).fit(X)
    with pytest.raises(ValueError, match="pass templates"):
        ZeroShotClassifier(text_embeddings=np.ones((3, 2, 4)), template_subset=["a photo of a {}."]).fit(X)


def test_zeroshot_survives_clone_and_cross_val_score():
    X, y, text = _clip_like()
    est = ZeroShotClassifier(text_embeddings=text)
    scores = cross_val_score(est, X, y, cv=3)
    assert scores.mean() > 0.9  # features are near their class texts
    assert clone(est).get_params()["text_embeddings"] is not None


# ---------------------------------------------------------------- linear
def test_linear_digits_chosen_C_and_hand_refit(digits_few):
    X, y, y_semi, lab, test = digits_few
    est = LinearProbe().fit(X, y_semi)
    assert est.C_ in DEFAULT_CS
    assert est.alpha_ == 1.0 and est.cv_scores_.shape == (len(DEFAULT_CS), 1)
    acc = np.mean(est.predict(X[test]) == y[test])
    constant = np.max(np.bincount(y[test])) / len(test)
    assert acc > constant + 0.5  # measured ~0.90 vs a constant's ~0.10
    hand = LogisticRegression(C=est.C_, max_iter=1000).fit(l2_normalize(X[lab]), y[lab])
    hand_pred = hand.predict(l2_normalize(X[test]))
    np.testing.assert_array_equal(est.predict(X[test]), hand_pred)
    # lbfgs stops at its tolerance, and BLAS thread counts change the last float32 bits: 2.8e-6 apart was seen
    np.testing.assert_allclose(est.predict_proba(X[test]), hand.predict_proba(l2_normalize(X[test])), atol=1e-5)


def test_linear_alpha_zero_equals_zeroshot_and_alpha_one_equals_probe():
    X, y, text = _clip_like(seed=3)
    zs = ZeroShotClassifier(text_embeddings=text).fit(X)
    lin0 = LinearProbe(text_embeddings=text, alpha=0.0).fit(X, y)
    np.testing.assert_allclose(lin0.predict_proba(X), zs.predict_proba(X), atol=1e-6)
    lin1 = LinearProbe(text_embeddings=text, alpha=1.0, Cs=[1.0]).fit(X, y)
    plain = LinearProbe(Cs=[1.0]).fit(X, y)
    np.testing.assert_allclose(lin1.predict_proba(X), plain.predict_proba(X), atol=1e-9)
    # alpha in between is a log-linear mix of the two
    mid = LinearProbe(text_embeddings=text, alpha=0.3, Cs=[1.0]).fit(X, y)
    expected = _softmax(0.7 * np.log(zs.predict_proba(X)) + 0.3 * np.log(plain.predict_proba(X)))
    np.testing.assert_allclose(mid.predict_proba(X), expected, atol=1e-6)


def test_linear_alpha_chosen_from_grid_and_unlabeled_ignored():
    X, y, text = _clip_like(seed=4)
    y_semi = y.copy()
    y_semi[::2] = -1
    est = LinearProbe(text_embeddings=text).fit(X, y_semi)
    assert est.alpha_ in DEFAULT_ALPHAS and est.C_ in DEFAULT_CS
    only_lab = LinearProbe(text_embeddings=text).fit(X[y_semi >= 0], y[y_semi >= 0])
    np.testing.assert_allclose(est.predict_proba(X), only_lab.predict_proba(X), atol=1e-9)


def test_linear_class_without_labels_predicted_by_zeroshot():
    X, y, text = _clip_like(seed=5)
    y_semi = np.where(y == 2, -1, y)  # class 2 has no labels at all
    est = LinearProbe(text_embeddings=text, alpha=0.5, Cs=[1.0]).fit(X, y_semi)
    assert np.array_equal(est.classes_, [0, 1, 2])
    assert np.mean(est.predict(X[y == 2]) == 2) > 0.5
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        LinearProbe(text_embeddings=text).fit(X, np.where(y == 2, 7, y))


def test_linear_single_labeled_row_falls_back():
    X, y, _ = _clip_like(n_per_class=3, seed=6)
    y_semi = y.copy()
    y_semi[1:3] = -1  # class 0 keeps one labeled row: no CV possible
    est = LinearProbe().fit(X, y_semi)
    assert est.C_ == float(np.median(DEFAULT_CS)) and est.cv_scores_ is None


# ---------------------------------------------------------------- knn
def _brute_knn_proba(Xtr, ytr, Xte, k, weights):
    lab = ytr != -1
    A = Xtr[lab] / np.linalg.norm(Xtr[lab], axis=1, keepdims=True)
    B = Xte / np.linalg.norm(Xte, axis=1, keepdims=True)
    classes = np.unique(ytr[lab])
    S = B @ A.T  # (n_te, n_lab)
    out = np.zeros((len(B), len(classes)))
    for i in range(len(B)):
        nn = np.argsort(-S[i])[:k]
        for j in nn:
            s = S[i, j]
            if weights == "uniform":
                w = 1.0
            elif weights == "distance":
                w = 1.0 / max(1.0 - s, 1e-6)
            else:
                w = np.exp(s / weights)
            out[i, np.searchsorted(classes, ytr[lab][j])] += w
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weights", ["uniform", "distance", 0.1])
def test_knn_equals_brute_force(weights):
    rng = np.random.default_rng(7)
    Xtr = rng.normal(size=(60, 6)).astype(np.float64)
    ytr = rng.integers(0, 4, size=60)
    ytr[:10] = -1  # unlabeled rows are never neighbours
    Xte = rng.normal(size=(15, 6))
    est = KNNClassifier(k=5, weights=weights).fit(Xtr, ytr)
    np.testing.assert_allclose(est.predict_proba(Xte), _brute_knn_proba(Xtr, ytr, Xte, 5, weights), rtol=1e-4)
    # k larger than the labeled set uses every labeled row
    big = KNNClassifier(k=500, weights="uniform").fit(Xtr, ytr)
    np.testing.assert_allclose(big.predict_proba(Xte), _brute_knn_proba(Xtr, ytr, Xte, 50, "uniform"), atol=1e-9)


def test_knn_gridsearch(digits_few):
    X, y, _, lab, _ = digits_few
    gs = GridSearchCV(create("knn"), {"k": [1, 3], "weights": ["uniform", 0.07]}, cv=3).fit(X[lab], y[lab])
    assert gs.best_params_["k"] in (1, 3) and gs.best_score_ > 0.7


# ---------------------------------------------------------------- ensemble
def test_ensemble_single_member_equals_member(digits_few):
    X, y, y_semi, _, test = digits_few
    member = KNNClassifier(k=3, weights="distance")
    ens = EnsembleClassifier(methods=[member]).fit(X, y_semi)
    np.testing.assert_allclose(ens.predict_proba(X[test]), clone(member).fit(X, y_semi).predict_proba(X[test]))
    assert member.__dict__.get("classes_") is None  # members are cloned, never fitted in place


def test_ensemble_feature_slices_equal_mean_of_members(digits_few):
    X, y, y_semi, _, test = digits_few
    a, b = LinearProbe(Cs=[10.0]), KNNClassifier(k=5)
    ens = EnsembleClassifier(methods=[a, "knn"], feature_slices=[(0, 32), (32, 64)], weights=[3, 1])
    ens.set_params(methods=[a, b]).fit(X, y_semi)
    pa = clone(a).fit(X[:, :32], y_semi).predict_proba(X[test][:, :32])
    pb = clone(b).fit(X[:, 32:], y_semi).predict_proba(X[test][:, 32:])
    np.testing.assert_allclose(ens.predict_proba(X[test]), 0.75 * pa + 0.25 * pb, atol=1e-12)
    assert cross_val_score(clone(ens), X[test], y[test], cv=3).mean() > 0.5


def test_ensemble_aligns_class_sets():
    X, y, text = _clip_like(n_classes=4, seed=8)
    y3 = np.where(y == 3, -1, y)  # knn sees classes 0..2, zero-shot knows 0..3
    ens = EnsembleClassifier(methods=[KNNClassifier(k=3), ZeroShotClassifier(text_embeddings=text)]).fit(X, y3)
    assert np.array_equal(ens.classes_, [0, 1, 2, 3])
    pk = KNNClassifier(k=3).fit(X, y3).predict_proba(X)
    pz = ZeroShotClassifier(text_embeddings=text).fit(X).predict_proba(X)
    expected = pz / 2
    expected[:, :3] += pk / 2
    np.testing.assert_allclose(ens.predict_proba(X), expected, atol=1e-9)


def test_ensemble_errors():
    X, y, _ = _clip_like()
    with pytest.raises(ValueError, match="needs methods"):
        EnsembleClassifier().fit(X, y)
    with pytest.raises(ValueError, match="one \\(start, stop\\) per method"):
        EnsembleClassifier(methods=["knn"], feature_slices=[(0, 2), (2, 4)]).fit(X, y)
    with pytest.raises(ValueError, match="within the 8 feature columns"):
        EnsembleClassifier(methods=["knn"], feature_slices=[(0, 9)]).fit(X, y)
    with pytest.raises(ValueError, match="unknown method"):
        EnsembleClassifier(methods=["knnn"]).fit(X, y)


# ---------------------------------------------------------------- string labels
# (sklearn's check_classifiers_classes is an expected failure only because of its {-1, 1} labels; its string-label
# part is covered here, together with unlabeled rows in an object array.)
@pytest.mark.parametrize("make", [
    lambda: KNNClassifier(k=3),
    lambda: LinearProbe(Cs=[1.0]),
    lambda: EnsembleClassifier(methods=[KNNClassifier(k=3), LinearProbe(Cs=[1.0])]),
    lambda: MixtureOfExperts(base=LinearProbe(Cs=[1.0]), gate=LinearProbe(Cs=[1.0]), expert=LinearProbe(Cs=[1.0])),
])
def test_string_labels_and_object_unlabeled(make):
    X, y, _ = _clip_like(seed=9)
    names = np.array(["cat", "dog", "eel"])
    y_str = names[y]
    est = make().fit(X, y_str)
    assert est.classes_.tolist() == names.tolist()
    assert np.mean(est.predict(X) == y_str) > 0.9
    y_obj = y_str.astype(object)
    y_obj[::4] = -1
    est = make().fit(X, y_obj)
    assert est.classes_.tolist() == names.tolist() and set(est.predict(X)) <= set(names)


# ---------------------------------------------------------------- sklearn's estimator checks
# zeroshot is excluded: its classes and feature dimension come from the text embeddings, not from (X, y),
# so the checks' random data of 1-10 features cannot fit it; its clone / cross_val_score behaviour is
# tested above. Small CV grids keep the checks fast; the defaults are exercised by the oracle tests.
_NEG_LABEL = ("labels {-1, 1}: -1 marks unlabeled rows (the suite's convention, as in sklearn's semi-supervised "
              "estimators, which sklearn exempts from this check by name)")
_EXPECTED_FAILURES = {
    "MixtureOfExperts": {
        "check_classifiers_classes": _NEG_LABEL,
        "check_class_weight_classifiers": "class_weight is a gate weighting scheme ('balanced', 'superclass', None), "
                                          "not a per-class dict",
    },
}


def _expected_failed_checks(estimator):
    return {"check_classifiers_classes": _NEG_LABEL, **_EXPECTED_FAILURES.get(type(estimator).__name__, {})}


@parametrize_with_checks(
    [
        KNNClassifier(k=3),
        LinearProbe(Cs=[0.1, 10.0], cv=3),
        EnsembleClassifier(methods=[KNNClassifier(k=3), LinearProbe(Cs=[1.0])], weights=[1, 2]),
        MixtureOfExperts(base=LinearProbe(Cs=[1.0]), gate=LinearProbe(Cs=[1.0]), expert=LinearProbe(Cs=[1.0]), cv=3),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
