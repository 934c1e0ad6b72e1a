"""`python -m classify label` in a real browser: headless Chromium (Debian's, driven by Playwright) labels 20 images
with clicks, number keys and type-ahead, the server is killed mid-batch and started again, and the store's labels,
the answers CSV and the label history hold every answer. Also the one-line refusals at start: a port in use, a store
another process holds."""
from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from playwright.sync_api import sync_playwright

from appstore import CLASSES, make_app_store
from classify.cli import main as classify_main
from classify.labeling.app.journal import default_answers
from store import FeatureStore
from store.labels import label_history

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (.ci/run installs it); Playwright's own download is unreachable
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def serve(store) -> tuple[subprocess.Popen, str]:
    """Start the app on a free port; return the process and the address it printed."""
    server = subprocess.Popen([sys.executable, "-m", "classify", "label", "--store", str(store), "--port", "0",
                               "--method", "linear", "--batch", "8", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not match:
        server.kill()
        pytest.fail(f"the server printed no address: {line!r} {server.stderr.read()}")
    return server, match.group(0)


OPEN_IMAGE = """() => {
    const guess = document.getElementById("current-guess").textContent;
    return document.getElementById("done").hidden && !/^(labeled|skipped)/.test(guess)
        && document.getElementById("current-id").textContent;
}"""


def next_image(page) -> str:
    """The id of the image the page asks about (waiting for the next batch when one is being picked)."""
    return page.wait_for_function(OPEN_IMAGE, timeout=WAIT_MS).json_value()


def label_images(page, truth, n: int, answered: dict, skipped: list) -> None:
    """Answer ``n`` images with their true class: a click, a number key or type-ahead in turn; skip one with 0."""
    for k in range(n):
        image_id = next_image(page)
        if k == 5 and not skipped:
            page.keyboard.press("0")
            skipped.append(image_id)
            image_id = page.wait_for_function(f"() => {{ const id = ({OPEN_IMAGE})(); "
                                              f"return id !== {image_id!r} && id; }}", timeout=WAIT_MS).json_value()
        label = truth[image_id]
        if k % 3 == 0:
            page.click(f'#classes button[data-class="{label}"]')
        elif k % 3 == 1:
            page.keyboard.press(str(CLASSES.index(label) + 1))
        else:
            page.keyboard.type(label[:2])  # letters land in the class finder; Enter picks the first match
            page.keyboard.press("Enter")
        answered[image_id] = label
        page.wait_for_function(f"() => ({OPEN_IMAGE})() !== {image_id!r}", timeout=WAIT_MS)
    page.wait_for_selector('body[data-pending="0"]', timeout=WAIT_MS)


def saved(store) -> tuple[dict, list, list]:
    """The store's labels of pool-born train rows, the answers CSV rows, and the history's (id, new) pairs."""
    with FeatureStore(store) as fs:
        labels = {str(i): fs.classes[int(c)] for i, c, s in zip(fs.ids, fs.labels, fs.splits)
                  if str(i).startswith("unlabeled/") and c >= 0 and s == "train"}
    with open(default_answers(store), newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    return labels, rows, [(h["id"], h["new"]) for h in label_history(store)]


def test_label_twenty_images_kill_the_server_mid_batch_and_continue(tmp_path, browser):
    store, truth = make_app_store(tmp_path, n_pool=12)
    answered, skipped = {}, []
    server, url = serve(store)
    try:
        page = browser.new_page()
        page.goto(url)
        label_images(page, truth, 20, answered, skipped)
        assert page.inner_text("#saved") == "every answer saved"
    finally:
        server.send_signal(signal.SIGKILL)  # mid-batch: 20 answers and a skip, batches of 8
        server.wait()
    labels, rows, history = saved(store)
    assert labels == answered
    assert [(r[0], r[1]) for r in rows] == list(answered.items()) and all(r[2] for r in rows)
    assert history == list(answered.items())

    server, url = serve(store)
    try:
        page = browser.new_page()
        page.goto(url)
        next_image(page)
        title = page.inner_text("#batch-title")  # the same batch, the answers before the kill still marked
        assert re.fullmatch(r"Batch 3: 5 of 8 done", title), title
        assert page.locator(".strip .badge.skipped").count() == 1 or skipped[0] not in page.content()
        label_images(page, truth, 4, answered, skipped)
        page.evaluate("answer('kat')")  # an unknown class: the page shows the server's one line
        page.wait_for_selector("#message:not([hidden])", timeout=WAIT_MS)
        assert "unknown class 'kat'" in page.inner_text("#message")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    labels, rows, history = saved(store)
    assert labels == answered and len(answered) == 24 and skipped[0] not in labels
    assert [(r[0], r[1]) for r in rows] == list(answered.items())
    assert history == list(answered.items())


# ---------------------------------------------------------------------------------------------- refused at start
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    store, _ = make_app_store(tmp_path, n_pool=2)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(SystemExit) as exit_info:
            classify_main(["label", "--store", str(store), "--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    assert exit_info.value.code == 2
    assert "is in use" in one_error_line(capsys)


HOLDER = textwrap.dedent("""
    import sys, h5py
    f = h5py.File(sys.argv[1], "a")
    print("open", flush=True)
    sys.stdin.read()
""")


def test_a_store_another_writer_holds_is_one_line_at_start(tmp_path, capsys):
    store, _ = make_app_store(tmp_path, n_pool=2)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(SystemExit) as exit_info:
            classify_main(["label", "--store", str(store), "--port", "0"])
    finally:
        holder.communicate("")
    assert exit_info.value.code == 2
    assert "in use by another process" in one_error_line(capsys)


def test_the_undo_button_and_backspace_revert_the_last_answers(tmp_path, browser):
    store, truth = make_app_store(tmp_path, n_pool=4)
    server, url = serve(store)
    try:
        page = browser.new_page()
        page.goto(url)
        first = next_image(page)
        page.click(f'#classes button[data-class="{truth[first]}"]')
        page.wait_for_function(f"() => document.getElementById('current-id').textContent !== {first!r}",
                               timeout=WAIT_MS)
        second = next_image(page)
        page.keyboard.press(str(CLASSES.index(truth[second]) + 1))
        page.wait_for_function(f"() => !document.getElementById('undo').disabled && "
                               f"document.getElementById('undo').title.includes({second!r})", timeout=WAIT_MS)
        page.click("#undo")
        page.wait_for_function(f"() => document.getElementById('current-id').textContent === {second!r}",
                               timeout=WAIT_MS)  # the undone image is on screen again
        page.keyboard.press("Backspace")
        page.wait_for_function("() => document.getElementById('undo').disabled", timeout=WAIT_MS)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    with FeatureStore(store) as fs:
        ids = list(fs.ids)
        assert fs.labels[ids.index(first)] == -1 and fs.labels[ids.index(second)] == -1
    assert [e["source"] for e in label_history(store)][-2:] == ["undo", "undo"]
