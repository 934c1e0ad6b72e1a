"""Benchmark tables across methods, backbones and label budgets, with plain scikit-learn anchors side by side.

Protocol (the same for every method and anchor):

- the few-shot labels are drawn from the train rows only, ``shots`` per class, by ``seed``; the other train rows and
  the unlabeled pool are passed with label -1; test rows are passed with label -1 too (transductive), their labels
  are only used for scoring;
- hyperparameters are chosen inside each estimator by CV on the drawn labels, never on test labels;
- every draw is a pure function of (dataset, shots, seed): tables reproduce to the digit.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

from classify import evaluation, pipeline
from classify.methods.base import NotApplicable
from classify.methods.features import UNLABELED
from classify.methods.registry import get
from store import FeatureStore
from store.outputs import write_text
from store.validation import UserError

log = logging.getLogger(__name__)

#: default results folder: in the working directory, never inside the installed package
RESULTS = Path("benchmarks-results")
DEFAULT_METHODS = ("zeroshot", "conse", "linear", "knn", "labelprop", "selftrain", "selftrain(teacher=conse)", "moe",
                   "ptmap", "tip", "crossmodal", "fixmatch", "auto")
#: the reference of the gap-closed columns: the few-shot probe, and the same probe on every train label (the oracle)
PROBE = "linear"


def _anchor(estimator) -> Callable[[], object]:
    return lambda: make_pipeline(Normalizer(), clone(estimator))


class KBestSelfTraining(ClassifierMixin, BaseEstimator):
    """sklearn's SelfTrainingClassifier that really self-trains: ``criterion="k_best"`` adding a tenth of the
    unlabeled rows per round for 10 rounds (its default threshold of 0.75 is never reached by a logistic regression
    on unit-norm features with few labels, so the default anchor is the supervised probe)."""

    def __init__(self, rounds: int = 10):
        self.rounds = rounds

    def fit(self, X, y):
        n_unlabeled = int((np.asarray(y) == UNLABELED).sum())
        k_best = max(1, -(-n_unlabeled // self.rounds))
        self.model_ = make_pipeline(Normalizer(), SelfTrainingClassifier(
            LogisticRegression(max_iter=1000), criterion="k_best", k_best=k_best, max_iter=self.rounds)).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)


class CVLabelSpreading(ClassifierMixin, BaseEstimator):
    """sklearn's LabelSpreading(knn) with ``n_neighbors`` chosen by stratified CV on the labeled rows only: each
    fold's held-out labels are hidden (-1) in a fit on every row and scored; the best k is refitted on all labels.
    Two folds and three ks keep it to 7 LabelSpreading fits (each about 9 s on Fashion-MNIST's 12k rows)."""

    def __init__(self, ks=(5, 10, 20), folds: int = 2, random_state: int = 0):
        self.ks = ks
        self.folds = folds
        self.random_state = random_state

    def fit(self, X, y):
        X, y = Normalizer().fit_transform(X), np.asarray(y)
        labeled = np.flatnonzero(y != UNLABELED)
        n_splits = int(min(self.folds, np.unique(y[labeled], return_counts=True)[1].min()))
        scores = np.zeros(len(self.ks))
        if n_splits >= 2:
            cv = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
            for _, held in cv.split(labeled, y[labeled]):
                y_fold = y.copy()
                y_fold[labeled[held]] = UNLABELED
                for i, k in enumerate(self.ks):
                    model = LabelSpreading(kernel="knn", n_neighbors=int(k)).fit(X, y_fold)
                    scores[i] += np.mean(model.transduction_[labeled[held]] == y[labeled[held]])
        self.k_ = int(self.ks[int(np.argmax(scores))])
        self.cv_scores_ = scores / max(n_splits, 1)
        self.model_ = LabelSpreading(kernel="knn", n_neighbors=self.k_).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(Normalizer().fit_transform(X))


# Plain scikit-learn on L2-normalised features: default settings ("(default)": what a user would try first) and
# fairly configured ones (self-training that adds rows, LabelSpreading with k chosen by CV on the labeled rows).
ANCHORS: dict[str, Callable[[], object]] = {
    "sklearn LogisticRegression": _anchor(LogisticRegression(max_iter=1000)),
    "sklearn KNeighbors": _anchor(KNeighborsClassifier(n_neighbors=1)),
    "sklearn LabelSpreading (default)": _anchor(LabelSpreading(kernel="knn", n_neighbors=7)),
    "sklearn LabelSpreading (k by CV)": CVLabelSpreading,
    "sklearn SelfTraining (default)": _anchor(SelfTrainingClassifier(LogisticRegression(max_iter=1000))),
    "sklearn SelfTraining (k_best)": KBestSelfTraining,
}
SUPERVISED_ANCHORS = {"sklearn LogisticRegression", "sklearn KNeighbors"}


@dataclass
class Task:
    """One (store, backbone) pair with the rows every method sees."""

    dataset: str
    backbone: str
    data: pipeline.Data
    context: dict
    fingerprint: str
    views: pipeline.Data | None = None  # the same rows as [features | views…], when the store has views


class PeakRSS:
    """Peak resident memory above the starting point while the block runs, sampled from /proc every 2 ms.

    Unlike tracemalloc it sees every allocation (BLAS, faiss, torch) and does not slow Python down, so the
    timings measured inside stay honest. Reads 0 where /proc is missing.
    """

    def __enter__(self) -> "PeakRSS":
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._base = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss() - self._base)

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, self._rss() - self._base)

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return 0.0


