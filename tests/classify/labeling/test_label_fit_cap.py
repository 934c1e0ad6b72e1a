"""On a large pool the labeling app's background jobs fit on every label plus a seeded subsample of the unlabeled
rows (at most ``jobs.FIT_CAP``); the pick still scores the whole pool."""
from __future__ import annotations

from starlette.testclient import TestClient

from appstore import make_app_store
from classify.labeling.app import jobs
from classify.labeling.app.routes import create_app
from classify.labeling.app.session import LabelSession
from classify.methods.linear import LinearProbe


def test_the_jobs_fit_on_at_most_the_cap_of_unlabeled_rows(tmp_path, monkeypatch):
    store, truth = make_app_store(tmp_path, n_pool=30)  # 90 pool rows, 6 labels, 9 test rows
    monkeypatch.setattr(jobs, "FIT_CAP", 20)
    seen = []
    real_fit = LinearProbe.fit

    def spy(self, X, y):
        seen.append((len(X), int((y == -1).sum())))
        return real_fit(self, X, y)

    monkeypatch.setattr(LinearProbe, "fit", spy)
    session = LabelSession(store, method="linear", batch=6)
    session.wait()
    client = TestClient(create_app(session))
    batch = client.get("/api/state").json()["batch"]["items"]
    assert len(batch) == 6 and all(it["predicted"] for it in batch)  # a pick by the fitted method
    for item in batch:
        assert client.post("/api/answer", json={"id": item["id"], "label": truth[item["id"]]}).status_code == 200
    session.wait()
    view = client.get("/api/state").json()
    assert view["accuracy"][-1]["accuracy"] is not None and view["batch"]["number"] == 2
    assert seen and all(unlabeled <= 20 for _, unlabeled in seen)  # never the 90 + 9 unlabeled rows
    assert any(unlabeled == 20 for _, unlabeled in seen)
    picked = {it["id"] for it in view["batch"]["items"]}
    assert len(picked) == 6 and not picked & {it["id"] for it in batch}


def test_fit_rows_keeps_every_label_and_is_seeded():
    import numpy as np

    y = np.full(1000, -1)
    y[::100] = np.arange(10) % 3
    rows = jobs.fit_rows(y, cap=50, seed=3)
    assert set(np.flatnonzero(y >= 0)) <= set(rows) and rows.size == 60 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, jobs.fit_rows(y, cap=50, seed=3))
    assert jobs.fit_rows(y, cap=5000, seed=3).size == 1000
