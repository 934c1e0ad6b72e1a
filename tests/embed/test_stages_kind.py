"""``stages:<name>``: a timm model's pooled features joined to its pooled last 3 stages, embedded by ``embed run`` as a
backbone of its own (the ``layers`` lever of benchmarks.levers made a product option)."""
import numpy as np
import pytest

from classify.methods.features import l2_normalize
from embed.backbones import load_backbone, parse_spec
from embed.cli import main as embed_main
from imagegen import write_good_images
from store import FeatureStore


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_timm_ckpt):
    """A store of 8 tiny images embedded by ``embed run`` with ``timm:`` and ``stages:`` of the same checkpoint."""
    root = tmp_path_factory.mktemp("stages")
    for k, name in enumerate("ab"):
        write_good_images(root / "data" / "train" / name, 4, size=32, seed=k)
    timm_spec, stages_spec = (f"{kind}:test_efficientnet@{tiny_timm_ckpt}" for kind in ("timm", "stages"))
    store = root / "s.h5"
    embed_main(["run", "--data", str(root / "data"), "--backbone", f"{timm_spec},{stages_spec}", "--store", str(store),
                "--image-size", "32", "--batch-size", "4", "--workers", "0", "--progress", "False"])
    return store, timm_spec, stages_spec


def test_embed_run_stores_the_joined_stages_as_their_own_backbone(embedded):
    store, timm_spec, stages_spec = embedded
    with FeatureStore(store) as fs:
        assert set(fs.backbones) == {timm_spec, stages_spec}
        plain_rows, rows = fs.load(timm_spec), fs.load(stages_spec)
        plain_prov, prov = fs.provenance(timm_spec), fs.provenance(stages_spec)
        assert fs.has_probs(stages_spec)
    assert np.array_equal(plain_rows.index, rows.index)
    plain, joined = plain_rows.X, rows.X
    dim = plain.shape[1]
    widths = [dim, 32, 48, 64]  # test_efficientnet: the head's features, then stages of 32, 48 and 64 channels
    assert joined.shape == (8, sum(widths)) and prov["dim"] == sum(widths)
    assert prov["weights_sha256"] == plain_prov["weights_sha256"]  # the same weights, another backbone group
    assert prov["preprocessing"] == plain_prov["preprocessing"]
    edges = np.cumsum([0] + widths)
    for a, b in zip(edges[:-1], edges[1:]):
        np.testing.assert_allclose(np.linalg.norm(joined[:, a:b], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(joined[:, :dim], l2_normalize(plain), rtol=1e-4, atol=1e-6)
    assert not np.allclose(joined[:, dim:dim + 32], joined[0, dim:dim + 32])  # the stages differ between images


def test_stages_spec_parses_like_timm_and_refuses_models_without_stages(tiny_timm_ckpt):
    assert str(parse_spec("stages:tf_efficientnet_lite0")) == "stages:tf_efficientnet_lite0"
    with pytest.raises(ValueError, match="unknown timm model"):
        parse_spec("stages:tf_efficientnet_lite9")
    backbone = load_backbone(f"stages:test_efficientnet@{tiny_timm_ckpt}", image_size=32)
    assert backbone.describe()["stage_dims"] == [32, 48, 64] and backbone.classifier_head() is None
