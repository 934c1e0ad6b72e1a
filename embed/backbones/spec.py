"""Backbone spec strings: the registry of kinds (``timm``, ``clip``), :class:`BackboneSpec` and :func:`parse_spec`.

A kind registers itself with :func:`register_backbone` (see :mod:`embed.backbones.timm_kind` and
:mod:`embed.backbones.clip_kind`); this module imports none of them, so the registry stays a leaf.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from store import validation
from store.validation import UserError

__all__ = ["BackboneSpec", "available_kinds", "did_you_mean", "kind_of", "parse_spec", "register_backbone",
           "short_list"]


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed, validated backbone spec.

    Attributes
    ----------
    kind : str
        Registered kind, ``"timm"`` or ``"clip"``.
    name : str
        timm model name (optionally with a ``.tag``) or open_clip architecture.
    tag : str or None
        open_clip pretrained tag (canonical lower-case form); None for timm and checkpoint specs.
    path : str or None
        Absolute checkpoint path for ``@<checkpoint>`` specs, else None.
    """

    kind: str
    name: str
    tag: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        s = f"{self.kind}:{self.name}"
        if self.tag:
            s += f"/{self.tag}"
        if self.path:
            s += f"@{self.path}"
        return s


_KINDS: dict[str, type] = {}


def register_backbone(kind: str) -> Callable[[type], type]:
    """Class decorator registering a backbone kind (the part of a spec before ``:``); a duplicate kind raises.

    The class must provide ``parse(rest: str, path: str | None) -> BackboneSpec``,
    ``resolve(spec: BackboneSpec, offline) -> WeightsPlan`` and ``load(spec: BackboneSpec, device, image_size, offline)
    -> Backbone`` as classmethods/staticmethods.
    """

    def decorate(cls: type) -> type:
        if kind in _KINDS and _KINDS[kind] is not cls:
            raise UserError(f"backbone kind {kind!r} is already registered by {_KINDS[kind].__qualname__}")
        for attr in ("parse", "resolve", "load"):
            if not callable(getattr(cls, attr, None)):
                raise TypeError(f"backbone kind {kind!r}: {cls.__qualname__} lacks a {attr}() method")
        _KINDS[kind] = cls
        cls.kind = kind
        return cls

    return decorate


def available_kinds() -> list[str]:
    """Sorted registered spec kinds."""
    return sorted(_KINDS)


def kind_of(spec: BackboneSpec) -> type:
    """The registered class of a parsed spec's kind."""
    return _KINDS[spec.kind]


def short_list(items, limit: int = 8) -> str:
    """``"a, b, c, ... (n more)"``: the first ``limit`` items of a long list, for an error message."""
    items = list(items)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def did_you_mean(word: str, choices, n: int = 5, cutoff: float = 0.6) -> str:
    """``"did you mean 'x' or 'y'? "`` for a backbone name, tag or kind (store.validation.did_you_mean)."""
    return validation.did_you_mean(word, choices, show=repr, joiner=" or ", n=n, cutoff=cutoff)


_SPEC_HELP = (
    "expected 'timm:<name>', 'timm:<name>@<checkpoint>', 'clip:<arch>/<pretrained-tag>', 'clip:<arch>@<checkpoint>' "
    "or 'stages:<timm name>'"
)


def parse_spec(spec: str) -> BackboneSpec:
    """Parse and validate a backbone spec string.

    Names and tags are checked against timm's / open_clip's registries; checkpoint files are checked only by
    :func:`~embed.backbones.load_backbone`, so a spec can be parsed on a machine that lacks the file.

    Parameters
    ----------
    spec : str
        e.g. ``"timm:tf_efficientnet_lite0"``, ``"timm:resnet50@ckpt.pth"``, ``"clip:ViT-B-32/openai"``.

    Returns
    -------
    BackboneSpec
        ``str(result)`` is the canonical spec (checkpoint path made absolute, CLIP tag in open_clip's canonical form).

    Raises
    ------
    ValueError
        Malformed spec, unknown kind/name/tag; the message suggests close matches and the accepted forms.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"bad backbone spec {spec!r}: {_SPEC_HELP}")
    spec = spec.strip()
    kind, rest = spec.split(":", 1)
    kind = kind.strip()
    if kind not in _KINDS:
        hint = did_you_mean(kind, _KINDS, cutoff=0.5)
        raise UserError(f"unknown backbone kind {kind!r} in {spec!r}: {hint}known kinds: {', '.join(sorted(_KINDS))}")
    path = None
    if "@" in rest:
        rest, path = rest.split("@", 1)
        path = path.strip()
        if not path:
            raise UserError(
                f"bad backbone spec {spec!r}: nothing after '@'; give a checkpoint file, e.g. {kind}:{rest}@model.pth"
            )
        path = os.path.abspath(os.path.expanduser(path))
    rest = rest.strip()
    if not rest:
        raise UserError(f"bad backbone spec {spec!r}: no model name after '{kind}:'; {_SPEC_HELP}")
    return _KINDS[kind].parse(rest, path)
