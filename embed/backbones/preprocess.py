"""Typed preprocessing configs: what a backbone does to an image before the network, built from timm's / open_clip's
own configs (never retyped), and the one place that derives the transforms and sizes from it.

:meth:`PreprocessConfig.to_dict` is the provenance the feature store records and compares: its keys and values must
stay exactly those of stores written before (a store refuses features whose preprocessing differs).
"""
from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["STRONG_AUGMENT", "ClipPreprocessConfig", "PreprocessConfig", "TimmPreprocessConfig"]

log = logging.getLogger(__name__)

#: timm auto-augment policy used for the "strong" augmentation.
STRONG_AUGMENT = "rand-m9-mstd0.5"


def _square_side(size: tuple[int, int], spec: str) -> int:
    """The side recorded for an input of ``size`` (h, w): the larger one, with a warning when they differ."""
    if size[0] != size[1]:
        log.warning("%s has a non-square input size %sx%s; recording the larger side", spec, size[0], size[1])
    return max(size)


@dataclass(frozen=True)
class PreprocessConfig(abc.ABC):
    """How images become the network's input: size, normalisation, interpolation.

    Attributes
    ----------
    size : tuple of int
        (height, width) of the network input.
    mean, std : tuple of float
        Per-channel normalisation.
    interpolation : str
        Resampling filter name (``"bicubic"``, ...).
    image_size_override : int or None
        The ``image_size`` asked of :func:`~embed.backbones.load_backbone`, None for the model's default.
    """

    transform: ClassVar[str]  # the library function that builds the eval transform, recorded in the provenance

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    image_size_override: int | None

    @property
    def input_size(self) -> int:
        """Square side the transforms produce (the larger side of a non-square input)."""
        return max(self.size)

    @property
    def resize_size(self) -> int:
        """Side images are resized to before the centre crop, rounded up: JPEG draft decoding may shrink an image
        down to this size and not below."""
        return self.input_size

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able provenance of this preprocessing (what the feature store records and compares)."""
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, **self._own_fields(),
                "image_size_override": self.image_size_override, "transform": self.transform}

    @abc.abstractmethod
    def _own_fields(self) -> dict[str, Any]:
        """The provenance entries of this kind of preprocessing only."""

    @abc.abstractmethod
    def eval_transform(self) -> Callable:
        """PIL RGB image -> float tensor (3, H, W), built by timm / open_clip from this config."""

    def augment_transforms(self) -> dict[str, Callable]:
        """``{"weak": ..., "strong": ...}`` training transforms sharing the size / mean / std / interpolation."""
        from timm.data import create_transform

        common = {"input_size": self.size, "is_training": True, "mean": self.mean, "std": self.std,
                  "interpolation": self.interpolation}
        return {
            # flip + random-resized-crop (keeping at least half the area) + mild colour jitter
            "weak": create_transform(**common, scale=(0.5, 1.0), hflip=0.5, color_jitter=0.1, auto_augment=None),
            "strong": create_transform(**common, hflip=0.5, auto_augment=STRONG_AUGMENT),
        }


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class TimmPreprocessConfig(PreprocessConfig):
    """timm's eval preprocessing: resize to ``input_size / crop_pct``, centre crop (``crop_mode``), normalise.

    Attributes
    ----------
    crop_pct : float
        Fraction of the resized image the crop keeps.
    crop_mode : str
        timm's crop mode (``"center"``, ``"squash"``, ``"border"``).
    """

    transform: ClassVar[str] = "timm.data.create_transform"

    crop_pct: float
    crop_mode: str

    @classmethod
    def from_data_config(cls, data_cfg: dict, image_size: int | None, spec: str) -> TimmPreprocessConfig:
        """From ``timm.data.resolve_model_data_config(model)``, at ``image_size`` when given (else the model's)."""
        size = (image_size, image_size) if image_size is not None else tuple(int(v) for v in data_cfg["input_size"][1:])
        _square_side(size, spec)
        return cls(size=size, mean=_floats(data_cfg["mean"]), std=_floats(data_cfg["std"]),
                   interpolation=data_cfg["interpolation"], image_size_override=image_size,
                   crop_pct=float(data_cfg["crop_pct"]), crop_mode=data_cfg.get("crop_mode", "center"))

    @property
    def resize_size(self) -> int:
        return math.ceil(self.input_size / self.crop_pct)

    def _own_fields(self) -> dict[str, Any]:
        return {"crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    def eval_transform(self) -> Callable:
        from timm.data import create_transform

        return create_transform(input_size=(3, *self.size), interpolation=self.interpolation, mean=self.mean,
                                std=self.std, crop_pct=self.crop_pct, crop_mode=self.crop_mode, is_training=False)


@dataclass(frozen=True)
class ClipPreprocessConfig(PreprocessConfig):
    """open_clip's eval preprocessing: resize, then centre crop or pad, normalise.

    Attributes
    ----------
    resize_mode : str
        ``"shortest"`` (resize the shorter side, centre crop), ``"longest"`` (resize the longer side, pad with
        ``fill_color``) or ``"squash"`` (resize to the square).
    fill_color : int or tuple of int
        Padding colour of ``"longest"``.
    open_clip_size : int or tuple of int
        The size as open_clip's config gives it (``image_transform`` treats an int and a pair differently).
    """

    transform: ClassVar[str] = "open_clip.image_transform"

    resize_mode: str
    fill_color: int | tuple[int, ...]
    open_clip_size: int | tuple[int, ...]

    @classmethod
    def from_open_clip(cls, pp: dict, image_size: int | None, spec: str) -> ClipPreprocessConfig:
        """From an open_clip model's ``visual.preprocess_cfg``; ``image_size`` is the override asked for (recorded)."""
        raw = pp["size"]
        size = (raw, raw) if isinstance(raw, int) else tuple(raw)
        _square_side(size, spec)
        fill = pp.get("fill_color", 0)
        return cls(size=size, mean=_floats(pp["mean"]), std=_floats(pp["std"]), interpolation=pp["interpolation"],
                   image_size_override=image_size, resize_mode=pp["resize_mode"],
                   fill_color=tuple(fill) if isinstance(fill, (list, tuple)) else fill,
                   open_clip_size=raw if isinstance(raw, int) else tuple(raw))

    def _own_fields(self) -> dict[str, Any]:
        fill = list(self.fill_color) if isinstance(self.fill_color, tuple) else self.fill_color
        return {"resize_mode": self.resize_mode, "fill_color": fill}

    def eval_transform(self) -> Callable:
        import open_clip

        return open_clip.image_transform(self.open_clip_size, is_train=False, mean=self.mean, std=self.std,
                                         resize_mode=self.resize_mode, interpolation=self.interpolation,
                                         fill_color=self.fill_color)
