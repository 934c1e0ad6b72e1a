"""Bring an existing store in line with its data source again (``embed run`` rerun on the same folder or list) without
embedding again what it holds: labels are metadata, features are facts about content.

- Same ids in the same order (labels changed in a CSV list or ``metadata.csv``): labels, splits and classes change in
  place, as one batch of the label history (source ``embed run``; :mod:`store.labels`).
- Other ids (files moved between ``train/<class>/``, ``unlabeled/``, ``test/``, ``validation/``; files added or
  removed): the store is rebuilt beside itself and renamed over (atomic: a kill leaves the old store). Each row of
  every backbone group (features, views, probabilities, the ``done`` flag) and its status is copied from a row of the
  old store with the same content (sha256 of the file's bytes); rows of new content stay to be embedded. The label
  history follows the files (by id, else by content).

Answers survive: a row keeps the label it has now (given with ``store label`` or the browser) unless the source now
says something different for that file than it said at the last run -- what the source said is kept apart
(``/labels/g*/source_label``) for that comparison. New class names are appended to the store's classes (never
reordered, so CLIP text embeddings of the old ones stay valid; the run embeds the new ones).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from store import labellog
from store.atomic import atomic_write
from store.h5store import FeatureStore
from store.labels import commit_rows, writable_state
from store.layout import OK, PENDING, SPLITS, display_id, selector, short
from store.reading import read_rows
from store.validation import UserError

log = logging.getLogger(__name__)

SOURCE = "embed run"
#: rows copied per step when a store is rebuilt (memory stays bounded whatever its size)
COPY_ROWS = 4096


@dataclass(frozen=True)
class SyncSummary:
    """What bringing a store in line with its source changed.

    Attributes
    ----------
    relabeled, resplit : int
        Rows whose label (split) changed.
    added, removed : int
        Rows of files new to the store (neither their id nor their content was in it), rows of files gone.
    moved : int
        Rows found by content under another id (their features were reused).
    answers_kept : int
        Rows whose label differs from what the source says: answers given since the last run, kept.
    classes_added : tuple of str
    rebuilt : bool
        Whether the store was rebuilt (ids changed) rather than updated in place.
    """

    relabeled: int = 0
    resplit: int = 0
    added: int = 0
    removed: int = 0
    moved: int = 0
    answers_kept: int = 0
    classes_added: tuple[str, ...] = ()
    rebuilt: bool = False

    def line(self) -> str:
        """One line of what changed."""
        if not (self.relabeled or self.resplit or self.added or self.removed or self.moved or self.classes_added):
            return "unchanged" + (f"; {self.answers_kept} label(s) given since the last run kept"
                                  if self.answers_kept else "")
        text = (f"{self.relabeled} row(s) changed label, {self.resplit} split; {self.added} added, {self.removed} "
                f"removed, {self.moved} found by content under a new name (features reused)")
        if self.classes_added:
            text += f"; new class(es) {', '.join(self.classes_added)}"
        if self.answers_kept:
            text += f"; {self.answers_kept} label(s) given since the last run kept"
        return text


def sync_store(path: str | Path, ids: Sequence[str], splits: Sequence[str], labels: np.ndarray,
               classes: Sequence[str], root: str | Path, digests: Callable[[], list[str | None]]) -> SyncSummary:
    """Update the store at ``path`` (which exists) to the image list ``ids, splits, labels, classes`` of the data
    folder ``root``; ``digests()`` gives the sha256 of every listed file (None: unreadable), asked for only when ids
    changed. A store of another data folder whose ids differ is refused, untouched."""
    path = Path(path)
    with FeatureStore(path) as old:
        same_ids = len(old) == len(ids) and list(old.ids) == list(ids)
        if not same_ids:
            _check_same_folder(old, root, ids)
    if same_ids:
        with FeatureStore(path, "a") as fs:
            return _update_in_place(fs, splits, labels, classes)
    return _rebuild(path, list(ids), splits, labels, classes, root, digests())


def _check_same_folder(old: FeatureStore, root: str | Path, ids: Sequence[str]) -> None:
    """Refuse to rebuild a store from the files of another data folder (it would drop every row it holds)."""
    recorded = old.root
    if recorded and os.path.abspath(recorded) == os.path.abspath(root):
        return
    raise UserError(f"store {old.path} was built from a different image list ({len(old)} images of the data folder "
                    f"{display_id(recorded) or '(unknown)'}, classes {short(old.classes)}; this run lists {len(ids)} "
                    f"of {display_id(str(root))}); use a new --store path for this data")


def _source_state(fs: FeatureStore, splits: Sequence[str], labels: np.ndarray,
                  classes: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The store's classes with the source's new ones appended, and the source's labels and splits as indices of
    those classes and of SPLITS."""
    have = fs.classes
    merged = have + [c for c in classes if c not in have]
    index = np.array([merged.index(c) for c in classes] + [-1], dtype=np.int32)  # -1 stays -1
    labels = np.asarray(labels, dtype=np.int64)
    return merged, index[np.where(labels >= 0, labels, len(classes))], labellog.split_index(list(splits))


