"""The loaded backbone: :class:`Backbone`, its model, preprocessing and provenance (:meth:`Backbone.describe`)."""
from __future__ import annotations

import abc
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
import torchvision

from embed.backbones.checkpoint import weights_sha256
from embed.backbones.preprocess import PreprocessConfig

__all__ = ["Backbone", "finish"]


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "open_clip": importlib.metadata.version("open_clip_torch"),  # without importing it (seconds, transformers)
    }


def finish(model: torch.nn.Module, device) -> tuple[torch.nn.Module, str]:
    """Hash the CPU weights, then move to ``device`` in eval mode."""
    model.eval()
    digest = weights_sha256(model)
    return model.to(device), digest


@dataclass(eq=False)
class Backbone(abc.ABC):
    """A loaded backbone: eval-mode model, its preprocessing and provenance.

    Use :func:`~embed.backbones.load_backbone` to build one. ``encode_images`` takes batches produced by
    ``eval_transform`` (or an augment transform) and returns float32 features even under autocast.

    Attributes
    ----------
    spec : str
        Canonical spec string.
    dim : int
        Feature dimension D.
    model : torch.nn.Module
        The network, in eval mode, on the requested device.
    preprocess_config : PreprocessConfig
        Typed preprocessing; ``eval_transform``, ``augment_transforms``, ``input_size``, ``resize_size`` and
        ``preprocessing`` all derive from it.
    eval_transform : callable
        PIL RGB image -> float tensor (3, H, W), from timm / open_clip.
    augment_transforms : dict
        ``{"weak": ..., "strong": ...}`` training transforms with the same size / mean / std.
    weights_sha256 : str
        :func:`~embed.backbones.weights_sha256` of the loaded weights.
    weights_source : str
        ``"timm-cache"``, ``"package:<module>"``, ``"download:<hub id or URL>"`` (timm, fetched by this load), a
        checkpoint path or ``"open_clip:<tag>"``.
    versions : dict
        torch / torchvision / timm / open_clip versions.
    prob_classes : list of str or None
        Class names of the probabilities ``encode_images`` returns (ImageNet heads), else None.
    logit_scale : float or None
        CLIP's learned logit scale (already exponentiated); None for timm.
    """

    spec: str
    dim: int
    model: torch.nn.Module
    preprocess_config: PreprocessConfig
    weights_sha256: str
    weights_source: str
    versions: dict = field(default_factory=_versions)
    prob_classes: list[str] | None = None
    logit_scale: float | None = None
    eval_transform: Callable = field(init=False, repr=False)
    augment_transforms: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.eval_transform = self.preprocess_config.eval_transform()
        self.augment_transforms = self.preprocess_config.augment_transforms()

    @property
    def input_size(self) -> int:
        """Square side the transforms produce."""
        return self.preprocess_config.input_size

    @property
    def resize_size(self) -> int:
        """Side images are resized to before the crop (rounded up): the smallest JPEG draft decoding may give."""
        return self.preprocess_config.resize_size

    @property
    def preprocessing(self) -> dict[str, Any]:
        """JSON-able description of ``eval_transform`` (the store's provenance; a fresh dict on every call)."""
        return self.preprocess_config.to_dict()

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover - parameterless model
            return torch.device("cpu")

    @abc.abstractmethod
    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (and class probabilities when the model has a known head) for a batch of images.

        Parameters
        ----------
        x : Tensor
            (B, 3, H, W) batch from ``eval_transform``, on the model's device (any float dtype / memory format).

        Returns
        -------
        features : Tensor
            (B, D) float32, un-normalised.
        probs : Tensor or None
            (B, K) float32 softmax over ``prob_classes``, or None.
        """

    def encode_text(self, class_names: list[str], templates: list[str]) -> np.ndarray | None:
        """Text embeddings of every (class, template) prompt; None for backbones without a text tower.

        Parameters
        ----------
        class_names : list of str
            C class names, inserted into each template's ``{}``.
        templates : list of str
            T format strings with exactly one ``{}``.

        Returns
        -------
        numpy.ndarray or None
            (C, T, D) float32, un-normalised; None for image-only backbones.
        """
        return None

    def classifier_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The linear classifier mapping features to ``prob_classes`` logits, ``(W (K, D), b (K,))``, or None.

        Kept in the store so that methods can recompute class probabilities from features (e.g. ConSE zero-shot).
        """
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: spec, dim, input_size, preprocessing, weights hash/source, versions."""
        return {
            "spec": self.spec,
            "dim": self.dim,
            "input_size": self.input_size,
            "preprocessing": self.preprocessing,
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "versions": self.versions,
            "has_probs": self.prob_classes is not None,
            "has_text": self.logit_scale is not None,
        }
