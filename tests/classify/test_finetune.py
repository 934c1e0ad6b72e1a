"""End-to-end fine-tuning (`classify.finetune`, `python -m classify finetune`) with tiny random backbones on CPU.

Checked: the head starts from the given model (same predictions before the first step), the loss decreases,
freezing freezes, a run killed after an epoch resumes from its checkpoint and ends with the uninterrupted run's
weights, WiSE alpha 0 returns the initial weights, the output is a backbone spec `embed run` and `load_backbone`
accept (features change), pseudo-labels from a fitted model, and the CLI's error paths.
"""
import errno
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

import tinymodels
from classify.finetune.state import atomic_save
from classify import pipeline
from classify.cli import main
from classify.finetune import (FineTuneNet, apply_unfreeze, finetune, head_from_model, parse_unfreeze,
                               select_pseudo_labels, split_validation, wise_interpolate)
from embed import sources
from embed.backbones import load_backbone
from embed.images import load_image
from embed.engines.local import embed
from imagegen import write_good_images
from store import FeatureStore

CLASSES = ("cat", "dog", "fox")
SIZE = 32
FAST = dict(epochs=2, batch_size=6, image_size=SIZE, workers=0, progress=False, device="cpu")


def _write_tinted(folder, n, colour, seed):
    """``write_good_images`` pictures blended with a class colour: classes a random network can tell apart."""
    for path in write_good_images(folder, n, size=SIZE, seed=seed):
        pixels = 0.5 * np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) + 0.5 * np.asarray(colour)
        Image.fromarray(pixels.astype(np.uint8)).save(path.with_suffix(".png"))
        if path.suffix != ".png":
            path.unlink()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """3 colour-tinted classes x 5 labeled images, 6 unlabeled, 2 labeled test images per class (32 px PNG)."""
    root = tmp_path_factory.mktemp("ftdata")
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    for k, (c, colour) in enumerate(zip(CLASSES, colours)):
        _write_tinted(root / "train" / c, 5, colour, seed=10 + k)
        _write_tinted(root / "test" / c, 2, colour, seed=20 + k)
        _write_tinted(root / "unlabeled" / c, 2, colour, seed=30 + k)
    return root


@pytest.fixture(scope="module")
def timm_spec(tiny_timm_ckpt):
    return f"timm:test_efficientnet@{tiny_timm_ckpt}"


@pytest.fixture(scope="module")
def store(data_dir, timm_spec, tmp_path_factory):
    path = tmp_path_factory.mktemp("ftstore") / "s.h5"
    embed(sources.from_folder(data_dir), path, [timm_spec], device="cpu", workers=0, image_size=SIZE, progress=False)
    return path


def _fit(store, spec, method, out, **params):
    with FeatureStore(store) as fs:
        return pipeline.fit(fs, [spec], method, params).save(out)


@pytest.fixture(scope="module")
def linear_model(store, timm_spec, tmp_path_factory):
    return _fit(store, timm_spec, "linear", tmp_path_factory.mktemp("models") / "linear.skops")


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _proba_on_images(net, backbone, paths):
    x = torch.stack([backbone.eval_transform(load_image(p).image) for p in paths])  # (n, 3, H, W)
    net.eval()
    with torch.no_grad():
        return net(x).softmax(dim=1).numpy()  # (n, C)


# ---------------------------------------------------------------------------------------------------- head init
def test_head_predicts_what_the_init_model_predicts(store, timm_spec, linear_model, data_dir):
    fitted = pipeline.load_model(linear_model)
    with FeatureStore(store) as fs:
        data = pipeline.load_data(fs, [timm_spec])
    backbone = load_backbone(timm_spec, image_size=SIZE)
    net = FineTuneNet(backbone, *head_from_model(fitted, list(fitted.classes)))
    got = _proba_on_images(net, backbone, [data_dir / i for i in data.ids])
    np.testing.assert_allclose(got, fitted.estimator.predict_proba(data.X), atol=1e-5)


