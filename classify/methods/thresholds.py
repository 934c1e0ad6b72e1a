"""Pseudo-label selection rules shared by self-training and fine-tuning (FixMatch-style consistency).

Every function takes class probabilities ``proba`` of shape ``(n, n_classes)`` as a NumPy array *or* a torch
tensor and returns a boolean row mask of shape ``(n,)`` of the same kind (a torch mask stays on the tensor's
device). The pseudo-label of a selected row is always its arg-max class, so the rules compose::

    mask = fixed_threshold_mask(proba, 0.95)          # FixMatch
    labels = proba.argmax(1)                           # pseudo-labels of rows where mask is True

Rules
-----
``fixed_threshold_mask``
    Keep rows whose top probability is at least ``tau`` (FixMatch). A single high threshold starves classes the
    model is less confident about.
``ClassAwareThresholds``
    One threshold per class, adapted so that each class's share of the pseudo-labels tracks a target ratio
    (Lucas, Weinzaepfel & Rogez, "Barely-supervised learning", AAAI 2022).
``balanced_topk_mask``
    Per class, the ``k`` most confident rows predicted as that class.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from store.validation import UserError

log = logging.getLogger(__name__)

__all__ = ["fixed_threshold_mask", "ClassAwareThresholds", "balanced_topk_mask", "class_counts"]


def _is_torch(a: Any) -> bool:
    """Whether ``a`` is a torch tensor (checked by module name, so torch is never imported here)."""
    return type(a).__module__.split(".")[0] == "torch"


def _check_proba(proba: Any) -> Any:
    """Validate a 2-D probability table; NumPy input is returned as an ndarray."""
    if not _is_torch(proba):
        proba = np.asarray(proba)
    if proba.ndim != 2:
        raise UserError(f"proba must be 2-D (n_samples, n_classes), got shape {tuple(proba.shape)}; "
                         "pass predict_proba output or softmax(logits, dim=1)")
    return proba


def _max_argmax(proba: Any) -> tuple[Any, Any]:
    """Row-wise top probability and its class index, in proba's own array library."""
    if _is_torch(proba):
        conf, idx = proba.max(dim=1)  # (n,), (n,)
        return conf, idx
    return proba.max(axis=1), proba.argmax(axis=1)  # (n,), (n,)


def fixed_threshold_mask(proba: Any, tau: float) -> Any:
    """Rows whose top class probability is at least ``tau`` (FixMatch's confidence mask).

    Parameters
    ----------
    proba : ndarray or torch.Tensor of shape (n_samples, n_classes)
        Class probabilities (rows sum to one).
    tau : float
        Confidence threshold in [0, 1].

    Returns
    -------
    mask : ndarray or torch.Tensor of shape (n_samples,), bool
        True where the arg-max pseudo-label is kept.
    """
    proba = _check_proba(proba)
    if not 0.0 <= float(tau) <= 1.0:
        raise UserError(f"tau must be in [0, 1], got {tau}; probabilities never exceed 1")
    conf, _ = _max_argmax(proba)
    return conf >= tau


def class_counts(proba: Any, mask: Any) -> np.ndarray:
    """Number of selected rows per arg-max class.

    Parameters
    ----------
    proba : ndarray or torch.Tensor of shape (n_samples, n_classes)
    mask : ndarray or torch.Tensor of shape (n_samples,), bool

    Returns
    -------
    counts : ndarray of shape (n_classes,), int64
    """
    proba = _check_proba(proba)
    n_classes = proba.shape[1]
    _, idx = _max_argmax(proba)
    if _is_torch(proba):
        import torch

        return torch.bincount(idx[mask], minlength=n_classes).cpu().numpy().astype(np.int64)
    return np.bincount(idx[np.asarray(mask, dtype=bool)], minlength=n_classes).astype(np.int64)


