"""The batch runner and `python -m embed run`: bad inputs, resume after kill -9, provenance, CLI errors."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch

from embed import sources
from embed.backbones import load_backbone
from embed.cli import main
from embed.images import load_image
from embed.engines.local import embed
from store import FeatureStore, display_id
from imagegen import write_bad_inputs, write_good_images

BATCH = 4


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    """A random-weight timm test model saved as a checkpoint: the `timm:<name>@<ckpt>` path users take."""
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), ckpt)
    return f"timm:test_efficientnet@{ckpt}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for c in ("cat", "dog"):
        write_good_images(root / "train" / c, 3, seed=len(c))
    write_good_images(root / "test", 2, seed=7)
    expected = write_bad_inputs(root / "unlabeled")
    return root, expected


def cli(*args, check=False):
    return subprocess.run([sys.executable, "-m", "embed", "run", *map(str, args), "--progress", "False"],
                          capture_output=True, text=True, check=check)


def store_info(path):
    out = subprocess.run([sys.executable, "-m", "store", "info", str(path), "--json"], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bad_inputs_are_recorded_and_never_shift_a_row(dataset, tiny_spec, tmp_path):
    root, expected = dataset
    path = tmp_path / "s.h5"
    out = cli("--data", root, "--backbone", tiny_spec, "--store", path, "--batch-size", BATCH, "--workers", 1,
              check=True)
    n_bad = sum(not ok for ok in expected.values())
    assert f"{n_bad} file(s) could not be used" in out.stdout
    info = store_info(path)
    n_good = 8 + sum(expected.values())
    assert info["images"] == n_good + n_bad and info["errors"] == n_bad and info["ok"] == n_good
    assert info["backbones"][tiny_spec]["rows"] == n_good
    failed = {item["id"] for item in info["failed"]}
    assert failed == {f"unlabeled/{name}" for name, ok in expected.items() if not ok}
    # Every stored row is the feature of its own file.
    backbone = load_backbone(tiny_spec)
    with FeatureStore(path) as fs:
        rows = fs.load(tiny_spec)
        for k in np.linspace(0, len(rows.ids) - 1, 6).astype(int):
            image = load_image(root / rows.ids[k], target_size=backbone.input_size).image
            with torch.inference_mode():
                want = backbone.encode_images(backbone.eval_transform(image)[None])[0][0].numpy()
            np.testing.assert_allclose(rows.X[k], want, rtol=1e-4, atol=1e-4)


def test_identical_files_are_reported(tmp_path, tiny_spec):
    root = tmp_path / "data"
    a, b = write_good_images(root / "train" / "cat", 2)
    (root / "unlabeled").mkdir()
    (root / "unlabeled" / "copy.png").write_bytes(a.read_bytes())
    summary = embed(sources.from_folder(root), tmp_path / "s.h5", [tiny_spec], workers=0, progress=False)
    assert summary.duplicates == [sorted([a.relative_to(root).as_posix(), "unlabeled/copy.png"])]


KILLER = textwrap.dedent("""
    import os, signal, sys
    import embed.backbones as backbones
    kill_at, count_file = int(sys.argv[1]), sys.argv[2]
    original = backbones.TimmBackbone.encode_images
    calls = {"batches": 0, "images": 0}
    def encode_images(self, x):
        calls["batches"] += 1
        if calls["batches"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash with no chance to clean up
        calls["images"] += len(x)
        with open(count_file, "w") as f:
            f.write(str(calls["images"]))
        return original(self, x)
    backbones.TimmBackbone.encode_images = encode_images
    from embed.cli import main
    main(["run", *sys.argv[3:], "--progress", "False"])
""")


def test_resume_after_kill_recomputes_nothing(dataset, tiny_spec, tmp_path):
    root, _ = dataset
    path, count = tmp_path / "s.h5", tmp_path / "count"
    args = ["--data", root, "--backbone", tiny_spec, "--store", path, "--batch-size", BATCH, "--workers", 1]
    killed = subprocess.run([sys.executable, "-c", KILLER, "3", count, *map(str, args)], capture_output=True)
    assert killed.returncode == -9
    with FeatureStore(path) as fs:
        done = fs.rows_done(tiny_spec)
    assert done.sum() == 2 * BATCH and len(done) > 3 * BATCH  # two batches survived the crash, the rest did not
    resumed = subprocess.run([sys.executable, "-c", KILLER, "0", count, *map(str, args)], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    with FeatureStore(path) as fs:
        n_ok_pending = int((fs.status[~done] == 1).sum())
        resumed_rows = fs.load(tiny_spec)
        assert fs.rows_done(tiny_spec).all()
    assert int(count.read_text()) == n_ok_pending  # exactly the rows not done before, nothing recomputed
    clean = embed(sources.from_folder(root), tmp_path / "clean.h5", [tiny_spec], batch_size=BATCH, workers=0,
                  progress=False)
    with FeatureStore(clean.store) as fs:
        fresh = fs.load(tiny_spec)
    assert list(fresh.ids) == list(resumed_rows.ids)
    np.testing.assert_allclose(resumed_rows.X, fresh.X, rtol=1e-4, atol=1e-5)


def test_views_float16_and_second_backbone(tmp_path, tiny_spec):
    root = tmp_path / "data"
    write_good_images(root / "train" / "cat", 3)
    write_good_images(root / "unlabeled", 2)
    images = sources.from_folder(root)
    path = tmp_path / "s.h5"
    embed(images, path, [tiny_spec], views=2, dtype="float16", workers=0, progress=False)
    embed(images, tmp_path / "again.h5", [tiny_spec], views=2, dtype="float16", workers=1, batch_size=2,
          progress=False)
    torch.manual_seed(1)
    other = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), other)
    embed(images, path, [f"timm:test_vit@{other}"], workers=0, progress=False)
    with FeatureStore(path) as fs, FeatureStore(tmp_path / "again.h5") as again:
        assert sorted(fs.backbones) == sorted([tiny_spec, f"timm:test_vit@{other}"])
        rows = fs.load(tiny_spec)
        views = fs.views(tiny_spec, rows.index)
        assert views.shape == (5, 2, rows.X.shape[1])
        assert fs.provenance(tiny_spec)["view_kinds"] == ["weak", "strong"]
        scale = np.abs(rows.X).max()
        assert np.abs(views[:, 0] - rows.X).max() > 0.1 * scale  # augmented, not the plain view
        # Views are seeded per image: another worker count and batch size give the same augmentations.
        np.testing.assert_allclose(views, again.views(tiny_spec, rows.index), atol=1e-2 * scale)
    with pytest.raises(ValueError, match="refusing to mix origins"):
        embed(images, path, [tiny_spec], views=0, dtype="float16", workers=0, progress=False)


@pytest.mark.parametrize("make_args, message", [
    (lambda tmp, spec: ["--data", tmp / "missing", "--backbone", spec], "does not exist"),
    (lambda tmp, spec: ["--data", tmp, "--backbone", spec], "has no train/ folder"),
    (lambda tmp, spec: ["--data", tmp / "d", "--backbone", "timm:resnet5"], "resnet50"),
    (lambda tmp, spec: ["--data", tmp / "d", "--backbone", "clipp:ViT-B-32/openai"], "clip"),
    (lambda tmp, spec: ["--data", tmp / "d", "--backbone", spec, "--store", tmp / "junk.h5"], "not a readable"),
    (lambda tmp, spec: ["--data", tmp / "d", "--backbone", spec, "--store", tmp / "other.h5"],
     "different image list"),
    (lambda tmp, spec: ["--data", tmp / "d", "--backbone", spec, "--device", "tpu"], "--device"),
])
def test_cli_errors_are_one_line(tmp_path, tiny_spec, make_args, message, capsys):
    write_good_images(tmp_path / "d" / "train" / "cat", 1)
    (tmp_path / "junk.h5").write_text("junk")
    FeatureStore.create(tmp_path / "other.h5", ["x.png"], ["train"], [0], ["cat"]).close()
    before = (tmp_path / "other.h5").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *map(str, make_args(tmp_path, tiny_spec)), "--progress", "False"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert (tmp_path / "other.h5").read_bytes() == before


def test_cli_error_in_a_fresh_process():
    out = cli("--data", "/nonexistent/data", "--backbone", "timm:resnet50")
    assert out.returncode == 2 and out.stderr.strip() == ("error: data folder /nonexistent/data does not exist; "
                                                          "pass --data DIR with train/<class>/ images (or --csv FILE)")


def test_changed_file_is_embedded_again_and_reported(tmp_path, tiny_spec):
    root = tmp_path / "data"
    cats = write_good_images(root / "train" / "cat", 3, seed=1)
    write_good_images(root / "unlabeled", 2, seed=2)
    other = write_good_images(tmp_path / "other", 1, seed=9)[0]
    images = sources.from_folder(root)
    path = tmp_path / "s.h5"
    embed(images, path, [tiny_spec], workers=0, progress=False)
    cats[1].write_bytes(other.read_bytes())  # another picture under the same name
    summary = embed(sources.from_folder(root), path, [tiny_spec], workers=0, progress=False)
    changed = cats[1].relative_to(root).as_posix()
    assert summary.changed == [changed] and summary.embedded[tiny_spec] == 1
    fresh = embed(sources.from_folder(root), tmp_path / "fresh.h5", [tiny_spec], workers=0, progress=False)
    with FeatureStore(path) as fs, FeatureStore(fresh.store) as clean:
        np.testing.assert_allclose(fs.load(tiny_spec).X, clean.load(tiny_spec).X, rtol=1e-4, atol=1e-5)
        assert list(fs.sha256) == list(clean.sha256)
    again = embed(sources.from_folder(root), path, [tiny_spec], workers=0, progress=False)
    assert again.changed == [] and again.embedded[tiny_spec] == 0


def enospc_when(monkeypatch, predicate):
    """Raise ENOSPC from h5py writes for which ``predicate(kind, name)`` is true (kind: create / write)."""
    import errno

    import h5py

    create, setitem = h5py.Group.create_dataset, h5py.Dataset.__setitem__

    def create_dataset(self, name, *args, **kwargs):
        if predicate("create", name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return create(self, name, *args, **kwargs)

    def write(self, key, value):
        if predicate("write", self.name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return setitem(self, key, value)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", write)


@pytest.mark.parametrize("fail", ["head_bias", "features of the second batch"])
def test_disk_full_mid_run_resumes_with_the_same_command(dataset, tiny_spec, tmp_path, monkeypatch, capsys, fail):
    root, _ = dataset
    path = tmp_path / "s.h5"
    writes = {"features": 0}

    def full(kind, name):
        if fail == "head_bias":
            return kind == "create" and name == "head_bias"
        if kind == "write" and name.endswith("/features"):
            writes["features"] += 1
            return writes["features"] == 2
        return False

    args = ["run", "--data", str(root), "--backbone", tiny_spec, "--store", str(path), "--batch-size", str(BATCH),
            "--workers", "0", "--progress", "False"]
    with monkeypatch.context() as m:
        enospc_when(m, full)
        with pytest.raises((SystemExit, OSError)) as failure:
            main(args)
    assert isinstance(failure.value, SystemExit) and failure.value.code == 2  # one line, not a traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "rerun the same command" in err[-1]
    main(args)  # the same command finishes the store
    fresh = embed(sources.from_folder(root), tmp_path / "fresh.h5", [tiny_spec], batch_size=BATCH, workers=0,
                  progress=False)
    with FeatureStore(path) as fs, FeatureStore(fresh.store) as clean:
        assert fs.rows_done(tiny_spec).all()
        np.testing.assert_allclose(fs.load(tiny_spec).X, clean.load(tiny_spec).X, rtol=1e-4, atol=1e-5)
        _, bias, _ = fs.head(tiny_spec)
        np.testing.assert_array_equal(bias, clean.head(tiny_spec)[1])
    assert not list(tmp_path.glob("*.tmp"))


def test_odd_file_names_are_embedded_and_read_back(tmp_path, tiny_spec):
    root = tmp_path / "data"
    cat = write_good_images(root / "train" / "cat", 2, seed=3)
    cat[0].rename(cat[0].with_name("Boëlle été 画像.png"))
    cat[1].rename(cat[1].with_name(os.fsdecode(b"bad\xff.png")))
    (root / "unlabeled").mkdir()
    (root / "unlabeled" / os.fsdecode(b"broken \xfe.png")).write_bytes(b"not an image")
    images = sources.from_folder(root)
    summary = embed(images, tmp_path / "s.h5", [tiny_spec], workers=1, batch_size=2, progress=False)
    assert [display_id(i) for i, _ in summary.errors] == ["unlabeled/broken \\xfe.png"]
    with FeatureStore(summary.store) as fs:
        assert list(fs.ids) == list(images.ids) and fs.load(tiny_spec).X.shape[0] == 2
    info = store_info(summary.store)
    assert info["ok"] == 2 and info["failed"][0]["id"] == "unlabeled/broken \\xfe.png"
    again = embed(sources.from_folder(root), summary.store, [tiny_spec], workers=0, progress=False)
    assert again.embedded[tiny_spec] == 0 and again.changed == []


def test_file_replaced_by_a_fifo_is_read_again_without_hanging(tmp_path, tiny_spec):
    root = tmp_path / "data"
    cats = write_good_images(root / "train" / "cat", 2, seed=5)
    path = tmp_path / "s.h5"
    embed(sources.from_folder(root), path, [tiny_spec], workers=0, progress=False)
    cats[0].unlink()
    os.mkfifo(cats[0])  # opening it for reading would block until a writer comes
    summary = embed(sources.from_folder(root), path, [tiny_spec], workers=0, progress=False)
    assert summary.changed == [cats[0].relative_to(root).as_posix()]
    with FeatureStore(path) as fs:
        assert [i for i, _ in fs.errors()] == summary.changed and fs.rows_done(tiny_spec).all()


def test_a_preprocessing_mismatch_names_the_settings_that_differ(tmp_path, tiny_spec, capsys):
    data = tmp_path / "data"
    write_good_images(data / "train" / "cat", 2, seed=1)
    store = tmp_path / "s.h5"
    main(["run", "--data", str(data), "--backbone", tiny_spec, "--store", str(store), "--image-size", "40",
          "--progress", "False"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--data", str(data), "--backbone", tiny_spec, "--store", str(store), "--image-size", "48",
              "--progress", "False"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "refusing to mix origins" in err and "40" in err and "48" in err  # the values that differ, not cut off
    assert "input_size" in err or "image_size" in err or "size" in err.split("preprocessing", 1)[1]
