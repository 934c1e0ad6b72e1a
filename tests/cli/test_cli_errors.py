"""User errors on the command line: one line on stderr naming the fix, exit status 2, nothing left behind.

Every flag of `python -m embed run` and `python -m classify fit|predict|evaluate|report|finetune` with a wrong type or
an out-of-range value; backbone specs and checkpoints that cannot be used are refused before a store is created.
"""
from __future__ import annotations

import json
import os

import pytest
import timm
import torch

from classify.cli import main as classify_main
from embed.cli import main as embed_main
from imagegen import write_good_images
from synthstore import A, B, make_store


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def fails(main, args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    return one_error_line(capsys)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_good_images(root / "train" / "cat", 2, seed=1)
    write_good_images(root / "train" / "dog", 2, seed=2)
    write_good_images(root / "unlabeled", 2, seed=3)
    return root


@pytest.fixture(scope="module")
def pickled_timm_model(tmp_path_factory):
    """A whole pickled model, as `torch.save(model)` writes it: weights_only loading refuses it."""
    path = tmp_path_factory.mktemp("pickled") / "whole_model.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False), path)
    return path


# -------------------------------------------------------------------------------------------------------- embed run
@pytest.mark.parametrize("flags, message", [
    (["--batch-size", 0], "--batch-size"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--batch-size", 2.5], "--batch-size"),
    (["--workers", -1], "--workers"),
    (["--image-size", 0], "--image-size"),
    (["--image-size", "big"], "--image-size"),
    (["--views", -1], "--views"),
    (["--seed", "abc"], "--seed"),
    (["--seed", -1], "--seed"),
    (["--dtype", "float64"], "--dtype"),
    (["--engine", "spark"], "--engine"),
    (["--shard-size", 0], "--shard-size"),
    (["--num-cpus", 0], "--num-cpus"),
    (["--num-gpus", -1], "--num-gpus"),
    (["--progress", "maybe"], "--progress"),
    (["--offline", "maybe"], "--offline"),
    (["--device", "tpu"], "--device"),
])
def test_embed_run_bad_flags(folder, tmp_path, tiny_timm_ckpt, capsys, flags, message):
    store = tmp_path / "s.h5"
    line = fails(embed_main, ["run", "--data", folder, "--backbone", f"timm:test_efficientnet@{tiny_timm_ckpt}",
                              "--store", store, *flags], capsys)
    assert message in line
    assert not store.exists()


@pytest.mark.parametrize("spec, message", [
    ("foo:bar", "unknown backbone kind 'foo'"),
    ("timm:resnet5", "resnet50"),
    ("timm:test_efficientnet@{missing}", "not found"),
])
def test_embed_run_bad_backbone_leaves_no_store(folder, tmp_path, capsys, spec, message):
    store = tmp_path / "s.h5"
    line = fails(embed_main, ["run", "--data", folder, "--backbone", spec.format(missing=tmp_path / "nope.pth"),
                              "--store", store], capsys)
    assert message in line
    assert not store.exists()


def test_embed_run_second_backbone_is_checked_before_the_store(folder, tmp_path, tiny_timm_ckpt, capsys):
    store = tmp_path / "s.h5"
    line = fails(embed_main, ["run", "--data", folder, "--backbone",
                              f"timm:test_efficientnet@{tiny_timm_ckpt},foo:bar", "--store", store], capsys)
    assert "foo" in line and not store.exists()


@pytest.mark.parametrize("kind", ["timm", "clip"])
def test_pickled_checkpoint_is_one_line(folder, tmp_path, tiny_clip_ckpt, pickled_timm_model, capsys, kind):
    """A checkpoint holding Python objects is refused (weights_only) with one line saying how to convert it."""
    arch, _ = tiny_clip_ckpt
    spec = f"timm:test_efficientnet@{pickled_timm_model}" if kind == "timm" else f"clip:{arch}@{pickled_timm_model}"
    store = tmp_path / "s.h5"
    line = fails(embed_main, ["run", "--data", folder, "--backbone", spec, "--store", store], capsys)
    assert "Python objects" in line and "could run code" in line and "state_dict()" in line
    assert str(pickled_timm_model) in line
    assert not store.exists()


def test_pickled_clip_checkpoint_load_backbone(tiny_clip_ckpt, pickled_timm_model):
    from embed.backbones import load_backbone

    arch, _ = tiny_clip_ckpt
    with pytest.raises(ValueError, match="Python objects") as err:
        load_backbone(f"clip:{arch}@{pickled_timm_model}")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------------- classify
@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.h5")[0]


@pytest.fixture
def cv_store(tmp_path):
    """No labeled test split: evaluate and report use cross-validation (--folds)."""
    return make_store(tmp_path / "cv.h5", labeled_test=False)[0]


@pytest.mark.parametrize("folds", [1, 0, -3, "abc", 2.5])
def test_evaluate_bad_folds_names_the_flag(cv_store, capsys, folds):
    line = fails(classify_main, ["evaluate", "--store", cv_store, "--backbone", A, "--method", "knn",
                                 "--folds", folds], capsys)
    assert "--folds must be an int >= 2" in line


@pytest.mark.parametrize("flags, message", [
    (["--seed", "abc"], "--seed"),
    (["--seed", -1], "--seed"),
    (["--transductive", "maybe"], "--transductive"),
    (["--json_output", "maybe"], "--json"),
])
def test_evaluate_bad_flags(cv_store, capsys, flags, message):
    line = fails(classify_main, ["evaluate", "--store", cv_store, "--backbone", A, "--method", "knn", *flags], capsys)
    assert message in line


@pytest.mark.parametrize("flags, message", [
    (["--methd", "knn"], "has no flag --methd: did you mean --method?"),  # before: fire's "no value for method"
    (["--method", "knn", "--shot", "3"], "has no flag --shot: did you mean --shots?"),  # before: no hint
    (["--method", "knn", "--transductive=perhaps"], "--transductive is a yes/no flag"),
])
def test_command_flags_get_a_did_you_mean_too(store, capsys, flags, message):
    line = fails(classify_main, ["evaluate", "--store", store, "--backbone", A, *flags], capsys)
    assert message in line


@pytest.mark.parametrize("spelling", [["--no-transductive"], ["--no_transductive"], ["--transductive=false"],
                                      ["--transductive", "False"], ["--transductive=NO"], ["--notransductive"]])
def test_boolean_flags_take_the_spellings_users_bring(store, tmp_path, capsys, spelling):
    out = tmp_path / "r.json"
    classify_main(["evaluate", "--store", str(store), "--backbone", A, "--method", "knn", *spelling,
                   "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["transductive"] is False  # before: "method 'knn' has no parameter ---transductive"


@pytest.mark.parametrize("method, flags, message", [
    ("selftrain", ["--threshold", "abc"], "--threshold"),
    ("selftrain", ["--rounds", 1.5], "--rounds"),
    ("knn", ["--k", "many"], "--k"),
    ("labelprop", ["--center", "yes"], "--center"),
    ("labelprop", ["--n-components", "all"], "--n-components"),
])
def test_method_parameter_of_the_wrong_type(store, tmp_path, monkeypatch, capsys, method, flags, message):
    monkeypatch.chdir(tmp_path)
    for command in (["evaluate"], ["fit", "--out", "unused.joblib"]):
        line = fails(classify_main, [*command, "--store", store, "--backbone", A, "--method", method, *flags], capsys)
        assert message in line and method in line


def test_method_parameters_of_the_right_type_still_work(store, capsys):
    classify_main(["evaluate", "--store", str(store), "--backbone", A, "--method", "knn", "--weights", "uniform",
                   "--k", "3"])
    classify_main(["evaluate", "--store", str(store), "--backbone", A, "--method", "labelprop", "--n-components",
                   "None", "--k", "5"])
    assert "accuracy" in capsys.readouterr().out


def test_report_bad_folds(cv_store, tmp_path, capsys):
    model = tmp_path / "m.joblib"
    classify_main(["fit", "--store", str(cv_store), "--backbone", A, "--method", "knn", "--out", str(model)])
    capsys.readouterr()
    line = fails(classify_main, ["report", "--model", model, "--store", cv_store, "--folds", 1,
                                 "--out", tmp_path / "rep"], capsys)
    assert "--folds" in line


@pytest.mark.parametrize("flags, message", [
    (["--split", "validation"], "--split"),
    (["--proba", "maybe"], "--proba"),
])
def test_predict_bad_flags(store, tmp_path, capsys, flags, message):
    model = tmp_path / "m.joblib"
    classify_main(["fit", "--store", str(store), "--backbone", A, "--method", "knn", "--out", str(model)])
    capsys.readouterr()
    line = fails(classify_main, ["predict", "--model", model, "--store", store, "--out", tmp_path / "p.csv", *flags],
                 capsys)
    assert message in line and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "abc"], "--epochs"),
    (["--epochs", -1], "--epochs"),
    (["--batch-size", 0], "--batch-size"),
    (["--lr", 0], "--lr"),
    (["--lr", "fast"], "--lr"),
    (["--image-size", 0], "--image-size"),
    (["--seed", "x"], "--seed"),
    (["--threshold", 2], "--threshold"),
    (["--threshold", "abc"], "--threshold"),
    (["--pseudo-threshold", 1.5], "--pseudo-threshold"),
    (["--val-fraction", 1], "--val-fraction"),
    (["--patience", 0], "--patience"),
    (["--mu", 0.5], "--mu"),
    (["--workers", -2], "--workers"),
    (["--offline", "maybe"], "--offline"),
])
def test_finetune_bad_flags(folder, tmp_path, tiny_timm_ckpt, capsys, flags, message):
    out = tmp_path / "ft.pth"
    line = fails(classify_main, ["finetune", "--data", folder, "--backbone",
                                 f"timm:test_efficientnet@{tiny_timm_ckpt}", "--out", out, "--progress", "False",
                                 *flags], capsys)
    assert message in line and not out.exists()


