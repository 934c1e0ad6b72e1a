"""``python -m store info|label|import-shards|export``: the store package's command line (see :mod:`store.clitools` for
the machinery every CLI shares)."""
from __future__ import annotations

import json
from pathlib import Path

from store.clitools import run_cli
from store.h5store import FeatureStore, display_id
from store.validation import BOOL, Int, UserError, check_flags


def info(path: str, json_output: bool = False) -> None:
    """Summarise a feature store: images, failures, splits, classes, backbones.

    Parameters
    ----------
    path : str
        The store (.h5) to summarise.
    json_output : bool
        Print one JSON object instead of text: images, ok, errors, splits, classes, backbones (dim, rows).

    Examples
    --------
    python -m store info feats.h5
    python -m store info feats.h5 --json
    """
    with FeatureStore(path) as store:
        summary = store.info()
    if json_output:
        print(json.dumps(summary))
        return
    print(f"{summary['path']}: {summary['images']} images, {summary['ok']} ok, {summary['errors']} errors, "
          f"{summary['pending']} not read yet")
    print("splits: " + ", ".join(f"{s} {n} ({summary['labeled'][s]} labeled)" for s, n in summary["splits"].items()))
    print(f"classes ({len(summary['classes'])}): {', '.join(summary['classes'])}")
    if summary["display_names"] != summary["classes"]:  # what prompts and pages show
        print(f"display names: {', '.join(summary['display_names'])}")
    for spec, b in summary["backbones"].items():
        extras = [name for name in ("text", "probs") if b[name]] + ([f"{b['views']} views"] if b["views"] else [])
        state = "complete" if b["complete"] else "INCOMPLETE (rerun embed to resume)"
        print(f"  {spec}: dim {b['dim']}, {b['rows']} rows, {b['dtype']}, {state}"
              + (f"; {', '.join(extras)}" if extras else ""))
    for item in summary["failed"]:
        print(f"  failed: {item['id']}: {item['error']}")
    for group in summary["duplicates"]:
        print(f"  identical files: {', '.join(group)}")


def label(store: str, labels: str | None = None, add_classes: bool = False, undo: bool = False,
          history: bool = False, json_output: bool = False) -> None:
    """Change the labels of an existing store without embedding anything again; undo; show the history.

    Labels are metadata: the features stay, and a model fitted on the store still applies to it. An unlabeled image
    that gets a class becomes a train image; a test image stays a test image; an empty label sends a train image back
    to the unlabeled pool. Every batch is recorded in the store with the time and can be undone.

    Parameters
    ----------
    store : str
        The feature store (.h5) written by `python -m embed run`.
    labels : str
        A CSV of answers with a header row naming the columns id and label (others are ignored); ids as `store info`
        and predictions.csv name them, an empty label for unlabeled. An id on several lines takes its last line's
        label, so the label app's answers CSV (id,label,time; a corrected answer is a later line) reads as it is.
        Applied as one batch; a bad row (an unknown id or class) changes nothing.
    add_classes : bool
        Add the classes the answers name that the store lacks (without it they are refused).
    undo : bool
        Revert the last batch that is not undone yet (again: the one before, and so on).
    history : bool
        Show every change: batch, time, source, id, old and new label and split.
    json_output : bool
        With --history: one JSON object {"store", "history": [{id, old, new, old_split, new_split, time, source,
        batch, undoes}, ...]}.

    Examples
    --------
    python -m store label --store feats.h5 --labels answers.csv
    python -m store label --store feats.h5 --labels answers.csv --add-classes
    python -m store label --store feats.h5 --undo
    python -m store label --store feats.h5 --history --json
    """
    from store.labels import apply_labels, label_history, read_answers, undo_last

    check_flags(dict(add_classes=add_classes, undo=undo, history=history, json_output=json_output),
                {"add_classes": [BOOL], "undo": [BOOL], "history": [BOOL], "json_output": [BOOL]})
    store = str(store)
    if sum([labels is not None, undo, history]) != 1:
        raise UserError("pass one of --labels answers.csv, --undo or --history")
    if json_output and not history:
        raise UserError("--json goes with --history")
    if history:
        entries = label_history(store)
        if json_output:
            print(json.dumps({"store": store, "history": entries}))
            return
        for e in entries:
            undoes = f" (undoes {e['undoes']})" if e["undoes"] else ""
            print(f"batch {e['batch']}{undoes} {e['time']} {e['source']}: {display_id(e['id'])}: "
                  f"{e['old'] or '(unlabeled)'} -> {e['new'] or '(unlabeled)'}, {e['old_split']} -> {e['new_split']}")
        print(f"{store}: {len(entries)} change(s) in {len({e['batch'] for e in entries})} batch(es)")
        return
    if undo:
        changes = undo_last(store)
    else:
        changes = apply_labels(store, read_answers(str(labels)), source=Path(str(labels)).name,
                               add_classes=add_classes)
    print(f"{store}: {changes.summary()}")


