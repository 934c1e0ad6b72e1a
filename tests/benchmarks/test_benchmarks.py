"""The benchmark runner on a tiny synthetic store: protocol, tables, JSON and plot; reproducible to the digit."""
import gzip
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.datasets import _read_idx, write_digits
from benchmarks.plots import plot
from benchmarks.run import ANCHORS, PeakRSS, load_task, run_task, write_results
from classify.evaluation import draw_labels
from synthstore import A, make_store


def test_draw_labels_is_seeded_stratified_and_from_train_only():
    y = np.repeat(np.arange(3), 10)
    first = draw_labels(y, 4, seed=0)
    assert np.array_equal(first, draw_labels(y, 4, seed=0))
    assert not np.array_equal(first, draw_labels(y, 4, seed=1))
    assert np.bincount(y[first]).tolist() == [4, 4, 4]
    assert np.bincount(y[draw_labels(y, 15, seed=0)]).tolist() == [10, 10, 10]  # a small class gives all it has


@pytest.fixture
def task(tmp_path):
    path, _ = make_store(tmp_path / "s.h5")
    return load_task("synthetic", path, A)


def test_run_task_protocol(task):
    records = run_task(task, ["knn", "labelprop"], shots=[1, 3], seeds=2, anchors=list(ANCHORS),
                       progress=lambda _: None)
    methods = {r["method"] for r in records}
    assert methods == {"knn", "labelprop", *ANCHORS}
    assert len(records) == len(methods) * 2 * 2
    for r in records:
        assert 0 <= r["accuracy"] <= 1 and r["fit_seconds"] >= 0 and r["peak_mb"] >= 0
        assert r["anchor"] == r["method"].startswith("sklearn")
    # The test split's 60 images are scored; no test label reached a fit (labels are drawn from train rows only).
    best = max(r["accuracy"] for r in records if r["method"] == "labelprop" and r["shots"] == 3)
    assert best > 0.8


def test_peak_rss_sees_numpy_allocations():
    with PeakRSS() as memory:
        block = np.ones((200, 2**20 // 8))  # 200 MiB, every page touched
        del block
    assert 150 < memory.peak_mb < 400


def test_results_files_and_reproducibility(task, tmp_path):
    runs = [run_task(task, ["knn"], shots=[1, 5], seeds=2, anchors=["sklearn LogisticRegression"],
                     progress=lambda _: None) for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if "seconds" not in k and k != "peak_mb"} for r in rs] for rs in runs]
    assert strip[0] == strip[1]
    result = write_results(runs[0], [task], tmp_path / "out", "python -m benchmarks run --quick", name="t")
    table = (tmp_path / "out" / "t.md").read_text()
    assert "| knn |" in table and "| sklearn LogisticRegression |" in table and "1-shot | 5-shot" in table
    assert "python -m benchmarks run --quick" in table
    raw = json.loads((tmp_path / "out" / "t.json").read_text())
    assert raw["provenance"]["stores"]["synthetic|timm:a"] == task.fingerprint and len(raw["records"]) == 8
    knn5 = raw["summary"]["synthetic|timm:a|knn|5"]
    accs = [r["accuracy"] for r in raw["records"] if r["method"] == "knn" and r["shots"] == 5]
    assert knn5["accuracy_mean"] == pytest.approx(np.mean(accs)) and knn5["seeds"] == 2
    with Image.open(tmp_path / "out" / "t.png") as image:
        assert image.size[0] > 300
    assert result["tables"] in table


def test_dataset_adapters(tmp_path):
    folder = write_digits(tmp_path / "digits", test_per_class=5)
    assert len(list((folder / "test").rglob("*.png"))) == 50
    assert len(list((folder / "train").rglob("*.png"))) == 1797 - 50
    idx = tmp_path / "x.gz"
    with gzip.open(idx, "wb") as handle:  # idx header: magic 0x00000803, dims 2 x 2 x 3, then uint8 data
        handle.write(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
                     + bytes(range(12)))
    np.testing.assert_array_equal(_read_idx(idx), np.arange(12).reshape(2, 2, 3))


def test_a_bug_stops_the_run_and_only_not_applicable_is_recorded(task, monkeypatch):
    from classify.methods.base import NotApplicable
    from classify.methods.knn import KNNClassifier

    def bug(self, X, y):
        raise ValueError("a bug in a method")

    monkeypatch.setattr(KNNClassifier, "fit", bug)
    with pytest.raises(ValueError, match="a bug in a method"):
        run_task(task, ["knn"], shots=[1], seeds=1, anchors=[], progress=lambda _: None)

    def not_here(self, X, y):
        raise NotApplicable("knn needs something this store lacks")

    monkeypatch.setattr(KNNClassifier, "fit", not_here)
    records = run_task(task, ["knn"], shots=[1], seeds=1, anchors=[], progress=lambda _: None)
    assert records == [{"dataset": "synthetic", "backbone": A, "method": "knn", "shots": 1,
                        "skipped": "knn needs something this store lacks"}]