def _update_in_place(fs: FeatureStore, splits, labels, classes) -> SyncSummary:
    current_label, current_split = writable_state(fs)
    group = labellog.current_group(fs._f)
    said_label, said_split = group["source_label"][:], group["source_split"][:]
    merged, src_label, src_split = _source_state(fs, splits, labels, classes)
    added = merged[len(fs.classes):]
    differs = (src_label != said_label) | (src_split != said_split)  # the source changed its mind about these
    if not differs.any() and not added:
        return SyncSummary(answers_kept=_kept(current_label, current_split, src_label, src_split))
    rows = np.flatnonzero(differs)
    changes = commit_rows(fs, current_label, current_split, rows, src_label[rows], src_split[rows], SOURCE,
                          merged if added else None, source_labels=(src_label, src_split))
    return SyncSummary(relabeled=changes.labels_changed, resplit=changes.splits_changed,
                       answers_kept=_kept(current_label, current_split, src_label, src_split),
                       classes_added=tuple(added))


def _kept(label: np.ndarray, split: np.ndarray, src_label: np.ndarray, src_split: np.ndarray) -> int:
    return int(((label != src_label) | (split != src_split)).sum())


@dataclass
class _Plan:
    """How the rows of a rebuilt store come from the old one."""

    match: np.ndarray  # (N,) old row of the same file (same id, else same content), -1 for a new file
    content: np.ndarray  # (N,) old row with the same bytes whose status is known, -1 for none
    sha256: list  # (N,) digest of every file ("" unreadable)


def _plan(old: FeatureStore, ids: list[str], sha256: list[str | None]) -> _Plan:
    """Which old row each listed file is: the same id with the same bytes (or never read), else the same bytes under
    another id (a file moved), else the same id (a file changed in place); and which old row holds its content."""
    old_ids, old_sha, status = old.ids.tolist(), old.sha256, old.status
    digests = [s or "" for s in sha256]
    by_id = {image_id: row for row, image_id in enumerate(old_ids)}
    at = np.array([by_id.get(i, -1) for i in ids], dtype=np.int64)
    match = np.full(len(ids), -1, dtype=np.int64)
    same = np.flatnonzero(at >= 0)
    same = same[[old_sha[at[k]] in ("", digests[k]) for k in same]]
    match[same] = at[same]
    free: dict[str, list[int]] = {}  # old rows not matched yet, by content
    for row in sorted(set(range(len(old_ids))) - set(match[same].tolist()), reverse=True):
        if old_sha[row]:
            free.setdefault(old_sha[row], []).append(row)
    for k in np.flatnonzero(match < 0):
        rows = free.get(digests[k])
        if digests[k] and rows:
            match[k] = rows.pop()
    taken = set(match[match >= 0].tolist())
    for k in np.flatnonzero((match < 0) & (at >= 0)):
        if at[k] not in taken:
            match[k] = at[k]
            taken.add(int(at[k]))
    known: dict[str, int] = {}  # content -> an old row that read it (an ok row first)
    for row in np.flatnonzero(status != PENDING)[np.argsort(status[status != PENDING] != OK, kind="stable")]:
        known.setdefault(old_sha[row], int(row))
    content = np.array([known.get(d, -1) if d else -1 for d in digests], dtype=np.int64)
    return _Plan(match, content, digests)


def _rebuild(path: Path, ids: list[str], splits, labels, classes, root, sha256: list[str | None]) -> SyncSummary:
    with atomic_write(path) as tmp:
        with FeatureStore(path) as old:
            plan = _plan(old, ids, sha256)
            merged, src_label, src_split = _source_state(old, splits, labels, classes)
            label, split = _carried_labels(old, plan.match, src_label, src_split)
            names = old.display_names + [c.replace("_", " ") for c in merged[len(old.classes):]]
            FeatureStore.create(tmp, ids, [SPLITS[s] for s in split], label, merged, root=root,
                                display_names=names).close()
            with FeatureStore(tmp, "a") as new:
                _copy_rows(old, new, plan)
                _copy_history(old, new, plan.match, src_label, src_split)
            old_ids = old.ids
            old_label, old_split = old._label_state()
            n_old, old_classes = len(old), old.classes
    matched = plan.match >= 0
    by_content = matched & (old_ids[np.maximum(plan.match, 0)] != np.asarray(ids, dtype=old_ids.dtype))
    return SyncSummary(relabeled=int((old_label[plan.match[matched]] != label[matched]).sum()),
                       resplit=int((old_split[plan.match[matched]] != split[matched]).sum()),
                       added=int((~matched).sum()), removed=n_old - int(matched.sum()), moved=int(by_content.sum()),
                       answers_kept=_kept(label, split, src_label, src_split),
                       classes_added=tuple(merged[len(old_classes):]), rebuilt=True)


