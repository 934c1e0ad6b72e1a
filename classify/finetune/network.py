"""The network fine-tuned end to end: ``backbone → L2-normalise → linear``, its layer groups, unfreezing, WiSE-FT."""
from __future__ import annotations

import logging
import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from embed.backbones import Backbone, ClipBackbone, TimmBackbone
from store.validation import UserError

log = logging.getLogger(__name__)

# Layer groups of open_clip image towers, in timm's group_matcher format (open_clip defines none). Same grouping as
# timm's ViT / ResNet matchers; the (99999,) suffix merges the final norm / projection / pooling into the last block.
_CLIP_VIT_GROUPS = {"stem": r"^conv1|^class_embedding|^positional_embedding|^ln_pre|^patch_embed",
                    "blocks": [(r"^transformer\.resblocks\.(\d+)", None), (r"^ln_post|^proj|^attn_pool", (99999,))]}
_CLIP_RESNET_GROUPS = {"stem": r"^conv\d|^bn\d", "blocks": [(r"^layer(\d+)\.(\d+)", None), (r"^attnpool", (99999,))]}


# ----------------------------------------------------------------------------------------------------------- network
def _trunk_layer_map(trunk: nn.Module) -> dict[str, int]:
    """Parameter name → layer id (0 = stem), with timm's own grouping (the one its layer-wise lr decay uses)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if hasattr(trunk, "group_matcher"):  # every timm model
        return group_parameters(trunk, trunk.group_matcher(coarse=False), reverse=True)
    if isinstance(trunk, VisionTransformer):
        return group_parameters(trunk, _CLIP_VIT_GROUPS, reverse=True)
    if isinstance(trunk, ModifiedResNet):
        return group_parameters(trunk, _CLIP_RESNET_GROUPS, reverse=True)
    if isinstance(trunk, TimmModel):  # open_clip tower = timm trunk + projection head
        inner = group_parameters(trunk.trunk, trunk.trunk.group_matcher(coarse=False), reverse=True)
        top = max(inner.values()) + 1
        return {n: inner.get(n.removeprefix("trunk."), top) for n, _ in trunk.named_parameters()}
    log.warning("%s has no known layer grouping: one layer group (no layer-wise lr decay, no last-N unfreezing)",
                type(trunk).__name__)
    return {n: 0 for n, _ in trunk.named_parameters()}


class FineTuneNet(nn.Module):
    """``backbone features → L2-normalise → linear`` on a timm model or an open_clip image tower.

    ``features`` are exactly what :meth:`embed.backbones.Backbone.encode_images` returns (timm: pooled pre-logits;
    open_clip: ``visual(x)``), so ``forward`` applies the head the way the classify methods apply theirs to the
    store's features.

    Parameters
    ----------
    backbone : Backbone
        From :func:`embed.backbones.load_backbone`. A timm model loses its own classifier (``reset_classifier(0)``,
        so the exported checkpoint has no stale ImageNet head); an open_clip model contributes ``model.visual``, shared
        with ``backbone.model`` (the text tower stays outside this module and is exported unchanged).
    weight : array-like of shape (C, D)
    bias : array-like of shape (C,)
        The head on unit-norm features, e.g. from :func:`head_from_model`.
    bn_train : bool, default=False
        Let BatchNorm layers of trainable blocks update their running statistics in train mode. Off by default:
        few-shot batches give noisy statistics, and with frozen statistics the train-mode network computes the
        features the head was fitted on (a domain shift such as digits vs ImageNet otherwise moves every feature at
        the first step). BatchNorm weights and biases train either way.

    Attributes
    ----------
    trunk : nn.Module
    head : nn.Linear
    n_layers : int
        Layer groups of the trunk (timm's ``group_matcher(coarse=False)``); the head is one more on top.
    """

    def __init__(self, backbone: Backbone, weight, bias, bn_train: bool = False) -> None:
        super().__init__()
        self.bn_train = bool(bn_train)
        if isinstance(backbone, TimmBackbone):
            if getattr(backbone.model, "num_classes", 0):
                backbone.model.reset_classifier(0)
            self.kind, self.trunk = "timm", backbone.model
        elif isinstance(backbone, ClipBackbone):
            self.kind, self.trunk = "clip", backbone.model.visual
        else:
            raise UserError(f"cannot fine-tune a {type(backbone).__name__}; use a timm:... or clip:... backbone")
        W = torch.as_tensor(np.asarray(weight, dtype=np.float32))  # (C, D)
        b = torch.as_tensor(np.asarray(bias, dtype=np.float32))  # (C,)
        if W.ndim != 2 or W.shape[1] != backbone.dim or b.shape != (W.shape[0],):
            raise UserError(f"head of shape {tuple(W.shape)} + {tuple(b.shape)} does not fit {backbone.spec} (dim "
                             f"{backbone.dim}); the init model must be fitted on this backbone's features")
        self.head = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(W)
            self.head.bias.copy_(b)
        self.head.to(backbone.device)
        self._layers = _trunk_layer_map(self.trunk)
        self.n_layers = max(self._layers.values(), default=0) + 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, D) un-normalised backbone features."""
        if self.kind == "timm":
            return self.trunk.forward_head(self.trunk.forward_features(x), pre_logits=True)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C) logits."""
        f = self.features(x)  # (B, D)
        with torch.autocast(device_type=f.device.type, enabled=False):  # the head in float32 even under AMP
            return self.head(F.normalize(f.float(), dim=-1))  # (B, C)

    def layer_of(self, name: str) -> int:
        """Layer id of a parameter of this module (the head is ``n_layers``)."""
        if name.startswith("trunk."):
            return self._layers.get(name[len("trunk."):], self.n_layers - 1)
        return self.n_layers

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's hook for ``create_optimizer_v2(..., layer_decay=)``: a callable name → layer id."""
        return self.layer_of

    def no_weight_decay(self) -> set[str]:
        """timm's hook: the trunk's own no-weight-decay names (position embeddings, class tokens)."""
        names = getattr(self.trunk, "no_weight_decay", None)
        return {f"trunk.{n}" for n in (names() if callable(names) else ())}

    def train(self, mode: bool = True) -> "FineTuneNet":
        """Train mode, except BatchNorm layers that keep their running statistics: all of them unless ``bn_train``,
        else those whose parameters are all frozen (what freezing a layer means). Done by mode rather than with timm's
        ``freeze_batch_norm_2d``, which changes the module type and with it the checkpoint's keys."""
        super().train(mode)
        if mode:
            for m in self.trunk.modules():
                if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                    continue
                params = list(m.parameters(recurse=False))
                if not self.bn_train or (params and not any(p.requires_grad for p in params)):
                    m.eval()
        return self


