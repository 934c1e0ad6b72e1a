"""``--data-root`` on every command that reads images back (suggest, audit, report): a data folder that moved since
``embed run`` is found with it, and without it the command says so; ids of a received store that reach outside its
data folder (``..`` or absolute) are never read, not even for a thumbnail."""
from __future__ import annotations

import csv
import hashlib
import shutil

import pytest
from PIL import Image

from classify.cli import main
from classify.pages import THUMB_FOLDER, THUMB_SIDE
from labelstore import make_image_store


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def images_on(page_path) -> int:
    """Thumbnails on a page."""
    return page_path.read_text(encoding="utf-8").count(f'src="{THUMB_FOLDER}/')


@pytest.fixture
def moved(tmp_path):
    """A store whose data folder was moved after it was written: (store, the folder's new place)."""
    store, data, _, _ = make_image_store(tmp_path, per_class=4, pool=6, separation=0.8)
    new = tmp_path / "moved" / "data"
    new.parent.mkdir()
    shutil.move(str(data), str(new))
    return store, new


def test_suggest_and_audit_find_a_moved_folder_with_data_root(moved, tmp_path, caplog):
    store, new = moved
    lost = tmp_path / "lost" / "to_label.csv"
    main(["suggest", "--store", str(store), "--method", "linear", "--budget", "4", "--out", str(lost)])
    assert "--data-root" in caplog.text and images_on(lost.with_suffix(".html")) == 0
    out = tmp_path / "found" / "to_label.csv"
    main(["suggest", "--store", str(store), "--method", "linear", "--budget", "4", "--out", str(out),
          "--data-root", str(new)])
    rows = read(out)
    assert all(r["path"].startswith(str(new)) for r in rows) and images_on(out.with_suffix(".html")) == 4
    assert str(new) in out.with_suffix(".html").read_text(encoding="utf-8")  # the next steps name the new folder
    audited = tmp_path / "found" / "suspects.csv"
    main(["audit", "--store", str(store), "--method", "linear", "--all-rows", "--out", str(audited),
          "--data-root", str(new)])
    assert all(r["path"].startswith(str(new)) for r in read(audited))
    assert images_on(audited.with_suffix(".html")) == 12


def test_report_finds_a_moved_folder_with_data_root(moved, tmp_path, caplog):
    store, new = moved
    model = tmp_path / "m.skops"
    main(["fit", "--store", str(store), "--method", "linear", "--out", str(model)])
    main(["report", "--model", str(model), "--store", str(store), "--out", str(tmp_path / "lost"), "--folds", "2"])
    assert "--data-root" in caplog.text and images_on(tmp_path / "lost" / "index.html") == 0
    main(["report", "--model", str(model), "--store", str(store), "--out", str(tmp_path / "found"), "--folds", "2",
          "--data-root", str(new)])
    assert images_on(tmp_path / "found" / "index.html") > 0


@pytest.mark.parametrize("command", ["suggest", "audit", "report"])
def test_a_data_root_that_is_not_a_folder_is_one_line(moved, tmp_path, capsys, command):
    store, new = moved
    args = {"suggest": ["--method", "linear", "--budget", "2"], "audit": ["--method", "linear"],
            "report": ["--model", str(tmp_path / "m.skops")]}[command]
    if command == "report":
        main(["fit", "--store", str(store), "--method", "linear", "--out", str(tmp_path / "m.skops")])
    out = tmp_path / ("r" if command == "report" else "x.csv")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([command, "--store", str(store), *args, "--out", str(out), "--data-root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--data-root" in err[0] and "is not a folder" in err[0]


def thumb_name(path):
    key = hashlib.sha256(path.read_bytes())
    key.update(f"|{THUMB_SIDE}".encode())
    return key.hexdigest()[:32] + ".jpg"


def test_ids_reaching_outside_the_data_folder_are_never_read(tmp_path, caplog):
    secrets = [tmp_path / "secret.png", tmp_path / "elsewhere" / "abs.png"]
    for i, secret in enumerate(secrets):
        secret.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (250, 10 + 100 * i, 10)).save(secret)
    rename = {"train/cat/cat0.png": "../secret.png", "unlabeled/dog4.png": str(secrets[1]),
              "unlabeled/cat4.png": "unlabeled/../../secret.png"}
    store, *_ = make_image_store(tmp_path, per_class=4, pool=4, separation=3.0, rename=rename)
    out = tmp_path / "out" / "to_label.csv"
    main(["suggest", "--store", str(store), "--method", "linear", "--budget", "12", "--out", str(out)])
    main(["audit", "--store", str(store), "--method", "linear", "--all-rows", "--out", str(out.parent / "a.csv")])
    assert "reach outside the data folder" in caplog.text
    rows = read(out) + read(out.parent / "a.csv")
    outside = [r for r in rows if r["id"] in rename.values()]
    assert len(outside) == 3 and all(r["path"] == "" for r in outside)
    assert all(r["path"] for r in rows if r["id"] not in rename.values())
    made = {p.name for p in (out.parent / THUMB_FOLDER).iterdir()}
    assert len(made) >= 12 and not {thumb_name(s) for s in secrets} & made
