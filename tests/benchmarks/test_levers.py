"""The lever benchmark: feature variants built from the cached stores, aligned by image id, scored on dev draws."""
import numpy as np
import pytest

from benchmarks import levers
from benchmarks.run import load_task
from classify.methods.features import l2_normalize
from store import OK, FeatureStore

SPEC = levers.BACKBONE


def write_store(path, ids, y, feats, views=None, probs=None):
    """A store of one backbone named like the benchmarks' (train rows labeled; ``ids`` ordered as given)."""
    splits = ["train" if i.startswith("train") else "test" for i in ids]
    with FeatureStore.create(path, ids, splits, list(y), ["a", "b"]) as fs:
        kinds = [] if views is None else ["weak", "strong"]
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": len(kinds), "view_kinds": kinds},
                          feats.shape[1], prob_classes=None if probs is None else ["p0", "p1", "p2"])
        fs.write_rows(SPEC, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=feats, views=views, probs=probs)


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    y = np.repeat([0, 1], n // 2)
    ids = [f"{'train' if k % 4 else 'test'}/{'ab'[c]}/{k}.png" for k, c in enumerate(y)]
    feats = (3 * y[:, None] + rng.normal(size=(n, 6))).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    views = (feats[:, None, :] + rng.normal(size=(n, 2, 6))).astype(np.float32)
    write_store(tmp_path / "toy-nativepx.h5", ids, y, feats, probs=probs)
    write_store(tmp_path / "toy-nativepx-views2.h5", ids, y, feats, views=views)
    order = np.arange(n)[::-1]  # the 112 px store lists the images in another order: rows are matched by id
    write_store(tmp_path / "toy-112px.h5", [ids[k] for k in order], y[order], 2 * feats[order])
    return tmp_path, feats, probs, views


def test_variants_are_aligned_by_image_id(cache):
    folder, feats, probs, views = cache
    task = load_task("toy", folder / "toy-nativepx.h5", SPEC)
    rows = task.data.index
    np.testing.assert_array_equal(levers.variant("plain", task, folder, "toy", None), feats[rows])
    joined = levers.variant("probs", task, folder, "toy", None)
    np.testing.assert_allclose(joined, np.hstack([l2_normalize(feats), l2_normalize(np.sqrt(probs))])[rows],
                               atol=1e-3)  # the store keeps probabilities at half precision
    averaged = levers.variant("views", task, folder, "toy", None)  # plain and the weak view (the first), not strong
    np.testing.assert_allclose(averaged, ((l2_normalize(feats) + l2_normalize(views[:, 0])) / 2)[rows], rtol=1e-5)
    scales = levers.variant("multiscale", task, folder, "toy", None)
    np.testing.assert_allclose(scales, np.hstack([l2_normalize(feats), l2_normalize(2 * feats)])[rows], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown lever"):
        levers.variant("nope", task, folder, "toy", None)


def test_the_table_scores_dev_draws_on_hidden_train_rows(cache, tmp_path, capsys):
    folder, *_ = cache
    levers.main(["--datasets", "toy", "--levers", "plain,multiscale", "--methods", "linear,knn", "--cache",
                 str(folder), "--shots", "2", "--seeds", "100,101", "--results", str(tmp_path / "out"), "--out", "t"])
    text = (tmp_path / "out" / "t.md").read_text()
    assert "| linear | plain | " in text and "| knn | multiscale | " in text and "toy 2-shot" in text
    assert "(+" in text or "(-" in text  # the change against the plain features
    with pytest.raises(ValueError, match="toy-224px.h5 is missing"):
        levers._store(folder, "toy", 224)