@pytest.mark.parametrize("spec, message", [
    ("foo:bar", "unknown backbone kind"),
    ("timm:test_efficientnet@{pickled}", "Python objects"),
])
def test_finetune_bad_backbone(folder, tmp_path, pickled_timm_model, capsys, spec, message):
    line = fails(classify_main, ["finetune", "--data", folder, "--backbone", spec.format(pickled=pickled_timm_model),
                                 "--out", tmp_path / "ft.pth"], capsys)
    assert message in line


def test_finetune_offline_refuses_uncached_weights(folder, tmp_path, monkeypatch, capsys):
    from embed.backbones import timm_kind

    monkeypatch.setattr(timm_kind, "_timm_cached_weights", lambda pcfg, cache_dir=None: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    line = fails(classify_main, ["finetune", "--data", folder, "--backbone", "timm:resnet50", "--out",
                                 tmp_path / "ft.pth", "--offline"], capsys)
    assert "timm:resnet50" in line and "--offline" in line


@pytest.mark.parametrize("command", ["evaluate", "fit"])
def test_offline_reaches_a_methods_backbone(store, tmp_path, monkeypatch, capsys, command):
    """coop builds its backbone's text tower inside the fit: --offline must hold there, and only for the command."""
    seen = []

    def no_weights_here(spec, **kwargs):
        seen.append(os.environ.get("HF_HUB_OFFLINE"))
        raise FileNotFoundError(f"weights for {spec} are not on this machine")

    monkeypatch.setattr("embed.backbones.load_backbone", no_weights_here)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    extra = ["--out", tmp_path / "m.skops"] if command == "fit" else []
    line = fails(classify_main, [command, "--store", store, "--backbone", B, "--method", "coop", "--offline",
                                 *extra], capsys)
    assert "not on this machine" in line and seen == ["1"]
    assert "HF_HUB_OFFLINE" not in os.environ


def test_type_error_from_an_unchecked_parameter_is_one_line(store, capsys):
    """template_subset has no rule of its own: the TypeError its wrong value causes inside the fit names the flag."""
    line = fails(classify_main, ["evaluate", "--store", store, "--backbone", B, "--method", "zeroshot",
                                 "--template-subset", 5], capsys)
    assert "--template-subset 5" in line and "zeroshot" in line


def test_only_user_errors_become_one_line_bugs_keep_their_traceback(capsys):
    from store.clitools import run_cli
    from store.validation import UserError

    def user_mistake():
        """A command failing on the user's input."""
        raise UserError("bad input; fix it like this")

    def bug():
        """A command with a bug."""
        raise ValueError("an internal invariant broke")

    with pytest.raises(SystemExit) as exit_info:
        run_cli({"user-mistake": user_mistake}, ["user-mistake"], name="t")
    assert exit_info.value.code == 2 and one_error_line(capsys) == "error: bad input; fix it like this"
    with pytest.raises(ValueError, match="an internal invariant broke"):  # not swallowed into one line
        run_cli({"bug": bug}, ["bug"], name="t")
