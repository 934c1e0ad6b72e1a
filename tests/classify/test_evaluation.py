"""`classify evaluate --shots N --draws K`: the few-shot protocol of `python -m benchmarks run`, to the digit."""
import json

import numpy as np
import pytest

from benchmarks.run import load_task, run_task
from classify import evaluation
from classify.cli import main
from store import OK, FeatureStore
from synthstore import A, make_store

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


def overlapping_store(path, labeled_test=True, validation=False):
    """Six overlapping Gaussian classes (accuracy well below 1, so draws and protocols give different numbers):
    8 labeled train images per class, a pool of 60, 15 test images per class (with ``validation``, 4 more train
    images per class under validation/<class>/)."""
    rng = np.random.default_rng(7)
    ids, splits, labels, truth = [], [], [], []
    parts = [("train", "train", 8), ("unlabeled", "unlabeled", 12), ("test", "test", 15)]
    parts += [("validation", "train", 4)] if validation else []
    for folder, split, per_class in parts:
        for c, name in enumerate(CLASSES):
            for k in range(per_class):
                ids.append(f"{folder}/{name}{k}.png" if folder == "unlabeled" else f"{folder}/{name}/{k}.png")
                splits.append(split)
                labels.append(c if split == "train" or (split == "test" and labeled_test) else -1)
                truth.append(c)
    truth = np.array(truth)
    features = rng.normal(size=(len(CLASSES), 8))[truth] * 0.9 + rng.normal(size=(len(ids), 8))
    with FeatureStore.create(path, ids, splits, labels, CLASSES) as fs:
        fs.begin_backbone({"spec": A, "weights_sha256": A, "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, features.shape[1])
        fs.write_rows(A, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=features)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return overlapping_store(tmp_path_factory.mktemp("shots") / "s.h5")


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["linear", "labelprop"])
def test_shots_reproduce_the_benchmark_runner_exactly(store, method):
    records = run_task(load_task("synthetic", store, A), [method], shots=[3], seeds=2, anchors=[],
                       progress=lambda _: None)
    with FeatureStore(store) as fs:
        result = evaluation.evaluate(fs, [A], method, shots=3, draws=2)
    benchmark = [r["accuracy"] for r in records]
    assert [d["accuracy"] for d in result["draws"]] == benchmark  # exact float equality, seed by seed
    assert [d["seed"] for d in result["draws"]] == [0, 1] and [r["seed"] for r in records] == [0, 1]
    assert [d["macro_f1"] for d in result["draws"]] == [r["macro_f1"] for r in records]
    assert result["accuracy"] == float(np.mean(benchmark)) and result["accuracy_std"] == float(np.std(benchmark))
    assert all(d["n_labeled"] == 3 * len(CLASSES) for d in result["draws"]) and result["n_test"] == 15 * len(CLASSES)
    assert result["shots"] == 3 and "acc5" in result and "acc5_std" in result
    # a real few-shot fit: not the score of a fit on all 8 train labels per class, and the draws differ
    with FeatureStore(store) as fs:
        all_labels = evaluation.evaluate(fs, [A], method)
    assert len(set(benchmark)) == 2 and all_labels["accuracy"] not in benchmark


def test_draws_follow_the_seed_and_non_transductive_fits_skip_the_test_rows(store):
    with FeatureStore(store) as fs:
        shifted = evaluation.evaluate(fs, [A], "linear", shots=3, draws=2, seed=1)
        first = evaluation.evaluate(fs, [A], "linear", shots=3, draws=3)
        inductive = evaluation.evaluate(fs, [A], "labelprop", shots=3, draws=1, transductive=False)
    assert [d["seed"] for d in shifted["draws"]] == [1, 2]
    assert shifted["draws"] == [{**d, "fit_seconds": s["fit_seconds"], "predict_seconds": s["predict_seconds"]}
                                for d, s in zip(first["draws"][1:], shifted["draws"])]
    assert first["protocol"] == ("3 labels per class drawn from the train rows (3 draws, seeds 0-2), scored on the "
                                 "test split")
    assert inductive["protocol"].endswith("(1 draw, seed 0), scored on the test split; test rows kept out of the fit")


def test_shots_score_on_the_held_out_validation_folder(tmp_path):
    path = overlapping_store(tmp_path / "v.h5", labeled_test=False, validation=True)
    with FeatureStore(path) as fs:
        result = evaluation.evaluate(fs, [A], "linear", shots=2, draws=2)
    assert result["n_test"] == 4 * len(CLASSES) and result["protocol"].endswith("validation folder (held out of "
                                                                                  "the fit)")
    assert all(d["n_labeled"] == 2 * len(CLASSES) for d in result["draws"])  # drawn from train/, not validation/


def test_cli_shots_and_draws(store, capsys):
    main(["evaluate", "--store", str(store), "--backbone", A, "--method", "linear", "--shots", "3", "--draws", "2",
          "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert {"accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "fit_seconds"} <= set(result)
    assert len(result["draws"]) == 2 and [d["seed"] for d in result["draws"]] == [0, 1]
    assert f"accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f}" in out[-2]
    assert "3 labels per class drawn from the train rows (2 draws, seeds 0-1), scored on the test split" in out[-2]


def one_error_line(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_shots_without_a_labeled_held_out_split_is_refused(tmp_path, capsys):
    path, _ = make_store(tmp_path / "cv.h5", labeled_test=False)
    line = one_error_line(capsys, ["evaluate", "--store", path, "--backbone", A, "--method", "knn", "--shots", 3])
    assert "--shots" in line and "test/<class>/" in line and "drop --shots" in line


def test_draws_without_shots_is_refused(store, capsys):
    line = one_error_line(capsys, ["evaluate", "--store", store, "--backbone", A, "--method", "knn", "--draws", 5])
    assert "--draws" in line and "--shots" in line


@pytest.mark.parametrize("flags, message", [
    (["--shots", 0], "--shots must be an int >= 1"),
    (["--shots", "abc"], "--shots must be an int >= 1"),
    (["--shots", 2.5], "--shots must be an int >= 1"),
    (["--shots", 3, "--draws", 0], "--draws must be an int >= 1"),
    (["--shots", 3, "--draws", "abc"], "--draws must be an int >= 1"),
])
def test_bad_shots_and_draws_are_one_line(store, capsys, flags, message):
    line = one_error_line(capsys, ["evaluate", "--store", store, "--backbone", A, "--method", "knn", *flags])
    assert message in line


def test_python_api_checks_shots_and_draws(store):
    with FeatureStore(store) as fs, pytest.raises(ValueError, match="shots must be"):
        evaluation.evaluate(fs, [A], "linear", shots=0)
