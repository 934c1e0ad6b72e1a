"""Choose ``auto``'s rule (its ``z``) on development draws, never on test rows.

Each (dataset, shots, seed) draw takes labels from the train rows as ``python -m benchmarks run`` does, with
development seeds (default 100-109; the tables use 0, 1, 2). Every other row, test rows included, is passed unlabeled.
For each draw, ``auto`` cross-validates its candidates on the drawn labels once (the rule's inputs: each candidate's
CV accuracy and paired gain over the probe with its standard error), and every candidate is fitted on all drawn labels
and scored on the hidden train rows (the ``pool``, whose labels the benchmark folder knows). The choice for any ``z``
follows from the CV numbers alone, so every ``z`` of the grid, and every per-row score of the paired gain
(``accuracy``, ``brier``, ``loglik``: ``auto``'s ``score``), is scored on the same fits: the table gives the pool
accuracy of ``auto`` with each score at each ``z`` beside each candidate's and how often it switched away from the
probe. The records are saved after every draw; ``--records`` tabulates saved runs together without fitting.

Example::

    python -m benchmarks.auto_rule --datasets digits,clipart --cache benchmarks/cache
    python -m benchmarks.auto_rule --records a.json,b.json --out auto-rule-merged
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.run import RESULTS, load_task
from classify import pipeline
from classify.methods.base import resolve_estimator
from classify.evaluation import draw_labels
from classify.methods.features import UNLABELED
from classify.methods.auto import SCORES, fit_candidate
from store.outputs import write_text

log = logging.getLogger("benchmarks.auto_rule")

Z_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, float("inf"))


def score_draw(task, shots: int, seed: int, params: dict | None = None) -> dict:
    """``auto``'s CV numbers and every candidate's accuracy on the hidden train rows, for one draw."""
    data = task.data
    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    labeled = train[draw_labels(data.y[train], shots, seed)]
    pool = np.setdiff1d(train, labeled)
    y = np.full(len(data.y), UNLABELED)
    y[labeled] = data.y[labeled]
    auto = pipeline.build("auto", dict(params or {}), task.context).fit(data.X, y)
    names = list(auto.cv_results_)
    pool_acc = {}
    for name, spec in zip(names, auto.methods):
        model = auto.estimator_ if name == auto.chosen_ else fit_candidate(resolve_estimator(spec), data.X, y, y >= 0)
        pool_acc[name] = float(np.mean(model.predict(data.X[pool]) == data.y[pool]))
    return {"dataset": task.dataset, "shots": shots, "seed": seed, "cv": auto.cv_results_, "pool": pool_acc,
            "cv_seconds": auto.cv_seconds_}


def choose(cv: dict, z: float, score: str = "accuracy") -> str:
    """The candidate ``auto`` chooses from its CV numbers at ``z`` with the paired gain in ``score`` (the rule of
    :class:`classify.methods.auto.AutoSelect`)."""
    names = list(cv)
    gain = {n: cv[n]["scores"][score]["gain"] if "scores" in cv[n] else cv[n]["gain"] for n in names}
    se = {n: cv[n]["scores"][score]["se"] if "scores" in cv[n] else cv[n]["se"] for n in names}
    passing = [n for n in names[1:] if gain[n] > z * se[n]]
    return max(passing, key=lambda n: (gain[n], -names.index(n))) if passing else names[0]


def table(records: list[dict], grid=Z_GRID, scores=("accuracy",)) -> str:
    """Markdown: pool accuracy (%) of each candidate and of ``auto`` with each score at each ``z``, per dataset and
    shots; the share of draws on which ``auto`` left the probe in brackets."""
    columns = list(dict.fromkeys((r["dataset"], r["shots"]) for r in records))
    names = list(records[0]["pool"])
    lines = ["| rule | " + " | ".join(f"{d} {s}-shot" for d, s in columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [100 * np.mean([r["pool"][name] for r in records if (r["dataset"], r["shots"]) == c])
                 for c in columns]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    for score in scores:
        for z in grid:
            cells = []
            for c in columns:
                rs = [r for r in records if (r["dataset"], r["shots"]) == c]
                chosen = [choose(r["cv"], z, score) for r in rs]
                acc = 100 * np.mean([r["pool"][n] for r, n in zip(rs, chosen)])
                cells.append(f"{acc:.1f} ({np.mean([n != names[0] for n in chosen]):.0%})")
            lines.append(f"| auto {score} z={z:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,clipart", help="dataset names of stores in --cache")
    parser.add_argument("--backbone", default="timm:tf_efficientnet_lite0")
    parser.add_argument("--cache", default="benchmarks/cache", help="folder of the benchmark stores")
    parser.add_argument("--image-size", default="auto", help="store resolution: auto (as benchmarks run) or pixels")
    parser.add_argument("--shots", default="5,10")
    parser.add_argument("--seeds", default=",".join(str(s) for s in range(100, 110)))
    parser.add_argument("--params", default="{}", help="auto's parameters as JSON, e.g. '{\"folds\": 5}'")
    parser.add_argument("--scores", default=",".join(SCORES),
                        help="the per-row scores of the paired gain to tabulate, each over the z grid")
    parser.add_argument("--records", default="",
                        help="comma-separated JSON files of earlier runs to tabulate together instead of fitting")
    parser.add_argument("--out", default="auto-rule", help="basename of the result files")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    if args.records:
        records = [r for path in pipeline.as_list(args.records) for r in json.loads(Path(path).read_text())]
        write_text(out / f"{args.out}.json", json.dumps(records, indent=1))
    else:
        records = fit_records(args, out)
    seeds = ",".join(str(s) for s in sorted({r["seed"] for r in records}))
    command = "python -m benchmarks.auto_rule " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"Produced by `{command}`.\n\nauto's rule on development draws ({args.backbone}, seeds {seeds}, "
            f"auto params {args.params}): "
            "accuracy % on the hidden train rows (never test rows); in brackets the share of draws on which auto left "
            f"the probe\n\n{table(records, scores=pipeline.as_list(args.scores))}\n")
    write_text(out / f"{args.out}.md", text)
    print(text)


def fit_records(args, out: Path) -> list[dict]:
    """One record per (dataset, shots, seed) of ``args`` (:func:`score_draw`); the JSON is rewritten after each."""
    from benchmarks.datasets import NATIVE_SIZE

    records = []
    for dataset in pipeline.as_list(args.datasets):
        size = NATIVE_SIZE.get(dataset) if args.image_size == "auto" else int(args.image_size)
        store = Path(args.cache) / f"{dataset}-{size or 'native'}px.h5"
        task = load_task(dataset if args.image_size == "auto" else f"{dataset}-{size}px", store, args.backbone)
        for shots in (int(s) for s in args.shots.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                records.append(score_draw(task, shots, seed, json.loads(args.params)))
                write_text(out / f"{args.out}.json", json.dumps(records, indent=1))  # kept when a long run is stopped
                log.info("%s %d-shot seed %d: pool %s", dataset, shots, seed,
                         {k: round(v, 3) for k, v in records[-1]["pool"].items()})
    return records


if __name__ == "__main__":
    main()
