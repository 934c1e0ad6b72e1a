"""The feature store under faults: odd file names, disk full mid-write, a store in use, corrupted bytes, temp files."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import store
from store import ERROR, OK, PENDING, FeatureStore, open_for_images

NON_ASCII = "train/cat/Boëlle été 画像.png"
UNDECODABLE = os.fsdecode(b"unlabeled/bad\xff\xfe.png")  # a name that is not UTF-8: lone surrogates in Python
IDS = [NON_ASCII, "train/dog/b.png", UNDECODABLE, "test/d.png"]
SPLITS = ["train", "train", "unlabeled", "test"]
LABELS = [0, 1, -1, -1]
CLASSES = ["chat noir", "chien 犬"]
SPEC = "timm:x"
DIM = 3


def provenance(spec=SPEC, **changes):
    base = {"spec": spec, "weights_sha256": "w1", "weights_source": "test", "preprocessing": {"input_size": 8},
            "versions": {"torch": "1"}, "dtype": "float32", "views": 0, "view_kinds": []}
    return {**base, **changes}


FEATURES = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM)


def fill(fs, spec=SPEC, rows=(0, 1, 2, 3)):
    rows = np.asarray(rows)
    fs.write_rows(spec, rows, np.full(rows.size, OK), [f"{r:064x}" for r in rows], [None] * rows.size,
                  features=FEATURES[rows])


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore.create(path, IDS, SPLITS, LABELS, CLASSES, root=tmp_path) as fs:
        fs.begin_backbone(provenance(), dim=DIM)
        fill(fs)
    return path


def store_info(path, *extra):
    return subprocess.run([sys.executable, "-m", "store", "info", str(path), *extra], capture_output=True, text=True,
                          check=False)


# ---------------------------------------------------------------------------------------------- file names
def test_non_ascii_and_undecodable_ids_round_trip_exactly(store_path):
    with FeatureStore(store_path) as fs:
        assert list(fs.ids) == IDS and fs.classes == CLASSES
        rows = fs.load(SPEC)
        assert list(rows.ids) == IDS
        np.testing.assert_array_equal(rows.X, FEATURES)
    open_for_images(store_path, IDS, SPLITS, LABELS, CLASSES).close()  # the fingerprint matches on reopening


def test_store_info_shows_odd_names_readably(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore.create(path, IDS, SPLITS, LABELS, CLASSES) as fs:
        fs.begin_backbone(provenance(), dim=DIM)
        fs.write_rows(SPEC, np.arange(4), np.array([OK, OK, ERROR, OK]), ["a" * 64, "b" * 64, "c" * 64, "a" * 64],
                      [None, None, f"cannot decode {UNDECODABLE}", None], features=FEATURES[[0, 1, 3]])
    out = store_info(path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    shown = "unlabeled/bad\\xff\\xfe.png"
    assert info["failed"] == [{"id": shown, "error": f"cannot decode {shown}"}]
    assert info["duplicates"] == [sorted(["test/d.png", NON_ASCII])]
    text = store_info(path)
    assert text.returncode == 0, text.stderr
    assert "failed: unlabeled/bad\\xff\\xfe.png" in text.stdout and "chien 犬" in text.stdout
    assert store.display_id(UNDECODABLE) == "unlabeled/bad\\xff\\xfe.png" and store.display_id(NON_ASCII) == NON_ASCII


def test_version_1_store_with_ascii_ids_still_reads(tmp_path):
    """A store written by the first release (plain UTF-8 ids, format_version 1) opens and reads unchanged."""
    path = tmp_path / "v1.h5"
    ids = ["train/cat/a.png", "test/b.png"]
    with FeatureStore.create(path, ids, ["train", "test"], [0, -1], ["cat"]) as fs:
        fs.begin_backbone(provenance(), dim=DIM)
        fs.write_rows(SPEC, np.arange(2), np.full(2, OK), ["a" * 64] * 2, [None] * 2, features=FEATURES[:2])
    with h5py.File(path, "a") as f:  # exactly what version 1 wrote for the ids
        f.attrs["format_version"] = 1
        del f["images/id"]
        f["images"].create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    with FeatureStore(path) as fs:
        assert list(fs.ids) == ids and fs.load(SPEC).X.shape == (2, DIM)


# ---------------------------------------------------------------------------------------------- temp files
def enospc_on_create_dataset(monkeypatch, fail_at, after=False):
    """Make the ``fail_at``-th ``create_dataset`` call raise ENOSPC (after creating the dataset when ``after``)."""
    original = h5py.Group.create_dataset
    calls = {"n": 0}

    def create_dataset(self, name, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at and not after:
            raise OSError(errno.ENOSPC, "No space left on device")
        out = original(self, name, *args, **kwargs)
        if calls["n"] == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return out

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    return calls


@pytest.mark.parametrize("ids", [IDS, ["a.png", "b.png", "c.png", "d.png"]])
def test_failed_creation_leaves_no_file_behind(tmp_path, monkeypatch, ids):
    enospc_on_create_dataset(monkeypatch, fail_at=3, after=True)
    with pytest.raises((OSError, ValueError)):
        FeatureStore.create(tmp_path / "s.h5", ids, SPLITS, LABELS, CLASSES)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- disk full
def run_set_head(fs):
    fs.set_head(SPEC, np.full((2, DIM), 0.5), np.array([1.0, -1.0]), ["x", "y"])


def run_set_text(fs):
    fs.set_text(SPEC, np.ones((2, 3, DIM)), ["a {}", "b {}", "c {}"], 50.0)


def check_head(fs):
    weight, bias, names = fs.head(SPEC)
    np.testing.assert_array_equal(weight, np.full((2, DIM), 0.5))
    np.testing.assert_array_equal(bias, [1.0, -1.0])
    assert names == ["x", "y"]


def check_text(fs):
    text, templates, scale = fs.text(SPEC)
    np.testing.assert_array_equal(text, np.ones((2, 3, DIM)))
    assert templates == ["a {}", "b {}", "c {}"] and scale == 50.0


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("write, check, fail_at", [(run_set_head, check_head, 1), (run_set_head, check_head, 2),
                                                   (run_set_text, check_text, 1)])
def test_disk_full_in_a_side_dataset_write_is_resumable(store_path, monkeypatch, write, check, fail_at, after):
    with FeatureStore(store_path, "a") as fs:
        with monkeypatch.context() as m:
            enospc_on_create_dataset(m, fail_at, after)
            with pytest.raises((OSError, ValueError), match="No space left"):
                write(fs)
        # The failed write left something the rerun (and every reader) copes with.
        assert fs.head(SPEC) is None or check is check_text
        assert not fs.has_text(SPEC) or check is check_head
        write(fs)
        check(fs)
    with FeatureStore(store_path) as fs:
        check(fs)
        np.testing.assert_array_equal(fs.load(SPEC).X, FEATURES)


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_disk_full_while_starting_a_backbone_is_resumable(tmp_path, monkeypatch, fail_at, after):
    path = tmp_path / "s.h5"
    FeatureStore.create(path, IDS, SPLITS, LABELS, CLASSES).close()
    spec = "clip:y/z"
    with FeatureStore(path, "a") as fs:
        with monkeypatch.context() as m:
            enospc_on_create_dataset(m, fail_at, after)
            with pytest.raises((OSError, ValueError)):
                fs.begin_backbone(provenance(spec, views=2, view_kinds=["weak", "strong"]), dim=DIM,
                                  prob_classes=["p", "q"])
    with FeatureStore(path) as fs:  # readers see no half-made backbone
        assert fs.info()["backbones"] == {}
    with FeatureStore(path, "a") as fs:
        done = fs.begin_backbone(provenance(spec, views=2, view_kinds=["weak", "strong"]), dim=DIM,
                                 prob_classes=["p", "q"])
        assert not done.any()
        fs.write_rows(spec, np.arange(4), np.full(4, OK), ["a" * 64] * 4, [None] * 4, features=FEATURES,
                      views=np.stack([FEATURES, FEATURES], axis=1), probs=np.full((4, 2), 0.5))
        np.testing.assert_array_equal(fs.load(spec).X, FEATURES)


def test_half_made_group_of_an_older_release_is_rebuilt(store_path):
    """Version 1 created the group, then its datasets: a crash in between left a group without ``done``."""
    with h5py.File(store_path, "a") as f:
        g = f["backbones"].create_group("clip%3Ay%2Fz")
        g.attrs.update(spec="clip:y/z")
    with FeatureStore(store_path, "a") as fs:
        assert not fs.begin_backbone(provenance("clip:y/z"), dim=DIM).any()
        assert sorted(fs.backbones) == ["clip:y/z", SPEC]


def test_head_weight_without_bias_of_an_older_release_is_rewritten(store_path):
    with h5py.File(store_path, "a") as f:  # what a disk-full failure left behind in version 1
        f[f"backbones/{SPEC.replace(':', '%3A')}"].create_dataset("head_weight", data=np.zeros((2, DIM)))
    with FeatureStore(store_path, "a") as fs:
        assert fs.head(SPEC) is None
        run_set_head(fs)
        check_head(fs)


def test_text_without_attributes_of_an_older_release_is_rewritten(store_path):
    with h5py.File(store_path, "a") as f:  # version 1 created the dataset, then set its attributes
        f[f"backbones/{SPEC.replace(':', '%3A')}"].create_dataset("text", data=np.zeros((2, 3, DIM)))
    with FeatureStore(store_path, "a") as fs:
        assert not fs.has_text(SPEC)
        run_set_text(fs)
        check_text(fs)


def test_non_utf8_root_round_trips(tmp_path):
    root = os.fsdecode(b"/data/caf\xe9")
    with FeatureStore.create(tmp_path / "s.h5", IDS, SPLITS, LABELS, CLASSES, root=root) as fs:
        assert fs.root == root


# ---------------------------------------------------------------------------------------------- in use, corrupted
HOLDER = textwrap.dedent("""
    import sys, h5py
    f = h5py.File(sys.argv[1], "a")
    print("open", flush=True)
    sys.stdin.read()
