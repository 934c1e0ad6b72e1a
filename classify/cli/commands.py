"""``python -m classify fit|predict|evaluate|report|list``: the front ends of the model commands (parse, call the
library, print)."""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
from pathlib import Path

import numpy as np

from classify.predictions import ID_FORMATS, format_ids, read_order, rows_in_order
from classify.methods.registry import available, get
from store import SPLITS, FeatureStore, display_id
from store.clitools import as_list, flag_name, parse_numpydoc, plain, wrap_paragraph
from store.outputs import check_output, write_csv, write_text
from store.paths import data_root as data_root_of, image_files
from store.validation import BOOL, NONE, Int, Options, UserError, check_flags, did_you_mean

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- flag checking
#: the type and range of the commands' flags (see :mod:`store.validation`); method parameters use the methods' rules.
#: Seeds stop below 2**32: numpy's and scikit-learn's random states take no more.
FLAGS = {"transductive": [BOOL], "offline": [BOOL], "stream": [NONE, BOOL], "proba": [BOOL], "json_output": [BOOL],
         "label_format": [Options("name", "index")], "split": [Options(*SPLITS)], "folds": [Int(2)],
         "seed": [Int(0, 2**32 - 1)],
         "pairs": [Int(0)], "per_pair": [Int(0)], "id_format": [Options(*ID_FORMATS)], "shots": [Int(1), NONE],
         "draws": [Int(1)]}


def _check_params(method: str, params: dict) -> None:
    """Each method parameter given on the command line is one the method takes (else a did-you-mean) and passes the
    method's own rules (``_parameter_constraints``, see :mod:`classify.methods.base`), before any reading; else one line
    naming the flag."""
    cls = get(method)
    accepted = sorted(cls().get_params(deep=False))
    for name in params:
        if name not in accepted:
            hint = did_you_mean(name, accepted, show=flag_name)
            raise UserError(f"method {method!r} has no parameter --{name.replace('_', '-')}: {hint}see `python -m "
                             f"classify list --params {method}`")
    constraints = getattr(cls, "_parameter_constraints", {})
    for name, value in params.items():
        rules = constraints.get(name)
        if rules and not any(rule.accepts(value) for rule in rules):
            forms = [str(rule) for rule in rules]
            allowed = forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]
            raise UserError(f"--{name.replace('_', '-')} must be {allowed} for method {method!r}, got {value!r}")


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
        raise UserError(f"method {method!r} cannot use {', '.join(suspects)} ({err}); see the method's docstring "
                         "for its parameter types") from None


def _backbones(store: FeatureStore, backbone) -> list[str]:
    specs = as_list(backbone)
    if not specs:
        have = store.backbones
        if len(have) != 1:
            raise UserError(f"pass --backbone SPEC; {store.path} has {', '.join(have) or 'no backbones'}")
        specs = have
    return specs


def fit(store: str, out: str, method: str = "auto", backbone=None, combine: str = "concat",
        transductive: bool = True, stream: bool | None = None, offline: bool = False, **params) -> None:
    """Fit a method on a store and save the model.

    Parameters
    ----------
    store : str
        The feature store (.h5) written by ``python -m embed run``.
    out : str
        Where to save the model (a skops file, e.g. model.skops: loading it runs no code).
    method : str
        A registered method (``python -m classify list``); auto keeps the linear probe unless cross-validation on
        the labels shows a semi-supervised method beating it (the model records which and why).
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
    python -m classify fit --store feats.h5 --out model.skops
    python -m classify fit --store feats.h5 --backbone timm:resnet50 --method labelprop --k 20 --out lp.skops
    python -m classify fit --store feats.h5 --backbone a,b --combine ensemble --method linear --out probe.skops
    """
    from classify import pipeline  # imported here: --help needs no scikit-learn

    get(method)  # an unknown method fails before any reading
    check_flags(dict(transductive=transductive, offline=offline, stream=stream), FLAGS)
    _check_params(method, params)
    out = check_output(out, inputs={"--store": store})
    with FeatureStore(store) as fs:
        specs = _backbones(fs, backbone)
        model = _fitting(method, params, lambda: pipeline.fit(fs, specs, method, params, combine, transductive,
                                                              stream), offline)
        pipeline.unpredictable_classes(fs, getattr(model.estimator, "classes_", None))
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
    from classify import pipeline  # imported here: --help needs no scikit-learn

    check_flags(dict(label_format=label_format, split=split, proba=proba, id_format=id_format), FLAGS)
    order = None if order is None else str(order)
    out = check_output(out, inputs={"--model": model, "--store": store, "--order": order})
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones, split, views=fitted.views)
        pipeline.unpredictable_classes(fs, getattr(fitted.estimator, "classes_", None))
    if not len(data.ids):
        raise UserError(f"the {split} split of {store} has no decoded images")
    ids = format_ids(data.ids, id_format)
    header = ["id", "label"]
    rows = np.arange(len(ids))
    if order is not None:
        wanted, header = read_order(order, header)
        rows = rows_in_order(ids, wanted, order, split, store)
    probabilities = fitted.estimator.predict_proba(data.X[rows])  # (n, C') columns follow classes_
    classes_ = np.asarray(fitted.estimator.classes_)
    predicted = classes_[probabilities.argmax(axis=1)]

    def lines():
        for i, (row, label) in enumerate(zip(rows, predicted)):
            shown = fitted.classes[label] if label_format == "name" else int(label)
            yield [ids[row], shown] + ([f"{p:.6f}" for p in probabilities[i]] if proba else [])

    write_csv(out, header + ([f"p_{fitted.classes[c]}" for c in classes_] if proba else []), lines())
    print(f"wrote {len(rows)} predictions of the {split} split to {out}")


