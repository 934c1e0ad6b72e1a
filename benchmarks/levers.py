"""Levers on the features, measured on development draws (never on test rows): does a change of the rows every method
sees pay, for the probe, the semi-supervised methods and ``auto``?

Each lever is a variant of one dataset's feature matrix, built from the stores ``python -m benchmarks run`` keeps in
its cache (rows aligned by image id):

- ``plain``: the backbone's pooled features (the tables' rows).
- ``probs``: the plain features joined to the backbone's ImageNet probabilities (the store's ``probs``), each block
  L2-normalised, the probabilities as their square roots (so that distances between them are Hellinger distances).
- ``views``: test-time averaging over cached views: the mean of the L2-normalised plain features and weak views
  (flip + crop) of every row, labeled, unlabeled and test rows alike (a store embedded with ``--views K``).
- ``multiscale``: the features of the same backbone at its own resolution and at 112 px, each block L2-normalised
  and joined.
- ``layers``: the plain features joined to the global-average-pooled last stages of the same backbone before its
  head (:mod:`benchmarks.layer_features`, computed from the dataset's images once and cached beside the store), each
  block L2-normalised; ``layers2``: the same with the last 2 stages only; ``layersonly``: the pooled stages without
  the plain features.

Each (dataset, shots, seed) draw takes labels from the train rows as ``python -m benchmarks run`` does, with
development seeds (default 100-104; the tables use 0, 1, 2); every other row, test rows included, is passed
unlabeled, and every method is scored on the hidden train rows (the pool).

Example::

    python -m benchmarks.levers --datasets clipart,tuxpaint --levers plain,probs,views,multiscale,layers \\
        --cache benchmarks/cache --out levers
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.layer_features import layer_features
from benchmarks.run import RESULTS, load_task, write_dev_results
from classify import pipeline
from classify.evaluation import draw_labels
from classify.methods.features import UNLABELED, l2_normalize
from store import FeatureStore
from store.validation import UserError

log = logging.getLogger("benchmarks.levers")

LEVERS = ("plain", "probs", "views", "multiscale", "layers", "layers2", "layersonly")
BACKBONE = "timm:tf_efficientnet_lite0"


def _store(cache: Path, dataset: str, size: int | None, views: int = 0) -> Path:
    path = cache / f"{dataset}-{size or 'native'}px{f'-views{views}' if views else ''}.h5"
    if not path.is_file():
        raise UserError(f"{path} is missing: embed it first (python -m benchmarks run --datasets {dataset}"
                        f"{f' --image-size {size}' if size else ''}{f' --views {views}' if views else ''})")
    return path


def _aligned(ids: np.ndarray, other_ids: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` (whose ids are ``other_ids``) in the order of ``ids``."""
    position = {i: k for k, i in enumerate(other_ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        raise UserError(f"{len(missing)} images (e.g. {missing[0]}) have no row in the other store; re-embed both")
    return X[[position[i] for i in ids]]


def variant(lever: str, task, cache: Path, dataset: str, size: int | None, backbone: str = BACKBONE) -> np.ndarray:
    """The feature matrix of ``lever`` for the rows of ``task`` (a :func:`benchmarks.run.load_task` of the plain
    store), shape (n, D') in ``task.data``'s row order."""
    data = task.data
    if lever == "plain":
        return data.X
    if lever == "probs":
        with FeatureStore(_store(cache, dataset, size)) as fs:
            if not fs.has_probs(backbone):
                raise UserError(f"{backbone} in {fs.path} kept no ImageNet probabilities")
            probs, _ = fs.probs(backbone, data.index)  # (n, 1000)
        return np.hstack([l2_normalize(data.X), l2_normalize(np.sqrt(np.clip(probs, 0, None)))])
    if lever == "views":
        with FeatureStore(_store(cache, dataset, size, views=2)) as fs:
            other = pipeline.load_data(fs, [backbone])
            kinds = fs.provenance(backbone).get("view_kinds") or []
            views = fs.views(backbone, other.index)  # (n, V, D)
        weak = [v for v, kind in enumerate(kinds) if kind == "weak"]
        blocks = [l2_normalize(other.X)] + [l2_normalize(views[:, v]) for v in weak]
        return _aligned(data.ids, other.ids, np.mean(blocks, axis=0).astype(np.float32))
    if lever == "multiscale":
        with FeatureStore(_store(cache, dataset, 112)) as fs:
            small = pipeline.load_data(fs, [backbone])
        return np.hstack([l2_normalize(data.X), l2_normalize(_aligned(data.ids, small.ids, small.X))])
    if lever in ("layers", "layers2", "layersonly"):
        stages = [l2_normalize(b) for b in layer_features(_store(cache, dataset, size), backbone, size)]
        stages = stages[-2:] if lever == "layers2" else stages
        return np.hstack(stages if lever == "layersonly" else [l2_normalize(data.X)] + stages)
    raise UserError(f"unknown lever {lever!r}: use {', '.join(LEVERS)}")


def score_draws(task, X: np.ndarray, methods: list[str], shots: int, seeds: list[int]) -> dict[str, list[float]]:
    """Pool accuracy (hidden train rows) of each method on each development draw, fitted on the rows ``X``."""
    data = task.data
    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    out: dict[str, list[float]] = {m: [] for m in methods}
    for seed in seeds:
        labeled = train[draw_labels(data.y[train], shots, seed)]
        pool = np.setdiff1d(train, labeled)
        y = np.full(len(data.y), UNLABELED)
        y[labeled] = data.y[labeled]
        for method in methods:
            estimator = pipeline.build(*pipeline.parse_method(method), task.context).fit(X, y)
            out[method].append(float(np.mean(estimator.predict(X[pool]) == data.y[pool])))
    return out


def table(records: list[dict]) -> str:
    """Markdown: pool accuracy % (mean ± std over draws) of each method on each lever, and its paired change against
    the same method on the plain features (mean ± std over the same draws)."""
    columns = list(dict.fromkeys((r["dataset"], r["shots"]) for r in records))
    rows = list(dict.fromkeys((r["method"], r["lever"]) for r in records))
    by = {(r["dataset"], r["shots"], r["method"], r["lever"]): np.array(r["pool"]) for r in records}
    lines = ["| method | lever | " + " | ".join(f"{d} {s}-shot" for d, s in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for method, lever in rows:
        cells = []
        for d, s in columns:
            acc, plain = by.get((d, s, method, lever)), by.get((d, s, method, "plain"))
            if acc is None:
                cells.append("")
                continue
            gain = None if lever == "plain" or plain is None else 100 * (acc - plain)  # paired, per draw
            change = "" if gain is None else f" ({gain.mean():+.1f} ± {gain.std():.1f})"
            cells.append(f"{100 * acc.mean():.1f} ± {100 * acc.std():.1f}{change}")
        lines.append(f"| {method} | {lever} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="clipart,tuxpaint", help="dataset names of stores in --cache")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--methods", default="linear,selftrain,labelprop,auto")
    parser.add_argument("--cache", default="benchmarks/cache", help="folder of the benchmark stores")
    parser.add_argument("--shots", default="5,10")
    parser.add_argument("--seeds", default="100,101,102,103,104")
    parser.add_argument("--out", default="levers", help="basename of the result files")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.datasets import NATIVE_SIZE

    cache, methods = Path(args.cache), pipeline.as_list(args.methods)
    seeds, records = [int(s) for s in args.seeds.split(",")], []
    for dataset in pipeline.as_list(args.datasets):
        size = NATIVE_SIZE.get(dataset)
        task = load_task(dataset, _store(cache, dataset, size), BACKBONE)
        for lever in pipeline.as_list(args.levers):
            X = variant(lever, task, cache, dataset, size)
            for shots in (int(s) for s in args.shots.split(",")):
                pool = score_draws(task, X, methods, shots, seeds)
                records += [{"dataset": dataset, "lever": lever, "shots": shots, "method": m, "seeds": seeds,
                             "pool": accs} for m, accs in pool.items()]
                log.info("%s %s %d-shot: %s", dataset, lever, shots,
                         {m: round(float(np.mean(a)), 3) for m, a in pool.items()})
    command = "python -m benchmarks.levers " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"Produced by `{command}`.\n\nLevers on the features ({BACKBONE}, development seeds {args.seeds}): "
            "accuracy % on the hidden train rows (never test rows), mean ± std over the draws; in brackets the change "
            f"against the same method on the plain features on the same draws (mean ± std)\n\n{table(records)}\n")
    write_dev_results(Path(args.results), args.out, text, records)
    print(text)


if __name__ == "__main__":
    main()
