"""Self-training: rounds=0 is the teacher, selection rules and starvation, soft vs hard pseudo-labels, report."""
import json
import logging

import fewshot_data
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.estimator_checks import parametrize_with_checks

from classify.methods.labelprop import KNNLabelPropagation
from classify.methods.selftrain import LogisticHead, SelfTraining
from classify.methods.registry import create


blobs = fewshot_data.blobs

class SkewedTeacher(ClassifierMixin, BaseEstimator):
    """A realistic mis-calibrated teacher: confident on classes 0 and 1, never above ``cap`` on class 2.

    Nearest labeled centroid, softmax(-distance / T) with a per-class temperature; class 2's rows are
    re-scaled so that their top probability lies in [0.55, cap).
    """

    def __init__(self, cap=0.9):
        self.cap = cap

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.centers_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, X):
        d = ((X[:, None, :] - self.centers_[None]) ** 2).sum(-1)  # (n, C)
        logits = -d / 0.5
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        two = p.argmax(axis=1) == 2
        top = 0.55 + (self.cap - 0.56) * p[two, 2]  # squeeze class-2 confidence into [0.55, cap)
        rest = p[two][:, :2] + 1e-9
        rest /= rest.sum(axis=1, keepdims=True)
        p[two] = np.column_stack([rest * (1 - top)[:, None], top])
        return p


class RecordingHead(ClassifierMixin, BaseEstimator):
    """Records what it was trained on; predicts the weighted majority class."""

    def fit(self, X, y, sample_weight=None):
        self.X_, self.y_ = X, y
        self.w_ = np.ones(len(y)) if sample_weight is None else sample_weight
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        mass = np.array([self.w_[self.y_ == c].sum() for c in self.classes_])
        return np.tile(mass / mass.sum(), (len(X), 1))


class NoWeightHead(LogisticRegression):
    def fit(self, X, y):  # noqa: D102  (a head without sample_weight)
        return super().fit(X, y)


def test_rounds_zero_is_the_teacher():
    X, y, _ = blobs(spread=1.5)
    X_new = X[:40] + 0.1
    st = SelfTraining(rounds=0).fit(X, y)
    lp = KNNLabelPropagation().fit(X, y)
    np.testing.assert_allclose(st.predict_proba(X_new), lp.predict_proba(X_new))
    assert st.head_ is None and st.pseudo_counts_.shape == (0, 3)
    probe = make_pipeline(Normalizer(), LogisticRegression())  # not semi-supervised: fitted on labeled rows only
    st = SelfTraining(teacher=probe, rounds=0).fit(X, y)
    ref = clone(probe).fit(X[y >= 0], y[y >= 0])
    np.testing.assert_allclose(st.predict_proba(X_new), ref.predict_proba(X_new))
    assert st.classes_.tolist() == [0, 1, 2] and st.fit_report_["teacher_fit_rows"] == "labeled"


def test_default_self_training_learns_and_reports():
    X, y, y_true = blobs(spread=1.0)
    st = create("selftrain", rounds=2).fit(X, y)
    assert isinstance(st, SelfTraining) and isinstance(st.head_, LogisticHead)
    assert (st.predict(X) == y_true).mean() > 0.9
    assert st.pseudo_counts_.shape == (2, 3) and st.pseudo_counts_.dtype.kind == "i"
    report = json.loads(json.dumps(st.fit_report_))  # JSON-able
    assert [r["source"] for r in report["per_round"]] == ["teacher", "head"]
    for r, counts in zip(report["per_round"], st.pseudo_counts_):
        assert [r["counts"][str(c)] for c in range(3)] == counts.tolist() and r["n_selected"] == counts.sum()
    assert report["per_round"][0]["k"] == 75  # per_class_k=1.0: 225 unlabeled rows / 3 classes


def starvation_fit(selection, **params):
    X, y, _ = blobs(n_per=200, spread=1.2, seed=3)
    return SelfTraining(teacher=SkewedTeacher(), selection=selection, threshold=0.98, rounds=1, **params).fit(X, y)


def test_fixed_threshold_starves_a_class_classaware_and_balanced_do_not(caplog):
    with caplog.at_level(logging.WARNING, logger="classify.methods.selftrain"):
        fixed = starvation_fit("fixed")
    counts = fixed.pseudo_counts_[0]
    assert counts[2] == 0 and counts[0] > 50 and counts[1] > 50
    assert "no pseudo-labels for class(es) [2]" in caplog.text
    assert fixed.fit_report_["per_round"][0]["starved"] == [2] and fixed.fit_report_["warnings"]

    aware = starvation_fit("classaware", classaware_steps=1000, tau0=0.98)  # starting where "fixed" stays
    assert np.all(aware.pseudo_counts_[0] > 0) and aware.fit_report_["per_round"][0]["starved"] == []
    assert aware.thresholds_[2] < 0.9 <= aware.thresholds_[0]  # the starved class's threshold came down
    assert len(aware.fit_report_["per_round"][0]["thresholds"]) == 3

    balanced = starvation_fit("balanced", per_class_k=40)
    assert balanced.pseudo_counts_[0].tolist() == [40, 40, 40]  # each class has >= 40 candidates


