"""Labels are metadata: the one place the labels, splits and classes of an existing store change, with a history.

:func:`apply_labels` sets the label of some images (a batch of answers), :func:`undo_last` reverts the last batch
not undone yet (again and again, batch by batch), :func:`label_history` lists every change. The features never
move: a relabeled store keeps its :attr:`~store.FeatureStore.fingerprint`, so its backbone groups and the models
fitted on it still match it, while :attr:`~store.FeatureStore.labels_fingerprint` tells the label states apart.

Split rules: an unlabeled row that gets a class becomes a train row; a train (or validation) row keeps its split, as
does a test row; back to unlabeled (None), a train or validation row joins the unlabeled pool and a test row stays a
test row without a label.

Every batch is atomic and cheap -- a few small raw writes into the store, never a copy of it (see
:mod:`store.labellog` for how): a process killed at any moment leaves the old labels or the new ones.
"""
from __future__ import annotations

import csv
import datetime
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from store import labellog
from store.h5store import FeatureStore
from store.integrity import reads, writes
from store.layout import SPLITS, display_id, is_validation_id
from store.structure import MAX_CLASSES, check_id_lengths
from store.outputs import read_csv
from store.validation import UserError, close_matches, did_you_mean, one_line

log = logging.getLogger(__name__)

TRAIN, UNLABELED, TEST = (SPLITS.index(s) for s in ("train", "unlabeled", "test"))


@dataclass(frozen=True)
class LabelChanges:
    """What one batch changed.

    Attributes
    ----------
    labels_changed, splits_changed : int
        Rows whose label (split) changed.
    classes_added : tuple of str
        Class names appended to the store's classes.
    batch : int or None
        The batch number in the history; None when nothing changed (no batch was recorded).
    undid : int or None
        For :func:`undo_last`: the batch it reverted.
    """

    labels_changed: int
    splits_changed: int
    classes_added: tuple[str, ...] = ()
    batch: int | None = None
    undid: int | None = None

    def summary(self) -> str:
        """One line saying what changed."""
        if self.batch is None:
            return "no label changed"
        what = f"undid batch {self.undid}: " if self.undid else ""
        added = f", added class(es) {', '.join(self.classes_added)}" if self.classes_added else ""
        return (f"batch {self.batch}: {what}{self.labels_changed} label(s) and {self.splits_changed} split(s) "
                f"changed{added}")


def apply_labels(store_path: str | Path, answers: Mapping[str, str | None], *, source: str = "answers",
                 add_classes: bool = False) -> LabelChanges:
    """Set the label of each image id in ``answers``: a class name, or None (or "") for unlabeled.

    Parameters
    ----------
    store_path : path
        The store (opened for writing for the duration of the call).
    answers : mapping of str to str or None
        Image id (as the store lists it) -> class name.
    source : str
        Who gave the answers, recorded in the history (at most 64 bytes kept).
    add_classes : bool
        Append class names the store does not have yet; without it an unknown class is refused.

    Returns
    -------
    LabelChanges

    Raises
    ------
    UserError
        An unknown id or class (with close matches), or a class name that is not one line of text; nothing changes.
    """
    with FeatureStore(store_path, "a") as fs:
        return _apply(fs, dict(answers), source, add_classes)


@reads
@writes
def _apply(fs: FeatureStore, answers: dict, source: str, add_classes: bool) -> LabelChanges:
    rows = _rows_of(fs, list(answers))
    classes = fs.classes
    wanted = [None if a in (None, "") else str(a) for a in answers.values()]
    added = _new_classes(fs, wanted, classes, add_classes)
    index = {name: k for k, name in enumerate(classes + added)}
    new_label = np.array([-1 if a is None else index[a] for a in wanted], dtype=np.int32)
    labels, splits = writable_state(fs)
    old_split = splits[rows]
    new_split = old_split.copy()
    new_split[(new_label >= 0) & (old_split == UNLABELED)] = TRAIN
    new_split[(new_label < 0) & (old_split == TRAIN)] = UNLABELED
    return commit_rows(fs, labels, splits, rows, new_label, new_split, source, classes + added if added else None)


def undo_last(store_path: str | Path) -> LabelChanges:
    """Revert the last batch that is not undone yet (an undo is a batch of its own, recorded in the history; undoing
    again reverts the batch before, and so on). Classes added by the batch stay.

    Raises
    ------
    UserError
        When there is nothing left to undo.
    """
    with FeatureStore(store_path, "a") as fs:
        return _undo(fs)


