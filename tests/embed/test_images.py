"""Tests for embed.images: robust decoding, exact pixel oracles, decompression-bomb limit, JPEG draft."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from embed.images import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    LoadedImage,
    load_image,
    to_rgb8,
)


import imagegen  # noqa: E402

RED, GREEN, BLUE, WHITE = imagegen.RED, imagegen.GREEN, imagegen.BLUE, imagegen.WHITE
TARGET = 224


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bool]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, imagegen.write_bad_inputs(folder)


@pytest.fixture(scope="module")
def loaded(bad_dir: tuple[Path, dict[str, bool]]) -> dict[str, LoadedImage]:
    folder, expected = bad_dir
    return {name: load_image(folder / name, target_size=TARGET) for name in expected}


def pixels(result: LoadedImage) -> np.ndarray:
    assert result.error is None, result.error
    assert result.image is not None and result.image.mode == "RGB"
    return np.asarray(result.image)


def test_extensions() -> None:
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# --- the generated inputs, as the lead's runner will see them


def test_bad_inputs_catalogue(bad_dir: tuple[Path, dict[str, bool]]) -> None:
    folder, expected = bad_dir
    failing = {name for name, ok in expected.items() if not ok}
    assert failing == set(imagegen.BAD_INPUT_ERRORS)
    for name in expected:
        assert (folder / name).is_symlink() or (folder / name).is_file(), name
        assert Path(name).suffix in IMAGE_EXTENSIONS


def test_every_input_has_the_expected_outcome(loaded: dict[str, LoadedImage], bad_dir) -> None:
    _, expected = bad_dir
    for name, ok in expected.items():
        result = loaded[name]
        assert (result.error is None) == ok, (name, result.error)
        assert result.ok == ok
        if ok:
            assert result.image is not None and result.image.mode == "RGB", name
        else:
            assert result.image is None, name
            assert imagegen.BAD_INPUT_ERRORS[name] in result.error, (name, result.error)
            assert "\n" not in result.error


def test_sha256_is_of_the_file_bytes(loaded: dict[str, LoadedImage], bad_dir) -> None:
    folder, expected = bad_dir
    for name in expected:
        if name == "unreadable.jpg":
            assert loaded[name].sha256 is None
        else:
            assert loaded[name].sha256 == hashlib.sha256((folder / name).read_bytes()).hexdigest(), name
    assert loaded["zero_byte.jpg"].sha256 == hashlib.sha256(b"").hexdigest()


def test_good_images_round_trip(tmp_path: Path) -> None:
    paths = imagegen.write_good_images(tmp_path, 2 * len(imagegen.GOOD_EXTENSIONS), size=20, seed=3)
    assert {p.suffix for p in paths} == set(imagegen.GOOD_EXTENSIONS)
    for i, path in enumerate(paths):
        result = load_image(path)
        got = pixels(result)
        assert got.shape == (20, 20, 3), path
        assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        want = imagegen.good_pixels(i, size=20, seed=3)
        if path.suffix in imagegen.LOSSLESS_EXTENSIONS:
            np.testing.assert_array_equal(got, want, err_msg=str(path))
        else:  # JPEG / GIF: same picture, lossy
            assert np.abs(got.astype(int) - want).mean() < 8, path


# --- failures


def test_zero_byte(loaded) -> None:
    assert loaded["zero_byte.jpg"].error == "empty file"


def test_not_an_image_message_is_clean(loaded) -> None:
    error = loaded["not_an_image.jpg"].error
    assert error.startswith("not an image")
    assert "BytesIO" not in error and "0x" not in error


def test_truncated_jpeg_and_png(loaded) -> None:
    assert loaded["truncated.jpg"].error.startswith("truncated image: image file is truncated")
    assert loaded["truncated.png"].error.startswith("truncated image: image file is truncated")


def test_truncated_fails_even_if_someone_enabled_load_truncated(bad_dir, monkeypatch) -> None:
    folder, _ = bad_dir
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert load_image(folder / "truncated.jpg").error.startswith("truncated image")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # their setting is back afterwards


def test_broken_symlink_reports_os_reason(loaded) -> None:
    result = loaded["unreadable.jpg"]
    assert result.error == "cannot read file: No such file or directory"
    assert result.sha256 is None and result.image is None


def test_directory_path_reports_os_reason(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    result = load_image(folder)
    assert result.error == "cannot read file: Is a directory"
    assert result.sha256 is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files regardless of mode")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        result = load_image(path)
    finally:
        path.chmod(0o600)
    assert result.error == "cannot read file: Permission denied"


def test_corrupt_data_is_reported(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), RED).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[-20] ^= 0xFF  # inside the IDAT payload: CRC mismatch
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(data))
    result = load_image(path)
    assert result.image is None and result.error.startswith(("corrupt image", "truncated image")), result.error


def test_reads_the_file_once(bad_dir) -> None:
    """An audit hook counts opens of the path: one read, then decoding from memory."""
    folder, _ = bad_dir
    target = str(folder / "exif_rotated.jpg")
    opens: list[str] = []
    _OPEN_LOG.append(opens)
    try:
        assert load_image(target, target_size=8).error is None
        assert load_image(folder / "truncated.jpg").error is not None
    finally:
        _OPEN_LOG.remove(opens)
    assert opens.count(target) == 1
    assert opens.count(str(folder / "truncated.jpg")) == 1


_OPEN_LOG: list[list[str]] = []
_FORBIDDEN_OPENS: list[set[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and (_OPEN_LOG or _FORBIDDEN_OPENS) and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        for log in _OPEN_LOG:
            log.append(name)
        if any(name in names for names in _FORBIDDEN_OPENS):
            # Raised inside the open call, before the system call: the test fails instead of blocking or streaming.
            raise AssertionError(f"{name} was opened")


sys.addaudithook(_audit)  # hooks cannot be removed; this one does nothing unless a test is listening


def test_argument_errors_raise() -> None:
    with pytest.raises(ValueError, match="target_size"):
        load_image("x.jpg", target_size=0)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image("x.jpg", max_pixels=0)
    with pytest.raises(TypeError):
        load_image(3)  # an int would otherwise be opened as a file descriptor


def test_loaded_image_is_frozen_and_picklable(loaded) -> None:
    result = loaded["rgba.png"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.error = "x"  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(result))
    assert again.sha256 == result.sha256 and again.error is None
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(result.image))
    failed = pickle.loads(pickle.dumps(loaded["bomb.png"]))
    assert failed.image is None and failed.error == loaded["bomb.png"].error


# --- exact pixels per mode, through files


def test_cmyk_jpeg(loaded) -> None:
    got = pixels(loaded["cmyk.jpg"])
    assert got.shape == (16, 16, 3)
    assert np.abs(got.astype(int) - RED).max() <= 3


def test_grey_and_palette(loaded) -> None:
    assert (pixels(loaded["gray_l.png"]) == 77).all()
    pal = pixels(loaded["palette_p.png"])
    assert (pal[:, :4] == RED).all() and (pal[:, 4:] == GREEN).all()


def test_transparency_composited_on_white(loaded) -> None:
    for name, right in (
        ("palette_transparent.png", BLUE),
        ("gray_alpha_la.png", (50, 50, 50)),
        ("rgba.png", (10, 200, 30)),  # the transparent half stores red: it must not show through
    ):
        got = pixels(loaded[name])
        assert (got[:, :4] == WHITE).all(), name
        assert (got[:, 4:] == right).all(), name


def test_sixteen_bit_scaled_not_clipped(loaded) -> None:
    for name in ("gray16.png", "gray16.tif"):
        got = pixels(loaded[name])
        assert got.shape == (3, 4, 3)
        for row in got:
            assert [tuple(p) for p in row] == [(v, v, v) for v in imagegen.SIXTEEN_BIT_EXPECTED], name


def test_bilevel_and_float(loaded) -> None:
    bilevel = pixels(loaded["bilevel_1bit.png"])[..., 0]
    np.testing.assert_array_equal(bilevel, (np.indices((6, 8)).sum(axis=0) % 2) * 255)
    flt = pixels(loaded["float32.tif"])
    assert (flt == np.array(imagegen.FLOAT_EXPECTED)[None, :, None]).all()


def test_exif_orientation_applied(loaded) -> None:
    got = pixels(loaded["exif_rotated.jpg"])
    w, h = imagegen.EXIF_STORED_SIZE
    assert loaded["exif_rotated.jpg"].image.size == (h, w)  # 40x20 stored -> 20x40
    # Orientation 6: the stored left (red) half becomes the top.
    assert np.abs(got[: w // 2 - 4].astype(int) - RED).max() < 30
    assert np.abs(got[w // 2 + 4 :].astype(int) - BLUE).max() < 30


def test_animated_gif_first_frame(loaded) -> None:
    assert (pixels(loaded["anim.gif"]) == RED).all()


def test_content_sniffed_not_extension(loaded, bad_dir) -> None:
    folder, _ = bad_dir
    got = pixels(loaded["png_named.jpg"])
    np.testing.assert_array_equal(got, np.asarray(Image.open(folder / "png_named.jpg").convert("RGB")))


# --- conversion of every mode, in memory (oracles independent of file formats)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_to_rgb8_sixteen_bit_modes(mode: str) -> None:
    values = np.array([[0, 1, 128, 129, 256, 32768, 65280, 65535]])
    if mode == "I":
        img = Image.fromarray(values.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        img = Image.frombytes(mode, (values.shape[1], 1), values.astype(dtype).tobytes())
    assert img.mode == mode
    got = np.asarray(to_rgb8(img))
    assert got.shape == (1, 8, 3)
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 0, 1, 1, 128, 254, 255])


def test_to_rgb8_int_outside_16_bit_is_stretched() -> None:
    img = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(to_rgb8(img))[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # [0, 1] -> x 255
        ([0.0, 10.0, 100.4, 255.0], [0, 10, 100, 255]),  # [0, 255] kept
        ([-1.0, 0.0, 1.0, 3.0], [0, 64, 128, 255]),  # anything else stretched
        ([np.nan, 0.0, 0.5, 1.0], [0, 0, 128, 255]),  # NaN -> 0
        ([np.nan, np.nan, np.nan, np.nan], [0, 0, 0, 0]),
    ],
)
def test_to_rgb8_float(values: list[float], expected: list[int]) -> None:
    img = Image.fromarray(np.array([values], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(to_rgb8(img))[0, :, 0], expected)


@pytest.mark.parametrize(
    ("mode", "transparent", "opaque", "want"),
    [
        ("RGBA", (9, 9, 9, 0), (10, 20, 30, 255), (10, 20, 30)),
        ("LA", (9, 0), (40, 255), (40, 40, 40)),
        ("La", (0, 0), (40, 255), (40, 40, 40)),
        ("RGBa", (0, 0, 0, 0), (10, 20, 30, 255), (10, 20, 30)),
        ("PA", (0, 0), (1, 255), (0, 0, 255)),
    ],
)
def test_to_rgb8_alpha_on_white(mode: str, transparent, opaque, want) -> None:
    img = Image.new(mode, (2, 1), transparent)
    if mode == "PA":
        img.putpalette([*RED, *BLUE])
    img.putpixel((1, 0), opaque)
    got = np.asarray(to_rgb8(img))
    assert tuple(got[0, 0]) == WHITE
    assert tuple(got[0, 1]) == want


def test_to_rgb8_half_alpha_blends_towards_white() -> None:
    got = np.asarray(to_rgb8(Image.new("RGBA", (1, 1), (0, 0, 0, 128))))
    assert np.abs(got.astype(int) - 127).max() <= 1


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_to_rgb8_transparency_key(mode: str) -> None:
    key = 7 if mode == "L" else (7, 7, 7)
    img = Image.new(mode, (2, 1), key)
    img.putpixel((1, 0), 90 if mode == "L" else (90, 90, 90))
    img.info["transparency"] = key
    got = np.asarray(to_rgb8(img))
    assert tuple(got[0, 0]) == WHITE and tuple(got[0, 1]) == (90, 90, 90)


@pytest.mark.parametrize(
    ("mode", "value", "want"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 33, (33, 33, 33)),
        ("CMYK", (0, 255, 255, 0), RED),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("HSV", (0, 255, 255), RED),
    ],
)
def test_to_rgb8_plain_modes(mode: str, value, want) -> None:
    got = to_rgb8(Image.new(mode, (2, 2), value))
    assert got.mode == "RGB"
    assert np.abs(np.asarray(got).astype(int) - want).max() <= 1


def test_to_rgb8_keeps_rgb() -> None:
    img = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb8(img) is img


# --- size limits and draft decoding


def test_bomb_is_small_on_disk_and_huge_in_header(bad_dir) -> None:
    folder, _ = bad_dir
    data = (folder / "bomb.png").read_bytes()
    assert len(data) < 64 * 1024
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == imagegen.BOMB_SIZE
    assert width * height > DEFAULT_MAX_PIXELS


def test_bomb_rejected_before_any_decoding(bad_dir, monkeypatch) -> None:
    folder, _ = bad_dir
    calls: list[str] = []

    def no_load(self: ImageFile.ImageFile) -> None:
        calls.append(self.format)
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    result = load_image(folder / "bomb.png")
    assert calls == []
    assert result.error.startswith("decompression bomb")
    assert "15000x15000" in result.error


def test_max_pixels_is_ours(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "64.png"
    Image.new("RGB", (64, 64), GREEN).save(path)
    assert load_image(path, max_pixels=64 * 64).error is None
    assert load_image(path, max_pixels=64 * 64 - 1).error.startswith("decompression bomb")
    # Pillow's global limit neither rejects (it would raise above 2 * 100 pixels) nor is left changed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).error is None
        assert load_image(tmp_path / "missing.png").error is not None
    assert Image.MAX_IMAGE_PIXELS == 100


def test_pil_globals_restored_under_threads(bad_dir) -> None:
    folder, expected = bad_dir
    before = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    small = [folder / name for name in expected if name not in ("huge.jpg", "bomb.png")] * 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(load_image, small))
    assert sum(r.ok for r in results) == 4 * sum(expected[p.name] for p in small[: len(small) // 4])
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.parametrize(
    ("size", "target", "want"),
    [
        ((800, 600), 100, (200, 150)),  # min(800 // 100, 600 // 100) = 6 -> scale 1/4
        ((800, 600), 75, (100, 75)),  # 8 -> 1/8
        ((800, 600), 300, (400, 300)),  # 2 -> 1/2
        ((800, 600), 400, (800, 600)),  # 1 -> full size
        ((800, 600), None, (800, 600)),
        ((601, 333), 41, (76, 42)),  # scale 1/8 rounds up: shorter side still >= target
    ],
)
def test_jpeg_draft_size(tmp_path: Path, size, target, want) -> None:
    path = tmp_path / "draft.jpg"
    Image.new("RGB", size, BLUE).save(path)
    result = load_image(path, target_size=target)
    assert result.image.size == want
    assert min(result.image.size) >= (target or 0)
    assert np.abs(pixels(result).astype(int) - BLUE).max() <= 3


def test_max_pixels_applies_after_draft(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), RED).save(path)
    assert load_image(path, target_size=100, max_pixels=200 * 150).error is None
    assert load_image(path, max_pixels=200 * 150).error.startswith("decompression bomb")


def test_draft_is_only_for_jpeg(bad_dir) -> None:
    folder, _ = bad_dir
    assert load_image(folder / "x.webp", target_size=7).image.size == (24, 24)  # 24 // (2 * 7) = 1: not reduced


def test_huge_jpeg_decodes_in_draft_mode(bad_dir) -> None:
    folder, _ = bad_dir
    before = Image.MAX_IMAGE_PIXELS
    w, h = imagegen.HUGE_SIZE
    assert before is not None and w * h > before  # Pillow alone would warn (or, if stricter, refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no DecompressionBombWarning
        result = load_image(folder / "huge.jpg", target_size=TARGET)
    assert result.image.size == (625, 563)  # 1/8 scale by libjpeg (1250x1125), then reduced by 1125 // 448 = 2
    assert (pixels(result) == 90).all()
    assert Image.MAX_IMAGE_PIXELS == before


# --- hostile files: non-regular files, size caps, extreme aspect ratios, odd names


@contextlib.contextmanager
def _refuse_opens(*paths: os.PathLike[str] | str) -> Iterator[None]:
    """Make any attempt to open one of ``paths`` raise (via the audit hook), before the open can block or stream."""
    names = {os.fsdecode(os.fspath(p)) for p in paths}
    _FORBIDDEN_OPENS.append(names)
    try:
        yield
    finally:
        _FORBIDDEN_OPENS.remove(names)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_fifo_is_reported_without_being_opened(tmp_path: Path) -> None:
    fifo = imagegen.make_fifo(tmp_path / "pipe.png")
    with _refuse_opens(fifo):  # a real open for reading would block this test forever
        result = load_image(fifo, target_size=TARGET)
    assert result.error == "cannot read file: not a regular file (FIFO)"
    assert result.image is None and result.sha256 is None
    assert imagegen.HOSTILE_ERRORS["fifo"] in result.error


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_link_is_reported_without_being_opened(tmp_path: Path) -> None:
    link = imagegen.make_device_link(tmp_path / "zero.jpg")
    with _refuse_opens(link, "/dev/zero"):  # a real read would never end
        result = load_image(link)
    assert result.error == "cannot read file: not a regular file (character device)"
    assert imagegen.HOSTILE_ERRORS["device"] in result.error


def test_bytes_read_are_capped(tmp_path: Path) -> None:
    assert DEFAULT_MAX_BYTES == 256 * 2**20
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64), RED).save(path)
    size = path.stat().st_size
    with _refuse_opens(path):  # decided from the size alone
        result = load_image(path, max_bytes=size - 1)
    assert result.error == f"file too large: {size} bytes, more than max_bytes={size - 1}"
    assert result.sha256 is None
    assert load_image(path, max_bytes=size).error is None
    with pytest.raises(ValueError, match="max_bytes"):
        load_image(path, max_bytes=0)


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="needs Linux /proc")
def test_bytes_read_are_capped_when_the_size_lies() -> None:
    # /proc files are regular files that report a size of 0: the cap must hold while reading too.
    assert os.stat("/proc/self/status").st_size == 0
    assert load_image("/proc/self/status", max_bytes=100).error.startswith("file too large: more than max_bytes=100")
    assert load_image("/proc/self/status").error.startswith("not an image")


_SKINNY_CHILD = r"""
import json, os, resource, sys
from PIL import Image
from embed.images import load_image

