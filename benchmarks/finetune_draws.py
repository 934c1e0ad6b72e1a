"""Fine-tuning on a benchmark dataset, against the label draws of ``python -m benchmarks run``.

For each ``(shots, seed)``: the labels ``benchmarks run`` draws (:func:`classify.evaluation.few_shot_labels` on the
dataset's plain store) become a per-draw folder of symbolic links (``train/<class>/`` the drawn images, ``unlabeled/``
every other train image, ``test/<class>/``) and a copy of the plain store with every other train label hidden. The
methods are fitted on that copy (accuracy *before*), a linear probe on it starts the head of ``classify.finetune``
(FixMatch on the unlabeled links, WiSE-FT), the dataset is embedded into the copy again with the fine-tuned spec
(same rows, same labels) and the methods are fitted again (accuracy *after*), plus the fine-tuned head itself.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from classify import evaluation, pipeline
from embed import sources
from embed.backbones import parse_spec
from embed.engines.local import embed, resolve_device
from store import FeatureStore
from store.outputs import write_text

log = logging.getLogger(__name__)

#: CPU budget on a benchmark dataset: a few epochs at the CPU step defaults (16 labeled + 16 unlabeled images)
DATASET_CPU = {"epochs": 2, "lr": 1e-3, "patience": 3}


def draw_ids(store_path: Path, spec: str, shots: int, seed: int) -> tuple[list[str], list[str]]:
    """Ids of the rows ``python -m benchmarks run`` labels for ``(shots, seed)``, and of the other train rows."""
    with FeatureStore(store_path) as fs:
        data = pipeline.load_data(fs, [spec])
    _, labeled = evaluation.few_shot_labels(data, shots, seed)
    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    return [str(i) for i in data.ids[labeled]], [str(i) for i in data.ids[np.setdiff1d(train, labeled)]]


def write_draw_folder(root: Path, drawn: list[str], rest: list[str], folder: Path) -> Path:
    """A split-folder layout of links into ``root``: ``drawn`` ids keep their ``train/<class>/`` place, ``rest`` move
    to ``unlabeled/<class>/``, and ``test/`` is linked image by image. Written whole: into a sibling, then renamed."""
    images = sources.from_folder(root)
    test = [i for i, s in zip(images.ids, images.splits) if s == "test"]
    places = {i: i for i in drawn + test}
    places.update({i: "unlabeled/" + i.split("/", 1)[1] for i in rest})
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for image_id, place in places.items():
        link = partial / place
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(root / image_id), link)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def draw_store(store_path: Path, copy: Path, rest: list[str]) -> Path:
    """A copy of the plain store with the labels of ``rest`` hidden (the features are the plain store's)."""
    from store.labels import apply_labels

    copy.unlink(missing_ok=True)
    shutil.copyfile(store_path, copy)
    apply_labels(copy, {image_id: None for image_id in rest}, source="finetune benchmark draw")
    return copy


def _head_accuracy(store_path: Path, model_path: str) -> float:
    """Test accuracy of the fine-tuned head on the store's features of its backbone. Its rows fingerprint is the
    per-draw folder's (other ids for the same files), so the classes and the weights are checked instead."""
    fitted = pipeline.load_model(model_path)
    with FeatureStore(store_path) as fs:
        # the folder names, against a store that may hold their display names (stores written before ids were kept)
        if [c.replace("_", " ") for c in fitted.classes] != [c.replace("_", " ") for c in fs.classes]:
            raise ValueError(f"the head's classes {fitted.classes} are not the store's {fs.classes}")
        for spec, sha in fitted.backbone_weights.items():
            assert fs.provenance(spec)["weights_sha256"] == sha, spec
        data = pipeline.load_data(fs, fitted.backbones)
    test = (data.splits == "test") & (data.y >= 0)
    return float(np.mean(fitted.estimator.predict(data.X[test]) == data.y[test]))


def run_draw(root: Path, store_path: Path, work: Path, backbone: str, shots: int, seed: int, methods: list[str],
             image_size: int | None, device: str, settings: dict, init: bool = True) -> dict:
    """Accuracy before / after fine-tuning on one label draw (see the module docstring), and the seconds spent."""
    from benchmarks.finetune import _test_accuracy
    from benchmarks.run import PeakRSS
    from classify.finetune import finetune as run_finetune

    spec = str(parse_spec(backbone))
    drawn, rest = draw_ids(store_path, spec, shots, seed)
    tag = f"{shots}shot-seed{seed}"
    folder = write_draw_folder(root, drawn, rest, work / tag)
    copy = draw_store(store_path, work / f"{tag}.h5", rest)
    before = {m: _test_accuracy(copy, spec, m)[0] for m in methods}
    init_path = work / f"{tag}-init-linear.skops"
    with FeatureStore(copy) as fs:
        pipeline.fit(fs, [spec], "linear").save(init_path)
    ckpt = work / f"{tag}-finetuned.pth"
    for stale in (ckpt, ckpt.with_name(ckpt.name + ".state"), ckpt.with_suffix(".head.skops")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with PeakRSS() as memory:
        result = run_finetune(folder, backbone, ckpt, init=init_path if init else None, store=copy, device=device,
                              image_size=image_size, seed=seed, progress=False, **settings)
    finetune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed(sources.from_folder(root), copy, [result.spec], device=device, image_size=image_size, progress=False)
    reembed_s = time.perf_counter() - t0
    after = {m: _test_accuracy(copy, result.spec, m)[0] for m in methods}
    after["fine-tuned head"] = _head_accuracy(copy, result.head_model)
    before["fine-tuned head"] = before["linear"] if "linear" in before else float("nan")
    log.info("%s: fine-tuned in %.0f s, before %s, after %s", tag, finetune_s, before, after)
    return {"shots": shots, "seed": seed, "init": init, "drawn": drawn, "before": before, "after": after,
            "finetune_s": finetune_s, "reembed_s": reembed_s, "finetune_peak_mb": memory.peak_mb,
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "alpha": result.alpha,
            "alpha_by": result.alpha_chosen_by}


def _cell(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def draws_table(dataset: str, backbone: str, image_size, draws: list[dict], settings: dict) -> str:
    """Markdown: per method and label count, frozen vs fine-tuned (mean ± std over draws), and seconds per draw."""
    shot_values = sorted({d["shots"] for d in draws})
    methods = list(draws[0]["after"])
    head = " | ".join(f"{s}-shot frozen | {s}-shot fine-tuned" for s in shot_values)
    counts = "/".join(str(sum(d["shots"] == s for d in draws)) for s in shot_values)
    start = "a linear probe on the drawn labels" if draws[0].get("init", True) else "LP-FT"
    lines = [f"#### {dataset} — {backbone} @ {image_size or 'native'} px, fine-tuned {settings} from {start} (test "
             f"accuracy %, mean ± std over {counts} draws)", "",
             f"| method | {head} |", "|---" * (1 + 2 * len(shot_values)) + "|"]
    for m in methods:
        cells = []
        for s in shot_values:
            at = [d for d in draws if d["shots"] == s]
            cells += [_cell([d["before"][m] for d in at]), _cell([d["after"][m] for d in at])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "The frozen cell of the fine-tuned head is the linear probe it starts from.", "",
              "| shots | seed | fine-tune s | epochs (best) | WiSE alpha | re-embed s | peak added RSS MB |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {d['shots']} | {d['seed']} | {d['finetune_s']:.0f} | {d['epochs_run']} ({d['best_epoch']}) | "
              f"{d['alpha']:.2f} ({d['alpha_by']}) | {d['reembed_s']:.0f} | {d['finetune_peak_mb']:.0f} |"
              for d in draws]
    return "\n".join(lines) + "\n"


def _write_report(results: Path, name: str, label: str, backbone: str, size, draws: list[dict], settings: dict,
                  store_path: Path, complete: bool) -> dict:
    """Write ``<name>.md`` and ``<name>.json`` (each whole) for the draws done so far."""
    table = draws_table(label, backbone, size, draws, settings)
    command = "python -m benchmarks finetune " + " ".join(sys.argv[2:])
    report = {"command": command, "complete": complete, "draws": draws, "settings": settings, "table": table,
              "store": str(store_path), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cores": os.cpu_count()}}
    status = "" if complete else " (interrupted: the draws done so far)"
    write_text(results / f"{name}.md", f"Produced by `{command}` on {report['date']}{status}.\n\n{table}")
    write_text(results / f"{name}.json", json.dumps(report, indent=1, default=str))
    return report


def finetune_dataset(dataset: str, shots: list[int], seeds: int, backbone: str = "timm:tf_efficientnet_lite0",
                     image_size: int | str | None = "auto", methods: str = "linear,labelprop,selftrain",
                     device: str = "auto", init: bool = True, cache: str | None = None, out: str | None = None,
                     name: str | None = None, **options) -> dict:
    """Fine-tuning against the label draws of ``python -m benchmarks run`` (seeds ``0 .. seeds-1``) on ``dataset``.

    Parameters
    ----------
    dataset : str
        A built-in dataset of :mod:`benchmarks.datasets` or a split-folder layout with labeled test images.
    shots : list of int
        Labels per class of each draw.
    seeds : int
        Draws per label count, seeds ``0 .. seeds-1`` (as ``benchmarks run --seeds``).
    image_size : int, "auto" or None
        "auto": the dataset's benchmark size (:data:`benchmarks.datasets.NATIVE_SIZE`, else the backbone's).
    methods : str
        Comma-separated classify methods fitted before and after.
    init : bool
        Start the head from the linear probe on the draw's labels (WiSE alpha 0.5); else from a probe that
        ``finetune`` fits on its training split (LP-FT; alpha chosen on its validation rows).
    cache, out, name : str
        Data / store folder (the plain store ``<dataset>-<size>px.h5`` of ``benchmarks run`` is reused; per-draw
        files go to ``finetune-<dataset>/``), results folder, basename (default ``finetune-<dataset>``).
    **options
        Settings of :func:`classify.finetune.finetune` over :data:`DATASET_CPU`.

    Returns
    -------
    dict
        ``{"draws": [...], "settings": {...}, "table": markdown}``.
    """
    from benchmarks import datasets as ds
    from benchmarks.finetune import RESULTS
    from embed.cli import demo_folder
    from store.clitools import as_list

    cache_dir = Path(cache).expanduser() if cache else demo_folder().parent / "benchmarks"
    root = ds.prepare(dataset, cache_dir)
    label = Path(dataset).name
    size = ds.NATIVE_SIZE.get(label) if image_size == "auto" else image_size
    store_path = cache_dir / f"{label}-{size or 'native'}px.h5"
    torch_device = str(resolve_device(device))
    embed(sources.from_folder(root), store_path, [backbone], device=torch_device, image_size=size, progress=False)
    work = cache_dir / f"finetune-{label}"
    work.mkdir(parents=True, exist_ok=True)
    settings = {**DATASET_CPU, **options}
    results = Path(out) if out else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    name = name or f"finetune-{label}"
    draws: list[dict] = []
    for s in shots:
        for seed in range(seeds):  # the results are rewritten after each draw: an interrupted run keeps those done
            draws.append(run_draw(root, store_path, work, backbone, s, seed, as_list(methods), size, torch_device,
                                  settings, init))
            report = _write_report(results, name, label, backbone, size, draws, settings, store_path,
                                   complete=len(draws) == len(shots) * seeds)
    return report
