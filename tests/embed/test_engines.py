"""The local runner and the Ray engine give the same store: same features, probabilities and head, so every
registered method predicts the same on both; and a store filled by Ray works with fine-tuning's ``--init``."""
import hashlib
import json

import numpy as np
import pytest
from scipy.special import softmax

ray = pytest.importorskip("ray")  # the [test] extra installs ray[data]; this guard only serves partial installs

from classify import pipeline  # noqa: E402
from classify.methods.base import NotApplicable  # noqa: E402
from classify.methods.registry import available  # noqa: E402
from embed.cli import main as embed_main  # noqa: E402
import tinymodels  # noqa: E402
from imagegen import write_bad_inputs, write_good_images  # noqa: E402
from store import FeatureStore  # noqa: E402

CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory):
    """A local Ray whose workers know the tiny open_clip architecture (registered per process, as in the driver)."""
    name, config_dir = tinymodels.TINY_CLIP, tmp_path_factory.mktemp("ray_clip_cfg")
    (config_dir / f"{name}.json").write_text(json.dumps(tinymodels.TINY_CLIP_CFG))
    config_dir = str(config_dir)

    def register_tiny_clip():  # runs in every Ray worker process: only builtins and open_clip, no test module
        import open_clip

        if name not in open_clip.list_models():
            open_clip.add_model_config(config_dir)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": register_tiny_clip})
    yield
    ray.shutdown()


def fake_encoder(texts):
    """A deterministic sentence encoder for ConSE: a seeded random unit vector per text."""
    out = []
    for text in texts:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
        out.append(rng.normal(size=16))
    return np.asarray(out, dtype=np.float32)  # (n, 16)


@pytest.fixture(scope="module")
def specs(tiny_timm_ckpt, tiny_clip_ckpt):
    arch, ckpt = tiny_clip_ckpt
    return [f"timm:test_efficientnet@{tiny_timm_ckpt}", f"clip:{arch}@{ckpt}"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines") / "data"
    for c, name in enumerate(CLASSES):
        write_good_images(root / "train" / name, 5, seed=10 + c)
        write_good_images(root / "test" / name, 3, seed=20 + c)
    write_good_images(root / "unlabeled", 9, seed=30)
    write_bad_inputs(root / "unlabeled" / "bad")
    return root


@pytest.fixture(scope="module")
def stores(data_dir, specs):
    """``{"local": path, "ray": path}``: the same folder embedded by both engines through ``embed run``."""
    out = {}
    for engine in ("local", "ray"):
        path = data_dir.parent / f"{engine}.h5"
        embed_main(["run", "--data", str(data_dir), "--backbone", ",".join(specs), "--store", str(path),
                    "--engine", engine, "--batch-size", "4", "--shard-size", "8", "--workers", "0",
                    "--device", "cpu", "--progress", "False"])
        out[engine] = path
    return out


def test_features_probabilities_and_head_are_the_same(stores, specs):
    with FeatureStore(stores["local"]) as local, FeatureStore(stores["ray"]) as sharded:
        assert list(sharded.ids) == list(local.ids) and sharded.errors() == local.errors()
        assert sharded.root == local.root  # the run's own --data folder, not the shard folder it imported
        np.testing.assert_array_equal(sharded.status, local.status)
        for spec in specs:
            a, b = local.load(spec), sharded.load(spec)
            np.testing.assert_array_equal(b.index, a.index)
            np.testing.assert_allclose(b.X, a.X, rtol=1e-4, atol=1e-5)
            assert sharded.info()["backbones"][spec]["probs"] == local.info()["backbones"][spec]["probs"]
            if local.head(spec) is not None:
                for x, y in zip(sharded.head(spec), local.head(spec), strict=True):
                    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
                np.testing.assert_allclose(sharded.probs(spec, a.index)[0], local.probs(spec, a.index)[0], atol=1e-3)
                W, bias, _ = sharded.head(spec)  # (K, D), (K,): the head maps the stored features to the probs
                np.testing.assert_allclose(softmax(b.X @ W.T + bias, axis=1), sharded.probs(spec, b.index)[0],
                                           atol=1e-3)
        assert sharded.head(specs[0]) is not None  # the timm test model has an ImageNet head: conse applies


def method_variants() -> list[tuple[str, dict]]:
    """Every registered method once, with parameters that make it runnable here, plus the nested ConSE uses."""
    conse = {"method": "conse", "encoder": fake_encoder, "cache_dir": ""}
    special = {"conse": {"encoder": fake_encoder, "cache_dir": ""}, "ensemble": {"methods": ["linear", "knn"]},
               "coop": {"epochs": 5, "device": "cpu"}}
    variants = [(name, special.get(name, {})) for name in available()]
    return variants + [("tip", {"base": conse}), ("selftrain", {"teacher": conse})]


@pytest.mark.parametrize("method,params", method_variants(), ids=lambda v: v if isinstance(v, str) else str(v)[:30])
def test_every_method_predicts_the_same_on_both_engines(stores, specs, method, params):
    applied = 0
    for spec in specs:
        predictions = {}
        for engine, path in stores.items():
            with FeatureStore(path) as fs:
                try:
                    estimator = pipeline.build(method, dict(params), pipeline.store_context(fs, spec))
                    data = pipeline.load_data(fs, [spec], views=pipeline.uses_views(method))
                    X, y = pipeline.fit_rows(data)
                    estimator.fit(X, y)
                except NotApplicable as err:
                    predictions[engine] = f"not applicable: {err}"
                    continue
                predictions[engine] = estimator.predict(data.X)
        assert type(predictions["local"]) is type(predictions["ray"]), predictions  # applies to both or neither
        if isinstance(predictions["local"], str):
            continue
        applied += 1
        np.testing.assert_array_equal(predictions["ray"], predictions["local"], err_msg=f"{method} on {spec}")
    if method != "fixmatch":  # needs augmented views, which neither store has
        assert applied, f"{method} applied to no backbone"


def test_finetune_init_accepts_a_store_filled_by_ray(stores, specs, data_dir, tmp_path):
    from classify.finetune import finetune

    with FeatureStore(stores["ray"]) as fs:
        model = pipeline.fit(fs, [specs[0]], "linear")
    init = model.save(tmp_path / "probe.skops")
    result = finetune(data_dir, specs[0], tmp_path / "ft.pth", init=init, store=stores["ray"], epochs=0, workers=0,
                      device="cpu", progress=False)
    assert result.epochs_run == 0
