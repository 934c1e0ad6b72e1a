"""The shard folder format (see :mod:`store.shards`): its writer, and the checked readers of its parts.

Every file is written with :func:`store.atomic.atomic_write`, so a killed writer never leaves a partial shard that
looks complete, and a failed write (disk full) removes its temporary file.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from store.atomic import atomic_write
from store.layout import ERROR, OK, SPLITS, display_id, id_bytes
from store.structure import MAX_CLASSES, MAX_DIM, MAX_IMAGES, MAX_TEMPLATES, list_of_str
from store.writers import Batch
from store.validation import UserError, one_line

SHARDS_FORMAT = "fewshot-feature-shards/2"
#: format 1: features always L2-normalised float16, no probabilities
READABLE_FORMATS = ("fewshot-feature-shards/1", SHARDS_FORMAT)
STATUS_NAMES = {OK: "ok", ERROR: "error"}
METADATA_COLUMNS = ("id", "split", "label", "sha256", "status", "error")
# meta.json keys import needs, with their JSON types.
META_KEYS = {"spec": str, "weights_sha256": str, "weights_source": str, "preprocessing": dict, "versions": dict,
             "classes": list, "n_images": int, "shard_size": int, "n_shards": int, "dim": int}
# Optional meta.json keys: a check of the value and what it should be.
OPTIONAL_KEYS = {
    "root": (lambda v: isinstance(v, str), "text"),
    "image_list_sha256": (lambda v: isinstance(v, str), "text"),
    "rows_sha256": (lambda v: isinstance(v, str), "text"),
    "templates": (lambda v: list_of_str(v) and 0 < len(v) <= MAX_TEMPLATES, f"a list of 1 to {MAX_TEMPLATES} strings"),
    "logit_scale": (lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool), "a number or null"),
    "head_classes": (lambda v: list_of_str(v) and 0 < len(v) <= MAX_CLASSES, f"a list of 1 to {MAX_CLASSES} strings"),
    "prob_classes": (lambda v: list_of_str(v) and 0 < len(v) <= MAX_CLASSES, f"a list of 1 to {MAX_CLASSES} strings"),
    "display_names": (lambda v: list_of_str(v) and len(v) <= MAX_CLASSES, f"a list of at most {MAX_CLASSES} strings"),
}
#: Largest meta.json read (it lists the images left out of a normalised export).
MAX_META_BYTES = 64 << 20
# meta.json keys two runs writing into the same folder must agree on: the rows (ids) and the features' origin. Labels
# are metadata: a run with other labels, splits or classes takes the folder over (:meth:`ShardWriter.relabel`).
RESUME_KEYS = ("spec", "weights_sha256", "preprocessing", "rows_sha256", "shard_size", "normalized", "dtype")
# meta.json keys of the label state (what a run with other labels rewrites).
LABEL_KEYS = ("image_list_sha256", "classes", "display_names", "root")
log = logging.getLogger(__name__)
HEX64 = re.compile(r"[0-9a-f]{64}")
REWRITE = ("rerun the command that wrote the folder (`python -m embed run --engine ray` rewrites shards whose done/N "
           "marker you delete; `python -m store export` rewrites all)")


def pyarrow_modules():
    """``(pyarrow, pyarrow.parquet)``, or a ValueError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("sharded export/import needs pyarrow: pip install pyarrow (or the project's [ray] extra)") \
            from None
    return pa, pq


def l2_normalize_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero), float32."""
    X = np.asarray(X, dtype=np.float32)  # (n, D)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file renamed to ``path``; a failed write is one line saying how to resume."""
    try:
        with atomic_write(path) as tmp:
            write(tmp)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise UserError(f"writing {path} failed ({one_line(err)}); free disk space (or fix the disk) and rerun the "
                         "same command: finished shards are kept") from err


def _save_npy(array: np.ndarray):
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array)
    return write


def shard_rows(shard: int, shard_size: int, n: int) -> np.ndarray:
    """The store rows shard ``shard`` holds."""
    return np.arange(shard * shard_size, min(n, (shard + 1) * shard_size))


