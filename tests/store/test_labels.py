"""Labels are metadata (store.labels): answers, splits, new classes, undo, history, fingerprints, version 1 stores,
crash safety (a writer killed at every step) and received stores whose label history lies."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from classify import pipeline
from labelstore import SPEC, make_store, make_version_1
from store import FeatureStore
from store.labels import LabelChanges, apply_labels, label_history, undo_last
from store.validation import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_path(tmp_path):
    return make_store(tmp_path / "s.h5")[0]


def state(path):
    with FeatureStore(path) as fs:
        return fs.classes, fs.labels.tolist(), fs.splits.tolist()


def row(path, image_id):
    with FeatureStore(path) as fs:
        k = list(fs.ids).index(image_id)
        label = int(fs.labels[k])
        return (fs.classes[label] if label >= 0 else None), str(fs.splits[k])


def digest(path):
    return Path(path).read_bytes()


# ---------------------------------------------------------------------------------------------- answers and splits
def test_answers_set_labels_and_splits_by_the_rules(store_path):
    changes = apply_labels(store_path, {"unlabeled/cat/3.png": "dog",  # pool -> train
                                        "train/cat/0.png": "fox",  # train keeps its split
                                        "train/dog/0.png": None,  # back to the pool
                                        "test/fox/0.png": "cat",  # test stays test
                                        "test/fox/1.png": "",  # "" is unlabeled too: test, no label
                                        "unlabeled/fox/0.png": None})  # unchanged: not counted
    assert changes == LabelChanges(labels_changed=5, splits_changed=2, classes_added=(), batch=1)
    assert row(store_path, "unlabeled/cat/3.png") == ("dog", "train")
    assert row(store_path, "train/cat/0.png") == ("fox", "train")
    assert row(store_path, "train/dog/0.png") == (None, "unlabeled")
    assert row(store_path, "test/fox/0.png") == ("cat", "test")
    assert row(store_path, "test/fox/1.png") == (None, "test")
    assert row(store_path, "unlabeled/fox/0.png") == (None, "unlabeled")
    assert "batch 1: 5 label(s) and 2 split(s) changed" == changes.summary()


def test_validation_rows_keep_their_split_and_history_names_it(tmp_path):
    path = tmp_path / "v.h5"
    FeatureStore.create(path, ["train/a/0.png", "validation/a/1.png", "unlabeled/2.png"], ["train", "train",
                        "unlabeled"], [0, 0, -1], ["a", "b"]).close()
    apply_labels(path, {"validation/a/1.png": "b"})
    assert row(path, "validation/a/1.png") == ("b", "train")
    apply_labels(path, {"validation/a/1.png": None})
    assert [(h["old_split"], h["new_split"]) for h in label_history(path)] == [("validation", "validation"),
                                                                                ("validation", "unlabeled")]


def test_nothing_changed_records_no_batch(store_path):
    before = digest(store_path)
    assert apply_labels(store_path, {"train/cat/0.png": "cat"}) == LabelChanges(0, 0)
    assert label_history(store_path) == [] and digest(store_path) == before


@pytest.mark.parametrize("answers, add, message", [
    ({"unlabeled/cat/3.png": "dog", "unlabeled/cat/33.png": "dog"}, False,
     "unknown id 'unlabeled/cat/33.png'.*did you mean unlabeled/cat/3.png"),
    ({"cat/3.png": "dog"}, False, "unknown id 'cat/3.png'.*did you mean (unlabeled|test|train)/cat/3.png"),
    ({"unlabeled/cat/3.png": "dgo"}, False, "unknown class 'dgo'.*did you mean dog\\?.*--add-classes"),
    ({"unlabeled/cat/3.png": " owl"}, True, "leading or trailing spaces"),
    ({"unlabeled/cat/3.png": "o\nwl"}, True, "control characters"),
])
def test_bad_answers_are_one_line_and_change_nothing(store_path, answers, add, message):
    before = digest(store_path)
    with pytest.raises(UserError, match=message) as err:
        apply_labels(store_path, answers, add_classes=add)
    assert "\n" not in str(err.value).replace("o\nwl", "")
    assert digest(store_path) == before


def test_add_classes_appends_new_names(store_path):
    changes = apply_labels(store_path, {"unlabeled/cat/3.png": "owl", "unlabeled/dog/3.png": "bat",
                                        "unlabeled/fox/3.png": "owl"}, add_classes=True)
    assert changes.classes_added == ("owl", "bat") and changes.labels_changed == 3
    classes, labels, _ = state(store_path)
    assert classes == ["cat", "dog", "fox", "owl", "bat"]
    assert row(store_path, "unlabeled/dog/3.png") == ("bat", "train")


# ---------------------------------------------------------------------------------------------- undo and history
def test_undo_reverts_batch_by_batch_and_is_recorded(store_path):
    original = state(store_path)
    apply_labels(store_path, {"unlabeled/cat/3.png": "dog"}, source="first")
    after_first = state(store_path)
    apply_labels(store_path, {"unlabeled/cat/3.png": "cat", "train/fox/0.png": None}, source="second")
    assert undo_last(store_path) == LabelChanges(2, 1, (), batch=3, undid=2)  # dog again; fox back to train
    assert state(store_path) == after_first
    assert undo_last(store_path).undid == 1
    assert state(store_path) == original
    with pytest.raises(UserError, match="nothing to undo"):
        undo_last(store_path)
    history = label_history(store_path)
    assert [(h["batch"], h["undoes"], h["source"]) for h in history] == [
        (1, 0, "first"), (2, 0, "second"), (2, 0, "second"), (3, 2, "undo"), (3, 2, "undo"), (4, 1, "undo")]
    first = history[0]
    assert {k: first[k] for k in ("id", "old", "new", "old_split", "new_split")} == {
        "id": "unlabeled/cat/3.png", "old": "", "new": "dog", "old_split": "unlabeled", "new_split": "train"}
    assert first["time"].endswith("Z") and abs(time.time() - _epoch(first["time"])) < 600


def test_undo_after_new_answers_reverts_the_newest(store_path):
    apply_labels(store_path, {"unlabeled/cat/3.png": "dog"})
    undo_last(store_path)
    apply_labels(store_path, {"unlabeled/cat/4.png": "cat"})
    assert undo_last(store_path).undid == 3  # batch 2 was the undo of 1; batch 3 the new answer
    with pytest.raises(UserError, match="nothing to undo"):
        undo_last(store_path)


def test_added_classes_stay_after_undo(store_path):
    apply_labels(store_path, {"unlabeled/cat/3.png": "owl"}, add_classes=True)
    undo_last(store_path)
    assert state(store_path)[0] == ["cat", "dog", "fox", "owl"] and row(store_path, "unlabeled/cat/3.png")[0] is None


def _epoch(iso):
    import datetime

    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------- fingerprints
def test_relabel_keeps_the_rows_fingerprint_and_fitted_models_but_not_the_labels_fingerprint(store_path):
    with FeatureStore(store_path) as fs:
        rows, labels_before = fs.fingerprint, fs.labels_fingerprint
        model = pipeline.fit(fs, [SPEC], "linear")
    apply_labels(store_path, {"unlabeled/cat/3.png": "dog", "train/fox/0.png": "cat"})
    with FeatureStore(store_path, "a") as fs:
        assert fs.fingerprint == rows and fs.labels_fingerprint != labels_before
        model.check_store(fs)  # the model still matches: the rows did not change
        assert fs.begin_backbone(fs.provenance(SPEC) | {"preprocessing": {}, "versions": {}, "view_kinds": []},
                                 6).sum() > 0  # the backbone group still takes the store's rows as its own
    undo_last(store_path)
    with FeatureStore(store_path) as fs:
        assert fs.labels_fingerprint == labels_before


def test_version_1_store_opens_relabels_and_keeps_its_fingerprint(store_path):
    make_version_1(store_path)
    with FeatureStore(store_path) as fs:
        assert fs.version == 1 and label_history(store_path) == []
        fingerprint = fs.fingerprint
        assert fingerprint == fs.labels_fingerprint
        model = pipeline.fit(fs, [SPEC], "linear")
    changes = apply_labels(store_path, {"unlabeled/cat/3.png": "owl"}, add_classes=True)
    assert changes.batch == 1 and changes.classes_added == ("owl",)
    with FeatureStore(store_path) as fs:
        assert fs.version == 2 and fs.fingerprint == fingerprint and fs.classes[-1] == "owl"
        model.check_store(fs)
    undo_last(store_path)
    with FeatureStore(store_path) as fs:
        assert fs.labels_fingerprint != fingerprint  # the class added stays
    assert [h["new"] for h in label_history(store_path)] == ["owl", ""]


def test_results_record_the_label_state_they_were_computed_with(store_path):
    from classify.evaluation import provenance

    with FeatureStore(store_path) as fs:
        before = provenance(fs, [SPEC])
    apply_labels(store_path, {"unlabeled/cat/3.png": "dog"})
    with FeatureStore(store_path) as fs:
        after = provenance(fs, [SPEC])
    assert after["store_fingerprint"] == before["store_fingerprint"]
    assert after["store_labels_fingerprint"] != before["store_labels_fingerprint"]


# ---------------------------------------------------------------------------------------------- cost
def test_an_answer_rewrites_nothing_but_a_few_bytes(store_path):
    """The browser saves every answer at once: no copy of the store, no growth once the history has room."""
    apply_labels(store_path, {"unlabeled/cat/0.png": "cat"})
    inode, size = os.stat(store_path).st_ino, os.stat(store_path).st_size
    before = np.frombuffer(digest(store_path), dtype=np.uint8)
    apply_labels(store_path, {"unlabeled/cat/1.png": "dog"})
    after = np.frombuffer(digest(store_path), dtype=np.uint8)
    assert os.stat(store_path).st_ino == inode and after.size == size
    assert (before != after).sum() < 400  # the entry, the state, two label bytes, a split byte


def test_answers_are_found_by_id_not_by_hash_alone(store_path):
    """The id hash only points at candidate rows: a row whose hash collides (here forged) is not taken for another."""
    with h5py.File(store_path, "a") as f:
        ids = [i.decode() for i in f["images/id"][:]]
        hashes = f["labels/id_hash"][:]
        hashes[ids.index("unlabeled/dog/3.png")] = hashes[ids.index("unlabeled/cat/3.png")]
        f["labels/id_hash"][:] = hashes
    apply_labels(store_path, {"unlabeled/cat/3.png": "fox"})
    assert row(store_path, "unlabeled/cat/3.png") == ("fox", "train")
    assert row(store_path, "unlabeled/dog/3.png") == (None, "unlabeled")
    many = {f"unlabeled/cat/{k}.png": "cat" for k in range(10)} | {f"unlabeled/dog/{k}.png": "dog" for k in range(10)}
    assert apply_labels(store_path, many).labels_changed == 20  # the index path (many answers) agrees


# ---------------------------------------------------------------------------------------------- crash safety
CHILD = textwrap.dedent("""
    import os, sys
    import h5py
    from store.labels import apply_labels, undo_last
    stop_at, action = int(sys.argv[2]), sys.argv[3]
    flushes = {"n": 0}
    original = h5py.File.flush

    def flush(self):
        flushes["n"] += 1
        if flushes["n"] == stop_at:
            os._exit(9)  # killed: nothing more reaches the file, not even what HDF5 still holds in memory
        original(self)

    h5py.File.flush = flush
    if action == "undo":
        undo_last(sys.argv[1])
    else:
        apply_labels(sys.argv[1], {"unlabeled/cat/3.png": action, "train/dog/0.png": None}, add_classes=True)
    sys.exit(0)
