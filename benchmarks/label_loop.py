"""The labeling app's loop, measured: a simulated user answers the app's batches through its own HTTP interface.

Protocol, per dataset and seed: a copy of the dataset's store keeps 1 label per class of its train rows (drawn as
``python -m benchmarks run`` draws them); every other train row is made unlabeled with
:func:`store.labels.apply_labels` (its true label hidden from the app, known to the simulated user). The app
(:func:`classify.labeling.app.routes.create_app` over a :class:`~classify.labeling.app.session.LabelSession`, served by
Starlette's TestClient) shows a batch (``GET /api/state``); the user answers every image with its true label
(``POST /api/answer``) and waits for the app's background pick of the next batch (``session.wait()``). After every
batch, the method is fitted on the labels so far and scored on the test rows. The baseline answers random picks of
the same batch size from the same pool, scored the same way. The target of issue 21: the loop reaches random's
accuracy at 100 answers with at most 50 answers.

``python -m benchmarks label-loop [--datasets digits,fashion-mnist,clipart] [--seeds 3] [--batch 10]`` writes
``label-loop.md``, ``label-loop.json`` and ``label-loop.png`` under ``./benchmarks-results`` (or ``--out``).
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.active import BACKBONE, cache_folder, default_datasets
from store import FeatureStore
from store.clitools import as_list
from store.outputs import check_output, write_text
from store.validation import Int, check_flags

log = logging.getLogger(__name__)

#: seconds one background pick may take before the run gives up
WAIT_S = 1800.0


def prepare(store: Path, copy: Path, backbone: str, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """Copy ``store`` to ``copy`` and hide every train label but 1 per class there.

    Returns
    -------
    truth : dict
        Id -> true class name of every hidden train row (what the simulated user answers).
    start : dict
        Id -> class name of the rows that keep their label.
    """
    from classify.evaluation import draw_labels
    from store.labels import apply_labels

    from classify import pipeline

    shutil.copyfile(store, copy)
    with FeatureStore(copy) as fs:
        data = pipeline.load_data(fs, [backbone])
        classes = list(fs.classes)
    ids, y, splits = data.ids, np.asarray(data.y), np.asarray(data.splits)
    train = np.flatnonzero((splits == "train") & (y >= 0))
    keep = train[draw_labels(y[train], 1, seed)]
    hidden = np.setdiff1d(train, keep)
    truth = {str(ids[i]): classes[int(y[i])] for i in hidden}
    apply_labels(copy, {image_id: None for image_id in truth}, source="label-loop benchmark")
    return truth, {str(ids[i]): classes[int(y[i])] for i in keep}


class Scorer:
    """Test accuracy of ``method`` fitted on a set of labels (every other row joins the fit unlabeled)."""

    def __init__(self, store: Path, backbone: str, method: str):
        from classify import pipeline

        with FeatureStore(store) as fs:
            data = pipeline.load_data(fs, [backbone])
            self.context = pipeline.store_context(fs, backbone)
            self.classes = list(fs.classes)
        self.X, self.method = data.X, method
        self.position = {str(i): k for k, i in enumerate(data.ids.tolist())}
        self.test = np.flatnonzero((data.splits == "test") & (data.y >= 0))
        self.y_test = np.asarray(data.y)[self.test]

    def __call__(self, labels: dict[str, str]) -> float:
        """Accuracy on the test rows of the method fitted on ``labels`` (id -> class name)."""
        from classify import pipeline
        from classify.evaluation import scores
        from classify.methods.features import UNLABELED

        y = np.full(len(self.X), UNLABELED)
        for image_id, name in labels.items():
            y[self.position[image_id]] = self.classes.index(name)
        model = pipeline.build(self.method, {}, self.context).fit(self.X, y)
        return float(scores(self.y_test, model.predict(self.X[self.test]))["accuracy"])


def play_app(store: Path, truth: dict[str, str], start: dict[str, str], scorer: Scorer, backbone: str, method: str,
             batch: int, answers: int, seed: int) -> list[dict]:
    """Answer the app's batches through HTTP until ``answers`` answers are given; the accuracy after each batch."""
    from starlette.testclient import TestClient

    from classify.labeling.app.routes import create_app
    from classify.labeling.app.session import LabelSession

    session = LabelSession(store, backbone, method=method, batch=batch, seed=seed)
    labels, given, records = dict(start), 0, []
    with TestClient(create_app(session)) as client:
        session.wait(WAIT_S)
        records.append({"strategy": "app", "answers": 0, "accuracy": scorer(labels)})
        while given < answers:
            state = client.get("/api/state").json()
            if state.get("error"):
                raise RuntimeError(f"the app's background job failed: {state['error']}")
            open_items = [it for it in state["batch"]["items"] if not (it["answer"] or it["skipped"])]
            if not open_items:
                break  # the pool is exhausted
            for item in open_items:
                label = truth.get(item["id"])
                if label is None:  # an image whose truth is unknown (the dataset's own unlabeled pool)
                    client.post("/api/skip", json={"id": item["id"]}).raise_for_status()
                    continue
                client.post("/api/answer", json={"id": item["id"], "label": label}).raise_for_status()
                labels[item["id"]] = label
                given += 1
            session.wait(WAIT_S)
            records.append({"strategy": "app", "answers": given, "accuracy": scorer(labels)})
            log.info("app seed %d: %d answers, accuracy %.4f", seed, given, records[-1]["accuracy"])
    return records