class ShardWriter:
    """Writes one shard folder from batches (``write`` / ``flush``), shard by shard as each one completes.

    Parameters
    ----------
    folder : path
        The shard folder (created; an existing one must hold shards of the same run, see :data:`RESUME_KEYS`).
    meta : dict
        The folder's ``meta.json`` (see :mod:`store.shards`): ``normalized`` (features L2-normalised float16, the
        embedding-reader convention) or not (raw features in ``dtype``, with ``probs`` when ``prob_classes``).
    ids, splits, labels : sequences
        The whole image list, indexed by store row (each shard's metadata is taken from it).
    """

    def __init__(self, folder: str | Path, meta: dict, ids: Sequence[str] = (), splits: Sequence[str] = (),
                 labels: Sequence[int] = ()):
        self.folder = Path(folder)
        meta = {"normalized": True, "dtype": "float16", **meta}
        try:
            for sub in ("img_emb", "metadata", "done") + (("probs",) if meta.get("prob_classes") else ()):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the shard folder {self.folder} ({one_line(err)}); choose a writable "
                             "folder") from err
        self.meta = meta
        self._ids, self._splits, self._labels = ids, splits, np.asarray(labels, dtype=np.int64)
        self._pending: dict[int, list[Batch]] = {}
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            _atomic(meta_path, lambda p: p.write_text(json.dumps({"format": SHARDS_FORMAT, **meta}, indent=1)))
        elif any(check_same_run(self.folder, meta).get(key) != meta.get(key) for key in LABEL_KEYS):
            self.relabel()

    def relabel(self) -> None:
        """Give the finished shards this run's splits and labels, then ``meta.json`` its label state (classes,
        display names, ``image_list_sha256``): the features stay. A run killed in between does it again."""
        pa, pq = pyarrow_modules()
        size, n = int(self.meta["shard_size"]), int(self.meta["n_images"])
        finished = [s for s in range(int(self.meta["n_shards"])) if self.done(s)]
        for s in finished:
            path, rows = self.folder / "metadata" / f"metadata_{s}.parquet", shard_rows(s, size, n)
            read_table(path, rows.size)  # checked first: a damaged table is one line, not a pyarrow trace
            table = pq.read_table(path)
            for name, column in (("split", pa.array([str(self._splits[r]) for r in rows])),
                                 ("label", pa.array(self._labels[rows], type=pa.int64()))):
                table = table.set_column(table.schema.get_field_index(name), name, column)
            _atomic(path, lambda p, t=table: pq.write_table(t, p))
        text = json.dumps({"format": SHARDS_FORMAT, **self.meta}, indent=1)
        _atomic(self.folder / "meta.json", lambda p: p.write_text(text))
        log.info("%s: labels changed since its shards were written; relabelled %d finished shard(s)", self.folder,
                 len(finished))

    def done(self, n: int) -> bool:
        """Whether shard ``n`` is complete."""
        return (self.folder / "done" / str(n)).is_file()

    def forget(self, n: int) -> None:
        """Drop shard ``n``'s done marker, so that it is written again (e.g. one of its files changed)."""
        (self.folder / "done" / str(n)).unlink(missing_ok=True)

    def sha256(self, n: int) -> np.ndarray:
        """(rows,) sha256 recorded in finished shard ``n``'s metadata ("" for files never read)."""
        return np.asarray(read_table(self.folder / "metadata" / f"metadata_{n}.parquet")["sha256"], dtype=object)

    def write_extra(self, name: str, array: np.ndarray) -> None:
        """A side array such as ``text_emb`` or ``head_weight`` (``name.npy``)."""
        _atomic(self.folder / f"{name}.npy", _save_npy(np.asarray(array)))

    def write(self, batch: Batch) -> None:
        """Take a batch; every shard whose rows are now all here is written (atomically, then its done marker)."""
        size, n = int(self.meta["shard_size"]), int(self.meta["n_images"])
        shard_of = batch.rows // size  # (B,)
        for s in np.unique(shard_of):
            self._pending.setdefault(int(s), []).append(batch.take(shard_of == s))
        for s in [s for s, parts in self._pending.items() if sum(map(len, parts)) == shard_rows(s, size, n).size]:
            part = Batch.concat(self._pending.pop(s))
            rows = part.rows
            self.write_shard(s, part.features, [self._ids[r] for r in rows], [self._splits[r] for r in rows],
                             self._labels[rows], list(part.sha256), part.status, list(part.errors), part.probs)

    def flush(self) -> None:
        """Every shard is written once all its rows came; rows of an unfinished shard here are an engine's bug."""
        assert not self._pending, f"rows of shards {sorted(self._pending)} never completed"

    def write_shard(self, n: int, features: np.ndarray, ids, splits, labels, sha256, status, errors,
                    probs: np.ndarray | None = None) -> None:
        """Shard ``n``: (rows, D) features (L2-normalised here when the folder is ``normalized``) and per-row
        metadata, the (rows, K) probabilities when the folder keeps them, then its done marker."""
        pa, pq = pyarrow_modules()
        failed = np.asarray(status) != OK
        emb = l2_normalize_rows(features) if self.meta["normalized"] else np.asarray(features, dtype=np.float32)
        emb = emb.astype(self.meta["dtype"])  # (rows, D)
        emb[failed] = 0
        _atomic(self.folder / "img_emb" / f"img_emb_{n}.npy", _save_npy(emb))
        if self.meta.get("prob_classes"):
            probs = np.asarray(probs, dtype=np.float16)  # (rows, K)
            probs[failed] = 0
            _atomic(self.folder / "probs" / f"probs_{n}.npy", _save_npy(probs))
        ids = [str(i) for i in ids]
        shown = [display_id(i) for i in ids]
        columns = {"id": shown, "split": [str(s) for s in splits], "label": np.asarray(labels, dtype=np.int64),
                   "sha256": [s or "" for s in sha256], "status": [STATUS_NAMES[int(s)] for s in status],
                   "error": [display_id(e or "") for e in errors]}
        if shown != ids:  # some name is not UTF-8: keep its exact bytes
            columns["id_bytes"] = pa.array([id_bytes(i) for i in ids], type=pa.binary())
        table = pa.table(columns)
        _atomic(self.folder / "metadata" / f"metadata_{n}.parquet", lambda p: pq.write_table(table, p))
        _atomic(self.folder / "done" / str(n), lambda p: p.write_text(""))


