"""The base of every method: prediction from ``_logits``, declarative parameter checks, the CLIP text-prior checks.

A method subclasses :class:`FewShotClassifier`, lists its parameter rules in ``_parameter_constraints``, calls
``self._validate_params()`` first thing in ``fit``, and implements either ``_logits(X)`` (then ``predict_proba`` is
their softmax) or ``predict_proba`` itself (methods whose output is a distribution: votes, propagated mass).
``predict`` is written once, here.

The parameter rules (``Int``, ``Real``, ``Options``, ...) are :mod:`store.validation`'s, shared with the CLIs' flags.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from classify.methods.features import labeled_mask
from store.validation import Is, Rule, UserError, check_params


class NotApplicable(UserError):
    """The method cannot run on this data: it needs something the store lacks (CLIP text embeddings, the backbone's
    classifier head, augmented views). The CLIs print it in one line; the benchmarks record it as "not applicable",
    while any other error (a bug) stops them."""


#: a nested method: a registered name, ``{"method": name, ...}``, or an estimator
METHOD = Is(lambda v: isinstance(v, (str, dict)) or hasattr(v, "fit"), "a method name, a dict or an estimator")


class FewShotClassifier(ClassifierMixin, BaseEstimator):
    """Base of the suite's methods (an sklearn classifier; rows labeled ``-1`` are unlabeled).

    Capabilities are class attributes, set by ``@register_method(name, ...)`` and read by the pipeline and the
    benchmarks: ``needs_labels`` (False: fits with every row unlabeled), ``needs_text`` (CLIP text embeddings),
    ``uses_views`` (rows are ``[features | view_0 | ...]``), ``needs_head`` (the backbone's ImageNet classifier).
    """

    needs_labels: ClassVar[bool] = True
    needs_text: ClassVar[bool] = False
    uses_views: ClassVar[bool] = False
    needs_head: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, list[Rule]]] = {}

    def _validate_params(self) -> None:
        """Check every parameter listed in ``_parameter_constraints`` (call first thing in ``fit``)."""
        owner = getattr(type(self), "method_name", type(self).__name__)
        check_params(owner, self.get_params(deep=False), self._parameter_constraints)

    def _logits(self, X) -> np.ndarray:  # pragma: no cover - methods define _logits or override predict_proba
        raise TypeError(f"{type(self).__name__} must define _logits(X) or predict_proba(X)")

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, len(classes_)): the softmax of the method's logits."""
        check_is_fitted(self)
        return softmax(np.asarray(self._logits(X), dtype=np.float64), axis=1)

    def predict(self, X) -> np.ndarray:
        """Most probable class, shape (n,)."""
        idx = self.predict_proba(X).argmax(axis=1)  # (n,); first, so an unfitted call raises NotFittedError
        return self.classes_[idx]


def check_class_indices(y, n_classes: int, source: str) -> None:
    """Labels of methods whose classes come from elsewhere (text rows, class names) must index those classes.

    ``y`` may be None (label-free fit); ``-1`` marks unlabeled rows; ``source`` names where the classes come from.
    """
    if y is None:
        return
    y = np.asarray(y)
    labeled = y[labeled_mask(y)]
    if labeled.size and (not np.issubdtype(labeled.dtype, np.number) or labeled.min() < 0
                         or labeled.max() >= n_classes or np.any(labeled != np.round(labeled))):
        raise UserError(f"labels must be class indices in [0, {n_classes}) (rows of {source}) or -1 for unlabeled")


def accepts_unlabeled(estimator) -> bool:
    """Whether ``estimator.fit(X, y)`` treats ``y == -1`` as unlabeled rows: this suite's registered methods (they
    carry ``method_name``) and scikit-learn's semi-supervised estimators. Any other estimator would learn -1 as a class.
    """
    from sklearn.semi_supervised import LabelPropagation, LabelSpreading, SelfTrainingClassifier

    return getattr(type(estimator), "method_name", None) is not None or isinstance(
        estimator, (LabelSpreading, LabelPropagation, SelfTrainingClassifier))


def resolve_estimator(spec, default=None):
    """A fresh estimator from a nested-method parameter (``teacher``, ``head``, ``base``, ``gate``, ...).

    Parameters
    ----------
    spec : estimator, str, dict or None
        An estimator (cloned, so the caller's object is never fitted), a registered method name, a dict
        ``{"method": name, **params}``, or None for ``default()``.
    default : callable returning an estimator, optional
        Used when ``spec`` is None.
    """
    from classify.methods.registry import create  # the registry is a leaf; imported here as methods import this module

    if spec is None:
        if default is None:
            raise UserError("no method given: pass a registered method name, {'method': name, ...} or an estimator")
        return default()
    if isinstance(spec, str):
        return create(spec)
    if isinstance(spec, dict) and "method" in spec:
        params = dict(spec)
        return create(params.pop("method"), **params)
    if not (hasattr(spec, "fit") and hasattr(spec, "get_params")):
        raise UserError(f"expected an sklearn estimator or a registered method name, got {spec!r}")
    return clone(spec)