def test_head_order_follows_the_data_classes(linear_model):
    W, b = head_from_model(linear_model, list(CLASSES))
    W2, b2 = head_from_model(linear_model, list(reversed(CLASSES)))
    np.testing.assert_array_equal(W2, W[::-1])
    np.testing.assert_array_equal(b2, b[::-1])
    with pytest.raises(ValueError, match="classes"):
        head_from_model(linear_model, ["cat", "dog", "wolf"])


def test_zero_epochs_round_trip_through_embed_and_predict(store, timm_spec, linear_model, data_dir, tmp_path):
    """Export untouched weights: the re-embedded features + exported head predict what the init model predicted."""
    store_copy = tmp_path / "s.h5"
    store_copy.write_bytes(store.read_bytes())
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", init=linear_model, store=store_copy,
                      **{**FAST, "epochs": 0})
    assert result.spec == f"timm:test_efficientnet@{tmp_path / 'ft.pth'}" and result.epochs_run == 0
    embed(sources.from_folder(data_dir), store_copy, [result.spec], device="cpu", workers=0, image_size=SIZE,
          progress=False)
    head = pipeline.load_model(result.head_model)
    init = pipeline.load_model(linear_model)
    with FeatureStore(store_copy) as fs:
        assert set(fs.backbones) == {timm_spec, result.spec}  # a new group of the same store
        head.check_store(fs)
        new = pipeline.load_data(fs, [result.spec])
        old = pipeline.load_data(fs, [timm_spec])
    np.testing.assert_allclose(new.X, old.X, atol=1e-5)
    np.testing.assert_allclose(head.estimator.predict_proba(new.X), init.estimator.predict_proba(old.X), atol=1e-5)


def test_linear_head_of_a_wise_blend_and_of_zeroshot():
    """linear_head() reproduces predict_proba for the probe blended with zero-shot, and for zero-shot itself."""
    from classify.methods.features import l2_normalize
    from classify.methods.linear import LinearProbe
    from classify.methods.zeroshot import ZeroShotClassifier

    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 2, 8))
    X = rng.normal(size=(30, 8)) + np.repeat(text.mean(1), 10, axis=0)
    y = np.repeat(np.arange(3), 10)
    for model in (LinearProbe(text_embeddings=text, alpha=0.4).fit(X, y), ZeroShotClassifier(text).fit(X)):
        W, b = model.linear_head()
        np.testing.assert_allclose(softmax(l2_normalize(X) @ W.T + b, axis=1), model.predict_proba(X), atol=1e-6)


# ---------------------------------------------------------------------------------------------------- training
def test_loss_decreases(data_dir, timm_spec, tmp_path):
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", **{**FAST, "epochs": 5, "lr": 3e-3},
                      val_fraction=0, fixmatch_weight=0)
    losses = [h["loss_labeled"] for h in result.history]
    assert len(losses) == 5 and losses[-1] < losses[0], losses


def test_unfreeze_none_trains_only_the_head(data_dir, timm_spec, tiny_timm_ckpt, linear_model, tmp_path):
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", init=linear_model, unfreeze="none", lr=1e-2,
                      val_fraction=0, **FAST)
    before, after = _state(tiny_timm_ckpt), _state(result.checkpoint)
    assert set(after) == {k for k in before if not k.startswith("classifier.")}  # the ImageNet head is dropped
    for key, value in after.items():  # weights and BatchNorm statistics
        assert torch.equal(value, before[key]), key
    head = pipeline.load_model(result.head_model).estimator
    assert not np.allclose(head.weight, head_from_model(linear_model, list(CLASSES))[0])