""")


def test_store_held_by_another_writer_says_it_is_in_use(store_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ValueError, match="in use by another process"):
            FeatureStore(store_path)
        out = store_info(store_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "in use by another process" in out.stderr
    finally:
        holder.communicate("")
    with FeatureStore(store_path) as fs:
        assert len(fs) == 4


def feature_offset(path, spec=SPEC):
    with h5py.File(path, "r") as f:
        return f[f"backbones/{spec.replace(':', '%3A')}/features"].id.get_offset()


@pytest.mark.parametrize("garbage", [np.float32(np.nan).tobytes(), np.float32(3e30).tobytes(),
                                     np.float32(-np.inf).tobytes()])
def test_corrupted_feature_bytes_are_refused_on_read(store_path, garbage):
    offset = feature_offset(store_path) + 4 * DIM  # row 1, column 0
    with open(store_path, "r+b") as f:
        f.seek(offset)
        f.write(garbage)
    with FeatureStore(store_path) as fs:
        with pytest.raises(ValueError, match=r"s\.h5 is damaged.*timm:x.*re-embed"):
            fs.load(SPEC)
        with pytest.raises(ValueError, match="damaged"):
            list(fs.row_chunks(SPEC, np.arange(4), chunk_rows=2).chunks())
        assert fs.load(SPEC, "test").X.shape == (1, DIM)  # rows that are intact still read
    from store.shards import export_shards

    with pytest.raises(ValueError, match="damaged"):  # an export never spreads damaged rows
        export_shards(store_path, SPEC, store_path.parent / "shards", shard_size=2)
    with FeatureStore(store_path, "a") as fs:  # the fix the message names: the rerun embeds the damaged row again
        assert list(fs.begin_backbone(provenance(), dim=DIM)) == [True, False, True, True]
        fill(fs, rows=[1])
        np.testing.assert_array_equal(fs.load(SPEC).X, FEATURES)


@pytest.mark.parametrize("dtype, value", [("float32", np.inf), ("float32", np.nan), ("float16", 1e5)])
def test_non_finite_features_from_a_backbone_are_refused_before_writing(tmp_path, dtype, value):
    with FeatureStore.create(tmp_path / "s.h5", IDS, SPLITS, LABELS, CLASSES) as fs:
        fs.begin_backbone(provenance(dtype=dtype), dim=DIM)
        fill(fs, rows=[0])
        bad = FEATURES[1:].copy()
        bad[1, 1] = value
        with pytest.raises(ValueError, match=r"non-finite .* 1 image\(s\) of a batch, e\.g\. unlabeled/bad\\xff"):
            fs.write_rows(SPEC, np.arange(1, 4), np.full(3, OK), ["a" * 64] * 3, [None] * 3, features=bad)
        assert list(fs.rows_done(SPEC)) == [True, False, False, False]
        assert list(fs.status) == [OK, PENDING, PENDING, PENDING]
        fill(fs, rows=[1, 2, 3])  # the rerun (with sane features) completes the store
        np.testing.assert_array_equal(fs.load(SPEC).X, FEATURES.astype(dtype))


def test_random_corruption_gives_one_line_or_sane_values(tmp_path):
    """Whatever 64 random bytes hit, reading gives the right values or a ValueError -- never another exception."""
    n = 64
    base = tmp_path / "base.h5"
    ids = [f"train/c/{i}.png" for i in range(n)]
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, 16)).astype(np.float32)
    with FeatureStore.create(base, ids, ["train"] * n, [0] * n, ["c"]) as fs:
        fs.begin_backbone(provenance(), dim=16)
        fs.write_rows(SPEC, np.arange(n), np.full(n, OK), ["a" * 64] * n, [None] * n, features=features)
        fs.set_text(SPEC, np.ones((1, 1, 16)), ["a {}"], 10.0)
    data = base.read_bytes()
    path = tmp_path / "c.h5"
    for offset in range(0, len(data) - 64, 151):
        damaged = bytearray(data)
        damaged[offset:offset + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        path.write_bytes(damaged)
        try:
            with FeatureStore(path) as fs:
                fs.info()
                X = fs.load(SPEC).X
                fs.text(SPEC)
        except ValueError as err:
            assert "\n" not in str(err) and str(path) in str(err), (offset, err)
            continue
        assert np.isfinite(X).all() and np.abs(X).max() < 1e6, offset
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pending_rows_keep_status_pending(store_path):
    with FeatureStore(store_path, "a") as fs:
        fs.invalidate_rows(np.array([1, 3]))
        assert list(fs.status) == [OK, PENDING, OK, PENDING]
        assert list(fs.rows_done(SPEC)) == [True, False, True, False]
        assert list(fs.sha256[[1, 3]]) == ["", ""]


def test_a_store_of_normalised_features_offers_no_head_and_no_unwritten_probabilities(tmp_path):
    """Stores imported from normalised shards by earlier releases hold the raw-feature head and a probs dataset that
    was never written: ConSE would apply the head to unit vectors, and probs would be uninitialised bytes."""
    with FeatureStore.create(tmp_path / "s.h5", IDS, SPLITS, LABELS, CLASSES) as fs:
        fs.begin_backbone(provenance(preprocessing={"input_size": 8, "l2_normalized": True}, dtype="float16"),
                          dim=DIM, prob_classes=["x", "y"])
        fill(fs)
        run_set_head(fs)
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert fs.head(SPEC) is None and fs.info()["backbones"][SPEC]["probs"] is False
        with pytest.raises(ValueError, match="no classifier probabilities"):
            fs.probs(SPEC, np.arange(4))


# ---------------------------------------------------------------------------------------------- shard folders
@pytest.fixture
def shard_folder(store_path, tmp_path):
    pytest.importorskip("pyarrow")
    from store.shards import export_shards

    with FeatureStore(store_path, "a") as fs:
        run_set_head(fs)
        run_set_text(fs)
    return export_shards(store_path, SPEC, tmp_path / "shards", shard_size=2, normalize=False)


def test_shards_round_trip_odd_names(shard_folder, store_path, tmp_path):
    from store.shards import import_shards

    import_shards(shard_folder, tmp_path / "back.h5")
    with FeatureStore(tmp_path / "back.h5") as back, FeatureStore(store_path) as orig:
        assert list(back.ids) == IDS and back.fingerprint == orig.fingerprint
        check_head(back)
        check_text(back)


def test_format_1_folders_import_as_normalised_without_head(shard_folder, tmp_path):
    """Folders written before raw shards (format 1) held L2-normalised float16 features and say nothing of it."""
    from store.shards import import_shards

    meta = json.loads((shard_folder / "meta.json").read_text())
    meta = {k: v for k, v in meta.items() if k not in ("normalized", "dtype", "prob_classes")}
    (shard_folder / "meta.json").write_text(json.dumps({**meta, "format": "fewshot-feature-shards/1"}))
    import_shards(shard_folder, tmp_path / "back.h5")
    with FeatureStore(tmp_path / "back.h5") as back:
        assert back.provenance(SPEC)["preprocessing"]["l2_normalized"] is True and back.head(SPEC) is None
        check_text(back)


def test_failed_shard_write_leaves_no_temp_file(shard_folder, monkeypatch):
    from store.shards import ShardWriter, read_meta

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = ShardWriter(shard_folder, {k: v for k, v in read_meta(shard_folder).items() if k != "format"})
    monkeypatch.setattr(np, "save", full)
    with pytest.raises((OSError, ValueError), match="No space left"):
        writer.write_shard(5, np.ones((1, DIM)), ["x.png"], ["train"], [0], ["a" * 64], [OK], [None])
    with pytest.raises((OSError, ValueError), match="No space left"):
        writer.write_extra("text_emb", np.ones((2, 3, DIM)))
    assert not [p for p in shard_folder.rglob("*") if ".tmp" in p.name]
    assert not writer.done(5)


def rewrite_parquet(path, drop=None):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(table.drop_columns([drop]), path)


def damage(folder, how):
    """Damage a shard folder one way; returns the name of the file the error must name."""
    meta = folder / "meta.json"
    if how == "meta garbled":
        meta.write_text("{not json")
        return "meta.json"
    if how == "meta without dim":
        data = json.loads(meta.read_text())
        del data["dim"]
        meta.write_text(json.dumps(data))
        return "meta.json"
    if how == "meta n_shards text":
        data = json.loads(meta.read_text())
        data["n_shards"] = "two"
        meta.write_text(json.dumps(data))
        return "meta.json"
    if how == "shard missing":
        (folder / "img_emb" / "img_emb_1.npy").unlink()
        return "img_emb_1.npy"
    if how == "shard wrong shape":
        np.save(folder / "img_emb" / "img_emb_0.npy", np.zeros((3, DIM), dtype=np.float16))
        return "img_emb_0.npy"
    if how == "shard garbled":
        (folder / "img_emb" / "img_emb_1.npy").write_bytes(b"\x93NUMPY garbage")
        return "img_emb_1.npy"
    if how == "parquet missing column":
        rewrite_parquet(folder / "metadata" / "metadata_1.parquet", drop="status")
        return "metadata_1.parquet"
    if how == "parquet garbled":
        (folder / "metadata" / "metadata_0.parquet").write_bytes(b"PAR1 nope")
        return "metadata_0.parquet"
    if how == "parquet missing":
        (folder / "metadata" / "metadata_0.parquet").unlink()
        return "metadata_0.parquet"
    if how == "head bias missing":
        (folder / "head_bias.npy").unlink()
        return "head_bias.npy"
    if how == "text wrong shape":
        np.save(folder / "text_emb.npy", np.zeros((5, 3, DIM), dtype=np.float32))
        return "text_emb.npy"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["meta garbled", "meta without dim", "meta n_shards text", "shard missing",
                                 "shard wrong shape", "shard garbled", "parquet missing column", "parquet garbled",
                                 "parquet missing", "head bias missing", "text wrong shape"])
def test_malformed_shards_give_one_line_naming_the_file(shard_folder, tmp_path, how):
    name = damage(shard_folder, how)
    target = tmp_path / "imported.h5"
    out = subprocess.run([sys.executable, "-m", "store", "import-shards", str(shard_folder), str(target)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and name in out.stderr and "rerun" in out.stderr, out.stderr
    assert not target.exists()  # checked before anything is written