def play_random(truth: dict[str, str], start: dict[str, str], scorer: Scorer, batch: int, answers: int,
                seed: int) -> list[dict]:
    """The baseline: random picks of ``batch`` images from the same pool, answered truly, scored after each batch."""
    order = np.random.default_rng([seed, 7]).permutation(sorted(truth))
    labels, records = dict(start), [{"strategy": "random", "answers": 0, "accuracy": scorer(start)}]
    for given in range(batch, answers + batch, batch):
        labels.update({str(i): truth[str(i)] for i in order[given - batch:min(given, len(order))]})
        records.append({"strategy": "random", "answers": min(given, len(order)), "accuracy": scorer(labels)})
        if given >= len(order):
            break
    return records


def run_dataset(store: Path, backbone: str, method: str, seeds: int, batch: int, answers: int) -> list[dict]:
    """Records of the app and of random picks, per seed, on one store (its copies live in a temporary folder)."""
    records = []
    scorer = Scorer(store, backbone, method)
    with tempfile.TemporaryDirectory(prefix="label-loop-") as tmp:
        for seed in range(seeds):
            copy = Path(tmp) / f"seed{seed}" / store.name
            copy.parent.mkdir()
            truth, start = prepare(store, copy, backbone, seed)
            began = time.perf_counter()
            for r in play_app(copy, truth, start, scorer, backbone, method, batch, answers, seed):
                records.append({**r, "seed": seed})
            app_s = time.perf_counter() - began
            for r in play_random(truth, start, scorer, batch, answers, seed):
                records.append({**r, "seed": seed})
            log.info("seed %d: the app's loop took %.1f s", seed, app_s)
    return records


def summarise(records: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(dataset, strategy, answers) -> accuracy mean and std over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["strategy"], r["answers"]), []).append(r["accuracy"])
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": len(v)} for k, v in groups.items()}