def import_shards(folder: str, store: str, allow_outside: bool = False) -> None:
    """Copy a shard folder (img_emb/*.npy + metadata/*.parquet) into an HDF5 store, with its provenance.

    A shard folder can come from someone else, so by default it is read only inside itself: files linked from
    elsewhere and ids that leave the data folder (absolute, or through ..) are refused, and a new store names the
    shard folder as its data folder, not the one meta.json names. The whole folder is checked before anything is
    written.

    Parameters
    ----------
    folder : str
        The shard folder written by ``embed run --engine ray`` or ``store export`` (img_emb/, metadata/).
    store : str
        The .h5 store to create or extend with the shards' backbone.
    allow_outside : bool
        Trust the folder (your own): follow its links wherever they lead, accept ids outside the data folder, and
        name the data folder its meta.json names (where commands such as `classify report` then read images).

    Examples
    --------
    python -m store import-shards feats.h5.shards/clip_ViT-B-32_openai-1a2b3c4d --store feats.h5
    python -m store import-shards exported/ --store copy.h5
    python -m store import-shards my-own-export/ --store copy.h5 --allow-outside
    """
    from store.shards import import_shards as run_import

    check_flags(dict(allow_outside=allow_outside), {"allow_outside": [BOOL]})
    summary = run_import(folder, store, allow_outside=allow_outside)
    print(f"imported {folder} into {store}: {summary['ok']} ok rows, {summary['errors']} errors")


def export(store: str, backbone: str, out: str, format: str = "shards", shard_size: int = 100_000,
           normalize: bool = True) -> None:
    """Write one backbone of a store as shards (img_emb/img_emb_N.npy + metadata/metadata_N.parquet).

    Parameters
    ----------
    store : str
        The .h5 store to read.
    backbone : str
        The backbone spec whose features are exported, as ``python -m store info`` lists it.
    out : str
        The shard folder to write: new, empty, or an earlier export of the same backbone, which is replaced whole
        once the new one is complete (a failed or killed export leaves it as it was).
    format : str
        shards: the layout embedding-reader and autofaiss read (the only format).
    shard_size : int
        Rows per shard file.
    normalize : bool
        L2-normalised float16 features, the layout embedding-reader and autofaiss expect (default); --nonormalize
        writes the stored features unchanged (a lossless copy that import-shards reads back).

    Examples
    --------
    python -m store export --store feats.h5 --backbone timm:tf_efficientnet_lite0 --out shards/
    python -m store export --store feats.h5 --backbone clip:ViT-B-32/openai --out shards/ --shard-size 50000
    """
    from store.shards import export_shards

    if format != "shards":
        raise UserError(f"--format must be shards, not {format!r}")
    check_flags(dict(shard_size=shard_size, normalize=normalize), {"shard_size": [Int(1)], "normalize": [BOOL]})
    folder = export_shards(store, backbone, out, shard_size, normalize)
    print(f"exported {backbone} of {store} to {folder}")


def main(argv: list[str] | None = None) -> None:
    run_cli({"info": info, "label": label, "import-shards": import_shards, "export": export}, argv,
            name="python -m store")
