"""CLIP text priors shared by the methods that use them (zero-shot, the WiSE probe, Tip-Adapter, the cross-modal
probe): prompt-ensembled class weights from the store's per-class x per-template text embeddings."""
from __future__ import annotations


import numpy as np

from classify.methods.base import NotApplicable, check_class_indices
from classify.methods.features import l2_normalize
from store.validation import UserError, did_you_mean

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
        hint = did_you_mean(str(t), templates, show=repr, cutoff=0.6)
        raise UserError(f"unknown template {t!r}: {hint}known templates: {templates}")
    return templates.index(t)


def text_class_weights(estimator, X: np.ndarray, y=None) -> np.ndarray:
    """Unit class embeddings (C, D) from an estimator's ``text_embeddings`` / ``templates`` / ``template_subset``.

    Checks what every text-prior method must (zeroshot, the WiSE probe, Tip-Adapter, the cross-modal probe): the
    text and image features come from one backbone (same dim), and labels are class indices into the text rows.
    """
    W = zeroshot_class_weights(estimator.text_embeddings, estimator.templates, estimator.template_subset)  # (C, D)
    if W.shape[1] != X.shape[1]:
        raise UserError(f"text embeddings have dim {W.shape[1]} but image features have dim {X.shape[1]}: use text "
                         "and image embeddings of the same CLIP backbone")
    check_class_indices(y, W.shape[0], "text_embeddings")
    return W
