"""Simulated labeling rounds: do ``suggest``'s picks reach an accuracy with fewer labels than random picks?

Protocol, per dataset and seed: start from ``start`` labels per class drawn from the train rows (as
``python -m benchmarks run`` draws them); the other train rows are the pool, their labels hidden (the oracle reveals
a label when a strategy picks the row); test rows join every fit unlabeled and score it. Each round refits
``method`` on every row and adds ``per_round`` labels chosen by each strategy: ``diverse`` (``suggest``'s default),
``margin`` (uncertainty alone), ``typiclust`` (coverage alone) and ``random``. The target of the issue:
``diverse`` reaches random's final accuracy with at most half of random's added labels.

``python -m benchmarks.active [--datasets digits,fashion-mnist,clipart] [--seeds 3] [--start 3] [--rounds 6]``
writes ``active.md``, ``active.json`` and ``active.png`` under ``./benchmarks-results`` (or ``--out``).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from classify.labeling import STRATEGIES
from store.clitools import as_list
from store import FeatureStore
from store.outputs import check_output, write_text
from store.validation import NONE, Int, UserError, check_flags

if TYPE_CHECKING:  # scikit-learn loads only when a benchmark runs: `python -m benchmarks CMD --help` stays fast
    from classify import pipeline

log = logging.getLogger(__name__)

BACKBONE = "timm:tf_efficientnet_lite0"
DATASETS = ("digits", "fashion-mnist", "clipart")


def default_datasets() -> list[str]:
    """The built-in datasets :mod:`benchmarks.datasets` knows (the realistic colour set when it has one)."""
    from benchmarks.datasets import ADAPTERS

    return [name for name in DATASETS if name in ADAPTERS]


def load(dataset: str, cache: Path, backbone: str = BACKBONE):
    """Features, true labels and store context of a dataset (embedded once into ``cache``, reused after).

    Returns
    -------
    (pipeline.Data, dict) or None when the dataset's package is not installed (a message says which).
    """
    from benchmarks import datasets as ds
    from classify import pipeline
    from embed import sources
    from embed.engines.local import embed

    try:
        folder = ds.prepare(dataset, cache)
    except ds.DatasetUnavailable as err:
        print(f"skipping {dataset}: {err}")
        return None
    size = ds.NATIVE_SIZE.get(dataset)
    store_path = cache / f"{Path(dataset).name}-{size or 'native'}px.h5"  # the name `benchmarks run` gives it
    embed(sources.from_folder(folder), store_path, [backbone], image_size=size, progress=False)  # reused when done
    with FeatureStore(store_path) as fs:
        return pipeline.load_data(fs, [backbone]), pipeline.store_context(fs, backbone)


def cache_folder(cache: str | None) -> Path:
    """The dataset / store cache: ``cache``, or the one ``python -m benchmarks run`` uses."""
    from embed.cli import demo_folder

    return Path(cache).expanduser() if cache else demo_folder().parent / "benchmarks"


def simulate(data: pipeline.Data, context: dict, strategies: Sequence[str], seed: int, start: int, rounds: int,
             per_round: int, method: str = "labelprop", suggest_method: str = "labelprop") -> list[dict]:
    """Accuracy after each round of each strategy, from the same starting labels.

    Parameters
    ----------
    data : pipeline.Data
        Every row: train rows (labels known to the oracle), test rows (labeled, scored).
    context : dict
        Store context for the methods.
    strategies : sequence of str
        Entries of :data:`classify.labeling.suggest.STRATEGIES`.
    seed : int
        Seeds the starting labels and the strategies.
    start, rounds, per_round : int
        Starting labels per class, labeling rounds, labels added per round.
    method, suggest_method : str
        The method refitted each round (scored on test), and the one whose probabilities ``suggest`` uses.

    Returns
    -------
    list of dict
        One record per (strategy, round): strategy, seed, round, added, accuracy, macro_f1.
    """
    from classify import evaluation, pipeline
    from classify.evaluation import draw_labels
    from classify.labeling.suggest import suggest_arrays
    from classify.methods.features import UNLABELED

    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))  # (t,)
    test = np.flatnonzero((data.splits == "test") & (data.y >= 0))
    start_rows = train[draw_labels(data.y[train], start, seed)]
    pool = np.zeros(len(data.y), dtype=bool)
    pool[train] = True  # hidden train labels: what the oracle can reveal
    records = []
    for strategy in strategies:
        y = np.full(len(data.y), UNLABELED)
        y[start_rows] = data.y[start_rows]
        for r in range(rounds + 1):
            model = pipeline.build(method, {}, context).fit(data.X, y)
            scores = evaluation.scores(data.y[test], model.predict(data.X[test]))
            added = int((y != UNLABELED).sum() - start_rows.size)
            records.append({"strategy": strategy, "seed": seed, "round": r, "added": added, **scores})
            log.info("%s seed %d round %d (+%d labels): accuracy %.4f", strategy, seed, r, added, scores["accuracy"])
            if r == rounds:
                break
            picked = suggest_arrays(data.X, y, per_round, suggest_method, None, seed * 1000 + r, pool, strategy,
                                    context=context).index
            y[picked] = data.y[picked]  # the oracle reveals the hidden labels
    return records


def summarise(records: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(dataset, strategy, added) -> accuracy mean and std over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["strategy"], r["added"]), []).append(r["accuracy"])
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": len(v)} for k, v in groups.items()}


def target(summary: dict, dataset: str, strategy: str = "diverse", baseline: str = "random") -> dict:
    """Whether ``strategy`` reaches ``baseline``'s final mean accuracy with at most half of its added labels."""
    base = sorted((k[2], v["mean"]) for k, v in summary.items() if k[:2] == (dataset, baseline))
    ours = sorted((k[2], v["mean"]) for k, v in summary.items() if k[:2] == (dataset, strategy))
    if not base or not ours:
        return {}
    final_added, final_acc = base[-1]
    reached_at = next((added for added, acc in ours if acc >= final_acc), None)
    return {"baseline_final_accuracy": final_acc, "baseline_added": final_added, "reached_at": reached_at,
            "reached": reached_at is not None and reached_at <= final_added / 2}