path, target = sys.argv[1], int(sys.argv[2])
if os.path.isfile("/proc/self/statm"):  # a ceiling, so that a regression fails here instead of swapping the machine
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2**30, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = load_image(path, target_size=target)
if result.ok:  # what every backbone transform does first: the shorter side resized to the target
    w, h = result.image.size
    scale = target / min(w, h)
    result.image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"error": result.error, "added_mb": added / 1024 if sys.platform != "darwin" else added / 2**20}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="measures peak memory with the resource module")
def test_skinny_png_costs_little_memory(tmp_path: Path) -> None:
    """A 277-byte 1x100000 PNG, decoded and resized as the embed runner does, in a fresh process (Pillow's C
    allocations are invisible to tracemalloc, so the peak resident size of the child is measured)."""
    path = imagegen.write_skinny_png(tmp_path / "skinny.png")
    assert path.stat().st_size < 300
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _SKINNY_CHILD, str(path), "256"], check=False, capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["error"] == ("extreme aspect ratio: 1x100000 is 1:100000, more than max_aspect_ratio=100; "
                                "crop or pad the image")
    assert imagegen.HOSTILE_ERRORS["skinny"] in outcome["error"]
    assert outcome["added_mb"] < 300


def test_aspect_ratio_limit(tmp_path: Path) -> None:
    assert DEFAULT_MAX_ASPECT_RATIO == 100
    wide = imagegen.write_skinny_png(tmp_path / "wide.png", 1000, 10)  # 100:1 is still a picture (a panorama)
    assert load_image(wide, target_size=TARGET).error is None
    assert load_image(wide, max_aspect_ratio=99).error.startswith("extreme aspect ratio: 1000x10 is 100:1")
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        load_image(wide, max_aspect_ratio=0.5)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "I;16"])
def test_large_images_are_reduced_towards_the_target(tmp_path: Path, mode: str) -> None:
    """Non-JPEG images much larger than the target come back box-reduced (Pillow's `reduce`, like JPEG draft),
    keeping the shorter side at least twice the target; colours, transparency and 16-bit scaling are kept."""
    path = tmp_path / f"big_{mode.replace(';', '')}.png"
    if mode == "RGBA":
        img, want = _halves_image("RGBA", (1000, 600), (200, 0, 0, 0), (10, 200, 30, 255)), (WHITE, (10, 200, 30))
    elif mode == "P":
        img = _halves_image("P", (1000, 600), 0, 1)
        img.putpalette([*RED, *GREEN] + [0, 0, 0] * 254)
        want = (RED, GREEN)
    elif mode == "I;16":
        img = Image.fromarray(np.full((600, 1000), 65535, dtype=np.uint16))
        want = (WHITE, WHITE)
    else:
        img = _halves_image("RGB", (1000, 600), RED, BLUE).convert(mode)
        want = tuple(_rgb(img.getpixel(xy)) for xy in ((0, 0), (999, 0)))
    img.save(path)
    result = load_image(path, target_size=100)
    assert result.image.size == (334, 200)  # 600 // (2 * 100) = 3: 1000x600 -> ceil(1000 / 3) x 200
    assert load_image(path, target_size=300).image.size == (1000, 600)  # 600 // 600 = 1: kept
    assert load_image(path).image.size == (1000, 600)
    got = pixels(result)
    if want is not None:
        assert (got[:, :160] == want[0]).all() and (got[:, 175:] == want[1]).all(), mode


def _rgb(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * 3


def _halves_image(mode: str, size: tuple[int, int], left: object, right: object) -> Image.Image:
    img = Image.new(mode, size, left)  # type: ignore[arg-type]
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))  # type: ignore[arg-type]
    return img


def test_odd_file_names_decode(tmp_path: Path) -> None:
    non_ascii, non_utf8 = imagegen.write_odd_names(tmp_path, value=60)
    assert non_ascii.name == imagegen.NON_ASCII_NAME
    assert os.fsencode(non_utf8.name) == imagegen.NON_UTF8_NAME  # surrogateescape maps back to the exact bytes
    for k, path in enumerate((non_ascii, non_utf8)):
        for form in (path, str(path), os.fsencode(path)):
            result = load_image(form)
            assert (pixels(result) == 60 + k).all(), form
            assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
