"""``python -m classify fit|predict|evaluate|report|list`` on the features of a store."""
from __future__ import annotations

import contextlib
import csv
import difflib
import inspect
import json
import logging
from pathlib import Path, PurePosixPath

import numpy as np

from classify import pipeline
from classify.registry import available, get
from store import SPLITS, FeatureStore, display_id
from store.clitools import parse_numpydoc, plain, progress_bars, run_cli, wrap_paragraph
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
         "workers": [NONE, Int(0)], "pairs": [Int(0)], "per_pair": [Int(0)],
         "id_format": [Options("relpath", "name", "stem")]}


def _check_params(method: str, params: dict) -> None:
    """Each method parameter given on the command line is one the method takes (else a did-you-mean) and passes the
    method's own rules (``_parameter_constraints``, see :mod:`classify.base`), before any reading; else one line
    naming the flag."""
    cls = get(method)
    accepted = sorted(cls().get_params(deep=False))
    for name in params:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join('--' + c.replace('_', '-') for c in close)}? " if close else ""
            raise ValueError(f"method {method!r} has no parameter --{name.replace('_', '-')}: {hint}see `python -m "
                             f"classify list --params {method}`")
    constraints = getattr(cls, "_parameter_constraints", {})
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
        The feature store (.h5) written by ``python -m embed run``.
    method : str
        A registered method (``python -m classify list``).
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
    **params : method parameters
        Any parameter of the method as a flag (--k 20, --teacher labelprop); ``python -m classify list --params
        METHOD`` lists them with their defaults and meaning.

    Examples
    --------
    python -m classify fit --store feats.h5 --method selftrain --out st.skops
    python -m classify fit --store feats.h5 --backbone timm:resnet50 --method labelprop --k 20 --out lp.skops
    python -m classify fit --store feats.h5 --backbone a,b --combine ensemble --method linear --out probe.skops
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
            label_format: str = "name", id_format: str = "relpath", order: str | None = None) -> None:
    """Predict a split of a store with a saved model; write a Kaggle-style CSV ``id,label``.

    Parameters
    ----------
    model : str
        The saved model (``python -m classify fit --out``).
    store : str
        The feature store the model was fitted on.
    out : str
        The CSV to write.
    split : str
        train, unlabeled or test.
    proba : bool
        Add one probability column per class (p_<class name>).
    label_format : str
        name (class name) or index (class index).
    id_format : str
        How images are named in the id column: relpath (the path under the data folder, test/0001.png), name
        (the file name, 0001.png) or stem (the name without extension, 0001, as Kaggle submissions want).
    order : str
        A CSV such as Kaggle's sample_submission.csv: rows follow the ids of its first column (after its header
        row), in its order, and its first two column names head the id and label columns. Ids missing from the
        split are refused, naming a few.

    Examples
    --------
    python -m classify predict --model lp.skops --store feats.h5 --out predictions.csv
    python -m classify predict --model lp.skops --store feats.h5 --id-format stem --order sample_submission.csv
    python -m classify predict --model lp.skops --store feats.h5 --split unlabeled --proba --out pool.csv
    """
    check_flags(dict(label_format=label_format, split=split, proba=proba, id_format=id_format), FLAGS)
    order = None if order is None else str(order)
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones, split, views=fitted.views)
    if not len(data.ids):
        raise ValueError(f"the {split} split of {store} has no decoded images")
    ids = format_ids(data.ids, id_format)
    header = ["id", "label"]
    rows = np.arange(len(ids))
    if order is not None:
        wanted, header = read_order(order, header)
        rows = _rows_in_order(ids, wanted, order, split, store)
    probabilities = fitted.estimator.predict_proba(data.X[rows])  # (n, C') columns follow classes_
    classes_ = np.asarray(fitted.estimator.classes_)
    predicted = classes_[probabilities.argmax(axis=1)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # ids are file names: surrogateescape writes a name that is not UTF-8 as its original bytes, so it matches the file
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(header + ([f"p_{fitted.classes[c]}" for c in classes_] if proba else []))
        for i, (row, label) in enumerate(zip(rows, predicted)):
            shown = fitted.classes[label] if label_format == "name" else int(label)
            writer.writerow([ids[row], shown] + ([f"{p:.6f}" for p in probabilities[i]] if proba else []))
    print(f"wrote {len(rows)} predictions of the {split} split to {out}")


ID_FORMATS = ("relpath", "name", "stem")


def format_ids(ids, id_format: str = "relpath") -> list[str]:
    """Image ids as a predictions CSV names them: ``relpath`` (the store's id, ``test/a/0001.png``), ``name``
    (``0001.png``) or ``stem`` (``0001``); ids that become equal are refused, naming a few."""
    if id_format not in ID_FORMATS:
        raise ValueError(f"--id-format must be one of {', '.join(ID_FORMATS)}, got {id_format!r}")
    paths = [PurePosixPath(str(i)) for i in ids]
    shown = [str(p) if id_format == "relpath" else p.name if id_format == "name" else p.stem for p in paths]
    if len(set(shown)) < len(shown):
        seen: dict[str, str] = {}
        clashes = []
        for original, value in zip(ids, shown):
            if value in seen:
                clashes.append(f"{seen[value]} and {original}")
            seen.setdefault(value, str(original))
        raise ValueError(f"--id-format {id_format} gives {len(clashes)} images the id of another ("
                         f"{'; '.join(clashes[:3])}{' ...' if len(clashes) > 3 else ''}); use --id-format relpath")
    return shown


def read_order(path: str, header: list[str]) -> tuple[list[str], list[str]]:
    """The ids of a sample submission (its first column, after the header row) and the id and label column names
    it uses (``header`` where it has fewer than two columns)."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"--order file {source} does not exist; pass the sample_submission.csv to follow")
    with source.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ValueError(f"--order file {source} lists no ids; expected a header row, then one id per row")
    names = [cell.strip() for cell in rows[0]]
    header = [names[0], names[1] if len(names) > 1 and names[1] else header[1]]
    return [row[0].strip() for row in rows[1:]], header


def _rows_in_order(ids: list[str], wanted: list[str], order: str, split: str, store: str) -> np.ndarray:
    """Row of each wanted id, in the wanted order; ids missing from the split are refused, naming a few."""
    where = {value: i for i, value in enumerate(ids)}
    missing = [value for value in wanted if value not in where]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(wanted)} ids of {order} are not in the {split} split of "
                         f"{store}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; check --id-format "
                         f"(these ids look like {ids[0]!r}) and --split")
    extra = len(ids) - len(set(wanted))
    if extra > 0:
        log.info("%d images of the %s split are not in %s and are left out", extra, split, order)
    return np.asarray([where[value] for value in wanted], dtype=np.int64)


def evaluate(store: str, method: str, backbone=None, combine: str = "concat", transductive: bool = True,
             folds: int = 5, seed: int = 0, json_output: bool = False, out: str | None = None, offline: bool = False,
             **params) -> None:
    """Score a method: on the labeled test split, or by stratified CV on the labeled train rows.

    Metrics as CLIP_benchmark names them: acc1 (top-1 accuracy, also `accuracy`), acc5 (top-5, with 5 classes or
    more), mean_per_class_recall (balanced accuracy) and macro_f1; with fit and predict seconds and the run's
    provenance (store fingerprint, backbones' weights, method, parameters, seed, versions).

    Parameters
    ----------
    store : str
        The feature store (.h5) written by ``python -m embed run``.
    method : str
        A registered method (``python -m classify list``).
    backbone : str
        Backbone spec(s) in the store, comma-separated (default: the store's only backbone).
    combine : str
        With several backbones: concat (one model on concatenated features) or ensemble (one per backbone).
    transductive : bool
        Also pass the test rows, without labels, to the fit (label propagation and self-training use them).
    folds : int
        Cross-validation folds, when the store has no labeled test split (fewer when a class has fewer labels).
    seed : int
        Seed of the cross-validation folds (the method's own seed is its random_state parameter).
    json_output : bool
        Also print the result as one JSON object on the last line of stdout.
    out : str
        Write the result, with its provenance, to this JSON file (the object --json prints).
    offline : bool
        Methods that build a backbone (coop's text tower) never download its weights (as ``HF_HUB_OFFLINE=1``).
    **params : method parameters
        Any parameter of the method as a flag (--k 20, --teacher labelprop); ``python -m classify list --params
        METHOD`` lists them with their defaults and meaning.

    Examples
    --------
    python -m classify evaluate --store feats.h5 --method selftrain --json
    python -m classify evaluate --store feats.h5 --method labelprop --k 20 --out results/labelprop-k20.json
    python -m classify evaluate --store feats.h5 --backbone a,b --combine concat --method linear --folds 3
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
          f"accuracy {result['accuracy']:.4f}" + (f", top-5 {result['acc5']:.4f}" if "acc5" in result else "")
          + f", mean per-class recall {result['mean_per_class_recall']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
          f"fit {result['fit_seconds']:.2f} s, predict {result['predict_seconds']:.3f} s")
    text = json.dumps(result, default=pipeline.jsonable)
    if out is not None:
        target = Path(str(out)).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(json.loads(text), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {target}")
    if json_output:
        print(text)


def report(model: str, store: str, out: str = "report", folds: int = 5, seed: int = 0, pairs: int = 6,
           per_pair: int = 8) -> None:
    """Failure analysis as a static web page: confusion heatmap, per-class precision and recall, most-confused pairs.

    Writes OUT/index.html (open it in a browser; no server, no suite needed) with thumbnails of the misclassified
    images of the most confused pairs (read from the image files the store lists, under its data folder), and the
    same numbers as confusion.png, per_class.csv, confused_pairs.csv and report.json. Uses the labeled test split
    when the store has one; else cross-validated predictions of the same method on the labeled train rows.

    Parameters
    ----------
    model : str
        The saved model (``python -m classify fit --out``).
    store : str
        The feature store the model was fitted on.
    out : str
        The folder to write the report into.
    folds : int
        Cross-validation folds, when the store has no labeled test split.
    seed : int
        Seed of the cross-validation folds.
    pairs : int
        How many of the most confused class pairs the page shows with thumbnails.
    per_pair : int
        Thumbnails of misclassified images per pair.

    Examples
    --------
    python -m classify report --model lp.skops --store feats.h5 --out report/
    python -m classify report --model st.skops --store feats.h5 --out report-cv/ --folds 3
    """
    from classify.report import write_report

    check_flags(dict(folds=folds, seed=seed, pairs=pairs, per_pair=per_pair), FLAGS)
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        root = Path(fs.root)
        data = pipeline.load_data(fs, fitted.backbones, views=fitted.views)
        test = (data.splits == "test") & (data.y >= 0)
        if test.any():  # not validation/ rows as evaluate does: a fitted model has seen their labels
            y_true, y_pred = data.y[test], np.asarray(fitted.estimator.predict(data.X[test]))
            ids = data.ids[test]
            protocol = "labeled test split"
        else:
            ids = data.ids[(data.splits == "train") & (data.y >= 0)]  # the order of cross_val_predictions
            y_true, y_pred, *_, k = pipeline.cross_val_predictions(fs, data, fitted.backbones, fitted.method,
                                                                   fitted.params, fitted.combine, folds=folds,
                                                                   seed=seed)
            protocol = f"{k}-fold CV on the labeled train rows"
    title = f"{fitted.method} on {', '.join(fitted.backbones)} ({protocol})"
    extra = {"protocol": protocol, "fit_report": getattr(fitted.estimator, "fit_report_", None)}
    extra = json.loads(json.dumps(extra, default=pipeline.jsonable))  # plain JSON types for report.json
    summary = write_report(out, y_true, y_pred, fitted.classes, title, extra, images=[root / i for i in ids],
                           captions=[display_id(i) for i in ids], pairs_shown=pairs, per_pair=per_pair)
    print(f"{title}: accuracy {summary['accuracy']:.4f} on {summary['n']} images")
    worst = sorted(summary["per_class"], key=lambda row: row["accuracy"])[:5]
    print("weakest classes: " + ", ".join(f"{row['class']} {row['accuracy']:.2f}" for row in worst))
    for pair in summary["confused_pairs"][:5]:
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']} ({pair['share_of_true']:.0%} of the class)")
    print(f"wrote {Path(out) / 'index.html'} (open it in a browser), confusion.png, per_class.csv, "
          "confused_pairs.csv, report.json")


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
    epochs : int
        Passes over the labeled training images.
    lr : float
        Peak learning rate of AdamW (of the head; trunk layers get it scaled by --layer-decay per layer group).
    batch_size : int
        Labeled images per step.
    device : str
        auto, cpu or cuda (CUDA: bfloat16 autocast, channels-last).
    image_size : int
        Square input side (default: the backbone's, or what the --init model's store used).
    seed : int
        Seeds the validation split, sampling, augmentations and dropout.
    progress : bool
        Show a progress bar per epoch.
    json_output : bool
        Print the result as one JSON object on the last line (--json).
    offline : bool
        Never download the backbone's weights (as ``HF_HUB_OFFLINE=1``): use the @checkpoint, the cache or a weight
        package, else stop with one line naming what is missing.
    **options : further options
        The further options above, as flags (--val-fraction 0.2 --patience 5).

    Other Parameters
    ----------------
    weight_decay : float
        AdamW weight decay.
    layer_decay : float
        Learning-rate scale per layer group below the head (lr * layer_decay ** depth).
    warmup_epochs : float
        Linear learning-rate warm-up, in epochs.
    val_fraction : float
        Share of each class's labeled images held out for early stopping and the WiSE alpha (0: none, the last
        epoch is kept).
    patience : int
        Epochs without validation improvement before stopping.
    fixmatch_weight : float
        Weight of the FixMatch loss on unlabeled/ images.
    mu : int
        Unlabeled images per labeled image in a step (0: no FixMatch).
    threshold : float
        Initial class-aware confidence threshold of FixMatch's pseudo-labels.
    pseudo_threshold : float
        Class-aware selection of --pseudo labels: the start threshold (selftrain's tau0).
    pseudo_steps : int
        Class-aware selection of --pseudo labels: threshold updates (selftrain's classaware_steps).
    wise_alphas : list of float
        Candidate WiSE-FT weights of the fine-tuned weights (0 = the original backbone), e.g. 0,0.5,1; the best on
        validation is kept.
    bn_train : bool
        Update BatchNorm running statistics while training.
    workers : int
        Image-decoding worker processes (default: the cores, at most 8).

    Examples
    --------
    python -m classify finetune --data DATA --backbone timm:tf_efficientnet_lite0 --epochs 20 --out ft.pth
    python -m classify finetune --data DATA --backbone timm:resnet50 --init probe.skops --unfreeze last-2 --out ft.pth
    python -m classify finetune --data DATA --backbone clip:ViT-B-32/openai --pseudo st.skops --store S.h5 --out ft.pth
    """
    from classify import finetune as ft

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

    progress = progress_bars(progress)  # off under --quiet
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


def list_methods(params: str | None = None) -> None:
    """The registered methods, one line each; or one method's parameters.

    Parameters
    ----------
    params : str
        A method name: list its parameters (the flags fit and evaluate take for it), each with its default and
        meaning from the method's docstring.

    Examples
    --------
    python -m classify list
    python -m classify list --params selftrain
    """
    if params is None:
        for name in available():
            print(f"{name:12s} {plain(parse_numpydoc(get(name).__doc__).summary)}")
        return
    print(method_parameters(str(params)), end="")


def method_parameters(method: str) -> str:
    """The text of ``classify list --params METHOD``: each parameter as a flag, its default (from the estimator)
    and its type and meaning (from the estimator's numpydoc docstring)."""
    cls = get(method)
    doc = parse_numpydoc(cls.__doc__)
    defaults = cls().get_params(deep=False)
    order = [name for name in inspect.signature(cls.__init__).parameters if name in defaults]
    lines = [f"{method}: {plain(doc.summary)}", "", f"parameters (flags of python -m classify fit|evaluate --method "
                                                 f"{method}):"]
    for name in order + sorted(set(defaults) - set(order)):
        default = defaults[name]
        entry = doc.params.get(name)
        kind = f"{entry.type.split(', default')[0]}; " if entry and entry.type else ""
        lines.append(f"  --{name.replace('_', '-')}  ({kind}default: {default!r})")
        lines.append(wrap_paragraph(entry.text if entry else "(not documented)", 6))
    return "\n".join(lines) + "\n"


def _finetune_options() -> dict[str, tuple]:
    """The further options of ``classify finetune`` with the recipe's defaults, for its help."""
    from classify.finetune import finetune as recipe

    skip = set(inspect.signature(finetune).parameters) | {"callback"}
    return {name: (p.default, "") for name, p in inspect.signature(recipe).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in skip}


COMMANDS = {"fit": fit, "predict": predict, "evaluate": evaluate, "report": report, "list": list_methods,
            "finetune": finetune}


def main(argv: list[str] | None = None) -> None:
    run_cli(COMMANDS, argv, name="python -m classify", extras={"finetune": _finetune_options})