def _carried_labels(old: FeatureStore, match: np.ndarray, src_label: np.ndarray,
                    src_split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each new row's label and split: the old row's current ones where the source says of it what it said at the
    last run (answers given since survive), else what the source says now."""
    cur_label, cur_split = old._label_state()
    said_label, said_split = _said(old)
    label, split = src_label.copy(), src_split.copy()
    m = match >= 0
    same = np.zeros(match.size, dtype=bool)
    same[m] = (said_label[match[m]] == src_label[m]) & (said_split[match[m]] == src_split[m])
    label[same], split[same] = cur_label[match[same]], cur_split[match[same]]
    return label.astype(np.int32), split.astype(np.uint8)


def _said(fs: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """What the source said of every row at the last run (a version-1 store: its labels, which never changed)."""
    if fs.version < 2:
        return fs._label_state()
    group = labellog.current_group(fs._f)
    return group["source_label"][:], group["source_split"][:]


def _copy_rows(old: FeatureStore, new: FeatureStore, plan: _Plan) -> None:
    """Every backbone group of ``old`` in ``new``, with each row's data copied from the old row of the same content;
    text embeddings and the classifier head as they are."""
    src = plan.content
    have = src >= 0
    img_old, img_new = old._f["images"], new._f["images"]
    for name in ("status", "sha256", "error"):
        values = img_old[name][:]
        out = np.zeros(len(new), dtype=values.dtype)
        out[have] = values[src[have]]
        img_new[name][:] = out
    for spec in old.backbones:
        g_old = old._group(spec)
        prov = old.provenance(spec)
        prob_classes = _prob_classes(g_old)
        new.begin_backbone(prov, int(prov["dim"]), prob_classes=prob_classes)
        g_new = new._group(spec)
        done_old = g_old["done"][:]
        done = np.zeros(len(new), dtype=bool)
        done[have] = done_old[src[have]]
        names = [n for n in ("features", "views", "probs") if n in g_old]
        for start in range(0, len(new), COPY_ROWS):
            take = np.flatnonzero(done[start:start + COPY_ROWS]) + start  # increasing new rows
            if take.size:
                unique, inverse = np.unique(src[take], return_inverse=True)  # increasing old rows
                for name in names:
                    g_new[name][selector(take)] = _read(g_old[name], unique)[inverse]
        new._f.flush()
        g_new["done"][:] = done
        if "text" in g_old and "templates" in g_old["text"].attrs:
            text = g_new.create_dataset("text", data=g_old["text"][:])  # (C_old, T, D): a rerun embeds new classes
            text.attrs.update(dict(g_old["text"].attrs))
        head = old.head(spec)
        if head is not None:
            new.set_head(spec, *head)
        new._f.flush()


def _read(dataset, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (increasing) of a dataset: one contiguous read when they lie close together, else a selection."""
    if rows[-1] - rows[0] < 4 * rows.size:
        return read_rows(dataset, rows)
    return dataset[rows]


def _prob_classes(group) -> list[str] | None:
    return json.loads(group["probs"].attrs["classes"]) if "probs" in group else None


def _copy_history(old: FeatureStore, new: FeatureStore, match: np.ndarray, src_label: np.ndarray,
                  src_split: np.ndarray) -> None:
    """The old history, for the files still here (rows renumbered), then this run's changes as one batch; the
    source labels of the new store are what the source says now."""
    f = new._f
    group = labellog.current_group(f)
    group["source_label"][:] = src_label
    group["source_split"][:] = src_split
    entries = labellog.read_log(old._f) if old.version >= 2 else np.empty(0, labellog.LOG_DTYPE)
    renumber = np.full(len(old), -1, dtype=np.int64)
    renumber[match[match >= 0]] = np.flatnonzero(match >= 0)
    entries = entries[renumber[entries["row"]] >= 0]
    entries["row"] = renumber[entries["row"]]
    labels, splits = (a.copy() for a in new._label_state())
    if entries.size:
        labellog.commit(f, entries, labels, splits)
    old_label, old_split = old._label_state()
    m = np.flatnonzero(match >= 0)
    changed = m[(old_label[match[m]] != labels[m]) | (old_split[match[m]] != splits[m])]
    if changed.size:
        last = int(entries["batch"].max()) if entries.size else 0
        run = labellog.batch_entries(changed, old_label[match[changed]], labels[changed], old_split[match[changed]],
                                     splits[changed], last + 1, SOURCE)
        labellog.commit(f, run, labels, splits)
