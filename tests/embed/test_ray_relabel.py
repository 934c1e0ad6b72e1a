"""`embed run --engine ray` after labels changed (`store label`, a changed list, moved files): the shard folder is
named by its rows and the backbone's origin, not by the labels, so the run resumes it (or has nothing to embed)
and the store keeps the labels it was given."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")  # the [test] extra installs ray[data]; this guard only serves partial installs

from embed.cli import main as embed_main  # noqa: E402
from embed.engines import ray as ray_engine  # noqa: E402
from imagegen import write_good_images  # noqa: E402
from store import FeatureStore  # noqa: E402
from store.cli import main as store_main  # noqa: E402
from store.shards import read_meta  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def embedded(monkeypatch):
    """Rows Ray was asked to embed, per run."""
    runs = []
    original = ray_engine._embedded

    def counting(ray_module, rows, *args, **kwargs):
        runs.append(len(rows))
        return original(ray_module, rows, *args, **kwargs)

    monkeypatch.setattr(ray_engine, "_embedded", counting)
    return runs


def folder(root):
    for name, n, seed in (("train/cat", 3, 1), ("train/dog", 3, 2), ("unlabeled", 4, 3)):
        for path in write_good_images(root / name, n, seed=seed):
            path.rename(path.with_name(f"{name.replace('/', '_')}_{path.name}"))
    return root


def run_ray(root, spec, store, *extra):
    source = ["--data", str(root)] if root else []  # None: the list in extra names the images
    embed_main(["run", *source, "--backbone", spec, "--store", str(store), "--engine", "ray",
                "--num-cpus", "2", "--shard-size", "4", "--batch-size", "4", "--progress", "False",
                *map(str, extra)])


def labels(store):
    with FeatureStore(store) as fs:
        return {i: (fs.classes[y] if y >= 0 else None, s) for i, y, s in
                zip(fs.ids.tolist(), fs.labels.tolist(), fs.splits.tolist())}


def shard_folder(store):
    (only,) = list((store.parent / f"{store.name}.shards").iterdir())
    return only


def test_ray_run_after_store_label_keeps_the_answers(tmp_path, tiny_timm_ckpt, capsys, embedded):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run_ray(root, spec, store)
    assert embedded == [10]
    unlabeled, cat = sorted(i for i in labels(store) if i.startswith("unlabeled/"))[0], sorted(labels(store))[0]
    answers = tmp_path / "answers.csv"
    answers.write_text(f"id,label\n{unlabeled},dog\n{cat},dog\n")
    store_main(["label", "--store", str(store), "--labels", str(answers)])
    expected = labels(store)
    assert expected[unlabeled] == expected[cat] == ("dog", "train")
    run_ray(root, spec, store)  # was: "holds shards of another run (different image_list_sha256 ...)"
    assert embedded == [10] and labels(store) == expected  # nothing embedded again, the answers kept
    assert read_meta(shard_folder(store))["rows_sha256"]
    capsys.readouterr()


def test_a_killed_run_resumes_after_the_list_changed_labels(tmp_path, tiny_timm_ckpt, capsys, embedded):
    """No store yet (killed before import), the CSV list gives other labels: the finished shards are kept and
    relabelled, and the store is created with the new labels."""
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    rows = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    listing = root / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{r},{'cat' if k % 2 else 'dog'}\n" for k, r in enumerate(rows)))
    run_ray(None, spec, store, "--csv", listing)
    shards = shard_folder(store)
    store.unlink()
    (shards / "done" / "2").unlink()  # the last shard (rows 8, 9) never finished
    listing.write_text("path,label\n" + "".join(f"{r},{'bird' if k < 5 else 'cat'}\n" for k, r in enumerate(rows)))
    run_ray(None, spec, store, "--csv", listing)
    assert embedded == [10, 2]  # resumed: only the unfinished shard
    assert {i: y for i, (y, _) in labels(store).items()} == {r: "bird" if k < 5 else "cat" for k, r in enumerate(rows)}
    meta = read_meta(shards)
    assert meta["classes"] == ["bird", "cat"]
    import pyarrow.parquet as pq
    first = pq.read_table(shards / "metadata" / "metadata_0.parquet").to_pydict()
    assert first["label"] == [0, 0, 0, 0]  # the kept shard carries the new labels
    capsys.readouterr()


def test_ray_run_after_files_moved_embeds_nothing(tmp_path, tiny_timm_ckpt, capsys, embedded):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    root, store = folder(tmp_path / "data"), tmp_path / "s.h5"
    run_ray(root, spec, store)
    with FeatureStore(store) as fs:
        before = dict(zip(fs.sha256.tolist(), fs.load(fs.backbones[0]).X))
    moved = sorted((root / "unlabeled").iterdir())[0]
    shutil.move(moved, root / "train" / "dog" / moved.name)
    run_ray(root, spec, store)  # was: "holds shards of another run"
    assert embedded == [10]
    assert labels(store)[f"train/dog/{moved.name}"] == ("dog", "train")
    with FeatureStore(store) as fs:
        after = fs.load(fs.backbones[0])
        assert len(after.ids) == 10
        for digest, x in zip(fs.sha256.tolist(), after.X):
            np.testing.assert_array_equal(x, before[digest])
    capsys.readouterr()
