"""``python -m embed run``: embed a dataset into a feature store (no arguments: the built-in demo)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from embed import sources
from store.cli import run_cli

log = logging.getLogger(__name__)

DEMO_BACKBONE = "timm:tf_efficientnet_lite0"
DEMO_IMAGE_SIZE = 112  # digits are 8×8 scans: 112 px loses nothing and runs ~8× faster than 224 on a CPU


def demo_folder() -> Path:
    """Where the demo images are written: the user's cache folder."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "fewshot-suite" / "demo-digits"


def _as_list(value) -> list[str]:
    """fire turns ``a,b`` into a tuple; accept both that and a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def run(data: str | None = None, csv: str | None = None, backbone=None, store: str | None = None,
        batch_size: int = 64, workers: int | None = None, device: str = "auto", dtype: str = "float32",
        views: int = 0, templates: str | None = None, image_size: int | None = None, seed: int = 0,
        progress: bool = True) -> None:
    """Embed images into an HDF5 feature store; rerun the same command to resume after a crash.

    With no --data and no --csv: builds the demo (scikit-learn digits written as PNG files, tf_efficientnet_lite0
    at 112 px) into ./demo.h5.

    Parameters
    ----------
    data : str
        Folder in the challenge layout: train/<class>/*, unlabeled/*, test/* (or test/<class>/*).
    csv : str
        Instead of --data: a CSV of path,label[,split] (paths relative to the CSV's folder).
    backbone : str
        Spec(s), comma-separated: timm:<name>, timm:<name>@<ckpt>, clip:<arch>/<tag>, clip:<arch>@<ckpt>.
    store : str
        The .h5 store to create or extend (default: ./features.h5, or ./demo.h5 for the demo).
    batch_size, workers : int
        Images per forward pass; decode worker processes (default: the number of cores, at most 8).
    device : str
        auto, cpu or cuda.
    dtype : str
        float32 or float16 features.
    views : int
        Extra augmented passes per image (alternating weak / strong), for consistency methods.
    templates : str
        File of CLIP prompt templates, one per line, each with one {} for the class name.
    image_size : int
        Override the backbone's input resolution.
    seed : int
        Seed of the augmented views.
    """
    is_demo = data is None and csv is None
    if data is not None and csv is not None:
        raise ValueError("pass either --data DIR or --csv FILE, not both")
    if is_demo:
        images = sources.from_folder(sources.write_demo(demo_folder()))
        specs = _as_list(backbone) or [DEMO_BACKBONE]
        image_size = DEMO_IMAGE_SIZE if image_size is None and specs == [DEMO_BACKBONE] else image_size
        store = store or "demo.h5"
    else:
        images = sources.from_folder(data) if data is not None else sources.from_csv(csv)
        specs = _as_list(backbone)
        if not specs:
            raise ValueError("pass --backbone SPEC, e.g. timm:tf_efficientnet_lite0 or clip:ViT-B-32/openai")
        store = store or "features.h5"
    from embed.runner import embed  # torch, timm, open_clip: only once the inputs are known to be good
    from embed.templates import load_templates

    log.info("%d images (%s) from %s", len(images), ", ".join(f"{images.splits.count(s)} {s}"
                                                             for s in ("train", "unlabeled", "test")), images.root)
    summary = embed(images, store, specs, device=device, batch_size=batch_size, workers=workers, dtype=dtype,
                    views=views, templates=load_templates(templates) if templates else None, image_size=image_size,
                    seed=seed, progress=progress)
    _print_summary(summary, specs[0])


def _print_summary(summary, first_spec: str) -> None:
    for spec, n in summary.embedded.items():
        print(f"{spec}: embedded {n} images in this run")
    if summary.errors:
        print(f"{len(summary.errors)} file(s) could not be used and are excluded downstream:")
        for image_id, message in summary.errors:
            print(f"  {image_id}: {message}")
    if summary.duplicates:
        print(f"{len(summary.duplicates)} group(s) of identical files (same sha256):")
        for group in summary.duplicates:
            print(f"  {', '.join(group)}")
    print(f"store: {summary.store.resolve()}")
    print("next:  python -m store info " + str(summary.store))
    print(f"       python -m classify evaluate --store {summary.store} --backbone {first_spec} --method labelprop")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    run_cli({"run": run}, argv)
