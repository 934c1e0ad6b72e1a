import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from store import ERROR, OK, FeatureStore, open_for_images

IDS = ["train/cat/a.png", "train/dog/b.png", "unlabeled/c.png", "test/d.png"]
SPLITS = ["train", "train", "unlabeled", "test"]
LABELS = [0, 1, -1, -1]
CLASSES = ["cat", "dog"]


def provenance(spec="timm:x", **changes):
    base = {"spec": spec, "weights_sha256": "w1", "weights_source": "test", "preprocessing": {"input_size": 8},
            "versions": {"torch": "1"}, "dtype": "float32", "views": 0, "view_kinds": []}
    return {**base, **changes}


def file_digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore.create(path, IDS, SPLITS, LABELS, CLASSES, root=tmp_path) as fs:
        fs.begin_backbone(provenance(), dim=3)
        fs.write_rows("timm:x", np.array([0, 1, 2]), np.array([OK, OK, ERROR]), ["a" * 64, "b" * 64, "c" * 64],
                      [None, None, "truncated image"], features=np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
        fs.write_rows("timm:x", np.array([3]), np.array([OK]), ["a" * 64], [None],
                      features=np.array([[7, 8, 9]], dtype=np.float32))
    return path


def test_round_trip_by_split(store_path):
    with FeatureStore(store_path) as fs:
        assert fs.classes == CLASSES and len(fs) == 4 and fs.backbones == ["timm:x"]
        train = fs.load("timm:x", "train")
        np.testing.assert_array_equal(train.X, [[1, 2, 3], [4, 5, 6]])
        np.testing.assert_array_equal(train.y, [0, 1])
        assert list(train.ids) == IDS[:2]
        everything = fs.load("timm:x")  # the failed unlabeled row is excluded
        assert list(everything.index) == [0, 1, 3]
        assert fs.load("timm:x", "unlabeled").X.shape == (0, 3)
        assert fs.errors() == [("unlabeled/c.png", "truncated image")]
        assert fs.duplicates() == [["test/d.png", "train/cat/a.png"]]


def test_info_json_contract(store_path):
    out = subprocess.run([sys.executable, "-m", "store", "info", str(store_path), "--json"], capture_output=True,
                         text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["images"] == 4 and info["ok"] == 3 and info["errors"] == 1
    assert info["splits"] == {"train": 2, "unlabeled": 1, "test": 1, "validation": 0}
    assert info["classes"] == CLASSES
    assert info["backbones"]["timm:x"]["dim"] == 3 and info["backbones"]["timm:x"]["rows"] == 3
    assert info["failed"] == [{"id": "unlabeled/c.png", "error": "truncated image"}]


@pytest.mark.parametrize("change", [{"weights_sha256": "w2"}, {"dtype": "float16"}, {"preprocessing": {"s": 9}},
                                    {"views": 2, "view_kinds": ["weak", "strong"]}])
def test_different_origin_is_refused_and_file_untouched(store_path, change):
    before = file_digest(store_path)
    with FeatureStore(store_path, "a") as fs, pytest.raises(ValueError, match="refusing to mix origins"):
        fs.begin_backbone(provenance(**change), dim=3)
    assert file_digest(store_path) == before


def test_same_origin_reports_done_rows_and_new_backbone_adds_a_group(store_path):
    with FeatureStore(store_path, "a") as fs:
        assert fs.begin_backbone(provenance(), dim=3).all()
        assert not fs.begin_backbone(provenance("clip:y/z", dtype="float16"), dim=2).any()
        assert sorted(fs.backbones) == ["clip:y/z", "timm:x"]


def test_other_dataset_is_refused_and_file_untouched(store_path):
    before = file_digest(store_path)
    with pytest.raises(ValueError, match="different image list"):
        open_for_images(store_path, IDS[:3], SPLITS[:3], LABELS[:3], CLASSES)
    with pytest.raises(ValueError, match="different image list"):
        open_for_images(store_path, IDS[::-1], SPLITS[::-1], LABELS[::-1], CLASSES)  # same ids, other rows
    assert file_digest(store_path) == before
    open_for_images(store_path, IDS, SPLITS, LABELS, CLASSES).close()  # the same list opens
    with open_for_images(store_path, IDS, SPLITS, [1, 0, -1, -1], CLASSES) as fs:  # labels are metadata: the
        assert list(fs.labels) == LABELS  # same rows open, with the store's own labels


def test_incomplete_backbone_cannot_be_read(tmp_path):
    with FeatureStore.create(tmp_path / "s.h5", IDS, SPLITS, LABELS, CLASSES) as fs:
        fs.begin_backbone(provenance(), dim=3)
        fs.write_rows("timm:x", np.array([0]), np.array([OK]), ["a" * 64], [None], features=np.ones((1, 3)))
        with pytest.raises(ValueError, match="incomplete: 1 rows"):
            fs.load("timm:x", "train")  # train row 1 not embedded yet
    with FeatureStore(tmp_path / "s.h5") as fs:
        with pytest.raises(ValueError, match="incomplete: 3 rows"):
            fs.load("timm:x")
        with pytest.raises(ValueError, match="has no features for backbone 'timm:nope'"):
            fs.load("timm:nope")


def test_float16_storage_reads_back_float32(tmp_path):
    with FeatureStore.create(tmp_path / "s.h5", IDS, SPLITS, LABELS, CLASSES) as fs:
        fs.begin_backbone(provenance(dtype="float16"), dim=2, prob_classes=["a", "b", "c"])
        feats = np.array([[0.5, -1.25]] * 4, dtype=np.float32)
        fs.write_rows("timm:x", np.arange(4), np.full(4, OK), ["0" * 64] * 4, [None] * 4, features=feats,
                      probs=np.full((4, 3), 1 / 3))
        rows = fs.load("timm:x")
        assert rows.X.dtype == np.float32
        np.testing.assert_array_equal(rows.X, feats)
        probs, names = fs.probs("timm:x", rows.index)
        assert names == ["a", "b", "c"] and np.allclose(probs, 1 / 3, atol=1e-3)


def test_text_embeddings_round_trip_and_absence(store_path):
    with FeatureStore(store_path, "a") as fs:
        with pytest.raises(ValueError, match="no text embeddings"):
            fs.text("timm:x")
        text = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
        fs.set_text("timm:x", text, ["a {}.", "b {}.", "c {}."], 100.0)
        got, templates, scale = fs.text("timm:x")
        np.testing.assert_array_equal(got, text)
        assert templates == ["a {}.", "b {}.", "c {}."] and scale == 100.0
        with pytest.raises(ValueError, match="do not match 2 classes x 1 templates"):
            fs.set_text("timm:x", text, ["a {}."], 100.0)


def test_not_a_store(tmp_path):
    bogus = tmp_path / "x.h5"
    bogus.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 feature store"):
        FeatureStore(bogus)
    out = subprocess.run([sys.executable, "-m", "store", "info", str(tmp_path / "missing.h5")], capture_output=True,
                         text=True)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "no feature store" in out.stderr
