"""``python -m benchmarks embed|run``: speed and accuracy measurements (never part of the tests)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from store.clitools import as_list, run_cli
from store.outputs import check_output
from store.validation import BOOL, NONE, Int, Is, Options, UserError, check_flags

#: the type and range of the benchmark commands' flags (see :mod:`store.validation`)
FLAGS = {"n": [Int(1)], "batch_size": [Int(1)], "image_size": [Int(1)], "file_size": [Int(1)],
         "workers": [NONE, Int(0)], "num_cpus": [Int(1)], "seeds": [Int(1)], "quick": [BOOL], "anchors": [BOOL],
         "views": [Int(0)], "dim": [Int(1)], "classes": [Int(2)], "shots": [Int(1)], "k": [Int(1)],
         "index": [Options("auto", "flat", "ivf", "hnsw")], "sample": [Int(1)], "init": [BOOL]}
#: ``run --image-size``: a side in pixels, "auto" or None
IMAGE_SIZE = [NONE, Int(1), Is(lambda v: v == "auto", "'auto'")]


def shot_list(shots) -> list[int]:
    """``run --shots 1,5,15``: whole numbers >= 0, at least one."""
    values = as_list(shots)
    if not values or not all(v.isdigit() for v in values):
        raise UserError(f"--shots must be whole numbers >= 0 separated by commas (1,5,15), got {shots!r}")
    return [int(v) for v in values]


def results_folder(out, files) -> None:
    """A results folder (``--out``) checked before the work (:func:`store.outputs.check_output`)."""
    from benchmarks.run import RESULTS

    check_output(RESULTS if out is None else out, "--out", folder=True, files=files)


def embed(backbone: str = "timm:tf_efficientnet_lite0", n: int = 2000, batch_size: int = 64, image_size: int = 112,
          file_size: int = 256, workers: int | None = None) -> None:
    """Raw model-forward throughput on preloaded tensors vs. `embed run` end to end on ~n real image files.

    Parameters
    ----------
    backbone : str
        Backbone spec.
    n : int
        Number of image files (Fashion-MNIST test images written as JPEG; digits without the package).
    batch_size, image_size, workers : int
        As for `python -m embed run`.
    file_size : int
        Side of the JPEG files written (decoding cost grows with it).
    """
    from benchmarks.embed_speed import measure

    check_flags(dict(n=n, batch_size=batch_size, image_size=image_size, file_size=file_size, workers=workers), FLAGS)
    result = measure(backbone, n, batch_size, image_size, file_size, workers)
    print(f"{result['backbone']} @ {result['image_size']} px, batch {result['batch_size']}, "
          f"{result['images']} JPEG files of {result['file_size']} px, {result['torch_threads']} torch threads")
    print(f"raw forward:  {result['raw_forward_img_per_s']:.1f} img/s")
    print(f"end to end:   {result['end_to_end_img_per_s']:.1f} img/s")
    print(f"ratio:        {result['ratio']:.2f}")
    print(json.dumps(result))


def ray(backbone: str = "timm:tf_efficientnet_lite0", n: int = 4000, batch_size: int = 64, image_size: int = 112,
        num_cpus: int = 2) -> None:
    """Local runner vs `--engine ray` on the same n image files and backbone: throughput of each and the overhead.

    Parameters
    ----------
    backbone : str
        Backbone spec, embedded by both engines.
    n : int
        Number of image files written for the measurement.
    batch_size : int
        Images per model call, as for `python -m embed run`.
    image_size : int
        Input side in pixels, as for `python -m embed run`.
    num_cpus : int
        CPUs of the local Ray cluster started for the run.
    """
    from benchmarks.embed_speed import measure_ray

    check_flags(dict(n=n, batch_size=batch_size, image_size=image_size, num_cpus=num_cpus), FLAGS)
    result = measure_ray(backbone, n, batch_size, image_size, num_cpus=num_cpus)
    print(f"{result['backbone']}, {result['images']} images, batch {result['batch_size']}, {num_cpus} CPUs")
    print(f"local: {result['local_img_per_s']:.1f} img/s   ray: {result['ray_img_per_s']:.1f} img/s   "
          f"overhead: {100 * result['ray_overhead']:.0f} %")
    print(json.dumps(result))


def run(datasets="digits,fashion-mnist", backbones="timm:tf_efficientnet_lite0", methods=None, shots="1,5,15",
        seeds: int = 3, quick: bool = False, image_size: int | str | None = "auto", anchors: bool = True,
        views: int = 0, out: str | None = None, cache: str | None = None, name: str = "latest",
        oracle: bool = True) -> None:
    """Accuracy tables across methods, backbones and label budgets, with plain scikit-learn anchors.

    Parameters
    ----------
    datasets : str
        Comma-separated: digits, fashion-mnist (Debian's dataset-fashion-mnist), clipart (Debian's openclipart-png:
        21 classes of colour drawings of objects), tuxpaint (Debian's tuxpaint-stamps-default: 24 object classes of
        mostly photographs), or folders in the split-folder layout with a labeled test split.
    backbones : str
        Comma-separated backbone specs; each dataset is embedded once per backbone (stores are reused). Specs joined
        by ``+`` are one more table on their features concatenated (``timm:tf_efficientnet_lite0+timm:...lite1``).
    methods : str
        Comma-separated registered methods, with parameters as name(key=value, ...) (default: every method that
        applies; methods needing CLIP text or augmented views are skipped where the store has none).
    shots : str
        Labeled images per class, comma-separated.
    seeds : int
        Label draws per shot count.
    quick : bool
        digits only, first backbone, 1 seed, shots 1 and 5: a check in under 3 minutes.
    image_size : int, "auto" or None
        Input resolution of the backbones; "auto" is 112 px for digits and fashion-mnist (8 and 28 px images) and the
        backbone's own resolution (None) for the other datasets.
    anchors : bool
        Also run the plain scikit-learn anchors side by side.
    views : int
        Augmented views per image to embed (needed by fixmatch); stores with views are kept apart.
    out : str
        Results folder (default ./benchmarks-results): <name>.md tables, <name>.json raw numbers, <name>.png plot.
    cache : str
        Folder of the generated datasets and their feature stores, reused by later runs (default
        ~/.cache/fewshot-suite).
    name : str
        Basename of the result files.
    oracle : bool
        Also fit the linear probe on every train label (the oracle) and show each method's share of the probe-to-oracle
        gap closed.
    """

    check_flags(dict(seeds=seeds, quick=quick, anchors=anchors, views=views), FLAGS)
    check_flags(dict(image_size=image_size), {"image_size": IMAGE_SIZE})
    shot_values = shot_list(shots)
    results_folder(out, [f"{name}.md", f"{name}.json", f"{name}.png"])
    from benchmarks import datasets as ds
    from benchmarks.run import ANCHORS, DEFAULT_METHODS, RESULTS, load_task, run_task, write_results
    from store.clitools import as_list
    from embed import sources
    from embed.cli import demo_folder
    from embed.engines.local import embed as embed_images

    names, tables = as_list(datasets), as_list(backbones)
    specs = list(dict.fromkeys(part for spec in tables for part in spec.split("+")))  # each backbone embedded once
    if quick:
        names, specs, tables, shot_values, seeds = ["digits"], specs[:1], specs[:1], [1, 5], 1
    cache_dir = Path(cache).expanduser() if cache else demo_folder().parent / "benchmarks"
    tasks = []
    for dataset in names:
        try:
            folder = ds.prepare(dataset, cache_dir)
        except ds.DatasetUnavailable as err:
            print(f"skipping {dataset}: {err}")
            continue
        size = ds.NATIVE_SIZE.get(dataset) if image_size == "auto" else image_size
        store_path = cache_dir / f"{Path(dataset).name}-{size or 'native'}px{f'-views{views}' if views else ''}.h5"
        embed_images(sources.from_folder(folder), store_path, specs, image_size=size, views=views)  # reused
        tasks += [load_task(Path(dataset).name, store_path, spec) for spec in tables]
    if not tasks:
        raise UserError("no dataset available to benchmark; see the skipped lines above")
    method_list = as_list(methods) or list(DEFAULT_METHODS)
    records = []
    for task in tasks:
        records += run_task(task, method_list, shot_values, seeds, list(ANCHORS) if anchors else [], oracle=oracle)
    command = "python -m benchmarks run " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "python -m benchmarks run"
    result = write_results(records, tasks, Path(out) if out else RESULTS, command, name)
    print(result["tables"])
    print(f"wrote {result['dir']}/{name}.md, {name}.json, {name}.png")


def finetune(quick: bool = False, backbone: str = "timm:tf_efficientnet_lite0", image_size: int | str | None = "auto",
             shots=None, device: str = "auto", init: bool = True, out: str | None = None,
             cache: str | None = None, dataset: str = "digits", seeds: int = 3, **options) -> None:
    """Accuracy of cached-feature methods before / after fine-tuning the backbone, and of the fine-tuned head.

    Parameters
    ----------
    quick : bool
        digits: the CPU setting (a few epochs); else the full recipe.
    backbone : str
        The backbone to fine-tune (its pretrained weights must be available offline).
    image_size : int, "auto" or None
        Input side in pixels; "auto": the dataset's benchmark size (112 px for digits, clipart's native 224).
    shots : int or str
        digits: labeled training images per class (default 15). Another dataset: label counts of the draws
        (default 5,10).
    device : str
        auto, cpu or cuda.
    init : bool
        digits: start the head from the first method's model fitted on every labeled image; else from a probe fitted
        on the fine-tuning split (LP-FT). Another dataset always starts from the linear probe of the draw.
    out : str
        Results folder (default ./benchmarks-results): finetune.md and finetune.json (another dataset:
        finetune-<dataset>.md / .json).
    cache : str
        Folder of the images, stores and checkpoints (default ~/.cache/fewshot-suite/benchmarks); another dataset
        reuses the plain store of `benchmarks run` there.
    dataset : str
        digits (the demo split, one run), or a dataset of `benchmarks run` (clipart, tuxpaint, fashion-mnist, a
        folder): fine-tuned once per label draw of `benchmarks run --shots S --seeds N` (the same drawn images).
    seeds : int
        Another dataset: draws per label count, seeds 0 .. seeds-1 (as `benchmarks run --seeds`).
    **options
        Any further option of `python -m classify finetune` (e.g. --epochs 10, --methods linear,labelprop).
    """
    from benchmarks.finetune import RESULTS, finetune as run_finetune

    check_flags(dict(quick=quick, init=init, seeds=seeds), FLAGS)
    check_flags(dict(image_size=image_size), {"image_size": IMAGE_SIZE})
    if dataset == "digits":
        shots = 15 if shots is None else shots
        check_flags(dict(shots=shots), FLAGS)
        check_output(RESULTS if out is None else out, "--out", folder=True)
        size = 112 if image_size == "auto" else image_size
        print(run_finetune(quick=quick, backbone=backbone, image_size=size, shots=shots, device=device, init=init,
                           out=out, cache=cache, **options)["table"])
        return
    from benchmarks.finetune_draws import finetune_dataset

    shot_values = shot_list("5,10" if shots is None else shots)
    name = options.pop("name", None) or f"finetune-{Path(dataset).name}"
    results_folder(out, [f"{name}.md", f"{name}.json"])
    print(finetune_dataset(dataset, shot_values, seeds, backbone=backbone, image_size=image_size, device=device,
                           init=init, cache=cache, out=out, name=name, **options)["table"])


def labelprop_scale(n: int = 1_000_000, dim: int = 512, classes: int = 20, shots: int = 10, k: int = 20,
                    index: str = "auto", sample: int = 50_000) -> None:
    """labelprop on n synthetic clustered rows: fit seconds, peak memory, accuracy, recall@k of the approximate graph.

    Parameters
    ----------
    n, dim, classes, shots : int
        Rows, dimension, clusters (= classes), labeled rows per class.
    k : int
        Neighbours per row of the graph.
    index : str
        auto, flat, ivf or hnsw (labelprop's ``index``).
    sample : int
        Rows of the sample on which the approximate graph's recall@k against exact search is measured.
    """
    from benchmarks.labelprop_scale import measure

    check_flags(dict(n=n, dim=dim, classes=classes, shots=shots, k=k, index=index, sample=sample), FLAGS)
    if shots * classes > n:
        raise UserError(f"--n {n} rows cannot hold --shots {shots} labels for each of --classes {classes}: raise --n")
    result = measure(n, dim, classes, shots, k, index, sample=sample)
    print(f"labelprop on {n} x {dim} from a store ({classes} classes, {result['labeled']} labels, k={k}, index "
          f"{result['index']}): fit {result['fit_seconds']:.1f} s, accuracy on unlabeled rows "
          f"{result['accuracy_unlabeled']:.4f}, peak RSS {result['peak_rss_mib']:.0f} MiB (the raw features would be "
          f"{result['features_mib']:.0f} MiB; transformed rows {result['transformed_mib']:.0f} MiB)")
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from benchmarks.active import active  # imported here: they load numpy, which the other commands need not
    from benchmarks.audit import audit
    from benchmarks.label_loop import label_loop

    run_cli({"embed": embed, "ray": ray, "run": run, "finetune": finetune, "labelprop-scale": labelprop_scale,
             "active": active, "audit": audit,
             "label-loop": label_loop}, argv, name="python -m benchmarks")
