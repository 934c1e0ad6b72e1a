"""The labeling app's HTTP interface (Starlette's TestClient), on a small store with real image files: batches as
``suggest`` picks them, answers saved at once (answers CSV, store, label history), skips and restarts, the accuracy
after each batch, the audit view, thumbnails, and one-line refusals of bad input."""
from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from appstore import make_app_store
from classify.labeling.app.journal import cache_folder, default_answers
from classify.labeling.app.routes import create_app
from classify.labeling.app.session import LabelSession
from store import FeatureStore
from store.labels import apply_labels, label_history


def answers_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def store_labels(store) -> dict[str, tuple[str, str]]:
    """id -> (class name or "", split) as the store holds them now."""
    with FeatureStore(store) as fs:
        classes = fs.classes
        return {str(i): (classes[int(c)] if c >= 0 else "", str(s)) for i, c, s in zip(fs.ids, fs.labels, fs.splits)}


@pytest.fixture
def made(tmp_path):
    return make_app_store(tmp_path)


def start(store, **kwargs) -> tuple[LabelSession, TestClient]:
    session = LabelSession(store, **{"method": "linear", "batch": 6, **kwargs})
    session.wait()
    return session, TestClient(create_app(session))


def answer_batch(client, session, truth) -> list[str]:
    """Answer every open image of the current batch with its true class; return the ids answered."""
    done = []
    for item in client.get("/api/state").json()["batch"]["items"]:
        if not (item["answer"] or item["skipped"]):
            response = client.post("/api/answer", json={"id": item["id"], "label": truth[item["id"]]})
            assert response.status_code == 200, response.text
            done.append(item["id"])
    session.wait()
    return done