def _fake_openclipart(root, n_per=24):
    """An openclipart-png-like tree: every folder of CLIPART_CLASSES with coloured drawings, plus grey ones."""
    from benchmarks.datasets import CLIPART_CLASSES

    for c, patterns in enumerate(CLIPART_CLASSES.values()):
        folder = root / patterns[0].removesuffix("/**")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per):
            rgba = np.zeros((20, 30, 4), np.uint8)  # transparent background
            rgba[4:16, 5:25, :3] = (230, 4 * i, 10 * c)  # a distinct saturated colour per file
            rgba[4:16, 5:25, 3] = 255
            Image.fromarray(rgba).save(folder / f"d{c}_{i}.png")
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / "grey.png")
    return root


def test_clipart_adapter_writes_colour_drawings_on_white(tmp_path, monkeypatch):
    from benchmarks import datasets as ds

    monkeypatch.setattr(ds, "OPENCLIPART_DIR", _fake_openclipart(tmp_path / "png"))
    folder = ds.prepare("clipart", tmp_path / "cache")
    classes = sorted(p.name for p in (folder / "train").iterdir())
    assert classes == sorted(ds.CLIPART_CLASSES) and len(classes) >= 20
    for name in classes:
        assert len(list((folder / "test" / name).glob("*.png"))) == 8
        train = sorted((folder / "train" / name).glob("*.png"))
        assert len(train) == 24 - 8 and all("grey" not in p.name for p in train)
    with Image.open(train[0]) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    monkeypatch.setattr(ds, "OPENCLIPART_DIR", tmp_path / "missing")
    with pytest.raises(ds.DatasetUnavailable, match="apt-get install openclipart-png"):
        ds.write_clipart(tmp_path / "other")


def test_tuxpaint_adapter_keeps_grey_photos_and_leaves_svg_and_duplicates_out(tmp_path, monkeypatch):
    from benchmarks import datasets as ds

    root = tmp_path / "stamps"
    for c, patterns in enumerate(ds.TUXPAINT_CLASSES.values()):
        folder = root / patterns[0].removesuffix("/**")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(13):
            rgba = np.zeros((20, 30, 4), np.uint8)
            rgba[4:16, 5:25] = (9 * c, 9 * c, 9 * c, 255) if i == 0 else (230, 4 * i, 9 * c, 255)  # one grey photo
            Image.fromarray(rgba).save(folder / f"s{c}_{i}.png")
        (folder / f"s{c}_0.svg").write_text("<svg/>")  # vector stamps are not rendered
        (folder / "copy.png").write_bytes((folder / f"s{c}_1.png").read_bytes())  # the same stamp twice: kept once
        (folder / "cartoon").mkdir(exist_ok=True)  # a drawing with a photo's name (fruit/grapes, fruit/cartoon/grapes)
        Image.fromarray(np.full((9, 9, 3), (20, 200, 9 * c), np.uint8)).save(folder / "cartoon" / f"s{c}_2.png")
    monkeypatch.setattr(ds, "TUXPAINT_DIR", root)
    folder = ds.prepare("tuxpaint", tmp_path / "cache")
    classes = sorted(p.name for p in (folder / "train").iterdir())
    assert classes == sorted(ds.TUXPAINT_CLASSES) and len(classes) >= 20
    for c, name in enumerate(ds.TUXPAINT_CLASSES):
        test, train = (sorted((folder / split / name).glob("*.png")) for split in ("test", "train"))
        recursive = ds.TUXPAINT_CLASSES[name][0].endswith("/**")  # then the cartoon subfolder belongs to the class
        assert len(test) == 5 and len(train) == (14 if recursive else 13) - 5
        assert f"s{c}_0.png" in {p.name for p in test + train}  # grey photos (coins, road signs) are kept
    with Image.open(train[0]) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    monkeypatch.setattr(ds, "TUXPAINT_DIR", tmp_path / "missing")
    with pytest.raises(ds.DatasetUnavailable, match="apt-get install tuxpaint-stamps-default"):
        ds.write_tuxpaint(tmp_path / "other")


def test_fair_anchors_self_train_and_tune_k(task):
    from benchmarks.run import CVLabelSpreading, KBestSelfTraining

    data = task.data
    train = np.flatnonzero((data.splits == "train") & (data.y >= 0))
    labeled = train[draw_labels(data.y[train], 3, 0)]
    y = np.full(len(data.y), -1)
    y[labeled] = data.y[labeled]
    selftrain = KBestSelfTraining().fit(data.X, y)
    assert (selftrain.model_[-1].labeled_iter_ > 0).sum() == (y == -1).sum()  # every unlabeled row was added
    spreading = CVLabelSpreading(ks=(3, 5)).fit(data.X, y)
    assert spreading.k_ in (3, 5) and spreading.cv_scores_.shape == (2,)
    assert np.mean(spreading.predict(data.X[labeled]) == y[labeled]) > 0.9


def test_joined_backbones_are_one_concatenated_task(tmp_path):
    from synthstore import B

    path, _ = make_store(tmp_path / "s.h5")
    joined = load_task("synthetic", path, f"{A}+{B}")
    single = load_task("synthetic", path, A)
    assert joined.backbone == f"{A}+{B}" and joined.context == {}
    assert joined.data.X.shape[1] > single.data.X.shape[1] and len(joined.data.slices) == 2