""")


def run_child(path, stop_at, action):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CHILD, str(path), str(stop_at), action], env=env, check=False,
                          capture_output=True, text=True, timeout=120)


def consistent(path):
    """The store reads, and its labels are what the data source said with the history replayed."""
    with FeatureStore(path) as fs:
        now = dict(zip(fs.ids.tolist(), zip(fs.labels.tolist(), fs.splits.tolist())))
        names = fs.classes
    with h5py.File(path) as f:
        g = f["labels"][f"g{f['labels/state'][2]}"]
        splits = np.asarray(("train", "unlabeled", "test"))[g["source_split"][:]].tolist()
        replay = dict(zip(now, zip(g["source_label"][:].tolist(), splits)))
    for h in label_history(path):
        replay[h["id"]] = (names.index(h["new"]) if h["new"] else -1, h["new_split"].replace("validation", "train"))
    assert replay == now


@pytest.mark.parametrize("action", ["fox", "owl", "undo"])  # a plain batch, one that adds a class, an undo
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_labels(tmp_path, action):
    pristine = make_store(tmp_path / "pristine.h5")[0]
    if action == "undo":
        apply_labels(pristine, {"unlabeled/cat/3.png": "fox", "train/dog/0.png": None})
    old = state(pristine)
    path = tmp_path / "s.h5"
    path.write_bytes(pristine.read_bytes())
    assert run_child(path, 0, action).returncode == 0
    new = state(path)
    assert new != old
    outcomes = []
    for stop_at in range(1, 40):
        path.write_bytes(pristine.read_bytes())
        killed = run_child(path, stop_at, action)
        now = state(path)  # readable, whatever the step
        assert now in (old, new), f"stopped at flush {stop_at}"
        consistent(path)
        outcomes.append(now == new)
        apply_labels(path, {"unlabeled/fox/3.png": "cat"})  # the next writer finishes or ignores what was left
        consistent(path)
        if killed.returncode == 0:
            break
        assert killed.returncode == 9, killed.stderr
    assert outcomes[0] is False and outcomes[-1] is True and outcomes == sorted(outcomes)  # old, then new for good


def test_a_writer_killed_by_a_signal_mid_batch_leaves_a_readable_store(store_path):
    """Random moments: a child applying answers in a loop is SIGKILLed."""
    script = textwrap.dedent("""
        import sys
        from store.labels import apply_labels
        print("ready", flush=True)
        k = 0
        while True:
            k += 1
            apply_labels(sys.argv[1], {"unlabeled/cat/3.png": ("dog", "fox")[k % 2], "train/dog/0.png": None,
                                       f"unlabeled/dog/{k % 5}.png": f"c{k % 7}"}, add_classes=True)
    """)
    rng = np.random.default_rng(0)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", script, str(store_path)], stdout=subprocess.PIPE,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        consistent(store_path)
    assert len(label_history(store_path)) > 0


# ---------------------------------------------------------------------------------------------- received stores
def crafted(path, change):
    with h5py.File(path, "a") as f:
        change(f)
    return path


def set_state(values):
    def change(f):
        f["labels/state"][:] = np.array(values, dtype=np.int64)
    return change


def swap_dataset(name, data):
    def change(f):
        del f[name]
        f.create_dataset(name, data=data)
    return change


def pending_row(row):
    def change(f):
        log = f["labels/g0/log"]
        entry = log[0:1].copy()
        entry["row"], entry["batch"] = row, 1
        log[0:1] = entry
        f["labels/state"][:] = np.array([1, 0, 0], dtype=np.int64)  # committed, not applied: read on open
    return change


def external_link_in_labels(f):
    f["labels/g0/extra"] = h5py.ExternalLink("/etc/passwd", "/x")


@pytest.mark.parametrize("change, message", [
    (set_state([0, 0, 7]), "names generation 7"),
    (set_state([5000, 0, 0]), "counts 5000 entries"),
    (set_state([0, 1, 0]), "counts 0 entries \\(1 applied\\)"),
    (swap_dataset("labels/state", np.zeros(3, dtype=np.int32)), "labels/state holds int32"),
    (swap_dataset("labels/g0/log", np.zeros(4, dtype=np.int64)), "not a label history"),
    (swap_dataset("labels/g0/source_label", np.zeros(3, dtype=np.int32)), "source_label holds int32 of shape"),
    (swap_dataset("labels/id_hash", np.zeros(3, dtype=np.uint64)), "id_hash holds uint64 of shape"),
    (pending_row(10**6), "damaged"),
    (external_link_in_labels, "external link"),
])
def test_a_received_store_whose_label_history_lies_is_refused_in_one_line(store_path, change, message, capsys):
    from store.cli import main as store_main

    crafted(store_path, change)
    with pytest.raises(SystemExit) as exit_info:
        store_main(["info", str(store_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
