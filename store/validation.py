"""Parameter rules shared by every command-line flag and every method parameter: one way to say what a value may be.

The CLIs (``python -m embed``, ``classify``, ``store``) check their flags with :func:`check_flags`; the methods list
``_parameter_constraints`` and check them with :func:`check_params` (see :mod:`classify.methods.base`).
It lives in ``store``
because every package imports ``store`` and no other package.

The rules are hand-written rather than sklearn's ``_parameter_constraints`` machinery because that lives in a private
module (``sklearn.utils._param_validation``) and the suite uses public sklearn API only; these are the small subset
needed, and their messages name the parameter and what it accepts.
"""
from __future__ import annotations

import difflib
import numbers
import re
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class UserError(ValueError):
    """A mistake the user can fix (a flag, a file, the data), with the fix in its message. The CLIs print it as one
    line and exit 2; any other exception is a bug and keeps its traceback. A ValueError, so sklearn's conventions for
    bad parameters hold."""


def one_line(err: BaseException, limit: int = 800) -> str:
    """An exception's message as one bounded line for a user message: whitespace (torch lists every mismatched key
    on a line of its own) collapsed, terminal colour codes dropped, cut at ``limit`` characters."""
    msg = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())
    return msg if len(msg) <= limit else msg[:limit] + "..."


def close_matches(word: str, choices, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Close matches of ``word`` among ``choices`` (difflib), case-insensitively, in their original spelling."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(str(choice).lower(), str(choice))
    return [by_lower[m] for m in difflib.get_close_matches(str(word).lower(), list(by_lower), n=n, cutoff=cutoff)]


def did_you_mean(word: str, choices, show=str, joiner: str = ", ", **kw) -> str:
    """``"did you mean a, b? "`` for the close matches of ``word`` (each written by ``show``), or ``""``: the one
    did-you-mean of every error message (flags, methods, parameters, backbones, templates)."""
    close = close_matches(word, choices, **kw)
    return f"did you mean {joiner.join(show(c) for c in close)}? " if close else ""


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


class Is(Rule):
    """A value for which ``check(value)`` is true, described as ``text``."""

    def __init__(self, check, text: str):
        self.check, self.text = check, text

    def accepts(self, value) -> bool:
        return bool(self.check(value))

    def __str__(self) -> str:
        return self.text


NONE = Is(lambda v: v is None, "None")
BOOL = Is(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
DICT = Is(lambda v: isinstance(v, dict), "a dict")


def _describe(rules: list[Rule]) -> str:
    forms = [str(rule) for rule in rules]
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def check_params(owner: str, params: dict[str, Any], constraints: dict[str, list[Rule]]) -> None:
    """Raise ``ValueError`` naming the first parameter no rule accepts (``owner`` names the method)."""
    for name, rules in constraints.items():
        value = params[name]
        if not any(rule.accepts(value) for rule in rules):
            raise UserError(f"{owner}: {name} must be {_describe(rules)}, got {value!r}")


def check_flags(values: dict[str, Any], constraints: dict[str, list[Rule]]) -> None:
    """Command-line flags: ``--flag-name must be ..., got ...`` for the first value no rule accepts.

    fire passes ``abc`` as text and ``5`` as an int, so a wrong type is caught here, before any work.
    """
    for name, rules in constraints.items():
        if name in values and not any(rule.accepts(values[name]) for rule in rules):
            raise UserError(f"--{name.replace('_', '-')} must be {_describe(rules)}, got {values[name]!r}")