def test_results_go_to_the_working_directory_not_the_package():
    from pathlib import Path

    import benchmarks
    from benchmarks.run import RESULTS

    assert RESULTS == Path("benchmarks-results")
    assert Path(benchmarks.__file__).resolve().parent not in (Path.cwd() / RESULTS).resolve().parents


def test_plot_lays_many_panels_out_in_rows_with_one_legend(tmp_path, monkeypatch):
    # six dataset x backbone panels were once one 36-inch strip (8:1) with a legend over each panel's lines
    import matplotlib.figure

    methods = ("linear", "selftrain", "sklearn KNeighbors")
    records = [{"dataset": f"set{d}", "backbone": "timm:a+timm:b" if b else "timm:a", "method": m, "shots": s,
                "seed": 0, "accuracy": 0.5 + 0.01 * s, "macro_f1": 0.5, "fit_seconds": 0.1, "predict_seconds": 0.0,
                "peak_mb": 0.0}
               for d in range(3) for b in range(2) for m in methods for s in (5, 10)]
    figures = []
    real_savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot(records, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        width, height = image.size
    assert width / height < 2.5  # 3 panels a row, 2 rows, the legend below
    fig = figures[0]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(methods)
    colours = {}  # a method keeps its colour in every panel
    for ax in fig.axes:
        for bars in ax.containers:
            colours.setdefault(bars.get_label(), set()).add(tuple(bars.lines[0].get_color()))
    assert set(colours) == set(methods) and all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == 3


def test_records_carry_acc5_with_five_classes_or_more(tmp_path):
    from store import OK, FeatureStore

    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(6)]
    ids, splits, labels = [], [], []
    for split, per_class in (("train", 6), ("test", 5)):
        for c in range(6):
            ids += [f"{split}/c{c}/{k}.png" for k in range(per_class)]
            splits += [split] * per_class
            labels += [c] * per_class
    X = np.eye(6, 8)[labels] * 2 + rng.normal(size=(len(ids), 8))
    with FeatureStore.create(tmp_path / "six.h5", ids, splits, labels, classes) as fs:
        fs.begin_backbone({"spec": A, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 8)
        fs.write_rows(A, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids), features=X)
    records = run_task(load_task("six", tmp_path / "six.h5", A), ["linear"], shots=[2], seeds=1, anchors=[],
                       progress=lambda _: None)
    assert records and all(0 <= r["acc5"] <= 1 and r["acc5"] >= r["acc1"] for r in records)  # before: no acc5


def test_plot_shows_one_label_count_as_bars_and_keeps_equal_methods_apart(tmp_path, monkeypatch):
    # a line chart with one x value ("over 1 seeds") said nothing; selftrain and moe at equal scores hid each other
    import matplotlib.figure

    def records(shots):
        return [{"dataset": "d", "backbone": "timm:a", "method": m, "shots": s, "seed": 0, "accuracy": 0.8,
                 "macro_f1": 0.8, "fit_seconds": 0.1, "predict_seconds": 0.0, "peak_mb": 0.0}
                for m in ("linear", "selftrain", "moe") for s in shots]

    figures = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k))[1])
    plot(records([0]), tmp_path / "one.png")
    bars = figures[0].axes[0]
    assert len(bars.patches) == 3 and [t.get_text() for t in bars.get_yticklabels()] == ["linear", "selftrain", "moe"]
    plot(records([5, 10]), tmp_path / "two.png")
    lines = [container.lines[0] for container in figures[1].axes[0].containers]  # errorbar: the data lines
    xs = {tuple(round(float(x), 6) for x in line.get_xdata()) for line in lines}
    assert len(lines) == 3 and len(xs) == 3  # three methods with equal scores, three visible positions


def test_audit_table_pools_flag_precision_and_says_when_the_model_was_too_weak():
    from benchmarks.audit import markdown, summarise

    base = {"labeled": 50, "flips": 5, "precision_at_k": 0.4, "agreement": 0.4, "flag_recall": 0.0,
            "acc_clean": 0.8, "acc_noisy": 0.7, "acc_cleaned": 0.7}
    weak = summarise([{**base, "seed": s, "judged": False, "flagged": 0, "flag_hits": 0, "flag_precision": None}
                      for s in range(2)])
    strong = summarise([{**base, "seed": 0, "judged": True, "flagged": 4, "flag_hits": 3, "flag_precision": 0.75},
                        {**base, "seed": 1, "judged": True, "flagged": 0, "flag_hits": 0, "flag_precision": None}])
    assert weak["flag_precision"] is None and strong["flag_precision"] == 0.75
    table = markdown({"weak": weak, "strong": strong}, {"shots": 5, "noise": 0.1, "method": "labelprop", "folds": 5,
                                                        "refit": "labelprop", "seeds": 2})
    assert "(—, 0.00 ± 0.00; 2 seed(s) too weak to judge)" in table and "(0.75, 0.00 ± 0.00)" in table
