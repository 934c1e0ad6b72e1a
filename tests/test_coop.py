"""Tests for CoOp (``coop``) with a tiny random-weight open_clip model: the prompt path equals ``encode_text``,
gradients reach only the context vectors, the loss decreases, and a saved model holds no CLIP weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from classify import persist
from classify.methods import coop as coop_module
from classify.methods.coop import CoOp, build_prompt_learner
from classify.pipeline import build
from embed.backbones import load_backbone, weights_sha256

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
