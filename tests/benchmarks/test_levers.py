"""The lever benchmark: feature variants built from the cached stores, aligned by image id, scored on dev draws."""
import re

import numpy as np
import pytest
import torch

import tinymodels
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
    assert re.search(r"\([+-]\d+\.\d ± \d+\.\d\)", text)  # the paired change against the plain features
    with pytest.raises(ValueError, match="toy-224px.h5 is missing"):
        levers._store(folder, "toy", 224)


@pytest.fixture
def image_cache(tmp_path, tiny_timm_ckpt):
    """A store embedded by ``embed`` from 32 px images with a tiny timm model, named like the benchmarks' stores."""
    from embed import sources
    from embed.engines.local import embed
    from imagegen import write_good_images

    root = tmp_path / "images"
    for split, n in (("train", 4), ("test", 2)):
        for k, name in enumerate("ab"):
            write_good_images(root / split / name, n, size=32, seed=10 * k + n)
    ckpt = tmp_path / "tiny.pth"
    ckpt.write_bytes(tiny_timm_ckpt.read_bytes())
    spec = f"timm:test_efficientnet@{ckpt}"
    folder = tmp_path / "cache"
    folder.mkdir()
    embed(sources.from_folder(root), folder / "toy-32px.h5", [spec], device="cpu", workers=0, image_size=32,
          progress=False)
    return folder, spec, ckpt


def _stage_outputs(model, x):
    """Pooled outputs of the modules timm's ``feature_info`` names for the last 3 stages, caught by forward hooks."""
    caught = []
    hooks = [model.get_submodule(name).register_forward_hook(lambda m, i, out: caught.append(out.mean(dim=(2, 3))))
             for name in [info["module"] for info in model.feature_info[-3:]]]
    with torch.inference_mode():
        model(x)
    for hook in hooks:
        hook.remove()
    return [c.numpy() for c in caught]


def test_layers_joins_the_pooled_last_stages_and_caches_them(image_cache, monkeypatch):
    from benchmarks import layer_features
    from embed.backbones import load_backbone
    from embed.images import load_image

    folder, spec, _ = image_cache
    task = load_task("toy", folder / "toy-32px.h5", spec)
    joined = levers.variant("layers", task, folder, "toy", 32, backbone=spec)
    dim = task.data.X.shape[1]
    widths = [dim, 32, 48, 64]  # test_efficientnet: the head's features, then stages of 32, 48 and 64 channels
    assert joined.shape == (len(task.data.ids), sum(widths))
    edges = np.cumsum([0] + widths)
    for a, b in zip(edges[:-1], edges[1:]):
        np.testing.assert_allclose(np.linalg.norm(joined[:, a:b], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(joined[:, :dim], l2_normalize(task.data.X), rtol=1e-5)
    backbone = load_backbone(spec, image_size=32)
    store = FeatureStore(folder / "toy-32px.h5")
    row = 3  # the stages of that row's own image, computed here through forward hooks
    x = backbone.eval_transform(load_image(f"{store.root}/{task.data.ids[row]}").image)[None]
    expected = np.hstack([l2_normalize(s) for s in _stage_outputs(backbone.model, x)])[0]
    np.testing.assert_allclose(joined[row, dim:], expected, rtol=1e-4, atol=1e-5)

    assert layer_features.cache_path(folder / "toy-32px.h5").is_file()
    monkeypatch.setattr(layer_features, "load_backbone", lambda *a, **k: pytest.fail("embedded again"))
    np.testing.assert_array_equal(levers.variant("layers", task, folder, "toy", 32, backbone=spec), joined)
    np.testing.assert_array_equal(levers.variant("layersonly", task, folder, "toy", 32, backbone=spec),
                                  joined[:, dim:])
    np.testing.assert_array_equal(levers.variant("layers2", task, folder, "toy", 32, backbone=spec),
                                  np.hstack([joined[:, :dim], joined[:, dim + 32:]]))  # without the earliest stage


def test_layers_refuses_a_store_of_other_weights(image_cache):
    from benchmarks import layer_features

    folder, spec, ckpt = image_cache
    tinymodels.make_timm_checkpoint(ckpt, seed=1)  # the same spec now names other weights than the store's
    task = load_task("toy", folder / "toy-32px.h5", spec)
    with pytest.raises(ValueError, match="other features than the store's"):
        levers.variant("layers", task, folder, "toy", 32, backbone=spec)
    assert not layer_features.cache_path(folder / "toy-32px.h5").exists()