def parse_unfreeze(unfreeze) -> tuple[str, int]:
    """``"all"`` → ("all", 0), ``"none"`` → ("none", 0), ``"last-N"`` → ("last", N)."""
    text = "none" if unfreeze is None else str(unfreeze).strip().lower()
    if text in ("all", "none"):
        return text, 0
    match = re.fullmatch(r"last[-_](\d+)", text)
    if match and int(match.group(1)) >= 1:
        return "last", int(match.group(1))
    raise UserError(f"--unfreeze must be all, none or last-N (N >= 1 trunk layer groups, e.g. last-2), "
                     f"not {unfreeze!r}")


def apply_unfreeze(net: FineTuneNet, unfreeze) -> int:
    """Set ``requires_grad``: the head always trains; the trunk per ``unfreeze``. Returns trainable trunk layers.

    ``last-N`` counts the trunk's layer groups from the top, the same groups as layer-wise lr decay (timm's
    ``group_matcher``; final norms / conv heads belong to the last block, as in timm and open_clip's ``lock``).
    """
    mode, n = parse_unfreeze(unfreeze)
    if mode == "last" and n > net.n_layers:
        log.info("--unfreeze last-%d: the trunk has only %d layer groups; all of them train", n, net.n_layers)
    first = {"all": 0, "none": net.n_layers, "last": max(0, net.n_layers - n)}[mode]
    for name, p in net.named_parameters():
        p.requires_grad = net.layer_of(name) >= first
    return net.n_layers - first


def wise_interpolate(initial: dict, finetuned: dict, alpha: float) -> dict:
    """WiSE-FT weights ``(1 - alpha) * initial + alpha * finetuned`` for every floating tensor of two state_dicts.

    ``torch.lerp`` is exact at both ends (alpha 0 gives ``initial`` bit for bit, alpha 1 ``finetuned``). Integer
    tensors (BatchNorm batch counters) come from ``finetuned`` when ``alpha > 0``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"WiSE alpha must be in [0, 1], got {alpha}")
    out = {}
    for key, a in initial.items():
        b = finetuned[key]
        if a.is_floating_point():
            out[key] = torch.lerp(a, b.to(a.dtype), float(alpha))
        else:
            out[key] = (b if alpha > 0 else a).clone()
    return out


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
