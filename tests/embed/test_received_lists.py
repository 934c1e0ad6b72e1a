"""Lists and datasets received from others (a ``--csv`` list, a Hugging Face ``metadata.csv``, ``classes.txt``) stay
inside their folder, name each file once, and bad inputs to ``embed run`` are one line.

The hostile inputs are crafted by :mod:`crafted_lists`; every refusal is checked through ``python -m embed run``
(its ``main``), with no store left behind.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import crafted_lists as crafted
from classify.cli import main as classify_main
from classify.predictions import format_ids
from embed import sources
from embed.backbones import MAX_IMAGE_SIZE, load_backbone
from embed.cli import main as embed_main
from store import OK, FeatureStore
from store.validation import UserError


@pytest.fixture(scope="module")
def spec(tiny_timm_ckpt):
    return f"timm:test_efficientnet@{tiny_timm_ckpt}"


def embed_run(*args):
    embed_main(["run", *map(str, args), "--progress", "False", "--workers", "0", "--batch-size", "4",
                "--image-size", "32"])


def refused(capsys, *args) -> str:
    """The one error line of an ``embed run`` that must fail with exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        embed_run(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---------------------------------------------------------------------------------- 1. paths that leave the folder
@pytest.mark.parametrize("how", crafted.ESCAPES)
def test_csv_rows_outside_the_folder_are_refused(tmp_path, spec, capsys, how):
    listed, line = crafted.write_escaping_csv(tmp_path / "data", tmp_path / "elsewhere", how, extra=2)
    store = tmp_path / "s.h5"
    msg = refused(capsys, "--csv", listed, "--backbone", spec, "--store", store)
    assert f"row {line}" in msg and "--allow-outside" in msg and "2 rows" in msg and "list.csv" in msg
    assert not store.exists()


@pytest.mark.parametrize("how", crafted.ESCAPES)
def test_metadata_rows_outside_the_folder_are_refused(tmp_path, spec, capsys, how):
    metadata, line = crafted.write_escaping_metadata(tmp_path / "data", tmp_path / "elsewhere", how)
    store = tmp_path / "s.h5"
    msg = refused(capsys, "--data", tmp_path / "data", "--backbone", spec, "--store", store)
    assert f"metadata.csv row {line}" in msg and "--allow-outside" in msg and "1 row" in msg
    assert not store.exists()


def test_a_folder_reached_through_a_link_is_inside(tmp_path, spec):
    """The user's own data folder behind a symlink: rows are inside, whether named relative to the link or by the
    real absolute path."""
    real = tmp_path / "real"
    good = crafted.write_list_folder(real)
    link = crafted.link_to(real, tmp_path / "link")
    rows = [[good[0], "cat"], [str(real.resolve() / good[1]), "dog"], [str(link / good[2]), "cat"], [good[3], "dog"]]
    with open(link / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    images = sources.from_csv(link / "list.csv")
    assert images.ids == good
    store = tmp_path / "s.h5"
    embed_run("--csv", link / "list.csv", "--backbone", spec, "--store", store)
    with FeatureStore(store) as fs:
        assert fs.ids.tolist() == good and fs.load(spec).X.shape[0] == 4


def test_allow_outside_reads_them_with_relative_ids_that_reach_the_predictions(tmp_path, spec, capsys):
    """With --allow-outside an absolute row is stored relative to the data folder: the predictions CSV never carries
    an absolute path of this machine."""
    root = tmp_path / "data"
    good = crafted.write_list_folder(root)
    secret = crafted.escaping_path(root, tmp_path / "elsewhere", "absolute")
    assert os.path.isabs(secret)
    rows = [[p, "cat" if i % 2 else "dog"] for i, p in enumerate(good)] + [[secret, "", "test"]]
    with open(root / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    store = tmp_path / "s.h5"
    embed_run("--csv", root / "list.csv", "--backbone", spec, "--store", store, "--allow-outside")
    with FeatureStore(store) as fs:
        ids = fs.ids.tolist()
        assert "../elsewhere/secret.png" in ids and not any(os.path.isabs(i) for i in ids)
        assert fs.load(spec).X.shape[0] == 5  # the outside file was read
    model, out = tmp_path / "m.skops", tmp_path / "pred.csv"
    classify_main(["fit", "--store", str(store), "--backbone", spec, "--method", "knn", "--k", "1", "--out",
                   str(model)])
    classify_main(["predict", "--model", str(model), "--store", str(store), "--out", str(out)])
    with open(out, newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["../elsewhere/secret.png"]


def test_predict_never_writes_an_absolute_path_unasked(tmp_path, capsys):
    """A store with an absolute id (made before ids were kept relative): --id-format relpath refuses to write it."""
    ids = ["train/cat/0.png", "train/cat/1.png", "train/dog/0.png", "train/dog/1.png", "/home/someone/photos/b.png"]
    store, model, out = tmp_path / "s.h5", tmp_path / "m.skops", tmp_path / "pred.csv"
    with FeatureStore.create(store, ids, ["train"] * 4 + ["test"], [0, 0, 1, 1, -1], ["cat", "dog"]) as fs:
        fs.begin_backbone({"spec": "timm:a", "weights_sha256": "a", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 2)
        fs.write_rows("timm:a", np.arange(5), np.full(5, OK), [None] * 5, [None] * 5,
                      features=np.array([[0, 1], [0, 2], [1, 0], [2, 0], [3, 0]], dtype=np.float32))
    classify_main(["fit", "--store", str(store), "--backbone", "timm:a", "--method", "knn", "--k", "1", "--out",
                   str(model)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        classify_main(["predict", "--model", str(model), "--store", str(store), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "--id-format name" in err[0] and not out.exists()
    classify_main(["predict", "--model", str(model), "--store", str(store), "--out", str(out), "--id-format", "name"])
    with open(out, newline="") as handle:
        assert [(row["id"], row["label"]) for row in csv.DictReader(handle)] == [("b.png", "dog")]


def test_format_ids_never_writes_an_absolute_path_unasked():
    with pytest.raises(UserError, match="absolute path.*--id-format name"):
        format_ids(["test/a.png", "/home/someone/photos/b.png"])
    assert format_ids(["test/a.png", "/home/someone/photos/b.png"], "name") == ["a.png", "b.png"]
    assert format_ids(["test/a.png", "../photos/b.png"]) == ["test/a.png", "../photos/b.png"]


# ---------------------------------------------------------------------------------- 2. one file under two spellings
@pytest.mark.parametrize("spelling", ["dotdot", "dots", "link"])
def test_one_file_under_two_spellings_and_two_labels_is_refused(tmp_path, spec, capsys, spelling):
    listed = crafted.write_respelled_csv(tmp_path / "data", ("cat", "dog"), spelling)
    store = tmp_path / "s.h5"
    msg = refused(capsys, "--csv", listed, "--backbone", spec, "--store", store)
    assert "imgs/0.png" in msg and "row 1: cat" in msg and "row 2: dog" in msg
    assert not store.exists()


@pytest.mark.parametrize("spelling", ["dotdot", "link"])
def test_one_file_under_two_spellings_and_one_label_is_kept_once(tmp_path, spelling):
    images = sources.from_csv(crafted.write_respelled_csv(tmp_path / "data", ("cat", "cat"), spelling))
    assert images.ids == ["imgs/0.png", "imgs/1.png", "imgs/2.png", "imgs/3.png"]


def test_dotdot_after_a_linked_folder_is_refused(tmp_path):
    """``sub/../imgs/0.png`` with ``sub`` a link: the system opens ``imgs/0.png`` beside the link's target, not the
    ``imgs/0.png`` the normalised id would read."""
    root = tmp_path / "data"
    good = crafted.write_list_folder(root)
    crafted.write_list_folder(root / "deep", n=1, seed=5)  # deep/imgs/0.png: another picture
    (root / "deep" / "inner").mkdir()
    (root / "sub").symlink_to("deep/inner", target_is_directory=True)
    (root / "list.csv").write_text(f"sub/../imgs/0.png,cat\n{good[1]},dog\n")
    with pytest.raises(UserError, match=r"row 1: sub/\.\./imgs/0.png names .*deep/imgs/0.png"):
        sources.from_csv(root / "list.csv")


def test_metadata_names_one_file_once(tmp_path):
    root = tmp_path / "data"
    crafted.write_list_folder(root)
    (root / "metadata.csv").write_text("file_name,label\nimgs/0.png,cat\nimgs/x/../0.png,dog\nimgs/1.png,dog\n")
    (root / "imgs" / "x").mkdir()
    with pytest.raises(UserError, match="imgs/0.png is listed twice"):
        sources.from_folder(root)


# ------------------------------------------------------------------------------------------------- 3. classes.txt
def test_duplicate_display_names_are_refused(tmp_path, spec, capsys):
    root = crafted.write_duplicate_display_names(tmp_path / "data")
    msg = refused(capsys, "--data", root, "--backbone", spec, "--store", tmp_path / "s.h5")
    assert "one" in msg and "zero" in msg and "'digit'" in msg and "classes.txt" in msg
    assert not (tmp_path / "s.h5").exists()


def test_folder_names_that_read_alike_are_refused(tmp_path):
    root = tmp_path / "data"
    for name in ("red_fox", "red fox"):
        crafted.write_list_folder(root / "train" / name, n=1)
    with pytest.raises(UserError, match="red fox.*red_fox.*classes.txt"):
        sources.from_folder(root)


def test_latin1_classes_txt_is_one_line(tmp_path, spec, capsys):
    classes = crafted.write_latin1_classes(tmp_path / "data")
    msg = refused(capsys, "--data", tmp_path / "data", "--backbone", spec, "--store", tmp_path / "s.h5")
    assert str(classes) in msg and "UTF-8" in msg and "line 1" in msg
    assert not (tmp_path / "s.h5").exists()


# --------------------------------------------------------------------------------------- 4. NUL bytes, --image-size
def test_a_nul_byte_in_a_path_is_one_line(tmp_path, spec, capsys):
    listed, line = crafted.write_nul_csv(tmp_path / "data")
    msg = refused(capsys, "--csv", listed, "--backbone", spec, "--store", tmp_path / "s.h5")
    assert f"row {line}" in msg and "NUL" in msg
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("size", [MAX_IMAGE_SIZE + 1, 20000])
def test_image_size_has_an_upper_bound(tmp_path, spec, capsys, size):
    root = tmp_path / "data"
    crafted.write_list_folder(root / "train" / "cat", n=1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        embed_main(["run", "--data", str(root), "--backbone", spec, "--store", str(tmp_path / "s.h5"),
                    "--image-size", str(size), "--workers", "0", "--progress", "False"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "--image-size" in err[0] and str(MAX_IMAGE_SIZE) in err[0] and "MB" in err[0]
    assert not (tmp_path / "s.h5").exists()
    with pytest.raises(UserError, match=str(MAX_IMAGE_SIZE)):
        load_backbone(spec, image_size=size)


# ------------------------------------------------------------------------------------- 5. a download that fails
FAILING_HUB = textwrap.dedent("""
    import logging, sys
    import timm.models._hub

    def failing(repo_id, filename, **kwargs):  # what huggingface_hub does on a refused connection, then gives up
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise OSError("Connection refused")

    timm.models._hub.hf_hub_download = failing
    from embed.cli import main
    main(sys.argv[1:])
""")


def test_a_failed_download_leaves_no_store_and_logs_each_retry_once(tmp_path):
    root = tmp_path / "data"
    crafted.write_list_folder(root / "train" / "cat", n=2)
    store = tmp_path / "s.h5"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HOME": str(tmp_path / "home"),
           "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", FAILING_HUB, "run", "--data", str(root), "--backbone",
                          "timm:test_efficientnet", "--store", str(store), "--workers", "0", "--progress", "False"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: could not download"), lines
    assert sum("Retrying in 1s" in line for line in lines) == 1, lines
    assert not store.exists()