def target(summary: dict, dataset: str, at: int = 100) -> dict:
    """The answers the app's loop needs to reach random's mean accuracy at ``at`` answers (or its last point)."""
    base = sorted((k[2], v["mean"]) for k, v in summary.items() if k[:2] == (dataset, "random") and k[2] <= at)
    ours = sorted((k[2], v["mean"]) for k, v in summary.items() if k[:2] == (dataset, "app"))
    if not base or not ours:
        return {}
    base_answers, base_acc = base[-1]
    reached_at = next((n for n, acc in ours if acc >= base_acc), None)
    return {"random_answers": base_answers, "random_accuracy": base_acc, "app_answers_needed": reached_at,
            "reached": reached_at is not None and reached_at <= base_answers // 2}


def markdown(records: list[dict], setup: dict) -> str:
    """One table per dataset: app vs random × answers, test accuracy % mean ± std over seeds, and the target line."""
    summary = summarise(records)
    lines = []
    for dataset, s in setup.items():
        rs = [r for r in records if r["dataset"] == dataset]
        counts = sorted({r["answers"] for r in rs})
        seeds = len({r["seed"] for r in rs})
        lines += [f"#### {dataset} — {s['backbone']}, {s['method']}: 1 label per class, then batches of {s['batch']} "
                  f"(test accuracy %, mean ± std over {seeds} seeds; {s['loop_seconds']:.0f} s per seed with the "
                  "baseline)", "",
                  "| picks | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---|" * len(counts)]
        for strategy in ("app", "random"):
            cells = [summary.get((dataset, strategy, n)) for n in counts]
            shown = [f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" if c else "—" for c in cells]
            lines.append(f"| {strategy} | " + " | ".join(shown) + " |")
        t = target(summary, dataset)
        if t:
            where = (f"{t['app_answers_needed']} answers" if t["app_answers_needed"] is not None
                     else "not within the answers run")
            lines += ["", f"Target (the app's loop reaches random's {100 * t['random_accuracy']:.1f} % at "
                      f"{t['random_answers']} answers with at most {t['random_answers'] // 2}): "
                      f"{'reached' if t['reached'] else 'NOT reached'} ({where})."]
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    """Test accuracy vs answers, app and random (mean ± std over seeds), one panel per dataset."""
    from benchmarks.plots import strategy_curves

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    strategy_curves(summarise(records), {d: ["app", "random"] for d in datasets}, path, "answers")


def label_loop(datasets: str | None = None, seeds: int = 3, batch: int = 10, answers: int = 100,
               method: str = "linear", stores: str | None = None, out: str | None = None, cache: str | None = None,
               name: str = "label-loop") -> None:
    """The labeling app's loop vs random picks: a simulated user answers through the app's HTTP interface.

    Parameters
    ----------
    datasets : str
        Comma-separated built-in datasets (default: digits, fashion-mnist when installed, clipart when installed).
    seeds : int
        Starting draws (1 label per class) and pick seeds per dataset.
    batch : int
        Images per batch (the app's ``--batch``), also the random baseline's step.
    answers : int
        Answers given per seed (the target compares at 100).
    method : str
        The method the app refits (and that is scored): linear by default, since ``auto`` cross-validates several
        methods after every batch, too slow for a benchmark on 2 shared cores.
    stores : str
        Comma-separated feature stores with a labeled train and test split to run instead of built-in datasets, each
        ``path`` or ``name=path`` (the name shown in the tables; default the file's stem).
    out : str
        Results folder (default ./benchmarks-results).
    cache : str
        Dataset and store cache (default: that of `python -m benchmarks run`).
    name : str
        Basename of the result files.
    """
    from benchmarks.active import load
    from benchmarks.run import RESULTS

    check_flags(dict(seeds=seeds, batch=batch, answers=answers),
                {"seeds": [Int(1)], "batch": [Int(1)], "answers": [Int(1)]})
    check_output(out or RESULTS, "--out", folder=True, files=[f"{name}.md", f"{name}.json", f"{name}.png"])
    if stores:
        named = [p.split("=", 1) if "=" in p else (Path(p).stem, p) for p in as_list(stores)]
        paths = {label: Path(p) for label, p in named}
    else:
        cache_dir = cache_folder(cache)
        paths = {}
        for dataset in as_list(datasets) or default_datasets():
            if load(dataset, cache_dir) is not None:  # embeds once into the cache; the store is reused
                from benchmarks.datasets import NATIVE_SIZE

                paths[dataset] = cache_dir / f"{dataset}-{NATIVE_SIZE.get(dataset) or 'native'}px.h5"
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"store {path} not found; give an existing feature store")
    records, setup = [], {}
    out_dir = Path(out) if out else RESULTS
    for dataset, path in paths.items():
        with FeatureStore(path) as fs:
            backbone = BACKBONE if BACKBONE in fs.backbones else next(iter(fs.backbones))
        began = time.perf_counter()
        rows = run_dataset(path, backbone, method, seeds, batch, answers)
        records += [{"dataset": dataset, **r} for r in rows]
        setup[dataset] = {"backbone": backbone, "method": method, "batch": batch, "answers": answers,
                          "loop_seconds": (time.perf_counter() - began) / seeds}
        tables = write_results(records, setup, out_dir, name)  # after each dataset: a long run keeps what it measured
    print(tables)
    print(f"wrote {out_dir}/{name}.md, {name}.json, {name}.png")


def write_results(records: list[dict], setup: dict, out_dir: Path, name: str) -> str:
    """``<name>.md`` (tables and target lines), ``<name>.json`` (every record) and ``<name>.png`` (curves) in
    ``out_dir``; returns the tables."""
    summary = summarise(records)
    targets = {d: target(summary, d) for d in setup}
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks label-loop " + " ".join(sys.argv[2:])
    tables = markdown(records, setup)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    write_text(out_dir / f"{name}.md", f"Produced by `{command.strip()}` on {when} (2 shared CPU cores).\n\n{tables}")
    write_text(out_dir / f"{name}.json", json.dumps({"command": command, "date": when, "setup": setup,
                                                     "targets": targets, "records": records}, indent=1))
    plot(records, out_dir / f"{name}.png")
    return tables
