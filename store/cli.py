"""Command line of the store package (fire)."""
from __future__ import annotations

import json
import sys

import fire

from store.h5store import FeatureStore


def info(path: str, json_output: bool = False) -> None:
    """Summarise a feature store: images, failures, splits, classes, backbones.

    Parameters
    ----------
    path : str
        The store (.h5).
    json_output : bool
        Print one JSON object instead of text (also ``--json``).
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
    for spec, b in summary["backbones"].items():
        extras = [name for name in ("text", "probs") if b[name]] + ([f"{b['views']} views"] if b["views"] else [])
        state = "complete" if b["complete"] else "INCOMPLETE (rerun embed to resume)"
        print(f"  {spec}: dim {b['dim']}, {b['rows']} rows, {b['dtype']}, {state}"
              + (f"; {', '.join(extras)}" if extras else ""))
    for item in summary["failed"]:
        print(f"  failed: {item['id']}: {item['error']}")
    for group in summary["duplicates"]:
        print(f"  identical files: {', '.join(group)}")


def import_shards(folder: str, store: str) -> None:
    """Copy a shard folder (img_emb/*.npy + metadata/*.parquet) into an HDF5 store, with its provenance."""
    from store.shards import import_shards as run_import

    summary = run_import(folder, store)
    print(f"imported {folder} into {store}: {summary['ok']} ok rows, {summary['errors']} errors")


def export(store: str, backbone: str, out: str, format: str = "shards", shard_size: int = 100_000) -> None:
    """Write one backbone of a store as shards (img_emb/img_emb_N.npy float16 + metadata/metadata_N.parquet).

    Parameters
    ----------
    store, backbone : str
        The store and the backbone spec to export.
    out : str
        The shard folder to write.
    format : str
        shards (the layout embedding-reader and autofaiss read).
    shard_size : int
        Rows per shard.
    """
    from store.shards import export_shards

    if format != "shards":
        raise ValueError(f"--format must be shards, not {format!r}")
    folder = export_shards(store, backbone, out, shard_size)
    print(f"exported {backbone} of {store} to {folder}")


def as_list(value) -> list[str]:
    """fire turns ``a,b`` into a tuple; accept that, a list, or a comma-separated string (commas inside
    parentheses do not split: ``selftrain(teacher=conse,rounds=2),knn`` is two items)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    items, depth, current = [], 0, ""
    for char in str(value):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


def run_cli(commands: dict, argv: list[str] | None = None) -> None:
    """Run a fire CLI, turning user errors into one line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    # fire has no flag aliases; accept the conventional --json spelling.
    argv = ["--json_output" if a == "--json" else a for a in argv]
    try:
        fire.Fire(commands, command=argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    run_cli({"info": info, "import-shards": import_shards, "export": export}, argv)
