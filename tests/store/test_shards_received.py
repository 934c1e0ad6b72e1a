"""Shard folders received from someone else, and exports that fail: `store import-shards` reads only the folder (and
names it as the data folder, unless --allow-outside), refuses ids that leave it, duplicate ids and metadata of the
wrong kind before it writes anything; `store export` replaces a folder whole or leaves it as it was."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from crafted_stores import A, good_shards, good_store, set_meta, set_shard_ids
from store import OK, FeatureStore
from store.cli import main as store_main

pytest.importorskip("pyarrow")

N = 195  # images in synthstore.make_store; shards of 50 rows: 4 shards


def fails(args, capsys) -> str:
    """The one error line of a `python -m store` command that must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        store_main([str(a) for a in args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def store_path(tmp_path):
    return good_store(tmp_path / "s.h5")


@pytest.fixture
def shards(store_path, tmp_path):
    return good_shards(store_path, tmp_path / "shards")


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders beside or inside ``folder``."""
    return sorted(p.name for p in list(folder.parent.iterdir()) + list(folder.rglob("*")) if ".tmp" in p.name)


# ---------------------------------------------------------------------------------------------- outside the folder
def test_import_names_the_shard_folder_as_data_folder_unless_allowed_outside(shards, tmp_path, capsys):
    """A folder naming root "/" must not make the suite read the user's files through the store's data folder."""
    set_meta(shards, root="/")
    store_main(["import-shards", shards, "--store", tmp_path / "back.h5"])
    with FeatureStore(tmp_path / "back.h5") as fs:
        assert fs.root == str(shards.resolve()) and len(fs) == N
    store_main(["import-shards", shards, "--store", tmp_path / "trusted.h5", "--allow-outside"])
    with FeatureStore(tmp_path / "trusted.h5") as fs:
        assert fs.root == "/"


def test_a_caller_that_knows_the_data_folder_names_it(shards, tmp_path):
    """`embed run --engine ray` imports its own shards of its --data folder: that folder, wherever meta.json says."""
    from store.shards import import_shards

    set_meta(shards, root="/somewhere/else")
    import_shards(shards, tmp_path / "back.h5", allow_outside=True, root=tmp_path / "data")
    with FeatureStore(tmp_path / "back.h5") as fs:
        assert fs.root == str(tmp_path / "data")


@pytest.mark.parametrize("bad_id", ["/etc/passwd", "../../etc/passwd", "train/../../../etc/passwd", "..\\..\\x.png",
                                    "C:/Windows/x.png", ""])
def test_ids_leaving_the_folder_are_refused(shards, tmp_path, capsys, bad_id):
    set_shard_ids(shards, 2, {3: bad_id})
    line = fails(["import-shards", shards, "--store", tmp_path / "back.h5"], capsys)
    assert "metadata_2.parquet" in line and repr(bad_id) in line and "--allow-outside" in line
    assert not (tmp_path / "back.h5").exists()
    if bad_id:  # the user's choice: a folder they trust
        store_main(["import-shards", shards, "--store", tmp_path / "back.h5", "--allow-outside"])
        with FeatureStore(tmp_path / "back.h5") as fs:
            assert bad_id in list(fs.ids)


def test_a_file_linked_from_outside_the_folder_is_refused(shards, tmp_path, capsys):
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, np.ones((50, 8), dtype=np.float32))
    target = shards / "img_emb" / "img_emb_1.npy"
    target.unlink()
    target.symlink_to(outside)
    line = fails(["import-shards", shards, "--store", tmp_path / "back.h5"], capsys)
    assert "img_emb_1.npy" in line and "outside" in line and "--allow-outside" in line
    assert not (tmp_path / "back.h5").exists()


# ---------------------------------------------------------------------------------------------- stale and duplicate
KILL_AFTER_ONE_SHARD = textwrap.dedent("""
    import os, sys
    from store.shard_format import ShardWriter
    from store.cli import main
    original = ShardWriter.write_shard
    def write_shard(self, n, *args, **kwargs):
        if n == 1:
            os._exit(9)  # killed: no cleanup of any kind runs
        original(self, n, *args, **kwargs)
    ShardWriter.write_shard = write_shard
    main(sys.argv[1:])
""")


def test_a_killed_re_export_leaves_the_previous_export_whole(store_path, shards, tmp_path):
    with FeatureStore(store_path) as fs:
        before = fs.load(A).X
    with FeatureStore(store_path, "a") as fs:  # the store changes (say, files re-embedded), then is exported again
        fs.write_rows(A, np.arange(N), np.full(N, OK), [None] * N, [None] * N, features=before + 100)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_ONE_SHARD, "export", "--store", store_path,
                             "--backbone", A, "--out", shards, "--shard-size", "50", "--nonormalize"],
                            capture_output=True, text=True, check=False)
    assert killed.returncode == 9, killed.stderr
    out = subprocess.run([sys.executable, "-m", "store", "import-shards", shards, "--store", tmp_path / "back.h5"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    with FeatureStore(tmp_path / "back.h5") as fs:  # the old export, whole: never some new shards among old ones
        np.testing.assert_array_equal(fs.load(A).X, before)
    store_main(["export", "--store", store_path, "--backbone", A, "--out", shards, "--shard-size", "50",
                "--nonormalize"])
    store_main(["import-shards", shards, "--store", tmp_path / "new.h5"])
    with FeatureStore(tmp_path / "new.h5") as fs:
        np.testing.assert_array_equal(fs.load(A).X, before + 100)


def test_duplicate_ids_are_refused(shards, tmp_path, capsys):
    set_shard_ids(shards, 3, {1: "train/cat/0.png"})  # already row 0 of shard 0
    line = fails(["import-shards", shards, "--store", tmp_path / "back.h5"], capsys)
    assert "'train/cat/0.png'" in line and "twice" in line
    assert not (tmp_path / "back.h5").exists()


# ---------------------------------------------------------------------------------------------- metadata checked first
@pytest.mark.parametrize("changes, key", [
    ({"logit_scale": "abc"}, "logit_scale"),
    ({"templates": "a photo of a {}."}, "templates"),
    ({"classes": [1, 2, 3]}, "classes"),
    ({"head_classes": "cat"}, "head_classes"),
    ({"prob_classes": [None]}, "prob_classes"),
    ({"root": 5}, "root"),
    ({"n_images": 10}, "n_images"),
    ({"shard_size": 0}, "shard_size"),
    ({"dim": 1 << 30}, "dim"),
    ({"versions": []}, "versions"),
])
def test_shard_metadata_is_checked_before_anything_is_written(store_path, tmp_path, capsys, changes, key):
    with FeatureStore(store_path, "a") as fs:
        fs.set_head(A, np.ones((2, 8)), np.zeros(2), ["x", "y"])
        fs.set_text(A, np.ones((3, 2, 8)), ["a {}", "the {}"], 100.0)
    shards = good_shards(store_path, tmp_path / "shards")
    set_meta(shards, **changes)
    line = fails(["import-shards", shards, "--store", tmp_path / "back.h5"], capsys)
    assert "meta.json" in line and key in line
    assert not (tmp_path / "back.h5").exists()


def test_a_bad_digest_is_refused_before_anything_is_written(shards, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = shards / "metadata" / "metadata_3.parquet"
    table = pq.read_table(path)
    digests = table.column("sha256").to_pylist()
    digests[0] = "é" * 64
    pq.write_table(table.set_column(table.column_names.index("sha256"), "sha256", pa.array(digests)), path)
    line = fails(["import-shards", shards, "--store", tmp_path / "back.h5"], capsys)
    assert "metadata_3.parquet" in line and "sha256" in line
    assert not (tmp_path / "back.h5").exists()


# ---------------------------------------------------------------------------------------------- export failures
def test_export_to_a_file_is_one_line_and_leaves_it(store_path, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    line = fails(["export", "--store", store_path, "--backbone", A, "--out", target], capsys)
    assert "notes.txt" in line and "folder" in line
    assert target.read_text() == "keep me" and not leftovers(target)


def test_export_to_a_read_only_folder_is_one_line(store_path, tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).parent == read_only:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    line = fails(["export", "--store", store_path, "--backbone", A, "--out", read_only / "shards"], capsys)
    assert "Read-only file system" in line and "shards" in line
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True])
def test_export_on_a_full_disk_leaves_nothing_half_written(store_path, tmp_path, capsys, monkeypatch, existing):
    out = tmp_path / "shards"
    if existing:  # an earlier export stays as it was
        good_shards(store_path, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} if existing else None
    real_save, saved = np.save, []

    def save(file, array, *args, **kwargs):
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(file)
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    line = fails(["export", "--store", store_path, "--backbone", A, "--out", out, "--nonormalize",
                 "--shard-size", "50"], capsys)
    assert "No space left on device" in line and "shards" in line
    if existing:
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    else:
        assert not out.exists()
    assert not [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
