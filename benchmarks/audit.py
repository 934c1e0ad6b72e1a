"""Planted label errors: does ``audit`` find them, and does dropping what it flags win the accuracy back?

Protocol, per dataset and seed: draw ``shots`` labels per class from the train rows (as ``python -m benchmarks run``
does), flip ``noise`` of them (10 %) to another class drawn at random (seeded), hide every other label. ``audit``
ranks the labeled rows by cleanlab's label quality of the out-of-fold ``method`` probabilities and flags those the
evidence supports (none when the model agrees with under half of the labels); precision@k is the share of planted
flips among its k lowest-quality rows (k = the number of flips); the flags' precision is pooled over the seeds.
``refit`` is then fitted three times, test rows unlabeled: on the clean labels, on the flipped labels, and on the
flipped labels with the flagged rows made unlabeled; "recovered" is the share of the accuracy the flips cost that the
last fit wins back. Targets of the issue: precision@k >= 0.8, recovered >= 0.5.

``python -m benchmarks.audit [--datasets digits,fashion-mnist,clipart] [--seeds 3] [--shots 10]`` writes
``audit.md`` and ``audit.json`` under ``./benchmarks-results`` (or ``--out``).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.active import BACKBONE, cache_folder, default_datasets, load
from store.clitools import as_list
from store.outputs import check_output, write_text
from store.validation import Int, UserError, check_flags

if TYPE_CHECKING:  # scikit-learn loads only when a benchmark runs: `python -m benchmarks CMD --help` stays fast
    from classify import pipeline

log = logging.getLogger(__name__)


def flip_labels(y: np.ndarray, rows: np.ndarray, noise: float, n_classes: int, seed: int) -> np.ndarray:
    """The rows (a subset of ``rows``, ``round(noise * len(rows))`` of them, at least 1) whose label ``y`` is
    changed, in place, to another class drawn uniformly (seeded)."""
    rng = np.random.default_rng([seed, 7919])
    k = max(1, round(noise * rows.size))
    flipped = np.sort(rng.choice(rows, size=k, replace=False))
    y[flipped] = (y[flipped] + rng.integers(1, n_classes, size=k)) % n_classes  # never the true class
    return flipped


def trial(data: pipeline.Data, context: dict, seed: int, shots: int, noise: float, method: str, refit: str,
          folds: int) -> dict:
    """One planted-noise trial: precision@k and recall of the flags, and the three refit accuracies."""
    from classify import evaluation, pipeline
    from classify.evaluation import draw_labels
    from classify.labeling.audit import audit_arrays
    from classify.methods.features import UNLABELED

    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    test = np.flatnonzero((data.splits == "test") & (data.y >= 0))
    labeled = train[draw_labels(data.y[train], shots, seed)]
    n_classes = int(data.y[train].max()) + 1
    clean = np.full(len(data.y), UNLABELED)
    clean[labeled] = data.y[labeled]
    noisy = clean.copy()
    flipped = flip_labels(noisy, labeled, noise, n_classes, seed)
    result = audit_arrays(data.X, noisy, method, None, folds, seed, context)
    k = flipped.size
    precision = float(np.isin(result.index[:k], flipped).mean())
    flagged = result.index[result.is_label_issue]
    cleaned = noisy.copy()
    cleaned[flagged] = UNLABELED

    def accuracy(y):
        model = pipeline.build(refit, {}, context).fit(data.X, y)
        return evaluation.scores(data.y[test], model.predict(data.X[test]))["accuracy"]

    out = {"seed": seed, "labeled": int(labeled.size), "flips": int(k), "precision_at_k": precision,
           "agreement": result.agreement, "judged": bool(result.judged),
           "flag_hits": int(np.isin(flagged, flipped).sum()), "flagged": int(flagged.size),
           "flag_precision": float(np.isin(flagged, flipped).mean()) if flagged.size else None,
           "flag_recall": float(np.isin(flipped, flagged).mean()), "acc_clean": accuracy(clean),
           "acc_noisy": accuracy(noisy), "acc_cleaned": accuracy(cleaned)}
    log.info("seed %d: precision@%d %.2f, flagged %d (recall %.2f), accuracy clean %.4f noisy %.4f cleaned %.4f",
             seed, k, precision, flagged.size, out["flag_recall"], out["acc_clean"], out["acc_noisy"],
             out["acc_cleaned"])
    return out


def summarise(trials: list[dict]) -> dict:
    """Mean and std of every number over seeds, the flags' precision over all seeds together (hits / flags; None
    without a flag), and the share of the flips' cost won back (from the means)."""
    keys = ("precision_at_k", "agreement", "flag_recall", "acc_clean", "acc_noisy", "acc_cleaned", "flagged")
    out = {k: {"mean": float(np.mean([t[k] for t in trials])), "std": float(np.std([t[k] for t in trials]))}
           for k in keys}
    flags = sum(t["flagged"] for t in trials)
    out["flag_precision"] = sum(t.get("flag_hits", 0) for t in trials) / flags if flags else None
    out["judged"] = sum(bool(t.get("judged", True)) for t in trials)
    cost = out["acc_clean"]["mean"] - out["acc_noisy"]["mean"]
    out["recovered"] = (out["acc_cleaned"]["mean"] - out["acc_noisy"]["mean"]) / cost if cost > 0 else None
    out["flips"] = trials[0]["flips"]
    out["labeled"] = trials[0]["labeled"]
    return out


