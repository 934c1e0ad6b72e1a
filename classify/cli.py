"""``python -m classify fit|predict|evaluate|report|list`` on the features of a store."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
from pathlib import Path

import numpy as np

from classify import pipeline
from classify.registry import available, get
from store import SPLITS, FeatureStore
from store.cli import run_cli
from store.validation import BOOL, NONE, Int, Options, Real, check_flags

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- flag checking
#: the type and range of the commands' flags (see :mod:`store.validation`); method parameters use the methods' rules
FLAGS = {"transductive": [BOOL], "offline": [BOOL], "stream": [NONE, BOOL], "proba": [BOOL], "json_output": [BOOL],
         "label_format": [Options("name", "index")], "split": [Options(*SPLITS)], "folds": [Int(2)], "seed": [Int(0)],
         "progress": [BOOL], "bn_train": [BOOL], "epochs": [Int(0)], "lr": [Real(0, low_open=True)],
         "batch_size": [Int(1)], "image_size": [NONE, Int(8)], "weight_decay": [Real(0)],
         "layer_decay": [Real(0, 1, low_open=True)], "warmup_epochs": [Real(0)],
         "val_fraction": [Real(0, 1, high_open=True)], "patience": [Int(1)], "fixmatch_weight": [Real(0)],
         "mu": [Int(0)], "threshold": [Real(0, 1)], "pseudo_threshold": [Real(0, 1)], "pseudo_steps": [Int(0)],
         "workers": [NONE, Int(0)]}


def _check_params(method: str, params: dict) -> None:
    """Each method parameter given on the command line passes the method's own rules (``_parameter_constraints``,
    see :mod:`classify.base`) before any reading, else one line naming the flag."""
    constraints = getattr(get(method), "_parameter_constraints", {})
    for name, value in params.items():
        rules = constraints.get(name)
        if rules and not any(rule.accepts(value) for rule in rules):
            forms = [str(rule) for rule in rules]
            allowed = forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed} for method {method!r}, got {value!r}")


def _unchecked_params(method: str, params: dict) -> list[str]:
    """The parameters given on the command line that the method's rules do not check (where a TypeError inside a
    fit can come from), as ``--flag value``."""
    constraints = getattr(get(method), "_parameter_constraints", {})
    return [f"--{n.replace('_', '-')} {v!r}" for n, v in params.items() if n not in constraints]


def _no_downloads(offline: bool):
    """``--offline``: a method that builds a backbone (CoOp's text tower) refuses to download its weights."""
    if not offline:
        return contextlib.nullcontext()
    from embed.backbones import offline_env  # embed only for the methods with a text tower, as they do

    return offline_env()


def _fitting(method: str, params: dict, run, offline: bool = False):
    """``run()`` (downloads off with ``offline``), where a TypeError caused by a parameter of the wrong type becomes
    one line naming it."""
    try:
        with _no_downloads(offline):
            return run()
    except TypeError as err:
        suspects = _unchecked_params(method, params)
        if not suspects:  # every parameter passed the method's rules: a bug, not the user's value
            raise
        log.debug("fit of %s failed", method, exc_info=True)
        raise ValueError(f"method {method!r} cannot use {', '.join(suspects)} ({err}); see the method's docstring "
                         "for its parameter types") from None


def _backbones(store: FeatureStore, backbone) -> list[str]:
    specs = pipeline.as_list(backbone)
    if not specs:
        have = store.backbones
        if len(have) != 1:
            raise ValueError(f"pass --backbone SPEC; {store.path} has {', '.join(have) or 'no backbones'}")
        specs = have
    return specs


def fit(store: str, method: str, out: str, backbone=None, combine: str = "concat", transductive: bool = True,
        stream: bool | None = None, offline: bool = False, **params) -> None:
    """Fit a method on a store and save the model.

    Parameters
    ----------
    store : str
        The feature store (.h5).
    method : str
        A registered method (`python -m classify list`).
    out : str
        Where to save the model (a skops file, e.g. model.skops: loading it runs no code).
    backbone : str
        Backbone spec(s) in the store, comma-separated (default: the store's only backbone).
    combine : str
        With several backbones: concat (one model on concatenated features) or ensemble (one per backbone).
    transductive : bool
        Also pass the test rows, without labels, to the fit (label propagation and self-training use them).
    stream : bool
        Read the features chunk by chunk instead of loading them (labelprop; default: when they exceed 4 GiB).
    offline : bool
        Methods that build a backbone (coop's text tower) never download its weights (as ``HF_HUB_OFFLINE=1``).
    **params
        The method's parameters, e.g. --k 20 --teacher labelprop.
    """
    get(method)  # an unknown method fails before any reading
    check_flags(dict(transductive=transductive, offline=offline, stream=stream), FLAGS)
    _check_params(method, params)
    with FeatureStore(store) as fs:
        specs = _backbones(fs, backbone)
        model = _fitting(method, params, lambda: pipeline.fit(fs, specs, method, params, combine, transductive,
                                                              stream), offline)
    model.save(out)
    print(f"fitted {method} in {model.fit_seconds:.2f} s -> {out}")
    report = getattr(model.estimator, "fit_report_", None)
    if report is not None:
        print(json.dumps(report, indent=1, default=pipeline.jsonable))


def predict(model: str, store: str, out: str = "predictions.csv", split: str = "test", proba: bool = False,
            label_format: str = "name") -> None:
    """Predict a split of a store with a saved model; write a Kaggle-style CSV ``id,label``.

    Parameters
    ----------
    model, store : str
        The saved model and the store it was fitted on.
    out : str
        The CSV to write.
    split : str
        train, unlabeled or test.
    proba : bool
        Add one probability column per class.
    label_format : str
        name (class name) or index (class index).
    """
    check_flags(dict(label_format=label_format, split=split, proba=proba), FLAGS)
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones, split, views=fitted.views)
    if not len(data.ids):
        raise ValueError(f"the {split} split of {store} has no decoded images")
    probabilities = fitted.estimator.predict_proba(data.X)  # (n, C') columns follow classes_
    classes_ = np.asarray(fitted.estimator.classes_)
    predicted = classes_[probabilities.argmax(axis=1)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # ids are file names: surrogateescape writes a name that is not UTF-8 as its original bytes, so it matches the file
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"] + ([f"p_{fitted.classes[c]}" for c in classes_] if proba else []))
        for i, (image_id, label) in enumerate(zip(data.ids, predicted)):
            shown = fitted.classes[label] if label_format == "name" else int(label)
            writer.writerow([image_id, shown] + ([f"{p:.6f}" for p in probabilities[i]] if proba else []))
    print(f"wrote {len(data.ids)} predictions of the {split} split to {out}")


def evaluate(store: str, method: str, backbone=None, combine: str = "concat", transductive: bool = True,
             folds: int = 5, seed: int = 0, json_output: bool = False, offline: bool = False, **params) -> None:
    """Accuracy and macro-F1 on the labeled test split, or stratified CV on the labeled train rows.

    Parameters
    ----------
    store, method, backbone, combine, transductive, offline, **params
        As for ``fit``.
    folds, seed : int
        Cross-validation folds and seed, when the store has no labeled test split.
    json_output : bool
        Also print the result as one JSON object on the last line (``--json``).
    """
    get(method)
    check_flags(dict(transductive=transductive, offline=offline, folds=folds, seed=seed, json_output=json_output),
                FLAGS)
    _check_params(method, params)
    with FeatureStore(store) as fs:
        specs = _backbones(fs, backbone)
        result = _fitting(method, params, lambda: pipeline.evaluate(fs, specs, method, params, combine, transductive,
                                                                    folds, seed), offline)
    print(f"{method} on {', '.join(result['backbones'])} ({result['protocol']}, n={result['n_test']}): "
          f"accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
          f"fit {result['fit_seconds']:.2f} s, predict {result['predict_seconds']:.3f} s")
    if json_output:
        print(json.dumps(result, default=pipeline.jsonable))


def report(model: str, store: str, out: str = "report", folds: int = 5, seed: int = 0) -> None:
    """Failure analysis: confusion heatmap PNG, per-class accuracy, most-confused class pairs.

    Uses the labeled test split when the store has one; else cross-validated predictions of the same method on
    the labeled train rows.
    """
    from classify.report import write_report

    check_flags(dict(folds=folds, seed=seed), FLAGS)
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones, views=fitted.views)
        test = (data.splits == "test") & (data.y >= 0)
        if test.any():
            y_true, y_pred = data.y[test], np.asarray(fitted.estimator.predict(data.X[test]))
            protocol = "labeled test split"
        else:
            y_true, y_pred, *_, k = pipeline.cross_val_predictions(fs, data, fitted.backbones, fitted.method,
                                                                   fitted.params, fitted.combine, folds=folds,
                                                                   seed=seed)
            protocol = f"{k}-fold CV on the labeled train rows"
    title = f"{fitted.method} on {', '.join(fitted.backbones)} ({protocol})"
    extra = {"protocol": protocol, "fit_report": getattr(fitted.estimator, "fit_report_", None)}
    extra = json.loads(json.dumps(extra, default=pipeline.jsonable))  # plain JSON types for report.json
    summary = write_report(out, y_true, y_pred, fitted.classes, title, extra)
    print(f"{title}: accuracy {summary['accuracy']:.4f} on {summary['n']} images")
    worst = sorted(summary["per_class"], key=lambda row: row["accuracy"])[:5]
    print("weakest classes: " + ", ".join(f"{row['class']} {row['accuracy']:.2f}" for row in worst))
    for pair in summary["confused_pairs"][:5]:
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']} ({pair['share_of_true']:.0%} of the class)")
    print(f"wrote {out}/confusion.png, per_class.csv, confused_pairs.csv, report.json")


