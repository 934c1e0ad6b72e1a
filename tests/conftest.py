"""Shared fixtures. Backbone fixtures: tiny random-weight checkpoints.

The tests mirror the packages (``tests/store/``, ``tests/embed/``, ``tests/classify/``, ``tests/classify/methods/``,
``tests/classify/labeling/``, ``tests/cli/``, ``tests/benchmarks/``); what they share to make images, stores, models
and hostile files lives in ``tests/support/``, importable by bare name (``from synthstore import make_store``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))

# Weights download by default (as timm / open_clip do) and CI has a network: no test may reach a model hub. Tests of
# the download decision clear this and fake the hub (test_downloads.py).
os.environ["HF_HUB_OFFLINE"] = "1"

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