def test_the_first_batch_is_suggests_pick_from_the_pool(made):
    store, truth = made
    session, client = start(store)
    state = client.get("/api/state").json()
    items = state["batch"]["items"]
    assert state["batch"]["number"] == 1 and len(items) == 6
    assert all(item["id"] in truth for item in items)  # pool images only
    assert len({item["id"] for item in items}) == 6
    assert all(item["predicted"] in ("cat", "dog", "fox") and item["reason"] for item in items)
    assert [c["name"] for c in state["classes"]] == ["cat", "dog", "fox"]
    assert state["labels"] == 6 and state["pool"] == len(truth)
    thumb = client.get(items[0]["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_an_answer_is_in_the_csv_the_store_and_its_history_before_the_reply(made):
    store, truth = made
    session, client = start(store)
    image_id = client.get("/api/state").json()["batch"]["items"][0]["id"]
    view = client.post("/api/answer", json={"id": image_id, "label": truth[image_id]}).json()
    assert store_labels(store)[image_id] == (truth[image_id], "train")
    rows = answers_csv(default_answers(store))
    assert rows[0] == ["id", "label", "time"] and rows[1][:2] == [image_id, truth[image_id]] and len(rows) == 2
    history = label_history(store)
    assert [(h["id"], h["new"], h["new_split"]) for h in history] == [(image_id, truth[image_id], "train")]
    assert view["labels"] == 7 and view["batch"]["items"][0]["answer"] == truth[image_id]


def test_after_a_batch_the_next_one_comes_with_the_accuracy_and_its_change(made):
    store, truth = made
    session, client = start(store)
    first = answer_batch(client, session, truth)
    state = client.get("/api/state").json()
    assert state["batch"]["number"] == 2 and not set(first) & {i["id"] for i in state["batch"]["items"]}
    history = state["accuracy"]
    assert [h["batch"] for h in history] == [0, 1] and [h["labels"] for h in history] == [6, 12]
    assert all(0 <= h["accuracy"] <= 1 for h in history) and "CV of linear" in history[1]["detail"]
    assert history[1]["change"] == pytest.approx(history[1]["accuracy"] - history[0]["accuracy"])


def test_auto_reports_its_own_cross_validation(made):
    store, truth = made
    session, client = start(store, method="auto")
    answer_batch(client, session, truth)
    last = client.get("/api/state").json()["accuracy"][-1]
    assert last["labels"] == 12 and last["accuracy"] is not None and "auto's choice" in last["detail"]


def test_a_restart_continues_the_batch_and_keeps_skips(made):
    store, truth = made
    session, client = start(store)
    items = client.get("/api/state").json()["batch"]["items"]
    client.post("/api/answer", json={"id": items[0]["id"], "label": truth[items[0]["id"]]})
    client.post("/api/skip", json={"id": items[1]["id"]})
    again, client = start(store)  # the server was stopped (or killed) and started again
    state = client.get("/api/state").json()
    assert [i["id"] for i in state["batch"]["items"]] == [i["id"] for i in items]
    assert state["batch"]["items"][0]["answer"] == truth[items[0]["id"]] and state["batch"]["items"][1]["skipped"]
    assert state["skipped"] == 1 and state["labels"] == 7
    for item in state["batch"]["items"][2:]:
        client.post("/api/answer", json={"id": item["id"], "label": truth[item["id"]]})
    again.wait()
    nxt = client.get("/api/state").json()["batch"]
    assert nxt["number"] == 2 and items[1]["id"] not in {i["id"] for i in nxt["items"]}  # a skip is not asked again


def test_an_answer_the_store_missed_is_applied_at_the_next_start(made):
    store, truth = made
    image_id = sorted(truth)[0]
    session, _ = start(store)
    session.log.append(image_id, truth[image_id], "2026-01-01T00:00:00+00:00")  # killed before the store write
    assert store_labels(store)[image_id] == ("", "unlabeled")
    again, client = start(store)
    assert store_labels(store)[image_id] == (truth[image_id], "train")
    assert client.get("/api/state").json()["labels"] == 7
    start(store)  # applied once: the next start has nothing to apply
    assert len(answers_csv(default_answers(store))) == 2


def test_a_line_cut_short_by_a_kill_is_dropped(made):
    store, truth = made
    image_id = sorted(truth)[0]
    default_answers(store).write_text(f"id,label,time\n{image_id},{truth[image_id]},2026-01-01T00:00:00+00:00\nunl")
    session, client = start(store)
    assert answers_csv(default_answers(store))[-1][0] == image_id and session.log.count == 1


def test_a_new_class_is_added_to_the_store(made):
    store, truth = made
    session, client = start(store)
    image_id = client.get("/api/state").json()["batch"]["items"][0]["id"]
    view = client.post("/api/answer", json={"id": image_id, "label": "owl", "new_class": True}).json()
    assert [c["name"] for c in view["classes"]] == ["cat", "dog", "fox", "owl"]
    with FeatureStore(store) as fs:
        assert fs.classes == ["cat", "dog", "fox", "owl"]
    assert store_labels(store)[image_id] == ("owl", "train")


@pytest.mark.parametrize("payload, status, words", [
    ({"id": "unlabeled/nope.png", "label": "cat"}, 404, "unknown image id"),
    ({"id": "test/cat/0.png", "label": "cat"}, 400, "test image"),
    ({"label": "cat"}, 400, "image id"),
    ({"id": "unlabeled/img000.png", "label": "kat"}, 400, "unknown class 'kat'"),
    ({"id": "unlabeled/img000.png", "label": ""}, 400, "class name"),
])
def test_bad_answers_get_one_line_and_change_nothing(made, payload, status, words):
    store, _ = made
    before = store_labels(store)
    session, client = start(store)
    response = client.post("/api/answer", json=payload)
    assert response.status_code == status
    message = response.json()["error"]
    assert words in message and "\n" not in message
    if "kat" in words:
        assert "cat" in message.split("kat")[-1]  # did you mean
    assert store_labels(store) == before and not default_answers(store).exists()


def test_a_post_that_is_not_json_is_refused(made):
    store, _ = made
    session, client = start(store)
    form = client.post("/api/answer", data={"id": "unlabeled/img000.png", "label": "cat"})
    assert form.status_code == 415 and "JSON" in form.json()["error"]  # what a page of another site could send
    broken = client.post("/api/answer", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    assert not default_answers(store).exists()


def test_another_host_name_is_refused(made):
    store, _ = made
    session = LabelSession(store, method="linear", batch=6)
    client = TestClient(create_app(session, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://evil.example")
    assert client.get("/api/state").status_code == 400
    assert TestClient(create_app(session, ["127.0.0.1"]), base_url="http://127.0.0.1").get("/api/state").is_success


HOLDER = textwrap.dedent("""
    import sys, h5py
    f = h5py.File(sys.argv[1], "a")
    print("open", flush=True)
    sys.stdin.read()
""")


def test_a_store_another_process_holds_refuses_the_answer_with_409_and_keeps_the_csv_clean(made):
    store, truth = made
    session, client = start(store)
    image_id = client.get("/api/state").json()["batch"]["items"][0]["id"]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        response = client.post("/api/answer", json={"id": image_id, "label": truth[image_id]})
        assert response.status_code == 409 and "in use by another process" in response.json()["error"]
    finally:
        holder.communicate("")
    assert not default_answers(store).exists() or len(answers_csv(default_answers(store))) <= 1
    assert client.post("/api/answer", json={"id": image_id, "label": truth[image_id]}).status_code == 200


def test_thumbnails_show_transparency_on_white_and_are_cached_by_content(made):
    store, truth = made
    session, client = start(store)
    with FeatureStore(store) as fs:
        row = int(np.flatnonzero(fs.ids == "unlabeled/img003.png")[0])  # pool variant 1: a transparent background
    response = client.get(f"/thumb/{row}")
    assert response.status_code == 200
    picture = Image.open(cache_folder(store) / "thumbs" / next(iter(
        p.name for p in (cache_folder(store) / "thumbs").iterdir())))
    assert picture.convert("RGB").getpixel((0, 0)) >= (245, 245, 245)  # the transparent corner, on white
    cached = list((cache_folder(store) / "thumbs").iterdir())
    assert client.get(f"/thumb/{row}").content == response.content
    assert list((cache_folder(store) / "thumbs").iterdir()) == cached  # made once
    assert client.get("/thumb/100000").status_code == 404


def test_an_id_leaving_the_data_folder_gets_no_thumbnail(tmp_path):
    store, _ = make_app_store(tmp_path)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = tmp_path / "data" / "unlabeled" / "img000.png"
    link.unlink()
    link.symlink_to(outside)
    session, client = start(store)
    with FeatureStore(store) as fs:
        row = int(np.flatnonzero(fs.ids == "unlabeled/img000.png")[0])
    response = client.get(f"/thumb/{row}")
    assert response.status_code == 404 and "outside the data folder" in response.json()["error"]


def test_the_audit_pages_through_suspects_keep_and_fix(tmp_path):
    store, truth = make_app_store(tmp_path, n_train=6, noise=0.3)
    wrong = ["train/cat/0.png", "train/dog/1.png"]  # two wrong train labels for the audit to find
    apply_labels(store, {wrong[0]: "fox", wrong[1]: "cat"}, source="test")
    session, client = start(store)
    client.get("/api/audit")
    session.wait()
    page = client.get("/api/audit?offset=0&limit=1").json()
    assert page["status"] == "ready" and page["total"] >= 2 and len(page["items"]) == 1
    suspects = {s["id"]: s for s in client.get("/api/audit?limit=50").json()["items"]}
    assert set(wrong) <= set(suspects) and suspects[wrong[0]]["suggested"] == "cat"
    client.post("/api/keep", json={"id": wrong[1]})
    client.post("/api/answer", json={"id": wrong[0], "label": "cat"})
    left = {s["id"] for s in client.get("/api/audit?limit=50").json()["items"]}
    assert not set(wrong) & left
    assert store_labels(store)[wrong[0]] == ("cat", "train") and store_labels(store)[wrong[1]] == ("cat", "train")
    assert client.get("/api/audit?offset=x").status_code == 400
