"""A feature store received from someone else reads only its own bytes and costs memory in proportion to what it
should hold: HDF5 external storage, links out of the file, virtual datasets, shapes that claim more than the file
holds and attributes of the wrong kind are refused when the store is opened, in one line, before any data is read."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from classify.cli import main as classify_main
from crafted_stores import (A, B, CLASSES, external_link, external_storage, features_path, good_store, lying_shape,
                            set_attr, shared_id_heap, soft_link, virtual_dataset)
from store import FeatureStore
from store.cli import main as store_main
from store.layout import group_name
from store.validation import UserError

SECRET = "SECRET-TOKEN-of-another-file"
N = 195  # images in synthstore.make_store


def fails(main, args, capsys) -> str:
    """The one error line of a command that must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert SECRET not in captured.out + captured.err
    return lines[0]


def store_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "store", *map(str, args)], capture_output=True, text=True,
                          check=False)


@pytest.fixture
def store_path(tmp_path):
    return good_store(tmp_path / "s.h5")


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text((SECRET + "\n") * 400)
    return path


@pytest.fixture
def forbid_reads(monkeypatch):
    """``forbid_reads()``: from then on any read of dataset values fails the test (refusals must come from the
    declared structure alone, before a byte of data is read)."""
    def read(*args, **kwargs):
        raise AssertionError("a dataset was read before the store was checked")

    def forbid():
        for name in ("__getitem__", "read_direct", "__array__"):
            monkeypatch.setattr(h5py.Dataset, name, read)
    return forbid


# ---------------------------------------------------------------------------------------------- other files
def test_store_info_and_export_refuse_storage_in_another_file(store_path, secret, tmp_path):
    """The reporter's probe: /images/error stored in another file was printed by info and copied by export."""
    external_storage(store_path, "images/error", secret)
    with h5py.File(store_path) as f:  # the probe works: h5py alone reads the other file
        assert SECRET.encode() in f["images/error"][0]
    out = store_cli("info", store_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "/images/error" in out.stderr and "another file" in out.stderr and SECRET not in out.stdout + out.stderr
    out = store_cli("export", "--store", store_path, "--backbone", A, "--out", tmp_path / "shards")
    assert out.returncode == 2 and "/images/error" in out.stderr, out.stderr
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("how, name, why", [
    ("external storage", "features", "another file"),
    ("external link", "features", "external link"),
    ("soft link", "images/label", "soft link"),
    ("virtual", "features", "virtual dataset"),
    ("virtual", "images/label", "virtual dataset"),
])
def test_objects_of_other_files_are_refused_before_reading(store_path, tmp_path, forbid_reads, how, name, why):
    name = features_path(A) if name == "features" else name
    other = tmp_path / "other.h5"
    if how == "external storage":
        external_storage(store_path, name, tmp_path / "other.bin")
        (tmp_path / "other.bin").write_bytes(np.ones((N, 8), dtype=np.float32).tobytes())
    elif how == "external link":
        external_link(store_path, name, other, "x", data=np.ones((N, 8), dtype=np.float32))
    elif how == "soft link":  # to a path through an external link: the labels of another file
        external_link(store_path, "images/split", other, "x")
        soft_link(store_path, name, "/images/split")
    else:
        virtual_dataset(store_path, name, other, "x")
    forbid_reads()
    with pytest.raises(UserError, match=why) as info:
        FeatureStore(store_path)
    assert f"/{name}" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match=why):  # appending to it too
        FeatureStore(store_path, "a")


def test_classify_evaluate_refuses_features_of_another_file(store_path, tmp_path, capsys):
    virtual_dataset(store_path, features_path(A), tmp_path / "other.h5", "x")
    line = fails(classify_main, ["evaluate", "--store", store_path, "--backbone", A, "--method", "linear"], capsys)
    assert "virtual dataset" in line and features_path(A) in line


def test_an_external_link_is_never_followed(store_path, tmp_path):
    """Refused by its link alone: the file it names is not even opened (a missing one gives the same refusal)."""
    with h5py.File(store_path, "a") as f:
        f["images/extra"] = h5py.ExternalLink(str(tmp_path / "absent.h5"), "/x")
    with pytest.raises(UserError, match=r"/images/extra is an external link to .*absent\.h5"):
        FeatureStore(store_path)


# ---------------------------------------------------------------------------------------------- declared sizes
def test_store_info_refuses_a_huge_compressed_status(store_path, capsys, forbid_reads):
    """The reporter's probe: a 3 GiB /images/status in a small file cost 6.4 GB in store info."""
    lying_shape(store_path, "images/status", (3 << 30,))
    assert store_path.stat().st_size < 20 << 20
    forbid_reads()
    line = fails(store_main, ["info", store_path], capsys)
    assert "/images/status" in line and f"{N} rows" in line