class ClassAwareThresholds:
    r"""Per-class confidence thresholds that track a target class ratio (Lucas et al., AAAI 2022).

    State: thresholds :math:`\tau_c` (start at ``tau0``) and :math:`p_c`, an exponential moving average of the
    share of the *pseudo-labels* (rows that passed their class threshold) whose arg-max class is :math:`c`.
    One call to :meth:`step` on a batch of probabilities does, in this order:

    1. select with the current thresholds: row :math:`i` with arg-max :math:`\hat c_i` and confidence
       :math:`q_i` is kept iff :math:`q_i \ge \tau_{\hat c_i}` (this mask is returned);
    2. measure :math:`f_c = n_c / \max(1, \sum_{c'} n_{c'})`, the fraction of the kept rows predicted as
       :math:`c` (all zeros when nothing was kept, so that every threshold then goes down);
    3. :math:`p_c \leftarrow \alpha\, p_c + (1 - \alpha)\, f_c` with :math:`\alpha` = ``ema`` (0.9);
    4. :math:`\tau_c \leftarrow \operatorname{clip}(\tau_c + \varepsilon\, \operatorname{sign}(p_c - r_c),
       \tau_{min}, \tau_{max})` with :math:`\varepsilon` = ``eps`` and :math:`r_c` the target ratio.

    A class that is over-represented among the pseudo-labels (:math:`p_c > r_c`) becomes stricter, an
    under-represented one (a starved class) more lenient, by exactly ``eps`` per step. :math:`p` starts at the
    target :math:`r`, so the first step moves :math:`\tau_c` by :math:`\varepsilon \operatorname{sign}(f_c - r_c)`.
    The paper updates once per training iteration on the unlabeled mini-batch; a static pool can be stepped
    repeatedly (see ``classify.methods.selftrain``). The rule balances the class *shares* of the pseudo-labels;
    it does not set their total number, which follows from where the thresholds are when every class is
    represented.

    Parameters
    ----------
    n_classes : int
        Number of classes.
    tau0 : float or array-like of shape (n_classes,), default=0.95
        Initial thresholds.
    ema : float, default=0.9
        Momentum :math:`\alpha` of the moving average of class shares, in [0, 1).
    eps : float, default=0.001
        Threshold step :math:`\varepsilon` per update.
    target : array-like of shape (n_classes,) or None, default=None
        Target share :math:`r_c` of each class among the pseudo-labels (e.g. the labeled class prior);
        normalised to sum to one. ``None`` means uniform.
    tau_min, tau_max : float, default=0.0, 1.0
        Bounds of every threshold.

    Attributes
    ----------
    thresholds : ndarray of shape (n_classes,)
        Current :math:`\tau_c`.
    shares : ndarray of shape (n_classes,)
        Current :math:`p_c`.
    target : ndarray of shape (n_classes,)
        :math:`r_c`.
    n_steps : int
        Number of :meth:`step` calls so far.
    """

    def __init__(self, n_classes: int, tau0: Any = 0.95, ema: float = 0.9, eps: float = 0.001,
                 target: Any = None, tau_min: float = 0.0, tau_max: float = 1.0) -> None:
        if int(n_classes) < 1:
            raise UserError(f"n_classes must be >= 1, got {n_classes}")
        if not 0.0 <= ema < 1.0:
            raise UserError(f"ema must be in [0, 1), got {ema}; the paper uses 0.9")
        if eps < 0:
            raise UserError(f"eps must be >= 0, got {eps}")
        if not 0.0 <= tau_min <= tau_max <= 1.0:
            raise UserError(f"need 0 <= tau_min <= tau_max <= 1, got tau_min={tau_min}, tau_max={tau_max}")
        self.n_classes = int(n_classes)
        self.ema = float(ema)
        self.eps = float(eps)
        self.tau_min = float(tau_min)
        self.tau_max = float(tau_max)
        tau = np.broadcast_to(np.asarray(tau0, dtype=np.float64), (self.n_classes,)).copy()
        self.thresholds = np.clip(tau, self.tau_min, self.tau_max)
        if target is None:
            r = np.full(self.n_classes, 1.0 / self.n_classes)
        else:
            r = np.asarray(target, dtype=np.float64).ravel()
            if r.shape != (self.n_classes,) or np.any(r < 0) or r.sum() <= 0:
                raise UserError(f"target must be {self.n_classes} non-negative class shares with a positive sum, "
                                 f"got {target!r}")
            r = r / r.sum()
        self.target = r
        self.shares = r.copy()
        self.n_steps = 0

    def _check(self, proba: Any) -> Any:
        proba = _check_proba(proba)
        if proba.shape[1] != self.n_classes:
            raise UserError(f"proba has {proba.shape[1]} columns but the thresholds were made for "
                             f"{self.n_classes} classes")
        return proba

    def mask(self, proba: Any) -> Any:
        """Rows whose arg-max confidence reaches that class's current threshold (no state change).

        Parameters
        ----------
        proba : ndarray or torch.Tensor of shape (n_samples, n_classes)

        Returns
        -------
        mask : ndarray or torch.Tensor of shape (n_samples,), bool
        """
        proba = self._check(proba)
        conf, idx = _max_argmax(proba)  # (n,), (n,)
        if _is_torch(proba):
            import torch

            tau = torch.as_tensor(self.thresholds, dtype=conf.dtype, device=conf.device)
            return conf >= tau[idx]
        return conf >= self.thresholds[idx]

    def update(self, counts: Any) -> None:
        """Apply steps 2-4 given the number of kept pseudo-labels per class.

        Parameters
        ----------
        counts : array-like of shape (n_classes,)
            Kept rows per arg-max class at this step (see :func:`class_counts`).
        """
        counts = np.asarray(counts, dtype=np.float64).ravel()
        if counts.shape != (self.n_classes,):
            raise UserError(f"counts must have {self.n_classes} entries, got shape {counts.shape}")
        frac = counts / max(1.0, counts.sum())  # (C,)
        self.shares = self.ema * self.shares + (1.0 - self.ema) * frac
        self.thresholds = np.clip(self.thresholds + self.eps * np.sign(self.shares - self.target),
                                  self.tau_min, self.tau_max)
        self.n_steps += 1

    def step(self, proba: Any) -> Any:
        """Select with the current thresholds, then update the shares and thresholds.

        Parameters
        ----------
        proba : ndarray or torch.Tensor of shape (n_samples, n_classes)

        Returns
        -------
        mask : ndarray or torch.Tensor of shape (n_samples,), bool
            The selection made *before* the update.
        """
        mask = self.mask(proba)
        self.update(class_counts(proba, mask))
        return mask

    def state_dict(self) -> dict:
        """JSON-able state, for checkpoints and reports."""
        return {"thresholds": self.thresholds.tolist(), "shares": self.shares.tolist(),
                "target": self.target.tolist(), "n_steps": self.n_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.thresholds = np.asarray(state["thresholds"], dtype=np.float64)
        self.shares = np.asarray(state["shares"], dtype=np.float64)
        self.target = np.asarray(state["target"], dtype=np.float64)
        self.n_steps = int(state["n_steps"])

    def __repr__(self) -> str:
        return (f"ClassAwareThresholds(n_classes={self.n_classes}, ema={self.ema}, eps={self.eps}, "
                f"steps={self.n_steps}, thresholds={np.round(self.thresholds, 4).tolist()})")


def classaware_pool_mask(proba: np.ndarray, thresholds: ClassAwareThresholds, steps: int) -> tuple[np.ndarray, dict]:
    """Class-aware selection on a static pool (``selftrain``'s "classaware" rule and fine-tuning's ``--pseudo``).

    The thresholds are stepped ``steps`` times on the whole pool (as :meth:`ClassAwareThresholds.step` would, without
    recomputing the arg-max), then each class keeps rows reaching the most lenient threshold it had within the EMA's
    memory (``ceil(1 / (1 - ema))`` steps): on a static pool the thresholds oscillate around the rows' confidences,
    and the last step alone would drop a class whenever it ends on an upswing.

    Parameters
    ----------
    proba : ndarray of shape (n_pool, n_classes)
    thresholds : ClassAwareThresholds
        Its state is advanced (and carries over to a next round).
    steps : int
        Updates on the pool; 0 selects with the thresholds as they are.

    Returns
    -------
    mask : ndarray of shape (n_pool,), bool
    details : dict
        JSON-able thresholds used, final thresholds and class shares.
    """
    conf, idx = proba.max(axis=1), proba.argmax(axis=1)  # (n,), (n,): the pool is static
    window = max(1, int(np.ceil(1.0 / (1.0 - thresholds.ema))))  # the EMA's memory, 10 steps for 0.9
    recent = [thresholds.thresholds.copy()]
    for _ in range(int(steps)):
        kept = conf >= thresholds.thresholds[idx]
        thresholds.update(np.bincount(idx[kept], minlength=thresholds.n_classes))
        recent = (recent + [thresholds.thresholds.copy()])[-window:]
    used = np.min(recent, axis=0)  # (C,) most lenient threshold of each class within the EMA window
    return conf >= used[idx], {"thresholds": np.round(used, 6).tolist(),
                               "final_thresholds": np.round(thresholds.thresholds, 6).tolist(),
                               "shares": np.round(thresholds.shares, 6).tolist()}


def balanced_topk_mask(proba: Any, k: Any) -> Any:
    """Per class, the ``k`` most confident rows whose arg-max is that class.

    A class with fewer than ``k`` such candidate rows keeps all of them. Ties are broken by row order, so the
    result is deterministic.

    Parameters
    ----------
    proba : ndarray or torch.Tensor of shape (n_samples, n_classes)
        Class probabilities.
    k : int or array-like of shape (n_classes,)
        Rows to keep per class (``>= 0``).

    Returns
    -------
    mask : ndarray or torch.Tensor of shape (n_samples,), bool
    """
    proba = _check_proba(proba)
    torch_input = _is_torch(proba)
    p = proba.detach().cpu().numpy() if torch_input else proba
    n, n_classes = p.shape
    k_arr = np.broadcast_to(np.asarray(k), (n_classes,))
    if not np.issubdtype(k_arr.dtype, np.integer) or np.any(k_arr < 0):
        raise UserError(f"k must be a non-negative int (or one per class), got {k!r}")
    conf, idx = p.max(axis=1), p.argmax(axis=1)  # (n,), (n,)
    order = np.lexsort((np.arange(n), -conf, idx))  # grouped by class, most confident first
    cls_sorted = idx[order]
    starts = np.searchsorted(cls_sorted, np.arange(n_classes))  # (C,)
    rank = np.arange(n) - starts[cls_sorted]  # position within its class group
    mask = np.zeros(n, dtype=bool)
    mask[order[rank < k_arr[cls_sorted]]] = True
    if torch_input:
        import torch

        return torch.from_numpy(mask).to(proba.device)
    return mask
