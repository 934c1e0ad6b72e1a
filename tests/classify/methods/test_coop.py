"""Tests for CoOp (``coop``) with a tiny random-weight open_clip model: the prompt path equals ``encode_text``,
gradients reach only the context vectors, the loss decreases, a saved model holds no CLIP weights, a tower whose
weights differ from the store's is refused and a checked tower is loaded once for repeated fits."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score

import embed.backbones
import tinymodels
from classify import persist, pipeline
from classify.methods import coop as coop_module
from classify.methods.coop import CoOp, build_prompt_learner
from classify.pipeline import build
from embed.backbones import load_backbone, weights_sha256
from store import OK, FeatureStore

NAMES = ["cat", "dog", "traffic light"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on 2 shared cores: one thread is ~10x faster than torch's pool (oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spec(tiny_clip_ckpt):
    arch, ckpt = tiny_clip_ckpt
    return f"clip:{arch}@{ckpt}"


@pytest.fixture(scope="module")
def data(spec):
    """Image features near the (permuted) class prompts' embeddings: zero-shot starts wrong, learning helps."""
    bb = load_backbone(spec)
    with torch.no_grad():
        text = torch.nn.functional.normalize(bb.model.encode_text(bb.tokenizer([f"a photo of a {n}." for n in NAMES])),
                                             dim=-1).numpy()  # (C, D)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 8)
    X = text[[1, 2, 0]][y] + 0.05 * rng.normal(size=(len(y), text.shape[1]))  # class c looks like text c+1
    return X.astype(np.float32), y


def test_prompt_learner_equals_encode_text(spec):
    bb = load_backbone(spec)
    learner = build_prompt_learner(bb.model, bb.tokenizer, NAMES, ctx_init="a photo of a")
    with torch.no_grad():
        ours = learner()  # (C, D) on prompts cut after the last end-of-text token
        ref = bb.model.encode_text(bb.tokenizer([f"a photo of a {n}." for n in NAMES]))
    assert learner.ctx.shape == (4, bb.model.token_embedding.weight.shape[1])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_gradients_reach_only_the_context_vectors(spec):
    bb = load_backbone(spec)
    for p in bb.model.parameters():
        p.requires_grad_(True)  # even a trainable model is frozen by the learner
    learner = build_prompt_learner(bb.model, bb.tokenizer, NAMES, n_ctx=3, ctx_init=None,
                                   generator=torch.Generator().manual_seed(0))
    images = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    logits = 100.0 * images @ torch.nn.functional.normalize(learner(), dim=-1).T
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert [name for name, p in learner.named_parameters()] == ["ctx"]
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())


def test_fit_learns_and_leaves_clip_untouched(spec, data, monkeypatch):
    X, y = data
    bb = load_backbone(spec)
    before = weights_sha256(bb.model)
    monkeypatch.setattr("embed.backbones.load_backbone", lambda *a, **k: bb)  # coop's lazy import sees this one
    init = CoOp(class_names=NAMES, backbone_spec=spec, epochs=0).fit(X, y)
    model = CoOp(class_names=NAMES, backbone_spec=spec, epochs=25, lr=5e-3, logit_scale=30.0).fit(X, y)
    assert weights_sha256(bb.model) == before
    assert model.loss_curve_[-1] < 0.5 * model.loss_curve_[0]
    assert not np.allclose(model.ctx_, init.ctx_)
    assert (model.predict(X) == y).mean() > (init.predict(X) == y).mean()
    assert model.logit_scale_ == 30.0 and init.logit_scale_ == pytest.approx(bb.logit_scale)
    # predict is a matrix product with the stored class embeddings
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    z = 30.0 * Xn @ model.class_embeddings_.T
    expected = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(model.predict_proba(X), expected / expected.sum(1, keepdims=True), rtol=1e-5)


def test_saved_model_holds_no_clip_model(spec, data, tmp_path):
    X, y = data
    model = CoOp(class_names=NAMES, backbone_spec=spec, epochs=2).fit(X, y)
    path = persist.save({"estimator": model}, tmp_path / "coop.skops")
    assert path.stat().st_size < 40_000
    assert all(not isinstance(v, torch.Tensor) for v in vars(model).values())
    np.testing.assert_array_equal(persist.load(path)["estimator"].predict_proba(X), model.predict_proba(X))
    assert model.class_embeddings_.shape == (3, 32)


def test_deterministic(spec, data):
    X, y = data
    a = CoOp(class_names=NAMES, backbone_spec=spec, ctx_init=None, epochs=3, batch_size=8, random_state=1).fit(X, y)
    b = CoOp(class_names=NAMES, backbone_spec=spec, ctx_init=None, epochs=3, batch_size=8, random_state=1).fit(X, y)
    np.testing.assert_array_equal(a.ctx_, b.ctx_)
    assert len(a.loss_curve_) == 3