def _measure(make: Callable[[], object], X: np.ndarray, y: np.ndarray, X_test: np.ndarray,
             n_classes: int) -> dict:
    estimator = make()
    with PeakRSS() as memory:  # fit and predict as `classify evaluate` runs them (one BLAS thread)
        predicted, fit_seconds, predict_seconds = evaluation.fit_predict(estimator, X, y, X_test)
    report = getattr(estimator, "fit_report_", None)
    proba = evaluation.class_proba(estimator, X_test, n_classes) if n_classes >= 5 else None  # acc5, as evaluate
    return {"predicted": predicted, "proba": proba, "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
            "peak_mb": memory.peak_mb, "fit_report": report, **evaluation.described(estimator)}


def oracle_record(task: Task, progress: Callable[[str], None] = log.info) -> dict:
    """The probe (:data:`PROBE`) fitted on every labeled train row, scored on the test split: what the few-shot
    methods would reach with every train label revealed, the top of the gap-closed scale."""
    data = task.data
    test = np.flatnonzero((data.splits == "test") & (data.y >= 0))
    train = (data.splits == "train") & (data.y >= 0)
    y = np.where(train, data.y, UNLABELED)
    n_classes = int(data.y.max()) + 1  # class indices 0 .. C-1 of the labeled rows
    result = _measure(lambda: pipeline.build(PROBE, {}, task.context), data.X[train], y[train], data.X[test],
                      n_classes)
    scores = evaluation.scores(data.y[test], result.pop("predicted"), result.pop("proba"), n_classes)
    progress(f"{task.dataset} {task.backbone} oracle ({PROBE} on all {int(train.sum())} train labels): "
             f"acc {scores['accuracy']:.4f}")
    return {"dataset": task.dataset, "backbone": task.backbone, "method": f"oracle: {PROBE} on every train label",
            "oracle": True, "anchor": False, "n_labels": int(train.sum()), **scores, **result}


def run_task(task: Task, methods: Sequence[str], shots: Sequence[int], seeds: int,
             anchors: Sequence[str] = tuple(ANCHORS), progress: Callable[[str], None] = log.info,
             oracle: bool = False) -> list[dict]:
    """Every method and anchor, for each shot count and seed, on one store/backbone; one record per fit. With
    ``oracle``, first one record of the probe on every train label (:func:`oracle_record`)."""
    parsed = {m: pipeline.parse_method(m) for m in methods}
    for name, _ in parsed.values():
        get(name)  # an unknown method name fails here, not silently per fit
    data = task.data
    test = np.flatnonzero((data.splits == "test") & (data.y >= 0))
    if not test.size:
        raise UserError(f"{task.dataset} has no labeled test split (test/<class>/); benchmarks score on it")
    records = [oracle_record(task, progress)] if oracle else []

    def skipped(name: str, n_shots: int, reason: str) -> None:
        progress(f"{task.dataset} {name} {n_shots}-shot: skipped ({reason})")
        records.append({"dataset": task.dataset, "backbone": task.backbone, "method": name, "shots": n_shots,
                        "skipped": reason})

    for n_shots in shots:
        for seed in range(seeds):
            y, labeled = evaluation.few_shot_labels(data, n_shots, seed)  # as `classify evaluate --shots` draws
            candidates = [(m, lambda m=m: pipeline.build(*parsed[m], task.context)) for m in methods]
            candidates += [(a, ANCHORS[a]) for a in anchors]
            for name, make in candidates:
                X = data.X
                if name in parsed and pipeline.uses_views(parsed[name][0]):
                    if task.views is None:
                        skipped(name, n_shots, "the store has no augmented views; benchmark with --views 2")
                        continue
                    X = task.views.X
                rows = labeled if name in SUPERVISED_ANCHORS else slice(None)
                try:
                    result = _measure(make, X[rows], y[rows], X[test], int(data.y.max()) + 1)
                except NotApplicable as err:  # e.g. zeroshot without text embeddings: recorded; bugs are raised
                    skipped(name, n_shots, str(err))
                    continue
                scores = evaluation.scores(data.y[test], result.pop("predicted"), result.pop("proba"),
                                           int(data.y.max()) + 1)
                records.append({"dataset": task.dataset, "backbone": task.backbone, "method": name,
                                "anchor": name in ANCHORS, "shots": n_shots, "seed": seed, **scores, **result})
                progress(f"{task.dataset} {task.backbone} {name} {n_shots}-shot seed {seed}: "
                         f"acc {scores['accuracy']:.4f} fit {result['fit_seconds']:.2f}s")
    return records


