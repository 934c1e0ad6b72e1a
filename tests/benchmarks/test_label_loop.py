"""``python -m benchmarks label-loop`` on a tiny store with image files: the user answers through the app's HTTP API."""
import json

from appstore import make_app_store
from benchmarks.cli import main
from classify.labeling.app.session import LabelSession
from store import FeatureStore


def test_label_loop_answers_through_http_and_writes_its_files(tmp_path, monkeypatch):
    store, _ = make_app_store(tmp_path, n_train=4, n_pool=0, n_test=3)
    with FeatureStore(store) as fs:
        before = fs.labels.copy()
    answered = []
    real_answer = LabelSession.answer

    def spy(self, image_id, label, new_class=False):
        answered.append((image_id, label))
        return real_answer(self, image_id, label, new_class)

    monkeypatch.setattr(LabelSession, "answer", spy)
    out = tmp_path / "out"
    main(["label-loop", "--stores", str(store), "--seeds", "2", "--batch", "3", "--answers", "6", "--out", str(out)])
    result = json.loads((out / "label-loop.json").read_text())
    app = [r for r in result["records"] if r["strategy"] == "app"]
    assert sorted({r["answers"] for r in app}) == [0, 3, 6] and {r["seed"] for r in app} == {0, 1}
    assert {r["answers"] for r in result["records"] if r["strategy"] == "random"} == {0, 3, 6}
    assert len(answered) == 12  # 6 answers per seed, each a POST /api/answer the session took
    truth = {f"train/{name}/{k}.png": name for name in ("cat", "dog", "fox") for k in range(4)}
    assert all(truth[image_id] == label for image_id, label in answered)  # the true labels of hidden train rows
    assert all(0 <= r["accuracy"] <= 1 for r in result["records"])
    assert "feats" in result["targets"]
    md = (out / "label-loop.md").read_text()
    assert "| app |" in md and "| random |" in md and "Target" in md
    assert (out / "label-loop.png").read_bytes()[:4] == b"\x89PNG"
    with FeatureStore(store) as fs:
        assert (fs.labels == before).all()  # the loop labels copies, never the given store
