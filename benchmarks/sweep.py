"""Parameter sweeps that choose method defaults without looking at test labels.

Each (shots, seed) draw takes labels from the train rows exactly as ``python -m benchmarks run`` does, but with
development seeds (default 100, 101, 102; the tables use 0, 1, 2). Every other row, test rows included, is passed
unlabeled (transductive, as in the tables). Two scores per configuration, neither reads a test label:

- ``cv``: nested cross-validation on the drawn labels: stratified folds of the labeled rows; each fold's labels are
  hidden (-1) in a fit on every row, and its accuracy on those rows is the score. Defaults are chosen on this.
- ``pool``: accuracy on the train rows that were not drawn (the hidden unlabeled pool, whose labels the benchmark
  folder knows), from a fit with every drawn label: a second development view.

Examples::

    python -m benchmarks.sweep --dataset clipart --grid ptmap
    python -m benchmarks.sweep --dataset digits --grid moe --out sweep-digits-moe
    python -m benchmarks.sweep --dataset fashion-mnist --shots 15 --methods "ptmap(lam=5),ptmap(lam=20)"
"""
from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from benchmarks.run import RESULTS, load_task, write_dev_results
from classify import pipeline
from store.clitools import as_list
from classify.evaluation import draw_labels
from classify.methods.features import UNLABELED

log = logging.getLogger("benchmarks.sweep")

#: Named grids: method strings as ``python -m benchmarks run --methods`` takes them.
GRIDS = {
    "ptmap": [f"ptmap(lam={lam},prior={prior})" for lam, prior in
              itertools.product((10, 50, 150), ("uniform", "estimated"))],
    "transform": ["ptmap", "ptmap(feature_power=1.0)", "ptmap(n_components=128,whiten=True)",
                  "ptmap(n_components=256)"],
    # moe: the pure hierarchy on labeled rows, then pseudo-labels from the flat model (share of the pool) and the
    # fallback rule (gate threshold, flat weight); linear and selftrain (the flat model) as references
    "moe": ["linear", "selftrain", "moe(unlabeled=ignore,gate_threshold=0,flat_weight=0)",
            "moe(gate_threshold=0,flat_weight=0)"]
           + [f"moe(pseudo_share={share},gate_threshold={tau},flat_weight={w})" for share, tau, w in
              itertools.product((0.5, 1.0), (0.5, 0.7, 0.9), (0.5,))] + ["moe(pseudo_share=0.5,gate_threshold=0)"],
}


def score_draw(task, method: str, shots: int, seed: int, folds: int = 3) -> dict:
    """Nested-CV accuracy on the drawn labels and accuracy on the hidden train pool, for one draw."""
    data = task.data
    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    labeled = train[draw_labels(data.y[train], shots, seed)]
    pool = np.setdiff1d(train, labeled)
    name, params = pipeline.parse_method(method)
    y = np.full(len(data.y), UNLABELED)
    y[labeled] = data.y[labeled]
    model = pipeline.build(name, params, task.context).fit(data.X, y)
    pool_acc = float(np.mean(model.predict(data.X[pool]) == data.y[pool])) if pool.size else float("nan")
    cv = StratifiedKFold(min(folds, shots), shuffle=True, random_state=seed)
    hits = 0
    for _, held in cv.split(labeled, data.y[labeled]):
        y_fold = y.copy()
        y_fold[labeled[held]] = UNLABELED
        model = pipeline.build(name, params, task.context).fit(data.X, y_fold)
        hits += int(np.sum(model.predict(data.X[labeled[held]]) == data.y[labeled[held]]))
    return {"cv": hits / len(labeled), "pool": pool_acc}


def sweep(task, methods: list[str], shots: list[int], seeds: list[int], folds: int = 3) -> list[dict]:
    """One record per (method, shots, seed) with its ``cv`` and ``pool`` accuracies and the seconds it took."""
    records = []
    for n_shots, method, seed in itertools.product(shots, methods, seeds):
        t0 = time.perf_counter()
        scores = score_draw(task, method, n_shots, seed, folds)
        records.append({"dataset": task.dataset, "backbone": task.backbone, "method": method, "shots": n_shots,
                        "seed": seed, **scores, "seconds": time.perf_counter() - t0})
        log.info("%s %s %d-shot seed %d: cv %.4f pool %.4f", task.dataset, method, n_shots, seed, scores["cv"],
                 scores["pool"])
    return records


def table(records: list[dict]) -> str:
    """Markdown: one row per method, cv / pool accuracy (%) per shot count, the cv-best of each column in bold."""
    shots = sorted({r["shots"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    mean = {(m, s, k): 100 * np.mean([r[k] for r in records if r["method"] == m and r["shots"] == s])
            for m in methods for s in shots for k in ("cv", "pool")}
    best = {s: max(methods, key=lambda m: mean[(m, s, "cv")]) for s in shots}
    lines = ["| method | " + " | ".join(f"{s}-shot cv | {s}-shot pool" for s in shots) + " |",
             "|---|" + "---|---|" * len(shots)]
    for m in methods:
        cells = []
        for s in shots:
            cv, pool = f"{mean[(m, s, 'cv')]:.1f}", f"{mean[(m, s, 'pool')]:.1f}"
            cells += [f"**{cv}**" if best[s] == m else cv, pool]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="clipart", help="dataset name of a store in --cache (as benchmarks run)")
    parser.add_argument("--backbone", default="timm:tf_efficientnet_lite0", help="spec, or specs joined by +")
    parser.add_argument("--cache", default="benchmarks/cache", help="folder of the benchmark stores")
    parser.add_argument("--store", default=None, help="store path (default: the benchmark store of --dataset)")
    parser.add_argument("--grid", default=None, choices=sorted(GRIDS), help="a named grid of method strings")
    parser.add_argument("--methods", default=None, help="comma-separated method strings (added to --grid)")
    parser.add_argument("--shots", default="5,10")
    parser.add_argument("--seeds", default="100,101,102")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", default=None, help="basename of the result files (default sweep-<dataset>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.datasets import NATIVE_SIZE

    size = NATIVE_SIZE.get(args.dataset)
    store = Path(args.store) if args.store else Path(args.cache) / f"{args.dataset}-{size or 'native'}px.h5"
    methods = (GRIDS[args.grid] if args.grid else []) + as_list(args.methods)
    if not methods:
        parser.error("give --grid or --methods")
    task = load_task(args.dataset, store, args.backbone)
    records = sweep(task, methods, [int(s) for s in args.shots.split(",")],
                    [int(s) for s in args.seeds.split(",")], args.folds)
    text = (f"Sweep on {args.dataset} — {args.backbone}, dev seeds {args.seeds} (cv: nested CV on the drawn labels, "
            f"the selection score; pool: the hidden train rows; never test rows)\n\n{table(records)}\n")
    write_dev_results(RESULTS, args.out or f"sweep-{args.dataset}", text, records)
    print(text)


if __name__ == "__main__":
    main()