def finetune(data: str | None = None, backbone: str | None = None, out: str | None = None, init: str | None = None,
             unfreeze: str = "all", pseudo: str | None = None, store: str | None = None, epochs: int = 20,
             lr: float = 1e-4, batch_size: int = 32, device: str = "auto", image_size: int | None = None,
             seed: int = 0, progress: bool = True, json_output: bool = False, offline: bool = False,
             **options) -> None:
    """Fine-tune a timm model or a CLIP image tower end to end; the result is a new backbone spec for `embed run`.

    Rerun the same command to resume after a crash (state in OUT.state). See classify/finetune.py for the recipe.

    Parameters
    ----------
    data : str
        Folder in the challenge layout: train/<class>/* labeled, unlabeled/* (FixMatch pool).
    backbone : str
        timm:<name>[@ckpt], clip:<arch>/<tag> or clip:<arch>@<ckpt>.
    out : str
        The fine-tuned checkpoint to write (e.g. ft.pth); the head goes to OUT-stem.head.skops.
    init : str
        A saved linear or zeroshot model of this backbone to start the head from (default: a probe fitted here).
    unfreeze : str
        all, none or last-N (the last N layer groups of the backbone; the head always trains).
    pseudo : str
        A saved model (e.g. selftrain, labelprop) whose confident predictions on the store's unlabeled rows become
        extra labels; needs --store.
    store : str
        The feature store of this data folder (for --pseudo; with --init it checks / supplies the image size).
    epochs, lr, batch_size, seed : number
        Training length, AdamW peak learning rate, labeled images per step, seed.
    device : str
        auto, cpu or cuda (CUDA: bfloat16 autocast, channels-last).
    image_size : int
        Square input side (default: the backbone's, or what the --init model's store used).
    json_output : bool
        Print the result as one JSON object on the last line (--json).
    offline : bool
        Never download the backbone's weights (as ``HF_HUB_OFFLINE=1``): use the @checkpoint, the cache or a weight
        package, else stop with one line naming what is missing.
    **options
        Further settings of classify.finetune.finetune, e.g. --val-fraction 0.2 --patience 5 --layer-decay 0.8
        --mu 2 --threshold 0.95 --fixmatch-weight 1 --wise-alphas 0,0.5,1 --workers 4.
    """
    import difflib
    import inspect

    from classify import finetune as ft

    if options.pop("help", False):  # fire hands --help to a function with **options: show fire's help instead
        import fire

        fire.Fire(finetune, command=["--", "--help"], name="finetune")
    for flag, value, hint in (("data", data, "DIR, the challenge layout (train/<class>/*, unlabeled/*)"),
                              ("backbone", backbone, "SPEC, e.g. timm:tf_efficientnet_lite0"),
                              ("out", out, "CKPT, the fine-tuned checkpoint to write (e.g. ft.pth)")):
        if value is None:
            raise ValueError(f"pass --{flag} {hint}")
    accepted = set(inspect.signature(ft.finetune).parameters) - {"callback"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
        hint = f"did you mean --{close[0].replace('_', '-')}? " if close else ""
        raise ValueError(f"unknown option --{unknown[0].replace('_', '-')}: {hint}see `python -m classify finetune "
                         "--help`")
    ft.parse_unfreeze(unfreeze)
    check_flags(dict(options, epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size, seed=seed,
                     progress=progress, json_output=json_output, offline=offline), FLAGS)
    from embed.backbones import offline_env

    with offline_env(offline):  # the backbone's load refuses to download (finetune checks its inputs first)
        result = ft.finetune(data, backbone, out, init=init, unfreeze=unfreeze, pseudo=pseudo, store=store,
                             epochs=epochs, lr=lr, batch_size=batch_size, device=device, image_size=image_size,
                             seed=seed, progress=progress, **options)
    size = f" --image-size {result.image_size}" if result.image_size else ""
    val = "" if result.val_accuracy is None else (f", validation accuracy {result.val_accuracy_initial:.4f} -> "
                                                  f"{result.val_accuracy:.4f}")
    print(f"fine-tuned {result.epochs_run} epochs (best {result.best_epoch}, WiSE alpha {result.alpha:.2f}{val}) "
          f"in {result.seconds:.1f} s")
    print(f"backbone: {result.spec}")
    print(f"next:  python -m embed run --data {data} --backbone {result.spec} --store STORE{size}")
    print(f"       python -m classify predict --model {result.head_model} --store STORE   (the fine-tuned head)")
    if json_output:
        print(json.dumps(result.to_dict(), default=pipeline.jsonable))


def list_methods() -> None:
    """The registered methods, one line each."""
    for name in available():
        doc = (get(name).__doc__ or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else ''}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    run_cli({"fit": fit, "predict": predict, "evaluate": evaluate, "report": report, "list": list_methods,
             "finetune": finetune}, argv)