def test_unfreeze_last_n_freezes_the_rest(data_dir, timm_spec, tiny_timm_ckpt, tmp_path):
    backbone = load_backbone(timm_spec, image_size=SIZE)
    net = FineTuneNet(backbone, np.zeros((3, backbone.dim)), np.zeros(3))
    assert apply_unfreeze(net, "last-2") == 2
    trainable = {n.removeprefix("trunk.") for n, p in net.named_parameters() if p.requires_grad and
                 n.startswith("trunk.")}
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", unfreeze="last-2", lr=1e-2, val_fraction=0, **FAST)
    before, after = _state(tiny_timm_ckpt), _state(result.checkpoint)
    frozen_params = [n for n, _ in net.trunk.named_parameters() if n not in trainable]
    assert trainable and frozen_params
    for name in frozen_params:
        assert torch.equal(after[name], before[name]), name
    assert all(not torch.equal(after[name], before[name]) for name in trainable if name.endswith("weight"))
    assert any(n.startswith("conv_head") for n in trainable) and not any(n.startswith("conv_stem")
                                                                         for n in trainable)


def test_parse_unfreeze():
    assert parse_unfreeze("all") == ("all", 0) and parse_unfreeze("none") == ("none", 0)
    assert parse_unfreeze("last-3") == ("last", 3) and parse_unfreeze("LAST_1") == ("last", 1)
    for bad in ("some", "last-0", "last-", "last-x", "3"):
        with pytest.raises(ValueError, match="--unfreeze must be"):
            parse_unfreeze(bad)


def test_validation_split_is_stratified_and_keeps_a_training_row():
    labels = np.array([0] * 10 + [1] * 2 + [2])
    val = split_validation(labels, 0.2, seed=0)
    assert val[labels == 0].sum() == 2 and val[labels == 1].sum() == 1 and val[labels == 2].sum() == 0
    assert np.array_equal(val, split_validation(labels, 0.2, seed=0)) and not split_validation(labels, 0, 0).any()


def test_resume_after_a_crash_continues_and_matches_an_uninterrupted_run(data_dir, timm_spec, tmp_path):
    kwargs = {**FAST, "epochs": 3, "lr": 3e-3, "patience": 10}
    whole = finetune(data_dir, timm_spec, tmp_path / "whole.pth", **kwargs)

    def crash(epoch, stats):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    out = tmp_path / "resumed.pth"
    with pytest.raises(KeyboardInterrupt):
        finetune(data_dir, timm_spec, out, callback=crash, **kwargs)
    assert not out.exists() and _state(out.with_name("resumed.pth.state"))["epoch"] == 1
    seen = []
    resumed = finetune(data_dir, timm_spec, out, callback=lambda e, s: seen.append(e), **kwargs)
    assert resumed.resumed_from == 1 and seen == [1, 2]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    a, b = _state(whole.checkpoint), _state(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same command once more is a no-op; other settings are refused
    assert finetune(data_dir, timm_spec, out, **kwargs).seconds == resumed.seconds
    with pytest.raises(ValueError, match="other settings"):
        finetune(data_dir, timm_spec, out, **{**kwargs, "lr": 1e-3})


def test_wise_alpha_zero_returns_the_initial_weights(data_dir, timm_spec, tiny_timm_ckpt, tmp_path):
    a = {"w": torch.randn(3, 4), "n": torch.tensor(5)}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(9)}
    assert torch.equal(wise_interpolate(a, b, 0.0)["w"], a["w"]) and wise_interpolate(a, b, 0.0)["n"] == 5
    assert torch.equal(wise_interpolate(a, b, 1.0)["w"], b["w"]) and wise_interpolate(a, b, 1.0)["n"] == 9
    torch.testing.assert_close(wise_interpolate(a, b, 0.5)["w"], (a["w"] + b["w"]) / 2)
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", wise_alphas=(0.0,), lr=1e-2, val_fraction=0, **FAST)
    assert result.alpha == 0.0 and result.epochs_run == 2
    before, after = _state(tiny_timm_ckpt), _state(result.checkpoint)
    assert all(torch.equal(after[k], before[k]) for k in after)


