"""Explicit registry of classification methods: ``@register_method("name")`` and ``create(name, **params)``.

A leaf module: it imports no method at import time. Methods import it to register themselves, and the first lookup
(:func:`available`, :func:`get`, :func:`create`, :func:`trusted_types`) imports the built-in ones
(:func:`classify.methods.load_builtins`), so that a command's ``--help`` loads no scikit-learn.
"""
from __future__ import annotations

from typing import Callable
from store.validation import UserError, did_you_mean

_METHODS: dict[str, type] = {}
_BUILTINS_LOADED = False


def _registered() -> dict[str, type]:
    """Every registered method, the built-in ones imported on the first call."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True  # first: the method modules import this one while they load
        from classify.methods import load_builtins

        load_builtins()
    return _METHODS


CAPABILITIES = ("needs_labels", "needs_text", "uses_views", "needs_head")


def register_method(name: str, **capabilities: bool) -> Callable[[type], type]:
    """Class decorator registering an sklearn estimator under ``name``; a duplicate name raises.

    ``capabilities`` (see :class:`~classify.methods.base.FewShotClassifier`)
    become class attributes: ``needs_labels=False``
    for methods that fit without labels, ``needs_text=True`` for methods that need CLIP text embeddings,
    ``uses_views=True`` for methods reading cached augmented views, ``needs_head=True`` for methods reading the
    backbone's own ImageNet classifier (its probabilities in the store).
    """
    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown:
        raise UserError(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")

    def decorate(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise UserError(f"method name {name!r} is already registered by {_METHODS[name].__qualname__}")
        _METHODS[name] = cls
        cls.method_name = name
        for key, value in capabilities.items():
            setattr(cls, key, bool(value))
        return cls

    return decorate


def available() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_registered())


def get(name: str) -> type:
    """The estimator class registered as ``name``; unknown names raise with close-match suggestions."""
    try:
        return _registered()[name]
    except KeyError:
        hint = did_you_mean(name, _METHODS)
        raise UserError(f"unknown method {name!r}: {hint}known methods: {', '.join(sorted(_METHODS))}") from None


def create(name: str, **params):
    """Instantiate the method registered as ``name`` with ``params``.

    Raises
    ------
    ValueError
        For a parameter the method does not take, naming the close matches among its parameters (``--kk`` ->
        ``k``) and listing them all.
    """
    cls = get(name)
    accepted = sorted(cls().get_params(deep=False)) if hasattr(cls, "get_params") else None
    unknown = [key for key in params if accepted is not None and key not in accepted]
    if unknown:
        hint = did_you_mean(unknown[0], accepted)
        raise UserError(f"method {name!r} has no parameter {unknown[0]!r}: {hint}its parameters: "
                         f"{', '.join(accepted) or 'none'} (python -m classify list --params {name})")
    try:
        return cls(**params)
    except TypeError as err:
        raise UserError(f"bad parameter for method {name!r}: {err}") from None


_PERSISTABLE: set[type] = set()


def persistable(cls: type) -> type:
    """Class decorator: instances may appear inside a saved model (helpers that fitted methods hold as attributes).

    Registered methods are persistable already. Only plain-data classes belong here: loading sets their attributes
    and runs no other code of theirs.
    """
    _PERSISTABLE.add(cls)
    return cls


def trusted_types() -> set[str]:
    """Fully qualified names of the suite's classes a saved model may contain (see :mod:`classify.persist`)."""
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in set(_registered().values()) | _PERSISTABLE}