@reads
@writes
def _undo(fs: FeatureStore) -> LabelChanges:
    labels, splits = writable_state(fs)
    log = labellog.read_log(fs._f)
    target = _last_active_batch(log)
    if target is None:
        raise UserError(f"nothing to undo in {fs.path}: its label history has no batch left that is not undone")
    entries = log[log["batch"] == target]
    _, first = np.unique(entries["row"], return_index=True)  # each row back to what it was before the batch
    entries = entries[first]
    return commit_rows(fs, labels, splits, entries["row"], entries["old"].astype(np.int32),
                   entries["old_split"].astype(np.uint8), "undo", None, undoes=target)


def undoable(store_path: str | Path) -> list[dict]:
    """The history entries (as :func:`label_history` gives them) of the batch :func:`undo_last` would revert now;
    empty when there is nothing to undo."""
    with FeatureStore(store_path) as fs:
        if fs.version < 2:
            return []
        target = _last_active_batch(labellog.read_log(fs._f))
        return [e for e in _history(fs) if e["batch"] == target] if target is not None else []


def label_history(store_path: str | Path) -> list[dict]:
    """Every label change of a store, oldest first.

    Returns
    -------
    list of dict
        ``id, old, new`` (class names, "" for unlabeled), ``old_split, new_split`` (train, validation, unlabeled,
        test), ``time`` (ISO 8601, UTC), ``source``, ``batch``, ``undoes`` (the batch an undo reverted, else 0).
        Empty for a store that was never relabeled.
    """
    with FeatureStore(store_path) as fs:
        return _history(fs)


@reads
def _history(fs: FeatureStore) -> list[dict]:
    if fs.version < 2:
        return []
    log = labellog.read_log(fs._f)
    names, ids = fs.classes, fs.ids
    out = []
    for e in log:
        image_id = str(ids[e["row"]])
        out.append({"id": image_id, "old": names[e["old"]] if e["old"] >= 0 else "",
                    "new": names[e["new"]] if e["new"] >= 0 else "",
                    "old_split": _split_name(image_id, e["old_split"]),
                    "new_split": _split_name(image_id, e["new_split"]),
                    "time": datetime.datetime.fromtimestamp(float(e["time"]), datetime.timezone.utc)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "source": e["source"].decode("utf-8", "replace"), "batch": int(e["batch"]),
                    "undoes": int(e["undoes"])})
    return out


def read_answers(path: str | Path) -> dict[str, str | None]:
    """Answers from a CSV with a header row naming an ``id`` and a ``label`` column (others are ignored): id -> class
    name, None where the label is empty. Cells are read as the suite writes them (:func:`store.outputs.read_csv`).

    An id on several lines takes its last line's label: the label app's answers CSV (``id,label,time``) logs a
    corrected answer as a later line of the same id. How many ids were answered more than once is logged."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"--labels file {source} does not exist; pass a CSV with the columns id,label")
    try:
        with source.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            rows = read_csv(handle)
    except (csv.Error, UnicodeError) as err:
        raise UserError(f"--labels file {source} is not a readable CSV ({one_line(err)})") from None
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "id" not in header or "label" not in header:
        raise UserError(f"--labels file {source} has no header row naming the columns id and label (its first row is "
                        f"{','.join(rows[0])[:80] if rows else 'empty'!r}); write `id,label` as its first line")
    at, label_at = header.index("id"), header.index("label")
    answers: dict[str, str | None] = {}
    again: set[str] = set()
    for line, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) <= max(at, label_at):
            raise UserError(f"--labels file {source} line {line} has {len(cells)} cell(s), fewer than its header")
        image_id, label = cells[at], cells[label_at] or None
        if image_id in answers:
            again.add(image_id)
        answers[image_id] = label
    if not answers:
        raise UserError(f"--labels file {source} lists no answers; expected rows id,label after its header")
    if again:
        log.info("%s: %d id(s) answered more than once; the last answer of each is taken", source, len(again))
    return answers


# ---------------------------------------------------------------------------------------------------- helpers
def _split_name(image_id: str, split: int) -> str:
    """A split's name as ``store info`` counts it: validation/ rows are train rows shown as validation."""
    name = SPLITS[int(split)]
    return "validation" if name == "train" and is_validation_id(image_id) else name


def _rows_of(fs: FeatureStore, ids: list) -> np.ndarray:
    """Store rows of ``ids``; UserError naming the first unknown one, with close matches.

    A few answers (the browser saves each one at once) are found by their id hash and checked by reading only the
    rows it points at: reading every id of a 100k-image store would cost far more than the answer."""
    ids = [str(i) for i in ids]
    if len(ids) <= 16 and fs.version >= 2 and "id" not in fs._cache:
        hashes, dataset = fs._f[f"{labellog.GROUP}/id_hash"][:], fs._f["images/id"]
        check_id_lengths(dataset, fs.path)  # their lengths bounded before one is read, as FeatureStore.ids does
        rows = []
        for image_id, h in zip(ids, labellog.id_hashes(ids)):
            hits = [int(r) for r in np.flatnonzero(hashes == h)
                    if dataset[int(r)].decode("utf-8", "surrogateescape") == image_id]
            rows.append(hits[0] if hits else -1)
    else:
        index = {image_id: row for row, image_id in enumerate(fs.ids.tolist())}
        rows = [index.get(i, -1) for i in ids]
    if -1 in rows:
        known = fs.ids
        missing = ids[rows.index(-1)]
        raise UserError(f"unknown id {display_id(missing)!r}: {fs.path} lists no such image; "
                        f"{_id_suggestion(missing, known)}give ids as `python -m store info` and predictions.csv "
                        "name them (paths relative to the data folder)")
    return np.array(rows, dtype=np.int64)


