"""A class's id is its folder name, kept exactly (``musical_instrument`` comes back as ``musical_instrument`` in
predictions, ``p_`` columns, reports, suggest / audit CSVs); its display name (``_`` read as a space, or
``classes.txt``) is for CLIP prompts and pages only. Stores written before the two were told apart still open."""
from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from classify import pipeline
from embed import sources
from embed.backbones import load_backbone
from store import FeatureStore
from imagegen import write_good_images

CLASSES = ["cat", "musical_instrument"]


def make_folder(root):
    for c, name in enumerate(CLASSES):
        write_good_images(root / "train" / name, 3, seed=10 + c)
        write_good_images(root / "test" / name, 2, seed=20 + c)
    write_good_images(root / "unlabeled", 4, seed=30)
    return root


def run(module, *args):
    import importlib

    importlib.import_module(f"{module}.cli").main([str(a) for a in args])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory, tiny_clip_ckpt):
    """A split folder with a class folder ``musical_instrument``, embedded with a tiny CLIP model (text side too)."""
    arch, ckpt = tiny_clip_ckpt
    root = make_folder(tmp_path_factory.mktemp("data"))
    spec = f"clip:{arch}@{ckpt}"
    store = root.parent / "feats.h5"
    run("embed", "run", "--data", root, "--backbone", spec, "--store", store, "--progress", "False")
    return store, spec


def test_the_store_keeps_folder_names_and_prompts_read_display_names(clip_store, capsys):
    store, spec = clip_store
    capsys.readouterr()
    run("store", "info", store, "--json")
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["classes"] == CLASSES and info["display_names"] == ["cat", "musical instrument"]
    run("store", "info", store)
    assert "display names: cat, musical instrument" in capsys.readouterr().out
    with FeatureStore(store) as fs:
        text, templates, _ = fs.text(spec)  # (C, T, D)
        assert pipeline.store_context(fs, spec)["class_names"] == ["cat", "musical instrument"]
    backbone = load_backbone(spec)
    np.testing.assert_allclose(text, backbone.encode_text(["cat", "musical instrument"], templates), atol=1e-5)


def test_predictions_reports_and_labeling_csvs_carry_the_folder_name(clip_store, tmp_path, capsys):
    store, _ = clip_store
    model = tmp_path / "m.skops"
    run("classify", "fit", "--store", store, "--method", "linear", "--out", model)
    run("classify", "predict", "--model", model, "--store", store, "--out", tmp_path / "p.csv", "--proba")
    predictions = read_csv(tmp_path / "p.csv")
    assert {r["label"] for r in predictions} <= set(CLASSES)
    assert [c for c in predictions[0] if c.startswith("p_")] == ["p_cat", "p_musical_instrument"]
    run("classify", "report", "--model", model, "--store", store, "--out", tmp_path / "report")
    assert {r["class"] for r in read_csv(tmp_path / "report" / "per_class.csv")} == set(CLASSES)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["class"] for r in report["per_class"]} == set(CLASSES)
    assert {p[k] for p in report["confused_pairs"] for k in ("true", "predicted")} <= set(CLASSES)
    run("classify", "suggest", "--store", store, "--method", "linear", "--budget", "4", "--out", tmp_path / "s.csv")
    assert {r["predicted"] for r in read_csv(tmp_path / "s.csv")} <= set(CLASSES)
    run("classify", "audit", "--store", store, "--method", "linear", "--all-rows", "--out", tmp_path / "a.csv")
    audited = read_csv(tmp_path / "a.csv")
    assert {r["given"] for r in audited} == set(CLASSES) and {r["suggested"] for r in audited} <= set(CLASSES)


def test_classes_txt_gives_display_names_and_order_not_ids(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "classes.txt").write_text("musical_instrument,Musical instrument\ncat\n", encoding="utf-8")
    images = sources.from_folder(root)
    assert images.classes == ["musical_instrument", "cat"]
    assert images.display_names == ["Musical instrument", "cat"]
    assert images.labels[images.ids.index("train/musical_instrument/" + sorted(
        p.name for p in (root / "train" / "musical_instrument").iterdir())[0])] == 0


def test_a_list_keeps_its_labels_as_ids(tmp_path):
    root = make_folder(tmp_path / "data")
    listing = tmp_path / "data" / "list.csv"
    rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted((root / "train").rglob("*.*"))]
    listing.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    images = sources.from_csv(listing)
    assert images.classes == CLASSES and images.display_names == ["cat", "musical instrument"]


def test_a_store_written_with_display_names_as_classes_still_opens_and_resumes(tmp_path, tiny_timm_ckpt, capsys):
    root = make_folder(tmp_path / "data")
    images = sources.from_folder(root)
    old = tmp_path / "old.h5"
    with FeatureStore.create(old, images.ids, images.splits, images.labels, images.display_names, root=root):
        pass
    with h5py.File(old, "a") as f:  # what stores written before the split held: display names as classes, no more
        del f.attrs["display_names"]
    run("embed", "run", "--data", root, "--backbone", f"timm:test_efficientnet@{tiny_timm_ckpt}", "--store", old,
        "--progress", "False")
    with FeatureStore(old) as fs:
        assert fs.classes == fs.display_names == ["cat", "musical instrument"]
        assert fs.info()["backbones"][f"timm:test_efficientnet@{tiny_timm_ckpt}"]["rows"] == len(images)
