"""Tiny random-weight backbones for fast offline tests (timm ``test_*`` models, a tiny open_clip ViT config).

Import from tests as ``from tinymodels import ...`` (tests/conftest.py puts ``tests/support/`` on ``sys.path``).
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import timm
import torch

#: open_clip config name registered by :func:`register_tiny_clip` (a ViT: width 64, 2 layers, patch 16, 32 px).
TINY_CLIP = "tiny-test-ViT-16"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    # vocab_size must match open_clip's bundled tokenizer
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def make_timm_checkpoint(path: str | Path, name: str = "test_efficientnet", seed: int = 0, wrap: str | None = None,
                         **create_kwargs) -> Path:
    """Save the state_dict of a random-weight ``timm.create_model(name)`` (seeded) to ``path``.

    ``wrap="state_dict"`` / ``"model"`` nests it under that key, ``wrap="module"`` adds DDP's ``module.`` prefix.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **create_kwargs)
    sd = model.state_dict()
    if wrap == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    elif wrap is not None:
        sd = {wrap: sd, "epoch": torch.tensor(3)}
    path = Path(path)
    torch.save(sd, path)
    return path


def register_tiny_clip(config_dir: str | Path) -> str:
    """Register :data:`TINY_CLIP` with open_clip (idempotent) and return its name."""
    if TINY_CLIP not in open_clip.list_models():
        config_dir = Path(config_dir)
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(config_dir)
    return TINY_CLIP


def make_clip_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save random weights of the (registered) tiny open_clip model to ``path``."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path
