"""Every output file of the suite is replaced whole or not at all, never over an input, spreadsheet-safe, and every
problem with an output path is one line on stderr (exit 2), found before the work where it can be.

A full disk is simulated with ``RLIMIT_FSIZE`` in a child process (writes past the limit fail with EFBIG, as they
fail with ENOSPC on a full disk); a folder that cannot be written with a path under a regular file or in ``/proc``
(tests run as root, so chmod would not stop a write).
"""
import csv
import errno
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.cli import main as benchmarks_main
from classify.labeling import audit, suggest as active
from classify.cli import main
from synthstore import A, CLASSES, make_store


def fails(args, capsys, main_=main) -> str:
    """Run a CLI in-process; it must exit 2 with one ``error:`` line on stderr (returned)."""
    with pytest.raises(SystemExit) as exit_info:
        main_([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, err
    errors = [line for line in err if not line.startswith(("WARNING", "INFO"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    return errors[0]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


FULL_DISK_CHILD = """
import sys, json
from classify.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    print("code", code, "@@ end", file=sys.stderr, flush=True)
"""


def run_full_disk(commands, limit: int) -> subprocess.CompletedProcess:
    """Run ``python -m classify`` commands, in order, in a child process that cannot write a file past ``limit``
    bytes (a full disk); its stderr ends each command's part with ``code N @@ end``."""
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill

    return subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, json.dumps([[str(a) for a in c] for c in commands])],
                          capture_output=True, text=True, preexec_fn=preexec)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "s.h5")[0]


@pytest.fixture(scope="module")
def model(store, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.skops"
    main(["fit", "--store", str(store), "--backbone", A, "--method", "knn", "--out", str(path)])
    return path


# ----------------------------------------------------------------------------------- 2. an output that is an input
@pytest.fixture
def own_store(tmp_path):
    """A store and a model of this test alone (a command that overwrote them would spoil no other test)."""
    store = make_store(tmp_path / "own.h5")[0]
    model = tmp_path / "own.skops"
    main(["fit", "--store", str(store), "--backbone", A, "--method", "knn", "--out", str(model)])
    return store, model


def test_an_output_that_is_an_input_is_refused_before_any_work(own_store, tmp_path, capsys):
    store, model = own_store
    order = tmp_path / "sample.csv"
    order.write_text("id,label\ntest/cat/0.png,x\n")
    link = tmp_path / "link.h5"
    link.symlink_to(store)
    before = {p: digest(p) for p in (store, model, order)}
    commands = [
        ["fit", "--store", store, "--backbone", A, "--method", "knn", "--out", store],
        ["fit", "--store", store, "--backbone", A, "--method", "knn", "--out", link],
        ["predict", "--model", model, "--store", store, "--out", store],
        ["predict", "--model", model, "--store", store, "--out", model],
        ["predict", "--model", model, "--store", store, "--order", order, "--out", order],
        ["evaluate", "--store", store, "--backbone", A, "--method", "knn", "--out", store],
        ["suggest", "--store", store, "--backbone", A, "--nohtml", "--out", store],
        ["audit", "--store", store, "--backbone", A, "--nohtml", "--out", store],
    ]
    for command in commands:
        line = fails(command, capsys)
        assert "is the input" in line and "choose another --out" in line, (command, line)
    # the page of suggest / audit is an output too: --out feats.csv writes feats.html
    page_input = tmp_path / "feats.html"
    page_input.write_bytes(store.read_bytes())
    for command in ("suggest", "audit"):
        line = fails([command, "--store", page_input, "--backbone", A, "--out", tmp_path / "feats.csv"], capsys)
        assert line.startswith(f"error: the page of --out {page_input} is the input --store"), line
    assert {p: digest(p) for p in (store, model, order)} == before and page_input.read_bytes() == store.read_bytes()


def test_a_report_folder_holding_an_input_is_refused(own_store, tmp_path, capsys):
    store, model = own_store
    folder = tmp_path / "r"
    folder.mkdir()
    inside = folder / "report.json"
    inside.write_bytes(model.read_bytes())
    line = fails(["report", "--model", inside, "--store", store, "--out", folder], capsys)
    assert "is the input --model" in line
    assert "is a file" in fails(["report", "--model", model, "--store", store, "--out", store], capsys)
    assert inside.read_bytes() == model.read_bytes()


# ----------------------------------------------------------------------------------- 3. whole or not at all
def test_a_full_disk_keeps_every_previous_output(store, model, tmp_path):
    """predict, evaluate --out, report, suggest and audit run again where no file can grow past 128 bytes (a full
    disk): each ends in one error line naming its file, and every previous output is left as it was (no half
    report, no temporary files)."""
    commands = [
        ["predict", "--model", model, "--store", store, "--split", "unlabeled", "--proba", "--out", tmp_path / "p.csv"],
        ["evaluate", "--store", store, "--backbone", A, "--method", "knn", "--out", tmp_path / "e.json"],
        ["report", "--model", model, "--store", store, "--out", tmp_path / "report"],
        ["suggest", "--store", store, "--backbone", A, "--budget", "10", "--out", tmp_path / "s.csv"],
        ["audit", "--store", store, "--backbone", A, "--all-rows", "--out", tmp_path / "a.csv"],
    ]
    for command in commands:
        main([str(a) for a in command])
    before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    result = run_full_disk(commands, limit=128)
    assert "Traceback" not in result.stderr, result.stderr
    runs = result.stderr.split("@@ end")[:-1]
    assert len(runs) == len(commands), result.stderr
    for command, run in zip(commands, runs):
        assert run.rstrip().endswith("code 2"), (command, run)
        error = [line for line in run.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and error[0].endswith("File too large; write to another file system"), (command, run)
        assert str(tmp_path) in error[0]
    assert {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before


def test_suggest_page_and_csv_have_different_names(store, tmp_path, capsys):
    line = fails(["suggest", "--store", store, "--backbone", A, "--out", tmp_path / "k" / "pick.html"], capsys)
    assert "pick.csv" in line and "--nohtml" in line
    assert not (tmp_path / "k").exists()
    main(["suggest", "--store", str(store), "--backbone", A, "--budget", "3", "--out", str(tmp_path / "pick.csv")])
    assert (tmp_path / "pick.csv").read_text().startswith("rank,id,path,predicted")
    assert (tmp_path / "pick.html").read_text().startswith("<!DOCTYPE html>")


# ----------------------------------------------------------------------------------- 4. thumbnails by content
def _thumbnail_colours(page: Path) -> list[tuple]:
    links = re.findall(r'src="(thumbs/[^"]+)"', page.read_text())
    assert links
    return [Image.open(page.parent / link).convert("RGB").getpixel((0, 0)) for link in links]


def test_a_changed_image_gets_a_new_thumbnail(tmp_path):
    data = tmp_path / "data"
    path, _ = make_store(tmp_path / "s.h5", root=data)

    def paint(colour):
        for k in range(40):
            for name in CLASSES:
                target = data / "unlabeled" / f"{name}{k}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), colour).save(target)

    args = ["suggest", "--store", str(path), "--backbone", A, "--budget", "3", "--out", str(tmp_path / "o.csv")]
    paint((255, 0, 0))
    main(args)
    assert all(c[0] > 200 and c[2] < 50 for c in _thumbnail_colours(tmp_path / "o.html"))
    paint((0, 0, 255))
    main(args)
    assert all(c[2] > 200 and c[0] < 50 for c in _thumbnail_colours(tmp_path / "o.html"))


# ----------------------------------------------------------------------------------- 5. classes that vanish
def test_a_class_whose_train_images_all_failed_is_named(tmp_path, capsys, caplog):
    path, _ = make_store(tmp_path / "s.h5", failed_class="fox")
    model = tmp_path / "m.skops"
    runs = {
        "fit": ["fit", "--store", path, "--backbone", A, "--method", "knn", "--out", model],
        "predict": ["predict", "--model", model, "--store", path, "--out", tmp_path / "p.csv"],
        "evaluate": ["evaluate", "--store", path, "--backbone", A, "--method", "knn", "--out", tmp_path / "e.json"],
        "report": ["report", "--model", model, "--store", path, "--out", tmp_path / "r"],
    }
    for name, args in runs.items():
        caplog.clear()
        main([str(a) for a in args])
        warnings = [r.getMessage() for r in caplog.records if "cannot be predicted" in r.getMessage()]
        assert warnings == ["class 'fox' cannot be predicted: none of its 5 train images decoded (`python -m store "
                            f"info {path}` lists the errors); add train images of it that decode and refit"], name
    assert json.loads((tmp_path / "e.json").read_text())["unpredictable_classes"] == ["fox"]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["unpredictable_classes"] == ["fox"]


def test_a_zero_shot_method_predicts_every_class_without_a_warning(tmp_path, caplog):
    path, _ = make_store(tmp_path / "s.h5", failed_class="fox")
    main(["evaluate", "--store", str(path), "--backbone", "clip:b/tag", "--method", "zeroshot", "--out",
          str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["unpredictable_classes"] == []
    assert not [r for r in caplog.records if "cannot be predicted" in r.getMessage()]


# ----------------------------------------------------------------------------------- 6. spreadsheet formulas
HOSTILE_CLASSES = ["=HYPERLINK(\"http://x\")", "-1", "@SUM(A1)"]


def test_csv_cells_never_start_a_formula_and_read_back_exactly(tmp_path):
    path, _ = make_store(tmp_path / "s.h5", classes=HOSTILE_CLASSES)
    model, out, again = tmp_path / "m.skops", tmp_path / "p.csv", tmp_path / "again.csv"
    main(["fit", "--store", str(path), "--backbone", A, "--method", "knn", "--out", str(model)])
    order = tmp_path / "sample.csv"
    order.write_text("=cmd|' /C calc'!A0,+label\n" + "".join(f"test/cat/{k}.png,x\n" for k in range(5)))
    main(["predict", "--model", str(model), "--store", str(path), "--order", str(order), "--out", str(out)])
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["'=cmd|' /C calc'!A0", "'+label"]
    assert {r[1] for r in rows[1:]} <= {"'=HYPERLINK(\"http://x\")", "-1", "'@SUM(A1)"}
    # the suite reads its own CSV back as the true values: the same ids, in order, under the same header
    main(["predict", "--model", str(model), "--store", str(path), "--order", str(out), "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()
    main(["predict", "--model", str(model), "--store", str(path), "--label-format", "index", "--out", str(out)])
    assert {r[1] for r in list(csv.reader(out.open()))[1:]} <= {"0", "1", "2"}

    main(["report", "--model", str(model), "--store", str(path), "--out", str(tmp_path / "r")])
    per_class = list(csv.reader((tmp_path / "r" / "per_class.csv").open()))
    assert [r[0] for r in per_class[1:]] == ["'=HYPERLINK(\"http://x\")", "-1", "'@SUM(A1)"]
    pairs = list(csv.reader((tmp_path / "r" / "confused_pairs.csv").open()))
    assert all(not cell.startswith(("=", "+", "@", "\t", "\r")) for row in pairs for cell in row)

    main(["audit", "--store", str(path), "--backbone", A, "--all-rows", "--nohtml", "--out", str(tmp_path / "a.csv")])
    cells = [cell for row in csv.reader((tmp_path / "a.csv").open()) for cell in row]
    assert "'@SUM(A1)" in cells and not any(c.startswith(("=", "+", "@")) for c in cells)
    assert not any(c.startswith("-") and c != "-1" for c in cells)


def test_csv_cell_rules():
    from store.outputs import csv_cell, csv_value

    for text in ["=1+1", "+x", "-x", "@x", "\tx", "\rx", "'=x", "''@x", "'plain", "-1.5", "plain", ""]:
        assert csv_value(csv_cell(text)) == text
        assert not str(csv_cell(text)).startswith(("=", "+", "@", "\t", "\r")) or text == "-1.5"
    assert csv_cell(-2) == -2 and csv_cell(-0.25) == -0.25 and csv_cell("-0.25") == "-0.25"
    assert csv_cell("-x") == "'-x" and csv_cell("'=x") == "''=x" and csv_cell("'a") == "'a"


# ----------------------------------------------------------------------------------- 7. one line, not a traceback
def test_mathtext_in_a_class_name_draws_as_text(tmp_path):
    path, _ = make_store(tmp_path / "s.h5", classes=["a$\\frac$b", "dog", "$x^$"])
    model = tmp_path / "m.skops"
    main(["fit", "--store", str(path), "--backbone", A, "--method", "knn", "--out", str(model)])
    main(["report", "--model", str(model), "--store", str(path), "--out", str(tmp_path / "r")])
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.is_file()) == [
        "confused_pairs.csv", "confusion.png", "index.html", "per_class.csv", "report.json"]


@pytest.mark.parametrize("where", ["under a file", "folder", "empty", "proc"])
def test_unwritable_outputs_are_one_line_before_the_work(where, store, model, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = {"under a file": blocker / "x" / "out.csv", "folder": tmp_path, "empty": "",
           "proc": "/proc/fewshot-test/out.csv"}[where]

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(active, "suggest_store", no_work)
    monkeypatch.setattr(audit, "audit_store", no_work)
    commands = [
        ["fit", "--store", store, "--backbone", A, "--method", "knn", "--out", out],
        ["predict", "--model", model, "--store", store, "--out", out],
        ["evaluate", "--store", store, "--backbone", A, "--method", "knn", "--out", out],
        ["suggest", "--store", store, "--backbone", A, "--out", out],
        ["audit", "--store", store, "--backbone", A, "--out", out],
    ]
    if where != "folder":
        commands.append(["report", "--model", model, "--store", store, "--out", out])
    for command in commands:
        line = fails(command, capsys)
        assert "--out" in line, (command, line)
    assert blocker.read_text() == "x"


def test_an_oserror_while_writing_is_one_line_naming_the_path(store, model, tmp_path, capsys, monkeypatch):
    from store import outputs

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "write_bytes", full)
    line = fails(["predict", "--model", model, "--store", store, "--out", tmp_path / "p.csv"], capsys)
    assert line == f"error: {tmp_path / 'p.csv'}: No space left on device; free some space on that disk or write " \
                   "elsewhere"


def test_a_genuine_oserror_keeps_its_traceback(store, model, tmp_path, monkeypatch):
    from store import outputs

    def broken(path, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(outputs, "write_bytes", broken)
    with pytest.raises(OSError):
        main(["predict", "--model", str(model), "--store", str(store), "--out", str(tmp_path / "p.csv")])


@pytest.mark.parametrize("command", ["suggest", "audit"])
def test_seeds_past_2_32_are_refused(command, store, tmp_path, capsys):
    line = fails([command, "--store", store, "--backbone", A, "--seed", 2**32, "--out", tmp_path / "o.csv"], capsys)
    assert "--seed must be an int in [0, 4294967295]" in line


@pytest.mark.parametrize("args, words", [
    (["run", "--shots", "abc"], "--shots must be whole numbers"),
    (["run", "--seeds", 0], "--seeds must be an int >= 1"),
    (["labelprop-scale", "--n", -5], "--n must be an int >= 1"),
    (["labelprop-scale", "--n", 10, "--classes", 5, "--shots", 3], "cannot hold"),
])
def test_benchmark_flags_are_one_line(args, words, capsys):
    assert words in fails(args, capsys, benchmarks_main)
