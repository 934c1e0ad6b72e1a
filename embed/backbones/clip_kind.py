"""open_clip backbones: ``clip:<arch>/<pretrained-tag>`` and ``clip:<arch>@<checkpoint>``.

Image features from ``encode_image``; the text tower gives class-prompt embeddings (``encode_text``) for zero-shot
methods, and ``logit_scale`` is CLIP's learned temperature.

open_clip (and transformers, which it imports) is imported by the functions that use it, only for ``clip:`` specs:
the kind is registered when :mod:`embed.backbones` is imported, and a timm run should not pay seconds of imports.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlparse

import numpy as np
import torch

from embed.backbones.base import Backbone, finish
from embed.backbones.preprocess import ClipPreprocessConfig
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
from embed.templates import check_template
from store.validation import UserError, one_line

__all__ = ["ClipBackbone", "ClipKind"]

log = logging.getLogger(__name__)

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass(eq=False)
class ClipBackbone(Backbone):
    """An open_clip model: image features from ``encode_image``, text features from ``encode_text``."""

    tokenizer: Callable | None = None
    text_batch_size: int = 256

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode():
            feats = self.model.encode_image(x)  # (B, D)
        return feats.float(), None

    def encode_text(self, class_names: list[str], templates: list[str]) -> np.ndarray:
        class_names = list(class_names)
        templates = [check_template(t) for t in templates]
        if not class_names or not templates:
            raise UserError("encode_text needs at least one class name and one template")
        prompts = [t.format(c) for c in class_names for t in templates]  # C*T, class-major
        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), self.text_batch_size):
                tokens = self.tokenizer(prompts[i : i + self.text_batch_size]).to(self.device)  # (b, L)
                out.append(self.model.encode_text(tokens).float().cpu())  # (b, D)
        emb = torch.cat(out).reshape(len(class_names), len(templates), -1)  # (C, T, D)
        return emb.numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------- weight sources
def _clip_cached_weights(pcfg: dict, cache_dir: str | None = None) -> str | None:
    """Path of open_clip pretrained weights in the local HF cache or open_clip's URL cache, without network."""
    if pcfg.get("file") and os.path.isfile(pcfg["file"]):
        return pcfg["file"]
    hf_hub = pcfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or HF_WEIGHTS_NAME
        candidates = []
        if filename == HF_WEIGHTS_NAME:
            candidates.append(HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        candidates.append(filename)
        for fn in candidates:
            try:
                found = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
            except Exception as err:
                log.debug("HF cache lookup for %s/%s failed: %s", repo_id, fn, err)
                continue
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = pcfg.get("url", "")
    if url:
        candidate = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(urlparse(url).path))
        if os.path.isfile(candidate):
            return candidate
    return None


