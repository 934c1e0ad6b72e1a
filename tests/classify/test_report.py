"""`classify report --out DIR`: a static index.html whose every link resolves inside DIR, with the heatmap, the
per-class table and thumbnails of the misclassified images of the most confused pairs."""
from __future__ import annotations

import html.parser
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from classify.cli import main
from classify.pages import Group, contact_sheet, page
from store import OK, FeatureStore

SPEC = "timm:r"
CLASSES = ["apple", "pear", "plum"]


class Links(html.parser.HTMLParser):
    """Every src/href of a page, its table cells and its headings."""

    def __init__(self):
        super().__init__()
        self.links, self.cells, self.headings, self._tag = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        self.links += [value for name, value in attrs if name in ("src", "href")]

    def handle_data(self, data):
        if self._tag == "td":
            self.cells.append(data)
        elif self._tag in ("h2", "h3"):
            self.headings.append(data)

    def handle_endtag(self, tag):
        self._tag = None


def parse(path: Path) -> Links:
    links = Links()
    links.feed(path.read_text(encoding="utf-8"))
    return links


def assert_links_resolve(folder: Path, links: Links):
    assert links.links
    for link in links.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link  # relative: no server
        assert (folder / unquote(parsed.path)).is_file(), link


@pytest.fixture
def fitted_store(tmp_path):
    """Three fruit classes as coloured images; pear and plum overlap in feature space, so pears pass for plums."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    ids, splits, labels, feats = [], [], [], []
    centres = np.array([[4.0, 0, 0], [0, 2.0, 0], [0, 2.6, 0.3]])
    for split, per_class in (("train", 6), ("test", 12)):
        for c, name in enumerate(CLASSES):
            for k in range(per_class):
                rel = f"{split}/{name}/{k:02d}.png"
                path = data / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40 + k, 30), tuple(int(v) for v in rng.integers(0, 255, 3))).save(path)
                ids.append(rel)
                splits.append(split)
                labels.append(c)
                feats.append(centres[c] + rng.normal(scale=0.6, size=3))
    (data / "test/pear/00.png").write_bytes(b"not an image any more")  # a thumbnail that cannot be made
    store = tmp_path / "s.h5"
    with FeatureStore.create(store, ids, splits, labels, CLASSES, root=data) as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 3)
        fs.write_rows(SPEC, np.arange(len(ids)), np.full(len(ids), OK), [None] * len(ids), [None] * len(ids),
                      features=np.asarray(feats))
    model = tmp_path / "m.skops"
    main(["fit", "--store", str(store), "--method", "knn", "--k", "3", "--out", str(model)])
    return store, model


def test_report_page_links_resolve_and_show_the_confusions(fitted_store, tmp_path, capsys):
    store, model = fitted_store
    out = tmp_path / "report"
    main(["report", "--model", str(model), "--store", str(store), "--out", str(out), "--per-pair", 4])
    assert "index.html" in capsys.readouterr().out
    links = parse(out / "index.html")
    assert_links_resolve(out, links)
    assert "confusion.png" in links.links and "report.json" in links.links
    summary = json.loads((out / "report.json").read_text())
    assert summary["confused_pairs"], "the fixture must confuse some pears and plums"
    top = summary["confused_pairs"][0]
    assert any(h.startswith(f"{top['true']} → predicted {top['predicted']}") for h in links.headings)
    thumbs = [link for link in links.links if link.startswith("thumbs/")]
    assert 0 < len(thumbs) <= 4 * len(summary["confused_pairs"])
    for link in thumbs:
        with Image.open(out / link) as image:
            assert max(image.size) <= 128
    for row in summary["per_class"]:  # the table: one row per class with precision and recall
        assert row["class"] in links.cells and f"{row['precision']:.3f}" in links.cells
        assert f"{row['recall']:.3f}" in links.cells
    header = (out / "per_class.csv").read_text().splitlines()[0].split(",")
    assert "recall" in header and "accuracy" not in header  # a class's share found is its recall


def test_contact_sheet_writes_thumbnails_and_escapes_captions(tmp_path):
    good = tmp_path / "a b.png"
    Image.new("RGB", (300, 200), (10, 200, 30)).save(good)
    html_text = contact_sheet([Group("<script>", [good, tmp_path / "missing.png"], ["a&b", "gone"], note="n")],
                              tmp_path / "sheet")
    (tmp_path / "sheet" / "index.html").write_text(page("t", html_text))
    links = parse(tmp_path / "sheet" / "index.html")
    assert_links_resolve(tmp_path / "sheet", links)
    assert len(links.links) == 1  # the missing image shows its caption in an empty box
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text and "a&amp;b" in html_text
    with Image.open(tmp_path / "sheet" / links.links[0]) as image:
        assert image.size == (128, 85)


def test_weak_classes_are_every_class_at_the_cutoff_recall():
    from classify.report import weak_classes

    rows = [{"class": name, "n": 10, "recall": r} for name, r in zip("abcdefghij", [0.2, 0.4, 0.4, 0.4, 0.9, 0.9,
                                                                               0.95, 1.0, 1.0, 1.0])]
    assert weak_classes(rows, accuracy=0.8) == {"a", "b", "c", "d"}  # before: a and b only, c and d at 0.4 not
    assert weak_classes(rows, accuracy=0.3) == {"a"}
    assert weak_classes([], accuracy=1.0) == set()
