"""Saved models cannot run code: every command that loads a model refuses crafted pickle / joblib / skops files
before anything executes, and every registered method survives a save / load round trip unchanged."""
import os
import pickle
import shlex

import fewshot_data
import joblib
import numpy as np
import pytest
import skops.io
from PIL import Image

from classify import pipeline
from classify.cli import main
from classify.methods.registry import available, trusted_types
from synthstore import A, make_store


class _RunsShell:
    """Unpickling this runs a shell command: what a crafted model file does to ``joblib.load``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.h5")[0]


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "pwned"


def _crafted(tmp_path, marker, kind):
    path = tmp_path / f"evil.{kind}"
    payload = {"format": pipeline.MODEL_FORMAT, "estimator": _RunsShell(f"touch {shlex.quote(str(marker))}")}
    if kind == "joblib":
        joblib.dump(payload, path)
    elif kind == "pkl":
        path.write_bytes(pickle.dumps(payload))
    else:  # a skops file naming a function that is not on the allow-list
        skops.io.dump({"format": pipeline.MODEL_FORMAT, "estimator": os.system}, path)
    return path


def test_the_crafted_pickle_is_live(tmp_path, marker):
    """Guard for the tests below: loading the crafted file the old way does run the command."""
    joblib.load(_crafted(tmp_path, marker, "joblib"))
    assert marker.exists()


def _cli_refuses(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("kind", ["joblib", "pkl", "skops"])
def test_no_command_runs_code_from_a_model_file(kind, store, tmp_path, marker, capsys):
    evil = _crafted(tmp_path, marker, kind)
    data = tmp_path / "data"  # finetune reads the data folder, then the models: a tiny one is enough here
    for name in ("a", "b"):
        (data / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / "train" / name / "0.png")
    commands = [
        ("predict", "--model", evil, "--store", store, "--out", tmp_path / "p.csv"),
        ("report", "--model", evil, "--store", store, "--out", tmp_path / "report"),
        ("finetune", "--data", data, "--backbone", "timm:test_efficientnet", "--out", tmp_path / "ft.pth",
         "--init", evil),
        ("finetune", "--data", data, "--backbone", "timm:test_efficientnet", "--out", tmp_path / "ft.pth",
         "--pseudo", evil, "--store", store),
    ]
    for command in commands:
        err = _cli_refuses(capsys, *command)
        assert ("posix.system" if kind == "skops" else "can run code") in err, (command, err)
        assert not marker.exists(), command
    with pytest.raises(ValueError):
        pipeline.load_model(evil)
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_damaged_and_foreign_files_get_one_line(store, tmp_path, capsys):
    model = pipeline.fit(pipeline.FeatureStore(store), [A], "knn").save(tmp_path / "m.skops")
    damaged = tmp_path / "damaged.skops"
    damaged.write_bytes(model.read_bytes()[:200])
    assert "is not a model saved by this suite" in _cli_refuses(capsys, "predict", "--model", damaged, "--store",
                                                                store, "--out", tmp_path / "p.csv")
    foreign = tmp_path / "foreign.skops"
    skops.io.dump({"format": "something else"}, foreign)
    assert "not a model saved by" in _cli_refuses(capsys, "predict", "--model", foreign, "--store", store)


def test_allow_list_is_the_suites_own_classes():
    names = trusted_types()
    assert "classify.methods.selftrain.SelfTraining" in names and "classify.methods.transform.FeatureTransform" in names
    assert all(name.startswith("classify.") for name in names)


def _fit(name, params):
    X, y_true, text = fewshot_data.clip_like(20, n_classes=3, dim=8)
    y = np.where(np.arange(len(y_true)) % 4 == 0, y_true, -1)
    rng = np.random.default_rng(0)
    context = dict(class_names=["a", "b", "c"], text_embeddings=text, templates=["a {}", "b {}"],
                   logit_scale=100.0, head_weight=rng.normal(size=(20, 8)).astype(np.float32),
                   head_bias=np.zeros(20, np.float32), head_classes=[f"k{i}" for i in range(20)])
    if pipeline.uses_views(name):
        X = np.hstack([X, X + 0.01, X - 0.01])
        params = {"view_kinds": ["weak", "strong"], **params}
    return pipeline.build(name, params, context).fit(X, y), X


ROUND_TRIPS = [(name, {}) for name in available() if name not in ("coop", "ensemble")] + [
    ("ensemble", {"methods": ["linear", "knn"]}), ("fixmatch", {"hidden": 16}), ("tip", {"base": "conse"})]


@pytest.mark.parametrize("name, params", ROUND_TRIPS, ids=[f"{n}{p or ''}" for n, p in ROUND_TRIPS])
def test_every_method_round_trips(name, params, tmp_path):
    """coop is round-tripped in test_coop.py (it needs a CLIP model)."""
    estimator, X = _fit(name, params)
    saved = pipeline.FittedModel(estimator, name, params, [A], "concat", "fingerprint", ["a", "b", "c"], 0.0)
    loaded = pipeline.load_model(saved.save(tmp_path / "m.skops"))
    np.testing.assert_array_equal(loaded.estimator.predict_proba(X), estimator.predict_proba(X))
    assert loaded.method == name and loaded.params == params and "skops" in loaded.versions
    assert not list(tmp_path.glob("*.tmp*"))