def test_early_stopping_keeps_the_initial_network_when_training_only_hurts(data_dir, timm_spec, tiny_timm_ckpt,
                                                                           tmp_path):
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", lr=1.0, warmup_epochs=0, patience=1,
                      val_fraction=0.4, **{**FAST, "epochs": 5})
    assert result.val_accuracy_initial == 1.0
    assert result.epochs_run == 1 and result.best_epoch == 0 and result.alpha == 0.0
    assert result.val_accuracy == result.val_accuracy_initial
    before, after = _state(tiny_timm_ckpt), _state(result.checkpoint)
    assert all(torch.equal(after[k], before[k]) for k in after)


@pytest.mark.parametrize("model", ["test_efficientnet", "test_vit"])
def test_output_is_a_backbone_spec_with_new_features(model, data_dir, tmp_path):
    ckpt = tinymodels.make_timm_checkpoint(tmp_path / f"{model}.pth", name=model)
    spec = f"timm:{model}@{ckpt}"
    result = finetune(data_dir, spec, tmp_path / "ft.pth", unfreeze="last-1", lr=1e-2, val_fraction=0, **FAST)
    assert result.spec == f"timm:{model}@{tmp_path / 'ft.pth'}"
    old, new = load_backbone(spec, image_size=SIZE), load_backbone(result.spec, image_size=SIZE)
    assert new.prob_classes is None  # no stale ImageNet head in the fine-tuned checkpoint
    x = torch.stack([old.eval_transform(load_image(p).image) for p in sorted((data_dir / "test").rglob("*.*"))])
    f_old, f_new = old.encode_images(x)[0], new.encode_images(x)[0]
    assert f_old.shape == f_new.shape and not torch.allclose(f_old, f_new)


def test_fixmatch_and_pseudo_labels_from_a_fitted_model(data_dir, store, timm_spec, tmp_path):
    model = _fit(store, timm_spec, "labelprop", tmp_path / "lp.skops")
    images = sources.from_folder(data_dir)
    rows, labels, report = select_pseudo_labels(model, store, images, np.ones(3), threshold=0.0, steps=0)
    assert report["n_selected"] == report["n_pool"] == 6 and len(rows) == 6
    assert all(images.splits[r] == "unlabeled" for r in rows) and labels.min() >= 0 and labels.max() < 3
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", pseudo=model, store=store, pseudo_threshold=0.0,
                      pseudo_steps=0, threshold=0.0, **FAST)
    assert result.pseudo["n_selected"] == 6
    # every pool image got a pseudo-label, so FixMatch has no pool left; with a pool and threshold 0, all rows count
    result = finetune(data_dir, timm_spec, tmp_path / "ft2.pth", threshold=0.0, val_fraction=0, **FAST)
    assert all(h["mask_rate"] == 1.0 and h["loss_unlabeled"] > 0 for h in result.history)


# ---------------------------------------------------------------------------------------------------- CLIP
def test_clip_image_tower_from_zeroshot(data_dir, tiny_clip_ckpt, tmp_path):
    arch, ckpt = tiny_clip_ckpt
    spec = f"clip:{arch}@{ckpt}"
    store = tmp_path / "clip.h5"
    embed(sources.from_folder(data_dir), store, [spec], device="cpu", workers=0, progress=False)
    zs = _fit(store, spec, "zeroshot", tmp_path / "zs.skops")
    fitted = pipeline.load_model(zs)
    backbone = load_backbone(spec)
    net = FineTuneNet(backbone, *head_from_model(fitted, list(CLASSES)))
    assert net.n_layers == 3  # stem, 2 residual blocks (+ ln_post / proj)
    with FeatureStore(store) as fs:
        data = pipeline.load_data(fs, [spec])
    got = _proba_on_images(net, backbone, [data_dir / i for i in data.ids])
    np.testing.assert_allclose(got, fitted.estimator.predict_proba(data.X), atol=1e-5)

    result = finetune(data_dir, spec, tmp_path / "ft.pt", init=zs, store=store, unfreeze="last-1", lr=1e-2,
                      val_fraction=0, **{**FAST, "image_size": None})
    assert result.spec == f"clip:{arch}@{tmp_path / 'ft.pt'}"
    before, after = _state(ckpt), _state(result.checkpoint)
    assert before.keys() == after.keys()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("visual.") for k in changed)  # the text tower is untouched
    assert not any(k.startswith(("visual.conv1", "visual.transformer.resblocks.0.")) for k in changed)
    new = load_backbone(result.spec)
    assert new.logit_scale == backbone.logit_scale


