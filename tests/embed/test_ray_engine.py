"""Embedding on a local Ray cluster: shards equal the local run row for row, resume skips finished shards; exports
are L2-normalised float16 for embedding-reader, and a store imported from them offers no head."""
import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")  # the [test] extra installs ray[data]; this guard only serves partial installs

from embed import sources  # noqa: E402
from embed.engines.ray import embed_shards  # noqa: E402
from embed.engines.local import embed  # noqa: E402
from imagegen import write_bad_inputs, write_good_images  # noqa: E402
from store import FeatureStore  # noqa: E402
from store.shards import ShardWriter, export_shards, import_shards, read_meta  # noqa: E402

SHARD = 8


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_good_images(root / "train" / "cat", 5, seed=1)
    write_good_images(root / "train" / "dog", 5, seed=2)
    write_bad_inputs(root / "unlabeled")
    return sources.from_folder(root)


def normalised(X):
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def test_sharded_run_equals_local_run(images, tiny_timm_ckpt, tmp_path):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    embed(images, tmp_path / "local.h5", [spec], workers=0, progress=False)
    result = embed_shards(images, spec, tmp_path / "shards", shard_size=SHARD, batch_size=4, progress=False)
    assert result["written"] == result["shards"] == -(-len(images) // SHARD)
    meta = read_meta(tmp_path / "shards")
    emb0 = np.load(tmp_path / "shards" / "img_emb" / "img_emb_0.npy")
    assert emb0.dtype == np.float32 and emb0.shape == (SHARD, meta["dim"]) and meta["normalized"] is False
    import_shards(tmp_path / "shards", tmp_path / "ray.h5")
    with FeatureStore(tmp_path / "local.h5") as local, FeatureStore(tmp_path / "ray.h5") as sharded:
        assert list(sharded.ids) == list(local.ids)
        np.testing.assert_array_equal(sharded.status, local.status)
        assert sharded.errors() == local.errors() and len(local.errors()) == 6  # bad files: same status, same message
        a, b = local.load(spec), sharded.load(spec)
        assert list(a.ids) == list(b.ids)
        np.testing.assert_allclose(b.X, a.X, rtol=1e-4, atol=1e-5)  # the same raw features
        np.testing.assert_allclose(sharded.probs(spec, b.index)[0], local.probs(spec, a.index)[0], atol=1e-3)
        assert sharded.provenance(spec)["preprocessing"] == local.provenance(spec)["preprocessing"]


def test_normalised_export_imports_without_head_or_probabilities(images, tiny_timm_ckpt, tmp_path):
    """A store of L2-normalised features (the embedding-reader layout) must not offer the head of raw features:
    conse would apply it to unit vectors and be silently near-uniform."""
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    embed(images, tmp_path / "s.h5", [spec], workers=0, progress=False)
    export_shards(tmp_path / "s.h5", spec, tmp_path / "out", shard_size=5)
    assert np.load(tmp_path / "out" / "img_emb" / "img_emb_0.npy").dtype == np.float16
    import_shards(tmp_path / "out", tmp_path / "back.h5")
    with FeatureStore(tmp_path / "back.h5") as back:
        assert back.head(spec) is None and not back.info()["backbones"][spec]["probs"]
        assert back.provenance(spec)["preprocessing"]["l2_normalized"] is True
        with pytest.raises(ValueError, match="no classifier probabilities"):
            back.probs(spec, back.load(spec).index)


def test_resume_skips_every_finished_shard(images, tiny_timm_ckpt, tmp_path, monkeypatch):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    folder = tmp_path / "shards"
    original = ShardWriter.write_shard
    written = []

    def crash_after_two(self, n, *args):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")  # the driver dies between two shard writes
        written.append(n)
        original(self, n, *args)

    monkeypatch.setattr(ShardWriter, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed_shards(images, spec, folder, shard_size=SHARD, batch_size=4, progress=False)
    first = {n: (folder / "img_emb" / f"img_emb_{n}.npy").stat().st_mtime_ns for n in written}
    assert sorted(first) == [0, 1] and not (folder / "done" / "2").exists()

    monkeypatch.setattr(ShardWriter, "write_shard", lambda self, n, *a: (written.append(n), original(self, n, *a)))
    written.clear()
    result = embed_shards(images, spec, folder, shard_size=SHARD, batch_size=4, progress=False)
    n_shards = result["shards"]
    assert sorted(written) == list(range(2, n_shards))  # only the missing shards were computed
    assert result["rows"] == len(images) - 2 * SHARD
    assert {n: (folder / "img_emb" / f"img_emb_{n}.npy").stat().st_mtime_ns for n in first} == first
    assert embed_shards(images, spec, folder, shard_size=SHARD, progress=False)["written"] == 0


@pytest.mark.parametrize("normalize", [True, False])
def test_export_then_import_round_trip(images, tiny_timm_ckpt, tmp_path, normalize):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    embed(images, tmp_path / "s.h5", [spec], workers=0, progress=False)
    export_shards(tmp_path / "s.h5", spec, tmp_path / "out", shard_size=5, normalize=normalize)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    with FeatureStore(tmp_path / "s.h5") as a:
        failed = dict(a.errors())
    assert failed  # the folder has images that cannot be decoded
    # the normalised layout (what autofaiss indexes) holds only decoded images; the others are listed, not zeroed
    kept = len(images) - (len(failed) if normalize else 0)
    assert meta["n_shards"] == -(-kept // 5) and meta["n_images"] == kept
    assert meta["spec"] == spec and meta["normalized"] is normalize
    if normalize:
        assert {e["id"]: e["error"] for e in meta["left_out"]} == failed
        assert all(np.abs(np.load(f)).sum(axis=1).min() > 0 for f in (tmp_path / "out" / "img_emb").glob("*.npy"))
    import_shards(tmp_path / "out", tmp_path / "back.h5")
    with FeatureStore(tmp_path / "s.h5") as a, FeatureStore(tmp_path / "back.h5") as b:
        if normalize:
            np.testing.assert_allclose(b.load(spec).X, normalised(a.load(spec).X), atol=2e-3)
            assert b.errors() == [] and len(b) == kept
        else:  # a lossless copy: features, probabilities and head as they were
            np.testing.assert_array_equal(b.load(spec).X, a.load(spec).X)
            index = a.load(spec).index
            np.testing.assert_allclose(b.probs(spec, index)[0], a.probs(spec, index)[0])
            np.testing.assert_array_equal(b.head(spec)[0], a.head(spec)[0])
            assert b.errors() == a.errors()
    FeatureStore.create(tmp_path / "other.h5", ["x.png"], ["train"], [0], ["cat"]).close()
    with pytest.raises(ValueError, match="different image list"):
        import_shards(tmp_path / "out", tmp_path / "other.h5")


def test_odd_file_names_travel_through_shards(tiny_timm_ckpt, tmp_path):
    """Non-ASCII and non-UTF-8 file names: ids survive Ray, the parquet metadata and the import exactly."""
    root = tmp_path / "data"
    cat, dog = write_good_images(root / "train" / "cat", 1, seed=3)[0], write_good_images(root / "train" / "dog", 1)[0]
    cat.rename(cat.with_name("Boëlle été 画像.png"))
    dog.rename(dog.with_name(os.fsdecode(b"bad\xff.png")))
    images = sources.from_folder(root)
    assert any("\udcff" in i for i in images.ids) and any("画像" in i for i in images.ids)
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    result = embed_shards(images, spec, tmp_path / "shards", shard_size=SHARD, batch_size=4, progress=False)
    assert result["written"] == 1
    import_shards(tmp_path / "shards", tmp_path / "ray.h5")
    with FeatureStore(tmp_path / "ray.h5") as fs:
        assert list(fs.ids) == list(images.ids) and (fs.status == 1).all()
    assert not [p for p in (tmp_path / "shards").rglob("*") if ".tmp" in p.name]


def test_resume_embeds_a_changed_file_again(tiny_timm_ckpt, tmp_path):
    root = tmp_path / "data"
    cats = write_good_images(root / "train" / "cat", SHARD + 2, seed=4)
    other = write_good_images(tmp_path / "other", 1, seed=11)[0]
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    folder = tmp_path / "shards"
    embed_shards(sources.from_folder(root), spec, folder, shard_size=SHARD, batch_size=4, progress=False)
    import_shards(folder, tmp_path / "ray.h5")
    cats[-1].write_bytes(other.read_bytes())  # another picture under the same name, in the second shard
    images = sources.from_folder(root)
    result = embed_shards(images, spec, folder, shard_size=SHARD, batch_size=4, progress=False)
    changed = cats[-1].relative_to(root).as_posix()
    assert result["written"] == 1 and result["changed"] == [changed]
    import_shards(folder, tmp_path / "ray.h5")
    embed(images, tmp_path / "local.h5", [spec], workers=0, progress=False)
    with FeatureStore(tmp_path / "local.h5") as local, FeatureStore(tmp_path / "ray.h5") as sharded:
        np.testing.assert_allclose(sharded.load(spec).X, local.load(spec).X, rtol=1e-4, atol=1e-5)
        assert list(sharded.sha256) == list(local.sha256)
