import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embed import sources
from embed.images import load_image


import imagegen  # noqa: E402


def touch_image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)


SPLIT_IDS = ["train/cat/c.png", "train/red_fox/a.jpg", "train/red_fox/deep/b.PNG", "unlabeled/batch2/u2.webp",
                 "unlabeled/u1.png", "test/cat/t2.png", "test/t1.png", "test/unknown_folder/t3.png"]
SPLIT_LABELS = [0, 1, 1, -1, -1, 0, -1, -1]


@pytest.fixture
def split_folders(tmp_path):
    for rel in ["train/red_fox/a.jpg", "train/red_fox/deep/b.PNG", "train/cat/c.png", "unlabeled/u1.png",
                "unlabeled/batch2/u2.webp", "test/t1.png", "test/cat/t2.png", "test/unknown_folder/t3.png"]:
        touch_image(tmp_path / rel)
    (tmp_path / "train/cat/notes.txt").write_text("not an image")
    (tmp_path / "train/cat/.hidden.png").write_bytes(b"")
    return tmp_path


def test_split_folder_layout(split_folders):
    images = sources.from_folder(split_folders)
    assert images.classes == ["cat", "red_fox"] and images.display_names == ["cat", "red fox"]
    assert images.ids == ["train/cat/c.png", "train/red_fox/a.jpg", "train/red_fox/deep/b.PNG",
                          "unlabeled/batch2/u2.webp", "unlabeled/u1.png", "test/cat/t2.png", "test/t1.png",
                          "test/unknown_folder/t3.png"]
    assert images.splits == ["train"] * 3 + ["unlabeled"] * 2 + ["test"] * 3
    np.testing.assert_array_equal(images.labels, [0, 1, 1, -1, -1, 0, -1, -1])
    assert all(p.is_file() for p in images.paths)


def test_classes_txt_sets_order_and_names(split_folders):
    (split_folders / "classes.txt").write_text("red_fox,Vulpes vulpes\ncat\n")
    images = sources.from_folder(split_folders)
    assert images.classes == ["red_fox", "cat"] and images.display_names == ["Vulpes vulpes", "cat"]
    np.testing.assert_array_equal(images.labels[:3], [1, 0, 0])


def test_classes_txt_must_cover_folders(split_folders):
    (split_folders / "classes.txt").write_text("cat\n")
    with pytest.raises(ValueError, match="missing from .*classes.txt: \\['red_fox'\\]"):
        sources.from_folder(split_folders)


def test_broken_symlink_is_kept_for_the_decoder_to_report(split_folders):
    (split_folders / "unlabeled/gone.jpg").symlink_to(split_folders / "nowhere.jpg")
    assert "unlabeled/gone.jpg" in sources.from_folder(split_folders).ids


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "has no train/ folder"),
    (lambda root: (root / "train").mkdir(parents=True), "has no class folders"),
    (lambda root: [touch_image(root / "train/stray.png"), touch_image(root / "train/cat/a.png")],
     "not inside a class folder"),
    (lambda root: (root / "train/cat").mkdir(parents=True), "no images found"),
])
def test_folder_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sources.from_folder(root)


def test_csv_source(tmp_path):
    for name in ["a.png", "b.png", "c.png", "d.png"]:
        touch_image(tmp_path / "img" / name)
    (tmp_path / "list.csv").write_text("path,label,split\nimg/b.png,dog\nimg/a.png,cat,train\nimg/c.png,,\n"
                                       "img/d.png,dog,test\n")
    images = sources.from_csv(tmp_path / "list.csv")
    assert images.classes == ["cat", "dog"]
    assert images.ids == ["img/a.png", "img/b.png", "img/c.png", "img/d.png"]
    assert images.splits == ["train", "train", "unlabeled", "test"]
    np.testing.assert_array_equal(images.labels, [0, 1, -1, 1])


@pytest.mark.parametrize("content, message", [
    ("path,label\n", "lists no images"),
    ("a.png,cat,validation\n", "split 'validation' must be one of"),
    ("a.png\n", "expected path,label"),
])
def test_csv_errors(tmp_path, content, message):
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        sources.from_csv(tmp_path / "list.csv")


def test_demo_writes_real_digits_in_the_split_folder_layout(tmp_path):
    folder = sources.write_demo(tmp_path / "demo", shots=2, test_per_class=1)
    images = sources.from_folder(folder)
    assert images.classes == list(sources.DEMO_CLASSES)
    assert len(images) == 1797
    assert images.splits.count("train") == 20 and images.splits.count("test") == 10
    assert np.bincount(images.labels[images.labels >= 0], minlength=10).tolist() == [3] * 10
    assert sources.write_demo(tmp_path / "demo", shots=2, test_per_class=1) == folder  # reused, not rewritten


