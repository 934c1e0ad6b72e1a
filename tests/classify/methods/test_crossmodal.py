"""Oracle tests for the cross-modal probe (``crossmodal``): text embeddings as training samples of their class."""
from __future__ import annotations

import fewshot_data
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from classify import create
from classify.methods.features import l2_normalize
from classify.methods.crossmodal import CrossModalProbe, text_samples
from classify.pipeline import build

TEMPLATES = ["a photo of a {}.", "a sketch of a {}."]


def _clip_like(n_per_class=10, n_classes=3, dim=8, noise=0.5, seed=0):
    """Image features near their class's text embedding: X, y, text (C, 2, D)."""
    return fewshot_data.clip_like(n_per_class, n_classes, dim, noise, 0.2, len(TEMPLATES), 3.0, seed)


def test_text_samples_one_unit_row_per_class_and_template():
    _, _, text = _clip_like()
    Xt, yt = text_samples(text, TEMPLATES)
    assert Xt.shape == (6, 8) and yt.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(Xt[1], text[0, 1] / np.linalg.norm(text[0, 1]), rtol=1e-6)
    Xs, ys = text_samples(text, TEMPLATES, ["a sketch of a {}."])
    np.testing.assert_allclose(Xs, Xt[1::2])
    assert ys.tolist() == [0, 1, 2]


def test_zero_text_weight_equals_plain_probe():
    X, y, text = _clip_like()
    y_semi = y.copy()
    y_semi[::4] = -1
    cm = CrossModalProbe(text_embeddings=text, text_weight=0.0, Cs=[2.0], tol=1e-8).fit(X, y_semi)
    lab = y_semi != -1
    plain = LogisticRegression(C=2.0, tol=1e-8, max_iter=1000).fit(l2_normalize(X[lab]), y[lab])
    np.testing.assert_allclose(cm.predict_proba(X), plain.predict_proba(l2_normalize(X)), atol=1e-4)


def test_text_samples_are_trained_on():
    """Class 2 has no labeled image: only its text samples can teach the probe to predict it."""
    X, y, text = _clip_like(n_per_class=20)
    y_semi = np.where(y == 2, -1, y)
    with_text = CrossModalProbe(text_embeddings=text, Cs=[10.0]).fit(X, y_semi)
    without = CrossModalProbe(text_embeddings=text, text_weight=0.0, Cs=[10.0]).fit(X, y_semi)
    assert with_text.classes_.tolist() == [0, 1, 2] and with_text.n_text_samples_ == 6
    assert (with_text.predict(X[y == 2]) == 2).mean() > 0.8
    assert (without.predict(X[y == 2]) == 2).mean() < 0.2
    # with no labeled image at all it is a text-only probe: still a classifier of every class
    text_only = CrossModalProbe(text_embeddings=text).fit(X, np.full_like(y, -1))
    assert (text_only.predict(X) == y).mean() > 0.8


def test_cv_chooses_C_on_images_with_texts_in_every_fold():
    X, y, text = _clip_like(n_per_class=12)
    cm = CrossModalProbe(text_embeddings=text, Cs=[0.1, 1.0, 10.0], cv=3).fit(X, y)
    assert cm.C_ in (0.1, 1.0, 10.0) and len(cm.cv_results_["params"]) == 3
    assert cm.probe_.coef_.shape == (3, 8) and cm.probe_.C == cm.C_
    # a class without labeled images still trains in every fold (from its texts) and is never scored
    y_semi = np.where(y == 2, -1, y)
    cm2 = CrossModalProbe(text_embeddings=text, Cs=[0.1, 1.0, 10.0], cv=3).fit(X, y_semi)
    assert cm2.probe_.classes_.tolist() == [0, 1, 2]


def test_sample_weight_is_used():
    X, y, text = _clip_like()
    w = np.ones(len(y))
    w[y == 0] = 0.0
    a = CrossModalProbe(text_embeddings=text, Cs=[1.0]).fit(X, y, sample_weight=w)
    b = CrossModalProbe(text_embeddings=text, Cs=[1.0]).fit(X, np.where(y == 0, -1, y))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-4)


def test_composes_with_selftrain_as_teacher_and_head():
    X, y, text = _clip_like(n_per_class=20)
    y_semi = np.full_like(y, -1)
    y_semi[[0, 1, 20, 21, 40, 41]] = y[[0, 1, 20, 21, 40, 41]]
    cm = CrossModalProbe(text_embeddings=text, Cs=[1.0])
    teacher = create("selftrain", teacher=cm, selection="balanced", per_class_k=5).fit(X, y_semi)
    assert teacher.classes_.tolist() == [0, 1, 2] and (teacher.predict(X) == y).mean() > 0.8
    assert type(teacher.teacher_) is CrossModalProbe
    head = create("selftrain", teacher=clone(cm), head=clone(cm), labels="soft", per_class_k=5).fit(X, y_semi)
    assert type(head.head_) is CrossModalProbe and (head.predict(X) == y).mean() > 0.8
    # from the CLI: nested names are built with the store's text embeddings
    built = build("selftrain", {"teacher": "crossmodal", "head": {"method": "crossmodal", "Cs": [1.0]}},
                  {"text_embeddings": text, "templates": TEMPLATES})
    assert built.teacher.text_embeddings is text and built.head.Cs == [1.0]
    assert (built.fit(X, y_semi).predict(X) == y).mean() > 0.8


def test_errors():
    X, y, text = _clip_like()
    with pytest.raises(ValueError, match="linear"):
        CrossModalProbe().fit(X, y)
    with pytest.raises(ValueError, match="dim"):
        CrossModalProbe(text_embeddings=text[:, :, :4]).fit(X, y)
    with pytest.raises(ValueError, match="class indices"):
        CrossModalProbe(text_embeddings=text).fit(X, y + 5)
    with pytest.raises(ValueError, match="text_weight"):
        CrossModalProbe(text_embeddings=text, text_weight=-1).fit(X, y)
    with pytest.raises(ValueError, match="sample_weight"):
        CrossModalProbe(text_embeddings=text).fit(X, y, sample_weight=np.ones(3))

# sklearn's estimator checks are not run: like zeroshot, the classes and the feature dimension come from the text
# embeddings, so the checks' random data of other widths and label sets cannot fit it; clone and the selftrain
# composition are tested above.
