"""Oracle tests for Tip-Adapter (``tip``): zero-shot at alpha=0, a hand computation, CV on labeled rows only."""
from __future__ import annotations

import fewshot_data
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from classify import create
from classify.methods.conse import ConSE
from classify.methods.linear import LinearProbe
from classify.methods.tip import TipAdapter, cache_logits
from classify.methods.zeroshot import ZeroShotClassifier


_softmax = fewshot_data.softmax


def _clip_like(n_per_class=12, n_classes=3, dim=8, noise=0.8, seed=0):
    """Image features near their class's text embedding (zero-shot is decent, not perfect): X, y, text (C, 2, D)."""
    return fewshot_data.clip_like(n_per_class, n_classes, dim, noise, 0.8, 2, 2.0, seed)


def test_alpha_zero_equals_zeroshot_exactly():
    X, y, text = _clip_like()
    y_semi = y.copy()
    y_semi[1::2] = -1
    tip = TipAdapter(text_embeddings=text, alpha=0.0, beta=5.0).fit(X, y_semi)
    zs = ZeroShotClassifier(text_embeddings=text).fit(X)
    np.testing.assert_array_equal(tip.predict_proba(X), zs.predict_proba(X))
    np.testing.assert_array_equal(tip.predict(X), zs.predict(X))


