"""The base of every method: prediction from ``_logits``, declarative parameter checks, the CLIP text-prior checks.

A method subclasses :class:`FewShotClassifier`, lists its parameter rules in ``_parameter_constraints``, calls
``self._validate_params()`` first thing in ``fit``, and implements either ``_logits(X)`` (then ``predict_proba`` is
their softmax) or ``predict_proba`` itself (methods whose output is a distribution: votes, propagated mass).
``predict`` is written once, here.

Parameter rules are hand-written rather than sklearn's ``_parameter_constraints`` machinery because that lives in a
private module (``sklearn.utils._param_validation``) and the suite uses public sklearn API only; the rules below are
the small subset the methods need, and their messages name the method, the parameter and what it accepts.
"""
from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from classify.features import labeled_mask


class NotApplicable(ValueError):
    """The method cannot run on this data: it needs something the store lacks (CLIP text embeddings, the backbone's
    classifier head, augmented views). The CLIs print it in one line; the benchmarks record it as "not applicable",
    while any other error (a bug) stops them."""


class Rule(ABC):
    """One accepted form of a parameter value; a parameter is valid when any of its rules accepts it."""

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this form."""

    @abstractmethod
    def __str__(self) -> str:
        """What this form is, for error messages ("an int >= 1")."""


class Interval(Rule):
    """A number between ``low`` and ``high`` (None: unbounded); ``integer`` asks for an int. Booleans never pass."""

    def __init__(self, low=None, high=None, *, integer: bool = False, low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.integer, self.low_open, self.high_open = low, high, integer, low_open, high_open

    def accepts(self, value) -> bool:
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or value != value:  # NaN fails value == value
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        kind = "an int" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high}"
        return kind


def Int(low=None, high=None) -> Interval:
    """An int in ``[low, high]``."""
    return Interval(low, high, integer=True)


def Real(low=None, high=None, **open_ends) -> Interval:
    """A number (int or float) between ``low`` and ``high``; ``low_open`` / ``high_open`` exclude an end."""
    return Interval(low, high, **open_ends)


class Options(Rule):
    """One of the given strings."""

    def __init__(self, *options: str):
        self.options = options

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    def __str__(self) -> str:
        return repr(self.options[0]) if len(self.options) == 1 else "one of " + ", ".join(map(repr, self.options))


class ListOf(Rule):
    """A non-empty list, tuple or 1-d array whose every item passes ``item`` (grids such as ``Cs``)."""

    def __init__(self, item: Rule):
        self.item = item

    def accepts(self, value) -> bool:
        if isinstance(value, np.ndarray):
            value = value.tolist() if value.ndim == 1 else None
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(self.item.accepts(v) for v in value)

    def __str__(self) -> str:
        return f"a non-empty list of {str(self.item).replace('a number', 'numbers').replace('an int', 'ints')}"


class _Is(Rule):
    def __init__(self, check, text: str):
        self.check, self.text = check, text

    def accepts(self, value) -> bool:
        return bool(self.check(value))

    def __str__(self) -> str:
        return self.text


NONE = _Is(lambda v: v is None, "None")
BOOL = _Is(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
DICT = _Is(lambda v: isinstance(v, dict), "a dict")
#: a nested method: a registered name, ``{"method": name, ...}``, or an estimator
METHOD = _Is(lambda v: isinstance(v, (str, dict)) or hasattr(v, "fit"), "a method name, a dict or an estimator")


def check_params(owner: str, params: dict[str, Any], constraints: dict[str, list[Rule]]) -> None:
    """Raise ``ValueError`` naming the first parameter no rule accepts (``owner`` names the method)."""
    for name, rules in constraints.items():
        value = params[name]
        if not any(rule.accepts(value) for rule in rules):
            forms = [str(rule) for rule in rules]
            allowed = forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]
            raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


class FewShotClassifier(ClassifierMixin, BaseEstimator):
    """Base of the suite's methods (an sklearn classifier; rows labeled ``-1`` are unlabeled).

    Capabilities are class attributes, set by ``@register_method(name, ...)`` and read by the pipeline and the
    benchmarks: ``needs_labels`` (False: fits with every row unlabeled), ``needs_text`` (CLIP text embeddings),
    ``uses_views`` (rows are ``[features | view_0 | ...]``).
    """

    needs_labels: ClassVar[bool] = True
    needs_text: ClassVar[bool] = False
    uses_views: ClassVar[bool] = False
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


def text_class_weights(estimator, X: np.ndarray, y=None) -> np.ndarray:
    """Unit class embeddings (C, D) from an estimator's ``text_embeddings`` / ``templates`` / ``template_subset``.

    Checks what every text-prior method must (zeroshot, the WiSE probe, Tip-Adapter, the cross-modal probe): the
    text and image features come from one backbone (same dim), and labels are class indices into the text rows.
    """
    from classify.methods.zeroshot import zeroshot_class_weights

    W = zeroshot_class_weights(estimator.text_embeddings, estimator.templates, estimator.template_subset)  # (C, D)
    if W.shape[1] != X.shape[1]:
        raise ValueError(f"text embeddings have dim {W.shape[1]} but image features have dim {X.shape[1]}: use text "
                         "and image embeddings of the same CLIP backbone")
    check_class_indices(y, W.shape[0], "text_embeddings")
    return W


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
        raise ValueError(f"labels must be class indices in [0, {n_classes}) (rows of {source}) or -1 for unlabeled")


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
    from classify.registry import create  # the registry is a leaf; imported here as methods import this module

    if spec is None:
        if default is None:
            raise ValueError("no method given: pass a registered method name, {'method': name, ...} or an estimator")
        return default()
    if isinstance(spec, str):
        return create(spec)
    if isinstance(spec, dict) and "method" in spec:
        params = dict(spec)
        return create(params.pop("method"), **params)
    if not (hasattr(spec, "fit") and hasattr(spec, "get_params")):
        raise ValueError(f"expected an sklearn estimator or a registered method name, got {spec!r}")
    return clone(spec)