# ---------------------------------------------------------------------------------------------------- CLI
def _cli_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_cli_errors(capsys, data_dir, timm_spec, store, tmp_path):
    assert "--data" in _cli_error(capsys, "--backbone", timm_spec, "--out", tmp_path / "o.pth")
    assert "--out" in _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec)
    err = _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec, "--out", tmp_path / "o.pth",
                     "--unfreeze", "most")
    assert "--unfreeze must be all, none or last-N" in err
    knn = _fit(store, timm_spec, "knn", tmp_path / "knn.skops")
    err = _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec, "--out", tmp_path / "o.pth", "--init", knn)
    assert "--init must be a model of method linear or zeroshot" in err
    err = _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec, "--out", tmp_path / "o.pth", "--pseudo",
                     knn)
    assert "--pseudo needs --store" in err
    err = _cli_error(capsys, "--data", tmp_path / "nowhere", "--backbone", timm_spec, "--out", tmp_path / "o.pth")
    assert "does not exist" in err
    err = _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec, "--out", tmp_path / "o.pth", "--patiense", 3)
    assert "did you mean --patience" in err
    assert not (tmp_path / "o.pth").exists()


def test_cli_runs_and_prints_the_spec(capsys, data_dir, timm_spec, linear_model, store, tmp_path):
    out = tmp_path / "ft.pth"
    main(["finetune", "--data", str(data_dir), "--backbone", timm_spec, "--out", str(out), "--init", str(linear_model),
          "--store", str(store), "--epochs", "1", "--batch-size", "6", "--device", "cpu", "--workers", "0",
          "--progress", "False", "--unfreeze", "last-1", "--json"])
    printed = capsys.readouterr().out
    assert f"backbone: timm:test_efficientnet@{out}" in printed and "--image-size 32" in printed
    assert out.is_file() and out.with_suffix(".head.skops").is_file()
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["image_size"] == SIZE  # taken from the init model's store
    # the linear init model saw the validation rows: alpha is WiSE-FT's default, not chosen on them
    assert result["alpha"] == 0.5 and result["alpha_chosen_by"] == "init saw the validation rows"


def test_threshold_outside_zero_one_is_refused(capsys, data_dir, timm_spec, tmp_path):
    """A threshold of 2 is never reached: FixMatch would silently do nothing."""
    for flag in ("--threshold", "--pseudo-threshold"):
        err = _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec, "--out", tmp_path / "o.pth", flag, 2)
        assert err.startswith(f"error: {flag} ") and "got 2" in err
        with pytest.raises(ValueError, match=f"{flag} is a confidence in"):
            finetune(data_dir, timm_spec, tmp_path / "o.pth", **{flag[2:].replace("-", "_"): 2.0})


def test_a_stages_backbone_is_refused_in_one_line(capsys, data_dir, timm_spec, tmp_path):
    """stages:<name> joins pooled stages to the pre-logits: there is no single head to fine-tune under it."""
    spec = timm_spec.replace("timm:", "stages:", 1)
    err = _cli_error(capsys, "--data", data_dir, "--backbone", spec, "--out", tmp_path / "o.pth", "--epochs", 1)
    assert err.startswith("error: cannot fine-tune a StagesBackbone") and "timm:" in err
    assert not (tmp_path / "o.pth").exists()


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_state_file_holding_python_objects_is_refused_in_one_line(capsys, data_dir, timm_spec, tmp_path):
    out, marker = tmp_path / "ft.pth", tmp_path / "pwned"
    out.with_name(out.name + ".state").write_bytes(pickle.dumps({"format": 1, "x": _RunsShell(f"touch {marker}")}))
    err = _cli_error(capsys, "--data", data_dir, "--backbone", timm_spec, "--out", out)
    assert "holds Python objects, which could run code" in err and "delete it" in err
    assert not marker.exists()


