"""A real user's folder, end to end through the commands: odd and undecodable names, a 1x100000 PNG, a link loop, a
phantom class link, a FIFO, a link to /dev/zero, a file replaced between runs, and a CSV with conflicting labels.

`embed run` must list every file once with the right label, record the unreadable ones with their reason, resume by
content, and the store must feed `store info` and `classify fit / predict` unchanged, ids round-tripping exactly.
"""
from __future__ import annotations

import csv
import json
import os

import pytest
from PIL import Image

from classify.cli import main as classify_main
from embed.cli import main as embed_main
from imagegen import HOSTILE_CLASSES, good_pixels, write_hostile_folder
from store import FeatureStore
from store.cli import main as store_main


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_timm_ckpt):
    root = tmp_path_factory.mktemp("hostile")
    want = write_hostile_folder(root / "data")
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    store = root / "s.h5"
    embed_main(["run", "--data", str(root / "data"), "--backbone", spec, "--store", str(store), "--batch-size", "4",
                "--workers", "0", "--progress", "False"])
    return root, want, spec, store


def test_every_file_listed_once_with_its_label_and_failures_recorded(hostile, capsys):
    root, want, spec, store = hostile
    with FeatureStore(store) as fs:
        ids = fs.ids.tolist()
        assert sorted(ids) == sorted(want)  # the loop and the phantom class added nothing
        assert fs.classes == list(HOSTILE_CLASSES)
        errors = dict(fs.errors())
        for image_id, (split, label, error) in want.items():
            row = ids.index(image_id)
            assert (fs.splits[row], fs.labels[row]) == (split, label), image_id
            assert (error is None) == (image_id not in errors), image_id
            assert error is None or error in errors[image_id], (image_id, errors.get(image_id))
        assert fs.load(spec).X.shape[0] == sum(1 for *_, e in want.values() if e is None)
    capsys.readouterr()
    store_main(["info", str(store), "--json"])
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_bad = sum(1 for *_, e in want.values() if e is not None)
    assert info["images"] == len(want) and info["errors"] == n_bad and info["backbones"][spec]["rows"] == info["ok"]


def test_classify_fit_and_predict_keep_odd_ids_exactly(hostile, capsys):
    root, want, spec, store = hostile
    model, out = root / "m.skops", root / "pred.csv"
    classify_main(["fit", "--store", str(store), "--backbone", spec, "--method", "knn", "--k", "1", "--out",
                   str(model)])
    classify_main(["predict", "--model", str(model), "--store", str(store), "--split", "unlabeled", "--out", str(out)])
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        predicted = {row["id"] for row in csv.DictReader(handle)}
    readable = {i for i, (split, _, e) in want.items() if split == "unlabeled" and e is None}
    assert predicted == readable
    for image_id in predicted:  # each id names its file, byte for byte
        assert os.path.isfile(os.fsencode(root / "data") + b"/" + image_id.encode("utf-8", "surrogateescape"))


def test_a_replaced_file_is_embedded_again_on_resume(hostile, capsys):
    root, want, spec, store = hostile
    target = "train/one/g0.png"
    with FeatureStore(store) as fs:
        before = fs.load(spec).X[fs.ids.tolist().index(target)].copy()
    Image.fromarray(good_pixels(99, 32)[::-1], mode="RGB").save(root / "data" / target)  # same name, new picture
    capsys.readouterr()
    embed_main(["run", "--data", str(root / "data"), "--backbone", spec, "--store", str(store), "--batch-size", "4",
                "--workers", "0", "--progress", "False"])
    printed = capsys.readouterr().out
    assert "1 file(s) changed since they were embedded" in printed and target in printed
    with FeatureStore(store) as fs:
        assert not (fs.load(spec).X[fs.ids.tolist().index(target)] == before).all()


def test_conflicting_csv_labels_are_refused_and_no_store_is_left(hostile, capsys, tmp_path):
    root, _, spec, _ = hostile
    with pytest.raises(SystemExit) as exit_info:
        embed_main(["run", "--csv", str(root / "data" / "conflicts.csv"), "--backbone", spec, "--store",
                    str(tmp_path / "c.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "unlabeled/u0.png" in err[0]
    assert not (tmp_path / "c.h5").exists()
