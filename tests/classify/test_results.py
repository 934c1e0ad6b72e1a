"""Results people can open: `classify evaluate --out result.json` (CLIP_benchmark metrics + provenance) and
prediction CSVs Kaggle accepts (`--id-format`, `--order sample_submission.csv`)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from classify.cli import main
from classify.evaluation import scores
from store import OK, FeatureStore
from synthstore import A, make_store

SPEC = "timm:six"


def make_six_class_store(path, labeled_test=True):
    """Six overlapping Gaussian classes (so top-1 < top-5), 4 labeled train rows and 10 test rows each."""
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(6)]
    ids, splits, labels, truth = [], [], [], []
    for split, per_class in (("train", 4), ("test", 10)):
        for c in range(6):
            for k in range(per_class):
                ids.append(f"{split}/{classes[c]}/{k}.png")
                splits.append(split)
                labels.append(c if split == "train" or labeled_test else -1)
                truth.append(c)
    truth = np.asarray(truth)
    feats = rng.normal(size=(6, 5))[truth] * 1.2 + rng.normal(size=(len(ids), 5))
    with FeatureStore.create(path, ids, splits, labels, classes) as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "abc123", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, feats.shape[1])
        fs.write_rows(SPEC, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=feats)
    return path, truth


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_scores_match_sklearn_and_clip_benchmark_names():
    y_true = np.array([0, 0, 0, 1, 2, 3, 4, 5])
    y_pred = np.array([0, 0, 1, 1, 2, 3, 5, 0])
    proba = np.eye(6)[y_pred] * 0.6 + 0.4 / 6
    proba[6, 4] = proba[2, 0] = 0.5  # the true class second: top-5 hits
    proba[7] = [0.3, 0.25, 0.2, 0.15, 0.1, 0.0]  # true class 5 last: a top-5 miss
    result = scores(y_true, y_pred, proba)
    assert result["acc1"] == result["accuracy"] == 5 / 8
    assert result["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert result["mean_per_class_recall"] != result["acc1"]  # class 0 has 3 rows: the two differ
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["acc5"] == 7 / 8
    assert "acc5" not in scores(y_true[:3] % 3, y_pred[:3] % 3, np.eye(3)[y_pred[:3] % 3])  # fewer than 5 classes
    undefined = proba.copy()
    undefined[[0, 6]] = np.nan  # sklearn's LabelSpreading gives NaN to a row no labeled neighbour reaches
    assert scores(y_true, y_pred, undefined)["acc5"] == 5 / 8  # such a row ranks no class: a top-5 miss


@pytest.mark.parametrize("labeled_test", [True, False])
def test_evaluate_out_writes_the_json_it_prints(tmp_path, capsys, labeled_test):
    path, _ = make_six_class_store(tmp_path / "six.h5", labeled_test)
    out = tmp_path / "results" / "run.json"
    main(["evaluate", "--store", str(path), "--method", "knn", "--k", "3", "--seed", "4", "--out", str(out),
          "--json"])
    printed = last_json(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert written == printed
    assert {"accuracy", "acc1", "acc5", "mean_per_class_recall", "macro_f1", "fit_seconds"} <= set(written)
    assert 0 <= written["acc1"] <= written["acc5"] <= 1 and written["acc1"] < 1
    assert written["method"] == "knn" and written["params"]["k"] == 3 and written["seed"] == 4
    prov = written["provenance"]
    with FeatureStore(path) as fs:
        assert prov["store_fingerprint"] == fs.fingerprint
    assert prov["backbones"][SPEC]["weights_sha256"] == "abc123"
    assert {"python", "numpy", "sklearn"} <= set(prov["versions"]) and prov["classes"][0] == "c0"
    assert written["protocol"] == ("labeled test split" if labeled_test else
                                   "4-fold stratified CV on the labeled train rows")


def test_evaluate_without_five_classes_has_no_acc5(tmp_path, capsys):
    path, _ = make_store(tmp_path / "s.h5")
    main(["evaluate", "--store", str(path), "--backbone", A, "--method", "linear", "--json"])
    result = last_json(capsys.readouterr().out)
    assert "acc5" not in result and result["acc1"] == result["accuracy"]


@pytest.fixture
def fitted(tmp_path, capsys):
    path, _ = make_store(tmp_path / "s.h5")
    model = tmp_path / "m.skops"
    main(["fit", "--store", str(path), "--backbone", A, "--method", "knn", "--out", str(model)])
    capsys.readouterr()
    return path, model


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_predict_id_formats(fitted, tmp_path):
    path, model = fitted
    for id_format, first in (("relpath", "test/cat/0.png"), ("name", None), ("stem", None)):
        out = tmp_path / f"{id_format}.csv"
        args = ["predict", "--model", str(model), "--store", str(path), "--out", str(out), "--id-format", id_format]
        if first is None:  # test/cat/0.png and test/dog/0.png share a name: refused, naming them
            with pytest.raises(SystemExit):
                main(args)
            continue
        main(args)
        assert read_csv(out)[1][0] == first
    unlabeled = tmp_path / "pool.csv"  # unlabeled/cat0.png ...: names and stems are unique there
    main(["predict", "--model", str(model), "--store", str(path), "--split", "unlabeled", "--id-format", "stem",
          "--out", str(unlabeled)])
    rows = read_csv(unlabeled)
    assert rows[0] == ["id", "label"] and rows[1][0] == "cat0" and len(rows) == 121


def test_predict_stem_clash_is_one_line(fitted, tmp_path, capsys):
    path, model = fitted
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(model), "--store", str(path), "--id-format", "stem", "--out",
              str(tmp_path / "p.csv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test/cat/0.png and test/dog/0.png" in err[0] and "--id-format relpath" in err[0]


def test_predict_follows_a_sample_submission(fitted, tmp_path, capsys):
    path, model = fitted
    sample = tmp_path / "sample_submission.csv"
    wanted = ["dog3", "cat0", "fox19", "cat7"]
    sample.write_text("ImageId,Label\n" + "".join(f"{i},0\n" for i in wanted))
    out = tmp_path / "sub.csv"
    main(["predict", "--model", str(model), "--store", str(path), "--split", "unlabeled", "--id-format", "stem",
          "--order", str(sample), "--out", str(out)])
    rows = read_csv(out)
    assert rows[0] == ["ImageId", "Label"] and [r[0] for r in rows[1:]] == wanted
    assert {r[1] for r in rows[1:]} <= {"cat", "dog", "fox"}
    sample.write_text("id,label\ndog3,0\nwolf1,0\nwolf2,0\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(model), "--store", str(path), "--split", "unlabeled", "--id-format", "stem",
              "--order", str(sample), "--out", str(tmp_path / "bad.csv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of the 3 ids" in err[0] and "wolf1, wolf2" in err[0]
    assert not (tmp_path / "bad.csv").exists()


def test_evaluate_holds_out_a_validation_folder_when_there_is_no_labeled_test_split(tmp_path, capsys):
    """validation/ rows are labeled train rows in the store; evaluate scores them without showing their labels to
    the fit: with random features and labels, a 1-NN that saw them would match each row to itself (accuracy 1)."""
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    ids = [f"train/{c}/{k}.png" for c in classes for k in range(5)] + [f"validation/v{k}.png" for k in range(30)]
    labels = [i for i in range(3) for _ in range(5)] + list(rng.integers(0, 3, 30))
    path = tmp_path / "v.h5"
    with FeatureStore.create(path, ids, ["train"] * len(ids), labels, classes) as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 16)
        fs.write_rows(SPEC, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=rng.normal(size=(len(ids), 16)))
    main(["evaluate", "--store", str(path), "--method", "knn", "--k", "1", "--json"])
    result = last_json(capsys.readouterr().out)
    assert result["protocol"] == "validation folder (held out of the fit)" and result["n_test"] == 30
    assert result["accuracy"] < 0.8


def test_report_scores_a_saved_model_as_evaluate_scores_its_method(tmp_path, capsys):
    """One held-out rule: on a store whose labeled rows include a validation/ folder (and no labeled test split),
    report and evaluate both score the validation rows, the method refitted without their labels."""
    rng = np.random.default_rng(5)
    classes = ["a", "b", "c"]
    ids = [f"train/{c}/{k}.png" for c in classes for k in range(6)] + [f"validation/{c}/{k}.png" for c in classes
                                                                       for k in range(4)]
    labels = [i for i in range(3) for _ in range(6)] + [i for i in range(3) for _ in range(4)]
    means = rng.normal(size=(3, 8)) * 2
    path = tmp_path / "v.h5"
    with FeatureStore.create(path, ids, ["train"] * len(ids), labels, classes) as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 8)
        fs.write_rows(SPEC, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=means[labels] + rng.normal(size=(len(ids), 8)) * 1.5)
    main(["evaluate", "--store", str(path), "--method", "linear", "--json"])
    evaluated = last_json(capsys.readouterr().out)
    main(["fit", "--store", str(path), "--method", "linear", "--out", str(tmp_path / "m.skops")])
    main(["report", "--model", str(tmp_path / "m.skops"), "--store", str(path), "--out", str(tmp_path / "r")])
    reported = json.loads((tmp_path / "r" / "report.json").read_text())
    assert evaluated["protocol"] == "validation folder (held out of the fit)" and evaluated["n_test"] == 12
    assert reported["protocol"].startswith(evaluated["protocol"])  # before: 5-fold CV on the labeled train rows
    assert reported["n"] == evaluated["n_test"] and reported["accuracy"] == pytest.approx(evaluated["accuracy"])


def test_the_result_records_every_parameter_the_method_ran_with(tmp_path, capsys):
    path, _ = make_store(tmp_path / "s.h5")
    main(["evaluate", "--store", str(path), "--backbone", A, "--method", "knn", "--k", "3", "--json"])
    result = last_json(capsys.readouterr().out)
    assert result["params"]["k"] == 3 and "weights" in result["params"]  # defaults too (before: only what was typed)
    assert result["transductive"] is True
    main(["evaluate", "--store", str(path), "--backbone", A, "--method", "selftrain", "--json"])
    params = last_json(capsys.readouterr().out)["params"]
    assert isinstance(params["teacher"], (str, type(None))) and json.dumps(params)  # nested estimators by name


def test_the_result_also_reads_as_a_clip_benchmark_record(tmp_path, capsys):
    path, _ = make_store(tmp_path / "s.h5", root=tmp_path / "fruit")
    main(["evaluate", "--store", str(path), "--backbone", A, "--method", "knn", "--json"])
    result = last_json(capsys.readouterr().out)
    assert result["dataset"] == "fruit" and result["model"] == "a" and result["task"] == "fewshot_classification/knn"
    assert result["metrics"]["acc1"] == result["accuracy"]  # CLIP_benchmark's layout beside today's keys
    assert set(result["metrics"]) >= {"acc1", "mean_per_class_recall"}
