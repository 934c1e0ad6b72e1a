"""`python -m benchmarks finetune --dataset FOLDER`: fine-tuning against the label draws of `benchmarks run`, on a tiny
split folder with a tiny random timm model (CPU, one short epoch per draw)."""
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.cli import main
from benchmarks.run import load_task
from classify.evaluation import few_shot_labels
from imagegen import write_good_images

CLASSES = ("cat", "dog", "fox")
SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 colour-tinted classes x 6 labeled train images and 2 labeled test images (32 px PNG)."""
    root = tmp_path_factory.mktemp("data", numbered=False) / "toy"
    for k, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        for split, n in (("train", 6), ("test", 2)):
            for path in write_good_images(root / split / CLASSES[k], n, size=SIZE, seed=10 * k + n):
                pixels = 0.5 * np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) + 0.5 * np.asarray(colour)
                Image.fromarray(pixels.astype(np.uint8)).save(path.with_suffix(".png"))
                if path.suffix != ".png":
                    path.unlink()
    return root


@pytest.fixture(scope="module")
def report(dataset, tiny_timm_ckpt, tmp_path_factory):
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("out")
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    main(["finetune", "--dataset", str(dataset), "--backbone", spec, "--image-size", str(SIZE), "--shots", "2,3",
          "--seeds", "2", "--device", "cpu", "--cache", str(cache), "--out", str(out), "--epochs", "1",
          "--batch-size", "4", "--workers", "0", "--methods", "linear,labelprop"])
    return spec, cache, out, json.loads((out / "finetune-toy.json").read_text())


def test_each_draw_fine_tunes_on_the_labels_benchmarks_run_draws(report, dataset):
    spec, cache, _, result = report
    task = load_task("toy", cache / f"toy-{SIZE}px.h5", spec)  # the plain store `benchmarks run` fits on
    assert [(d["shots"], d["seed"]) for d in result["draws"]] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    for draw in result["draws"]:
        _, labeled = few_shot_labels(task.data, draw["shots"], draw["seed"])
        expected = sorted(str(i) for i in task.data.ids[labeled])
        assert sorted(draw["drawn"]) == expected
        folder = cache / "finetune-toy" / f"{draw['shots']}shot-seed{draw['seed']}"
        linked = sorted(p.relative_to(folder).as_posix() for p in (folder / "train").rglob("*.png"))
        assert linked == expected  # the fine-tuning's labeled images are the drawn ones, in their class folders
        assert len(list((folder / "unlabeled").rglob("*.png"))) == 18 - len(expected)
        assert len(list((folder / "test").rglob("*.png"))) == 6
    assert result["draws"][0]["drawn"] != result["draws"][1]["drawn"]


def test_table_has_frozen_and_fine_tuned_rows_per_method(report):
    _, _, out, result = report
    table = (out / "finetune-toy.md").read_text()
    assert result["complete"] and "mean ± std over 2/2 draws" in table
    assert "| method | 2-shot frozen | 2-shot fine-tuned | 3-shot frozen | 3-shot fine-tuned |" in table
    for method in ("linear", "labelprop", "fine-tuned head"):
        assert f"| {method} | " in table
    for draw in result["draws"]:
        assert set(draw["before"]) == set(draw["after"]) == {"linear", "labelprop", "fine-tuned head"}
        assert all(0 <= v <= 1 for v in [*draw["before"].values(), *draw["after"].values()])
        assert draw["finetune_s"] > 0 and draw["epochs_run"] == 1
