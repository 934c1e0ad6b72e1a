"""Shared fixtures. Backbone fixtures: tiny random-weight checkpoints (helpers live in ``tinymodels.py``)."""
from __future__ import annotations

import pytest

import tinymodels


@pytest.fixture(scope="session")
def tiny_timm_ckpt(tmp_path_factory):
    """Checkpoint of a random ``test_efficientnet`` (1000-class head); spec ``timm:test_efficientnet@<path>``."""
    return tinymodels.make_timm_checkpoint(tmp_path_factory.mktemp("timm") / "test_efficientnet.pth")


@pytest.fixture(scope="session")
def tiny_clip_ckpt(tmp_path_factory):
    """``(arch, checkpoint)`` of a tiny registered open_clip ViT; spec ``clip:<arch>@<checkpoint>``."""
    arch = tinymodels.register_tiny_clip(tmp_path_factory.mktemp("clip_cfg"))
    return arch, tinymodels.make_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")
