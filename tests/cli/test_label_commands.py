"""`python -m classify suggest|audit` through the CLI: CSV rows, an HTML contact sheet whose every file exists, and
one-line errors for bad input."""
import csv
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from classify.cli import main
from store import OK, FeatureStore


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path)


def make_store(tmp_path, separation: float = 3.0):
    """3 classes x (4 labeled + 20 unlabeled) real PNG files and 3-d features that separate the classes (with
    ``separation`` 0, features are noise the labels do not follow)."""
    rng = np.random.default_rng(0)
    ids, splits, labels, feats = [], [], [], []
    for c, name in enumerate(["cat", "dog", "fox"]):
        for k in range(24):
            split = "train" if k < 4 else "unlabeled"
            image_id = f"train/{name}/{k}.png" if split == "train" else f"unlabeled/{name}{k}.png"
            (tmp_path / image_id).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), ((80 * c) % 256, 40 * k % 256, 120)).save(tmp_path / image_id)
            ids.append(image_id)
            splits.append(split)
            labels.append(c if split == "train" else -1)
            feats.append(np.eye(3)[c] * separation + rng.normal(size=3))
    path = tmp_path / "s.h5"
    with FeatureStore.create(path, ids, splits, labels, ["cat", "dog", "fox"], root=tmp_path) as fs:
        fs.begin_backbone({"spec": "timm:a", "weights_sha256": "a", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 3)
        fs.write_rows("timm:a", np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=np.array(feats))
    return path


def test_audit_puts_its_low_agreement_caution_on_the_page(tmp_path, capsys):
    store = make_store(tmp_path, separation=0.0)
    out = tmp_path / "suspects.csv"
    main(["audit", "--store", str(store), "--out", str(out), "--folds", "2", "--all-rows"])
    printed = capsys.readouterr().out
    assert "caution: the out-of-fold predictions agree with only" in printed
    assert "caution: the out-of-fold predictions agree with only" in out.with_suffix(".html").read_text()
    assert "no label flagged" in printed


def _sheet_files_exist(sheet):
    parser = _Links()
    parser.feed(sheet.read_text(encoding="utf-8"))
    assert parser.links
    for link in parser.links:
        assert not link.startswith(("/", "http")) and (sheet.parent / link).is_file(), link


def test_suggest_writes_csv_and_contact_sheet(store, tmp_path, capsys):
    out = tmp_path / "out" / "to_label.csv"
    main(["suggest", "--store", str(store), "--budget", "6", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and all(r["id"].startswith("unlabeled/") for r in rows)
    assert {"id", "path", "predicted", "score", "reason"} <= set(rows[0])
    assert len({r["predicted"] for r in rows}) == 3  # class-balanced on separable classes
    _sheet_files_exist(out.with_suffix(".html"))


def test_audit_writes_csv_and_contact_sheet(store, tmp_path, capsys):
    out = tmp_path / "suspects.csv"
    main(["audit", "--store", str(store), "--folds", "2", "--all-rows", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {"id", "path", "given", "suggested", "label_quality", "is_label_issue"} <= set(rows[0])
    _sheet_files_exist(out.with_suffix(".html"))


@pytest.mark.parametrize("args, message", [
    (["suggest", "--budget", "1000"], "budget"),
    (["suggest", "--budget", "0"], "--budget"),
    (["suggest", "--strategy", "best"], "--strategy"),
    (["audit", "--folds", "1"], "--folds"),
    (["suggest", "--backbone", "timm:missing"], "timm:missing"),
])
def test_bad_input_is_one_line(store, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([args[0], "--store", str(store), "--out", str(tmp_path / "x.csv"), *args[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0]