def test_equals_hand_computation():
    text = np.array([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # (C=2, T=1, D=3)
    X_lab = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    y_lab = np.array([0, 1, 1])
    Q = np.array([[1.0, 2.0, 2.0], [0.5, 0.0, 0.0]])
    alpha, beta, scale = 1.5, 2.0, 10.0
    expected = np.zeros((len(Q), 2))
    for i, q in enumerate(Q):
        qn = q / np.sqrt(q @ q)
        for c in range(2):
            w = text[c, 0] / np.sqrt(text[c, 0] @ text[c, 0])
            cache = sum(np.exp(-beta * (1.0 - qn @ (k / np.sqrt(k @ k)))) for k, lab in zip(X_lab, y_lab) if lab == c)
            expected[i, c] = scale * qn @ w + alpha * cache
    X = np.vstack([X_lab, Q])
    y = np.concatenate([y_lab, [-1, -1]])  # the queries are unlabeled rows: never in the cache
    tip = TipAdapter(text_embeddings=text, logit_scale=scale, alpha=alpha, beta=beta).fit(X, y)
    np.testing.assert_allclose(tip.predict_proba(Q), _softmax(expected), rtol=1e-5, atol=1e-7)
    assert tip.keys_.shape == (3, 3) and tip.values_.tolist() == [[1, 0], [0, 1], [0, 1]]
    assert tip.alpha_ == alpha and tip.beta_ == beta and tip.cv_scores_ is None


def test_cache_logits_leave_one_out():
    K = np.eye(3)
    V = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    full = cache_logits(K, K, V, beta=1.0)
    loo = cache_logits(K, K, V, beta=1.0, exclude_self=True)
    np.testing.assert_allclose(full - loo, V)  # the self-affinity is exp(0) = 1 on the own class


def test_cv_uses_labeled_rows_only_and_picks_from_grid():
    X, y, text = _clip_like(n_per_class=15)
    y_semi = y.copy()
    y_semi[::3] = -1
    alphas, betas = [0.0, 1.0, 4.0], [1.0, 5.0]
    def make():
        return TipAdapter(text_embeddings=text, logit_scale=10.0, alphas=alphas, betas=betas, cv=3)

    tip = make().fit(X, y_semi)
    assert tip.alpha_ in alphas and tip.beta_ in betas and tip.cv_scores_.shape == (3, 2)
    assert tip.alpha_ > 0  # the cache helps a zero-shot classifier that is 87% right
    # moving the unlabeled (e.g. test) rows changes nothing: they never take part in the choice or the cache
    X2 = X.copy()
    X2[y_semi == -1] = np.random.default_rng(5).normal(size=X2[y_semi == -1].shape)
    tip2 = make().fit(X2, y_semi)
    assert (tip2.alpha_, tip2.beta_) == (tip.alpha_, tip.beta_)
    np.testing.assert_array_equal(tip2.cv_scores_, tip.cv_scores_)
    np.testing.assert_array_equal(tip2.keys_, tip.keys_)


def test_single_labeled_row_falls_back(caplog):
    X, y, text = _clip_like()
    y_semi = np.full_like(y, -1)
    y_semi[[0, 12, 13, 24, 25]] = y[[0, 12, 13, 24, 25]]  # class 0 has one labeled row
    tip = TipAdapter(text_embeddings=text).fit(X, y_semi)
    assert (tip.alpha_, tip.beta_) == (1.0, 1.0) and "cannot be cross-validated" in caplog.text


def test_finetuned_keys_are_deterministic_and_start_from_the_cache():
    X, y, text = _clip_like(n_per_class=10)
    plain = TipAdapter(text_embeddings=text, alpha=1.0, beta=5.0).fit(X, y)
    f0 = TipAdapter(text_embeddings=text, alpha=1.0, beta=5.0, finetune_keys=True, epochs=0).fit(X, y)
    np.testing.assert_array_equal(f0.keys_, plain.keys_)  # no epochs: the training-free cache
    f1 = TipAdapter(text_embeddings=text, alpha=1.0, beta=5.0, finetune_keys=True, epochs=10, lr=1e-2).fit(X, y)
    f2 = clone(f1).fit(X, y)
    assert not np.allclose(f1.keys_, plain.keys_)
    np.testing.assert_array_equal(f1.keys_, f2.keys_)
    # with CV, every fold fine-tunes its own keys, and the final choice comes from the grid
    fcv = TipAdapter(text_embeddings=text, alphas=[0.5, 2.0], betas=[1.0, 5.0], cv=2, finetune_keys=True,
                     epochs=3).fit(X, y)
    assert fcv.alpha_ in (0.5, 2.0) and fcv.beta_ in (1.0, 5.0)


def test_base_prior_equals_text_prior():
    """A base prior enters as log-probabilities: for zero-shot CLIP that is the text prior up to a row constant."""
    X, y, text = _clip_like()
    a = TipAdapter(text_embeddings=text, alpha=2.0, beta=3.0).fit(X, y)
    b = TipAdapter(base=ZeroShotClassifier(text_embeddings=text), alpha=2.0, beta=3.0).fit(X, y)
    assert b.class_weights_ is None and b.base_ is not None
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-5, atol=1e-8)


def test_conse_prior_without_clip():
    """tip over conse: a cache model on an ImageNet-classifier backbone with no CLIP weights anywhere."""
    rng = np.random.default_rng(0)
    vectors = {"alpha": [1.0, 0.0], "beta": [0.0, 1.0], "gamma": [0.6, 0.8], "x": [1.0, 0.1], "y": [0.1, 1.0]}
    emb = {f"a photo of a {name}.": v for name, v in vectors.items()}  # a fake sentence encoder, by prompt
    def enc(texts):
        return np.array([emb[t] for t in texts], dtype=np.float32)

    conse = ConSE(head_weight=np.eye(3, 4), head_bias=np.zeros(3), head_classes=["alpha", "beta", "gamma"],
                  class_names=["x", "y"], encoder=enc, cache_dir="")
    X = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.where(X[:, 0] > X[:, 1], 0, 1)
    y_semi = np.where(np.arange(30) % 2 == 0, y, -1)
    tip = create("tip", base=conse, alphas=[0.0, 1.0, 3.0], betas=[1.0, 5.0], cv=3).fit(X, y_semi)
    assert tip.classes_.tolist() == [0, 1] and tip.predict_proba(X).shape == (30, 2)


def test_errors():
    X, y, text = _clip_like()
    with pytest.raises(ValueError, match="conse"):
        TipAdapter().fit(X, y)
    with pytest.raises(ValueError, match="labeled rows"):
        TipAdapter(text_embeddings=text).fit(X, np.full_like(y, -1))
    with pytest.raises(ValueError, match="dim"):
        TipAdapter(text_embeddings=text[:, :, :4]).fit(X, y)
    with pytest.raises(ValueError, match="class indices"):
        TipAdapter(text_embeddings=text).fit(X, np.where(y == 2, 7, y))
    with pytest.raises(ValueError, match="non-negative"):
        TipAdapter(text_embeddings=text, betas=[-1.0]).fit(X, y)


def test_gridsearch_and_clone():
    X, y, text = _clip_like(n_per_class=9)
    search = GridSearchCV(TipAdapter(text_embeddings=text, alpha=1.0), {"beta": [1.0, 5.0]}, cv=3).fit(X, y)
    assert search.best_params_["beta"] in (1.0, 5.0)
    assert clone(TipAdapter(text_embeddings=text)).get_params()["text_embeddings"] is not None


# sklearn's checks need an estimator whose classes come from (X, y): tip over a label-learning base prior.
_NEG_LABEL = ("labels {-1, 1}: -1 marks unlabeled rows (the suite's convention, as in sklearn's semi-supervised "
              "estimators, which sklearn exempts from this check by name)")


@parametrize_with_checks([TipAdapter(base=LinearProbe(Cs=[1.0]), alphas=[0.0, 1.0], betas=[1.0, 5.0], cv=3)],
                         expected_failed_checks=lambda est: {"check_classifiers_classes": _NEG_LABEL})
def test_sklearn_compatible(estimator, check):
    check(estimator)
