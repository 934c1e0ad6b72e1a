"""`python -m store label`: answers from a CSV, --add-classes, --undo, --history [--json]; bad input is one line, exit
2, and the store stays as it was."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from labelstore import make_store
from store import FeatureStore
from store.cli import main as store_main

ROOT = Path(__file__).resolve().parents[2]
ODD = os.fsdecode(b"unlabeled/caf\xe9 \xff.png")  # a file name that is not UTF-8


@pytest.fixture
def store_path(tmp_path):
    return make_store(tmp_path / "s.h5")[0]


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding, "surrogateescape"))
    return path


def run(*args, capsys):
    store_main([str(a) for a in args])
    return capsys.readouterr().out.strip().splitlines()


def fails(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        store_main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def labels_of(path, *ids):
    with FeatureStore(path) as fs:
        where = {i: k for k, i in enumerate(fs.ids)}
        return [fs.classes[fs.labels[where[i]]] if fs.labels[where[i]] >= 0 else "" for i in ids]


def test_label_undo_and_history_through_the_command_line(store_path, tmp_path, capsys):
    answers = write(tmp_path / "answers.csv", "score,label,id\n0.9,dog,unlabeled/cat/0.png\n"
                    "0.8,owl,unlabeled/dog/0.png\n0.7,,train/fox/0.png\n\n")
    assert run("label", "--store", store_path, "--labels", answers, "--add-classes", capsys=capsys) == [
        f"{store_path}: batch 1: 3 label(s) and 3 split(s) changed, added class(es) owl"]
    assert labels_of(store_path, "unlabeled/cat/0.png", "unlabeled/dog/0.png", "train/fox/0.png") == ["dog", "owl", ""]
    lines = run("label", "--store", store_path, "--history", capsys=capsys)
    assert len(lines) == 4 and all(line.startswith("batch 1 ") for line in lines[:3])
    assert any(line.endswith("answers.csv: unlabeled/cat/0.png: (unlabeled) -> dog, unlabeled -> train")
               for line in lines)
    assert lines[-1] == f"{store_path}: 3 change(s) in 1 batch(es)"
    assert run("label", "--store", store_path, "--undo", capsys=capsys) == [
        f"{store_path}: batch 2: undid batch 1: 3 label(s) and 3 split(s) changed"]
    assert labels_of(store_path, "unlabeled/cat/0.png", "train/fox/0.png") == ["", "fox"]
    history = json.loads(run("label", "--store", store_path, "--history", "--json", capsys=capsys)[-1])["history"]
    assert [(h["batch"], h["undoes"], h["source"]) for h in history] == [(1, 0, "answers.csv")] * 3 + [
        (2, 1, "undo")] * 3
    assert set(history[0]) == {"id", "old", "new", "old_split", "new_split", "time", "source", "batch", "undoes"}


def test_answers_name_files_that_are_not_utf8(tmp_path, capsys):
    path = tmp_path / "odd.h5"
    FeatureStore.create(path, ["train/a/0.png", ODD], ["train", "unlabeled"], [0, -1], ["a"]).close()
    answers = write(tmp_path / "a.csv", f"id,label\n{ODD},a\n", encoding="utf-8")
    run("label", "--store", path, "--labels", answers, capsys=capsys)
    assert labels_of(path, ODD) == ["a"]
    out = subprocess.run([sys.executable, "-m", "store", "label", "--store", str(path), "--history"], text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert out.returncode == 0 and "unlabeled/caf\\xe9 \\xff.png: (unlabeled) -> a" in out.stdout, out.stderr


def test_the_label_apps_answers_csv_takes_each_ids_last_answer(store_path, tmp_path, capsys, caplog):
    """The browser's answers CSV (classify/labeling/app/journal.py) logs a corrected answer as a later line of the
    same id: the last line wins, and the run says how many ids were answered more than once."""
    answers = write(tmp_path / "s.answers.csv", "id,label,time\n"
                    "unlabeled/cat/0.png,dog,2026-01-01T10:00:00+00:00\n"
                    "unlabeled/dog/1.png,dog,2026-01-01T10:00:05+00:00\n"
                    "unlabeled/cat/0.png,cat,2026-01-01T10:00:09+00:00\n"  # corrected
                    "unlabeled/fox/2.png,fox,2026-01-01T10:00:12+00:00\n"
                    "unlabeled/fox/2.png,,2026-01-01T10:00:15+00:00\n"  # taken back: unlabeled
                    "unlabeled/dog/1.png,dog,2026-01-01T10:00:20+00:00\n")  # the same answer again
    with caplog.at_level("INFO", logger="store.labels"):
        assert run("label", "--store", store_path, "--labels", answers, capsys=capsys) == [
            f"{store_path}: batch 1: 2 label(s) and 2 split(s) changed"]
    assert labels_of(store_path, "unlabeled/cat/0.png", "unlabeled/dog/1.png", "unlabeled/fox/2.png") == [
        "cat", "dog", ""]
    assert "3 id(s) answered more than once" in caplog.text and "the last answer of each is taken" in caplog.text


@pytest.mark.parametrize("csv_text, extra, message", [
    ("id,label\nunlabeled/cat/0.png,dog\nunlabeled/cat/99.png,dog\n", [], "unknown id 'unlabeled/cat/99.png'"),
    ("id,label\nunlabeled/cat/0.png,dgo\n", [], "unknown class 'dgo'.*did you mean dog"),
    ("unlabeled/cat/0.png,dog\n", [], "no header row naming the columns id and label"),
    ("id,label\n", [], "lists no answers"),
    ("id,label\nunlabeled/cat/0.png\n", [], "line 2 has 1 cell"),
    ("id,label\nunlabeled/cat/0.png,dog\n", ["--undo"], "pass one of --labels"),
    ("id,label\nunlabeled/cat/0.png,dog\n", ["--json"], "--json goes with --history"),
])
def test_bad_input_is_one_line_and_leaves_the_store(store_path, tmp_path, capsys, csv_text, extra, message):
    import re

    answers = write(tmp_path / "answers.csv", csv_text)
    before = store_path.read_bytes()
    line = fails(["label", "--store", store_path, "--labels", answers, *extra], capsys)
    assert re.search(message, line), line
    assert store_path.read_bytes() == before


def test_missing_files_and_a_store_in_use_are_one_line(store_path, tmp_path, capsys):
    assert "does not exist" in fails(["label", "--store", store_path, "--labels", tmp_path / "none.csv"], capsys)
    assert "no feature store" in fails(["label", "--store", tmp_path / "none.h5", "--undo"], capsys)
    assert "nothing to undo" in fails(["label", "--store", store_path, "--undo"], capsys)
    with h5py.File(store_path, "r"):  # another process holds the store (HDF5 locks it)
        script = "from store.cli import main; main(['label', '--store', %r, '--undo'])" % str(store_path)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "in use by another process" in out.stderr and out.stderr.count("\n") == 1