def markdown(results: dict, setup: dict) -> str:
    """One table row per dataset: precision@k, flags, the three accuracies, the share recovered, and the targets."""
    lines = [f"#### audit: {setup['shots']} labels per class, {100 * setup['noise']:.0f} % flipped, out-of-fold "
             f"{setup['method']} ({setup['folds']} folds), refit {setup['refit']} (mean ± std over {setup['seeds']} "
             "seeds; accuracy %)", "",
             "| dataset | flips / labels | out-of-fold agreement | precision@k | flagged (precision, recall) | clean | "
             "flipped | flagged rows unlabeled | recovered | targets |", "|---|---|---|---|---|---|---|---|---|---|"]

    def pm(stat, scale=100.0, digits=1):
        return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"

    for dataset, s in results.items():
        recovered = s["recovered"]
        ok_p = s["precision_at_k"]["mean"] >= 0.8
        ok_r = recovered is not None and recovered >= 0.5
        shown = f"{100 * recovered:.0f} %" if recovered is not None else "— (the flips cost nothing)"
        precision = "—" if s["flag_precision"] is None else f"{s['flag_precision']:.2f}"
        weak = "" if s["judged"] == setup["seeds"] else f"; {setup['seeds'] - s['judged']} seed(s) too weak to judge"
        lines.append(f"| {dataset} | {s['flips']} / {s['labeled']} | {pm(s['agreement'], 1, 2)} | "
                     f"{pm(s['precision_at_k'], 1, 2)} | "
                     f"{pm(s['flagged'], 1, 1)} ({precision}, {pm(s['flag_recall'], 1, 2)}{weak}) | "
                     f"{pm(s['acc_clean'])} | {pm(s['acc_noisy'])} | {pm(s['acc_cleaned'])} | {shown} | "
                     f"precision {'reached' if ok_p else 'NOT reached'}, recovery "
                     f"{'reached' if ok_r else 'NOT reached'} |")
    return "\n".join(lines) + "\n"


def audit(datasets: str | None = None, seeds: int = 3, shots: int = 10, noise: float = 0.1, method: str = "labelprop",
          refit: str = "labelprop", folds: int = 5, out: str | None = None, cache: str | None = None,
          name: str = "audit") -> None:
    """Planted label flips: audit's precision among its top k, and the accuracy won back by dropping its flags.

    Parameters
    ----------
    datasets : str
        Comma-separated built-in datasets (default: digits, fashion-mnist when installed, and the realistic colour set
        when benchmarks/datasets.py has it).
    seeds : int
        Label draws (and flips) per dataset.
    shots : int
        Labels per class.
    noise : float
        Share of the labels flipped to a wrong class.
    method : str
        The method giving audit's out-of-fold probabilities.
    refit : str
        The method refitted on clean, flipped and cleaned labels (scored on test).
    folds : int
        audit's cross-validation folds.
    out : str
        Results folder (default ./benchmarks-results).
    cache : str
        Dataset and store cache (default: that of `python -m benchmarks run`).
    name : str
        Basename of the result files.
    """
    from benchmarks.run import RESULTS

    check_flags(dict(seeds=seeds, shots=shots, folds=folds),
                {"seeds": [Int(1)], "shots": [Int(2)], "folds": [Int(2)]})
    check_output(out or RESULTS, "--out", folder=True, files=[f"{name}.md", f"{name}.json"])
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 < noise < 1:
        raise UserError(f"--noise must be a fraction in (0, 1), got {noise!r}")
    names = as_list(datasets) or default_datasets()
    cache_dir = cache_folder(cache)
    trials, results = {}, {}
    for dataset in names:
        loaded = load(dataset, cache_dir)
        if loaded is None:
            continue
        data, context = loaded
        trials[dataset] = [trial(data, context, seed, shots, noise, method, refit, folds) for seed in range(seeds)]
        results[dataset] = summarise(trials[dataset])
    if not results:
        raise UserError("no dataset available; see the skipped lines above")
    setup = {"backbone": BACKBONE, "shots": shots, "noise": noise, "method": method, "refit": refit, "folds": folds,
             "seeds": seeds}
    table = markdown(results, setup)
    out_dir = Path(out) if out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.audit " + " ".join(sys.argv[1:])
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    write_text(out_dir / f"{name}.md", f"Produced by `{command.strip()}` on {when} ({BACKBONE}).\n\n{table}")
    write_text(out_dir / f"{name}.json", json.dumps({"command": command, "date": when, "setup": setup,
                                                     "results": results, "trials": trials}, indent=1))
    print(table)
    print(f"wrote {out_dir}/{name}.md, {name}.json")