def _cache_source(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan | None:
    """open_clip's local caches: the tag's ``file``, the Hugging Face hub cache, ``~/.cache/clip``."""
    import open_clip

    cached = _clip_cached_weights(open_clip.get_pretrained_cfg(spec.name, spec.tag))
    return None if cached is None else WeightsPlan("cache", cached)


def _where(spec: BackboneSpec) -> str:
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(spec.name, spec.tag)
    return pcfg.get("hf_hub") or pcfg.get("url") or "-"


def _download_source(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan | None:
    """open_clip's own download (hf-hub id or URL), when downloads are on."""
    return None if downloads_off(offline) else WeightsPlan("download", _where(spec))


def _unavailable(spec: BackboneSpec) -> WeightsUnavailableError:
    return WeightsUnavailableError(offline_refusal(
        f"clip:{spec.name}/{spec.tag}", f"not in the cache of {_where(spec)}",
        f"python -c \"import open_clip; open_clip.create_model('{spec.name}', pretrained='{spec.tag}')\"",
        f"clip:{spec.name}@<checkpoint>"))


# ------------------------------------------------------------------------------------------------------------- kind
@register_backbone("clip")
class ClipKind(WeightsResolver):
    """``clip:<arch>/<pretrained-tag>`` and ``clip:<arch>@<checkpoint>`` (open_clip)."""

    kind: ClassVar[str]
    #: Where the weights come from, first match wins (see :mod:`embed.backbones.weights`).
    unavailable = staticmethod(_unavailable)
    sources = (functools.partial(checkpoint_source, numpy_ok=True), _cache_source, _download_source)

    @staticmethod
    def parse(rest: str, path: str | None) -> BackboneSpec:
        import open_clip

        arch, tag = (rest.split("/", 1) + [None])[:2] if "/" in rest else (rest, None)
        arch = arch.strip()
        if arch not in open_clip.list_models():
            hint = did_you_mean(arch, open_clip.list_models())
            raise UserError(
                f"unknown open_clip architecture {arch!r}: {hint}see open_clip.list_models() for the names"
            )
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag is not None and path is not None:
            raise UserError(
                f"backbone spec clip:{rest}@{path} gives both a pretrained tag and a checkpoint; "
                f"use either 'clip:{arch}/<tag>' or 'clip:{arch}@<checkpoint>'"
            )
        if path is not None:
            return BackboneSpec("clip", arch, None, path)
        if tag is None or not tag.strip():
            listed = f"its tags: {short_list(tags)}" if tags else "it has no pretrained tags in open_clip"
            raise UserError(
                f"clip:{arch} needs pretrained weights: write 'clip:{arch}/<tag>' ({listed}) "
                f"or 'clip:{arch}@<checkpoint>'"
            )
        clean = tag.strip().lower().replace("-", "_")  # open_clip's own tag normalisation
        if clean not in tags:
            hint = did_you_mean(clean, tags, cutoff=0.5)
            avail = f"available tags for {arch}: {short_list(tags)}" if tags else f"{arch} has no pretrained tags"
            raise UserError(
                f"unknown pretrained tag {tag!r} for open_clip {arch!r}: {hint}{avail}; "
                f"or load a file with 'clip:{arch}@<checkpoint>'"
            )
        return BackboneSpec("clip", arch, clean, None)

    @staticmethod
    def _create_kwargs(spec: BackboneSpec, plan: WeightsPlan, image_size: int | None) -> tuple[str, str, dict]:
        """``pretrained`` for ``open_clip.create_model`` (downloading it first when the plan says so), the
        ``weights_source`` to record, and the other keyword arguments."""
        import open_clip

        kwargs: dict[str, Any] = {"device": "cpu"}
        if image_size is not None:
            kwargs["force_image_size"] = image_size
        if plan.source == "checkpoint":
            return spec.path, spec.path, kwargs
        pcfg = open_clip.get_pretrained_cfg(spec.name, spec.tag)
        pretrained = plan.location
        if plan.source == "download":
            log.info("clip:%s/%s: downloading weights from %s", spec.name, spec.tag, plan.location)
            try:
                pretrained = open_clip.download_pretrained(pcfg)  # open_clip's own download into its cache
            except ImportError:
                raise
            except Exception as err:  # network and hub errors come as OSError, httpx, HfHubHTTPError...
                raise download_failed(f"clip:{spec.name}/{spec.tag}", plan.location, err,
                                      f"clip:{spec.name}@<checkpoint>") from None
        # what open_clip does for a tag, but from the local file: the tag's preprocessing and activation
        kwargs["force_preprocess_cfg"] = {k: pcfg[k] for k in _PREPROCESS_KEYS if k in pcfg}
        if pcfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        return pretrained, f"open_clip:{spec.tag}", kwargs

    @classmethod
    def load(cls, spec: BackboneSpec, device="cpu", image_size: int | None = None, offline: bool | None = None):
        import open_clip

        pretrained, source, kwargs = cls._create_kwargs(spec, cls.resolve(spec, offline), image_size)
        try:
            model = open_clip.create_model(spec.name, pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            raise UserError(
                f"cannot load open_clip {spec.name!r} from {pretrained} ({one_line(err)}); a checkpoint must be the "
                f"state_dict of open_clip.create_model('{spec.name}') (plain or under 'state_dict')"
            ) from None
        model, digest = finish(model, device)
        config = ClipPreprocessConfig.from_open_clip(dict(model.visual.preprocess_cfg), image_size,
                                                     f"clip:{spec.name}")
        return ClipBackbone(
            spec=str(spec),
            dim=int(open_clip.get_model_config(spec.name)["embed_dim"]),
            model=model,
            preprocess_config=config,
            weights_sha256=digest,
            weights_source=source,
            prob_classes=None,
            logit_scale=float(model.logit_scale.detach().exp().item()),
            tokenizer=open_clip.get_tokenizer(spec.name),
        )
