"""One labeling session: the current batch, answers, skips and audit decisions, over a store kept in memory.

Every answer is saved the moment it is given, in this order: a line appended to the answers CSV and forced to disk,
then the store (:func:`store.labels.apply_labels`), then the state file. A kill between any two leaves nothing lost:
on the next start, answer lines the store has not taken yet are applied again (the state file counts the lines it
has taken), and the batch continues without the images already answered. When every image of a batch is answered or
skipped, the worker thread picks the next batch (``suggest``'s pick with the method fitted on every label so far) and
then measures the method's cross-validated accuracy; answering never waits for either.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from classify.labeling.app import jobs
from classify.labeling.app.data import StoreData
from classify.labeling.app.journal import AnswersLog, SessionState, cache_folder, default_answers, now
from classify.pages import thumbnail
from store.integrity import open_error
from store.layout import display_id
from store.outputs import check_output
from store.validation import UserError, one_line

log = logging.getLogger(__name__)

#: pixels of the longer side of the thumbnails the page shows (large enough to judge; cached by content)
THUMB_SIDE = 384
#: what the page says while a job runs
BUSY = {"pick": "choosing the next batch (refitting on every label so far)", "accuracy": "cross-validating",
        "audit": "auditing the labels (out-of-fold fits)"}
#: the source the store's label history records for answers given here
SOURCE = "classify label"


class StoreRefused(UserError):
    """The store did not take an answer (another process holds it, a full disk): nothing was saved."""


class LabelSession:
    """A labeling session over one store.

    Parameters
    ----------
    store : str or Path
        The feature store; answers are written into it.
    backbone : str, optional
        Backbone spec (default: the store's only backbone).
    method : str
        The method that picks batches and whose accuracy is shown (default auto).
    batch : int
        Images per batch.
    answers : str or Path, optional
        The answers CSV (default ``<store stem>.answers.csv`` beside the store).
    seed : int
        Seeds the picks and the cross-validation folds.
    params : dict, optional
        The method's parameters.
    """

    def __init__(self, store: str | Path, backbone: str | None = None, method: str = "auto", batch: int = 12,
                 answers: str | Path | None = None, seed: int = 0, params: dict | None = None):
        answers = check_output(default_answers(store) if answers is None else answers, "--answers",
                               inputs={"--store": store})
        self.data = StoreData(store, backbone)
        self.method, self.params, self.batch_size, self.seed = method, dict(params or {}), int(batch), int(seed)
        self.folder = cache_folder(store)
        self.state_path = self.folder / "state.json"
        self.log = AnswersLog(answers)
        self.state = SessionState.load(self.state_path)
        self.version = 0  # answers given since the start: snapshots and audits are tagged with it
        self.error: dict | None = None
        self.audit_result: dict | None = None
        self._picking = False
        self._counted: tuple | None = None
        self._undo_cache: tuple | None = None
        self._lock = threading.RLock()
        self._replay()
        self._restore_batch()
        self.worker = jobs.Worker(self._job_failed)
        if self.batch_open() is None:
            self._next_batch()

    # ------------------------------------------------------------------ saving answers
    def _write_store(self, answers: dict[str, str], add_classes: bool) -> None:
        from store.labels import apply_labels  # the one place labels of an existing store change

        apply_labels(self.data.path, answers, source=SOURCE, add_classes=add_classes)

    def _replay(self) -> None:
        """Apply the answer lines the store has not taken (a kill between the CSV and the store)."""
        rows = self.log.rows()
        if self.state.answers != str(self.log.path):  # another CSV than last time: its lines were never ours to count
            self.state.answers, self.state.applied = str(self.log.path), len(rows)
        missing = {}
        for image_id, label, _ in rows[self.state.applied:]:
            if image_id in self.data.position:
                missing[image_id] = label
            else:
                log.warning("%s: answer for %s skipped: the store has no such image", self.log.path,
                            display_id(image_id))
        if missing:
            log.info("applying %d answers the store had not taken yet (from %s)", len(missing), self.log.path)
            self._write_store(missing, add_classes=True)
            for image_id, label in missing.items():
                self.data.set_label(self.data.position[image_id], label)
        self.state.applied = len(rows)
        self._save()

    def answer(self, image_id, label, new_class: bool = False) -> dict:
        """Label one image (any decoded pool or train image; ``new_class`` adds a class the store lacks) and save it
        in the CSV and the store before returning :meth:`view`. A UserError for an unknown id or class changes
        nothing."""
        with self._lock:
            i = self.data.find(image_id)
            _, added = self.data.class_index(label, bool(new_class))
            before = self.log.append(image_id, label, now())
            try:
                self._write_store({image_id: label}, added)
            except (UserError, OSError) as err:
                self.log.truncate(before)  # the store refused it (in use, full disk): the CSV must not claim it
                if isinstance(err, OSError) and "unable to lock file" in str(err):
                    err = open_error(self.data.path, err)  # held by another process: say so, and the fix
                raise StoreRefused(f"not saved: {one_line(err)}") from None
            except BaseException:
                self.log.truncate(before)
                raise
            self.data.set_label(i, label)
            self.state.applied = self.log.count
            self.version += 1
            self._mark(image_id, answer=label)
            self._save()
            return self.view()

    def undo(self) -> dict:
        """Revert this app's last answer not undone yet (:func:`store.labels.undo_last`): the answers CSV first gets a
        line giving the image the label it had before (empty: unlabeled again), so a restart's replay leaves it
        undone; the image is open again in its batch. A UserError when the store's last change is not an answer
        given here (another tool's change is undone with ``python -m store label --undo``) or nothing is left."""
        from store.labels import undo_last, undoable

        with self._lock:
            entries = undoable(self.data.path)
            if not entries:
                raise UserError("nothing to undo: the store's label history has no answer left that is not undone")
            if entries[0]["source"] != SOURCE or len(entries) != 1:
                raise UserError(f"the store's last change was made by {entries[0]['source']!r}, not by an answer "
                                f"here; undo it with `python -m store label --store {self.data.path} --undo`")
            image_id, old = entries[0]["id"], entries[0]["old"]
            before = self.log.append(image_id, old, now())
            try:
                undo_last(self.data.path)
            except (UserError, OSError) as err:
                self.log.truncate(before)
                if isinstance(err, OSError) and "unable to lock file" in str(err):
                    err = open_error(self.data.path, err)
                raise StoreRefused(f"not undone: {one_line(err)}") from None
            i = self.data.position[image_id]
            self.data.labels[i] = self.data.classes.index(old) if old else -1
            self.data.splits[i] = "unlabeled" if entries[0]["old_split"] == "unlabeled" else self.data.splits[i]
            self.state.applied = self.log.count
            self.version += 1
            for item in self.state.batch:
                if item["id"] == image_id:
                    item["answer"], item["skipped"] = None, False
            self._save()
            return self.view()

    def skip(self, image_id) -> dict:
        """Leave an image unlabeled and out of later batches (kept across restarts); returns :meth:`view`."""
        with self._lock:
            self.data.find(image_id)
            if image_id not in self.state.skipped:
                self.state.skipped.append(image_id)
            self._mark(image_id, skipped=True)
            self._save()
            return self.view()

    def keep(self, image_id) -> dict:
        """Keep a label the audit suspects (it is not shown again); returns :meth:`audit_page`'s first page."""
        with self._lock:
            self.data.find(image_id)
            if image_id not in self.state.kept:
                self.state.kept.append(image_id)
            self._save()
            return self.audit_page()

    def _save(self) -> None:
        self.state.save(self.state_path)

    # ------------------------------------------------------------------ batches
    def batch_open(self) -> list[dict] | None:
        """The items of the current batch when some are still unanswered, else None."""
        items = self.state.batch
        return items if any(not (it.get("answer") or it.get("skipped")) for it in items) else None

    def _restore_batch(self) -> None:
        """The saved batch without images the store no longer has; images labeled meanwhile count as answered."""
        kept = []
        for item in self.state.batch:
            i = self.data.position.get(item.get("id"))
            if i is None:
                continue
            if not item.get("answer") and self.data.splits[i] != "unlabeled":
                item["answer"] = self.data.classes[int(self.data.labels[i])] if self.data.labels[i] >= 0 else None
                item["skipped"] = item["answer"] is None
            kept.append(item)
        self.state.batch = kept

    def _mark(self, image_id: str, answer: str | None = None, skipped: bool = False) -> None:
        """Record an answer or skip on the batch item of ``image_id``; the last one closes the batch."""
        was_open = self.batch_open() is not None
        for item in self.state.batch:
            if item["id"] == image_id:
                item["answer"], item["skipped"] = answer, skipped and not answer
        if answer and image_id in self.state.skipped:
            self.state.skipped.remove(image_id)
        if was_open and self.batch_open() is None:
            self._next_batch()

    def snapshot(self) -> jobs.Snapshot:
        """The labels now, for a job."""
        candidates = self.data.pool()
        for image_id in self.state.skipped:
            i = self.data.position.get(image_id)
            if i is not None:
                candidates[i] = False
        return jobs.Snapshot(X=self.data.X, y=self.data.fit_labels(), candidates=candidates, keys=self.data.keys,
                             classes=list(self.data.classes), context=dict(self.data.context), version=self.version)

    def _next_batch(self) -> None:
        """Ask the worker for the next batch, then for the accuracy on the labels it was picked with."""
        if self._picking:
            return
        self._picking = True
        snap = self.snapshot()
        completed = self.state.batch_number

        def picked(result) -> None:
            items, note, estimator = result
            with self._lock:
                self._picking = False
                self.state.batch_number += 1 if items else 0
                self.state.batch = [{"id": str(self.data.ids[it["pos"]]), "predicted": it["predicted"],
                                     "score": it["score"], "reason": it["reason"], "answer": None, "skipped": False}
                                    for it in items]
                self.state.batch_note = note
                self._save()
            self.worker.submit("accuracy", lambda: jobs.accuracy(snap, estimator, self.method, self.params, self.seed),
                               lambda result: self._measured(result, completed))

        self.worker.submit("pick", lambda: jobs.pick_batch(snap, self.method, self.params, self.batch_size,
                                                           self.seed + completed), picked)

    def _measured(self, result: dict, completed: int) -> None:
        """Record the accuracy after ``completed`` batches, with its change since the last measured one."""
        with self._lock:
            history = self.state.accuracy
            if history and history[-1]["labels"] == result["labels"] and history[-1]["batch"] == completed:
                return  # a restart measured the same labels again
            previous = next((h["accuracy"] for h in reversed(history) if h["accuracy"] is not None), None)
            change = None if result["accuracy"] is None or previous is None else result["accuracy"] - previous
            history.append({"batch": completed, **result, "change": change, "time": now()})
            self._save()

    def _job_failed(self, name: str, message: str) -> None:
        with self._lock:
            if name == "pick":
                self._picking = False
            if name == "audit":
                self.audit_result = {"error": message, "version": self.version}
            self.error = {"job": name, "message": message}

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the worker is idle (tests and benchmarks); a TimeoutError after ``timeout`` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while self.worker.busy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the labeling worker is still busy after {timeout} s: {self.worker.busy()}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ audit
    def audit_page(self, offset: int = 0, limit: int = 24, refresh: bool = False) -> dict:
        """One page of the audit's suspects still to decide (not kept, not fixed since); the audit runs in the
        background the first time (and again with ``refresh``)."""
        with self._lock:
            running = "audit" in self.worker.busy()
            if (self.audit_result is None or refresh) and not running:
                snap = self.snapshot()
                self.worker.submit("audit", lambda: jobs.audit(snap, self.method, self.params, self.seed),
                                   self._audited)
                running = True
            result = self.audit_result or {}
            if running or "items" not in result:
                return {"status": "running" if running else "error", "error": result.get("error"), "total": 0,
                        "offset": 0, "items": [], "note": ""}
            open_items = [it for it in result["items"] if self._still_suspect(it)]
            page = open_items[max(0, offset):max(0, offset) + max(1, limit)]
            return {"status": "ready", "error": None, "total": len(open_items), "offset": max(0, offset),
                    "note": result["note"], "items": [self._audit_item(it) for it in page]}

    def _audited(self, result: dict) -> None:
        with self._lock:
            self.audit_result = result

    def _still_suspect(self, item: dict) -> bool:
        image_id = str(self.data.ids[item["pos"]])
        label = self.data.labels[item["pos"]]
        return image_id not in self.state.kept and label >= 0 and self.data.classes[int(label)] == item["given"]

    def _audit_item(self, item: dict) -> dict:
        i = item["pos"]
        return {"id": str(self.data.ids[i]), "thumb": f"/thumb/{int(self.data.rows[i])}", "given": item["given"],
                "suggested": item["suggested"], "score": item["score"]}

    # ------------------------------------------------------------------ what the page shows
    def view(self) -> dict:
        """Everything the page shows, JSON-able: classes with their label counts, the batch, the accuracy history,
        what the worker is doing and its last error."""
        with self._lock:
            counts, pool = self._summary()
            items = [{**item, "thumb": f"/thumb/{int(self.data.rows[self.data.position[item['id']]])}"}
                     for item in self.state.batch]
            busy = [BUSY[name] for name in self.worker.busy()]
            return {"store": str(self.data.path), "answers": str(self.log.path), "method": self.method,
                    "backbone": self.data.spec,
                    "classes": [{"name": name, "count": int(n)} for name, n in zip(self.data.classes, counts)],
                    "labels": int(counts.sum()), "pool": int(pool), "skipped": len(self.state.skipped),
                    "batch": {"number": self.state.batch_number, "note": self.state.batch_note, "items": items},
                    "busy": busy[0] if busy else None, "error": self.error, "accuracy": self.state.accuracy,
                    "version": self.version, "undo": self._undo_preview()}

    def _undo_preview(self) -> dict | None:
        """The answer the undo button would revert (``id``, ``label``), or None; read from the store's history once
        per answer or undo (the page asks every second)."""
        from store.labels import undoable

        if self._undo_cache is None or self._undo_cache[0] != self.version:
            entries = undoable(self.data.path)
            preview = ({"id": entries[0]["id"], "label": entries[0]["new"]}
                       if len(entries) == 1 and entries[0]["source"] == SOURCE else None)
            self._undo_cache = (self.version, preview)
        return self._undo_cache[1]

    def _summary(self) -> tuple:
        """Labels per class and images left to label: whole-store counts, made again only after a change (the
        page polls every second)."""
        key = (self.version, len(self.state.skipped), len(self.data.classes))
        if self._counted is None or self._counted[0] != key:
            self._counted = (key, self.data.counts(), int(self.snapshot().candidates.sum()))
        return self._counted[1:]

    def thumbnail(self, row: int) -> Path | None:
        """The JPEG thumbnail of store row ``row`` (made on first request, cached by content beside the store), or
        None when the file cannot be read as an image. A UserError for a row that is not a decoded image."""
        i = self.data.row_position.get(int(row))
        if i is None:
            raise UserError(f"no decoded image at row {row}")
        link = thumbnail(self.data.image_file(i), self.folder, side=THUMB_SIDE)
        return None if link is None else self.folder / link