def _ran(records: list[dict]) -> list[dict]:
    return [r for r in records if "skipped" not in r and not r.get("oracle")]


def _oracles(records: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["dataset"], r["backbone"]): r for r in records if r.get("oracle")}


def gap_closed(records: list[dict]) -> dict[tuple, float]:
    """Share of the probe-to-oracle gap each (dataset, backbone, method, shots) closes, from mean accuracies over
    seeds: ``(method - probe) / (oracle - probe)`` (0: no better than the probe, 1: as good as every train label,
    negative: below the probe). Needs the probe's runs and an oracle record; left out where the gap is under half a
    point (the ratio would be noise)."""
    summary, oracles = summarise(records), _oracles(records)
    out = {}
    for key, stat in summary.items():
        probe, oracle = summary.get((key[0], key[1], PROBE, key[3])), oracles.get(key[:2])
        if probe is None or oracle is None or oracle["accuracy"] - probe["accuracy_mean"] < 0.005:
            continue
        out[key] = (stat["accuracy_mean"] - probe["accuracy_mean"]) / (oracle["accuracy"] - probe["accuracy_mean"])
    return out


def choices(records: list[dict]) -> dict[tuple, dict[str, int]]:
    """How often each (dataset, backbone, method, shots) chose each candidate, for methods that choose (``auto``:
    the ``chosen`` of their :func:`classify.evaluation.described` entry)."""
    out: dict[tuple, dict[str, int]] = {}
    for r in _ran(records):
        entry = r.get(pipeline.parse_method(r["method"])[0]) if not r.get("anchor") else None
        if isinstance(entry, dict) and "chosen" in entry:
            counts = out.setdefault((r["dataset"], r["backbone"], r["method"], r["shots"]), {})
            counts[entry["chosen"]] = counts.get(entry["chosen"], 0) + 1
    return out


def summarise(records: list[dict]) -> dict:
    """Mean ± std over seeds for each (dataset, backbone, method, shots)."""
    groups: dict[tuple, list[dict]] = {}
    for r in _ran(records):
        groups.setdefault((r["dataset"], r["backbone"], r["method"], r["shots"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs])
        out[key] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                    "macro_f1_mean": float(np.mean([r["macro_f1"] for r in rs])),
                    "fit_seconds_mean": float(np.mean([r["fit_seconds"] for r in rs])),
                    "predict_seconds_mean": float(np.mean([r["predict_seconds"] for r in rs])),
                    "peak_mb_max": float(np.max([r["peak_mb"] for r in rs])), "seeds": len(rs)}
    return out