def test_hard_and_soft_pseudo_labels_train_the_head_as_intended():
    X, y, _ = blobs(spread=2.5)
    n_lab, n_unl = int((y >= 0).sum()), int((y < 0).sum())
    common = dict(teacher=SkewedTeacher(), selection="all", pseudo_weight=0.5)
    hard = SelfTraining(head=RecordingHead(), labels="hard", **common).fit(X, y)
    soft = SelfTraining(head=RecordingHead(), labels="soft", min_soft=1e-3, **common).fit(X, y)
    proba = hard.teacher_.predict_proba(X[y < 0])
    # hard: every unlabeled row once, with its arg-max class and weight pseudo_weight; labeled rows weight 1
    assert len(hard.head_.y_) == n_lab + n_unl
    np.testing.assert_array_equal(hard.head_.y_[n_lab:], proba.argmax(axis=1))
    np.testing.assert_allclose(hard.head_.w_, np.r_[np.ones(n_lab), np.full(n_unl, 0.5)])
    # soft: one row per (row, class) with p >= min_soft, weight pseudo_weight * renormalised p
    h = soft.head_
    assert len(h.y_) > len(hard.head_.y_)
    np.testing.assert_allclose(h.w_[:n_lab], 1.0)
    q = np.where(proba >= 1e-3, proba, 0)
    q /= q.sum(axis=1, keepdims=True)
    kept = np.nonzero(q)
    np.testing.assert_array_equal(h.y_[n_lab:], kept[1])
    np.testing.assert_allclose(h.w_[n_lab:], 0.5 * q[kept])
    np.testing.assert_allclose(np.bincount(kept[0], weights=h.w_[n_lab:]), 0.5)  # each row weighs pseudo_weight
    # with the real head, soft targets give less confident predictions than hard ones
    p_hard = SelfTraining(labels="hard", **common).fit(X, y).predict_proba(X)
    p_soft = SelfTraining(labels="soft", **common).fit(X, y).predict_proba(X)
    assert p_soft.max(axis=1).mean() < p_hard.max(axis=1).mean() - 0.01


def test_teacher_classes_beyond_the_labeled_ones_and_frozen_teacher():
    X, y, y_true = blobs(spread=1.0)
    zs_like = FrozenEstimator(LogisticRegression().fit(X, y_true))  # knows all 3 classes (as zero-shot would)
    y2 = np.where(y == 2, -1, y)  # nobody labeled class 2
    st = SelfTraining(teacher=zs_like, selection="balanced", per_class_k=30).fit(X, y2)
    assert st.classes_.tolist() == [0, 1, 2] and st.pseudo_counts_[0, 2] == 30
    assert (st.predict(X[y_true == 2]) == 2).mean() > 0.9


def test_user_errors():
    X, y, _ = blobs()
    with pytest.raises(ValueError, match="selection must be one of"):
        SelfTraining(selection="topk").fit(X, y)
    with pytest.raises(ValueError, match="per_class_k must be"):
        SelfTraining(per_class_k=1.5).fit(X, y)
    with pytest.raises(ValueError, match="rounds must be"):
        SelfTraining(rounds=-1).fit(X, y)
    with pytest.raises(ValueError, match="at least one labeled row"):
        SelfTraining().fit(X, np.full(len(y), -1))
    with pytest.raises(ValueError, match="does not accept sample_weight"):
        SelfTraining(head=NoWeightHead(), labels="soft").fit(X, y)
    SelfTraining(head=NoWeightHead(), labels="hard").fit(X, y)  # hard labels, weight 1: no sample_weight needed
    with pytest.raises(ValueError, match="unknown method 'labelprops'"):
        SelfTraining(teacher="labelprops").fit(X, y)


def test_clone_cross_val_and_grid_search():
    X, y, y_true = blobs(spread=1.5)
    est = SelfTraining(teacher="labelprop", rounds=1)
    assert clone(est).get_params()["teacher"] == "labelprop"
    assert cross_val_score(est, X, y_true, cv=3).mean() > 0.9
    grid = GridSearchCV(SelfTraining(), {"selection": ["balanced", "classaware"]}, cv=3).fit(X, y_true)
    assert grid.best_params_["selection"] in ("balanced", "classaware")


XFAIL = {
    "check_classifiers_classes": "fits labels {-1, 1}, but -1 marks an unlabeled row (sklearn's semi-supervised "
                                 "convention; sklearn exempts its own SelfTrainingClassifier from this case by name)",
}


@parametrize_with_checks([SelfTraining(), LogisticHead()],
                         expected_failed_checks=lambda est: XFAIL if isinstance(est, SelfTraining) else {})
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_a_label_free_teacher_self_trains_from_zero_labels():
    from classify.methods.zeroshot import ZeroShotClassifier

    X, _, y_true = blobs(n_per=80, n_classes=3, dim=8, n_labeled=0, seed=4, spread=1.0)
    means = np.stack([X[y_true == c].mean(axis=0) for c in range(3)])  # text embeddings pointing at each class
    teacher = ZeroShotClassifier(text_embeddings=means[:, None, :], logit_scale=10.0)
    y = np.full(len(y_true), -1)
    st = SelfTraining(teacher=teacher, selection="balanced", per_class_k=20)
    assert st.needs_labels is False and SelfTraining().needs_labels is True
    st.fit(X, y)
    assert st.pseudo_counts_[0].tolist() == [20, 20, 20]
    assert (st.predict(X) == y_true).mean() > 0.9
    with pytest.raises(ValueError, match="or a teacher that needs none"):
        SelfTraining().fit(X, y)
