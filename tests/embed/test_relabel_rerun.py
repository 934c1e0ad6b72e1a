"""`embed run` again on the same data after files moved, labels changed or classes were added: the store is updated
in place or rebuilt beside itself, features are reused by content (nothing embedded twice), answers given with
`store label` survive, and the run says what changed."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from embed.cli import main as embed_main
from embed.engines import local
from imagegen import write_good_images
from store import FeatureStore
from store.cli import main as store_main
from store.labels import apply_labels, label_history


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), ckpt)
    return f"timm:test_efficientnet@{ckpt}"


@pytest.fixture
def forwards(monkeypatch):
    """Images the backbone saw, counted at the forward pass."""
    seen = {"images": 0}
    original = local.Mapper._forward

    def forward(self, x):
        seen["images"] += int(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(local.Mapper, "_forward", forward)
    return seen


def folder(root: Path) -> Path:
    """train/cat (3), train/dog (3), unlabeled (4), test (2): every file of distinct content (seeds differ)."""
    for name, n, seed in (("train/cat", 3, 1), ("train/dog", 3, 2), ("unlabeled", 4, 3), ("test", 2, 4)):
        for path in write_good_images(root / name, n, seed=seed):
            path.rename(path.with_name(f"{name.replace('/', '_')}_{path.name}"))
    return root


def run(root, spec, store, capsys, *extra):
    embed_main(["run", "--data", str(root), "--backbone", spec, "--store", str(store), "--workers", "0",
                "--progress", "False", *map(str, extra)])
    return capsys.readouterr().out


def state(store):
    """id -> (label name or None, split, features row) of every image."""
    with FeatureStore(store) as fs:
        spec = fs.backbones[0]
        X = fs.load(spec).X
        names = fs.classes
        return {i: (names[y] if y >= 0 else None, s, X[k]) for k, (i, y, s) in
                enumerate(zip(fs.ids.tolist(), fs.labels.tolist(), fs.splits.tolist()))}


def move(root, src, dst):
    (root / dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(root / src, root / dst)


def test_moved_files_change_labels_and_splits_without_embedding_again(tmp_path, tiny_spec, capsys, forwards):
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys)
    assert forwards["images"] == 12
    before = state(store)
    move(root, "unlabeled/unlabeled_good_000.jpg", "train/cat/unlabeled_good_000.jpg")  # labeled now
    move(root, "train/dog/train_dog_good_001.png", "unlabeled/train_dog_good_001.png")  # back to the pool
    move(root, "train/cat/train_cat_good_002.webp", "train/dog/train_cat_good_002.webp")  # relabeled
    move(root, "unlabeled/unlabeled_good_001.png", "test/unlabeled_good_001.png")  # to the test split
    os.remove(root / "test/test_good_000.jpg")
    write_good_images(root / "unlabeled" / "new", 1, seed=9)
    forwards["images"] = 0
    out = run(root, tiny_spec, store, capsys)
    assert forwards["images"] == 1  # only the new file
    assert ("labels: 3 row(s) changed label, 3 split; 1 added, 1 removed, 4 found by content under a new name "
            "(features reused)") in out
    assert "embedded 1 images in this run" in out
    after = state(store)
    assert after["train/cat/unlabeled_good_000.jpg"][:2] == ("cat", "train")
    assert after["unlabeled/train_dog_good_001.png"][:2] == (None, "unlabeled")
    assert after["train/dog/train_cat_good_002.webp"][:2] == ("dog", "train")
    assert after["test/unlabeled_good_001.png"][:2] == (None, "test")
    assert "test/test_good_000.jpg" not in after and len(after) == 12
    for new, old in (("train/cat/unlabeled_good_000.jpg", "unlabeled/unlabeled_good_000.jpg"),
                     ("train/dog/train_cat_good_002.webp", "train/cat/train_cat_good_002.webp"),
                     ("train/cat/train_cat_good_000.jpg", "train/cat/train_cat_good_000.jpg")):
        np.testing.assert_array_equal(after[new][2], before[old][2])  # the features travelled with the content
    history = label_history(store)
    assert {h["source"] for h in history} == {"embed run"} and len(history) == 4
    forwards["images"] = 0
    assert "labels: unchanged" in run(root, tiny_spec, store, capsys) and forwards["images"] == 0


def test_answers_survive_a_rerun_unless_the_folder_changed_its_mind(tmp_path, tiny_spec, capsys, forwards):
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys)
    apply_labels(store, {"unlabeled/unlabeled_good_002.webp": "dog", "unlabeled/unlabeled_good_003.bmp": "cat",
                         "train/cat/train_cat_good_000.jpg": "dog"}, source="browser")
    assert "labels: unchanged; 3 label(s) given since the last run kept" in run(root, tiny_spec, store, capsys)
    move(root, "train/dog/train_dog_good_000.jpg", "train/cat/train_dog_good_000.jpg")  # ids change: a rebuild
    move(root, "unlabeled/unlabeled_good_003.bmp", "train/dog/unlabeled_good_003.bmp")  # the folder now says dog
    out = run(root, tiny_spec, store, capsys)
    assert "2 row(s) changed label" in out and "2 label(s) given since the last run kept" in out
    after = state(store)
    assert after["unlabeled/unlabeled_good_002.webp"][:2] == ("dog", "train")  # the answer kept
    assert after["train/cat/train_cat_good_000.jpg"][:2] == ("dog", "train")  # kept: the folder still says cat
    assert after["train/dog/unlabeled_good_003.bmp"][:2] == ("dog", "train")  # the folder's new word wins
    assert after["train/cat/train_dog_good_000.jpg"][:2] == ("cat", "train")
    sources = [(h["id"], h["source"]) for h in label_history(store)]
    assert ("unlabeled/unlabeled_good_002.webp", "browser") in sources  # the history followed the files
    assert ("train/dog/unlabeled_good_003.bmp", "embed run") in sources
    assert forwards["images"] == 12


def test_a_new_class_folder_adds_a_class(tmp_path, tiny_spec, capsys):
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys)
    move(root, "unlabeled/unlabeled_good_000.jpg", "train/owl/unlabeled_good_000.jpg")
    assert "new class(es) owl" in run(root, tiny_spec, store, capsys)
    with FeatureStore(store) as fs:
        assert fs.classes == ["cat", "dog", "owl"]
    assert state(store)["train/owl/unlabeled_good_000.jpg"][:2] == ("owl", "train")


def write_list(path, rows):
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "split"], *rows])
    return path


def test_a_changed_label_in_a_csv_list_updates_the_store_in_place(tmp_path, tiny_spec, capsys, forwards):
    root = folder(tmp_path / "data")
    rows = [[f"train/cat/train_cat_good_00{k}{ext}", "cat", "train"] for k, ext in enumerate((".jpg", ".png"))]
    rows += [["unlabeled/unlabeled_good_000.jpg", "", "unlabeled"], ["test/test_good_000.jpg", "dog", "test"]]
    listed, store = write_list(root / "list.csv", rows), tmp_path / "s.h5"
    argv = ["run", "--csv", str(listed), "--backbone", tiny_spec, "--store", str(store), "--workers", "0",
            "--progress", "False"]
    embed_main(argv)
    with FeatureStore(store) as fs:
        fingerprint, inode = fs.fingerprint, os.stat(store).st_ino
    rows[1][1], rows[2][1:] = "dog", ["bird", "train"]
    write_list(listed, rows)
    capsys.readouterr()
    forwards["images"] = 0
    embed_main(argv)
    out = capsys.readouterr().out
    assert forwards["images"] == 0 and "labels: 2 row(s) changed label, 1 split; 0 added, 0 removed" in out
    assert "new class(es) bird" in out
    with FeatureStore(store) as fs:
        assert fs.fingerprint == fingerprint and os.stat(store).st_ino == inode  # same rows, same file
    after = state(store)
    assert after["train/cat/train_cat_good_001.png"][:2] == ("dog", "train")
    assert after["unlabeled/unlabeled_good_000.jpg"][:2] == ("bird", "train")


def test_a_clip_backbone_gets_text_embeddings_of_a_new_class(tmp_path, tiny_clip_ckpt, capsys):
    arch, ckpt = tiny_clip_ckpt
    spec = f"clip:{arch}@{ckpt}"
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, spec, store, capsys)
    move(root, "unlabeled/unlabeled_good_000.jpg", "train/owl/unlabeled_good_000.jpg")
    run(root, spec, store, capsys)
    with FeatureStore(store) as fs:
        text, templates, _ = fs.text(fs.backbones[0])
        assert text.shape[:2] == (3, len(templates)) and fs.classes == ["cat", "dog", "owl"]


def test_the_store_records_the_data_folder_as_an_absolute_path(tmp_path, tiny_spec, capsys, monkeypatch):
    folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run(Path("data"), tiny_spec, "s.h5", capsys)
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert fs.root == str(tmp_path / "data")


def test_a_failed_rebuild_leaves_the_old_store(tmp_path, tiny_spec, capsys, monkeypatch):
    from store import sync

    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys)
    apply_labels(store, {"unlabeled/unlabeled_good_002.webp": "dog"})
    before = store.read_bytes()
    move(root, "unlabeled/unlabeled_good_000.jpg", "train/cat/unlabeled_good_000.jpg")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sync, "_copy_history", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        run(root, tiny_spec, store, capsys)
    assert exit_info.value.code == 2 and "No space left" in capsys.readouterr().err
    assert store.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["data", "s.h5"]
    monkeypatch.undo()
    run(root, tiny_spec, store, capsys)
    assert state(store)["train/cat/unlabeled_good_000.jpg"][:2] == ("cat", "train")


def test_another_folder_is_refused_and_the_store_untouched(tmp_path, tiny_spec, capsys):
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys)
    other = folder(tmp_path / "other")
    (other / "unlabeled" / "unlabeled_good_000.jpg").unlink()
    before = store.read_bytes()
    with pytest.raises(SystemExit):
        run(other, tiny_spec, store, capsys)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different image list" in err[0] and "use a new --store path" in err[0]
    assert store.read_bytes() == before


def test_store_label_then_rerun_through_the_command_lines(tmp_path, tiny_spec, capsys):
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys)
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\nunlabeled/unlabeled_good_001.png,cat\n")
    store_main(["label", "--store", str(store), "--labels", str(answers)])
    assert "batch 1: 1 label(s) and 1 split(s) changed" in capsys.readouterr().out
    assert "1 label(s) given since the last run kept" in run(root, tiny_spec, store, capsys)
    assert state(store)["unlabeled/unlabeled_good_001.png"][:2] == ("cat", "train")


def test_a_version_1_store_is_brought_in_line_too(tmp_path, tiny_spec, capsys, forwards):
    from labelstore import make_version_1

    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run(root, tiny_spec, store, capsys, "--views", 1)
    make_version_1(store)
    before = state(store)
    with FeatureStore(store) as fs:
        views_before = dict(zip(fs.ids.tolist(), fs.views(fs.backbones[0], np.arange(len(fs)))))
    move(root, "unlabeled/unlabeled_good_000.jpg", "train/dog/unlabeled_good_000.jpg")
    forwards["images"] = 0
    assert "1 row(s) changed label, 1 split" in run(root, tiny_spec, store, capsys, "--views", 1)
    assert forwards["images"] == 0
    after = state(store)
    assert after["train/dog/unlabeled_good_000.jpg"][:2] == ("dog", "train")
    np.testing.assert_array_equal(after["train/dog/unlabeled_good_000.jpg"][2],
                                  before["unlabeled/unlabeled_good_000.jpg"][2])
    with FeatureStore(store) as fs:
        assert fs.version == 2
        views_after = dict(zip(fs.ids.tolist(), fs.views(fs.backbones[0], np.arange(len(fs)))))
    np.testing.assert_array_equal(views_after["train/dog/unlabeled_good_000.jpg"],
                                  views_before["unlabeled/unlabeled_good_000.jpg"])  # augmented views travel too