def test_a_failed_checkpoint_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        atomic_save({"w": torch.zeros(2)}, tmp_path / "ft.pth")
    assert list(tmp_path.iterdir()) == []


def test_pseudo_label_selection_is_selftrains_classaware_rule(data_dir, store, timm_spec, tmp_path):
    """--pseudo keeps exactly the rows selftrain(selection="classaware") keeps for the same probabilities."""
    from classify.methods.selftrain import SelfTraining
    from classify.methods.thresholds import ClassAwareThresholds

    model = _fit(store, timm_spec, "linear", tmp_path / "lin.skops")
    images = sources.from_folder(data_dir)
    counts = np.array([5.0, 4.0, 3.0])
    rows, labels, report = select_pseudo_labels(model, store, images, counts, threshold=0.5, steps=1000)
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        data = pipeline.load_data(fs, fitted.backbones, "unlabeled")
    proba = fitted.estimator.predict_proba(data.X)
    rule = SelfTraining(selection="classaware", tau0=0.5, classaware_steps=1000)
    mask, details = rule._select(proba, ClassAwareThresholds(3, tau0=0.5, target=counts))
    assert sorted(np.asarray(images.ids)[rows]) == sorted(data.ids[mask])
    assert report["thresholds"] == details["thresholds"] and report["final_thresholds"] == details["final_thresholds"]


def test_step_size_defaults_follow_the_device(data_dir, timm_spec, tmp_path):
    """A CPU step holds its activations in RAM: 16 labeled + 16 x 2 unlabeled views, not CUDA's 32 + 64 x 2."""
    from classify.finetune.recipe import STEP_DEFAULTS
    from classify.finetune.state import load_state

    out = tmp_path / "ft.pth"
    finetune(data_dir, timm_spec, out, epochs=0, device="cpu", image_size=SIZE, workers=0, progress=False)
    config = load_state(out.with_name(out.name + ".state"))["config"]
    assert (config["batch_size"], config["mu"]) == (16, 1) == tuple(STEP_DEFAULTS["cpu"].values())
    assert tuple(STEP_DEFAULTS["cuda"].values()) == (32, 2)


# ------------------------------------------------------------------------------------------ saying what it did
def test_warm_up_takes_at_most_a_tenth_of_a_short_run():
    from classify.finetune.schedule import warmup_steps

    assert warmup_steps(1.0, steps_per_epoch=10, total_steps=200) == 10  # a long run keeps its epoch of warm-up
    assert warmup_steps(1.0, steps_per_epoch=10, total_steps=10) == 1  # --epochs 1: not the whole run at 1 % lr
    assert warmup_steps(0.0, steps_per_epoch=10, total_steps=10) == 0


def test_a_short_run_trains_at_its_learning_rate():
    from classify.finetune.schedule import optimizer_and_schedule

    net = torch.nn.Linear(4, 3)
    cfg = {"lr": 1e-4, "weight_decay": 0.0, "layer_decay": 1.0, "epochs": 1, "warmup_epochs": 1.0}
    optimizer, scheduler = optimizer_and_schedule(net, cfg, steps_per_epoch=3)
    used = []
    for step in range(3):  # as Trainer.train_epoch: the optimizer steps at the current lr, then the schedule moves
        used.append(max(g["lr"] for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step_update(step + 1)
    assert used[0] == 1e-4  # before: the first step ran at warm-up's 1e-6 and the run never reached its lr
    assert np.mean(used) > 0.5e-4


def test_a_run_that_barely_moves_the_weights_says_so(data_dir, timm_spec, tmp_path, caplog):
    caplog.set_level("INFO", logger="classify.finetune.schedule")
    result = finetune(data_dir, timm_spec, tmp_path / "ft.pth", **{**FAST, "epochs": 1, "lr": 1e-9}, val_fraction=0)
    assert result.weights_change < 1e-6
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("almost where they started" in w and "--epochs" in w for w in warnings), warnings
