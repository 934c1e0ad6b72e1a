import numpy as np
import pytest
from PIL import Image

from embed import sources


def touch_image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)


@pytest.fixture
def challenge(tmp_path):
    for rel in ["train/red_fox/a.jpg", "train/red_fox/deep/b.PNG", "train/cat/c.png", "unlabeled/u1.png",
                "unlabeled/batch2/u2.webp", "test/t1.png", "test/cat/t2.png", "test/unknown_folder/t3.png"]:
        touch_image(tmp_path / rel)
    (tmp_path / "train/cat/notes.txt").write_text("not an image")
    (tmp_path / "train/cat/.hidden.png").write_bytes(b"")
    return tmp_path


def test_challenge_layout(challenge):
    images = sources.from_folder(challenge)
    assert images.classes == ["cat", "red fox"]
    assert images.ids == ["train/cat/c.png", "train/red_fox/a.jpg", "train/red_fox/deep/b.PNG",
                          "unlabeled/batch2/u2.webp", "unlabeled/u1.png", "test/cat/t2.png", "test/t1.png",
                          "test/unknown_folder/t3.png"]
    assert images.splits == ["train"] * 3 + ["unlabeled"] * 2 + ["test"] * 3
    np.testing.assert_array_equal(images.labels, [0, 1, 1, -1, -1, 0, -1, -1])
    assert all(p.is_file() for p in images.paths)


def test_classes_txt_sets_order_and_names(challenge):
    (challenge / "classes.txt").write_text("red_fox,Vulpes vulpes\ncat\n")
    images = sources.from_folder(challenge)
    assert images.classes == ["Vulpes vulpes", "cat"]
    np.testing.assert_array_equal(images.labels[:3], [1, 0, 0])


def test_classes_txt_must_cover_folders(challenge):
    (challenge / "classes.txt").write_text("cat\n")
    with pytest.raises(ValueError, match="missing from .*classes.txt: \\['red_fox'\\]"):
        sources.from_folder(challenge)


def test_broken_symlink_is_kept_for_the_decoder_to_report(challenge):
    (challenge / "unlabeled/gone.jpg").symlink_to(challenge / "nowhere.jpg")
    assert "unlabeled/gone.jpg" in sources.from_folder(challenge).ids


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


def test_demo_writes_real_digits_in_the_challenge_layout(tmp_path):
    folder = sources.write_demo(tmp_path / "demo", shots=2, test_per_class=1)
    images = sources.from_folder(folder)
    assert images.classes == list(sources.DEMO_CLASSES)
    assert len(images) == 1797
    assert images.splits.count("train") == 20 and images.splits.count("test") == 10
    assert np.bincount(images.labels[images.labels >= 0], minlength=10).tolist() == [3] * 10
    assert sources.write_demo(tmp_path / "demo", shots=2, test_per_class=1) == folder  # reused, not rewritten
