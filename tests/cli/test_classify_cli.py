"""`python -m classify` on a synthetic store: fit, predict, evaluate, report, list, and every error path."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from classify.cli import main
from synthstore import A, B, CLASSES, make_store



def run(capsys, *args):
    main([str(a) for a in args])
    return capsys.readouterr().out


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.h5")


def test_fit_predict_roundtrip(store, tmp_path, capsys):
    path, truth = store
    model = tmp_path / "m.joblib"
    out = run(capsys, "fit", "--store", path, "--backbone", A, "--method", "knn", "--k", 3, "--out", model)
    assert "fitted knn" in out and model.is_file()
    predictions = tmp_path / "pred.csv"
    run(capsys, "predict", "--model", model, "--store", path, "--out", predictions, "--proba")
    rows = list(csv.DictReader(predictions.open()))
    assert [r["id"] for r in rows] == [f"test/{c}/{k}.png" for c in CLASSES for k in range(20)]
    predicted = np.array([CLASSES.index(r["label"]) for r in rows])
    assert (predicted == truth[-60:]).mean() > 0.9
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs.argmax(axis=1) == predicted).all()


def test_model_refuses_another_store(store, tmp_path, capsys):
    path, _ = store
    other, _ = make_store(tmp_path / "other.h5", suffix="b")  # other files (other labels alone are the same rows)
    model = tmp_path / "m.joblib"
    run(capsys, "fit", "--store", path, "--backbone", A, "--method", "knn", "--out", model)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(model), "--store", str(other), "--out", str(tmp_path / "p.csv")])
    assert exit_info.value.code == 2
    assert "fitted on another store" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_evaluate_json_on_test_split_and_by_cv(store, tmp_path, capsys):
    path, _ = store
    result = json.loads(run(capsys, "evaluate", "--store", path, "--backbone", A, "--method", "linear",
                            "--json").strip().splitlines()[-1])
    assert {"accuracy", "macro_f1", "fit_seconds"} <= set(result) and 0.9 < result["accuracy"] <= 1
    assert result["protocol"] == "labeled test split" and result["n_test"] == 60
    no_test, _ = make_store(tmp_path / "nolabels.h5", labeled_test=False)
    cv = json.loads(run(capsys, "evaluate", "--store", no_test, "--backbone", A, "--method", "knn", "--k", 3,
                        "--json").strip().splitlines()[-1])
    assert cv["protocol"].startswith("5-fold") and cv["n_test"] == 15


def test_zeroshot_uses_the_stores_text_embeddings(store, capsys):
    path, _ = store
    result = json.loads(run(capsys, "evaluate", "--store", path, "--backbone", B, "--method", "zeroshot",
                            "--json").strip().splitlines()[-1])
    assert result["accuracy"] > 0.9


def test_several_backbones_concat_and_ensemble(store, capsys):
    path, _ = store
    for combine in ("concat", "ensemble"):
        result = json.loads(run(capsys, "evaluate", "--store", path, "--backbone", f"{A},{B}", "--method", "knn",
                                "--k", 3,
                                "--combine", combine, "--json").strip().splitlines()[-1])
        assert result["backbones"] == [A, B] and result["accuracy"] > 0.9


def test_report_writes_the_failure_analysis(store, tmp_path, capsys):
    path, _ = store
    model = tmp_path / "m.joblib"
    run(capsys, "fit", "--store", path, "--backbone", A, "--method", "knn", "--out", model)
    out = run(capsys, "report", "--model", model, "--store", path, "--out", tmp_path / "rep")
    assert "weakest classes" in out
    with Image.open(tmp_path / "rep" / "confusion.png") as image:
        assert image.size[0] > 300
    per_class = list(csv.DictReader((tmp_path / "rep" / "per_class.csv").open()))
    assert [r["class"] for r in per_class] == CLASSES and all(int(r["n"]) == 20 for r in per_class)
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["n"] == 60 and summary["protocol"] == "labeled test split"


def test_list_shows_every_method(capsys):
    out = run(capsys, "list")
    for name in ("zeroshot", "linear", "knn", "labelprop", "selftrain", "moe", "ensemble"):
        assert f"{name} " in out


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--method", "labelprops"], "did you mean labelprop"),
    (["evaluate", "--method", "knn", "--backbone", "timm:nope"], "no features for backbone 'timm:nope'"),
    (["evaluate", "--method", "zeroshot", "--backbone", A], "text embeddings"),
    (["evaluate", "--method", "knn", "--backbone", A, "--kk", "3"], "no parameter --kk: did you mean --k?"),
    (["fit", "--method", "selftrain", "--out", "m.skops", "--thresold", "0.5"], "did you mean --threshold"),
    (["evaluate", "--method", "knn", "--backbone", A, "--combine", "stack"], "--combine must be"),
    (["evaluate", "--method", "knn", "--store", "missing.h5"], "no feature store"),
    (["predict", "--model", "missing.joblib"], "no model at"),
    (["predict", "--model", "GARBAGE"], "is not a model saved by"),
    (["fit", "--method", "knn", "--out", "m.joblib"], "pass --backbone"),
])
def test_cli_errors(store, tmp_path, monkeypatch, capsys, args, message):
    path, _ = store
    monkeypatch.chdir(tmp_path)
    (tmp_path / "GARBAGE").write_bytes(b"not a model")
    if "--store" not in args:
        args = args + ["--store", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_fit_can_stream_the_store_for_labelprop(store, tmp_path, capsys):
    path, _ = store
    for stream in (True, False):
        run(capsys, "fit", "--store", path, "--backbone", A, "--method", "labelprop", "--stream", stream,
            "--out", tmp_path / f"lp{stream}.joblib")
        run(capsys, "predict", "--model", tmp_path / f"lp{stream}.joblib", "--store", path, "--out",
            tmp_path / f"p{stream}.csv", "--proba")
    assert (tmp_path / "pTrue.csv").read_text() == (tmp_path / "pFalse.csv").read_text()
    with pytest.raises(SystemExit):
        main(["fit", "--store", str(path), "--backbone", A, "--method", "knn", "--stream", "True", "--out", "x"])
    assert "reads chunks (labelprop)" in capsys.readouterr().err


def test_list_says_what_each_method_needs_and_which_apply_to_a_store(tmp_path, capsys):
    path, _ = make_store(tmp_path / "s.h5")  # backbone B has CLIP-like text; no views, no ImageNet classifier
    main(["list"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[needs CLIP text embeddings]" in lines["zeroshot"] and "[needs cached views" in lines["fixmatch"]
    assert "ImageNet classifier" in lines["conse"] and "[needs" not in lines["linear"]
    main(["list", "--store", str(path)])
    lines = {line.split()[1] if line.startswith("no ") else line.split()[0]: line
             for line in capsys.readouterr().out.splitlines()}
    assert lines["fixmatch"].startswith("no ") and "this store has no cached views" in lines["fixmatch"]
    assert lines["conse"].startswith("no ") and not lines["zeroshot"].startswith("no ")
    assert not lines["linear"].startswith("no ")
