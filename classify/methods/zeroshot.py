"""CLIP zero-shot classification from the store's per-class × per-template text embeddings."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier
from classify.methods.features import l2_normalize
from classify.methods.registry import register_method
from store.validation import Real
from classify.methods.text import text_class_weights

log = logging.getLogger(__name__)

@register_method("zeroshot", needs_labels=False, needs_text=True)
class ZeroShotClassifier(FewShotClassifier):
    """CLIP zero-shot classifier: cosine similarity between image features and prompt-ensembled class texts.

    Needs no labels: ``fit`` only checks shapes (``y`` may be all ``-1`` or omitted) and the classes are
    ``arange(C)``, the rows of ``text_embeddings``.

    Parameters
    ----------
    text_embeddings : array-like of shape (C, T, D), default=None
        The store's CLIP text embeddings per class and template, from the same CLIP model as X.
    templates : list of str of length T, default=None
        Template strings, used to select templates by name.
    template_subset : list of str or int, default=None
        Templates to ensemble; None uses all of them.
    logit_scale : float, default=100.0
        Multiplies the cosine similarities before the softmax (CLIP's learned temperature is 100).

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    class_weights_ : ndarray of shape (C, D)
        Unit-norm class embeddings.
    n_features_in_ : int
    """

    _parameter_constraints = {"logit_scale": [Real(0, low_open=True)]}

    def __init__(self, text_embeddings=None, templates=None, template_subset=None, logit_scale=100.0):
        self.text_embeddings = text_embeddings
        self.templates = templates
        self.template_subset = template_subset
        self.logit_scale = logit_scale

    def fit(self, X, y=None):
        """Compute the class weights; ``y`` is optional and only checked against the class count."""
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        self.class_weights_ = text_class_weights(self, X, y)  # (C, D)
        self.classes_ = np.arange(self.class_weights_.shape[0])
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return float(self.logit_scale) * (l2_normalize(X) @ self.class_weights_.T.astype(X.dtype))  # (n, C)

    def linear_head(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (C, D), b (C,))`` with ``predict_proba(X) == softmax(l2_normalize(X) @ W.T + b)`` (b is zero)."""
        check_is_fitted(self)
        W = float(self.logit_scale) * self.class_weights_.astype(np.float64)  # (C, D)
        return W, np.zeros(len(W))
