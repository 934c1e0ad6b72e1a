"""The labeling app's undo (``POST /api/undo``): the last answer is reverted in the store (its history records the
undo), the answers CSV gets a line saying so, the image is open again, and a restart does not re-apply the answer."""
from __future__ import annotations

import csv

from starlette.testclient import TestClient

from appstore import make_app_store
from classify.labeling.app.journal import default_answers
from classify.labeling.app.routes import create_app
from classify.labeling.app.session import LabelSession
from store import FeatureStore
from store.labels import apply_labels, label_history


def label_of(store, image_id) -> tuple[int, str]:
    with FeatureStore(store) as fs:
        i = list(fs.ids).index(image_id)
        return int(fs.labels[i]), str(fs.splits[i])


def start(store) -> tuple[LabelSession, TestClient]:
    session = LabelSession(store, method="linear", batch=6)
    session.wait()
    return session, TestClient(create_app(session))


def test_undo_reverts_the_last_answer_and_a_restart_keeps_it_undone(tmp_path):
    store, truth = make_app_store(tmp_path)
    session, client = start(store)
    first, second = [it["id"] for it in client.get("/api/state").json()["batch"]["items"][:2]]
    for image_id in (first, second):
        assert client.post("/api/answer", json={"id": image_id, "label": truth[image_id]}).status_code == 200
    response = client.post("/api/undo", json={})
    assert response.status_code == 200, response.text
    view = response.json()
    assert label_of(store, second) == (-1, "unlabeled") and label_of(store, first)[0] >= 0
    item = next(it for it in view["batch"]["items"] if it["id"] == second)
    assert item["answer"] is None and not item["skipped"]  # open again on the page
    assert view["undo"]["id"] == first  # what the next undo would revert
    assert label_history(store)[-1]["source"] == "undo"
    with open(default_answers(store), newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert [row[:2] for row in lines[1:]] == [[first, truth[first]], [second, truth[second]], [second, ""]]
    session.wait()
    session, client = start(store)  # a restart replays nothing: the undone answer stays undone
    assert label_of(store, second) == (-1, "unlabeled")
    assert client.post("/api/undo", json={}).status_code == 200
    assert label_of(store, first) == (-1, "unlabeled")
    assert client.post("/api/undo", json={}).status_code == 400  # nothing of this app's left to undo
    session.wait()


def test_undo_refuses_to_revert_a_change_the_app_did_not_make(tmp_path):
    store, truth = make_app_store(tmp_path)
    session, client = start(store)
    image_id = client.get("/api/state").json()["batch"]["items"][0]["id"]
    assert client.post("/api/answer", json={"id": image_id, "label": truth[image_id]}).status_code == 200
    other = next(i for i in truth if i != image_id)
    apply_labels(store, {other: truth[other]}, source="store label")  # another tool changed the store since
    response = client.post("/api/undo", json={})
    assert response.status_code == 400 and "--undo" in response.json()["error"]
    assert label_of(store, other)[0] >= 0 and label_of(store, image_id)[0] >= 0
    session.wait()
