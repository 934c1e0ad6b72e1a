"""Fine-tuning pays or not: cached-feature methods on the frozen backbone vs. on the fine-tuned one.

One run: write scikit-learn's digits in the split-folder layout (``shots`` labeled images per class, a labeled test
split, the rest unlabeled), embed it, fit a linear probe (accuracy *before*), fine-tune the backbone end to end from
that probe (``classify.finetune``, FixMatch on the unlabeled pool), re-embed the same store with the fine-tuned spec
(a new backbone group) and fit the same methods again (accuracy *after*), plus the fine-tuned head itself.

``python -m benchmarks finetune --quick`` is the CPU check: a few minutes on 2 cores. ``benchmarks/gpu_finetune.sh``
runs the full setting on a GPU. ``--dataset clipart`` (:mod:`benchmarks.finetune_draws`) fine-tunes once per label
draw of ``python -m benchmarks run`` instead.
"""
from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from classify import pipeline
from embed import sources
from embed.backbones import parse_spec
from embed.engines.local import embed, resolve_device
from store.clitools import as_list
from store import FeatureStore
from store.outputs import write_text

log = logging.getLogger(__name__)

#: default results folder: in the working directory, never inside the installed package
RESULTS = Path("benchmarks-results")

#: CPU quick setting: 112 px, short training, one unlabeled image per labeled image in a batch.
QUICK = {"epochs": 5, "lr": 3e-4, "patience": 3}  # batch size and mu: the device defaults (STEP_DEFAULTS)
#: Full setting (GPU): longer training, FixMatch's usual unlabeled ratio.
FULL = {"epochs": 30, "batch_size": 64, "mu": 7, "lr": 3e-4, "patience": 8}


def _test_accuracy(store_path: Path, spec: str, method: str, params: dict | None = None) -> tuple[float, float]:
    """Fit ``method`` on the store's rows of ``spec`` (test rows unlabeled) and score it on the labeled test split."""
    with FeatureStore(store_path) as fs:
        t0 = time.perf_counter()
        fitted = pipeline.fit(fs, [spec], method, params or {})
        seconds = time.perf_counter() - t0
        data = pipeline.load_data(fs, [spec])
    test = (data.splits == "test") & (data.y >= 0)
    return float(np.mean(fitted.estimator.predict(data.X[test]) == data.y[test])), seconds


def _model_accuracy(store_path: Path, model_path: str) -> float:
    fitted = pipeline.load_model(model_path)
    with FeatureStore(store_path) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones)
    test = (data.splits == "test") & (data.y >= 0)
    return float(np.mean(fitted.estimator.predict(data.X[test]) == data.y[test]))


