"""Data layouts users already have: validation/ (val/) folders, Hugging Face imagefolder (metadata.csv, in the data
folder or per split), torchvision ImageFolder (<class>/ only), and a warning for each folder the suite ignores."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from embed import sources
from store import FeatureStore
from store.layout import is_validation_id


def touch(root, *rels):
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (len(rel) % 255, 0, 0)).save(path)


def rows(images):
    return [(s, i, images.classes[label] if label >= 0 else None)
            for s, i, label in zip(images.splits, images.ids, images.labels)]


def test_validation_and_val_folders_are_labeled_train_rows(tmp_path, caplog):
    touch(tmp_path, "train/cat/a.png", "train/dog/b.png", "validation/cat/v1.png", "val/dog/v2.png", "test/t.png")
    with caplog.at_level(logging.WARNING):
        images = sources.from_folder(tmp_path)
    assert rows(images) == [("train", "train/cat/a.png", "cat"), ("train", "train/dog/b.png", "dog"),
                            ("train", "val/dog/v2.png", "dog"), ("train", "validation/cat/v1.png", "cat"),
                            ("test", "test/t.png", None)]
    assert [is_validation_id(i) for i in images.ids] == [False, False, True, True, False]
    assert not caplog.records  # nothing ignored


def test_a_validation_class_missing_from_train_is_refused(tmp_path):
    touch(tmp_path, "train/cat/a.png", "validation/cow/v.png")
    with pytest.raises(ValueError, match="validation/cow/ is not a class of train/"):
        sources.from_folder(tmp_path)
    (tmp_path / "validation/cow/v.png").rename(tmp_path / "validation/v.png")
    with pytest.raises(ValueError, match="move it to validation/<class>/"):
        sources.from_folder(tmp_path)


def test_ignored_folders_get_one_warning_each(tmp_path, caplog):
    touch(tmp_path, "train/cat/a.png", "extras/x.png", "models/readme.png", "stray.png", ".cache/y.png")
    with caplog.at_level(logging.WARNING, logger="embed.sources"):
        images = sources.from_folder(tmp_path)
    assert images.ids == ["train/cat/a.png"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith(f"ignoring {tmp_path / 'extras'}/") and "models/" in warnings[1]
    assert "1 image(s) directly in" in warnings[2]


def test_torchvision_imagefolder_is_all_labeled_train_rows(tmp_path):
    touch(tmp_path, "cat/a.png", "cat/deep/b.png", "red_fox/c.png")
    images = sources.from_folder(tmp_path)
    assert images.classes == ["cat", "red_fox"] and images.display_names == ["cat", "red fox"]
    assert rows(images) == [("train", "cat/a.png", "cat"), ("train", "cat/deep/b.png", "cat"),
                            ("train", "red_fox/c.png", "red_fox")]


def test_a_split_folder_without_train_is_still_refused(tmp_path):
    touch(tmp_path, "test/a.png", "cat/b.png")
    with pytest.raises(ValueError, match="has no train/ folder"):
        sources.from_folder(tmp_path)


def test_the_folder_above_the_data_is_not_an_imagefolder(tmp_path):
    touch(tmp_path, "mydata/train/cat/a.png", "mydata/test/b.png")
    with pytest.raises(ValueError, match=f"has no train/ folder, but {tmp_path / 'mydata'} has split folders: "
                                         f"pass --data {tmp_path / 'mydata'}"):
        sources.from_folder(tmp_path)


def test_imagefolder_metadata_in_the_data_folder(tmp_path):
    touch(tmp_path, "train/0001.png", "train/0002.png", "test/0003.png", "test/0004.png", "pool/0005.png")
    (tmp_path / "metadata.csv").write_text("file_name,label,caption\ntrain/0001.png,cat,a cat\n"
                                           "train/0002.png,dog,a dog\ntest/0003.png,dog,\ntest/0004.png,,\n"
                                           "pool/0005.png,,\n")
    images = sources.from_folder(tmp_path)
    assert images.classes == ["cat", "dog"]
    assert rows(images) == [("train", "train/0001.png", "cat"), ("train", "train/0002.png", "dog"),
                            ("unlabeled", "pool/0005.png", None), ("test", "test/0003.png", "dog"),
                            ("test", "test/0004.png", None)]


def test_imagefolder_metadata_per_split_and_labels_from_folders(tmp_path):
    touch(tmp_path, "train/cat/a.png", "train/dog/b.png", "validation/c.png", "test/cat/d.png", "test/e.png",
          "unlabeled/u.png")
    (tmp_path / "train/metadata.csv").write_text("file_name,caption\ncat/a.png,x\ndog/b.png,y\n")  # no label column
    (tmp_path / "validation/metadata.csv").write_text("file_name,label\nc.png,dog\n")
    (tmp_path / "test/metadata.csv").write_text("file_name\ncat/d.png\ne.png\n")
    images = sources.from_folder(tmp_path)  # unlabeled/ has no metadata.csv: read as a folder
    assert rows(images) == [("train", "train/cat/a.png", "cat"), ("train", "train/dog/b.png", "dog"),
                            ("train", "validation/c.png", "dog"), ("unlabeled", "unlabeled/u.png", None),
                            ("test", "test/cat/d.png", "cat"), ("test", "test/e.png", None)]


def test_imagefolder_split_column_and_errors(tmp_path):
    touch(tmp_path, "a.png", "b.png", "c.png")
    (tmp_path / "metadata.csv").write_text("file_name,label,split\na.png,cat,train\nb.png,,test\nc.png,dog,val\n")
    images = sources.from_folder(tmp_path)
    assert rows(images) == [("train", "a.png", "cat"), ("train", "c.png", "dog"), ("test", "b.png", None)]
    (tmp_path / "metadata.csv").write_text("file_name,label,split\na.png,,train\n")
    with pytest.raises(ValueError, match="a.png is a train row without a label"):
        sources.from_folder(tmp_path)
    (tmp_path / "metadata.csv").write_text("image_id,label\na.png,cat\n")
    with pytest.raises(ValueError, match="has no file_name column"):
        sources.from_folder(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,label,split\na.png,cat,holdout\n")
    with pytest.raises(ValueError, match="split 'holdout' must be one of"):
        sources.from_folder(tmp_path)


def test_imagefolder_classes_txt_sets_order(tmp_path):
    touch(tmp_path, "a.png", "b.png")
    (tmp_path / "metadata.csv").write_text("file_name,label\na.png,zebra\nb.png,ant\n")
    (tmp_path / "classes.txt").write_text("zebra\nant\n")
    images = sources.from_folder(tmp_path)
    assert images.classes == ["zebra", "ant"]
    np.testing.assert_array_equal(images.labels, [0, 1])


def test_store_info_counts_validation_rows_as_their_own_split(tmp_path, capsys):
    from store.cli import main as store_main

    touch(tmp_path, "train/cat/a.png", "train/dog/b.png", "validation/cat/v1.png", "val/dog/v2.png", "test/t.png")
    images = sources.from_folder(tmp_path)
    FeatureStore.create(tmp_path / "s.h5", images.ids, images.splits, images.labels, images.classes).close()
    store_main(["info", str(tmp_path / "s.h5"), "--json"])
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["splits"] == {"train": 2, "unlabeled": 0, "test": 1, "validation": 2}  # before: train 4, no validation
    assert info["labeled"]["validation"] == 2 and sum(info["splits"].values()) == info["images"]
