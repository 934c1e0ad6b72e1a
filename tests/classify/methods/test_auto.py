"""``auto``: the probe unless CV on the labels shows another method beating it beyond the noise; the CLI default."""
import inspect
import json
import logging

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression

from classify.cli import main
from classify.methods.registry import create
from fewshot_data import digits_few
from synthstore import A, B, make_store

#: a probe with a short C grid keeps these tests fast; the rule is the same for the default probe
PROBE = {"method": "linear", "Cs": [1.0, 10.0]}
CANDIDATES = [PROBE, "selftrain", "labelprop"]


def skewed_pool(seed=0, classes=3, shots=6, n_test=30, n_pool=240, dim=8):
    """Gaussian classes whose unlabeled pool holds images of class 0 only: self-training's class-balanced selection
    and label propagation then push the other classes into class 0's region (harmful unlabeled data, as a pool of
    mostly one kind of image is in practice). Returns X, y (-1 unlabeled), y_true (-1 for the pool), test mask."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(classes, dim))
    y_true = np.r_[np.repeat(np.arange(classes), shots), np.repeat(np.arange(classes), n_test),
                   np.zeros(n_pool, int)]
    X = (centres[y_true] + rng.normal(size=(len(y_true), dim))).astype(np.float32)
    y = np.full(len(y_true), -1)
    y[:classes * shots] = y_true[:classes * shots]
    test = np.zeros(len(y), bool)
    test[classes * shots:classes * (shots + n_test)] = True
    return X, y, y_true, test


def accuracy(model, X, y):
    return float(np.mean(model.predict(X) == y))


@pytest.mark.parametrize("seed", [1, 2])
def test_keeps_the_probe_when_the_unlabeled_data_misleads(seed):
    X, y, y_true, test = skewed_pool(seed)
    probe = accuracy(create("linear", Cs=PROBE["Cs"]).fit(X, y), X[test], y_true[test])
    assert accuracy(create("selftrain").fit(X, y), X[test], y_true[test]) < probe - 0.03  # the pool harms
    model = create("auto", methods=CANDIDATES).fit(X, y)
    assert model.chosen_.startswith("linear") and model.reason_.startswith("no candidate beat its")
    assert accuracy(model, X[test], y_true[test]) == probe
    assert all(r["gain"] <= 0 for r in model.cv_results_.values())


def test_keeps_the_probe_when_the_unlabeled_data_is_useless():
    """Without unlabeled rows every semi-supervised candidate is a supervised model: nothing beats the probe."""
    X, y, y_true, test = skewed_pool(1)
    labeled = y >= 0
    model = create("auto", methods=CANDIDATES).fit(X[labeled], y[labeled])
    assert model.chosen_.startswith("linear")


def test_picks_self_training_where_it_clearly_helps():
    """Raw digits with 3 labels per class: self-training and label propagation beat the probe by far."""
    X, y_true, y, _, test = digits_few(per_class=3, seed=4)
    model = create("auto", methods=CANDIDATES).fit(X, y)
    assert model.chosen_ in ("selftrain", "labelprop")
    results = model.cv_results_
    assert results[model.chosen_]["gain"] > model.z * results[model.chosen_]["se"] > 0
    assert results[model.chosen_]["mean"] == max(r["mean"] for r in results.values())
    probe = accuracy(create("linear", Cs=PROBE["Cs"]).fit(X, y), X[test], y_true[test])
    assert accuracy(model, X[test], y_true[test]) > probe + 0.05
    assert model.reason_.startswith("beat linear")


def test_records_its_choice_and_survives_clone():
    X, y, y_true, test = skewed_pool(0)
    model = create("auto", methods=CANDIDATES, z=0.5)
    assert clone(model).get_params() == model.get_params()
    assert create("auto").get_params(deep=False)["methods"] == ("linear", "selftrain", "labelprop")
    model.fit(X, y)
    fresh = clone(model)
    assert not hasattr(fresh, "chosen_") and fresh.get_params()["z"] == 0.5
    described = model.describe()
    assert json.loads(json.dumps(described)) == described
    assert set(described["candidates"]) == {"linear(Cs=[1.0, 10.0])", "selftrain", "labelprop"}
    for result in described["candidates"].values():
        assert {"mean", "std", "gain", "se", "fit_seconds"} <= set(result) and 0 <= result["mean"] <= 1
    assert described["folds"] == 3 and described["chosen"] == model.chosen_ and described["reason"] == model.reason_
    assert model.predict_proba(X[test]).shape == (test.sum(), 3)
    again = clone(model).fit(X, y)  # deterministic with a seed
    assert again.cv_results_.keys() == model.cv_results_.keys()
    assert [r["mean"] for r in again.cv_results_.values()] == [r["mean"] for r in model.cv_results_.values()]
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def test_a_class_with_one_label_keeps_the_baseline():
    X, y, _, _ = skewed_pool(0, shots=1)
    model = create("auto", methods=CANDIDATES).fit(X, y)
    assert model.chosen_.startswith("linear") and "single labeled row" in model.reason_
    assert model.cv_results_ == {} and model.n_splits_ == 0


def run(capsys, *args):
    main([str(a) for a in args])
    return capsys.readouterr().out


def test_the_cli_default_is_auto_and_its_results_carry_the_choice(tmp_path, capsys, caplog, monkeypatch):
    from classify.cli import labels as cli_labels
    from classify.pipeline import load_model

    monkeypatch.setattr("classify.methods.linear.DEFAULT_CS", PROBE["Cs"])  # the default candidates, a faster probe
    path, _ = make_store(tmp_path / "s.h5")
    with caplog.at_level(logging.INFO, logger="classify.methods.auto"):
        result = json.loads(run(capsys, "evaluate", "--store", path, "--backbone", A, "--json").splitlines()[-1])
    assert result["method"] == "auto" and result["auto"]["chosen"] in ("linear", "selftrain", "labelprop")
    assert set(result["auto"]["candidates"]) == {"linear", "selftrain", "labelprop"} and result["auto"]["reason"]
    lines = [r.getMessage() for r in caplog.records if r.name == "classify.methods.auto"]
    assert lines == [f"auto: chose {result['auto']['chosen']}: {result['auto']['reason']}"]
    model = tmp_path / "m.skops"
    assert "fitted auto" in run(capsys, "fit", "--store", path, "--backbone", A, "--out", model)
    fitted = load_model(model)
    assert fitted.method == "auto" and fitted.estimator.chosen_ == result["auto"]["chosen"]
    assert fitted.estimator.reason_ == result["auto"]["reason"]
    no_test, _ = make_store(tmp_path / "cv.h5", labeled_test=False)  # scored by CV: one choice per fold
    out = run(capsys, "evaluate", "--store", no_test, "--backbone", A, "--folds", 2, "--json")
    cv = json.loads(out.splitlines()[-1])
    assert [set(fold["auto"]) >= {"chosen", "reason", "candidates"} for fold in cv["per_fold"]] == [True, True]
    for command in (cli_labels.suggest, cli_labels.audit):
        assert inspect.signature(command).parameters["method"].default == "auto"


def test_the_candidates_get_the_store_context(tmp_path):
    """A CLIP store gives the default probe its text embeddings (the WiSE mix), as `--method linear` gets them."""
    from classify import pipeline
    from store import FeatureStore

    path, _ = make_store(tmp_path / "s.h5")
    with FeatureStore(path) as fs:
        model = pipeline.build_for_store(fs, [B], "auto")
    probe, *_ = model.methods
    assert type(probe).method_name == "linear" and probe.text_embeddings is not None


def test_benchmark_tables_show_the_oracle_and_the_gap_closed(tmp_path):
    from benchmarks.run import gap_closed, load_task, markdown_tables, run_task

    path, _ = make_store(tmp_path / "s.h5")
    task = load_task("synthetic", path, A)
    records = run_task(task, ["linear", "knn"], shots=[1, 3], seeds=1, anchors=[], progress=lambda _: None,
                       oracle=True)
    oracle = [r for r in records if r.get("oracle")]
    assert len(oracle) == 1 and oracle[0]["n_labels"] == 15
    acc = {(r["method"], r["shots"]): r["accuracy"] for r in records if not r.get("oracle")}
    gaps = gap_closed(records)
    for (method, shots), value in acc.items():
        key = ("synthetic", A, method, shots)
        if oracle[0]["accuracy"] - acc[("linear", shots)] >= 0.005:
            expected = (value - acc[("linear", shots)]) / (oracle[0]["accuracy"] - acc[("linear", shots)])
            assert gaps[key] == pytest.approx(expected)
        else:
            assert key not in gaps
    table = markdown_tables(records)
    assert "| 1-shot | gap closed 1 | 3-shot | gap closed 3 |" in table
    assert "| oracle: linear on every train label |" in table and "on all 15 train labels" in table


def test_string_labels_with_object_unlabeled_rows():
    X, y, y_true, test = skewed_pool(0)
    names = np.array(["cat", "dog", "eel"])
    labels = names[np.maximum(y, 0)].astype(object)
    labels[y < 0] = -1
    model = create("auto", methods=[PROBE, "knn"]).fit(X, labels)
    assert model.classes_.tolist() == names.tolist() and set(model.predict(X[test])) <= set(names)



def test_a_fold_fits_label_propagation_once_when_self_training_is_taught_by_it(monkeypatch):
    """selftrain's default teacher is labelprop with its defaults: in each fold the labelprop candidate is that fitted
    teacher (same rows, same hidden labels), not a second fit, and the CV numbers are those of separate fits."""
    from classify.methods.auto import AutoSelect
    from classify.methods.labelprop import KNNLabelPropagation

    X, _, y, _, _ = digits_few(per_class=4, seed=1)
    separate = create("auto", methods=[PROBE, "selftrain", {"method": "labelprop", "k": 10}]).fit(X, y)
    fits = []
    real_fit = KNNLabelPropagation.fit
    monkeypatch.setattr(KNNLabelPropagation, "fit", lambda self, *a: fits.append(1) or real_fit(self, *a))
    shared = create("auto", methods=CANDIDATES).fit(X, y)
    assert shared.n_splits_ == 3 and len(fits) == 3 + (shared.chosen_ in ("selftrain", "labelprop"))
    assert shared.cv_results_["labelprop"]["shared_with"] == "selftrain"
    fits.clear()
    monkeypatch.setattr(AutoSelect, "_shared_fit", staticmethod(lambda estimator, fitted: None))
    unshared = create("auto", methods=CANDIDATES).fit(X, y)
    assert len(fits) == 6 + (unshared.chosen_ in ("selftrain", "labelprop"))
    for name in ("linear(Cs=[1.0, 10.0])", "selftrain", "labelprop"):
        for key in ("mean", "gain", "se"):
            assert shared.cv_results_[name][key] == unshared.cv_results_[name][key]
    assert shared.chosen_ == unshared.chosen_
    assert "shared_with" not in separate.cv_results_["labelprop(k=10)"]  # other settings: fitted on its own


class Tempered(ClassifierMixin, BaseEstimator):
    """A logistic regression whose logits are divided by ``temperature``: the same predictions at every temperature,
    probabilities closer to uniform the higher it is."""

    def __init__(self, temperature=1.0):
        self.temperature = temperature

    def fit(self, X, y):
        self.model_ = LogisticRegression(C=10.0).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return softmax(self.model_.decision_function(X) / self.temperature, axis=1)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def test_a_probability_score_breaks_an_accuracy_tie():
    """Baseline and challenger predict the same labels on every row (accuracy ties exactly, so the accuracy rule keeps
    the baseline), but the challenger's probabilities sit much closer to the truth: the Brier and log-likelihood rules
    take it, and the JSON record carries every score's paired gain."""
    X, y, y_true, test = skewed_pool(3, shots=10)
    labeled = y >= 0
    candidates = [Tempered(temperature=20.0), Tempered(temperature=1.0)]
    by_accuracy = create("auto", methods=candidates, score="accuracy").fit(X[labeled], y[labeled])
    assert by_accuracy.chosen_ == "Tempered" and by_accuracy.reason_.startswith("no candidate beat")
    results = by_accuracy.cv_results_["Tempered#2"]
    assert results["gain"] == 0 and results["scores"]["accuracy"]["gain"] == 0
    assert results["mean"] == by_accuracy.cv_results_["Tempered"]["mean"] > 0.8
    for score in ("brier", "loglik"):
        assert results["scores"][score]["gain"] > 3 * results["scores"][score]["se"] > 0
        model = create("auto", methods=candidates, score=score).fit(X[labeled], y[labeled])
        assert model.chosen_ == "Tempered#2" and model.reason_.startswith("beat Tempered by ")
        assert f"in per-row {score}" in model.reason_ and model.describe()["score"] == score
        assert model.cv_results_["Tempered#2"]["gain"] == results["scores"][score]["gain"]


def test_the_score_is_a_cli_flag_checked_before_reading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("classify.methods.linear.DEFAULT_CS", PROBE["Cs"])
    path, _ = make_store(tmp_path / "s.h5")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--store", str(path), "--backbone", A, "--score", "f1"])
    assert exit_.value.code == 2
    assert "--score must be one of 'accuracy', 'brier', 'loglik' for method 'auto', got 'f1'" in capsys.readouterr().err
    out = run(capsys, "evaluate", "--store", path, "--backbone", A, "--score", "brier", "--json")
    result = json.loads(out.splitlines()[-1])["auto"]
    assert result["score"] == "brier" and set(result["candidates"]["selftrain"]["scores"]) == {
        "accuracy", "brier", "loglik"}
