"""CLIP zero-shot classification from the store's per-class × per-template text embeddings."""
from __future__ import annotations

import difflib
import logging

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.base import FewShotClassifier, NotApplicable, Real, text_class_weights
from classify.features import l2_normalize
from classify.registry import register_method
from store.validation import UserError

logger = logging.getLogger(__name__)

_NO_TEXT = (
    "the store has no text embeddings for this backbone: zero-shot needs a CLIP backbone "
    "(spec 'clip:<arch>/<pretrained-tag>'); embed with `python -m embed run` using a CLIP backbone, "
    "then pass its text embeddings"
)


def zeroshot_class_weights(text_embeddings, templates=None, template_subset=None) -> np.ndarray:
    """Prompt-ensembled zero-shot class weights.

    Each template embedding is L2-normalised, the chosen templates are averaged per class and the
    mean is L2-normalised again (CLIP's prompt ensembling).

    Parameters
    ----------
    text_embeddings : array-like of shape (C, T, D), or (C, D) for a single template
    templates : list of str of length T, optional
        Template strings, needed only to select templates by string in ``template_subset``.
    template_subset : list of str or int, optional
        Templates to use (strings or indices into the T axis); None uses all.

    Returns
    -------
    ndarray of shape (C, D), float32, rows of unit norm.
    """
    if text_embeddings is None:
        raise NotApplicable(_NO_TEXT)
    E = np.asarray(text_embeddings, dtype=np.float32)
    if E.ndim == 2:
        E = E[:, None, :]  # (C, 1, D)
    if E.ndim != 3 or min(E.shape) == 0:
        raise UserError(f"text_embeddings must have shape (classes, templates, dim), got {np.shape(text_embeddings)}")
    n_templates = E.shape[1]
    if templates is not None and len(templates) != n_templates:
        raise UserError(f"templates has {len(templates)} strings but text_embeddings has {n_templates} templates "
                         "(axis 1); pass the template list the store recorded with these embeddings")
    if template_subset is not None:
        idx = [_template_index(t, templates, n_templates) for t in template_subset]
        if not idx:
            raise UserError("template_subset is empty; pass None to use every template")
        E = E[:, idx, :]  # (C, T', D)
    if not np.all(np.isfinite(E)):
        raise UserError("text_embeddings contain NaN or inf; re-embed the class names")
    W = l2_normalize(l2_normalize(E).mean(axis=1))  # (C, D)
    return W.astype(np.float32, copy=False)


def _template_index(t, templates, n_templates: int) -> int:
    if isinstance(t, (int, np.integer)):
        if not -n_templates <= t < n_templates:
            raise UserError(f"template index {t} out of range for {n_templates} templates")
        return int(t)
    if templates is None:
        raise UserError(f"template_subset names template {t!r} but templates=None; pass templates (the list of "
                         "template strings) or select by integer index")
    templates = list(templates)
    if t not in templates:
        close = difflib.get_close_matches(str(t), [str(s) for s in templates], n=3)
        hint = f" did you mean {close}?" if close else ""
        raise UserError(f"unknown template {t!r}.{hint} known templates: {templates}")
    return templates.index(t)


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