def markdown_tables(records: list[dict]) -> str:
    """One table per dataset × backbone: rows = methods (anchors last), columns = shots, cells = acc mean ± std; with an
    oracle record also the share of the probe-to-oracle gap closed at each shot count (:func:`gap_closed`) and the
    oracle's row, and for methods that choose (auto) what they chose."""
    summary, gaps, oracles, chosen = summarise(records), gap_closed(records), _oracles(records), choices(records)
    lines = []
    for dataset, backbone in dict.fromkeys((r["dataset"], r["backbone"]) for r in _ran(records)):
        rs = [r for r in _ran(records) if r["dataset"] == dataset and r["backbone"] == backbone]
        shots = sorted({r["shots"] for r in rs})
        methods = list(dict.fromkeys(r["method"] for r in rs if not r["anchor"]))
        methods += list(dict.fromkeys(r["method"] for r in rs if r["anchor"]))
        seeds = max(s["seeds"] for k, s in summary.items() if k[:2] == (dataset, backbone))
        oracle = oracles.get((dataset, backbone))
        columns = [f"{s}-shot" + (f" | gap closed {s}" if oracle else "") for s in shots]
        lines += [f"#### {dataset} — {backbone} (test accuracy %, mean ± std over {seeds} seeds; fit seconds and "
                  f"peak memory at {shots[-1]} shots)", ""]
        if oracle:
            lines += [f"Gap closed: (method − {PROBE}) / (oracle − {PROBE}) from the mean accuracies; the oracle is "
                      f"{PROBE} on all {oracle['n_labels']} train labels.", ""]
        lines += ["| method | " + " | ".join(columns) + " | fit s | peak MB (added RSS) |",
                  "|---|" + "---|" * (len(shots) * (2 if oracle else 1) + 2)]
        for m in methods:
            cells = []
            for s in shots:
                stat = summary.get((dataset, backbone, m, s))
                cells.append(f"{100 * stat['accuracy_mean']:.1f} ± {100 * stat['accuracy_std']:.1f}"
                             if stat else "—")
                if oracle:
                    gap = gaps.get((dataset, backbone, m, s))
                    cells.append("—" if gap is None else f"{100 * gap:.0f} %")
            last = summary.get((dataset, backbone, m, shots[-1]))
            tail = f" | {last['fit_seconds_mean']:.2f} | {last['peak_mb_max']:.0f} |" if last else " | — | — |"
            lines.append(f"| {m} | " + " | ".join(cells) + tail)
        if oracle:
            cell = f"{100 * oracle['accuracy']:.1f} | 100 %"
            lines.append(f"| {oracle['method']} | " + " | ".join([cell] * len(shots))
                         + f" | {oracle['fit_seconds']:.2f} | {oracle['peak_mb']:.0f} |")
        picks = [f"{m} {s}-shot: " + ", ".join(f"{c} ×{n}" for c, n in counts.items())
                 for (d, b, m, s), counts in chosen.items() if (d, b) == (dataset, backbone)]
        if picks:
            lines += ["", "Chosen: " + "; ".join(picks)]
        not_run = {r["method"]: r["skipped"] for r in records if "skipped" in r and r["dataset"] == dataset
                   and r["backbone"] == backbone and r["method"] not in methods}
        if not_run:
            lines += ["", "Not applicable here: " + "; ".join(f"{m} ({why.split(';')[0]})" for m, why in
                                                              not_run.items())]
        lines.append("")
    return "\n".join(lines)


def load_task(dataset: str, store_path: Path, backbone: str) -> Task:
    """The rows of one backbone of a store, or of several joined by ``+`` (features concatenated, no store context:
    methods needing CLIP text or the ImageNet head are then not applicable)."""
    specs = backbone.split("+")
    with FeatureStore(store_path) as fs:
        data = pipeline.load_data(fs, specs)
        context = pipeline.concat_context(fs, specs)  # the rule `classify evaluate` builds with (build_for_store)
        views = pipeline.load_data(fs, specs, views=True) if context.get("view_kinds") else None
        return Task(dataset, backbone, data, context, fs.fingerprint, views)


def write_results(records: list[dict], tasks: Sequence[Task], out: Path, command: str, name: str = "latest") -> dict:
    """``<name>.md`` tables, ``<name>.json`` raw numbers + provenance, ``<name>.png`` plot, under ``out``."""
    import sklearn
    import torch

    out.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    tables = markdown_tables(records)
    header = f"Produced by `{command}` on {when} ({platform.machine()}, {_cores()} cores).\n\n"
    write_text(out / f"{name}.md", header + tables)
    provenance = {"command": command, "date": when, "machine": {"platform": platform.platform(), "cores": _cores(),
                                                                "python": sys.version.split()[0]},
                  "versions": {"numpy": np.__version__, "sklearn": sklearn.__version__, "torch": torch.__version__},
                  "stores": {f"{t.dataset}|{t.backbone}": t.fingerprint for t in tasks}}
    gaps = gap_closed(records)
    summary = {"|".join(map(str, k)): {**v, **({"gap_closed": gaps[k]} if k in gaps else {})}
               for k, v in summarise(records).items()}
    write_text(out / f"{name}.json", json.dumps({"provenance": provenance, "summary": summary, "records": records},
                                                indent=1, default=pipeline.jsonable))
    from benchmarks.plots import plot  # matplotlib, only when results are written

    plot(records, out / f"{name}.png")
    return {"tables": tables, "dir": out}


def write_dev_results(out: Path, name: str, text: str, records: list) -> None:
    """``<name>.md`` (the markdown ``text``) and ``<name>.json`` (the raw ``records``) in ``out`` (created), each
    replaced whole or not at all: the result files of the development-draw scripts (levers, sweep)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.md", text)
    write_text(out / f"{name}.json", json.dumps(records, indent=1))


def _cores() -> int:
    return os.cpu_count() or 1