@pytest.mark.parametrize("dim_attr", [None, 1 << 22])
def test_classify_evaluate_refuses_features_wider_than_the_store_says(store_path, capsys, dim_attr):
    """The reporter's probe: features declared (150, 2**22) cost 7.3 GB in classify evaluate."""
    lying_shape(store_path, features_path(A), (N, 1 << 22))
    if dim_attr:
        set_attr(store_path, f"backbones/{group_name(A)}", "dim", dim_attr)
    line = fails(classify_main, ["evaluate", "--store", store_path, "--backbone", A, "--method", "linear"], capsys)
    assert features_path(A) in line or "dim" in line


@pytest.mark.parametrize("name, shape, dtype, message", [
    ("images/id", (1 << 28,), h5py.string_dtype(), "rows"),  # every per-row dataset must then have N rows too
    ("images/error", (N,), "S1048576", "S256"),
    ("images/label", (N,), np.float64, "int32"),
    ("images/sha256", (N, 2), "S64", "rows"),
    ("views", (N, 5000, 8), np.float32, "views"),
    ("probs", (N, 7), np.float16, "probs"),
    ("text", (len(CLASSES) + 1, 2, 6), np.float32, "text"),
    ("head_weight", (1 << 20, 8), np.float32, "head"),
])
def test_lying_shapes_are_refused_before_reading(store_path, forbid_reads, name, shape, dtype, message):
    group = f"backbones/{group_name(B if name == 'text' else A)}"
    target = name if name.startswith("images/") else f"{group}/{name}"
    if name == "probs":
        set_attr(store_path, group, "views", 0)
        with h5py.File(store_path, "a") as f:
            f[group].create_dataset("probs", shape=(N, 3), dtype=np.float16).attrs["classes"] = json.dumps(["a", "b"])
    lying_shape(store_path, target, shape, dtype)
    forbid_reads()
    with pytest.raises(UserError, match=message) as info:
        FeatureStore(store_path)
    assert f"/{target}" in str(info.value) and "\n" not in str(info.value)


def test_a_file_claiming_more_images_than_it_can_hold(tmp_path, forbid_reads):
    """Every per-row dataset declaring 2**28 rows, compressed: consistent, but far more than the file's bytes."""
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(format="fewshot-feature-store", format_version=1, classes=json.dumps(["a"]), root="",
                       image_list_sha256="0" * 64, created="today")
        f.create_group("backbones")
        for name, dtype in (("id", h5py.string_dtype()), ("split", np.uint8), ("label", np.int32),
                            ("sha256", "S64"), ("status", np.uint8), ("error", "S256")):
            f.create_dataset(f"images/{name}", shape=(1 << 28,), dtype=dtype, chunks=(1 << 16,), compression="gzip")
    assert path.stat().st_size < 20 << 20
    forbid_reads()
    with pytest.raises(UserError, match=r"declare .* bytes .* file of"):
        FeatureStore(path)


def test_ids_sharing_one_long_string_are_refused(store_path):
    """Every id pointing at the same 4 KB string: the file stays small, the ids would cost N x 4 KB."""
    shared_id_heap(store_path, "x" * 4000)
    with pytest.raises(UserError, match=r"/images/id .* bytes"):
        with FeatureStore(store_path) as fs:
            fs.ids
    out = store_cli("export", "--store", store_path, "--backbone", A, "--out", store_path.parent / "shards")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "/images/id" in out.stderr, out.stderr


def test_a_huge_json_attribute_is_not_parsed(store_path, monkeypatch):
    set_attr(store_path, "/", "classes", json.dumps(["c" * 1000] * 20_000))  # 20 MB of class names
    parsed = []
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: parsed.append(len(text)))
    with pytest.raises(UserError, match="classes"):
        FeatureStore(store_path)
    assert not [size for size in parsed if size > 1 << 20]


# ---------------------------------------------------------------------------------------------- attributes
@pytest.mark.parametrize("name, key, value, message", [
    ("/", "classes", json.dumps([1, 2, 3]), "classes"),
    ("/", "classes", "cat,dog,fox", "classes"),
    ("/", "classes", json.dumps({"a": 1}), "classes"),
    (f"backbones/{group_name(A)}", "preprocessing", json.dumps([1, 2]), "preprocessing"),
    (f"backbones/{group_name(A)}", "versions", "not json", "versions"),
    (f"backbones/{group_name(A)}", "dim", "eight", "dim"),
    (f"backbones/{group_name(B)}/text", "templates", json.dumps("a {}"), "templates"),
])
def test_attributes_of_the_wrong_kind_are_one_line(store_path, capsys, name, key, value, message):
    set_attr(store_path, name, key, value)
    line = fails(store_main, ["info", store_path], capsys)
    assert message in line and "s.h5" in line


def test_a_good_store_still_opens_and_reads(store_path):
    with FeatureStore(store_path) as fs:
        info = fs.info()
        assert info["images"] == N and fs.classes == CLASSES and fs.load(A).X.shape == (N, 8)
        assert fs.text(B)[0].shape == (3, 2, 6) and len(fs.ids) == N