def test_pipeline_context_fills_spec_and_names(spec):
    model = build("coop", {"epochs": 1}, {"class_names": NAMES, "backbone_spec": spec, "logit_scale": 50.0,
                                          "text_embeddings": np.zeros((3, 1, 32))})
    assert model.class_names == NAMES and model.backbone_spec == spec and model.logit_scale == 50.0


def test_errors(spec, data):
    X, y = data
    with pytest.raises(ValueError, match="backbone_spec"):
        CoOp(class_names=NAMES).fit(X, y)
    with pytest.raises(ValueError, match="clip:"):
        CoOp(class_names=NAMES, backbone_spec="timm:resnet18").fit(X, y)
    with pytest.raises(ValueError, match="class_names"):
        CoOp(backbone_spec=spec).fit(X, y)
    with pytest.raises(ValueError, match="labeled rows"):
        CoOp(class_names=NAMES, backbone_spec=spec).fit(X, np.full_like(y, -1))
    with pytest.raises(ValueError, match="columns"):
        CoOp(class_names=NAMES, backbone_spec=spec, epochs=0).fit(X[:, :16], y)
    with pytest.raises(ValueError, match="does not fit"):
        CoOp(class_names=["a very long class name " * 3, "b"], backbone_spec=spec, epochs=0).fit(X, y % 2)
    assert coop_module.CoOp is CoOp

# sklearn's estimator checks are not run: the classes come from class_names and the feature dimension from the CLIP
# model, so the checks' random data cannot fit it (as for zeroshot).


# ------------------------------------------------------------------------------ the store's weights and the tower
def _clip_store(path, spec, X, y, weights_sha256):
    """A store of ``X`` as the features of ``spec`` computed with weights ``weights_sha256``: 3 labeled images per
    class in train, the rest unlabeled; no labeled test split (evaluate cross-validates)."""
    splits = ["train" if k % 8 < 3 else "unlabeled" for k in range(len(y))]
    ids = [f"{s}/{NAMES[c]}{k}.png" for k, (c, s) in enumerate(zip(y, splits))]
    labels = [int(c) if s == "train" else -1 for c, s in zip(y, splits)]
    with FeatureStore.create(path, ids, splits, labels, NAMES) as fs:
        fs.begin_backbone({"spec": spec, "weights_sha256": weights_sha256, "weights_source": "test",
                           "preprocessing": {}, "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []},
                          X.shape[1])
        fs.write_rows(spec, np.arange(len(y)), np.full(len(y), OK), [None] * len(y), [None] * len(y), features=X)
        fs.set_text(spec, np.zeros((len(NAMES), 1, X.shape[1]), np.float32), ["a photo of a {}."], 100.0)
    return path


@pytest.fixture
def own_checkpoint(tmp_path, tiny_clip_ckpt):
    """A spec whose checkpoint file this test may replace (the session's is shared), and that file's weights hash."""
    arch, ckpt = tiny_clip_ckpt
    path = tmp_path / "clip.pt"
    shutil.copy(ckpt, path)
    return f"clip:{arch}@{path}", path, weights_sha256(torch.load(path, weights_only=True))


def test_refuses_a_tower_whose_weights_differ_from_the_stores(own_checkpoint, data, tmp_path):
    """The checkpoint behind the spec changed after the store was embedded: coop refuses in one line, naming the fix."""
    spec, path, sha = own_checkpoint
    X, y = data
    store_path = _clip_store(tmp_path / "s.h5", spec, X, y, sha)
    tinymodels.make_clip_checkpoint(path, seed=1)  # re-downloaded / replaced: other weights under the same spec
    with FeatureStore(store_path) as store, pytest.raises(ValueError, match="other weights") as err:
        pipeline.fit(store, [spec], "coop", {"epochs": 1})
    message = str(err.value)
    assert "\n" not in message and sha[:12] in message and "embed run" in message and spec in message
    with pytest.raises(ValueError, match="other weights"):
        CoOp(class_names=NAMES, backbone_spec=spec, backbone_weights_sha256=sha, epochs=0).fit(X, y)


def test_cross_validation_loads_the_tower_once(own_checkpoint, data, tmp_path, monkeypatch):
    """Every fold of a cross-validation uses the tower of (spec, store's weights) loaded by the first fit."""
    spec, _, sha = own_checkpoint
    X, y = data
    loads = []

    def counting_load(spec_, **kwargs):
        loads.append(spec_)
        return load_backbone(spec_, **kwargs)

    monkeypatch.setattr(embed.backbones, "load_backbone", counting_load)
    with FeatureStore(_clip_store(tmp_path / "s.h5", spec, X, y, sha)) as store:
        model = pipeline.build("coop", {"epochs": 2}, pipeline.store_context(store, spec))
        assert model.backbone_weights_sha256 == sha
        assert len(cross_val_score(model, X, y, cv=3)) == 3 and loads == [spec]
        pipeline.fit(store, [spec], "coop", {"epochs": 1})
    assert loads == [spec]
    CoOp(class_names=NAMES, backbone_spec=spec, epochs=0).fit(X, y)  # no expected hash: nothing to cache it under
    assert loads == [spec, spec]
