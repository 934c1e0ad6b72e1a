"""``python -m embed run`` stopped by a signal: its decode workers go with it and the store can be opened again at once.

The run is a real subprocess with two decode workers over a few hundred tiny images; it is signalled once its progress
bar shows written rows. Its children are read from /proc (Linux) while it runs.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from store import FeatureStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads child processes from /proc")

N_IMAGES = 300


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train/cat", 10), ("train/dog", 10), ("unlabeled", N_IMAGES - 20)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / split / f"{i:04d}.png")
    return root


def children(pid: int) -> set[int]:
    """Every living descendant of ``pid``."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += sorted(kids - found)
            found |= kids
    return found


def alive(pid: int) -> bool:
    """Whether any thread of process ``pid`` still runs (a leader shows Z while its other threads are exiting, and its
    files, the store's lock with them, are released only when the last one is gone)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except OSError:
            continue
    return False


def command(folder, spec, store, workers=2, batch_size=2):
    return [sys.executable, "-m", "embed", "run", "--data", str(folder), "--backbone", spec, "--store", str(store),
            "--workers", str(workers), "--batch-size", str(batch_size), "--image-size", "32", "--device", "cpu"]


def stop_while_writing(folder, spec, store, how) -> tuple[set[int], str]:
    """Start a run, send it ``how`` once rows are written; its decode workers (seen before) and its stderr."""
    run = subprocess.Popen(command(folder, spec, store), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = bytearray()
    writing = threading.Event()

    def watch():  # the progress bar, "<spec>:   4%|... | 12/300 [...": rows are written once the count is not 0
        while chunk := run.stderr.read1(4096):
            seen.extend(chunk)
            if b"/300 [" in seen and not seen.split(b"/300 [")[-2].endswith(b" 0"):
                writing.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert writing.wait(120), seen.decode(errors="replace")[-2000:]
        workers = children(run.pid)
        assert len(workers) >= 2, "the run should have started its two decode workers"
        run.send_signal(how)
        code = run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
    watcher.join(10)
    err = seen.decode(errors="replace")
    assert code == (143 if how == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    return workers, err


def test_sigterm_stops_the_workers_and_a_rerun_resumes(folder, tiny_timm_ckpt, tmp_path):
    spec = f"timm:test_efficientnet@{tiny_timm_ckpt}"
    store = tmp_path / "s.h5"
    workers, err = stop_while_writing(folder, spec, store, signal.SIGTERM)
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    assert not [w for w in workers if alive(w)], "a decode worker outlived the run"
    with h5py.File(store, "a"):  # right away: nothing holds the store's lock
        pass
    with FeatureStore(store) as fs:
        done_before = int(fs.rows_done(spec).sum())
    assert 0 < done_before < N_IMAGES
    again = subprocess.run(command(folder, spec, store, workers=0, batch_size=100) + ["--progress", "False"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{spec}: embedded {N_IMAGES - done_before} images in this run" in again.stdout
    with FeatureStore(store) as fs:
        assert fs.rows_done(spec).all()


def test_the_workers_of_a_killed_run_die_with_it(folder, tiny_timm_ckpt, tmp_path):
    """kill -9 runs no clean-up at all: the kernel kills the workers as the run dies (they asked it to)."""
    store = tmp_path / "s.h5"
    workers, _ = stop_while_writing(folder, f"timm:test_efficientnet@{tiny_timm_ckpt}", store, signal.SIGKILL)
    deadline = time.monotonic() + 5  # the kernel's signal to them is sent as the run dies, and takes a moment
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], "a decode worker outlived the run"
    with h5py.File(store, "a"):  # nothing holds the store's lock
        pass
