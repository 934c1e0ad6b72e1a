"""``stages:<name>`` and ``stages:<name>@<checkpoint>``: a timm backbone whose features are its pooled pre-logits
joined to its last :data:`STAGES` feature stages before the head, each global-average-pooled, each block
L2-normalised (the ``layers`` lever of :mod:`benchmarks.levers`; for ``tf_efficientnet_lite0`` 1280 + 40 + 112 + 320
= 1752 dimensions).

The weights, their sources and the preprocessing are exactly those of ``timm:<name>`` (same weight hash); the stages
are timm's ``forward_intermediates(x, indices=STAGES)``. The store keeps these features as their own backbone group
(spec ``stages:<name>``), next to ``timm:<name>`` if both are embedded. The ImageNet probabilities are the model's own;
no classifier head is kept, since the head reads only the first block.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from embed.backbones.base import Backbone
from embed.backbones.spec import BackboneSpec, register_backbone
from embed.backbones.timm_kind import TimmKind
from store.validation import UserError

__all__ = ["STAGES", "StagesBackbone", "StagesKind", "pooled_stages"]

#: How many of the last feature stages before the head are pooled and joined.
STAGES = 3


def pooled_stages(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Pooled pre-logits (B, D), the pooled last :data:`STAGES` stages [(B, C_s)] from the earliest, and the final
    feature map (B, C, h, w) of a timm model, in one pass."""
    final, stages = model.forward_intermediates(x, indices=STAGES)  # (B, C, h, w), [(B, C_s, h_s, w_s)]
    head = model.forward_head(final, pre_logits=True)  # (B, D)
    return head.float(), [s.float().mean(dim=(2, 3)) for s in stages], final


@dataclass(eq=False)
class StagesBackbone(Backbone):
    """A timm model whose features are its pooled pre-logits and pooled last stages, each L2-normalised, joined."""

    stage_dims: tuple[int, ...] = ()

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode():
            head, stages, final = pooled_stages(self.model, x)
            probs = None if self.prob_classes is None else self.model.forward_head(final).float().softmax(dim=-1)
        return torch.cat([F.normalize(block, dim=1) for block in [head, *stages]], dim=1), probs  # (B, D + sum C_s)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "stage_dims": list(self.stage_dims)}


@register_backbone("stages")
class StagesKind(TimmKind):
    """``stages:<name>`` and ``stages:<name>@<checkpoint>``: names, weights and preprocessing as ``timm:``."""

    @staticmethod
    def parse(rest: str, path: str | None) -> BackboneSpec:
        return dataclasses.replace(TimmKind.parse(rest, path), kind="stages")

    @classmethod
    def load(cls, spec: BackboneSpec, device="cpu", image_size: int | None = None, offline: bool | None = None):
        plain = super().load(spec, device=device, image_size=image_size, offline=offline)  # a TimmBackbone
        info = getattr(plain.model, "feature_info", None)
        if not hasattr(plain.model, "forward_intermediates") or not info or len(info) < STAGES:
            raise UserError(f"timm model {spec.name!r} gives no {STAGES} feature stages (forward_intermediates): "
                            f"use timm:{spec.name}, or a CNN such as stages:tf_efficientnet_lite0")
        stage_dims = tuple(int(stage["num_chs"]) for stage in list(info)[-STAGES:])
        fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain) if f.init}
        return StagesBackbone(**{**fields, "dim": plain.dim + sum(stage_dims)}, stage_dims=stage_dims)