def _id_suggestion(missing: str, known: np.ndarray) -> str:
    """Did-you-mean for an unknown id: ids of the same file name first (a file moved), else close matches."""
    base = missing.rsplit("/", 1)[-1]
    same = [i for i in known.tolist() if i.rsplit("/", 1)[-1] == base][:3]
    if same:
        return f"did you mean {', '.join(display_id(i) for i in same)}? "
    return did_you_mean(missing, known.tolist()[:100_000], show=display_id)


def _new_classes(fs: FeatureStore, wanted: list, classes: list[str], add_classes: bool) -> list[str]:
    """Class names of ``wanted`` the store lacks, in order of first appearance; refused unless ``add_classes``."""
    have = set(classes)
    added = list(dict.fromkeys(a for a in wanted if a is not None and a not in have))
    if added and not add_classes:
        close = close_matches(added[0], classes)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown class {added[0]!r}: {fs.path} has classes {', '.join(classes)[:300]}; {hint}"
                        "pass --add-classes to add it")
    for name in added:
        if name != name.strip() or any(unicodedata.category(c).startswith("C") for c in name):
            raise UserError(f"class name {name!r} has leading or trailing spaces or control characters; a class is "
                            "one line of text, as a folder name is")
    if len(classes) + len(added) > MAX_CLASSES:
        raise UserError(f"a store holds at most {MAX_CLASSES} classes")
    return added


def writable_state(fs: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """The current labels and splits (copies, as class and split indices), after giving a version-1 store its
    history and finishing what a stopped writer left pending."""
    f = fs._f
    if fs.version < 2:
        labels, splits = fs._label_state()
        labellog.create_label_group(f, fs.ids, fs.classes, labels, splits)
        fs._forget_labels()
    labels, splits = (a.copy() for a in fs._label_state())
    labellog.finish_pending(f, labels, splits)
    labellog.drop_debris(f)
    return labels, splits


def _last_active_batch(log: np.ndarray) -> int | None:
    """The last batch that no later undo reverted (undos stack: each reverts the last active batch)."""
    active: list[int] = []
    for batch in dict.fromkeys(log["batch"].tolist()):
        undoes = int(log["undoes"][np.argmax(log["batch"] == batch)])
        if undoes:
            if undoes in active:
                active.remove(undoes)
        else:
            active.append(batch)
    return active[-1] if active else None


def commit_rows(fs: FeatureStore, labels: np.ndarray, splits: np.ndarray, rows: np.ndarray, new_label: np.ndarray,
                new_split: np.ndarray, source: str, classes: list[str] | None, undoes: int = 0,
                source_labels: tuple[np.ndarray, np.ndarray] | None = None) -> LabelChanges:
    """Record and apply the rows that change, with new ``classes`` and new source labels ``(label, split)`` when
    given; a batch that changes nothing (no row, class or source label) is not recorded. ``labels`` and ``splits``
    are the current state (:func:`writable_state`), updated in place."""
    order = np.argsort(rows, kind="stable")
    rows, new_label, new_split = rows[order], new_label[order], new_split[order]
    old_label, old_split = labels[rows], splits[rows]
    changed = (old_label != new_label) | (old_split != new_split)
    if not changed.any() and classes is None and source_labels is None:
        return LabelChanges(0, 0)
    rows, old_label, old_split = rows[changed], old_label[changed], old_split[changed]
    new_label, new_split = new_label[changed], new_split[changed]
    log_size = int(labellog.read_state(fs._f)[labellog.COMMITTED])
    last = labellog.current_group(fs._f)["log"][log_size - 1]["batch"] if log_size else 0
    batch = int(last) + 1
    entries = labellog.batch_entries(rows, old_label, new_label, old_split, new_split, batch, source, undoes)
    labels[rows], splits[rows] = new_label, new_split
    added = tuple(classes[len(fs.classes):]) if classes is not None else ()
    labellog.commit(fs._f, entries, labels, splits, classes=classes, source=source_labels)
    fs._forget_labels()
    return LabelChanges(int((old_label != new_label).sum()), int((old_split != new_split).sum()), added, batch,
                        undoes or None)