def finetune(quick: bool = False, backbone: str = "timm:tf_efficientnet_lite0", image_size: int | None = 112,
             shots: int = 15, methods: str = "linear,labelprop", device: str = "auto", unfreeze: str = "all",
             init: bool = True, cache: str | None = None, out: str | None = None, name: str = "finetune",
             fresh: bool = True, **options) -> dict:
    """Accuracy of cached-feature methods before / after fine-tuning the backbone, and of the fine-tuned head.

    Parameters
    ----------
    quick : bool
        The CPU setting (:data:`QUICK`); else :data:`FULL`. ``options`` override either (e.g. ``epochs=10``).
    backbone : str
        The backbone to fine-tune (its pretrained weights must be available offline).
    image_size : int
        Input side (112 suits 8-px digits).
    shots : int
        Labeled training images per class; the other training images form the unlabeled pool.
    methods : str
        Comma-separated classify methods fitted before and after; the first is also the fine-tuning init.
    device : str
        auto, cpu or cuda.
    unfreeze : str
        As for ``classify finetune``.
    init : bool
        Start the head from the first method's model fitted on every labeled image (``--init``; WiSE alpha is then
        0.5); else from a probe that ``finetune`` fits on its training split (LP-FT; alpha chosen by validation).
    cache, out, name : str
        Data / store / checkpoint folder (default ``~/.cache/fewshot-suite/benchmarks``), results folder (default
        ``./benchmarks-results``), basename of ``<name>.md`` / ``<name>.json``.
    fresh : bool
        Start fine-tuning from scratch (delete an earlier checkpoint and its state) instead of reusing it.

    Returns
    -------
    dict
        ``{"rows": [...], "timings": {...}, "finetune": FinetuneResult dict, "table": markdown}``.
    """
    from benchmarks.run import PeakRSS
    from classify.finetune import finetune as run_finetune
    from embed.cli import demo_folder

    settings = {**(QUICK if quick else FULL), **options}
    method_list = as_list(methods)
    cache_dir = Path(cache).expanduser() if cache else demo_folder().parent / "benchmarks"
    folder = sources.write_demo(cache_dir / f"digits-{shots}shot", shots=shots)
    store_path = cache_dir / f"digits-{shots}shot-{image_size or 'default'}.h5"
    images = sources.from_folder(folder)
    torch_device = str(resolve_device(device))
    timings = {}

    t0 = time.perf_counter()
    embed(images, store_path, [backbone], device=torch_device, image_size=image_size, progress=False)
    timings["embed_s"] = time.perf_counter() - t0
    spec = str(parse_spec(backbone))  # the store's name of it
    before = {m: _test_accuracy(store_path, spec, m) for m in method_list}
    init_path = cache_dir / f"init-{method_list[0]}.skops"
    with FeatureStore(store_path) as fs:
        pipeline.fit(fs, [spec], method_list[0]).save(init_path)

    ckpt = cache_dir / f"finetuned-{Path(folder).name}-{image_size or 'default'}-{'init' if init else 'lpft'}.pth"
    if fresh:
        for stale in (ckpt, ckpt.with_name(ckpt.name + ".state"), ckpt.with_suffix(".head.skops")):
            stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with PeakRSS() as memory:  # what a laptop must hold: the step's activations live in RAM on a CPU
        result = run_finetune(folder, backbone, ckpt, init=init_path if init else None, store=store_path,
                              unfreeze=unfreeze, device=torch_device, image_size=image_size, **settings)
    timings["finetune_s"] = time.perf_counter() - t0
    timings["finetune_peak_mb"] = memory.peak_mb
    t0 = time.perf_counter()
    embed(images, store_path, [result.spec], device=torch_device, image_size=image_size, progress=False)
    timings["reembed_s"] = time.perf_counter() - t0
    after = {m: _test_accuracy(store_path, result.spec, m) for m in method_list}
    head_accuracy = _model_accuracy(store_path, result.head_model)

    rows = [{"method": m, "frozen": before[m][0], "finetuned": after[m][0]} for m in method_list]
    rows.append({"method": "fine-tuned head (classify predict)", "frozen": before[method_list[0]][0],
                 "finetuned": head_accuracy})
    n_test = int(sum(s == "test" for s in images.splits))
    lines = [f"#### digits, {shots} shots/class — {backbone} @ {image_size or 'default'} px, "
             f"{'quick' if quick else 'full'}, head from {'--init ' + method_list[0] if init else 'LP-FT'} "
             f"({result.epochs_run} epochs, best {result.best_epoch}, WiSE alpha {result.alpha:.2f}: "
             f"{result.alpha_chosen_by}; device {torch_device})", "",
             f"| method (test accuracy %, n={n_test}) | frozen backbone | fine-tuned backbone |", "|---|---|---|"]
    lines += [f"| {r['method']} | {100 * r['frozen']:.1f} | {100 * r['finetuned']:.1f} |" for r in rows]
    lines += ["", f"embed {timings['embed_s']:.0f} s, fine-tune {timings['finetune_s']:.0f} s (peak added RSS "
                  f"{timings['finetune_peak_mb']:.0f} MB), re-embed {timings['reembed_s']:.0f} s", ""]
    table = "\n".join(lines)
    report = {"rows": rows, "timings": timings, "settings": settings, "finetune": result.to_dict(), "table": table,
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
              "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    results = Path(out) if out else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    write_text(results / f"{name}.md", table)
    write_text(results / f"{name}.json", json.dumps(report, indent=1, default=str))
    log.info("wrote %s/%s.md and %s.json", results, name, name)
    return report