# --- what real folders contain: links, loops, pipes, devices, odd names


def test_link_loops_are_not_followed(split_folders):
    imagegen.make_link_loop(split_folders / "train/cat", "up", "..")  # train/cat/up -> train
    imagegen.make_link_loop(split_folders / "train/red_fox/deep", "top", "../../..")  # -> the data root
    imagegen.make_link_loop(split_folders / "unlabeled", "slash", "/")  # an ancestor of everything
    images = sources.from_folder(split_folders)
    assert images.ids == SPLIT_IDS
    np.testing.assert_array_equal(images.labels, SPLIT_LABELS)


def test_a_link_into_the_tree_does_not_relabel(split_folders):
    # train/cat/foxes -> train/red_fox sorts before red_fox itself: its images must stay foxes, listed once.
    imagegen.make_link_loop(split_folders / "train/cat", "foxes", "../red_fox")
    imagegen.make_link_loop(split_folders / "test/cat", "pool", "../../unlabeled")
    images = sources.from_folder(split_folders)
    assert images.ids == SPLIT_IDS
    np.testing.assert_array_equal(images.labels, SPLIT_LABELS)


def test_linked_folders_outside_are_followed_once(split_folders, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    touch_image(outside / "x.png")
    touch_image(outside / "inner/y.png")
    imagegen.make_link_loop(outside / "inner", "back", "..")  # a loop inside the linked folder too
    (split_folders / "train/cat/more").symlink_to(outside, target_is_directory=True)
    (split_folders / "unlabeled/again").symlink_to(outside, target_is_directory=True)  # the same folder twice
    images = sources.from_folder(split_folders)
    assert [i for i in images.ids if i not in SPLIT_IDS] == ["train/cat/more/inner/y.png", "train/cat/more/x.png"]
    assert images.labels[images.ids.index("train/cat/more/x.png")] == 0
    assert images.paths[images.ids.index("train/cat/more/x.png")].samefile(outside / "x.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs POSIX pipes, devices")
def test_pipes_and_devices_are_listed_for_the_decoder_to_report(split_folders):
    fifo = imagegen.make_fifo(split_folders / "unlabeled/pipe.png")
    device = imagegen.make_device_link(split_folders / "unlabeled/zero.jpg")
    images = sources.from_folder(split_folders)  # finding files opens none of them: no hang, no endless read
    assert "unlabeled/pipe.png" in images.ids and "unlabeled/zero.jpg" in images.ids
    assert load_image(fifo).error == "cannot read file: not a regular file (FIFO)"
    assert load_image(device).error == "cannot read file: not a regular file (character device)"


def test_odd_file_names_are_found_and_map_back_exactly(split_folders):
    cat = imagegen.write_odd_names(split_folders / "train/cat", value=10)
    pool = imagegen.write_odd_names(split_folders / "unlabeled", value=20)
    latin1 = Path(os.fsdecode(os.path.join(os.fsencode(split_folders / "train"), b"caf\xe9")))  # a class folder too
    touch_image(latin1 / "a.png", 30)
    images = sources.from_folder(split_folders)
    assert images.classes == ["caf\udce9", "cat", "red_fox"]
    want = {f"train/cat/{imagegen.NON_ASCII_NAME}": (1, cat[0]), "unlabeled/" + imagegen.NON_ASCII_NAME: (-1, pool[0]),
            "train/cat/" + os.fsdecode(imagegen.NON_UTF8_NAME): (1, cat[1]),
            "unlabeled/" + os.fsdecode(imagegen.NON_UTF8_NAME): (-1, pool[1]),
            "train/caf\udce9/a.png": (0, latin1 / "a.png")}
    for id_, (label, path) in want.items():
        k = images.ids.index(id_)
        assert isinstance(id_, str) and images.labels[k] == label
        assert os.fsencode(images.paths[k]) == os.fsencode(path)
        assert load_image(images.paths[k]).ok, id_


@pytest.mark.parametrize("header", ["path,label,split", "filename,class,split", "file_name,label,split",
                                    "Image,Category,Split", " FILEPATH , Target ,split", "image_path,label,split",
                                    "file,class,split"])
def test_csv_headers_are_recognised_by_name(tmp_path, header):
    for name in ["a.png", "b.png"]:
        touch_image(tmp_path / "img" / name)
    (tmp_path / "list.csv").write_text(f"{header}\nimg/b.png,dog,test\nimg/a.png,cat,\n")
    images = sources.from_csv(tmp_path / "list.csv")
    assert images.classes == ["cat", "dog"]
    assert images.ids == ["img/a.png", "img/b.png"]
    assert images.splits == ["train", "test"]


def test_csv_header_columns_in_any_order_extra_columns_ignored(tmp_path):
    # Hugging Face imagefolder's metadata.csv: file_name first, then any metadata; Excel adds a byte-order mark.
    (tmp_path / "metadata.csv").write_text("\ufefflabel,caption,file_name\ncat,a cat,a.png\n,\"x, y\",b.png\n",
                                           encoding="utf-8")
    images = sources.from_csv(tmp_path / "metadata.csv")
    assert images.classes == ["cat"]
    assert images.ids == ["a.png", "b.png"]
    np.testing.assert_array_equal(images.labels, [0, -1])


def test_csv_without_header_is_positional(tmp_path):
    (tmp_path / "list.csv").write_text("a.png,cat\nb.jpg,dog,test\n")
    images = sources.from_csv(tmp_path / "list.csv")
    assert images.ids == ["a.png", "b.jpg"] and images.classes == ["cat", "dog"]


@pytest.mark.parametrize("content, message", [
    ("img,cls\na.png,cat\n", "first row 'img,cls' looks like a header"),
    ("file_name,caption\na.png,a cat\n", "no label column"),
    ("path,file_name,label\na.png,a.png,cat\n", "two path columns"),
    ("path,label\na.png,cat,test\n", "row 2: expected 2 values"),
    ("path,label\n,cat\n", "row 2: the path is empty"),
])
def test_csv_header_errors(tmp_path, content, message):
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        sources.from_csv(tmp_path / "list.csv")


def test_csv_conflicting_duplicates_are_refused_with_rows(tmp_path):
    content = "path,label,split\na.png,cat\nb.png,cat\n./a.png,dog\nb.png,cat,test\nc.png,cat\n"
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(ValueError) as info:
        sources.from_csv(tmp_path / "list.csv")
    message = str(info.value)
    assert "\n" not in message
    assert "2 paths are listed more than once with different labels or splits" in message
    assert "a.png (row 2: cat train; row 4: dog train)" in message
    assert "b.png (row 3: cat train; row 5: cat test)" in message
    assert "keep one row per path" in message


def test_csv_exact_duplicates_are_kept_once(tmp_path, caplog):
    (tmp_path / "list.csv").write_text("path,label\na.png,cat\nb.png,dog\na.png,cat\n")
    with caplog.at_level(logging.WARNING, logger="embed.sources"):
        images = sources.from_csv(tmp_path / "list.csv")
    assert images.ids == ["a.png", "b.png"]
    assert "1 row repeats an earlier one" in caplog.text and "a.png (row 4)" in caplog.text


def test_csv_names_that_are_not_utf8_map_back_exactly(tmp_path):
    non_ascii, non_utf8 = imagegen.write_odd_names(tmp_path / "img")
    raw = b"path,label\nimg/" + imagegen.NON_UTF8_NAME + b",caf\xe9\n" + f"img/{non_ascii.name},cat\n".encode()
    (tmp_path / "list.csv").write_bytes(raw)  # Latin-1 bytes in a UTF-8 file: the file name is those bytes
    images = sources.from_csv(tmp_path / "list.csv")
    assert images.classes == ["caf\udce9", "cat"]
    assert [os.fsencode(p) for p in images.paths] == [os.fsencode(non_ascii), os.fsencode(non_utf8)]
    assert all(load_image(p).ok for p in images.paths)


def test_a_looping_link_is_not_a_class(split_folders):
    imagegen.make_link_loop(split_folders / "train", "up", "..")  # train/up -> the data root
    imagegen.make_link_loop(split_folders / "train", "kitten", "cat")  # a second name for train/cat
    images = sources.from_folder(split_folders)
    assert images.classes == ["cat", "red_fox"] and images.display_names == ["cat", "red fox"]
    assert images.ids == SPLIT_IDS


def test_hostile_folder(tmp_path):
    want = imagegen.write_hostile_folder(tmp_path)
    images = sources.from_folder(tmp_path)
    assert images.classes == list(imagegen.HOSTILE_CLASSES)
    assert sorted(images.ids) == sorted(want) and len(images.ids) == len(set(images.ids))
    for id_, split, label, path in zip(images.ids, images.splits, images.labels, images.paths):
        want_split, want_label, want_error = want[id_]
        assert (split, label) == (want_split, want_label), id_
        error = load_image(path, target_size=224).error
        assert error is None if want_error is None else want_error in error, (id_, error)
    with pytest.raises(ValueError, match="unlabeled/u0.png \\(row 2: one train; row 4: zero train\\)"):
        sources.from_csv(tmp_path / "conflicts.csv")