def markdown(records: list[dict], setup: dict) -> str:
    """One table per dataset: strategies × labels added, accuracy % mean ± std over seeds, and the target line."""
    summary = summarise(records)
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rs = [r for r in records if r["dataset"] == dataset]
        added = sorted({r["added"] for r in rs})
        strategies = list(dict.fromkeys(r["strategy"] for r in rs))
        seeds = len({r["seed"] for r in rs})
        s = setup[dataset]
        lines += [f"#### {dataset} — {s['backbone']}: {s['start']} labels per class + {s['per_round']} per round, "
                  f"refit {s['method']} (test accuracy %, mean ± std over {seeds} seeds)", "",
                  "| strategy | " + " | ".join(f"+{a}" for a in added) + " |", "|---|" + "---|" * len(added)]
        for strategy in strategies:
            cells = [summary.get((dataset, strategy, a)) for a in added]
            shown = [f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" if c else "—" for c in cells]
            lines.append(f"| {strategy} | " + " | ".join(shown) + " |")
        t = target(summary, dataset)
        if t:
            where = f"at +{t['reached_at']}" if t["reached_at"] is not None else "not within the rounds run"
            lines += ["", f"Target (diverse reaches random's final {100 * t['baseline_final_accuracy']:.1f} % with at "
                      f"most +{t['baseline_added'] // 2} labels): {'reached' if t['reached'] else 'NOT reached'} "
                      f"({where})."]
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    """Accuracy vs labels added, one line per strategy (mean ± std), one panel per dataset."""
    from benchmarks.plots import strategy_curves

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    strategies = {d: list(dict.fromkeys(r["strategy"] for r in records if r["dataset"] == d)) for d in datasets}
    strategy_curves(summarise(records), strategies, path, "labels added")


def active(datasets: str | None = None, seeds: int = 3, start: int = 3, rounds: int = 6, per_round: int | None = None,
           method: str = "labelprop", strategies: str = ",".join(STRATEGIES), out: str | None = None,
           cache: str | None = None, name: str = "active") -> None:
    """Simulated labeling rounds: suggest (diverse) vs uncertainty alone vs coverage alone vs random.

    Parameters
    ----------
    datasets : str
        Comma-separated built-in datasets (default: digits, fashion-mnist when installed, and the realistic colour set
        when benchmarks/datasets.py has it).
    seeds : int
        Starting draws (and strategy seeds) per dataset.
    start : int
        Starting labels per class.
    rounds : int
        Labeling rounds.
    per_round : int
        Labels added per round (default: one per class).
    method : str
        The method refitted each round and whose probabilities suggest uses (labelprop or selftrain).
    strategies : str
        Comma-separated: diverse, margin, typiclust, random.
    out : str
        Results folder (default ./benchmarks-results).
    cache : str
        Dataset and store cache (default: that of `python -m benchmarks run`).
    name : str
        Basename of the result files.
    """
    from benchmarks.run import RESULTS

    check_flags(dict(seeds=seeds, start=start, rounds=rounds, per_round=per_round),
                {"seeds": [Int(1)], "start": [Int(1)], "rounds": [Int(1)], "per_round": [NONE, Int(1)]})
    check_output(out or RESULTS, "--out", folder=True, files=[f"{name}.md", f"{name}.json", f"{name}.png"])
    names = as_list(datasets) or default_datasets()
    chosen = as_list(strategies)
    unknown = sorted(set(chosen) - set(STRATEGIES))
    if unknown:
        raise UserError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    cache_dir = cache_folder(cache)
    records, setup = [], {}
    for dataset in names:
        loaded = load(dataset, cache_dir)
        if loaded is None:
            continue
        data, context = loaded
        n_classes = len(np.unique(data.y[(data.splits == "train") & (data.y >= 0)]))
        step = int(per_round or n_classes)
        setup[dataset] = {"backbone": BACKBONE, "start": start, "per_round": step, "rounds": rounds, "method": method}
        for seed in range(seeds):
            for record in simulate(data, context, chosen, seed, start, rounds, step, method, method):
                records.append({"dataset": dataset, **record})
    if not records:
        raise UserError("no dataset available; see the skipped lines above")
    summary = summarise(records)
    targets = {d: target(summary, d) for d in setup}
    out_dir = Path(out) if out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.active " + " ".join(sys.argv[1:])
    tables = markdown(records, setup)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    write_text(out_dir / f"{name}.md", f"Produced by `{command.strip()}` on {when}.\n\n{tables}")
    write_text(out_dir / f"{name}.json", json.dumps({"command": command, "date": when, "setup": setup,
                                                     "targets": targets, "records": records}, indent=1))
    plot(records, out_dir / f"{name}.png")
    print(tables)
    print(f"wrote {out_dir}/{name}.md, {name}.json, {name}.png")
