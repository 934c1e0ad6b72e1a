"""Tip-Adapter: a training-free cache model over the labeled features, blended with zero-shot logits.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022::

    keys   F = L2-normalised labeled features                     # (N, D)
    values L = one-hot labels                                     # (N, C)
    A      = exp(-beta * (1 - x F^T))                             # (n, N) affinities of unit-norm queries x
    logits = zero-shot logits + alpha * A L                       # (n, C)

``alpha`` and ``beta`` are chosen by stratified cross-validation on the labeled rows (the paper searches them on
a validation split; we have none, and the test rows never take part). Tip-Adapter-F (``finetune_keys=True``)
also fine-tunes the keys with AdamW for a few epochs, values and zero-shot weights frozen, as in the paper.

The zero-shot logits are CLIP's (``logit_scale * cos(x, class text)``, as ``zeroshot``), or, with ``base``, the
log-probabilities of any label-free prior such as ``conse`` (ImageNet-classifier backbones, no CLIP weights):
softmax is shift-invariant per row, so log-probabilities are logits.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.special import log_softmax
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import METHOD, FewShotClassifier, NotApplicable, accepts_unlabeled, resolve_estimator
from classify.methods.features import align_proba, checked_labeled_mask, cv_splits, l2_normalize, single_threaded_blas
from classify.methods.text import text_class_weights
from classify.methods.registry import register_method
from store.validation import BOOL, NONE, Int, Real, UserError

log = logging.getLogger(__name__)

#: Default grid of cache weights (0 = zero-shot alone). The paper searches [0, 3] for logits at CLIP's scale 100;
#: a prior given as log-probabilities of another temperature needs a wider range.
DEFAULT_ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
#: Default grid of affinity sharpness (the paper searches [0.1, 7]).
DEFAULT_BETAS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0)
#: Fallback when CV is impossible (a class with a single labeled row): the paper's initial values.
FALLBACK_ALPHA, FALLBACK_BETA = 1.0, 1.0
_PROBA_FLOOR = 1e-12  # log of a prior's zero probability


def cache_logits(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, beta: float,
                 exclude_self: bool = False) -> np.ndarray:
    """Tip-Adapter cache logits ``exp(-beta (1 - q k^T)) @ values``.

    Parameters
    ----------
    queries : ndarray of shape (n, D)
        Unit-norm query features.
    keys : ndarray of shape (N, D)
        Cache keys (unit-norm before any fine-tuning).
    values : ndarray of shape (N, C)
        One-hot labels of the keys.
    beta : float
        Sharpness of the affinity.
    exclude_self : bool
        Queries are the keys themselves (n == N, same order): drop each row's own key (leave-one-out).

    Returns
    -------
    ndarray of shape (n, C)
    """
    affinity = np.exp(-float(beta) * (1.0 - queries @ keys.T))  # (n, N)
    if exclude_self:
        np.fill_diagonal(affinity, 0.0)
    return affinity @ values  # (n, C)


@register_method("tip")
class TipAdapter(FewShotClassifier):
    """Tip-Adapter (training-free cache) and Tip-Adapter-F (``finetune_keys=True``) over a zero-shot prior.

    Rows with ``y == -1`` are unlabeled: they never enter the cache (only a ``base`` prior may see them).

    Parameters
    ----------
    text_embeddings : array-like of shape (C, T, D), default=None
        CLIP text embeddings (see ``zeroshot``); the prior is ``logit_scale * cos(x, class text)``. Labels are
        class indices into the first axis and ``classes_`` is ``arange(C)``.
    templates : list of str of length T, default=None
        The template strings of ``text_embeddings``' T axis (the pipeline takes them from the store); needed only
        to name templates by string in ``template_subset``. Ignored with ``base``.
    template_subset : list of str or int, default=None
        Templates (strings or indices into the T axis) averaged into the zero-shot class embeddings (CLIP's prompt
        ensembling); None uses all T. Ignored with ``base``.
    logit_scale : float, default=100.0
        Multiplies the cosines of the CLIP prior, ``logit_scale * cos(x, class text)`` (CLIP's learned temperature
        is 100); it sets how much a given ``alpha`` of cache logits weighs against the prior. Ignored with ``base``.
    base : estimator or str, default=None
        A label-free prior used instead of the text embeddings (e.g. ``"conse"``); its log-probabilities are the
        zero-shot logits and its ``classes_`` are ours. Cloned and fitted on every row (a registered method) or
        on the labeled rows (any other estimator). It is not refitted per CV fold, so a prior that learns from
        the labels makes the choice of alpha and beta optimistic.
    alpha : float >= 0, default=None
        Tip-Adapter's residual ratio: the weight of the cache logits added to the prior, ``prior + alpha * A L``
        (0 is the prior alone). None chooses it by CV from ``alphas``; 1 when CV is impossible.
    beta : float >= 0, default=None
        Tip-Adapter's sharpness ratio in the affinity ``exp(-beta * (1 - cos(x, key)))``: larger values let only
        the nearest cached rows vote, 0 gives every cached row weight 1. None chooses it by CV from ``betas``; 1
        when CV is impossible.
    alphas : sequence of float, default=None
        Candidate values of ``alpha`` for the CV search; None uses ``DEFAULT_ALPHAS`` (0 to 10). Ignored when
        ``alpha`` is given.
    betas : sequence of float, default=None
        Candidate values of ``beta`` for the CV search (searched jointly with ``alphas``); None uses
        ``DEFAULT_BETAS`` (0.5 to 10). Ignored when ``beta`` is given.
    cv : int, default=5
        Maximum number of stratified folds (``min(cv, smallest class count)``). With a class of a single labeled
        row CV is impossible: alpha and beta fall back to 1 and 1 (a warning is logged).
    finetune_keys : bool, default=False
        Tip-Adapter-F: fine-tune the keys (AdamW, cosine schedule, cross-entropy of the blended logits on the
        labeled rows). Without augmented training views each query's own key is left out of its cache logits,
        otherwise the exact self-match (affinity 1) would make the loss trivial.
    epochs : int, default=20
        ``finetune_keys`` only: passes over the labeled rows when fine-tuning the keys (the paper's 20), for every
        CV fold and the final cache; 0 leaves the keys as the labeled features.
    lr : float, default=1e-3
        ``finetune_keys`` only: peak learning rate of the keys' AdamW optimiser (``eps=1e-4``, as in the paper),
        annealed to 0 by a cosine schedule over all steps.
    batch_size : int, default=256
        ``finetune_keys`` only: labeled rows (queries) per fine-tuning step, at most all of them (the paper's 256).
    weight_decay : float, default=0.01
        ``finetune_keys`` only: AdamW's decoupled weight decay on the keys (each step shrinks them by
        ``lr * weight_decay``).
    random_state : int, default=0
        Seeds the CV folds and the fine-tuning batch order.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    alpha_, beta_ : float
        Chosen cache weight and sharpness.
    cv_scores_ : ndarray of shape (len(alphas), len(betas)) or None
        Out-of-fold accuracy of each pair; None when no CV ran.
    keys_ : ndarray of shape (N, D), float32
        Cache keys (fine-tuned with ``finetune_keys``).
    values_ : ndarray of shape (N, C), float32
        One-hot cache values.
    class_weights_ : ndarray of shape (C, D) or None
        Zero-shot class embeddings (None with ``base``).
    base_ : estimator or None
        The fitted prior (None with text embeddings).
    n_features_in_ : int
    """

    _parameter_constraints = {"logit_scale": [Real(0, low_open=True)], "base": [NONE, METHOD], "cv": [Int(2)],
                              "finetune_keys": [BOOL], "epochs": [Int(0)], "lr": [Real(0, low_open=True)],
                              "batch_size": [Int(1)], "weight_decay": [Real(0)]}

    def __init__(self, text_embeddings=None, templates=None, template_subset=None, logit_scale=100.0, base=None,
                 alpha=None, beta=None, alphas=None, betas=None, cv=5, finetune_keys=False, epochs=20, lr=1e-3,
                 batch_size=256, weight_decay=0.01, random_state=0):
        self.text_embeddings = text_embeddings
        self.templates = templates
        self.template_subset = template_subset
        self.logit_scale = logit_scale
        self.base = base
        self.alpha = alpha
        self.beta = beta
        self.alphas = alphas
        self.betas = betas
        self.cv = cv
        self.finetune_keys = finetune_keys
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def _grid(self, fixed, grid, default, name: str) -> np.ndarray:
        values = np.array([fixed], dtype=np.float64) if fixed is not None else \
            np.asarray(default if grid is None else grid, dtype=np.float64).ravel()
        if values.size == 0 or np.any(values < 0) or not np.all(np.isfinite(values)):
            raise UserError(f"{name}/{name}s must be non-negative finite numbers, got {name}={fixed!r}, "
                             f"{name}s={grid!r}")
        return values

    def _fit_prior(self, X, y, labeled) -> None:
        """Set ``classes_`` and the zero-shot prior (class weights or a fitted ``base``)."""
        if self.base is not None:
            base = resolve_estimator(self.base)
            if accepts_unlabeled(base):
                base.fit(X, y)
            else:
                base.fit(X[labeled], y[labeled])
            self.base_, self.class_weights_ = base, None
            self.classes_ = np.asarray(base.classes_)
            return
        if self.text_embeddings is None:
            raise NotApplicable("tip needs a zero-shot prior: CLIP text embeddings (embed with a clip:<arch>/<tag> "
                             "backbone), or base='conse' for an ImageNet-classifier backbone such as "
                             "timm:tf_efficientnet_lite0")
        W = text_class_weights(self, X)  # (C, D)
        self.base_, self.class_weights_ = None, W
        self.classes_ = np.arange(W.shape[0])

    def _prior_logits(self, X: np.ndarray, Xn: np.ndarray) -> np.ndarray:
        """Zero-shot logits (n, C): CLIP's, computed exactly as ``zeroshot`` does, or the base's log-probabilities."""
        if self.base_ is None:
            return float(self.logit_scale) * (Xn @ self.class_weights_.T.astype(Xn.dtype))  # (n, C)
        proba = align_proba(self.base_.predict_proba(X), self.base_.classes_, self.classes_)
        return np.log(np.maximum(proba, _PROBA_FLOOR))  # (n, C)

    def fit(self, X, y):
        """Fit the prior, build the cache from the labeled rows, choose alpha and beta by CV (and fine-tune).

        Parameters
        ----------
        X : array-like of shape (n_rows, D)
        y : array-like of shape (n_rows,)
            Class labels; -1 marks an unlabeled row. At least one labeled row.

        Returns
        -------
        self
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        labeled = checked_labeled_mask(y)
        if not labeled.any():
            raise UserError("tip needs labeled rows for its cache (y = -1 marks unlabeled); with no labels use "
                             "zeroshot or conse")
        alphas = self._grid(self.alpha, self.alphas, DEFAULT_ALPHAS, "alpha")
        betas = self._grid(self.beta, self.betas, DEFAULT_BETAS, "beta")
        self._fit_prior(X, y, labeled)
        yl = y[labeled]
        unknown = np.setdiff1d(yl, self.classes_)
        if unknown.size:
            raise UserError(f"labels {unknown.tolist()[:10]} are not among the prior's classes; with text "
                             f"embeddings labels are class indices in [0, {len(self.classes_)}) (rows of "
                             "text_embeddings), or -1 for unlabeled")
        Xl = l2_normalize(X[labeled])  # (N, D)
        y_idx = np.searchsorted(self.classes_, yl)  # (N,)
        values = np.eye(len(self.classes_), dtype=Xl.dtype)[y_idx]  # (N, C)
        prior = self._prior_logits(X[labeled], Xl).astype(np.float64)  # (N, C)

        self.cv_scores_ = None
        with single_threaded_blas():
            n_splits = cv_splits(yl, self.cv)
            if alphas.size == 1 and betas.size == 1:
                self.alpha_, self.beta_ = float(alphas[0]), float(betas[0])
            elif n_splits < 2:
                self.alpha_ = float(self.alpha if self.alpha is not None else FALLBACK_ALPHA)
                self.beta_ = float(self.beta if self.beta is not None else FALLBACK_BETA)
                log.warning("tip: a class has a single labeled row, so alpha and beta cannot be cross-validated; "
                            "using alpha=%g, beta=%g", self.alpha_, self.beta_)
            else:
                self._select(Xl, y_idx, values, prior, alphas, betas, n_splits)
            keys = Xl
            if self.finetune_keys:
                keys = self._finetune(Xl, values, y_idx, prior, Xl, self.alpha_, self.beta_)
        self.keys_ = np.asarray(keys, dtype=np.float32)
        self.values_ = values.astype(np.float32)
        log.info("tip%s: alpha=%g beta=%g, cache of %d labeled rows", "-F" if self.finetune_keys else "",
                 self.alpha_, self.beta_, len(yl))
        return self

    def _select(self, Xl, y_idx, values, prior, alphas, betas, n_splits) -> None:
        """Choose (alpha, beta) by out-of-fold accuracy, ties to the lower out-of-fold log-loss, then the first.

        Each fold's cache holds only that fold's training rows. Hand-written rather than GridSearchCV: one cache
        affinity per beta serves every alpha (alpha only scales the cache logits), and Tip-Adapter-F fine-tunes
        each fold's keys once (with the training-free choice) and then searches the grid, as the paper does on
        its validation split.
        """
        folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
                     .split(Xl, y_idx))
        acc, loss = self._grid_scores(Xl, y_idx, values, prior, alphas, betas, folds, None)
        if self.finetune_keys:  # fine-tune each fold with the training-free choice, then search again
            i, j = _best(acc, loss)
            acc, loss = self._grid_scores(Xl, y_idx, values, prior, alphas, betas, folds, (alphas[i], betas[j]))
        i, j = _best(acc, loss)
        self.alpha_, self.beta_, self.cv_scores_ = float(alphas[i]), float(betas[j]), acc

    def _grid_scores(self, Xl, y_idx, values, prior, alphas, betas, folds, finetune_at):
        n = len(y_idx)
        acc = np.zeros((alphas.size, betas.size))
        loss = np.zeros((alphas.size, betas.size))
        for train, held in folds:
            keys = Xl[train]
            if finetune_at is not None:
                keys = self._finetune(Xl[train], values[train], y_idx[train], prior[train], Xl[train], *finetune_at)
            for j, beta in enumerate(betas):
                cache = cache_logits(Xl[held], keys, values[train], beta).astype(np.float64)  # (n_h, C)
                for i, a in enumerate(alphas):
                    logits = prior[held] + a * cache
                    acc[i, j] += (logits.argmax(axis=1) == y_idx[held]).sum() / n
                    loss[i, j] -= log_softmax(logits, axis=1)[np.arange(len(held)), y_idx[held]].sum() / n
        return acc, loss

    def _finetune(self, keys, values, y_idx, prior, queries, alpha, beta) -> np.ndarray:
        """Tip-Adapter-F: AdamW on the keys (N, D) for the blended cross-entropy; queries are the key rows."""
        import torch  # only Tip-Adapter-F needs torch

        gen = torch.Generator().manual_seed(int(self.random_state or 0))
        alpha, beta = float(alpha), float(beta)
        K = torch.nn.Parameter(torch.as_tensor(keys, dtype=torch.float32).clone())  # (N, D)
        V = torch.as_tensor(values, dtype=torch.float32)  # (N, C)
        Q = torch.as_tensor(queries, dtype=torch.float32)  # (N, D)
        P = torch.as_tensor(prior, dtype=torch.float32)  # (N, C)
        target = torch.as_tensor(y_idx, dtype=torch.long)  # (N,)
        n, batch = len(Q), max(1, min(int(self.batch_size), len(Q)))
        steps = int(self.epochs) * -(-n // batch)
        if steps <= 0:
            return keys
        opt = torch.optim.AdamW([K], lr=float(self.lr), eps=1e-4, weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(int(self.epochs)):
            for rows in torch.randperm(n, generator=gen).split(batch):
                affinity = torch.exp(-beta * (1.0 - Q[rows] @ K.T))  # (b, N)
                affinity = affinity.index_put((torch.arange(len(rows)), rows), torch.zeros(()))  # leave self out
                logits = P[rows] + alpha * affinity @ V  # (b, C)
                loss = torch.nn.functional.cross_entropy(logits, target[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return K.detach().numpy()

    # ------------------------------------------------------------------ predict
    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        Xn = l2_normalize(X)  # (n, D)
        prior = self._prior_logits(X, Xn)  # (n, C)
        return prior + self.alpha_ * cache_logits(Xn, self.keys_.astype(Xn.dtype), self.values_.astype(Xn.dtype),
                                                  self.beta_)


def _best(acc: np.ndarray, loss: np.ndarray) -> tuple[int, int]:
    """Index of the highest accuracy, ties to the lowest log-loss, then the first in grid order."""
    best = np.lexsort((loss.ravel(), -acc.ravel()))[0]
    i, j = np.unravel_index(best, acc.shape)
    return int(i), int(j)