def evaluate(store: str, method: str = "auto", backbone=None, combine: str = "concat", transductive: bool = True,
             folds: int = 5, seed: int = 0, shots: int | None = None, draws: int = 3, json_output: bool = False,
             out: str | None = None, offline: bool = False, **params) -> None:
    """Score a method: on the labeled test split, or by stratified CV on the labeled train rows.

    Metrics as CLIP_benchmark names them: acc1 (top-1 accuracy, also `accuracy`), acc5 (top-5, with 5 classes or
    more), mean_per_class_recall (balanced accuracy) and macro_f1; with fit and predict seconds and the run's
    provenance (store fingerprint, backbones' weights, method, parameters, seed, versions). With --shots, the
    few-shot protocol of `python -m benchmarks run` (its numbers to the digit): each metric as mean ± std over the
    label draws, and each draw's result.

    Parameters
    ----------
    store : str
        The feature store (.h5) written by ``python -m embed run``.
    method : str
        A registered method (``python -m classify list``); auto keeps the linear probe unless cross-validation on
        the labels shows a semi-supervised method beating it (the result records which and why).
    backbone : str
        Backbone spec(s) in the store, comma-separated (default: the store's only backbone).
    combine : str
        With several backbones: concat (one model on concatenated features) or ensemble (one per backbone).
    transductive : bool
        Also pass the test rows, without labels, to the fit (label propagation and self-training use them).
    folds : int
        Cross-validation folds, when the store has no labeled test split (fewer when a class has fewer labels).
    seed : int
        Seed of the cross-validation folds, or with --shots of the first label draw (the method's own seed is its
        random_state parameter).
    shots : int
        Labels per class drawn from the labeled train rows, as `python -m benchmarks run --shots` draws them; the
        other train rows join the unlabeled pool with their labels hidden from the fit. Scores on the labeled test
        split (or the validation/ folder); a store without one is refused (default: fit on every train label).
    draws : int
        With --shots: how many label draws (seeds SEED .. SEED+DRAWS-1, as the benchmarks' --seeds); metrics are the
        mean and std over them.
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
    python -m classify evaluate --store feats.h5 --method labelprop --k 20 --out results/labelprop-k20.json
    python -m classify evaluate --store feats.h5 --backbone a,b --combine concat --method linear --folds 3
    python -m classify evaluate --store feats.h5 --method selftrain --shots 10 --draws 3 --json
    """
    from classify import evaluation, pipeline  # imported here: --help needs no scikit-learn

    get(method)
    check_flags(dict(transductive=transductive, offline=offline, folds=folds, seed=seed, shots=shots, draws=draws,
                     json_output=json_output), FLAGS)
    if shots is None and draws != 3:
        raise UserError("--draws counts the label draws of --shots; add --shots N (labels per class) or drop --draws")
    _check_params(method, params)
    target = None if out is None else check_output(out, inputs={"--store": store})
    with FeatureStore(store) as fs:
        specs = _backbones(fs, backbone)
        result = _fitting(method, params, lambda: evaluation.evaluate(fs, specs, method, params, combine, transductive,
                                                                    folds, seed, shots, draws), offline)

    def shown(name: str, digits: int = 4) -> str:
        std = result.get(f"{name}_std")
        return f"{result[name]:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")

    per_draw = " per draw" if shots is not None else ""
    print(f"{method} on {', '.join(result['backbones'])} ({result['protocol']}, n={result['n_test']}): "
          f"accuracy {shown('accuracy')}" + (f", top-5 {shown('acc5')}" if "acc5" in result else "")
          + f", mean per-class recall {shown('mean_per_class_recall')}, macro-F1 {shown('macro_f1')}, "
          f"fit {result['fit_seconds']:.2f} s{per_draw}, predict {result['predict_seconds']:.3f} s{per_draw}")
    text = json.dumps(result, default=pipeline.jsonable)
    if target is not None:
        write_text(target, json.dumps(json.loads(text), indent=2) + "\n")
        print(f"wrote {target}")
    if json_output:
        print(text)