def check_same_run(folder: Path, meta: dict) -> dict:
    """The ``meta.json`` of the shard folder ``folder``; ValueError unless it holds shards of the run ``meta``
    describes (the same rows and features' origin, see RESUME_KEYS). A folder written before ``rows_sha256`` was
    recorded is compared by its ``image_list_sha256`` (ids with their labels) instead."""
    old = read_meta(folder)
    keys = RESUME_KEYS if "rows_sha256" in old else [k.replace("rows_", "image_list_") for k in RESUME_KEYS]
    for key in keys:
        if old.get(key) != meta.get(key):
            raise UserError(f"{folder} holds shards of another run (different {key}: {old.get(key)!r}); use a new "
                             "folder, or delete this one")
    return old


def read_meta(folder: str | Path) -> dict:
    """The checked ``meta.json`` of a shard folder; ValueError naming the file, the key and the fix when it is damaged.

    Every key import uses is checked (type and range: see :data:`META_KEYS` and :data:`OPTIONAL_KEYS`), so a folder
    is refused before anything of it is written. Format 1 folders (written before probabilities and raw features) read
    as ``normalized`` float16."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a shard folder (no meta.json); write one with `python -m embed run "
                                "--engine ray` or `python -m store export`")
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise UserError(f"{path} is larger than {MAX_META_BYTES >> 20} MiB, more than any meta.json the suite "
                             f"writes; {REWRITE}")
        meta = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if isinstance(err, UserError):
            raise
        raise UserError(f"{path} is damaged ({one_line(err)}); {REWRITE}") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise UserError(f"{path} is not a fewshot shard folder's meta.json; point at a folder written by "
                         "`python -m embed run --engine ray` or `python -m store export`")
    meta = {"normalized": True, "dtype": "float16", **meta}
    kinds = {**META_KEYS, "normalized": bool, "dtype": str}
    for key, kind in kinds.items():
        # bool is an int in Python, never a valid count here
        if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta.get(key), bool)):
            raise UserError(f"{path} is damaged: {key!r} is missing or not a JSON {kind.__name__}; {REWRITE}")
    for key, (check, what) in OPTIONAL_KEYS.items():
        if key in meta and not check(meta[key]):
            raise UserError(f"{path} is damaged: {key!r} is {one_line(repr(meta[key]))[:60]}, not {what}; {REWRITE}")
    if not list_of_str(meta["classes"]) or len(meta["classes"]) > MAX_CLASSES:
        raise UserError(f"{path} is damaged: 'classes' is not a list of at most {MAX_CLASSES} class names; {REWRITE}")
    ranges = {"n_images": (0, MAX_IMAGES), "shard_size": (1, MAX_IMAGES), "dim": (1, MAX_DIM)}
    for key, (low, high) in ranges.items():
        if not low <= meta[key] <= high:
            raise UserError(f"{path} is damaged: {key!r} is {meta[key]}, not in [{low}, {high}]; {REWRITE}")
    if meta["n_shards"] != -(-meta["n_images"] // meta["shard_size"]) or meta["dtype"] not in ("float16", "float32"):
        raise UserError(f"{path} is damaged: n_shards {meta['n_shards']} does not hold n_images {meta['n_images']} in "
                         f"shards of {meta['shard_size']}, or dtype {meta['dtype']!r} is not float16/float32; "
                         f"{REWRITE}")
    return meta


def read_table(path: Path, rows: int | None = None) -> dict:
    """One shard's metadata as lists, checked: every column there, equal lengths, known splits and statuses, digests
    that are 64 hex digits or empty. ``rows``: how many rows the shard holds, checked in the file's footer before the
    table is read (a table of other length costs no more than its footer)."""
    _, pq = pyarrow_modules()
    if not path.is_file():
        raise UserError(f"{path} is missing; {REWRITE}")
    try:
        if rows is not None and pq.ParquetFile(path).metadata.num_rows != rows:
            raise UserError(f"{path} holds {pq.ParquetFile(path).metadata.num_rows} rows, not the {rows} its shard "
                             f"should; {REWRITE}")
        table = pq.read_table(path).to_pydict()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - pyarrow raises its own ArrowInvalid / OSError kinds for damaged files
        raise UserError(f"{path} is not a readable parquet file ({one_line(err)}); {REWRITE}") from None
    missing = [c for c in METADATA_COLUMNS if c not in table]
    if missing:
        raise UserError(f"{path} lacks column(s) {missing} (a shard's metadata has {list(METADATA_COLUMNS)}); "
                         f"{REWRITE}")
    if "id_bytes" in table:
        table["id"] = [bytes(b).decode("utf-8", "surrogateescape") for b in table["id_bytes"]]
    lengths = {len(v) for v in table.values()}
    bad_values = (set(table["split"]) - set(SPLITS)) | (set(table["status"]) - set(STATUS_NAMES.values()))
    if len(lengths) > 1 or bad_values or any(not isinstance(y, int) for y in table["label"]):
        raise UserError(f"{path} is damaged (columns of different lengths, unknown split/status values "
                         f"{sorted(map(str, bad_values))[:5]}, or labels that are not integers); {REWRITE}")
    bad = [d for d in table["sha256"] if not isinstance(d, str) or d and not HEX64.fullmatch(d)]
    if bad or any(not isinstance(v, str) for column in ("id", "error") for v in table[column]):
        shown = f" ({one_line(repr(bad[0]))[:80]})" if bad else ""
        raise UserError(f"{path} is damaged: a sha256 value{shown} is not 64 hex digits or empty, or an id or error "
                         f"is not text; {REWRITE}")
    return table


def check_npy(path: Path, shape: tuple) -> None:
    """ValueError naming ``path`` unless it is a readable .npy of numbers with ``shape``."""
    if not path.is_file():
        raise UserError(f"{path} is missing; {REWRITE}")
    try:
        array = np.load(path, mmap_mode="r")  # header only; no pickles (allow_pickle is False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npy array ({one_line(err)}); {REWRITE}") from None
    if array.shape != shape or array.dtype.kind not in "fiu":
        raise UserError(f"{path} holds a {array.dtype} array of shape {array.shape}, expected numbers of shape "
                         f"{shape}; {REWRITE}")