def report(model: str, store: str, out: str = "report", folds: int = 5, seed: int = 0, pairs: int = 6,
           per_pair: int = 8, data_root: str | None = None) -> None:
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
    data_root : str
        The folder holding the images, when it moved since `python -m embed run` (default: the data folder the
        store records).

    Examples
    --------
    python -m classify report --model lp.skops --store feats.h5 --out report/
    python -m classify report --model st.skops --store feats.h5 --out report-cv/ --folds 3
    """
    from classify import evaluation, pipeline  # imported here: --help needs no scikit-learn

    from classify.report import REPORT_FILES, write_report

    check_flags(dict(folds=folds, seed=seed, pairs=pairs, per_pair=per_pair), FLAGS)
    out = check_output(out, inputs={"--model": model, "--store": store}, folder=True, files=REPORT_FILES)
    fitted = pipeline.load_model(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        unpredictable = pipeline.unpredictable_classes(fs, getattr(fitted.estimator, "classes_", None))
        root = data_root_of(fs, data_root)
        ids, y_true, y_pred, protocol = evaluation.saved_model_predictions(fs, fitted, folds, seed)
    title = f"{fitted.method} on {', '.join(fitted.backbones)} ({protocol})"
    extra = {"protocol": protocol, "fit_report": getattr(fitted.estimator, "fit_report_", None),
             "unpredictable_classes": unpredictable}
    extra = json.loads(json.dumps(extra, default=pipeline.jsonable))  # plain JSON types for report.json
    summary = write_report(out, y_true, y_pred, fitted.classes, title, extra, images=image_files(root, ids),
                           captions=[display_id(i) for i in ids], pairs_shown=pairs, per_pair=per_pair)
    print(f"{title}: accuracy {summary['accuracy']:.4f} on {summary['n']} images")
    worst = sorted(summary["per_class"], key=lambda row: row["recall"])[:5]
    print("weakest classes (recall): " + ", ".join(f"{row['class']} {row['recall']:.2f}" for row in worst))
    for pair in summary["confused_pairs"][:5]:
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']} ({pair['share_of_true']:.0%} of the class)")
    print(f"wrote {Path(out) / 'index.html'} (open it in a browser), confusion.png, per_class.csv, "
          "confused_pairs.csv, report.json")


def list_methods(params: str | None = None, store: str | None = None) -> None:
    """The registered methods, one line each, with what each needs beyond features; or one method's parameters.

    Parameters
    ----------
    params : str
        A method name: list its parameters (the flags fit and evaluate take for it), each with its default and
        meaning from the method's docstring.
    store : str
        A feature store: say for each method whether it applies to it (a CLIP backbone's text embeddings, cached
        views, the backbone's ImageNet classifier).

    Examples
    --------
    python -m classify list
    python -m classify list --store feats.h5
    python -m classify list --params selftrain
    """
    if params is not None:
        print(method_parameters(str(params)), end="")
        return
    has = None
    if store is not None:
        with FeatureStore(store) as fs:
            info = fs.info()["backbones"].values()
        has = {"needs_text": any(b["text"] for b in info), "uses_views": any(b["views"] for b in info),
               "needs_head": any(b["probs"] for b in info)}
    for name in available():
        cls = get(name)
        needs = [what for capability, what in NEEDS.items() if getattr(cls, capability, False)]
        line = f"{name:12s} {plain(parse_numpydoc(cls.__doc__).summary)}"
        if needs:
            line += f" [needs {', '.join(needs)}]"
        if has is not None:
            missing = [what for capability, what in NEEDS.items() if getattr(cls, capability, False)
                       and not has[capability]]
            line = ("   " if not missing else "no ") + line + (f" -- this store has no {', '.join(missing)}"
                                                             if missing else "")
        print(line)


#: what a method's capability asks of the store, in the words of `classify list`
NEEDS = {"needs_text": "CLIP text embeddings", "uses_views": "cached views (embed run --views K)",
         "needs_head": "the backbone's ImageNet classifier"}


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
