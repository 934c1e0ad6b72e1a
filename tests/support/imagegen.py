"""Generators of good and bad image files for tests.

`write_good_images` writes small random-content RGB images (smooth colour fields) in every supported format.

`write_bad_inputs` writes one file per tricky kind and returns ``{filename: expected_ok}`` for
``embed.images.load_image`` with its default ``max_pixels`` (``target_size`` given or not).

Expected to FAIL (``expected_ok`` False; `BAD_INPUT_ERRORS` holds a substring of each error):

=====================  ==========================================================================
zero_byte.jpg          empty file
not_an_image.jpg       plain text named .jpg
truncated.jpg          a JPEG cut in half
truncated.png          a PNG cut in half
bomb.png               1-bit PNG header of 15000x15000 (225 M pixels) with a ~30 KB zlib payload
unreadable.jpg         a broken symlink (-> ``missing``): unreadable even for root
=====================  ==========================================================================

Expected to load (``expected_ok`` True), with the RGB result the tests check:

=========================  ===========================================================================
cmyk.jpg                   solid red stored as CMYK, 16x16 -> about (255, 0, 0)
gray_l.png                 mode L, value 77 -> (77, 77, 77)
palette_p.png              mode P: left half red, right half green
palette_transparent.png    mode P + tRNS: left half transparent black -> white, right half blue
gray_alpha_la.png          mode LA: left half L=0 alpha=0 -> white, right half L=50 opaque -> (50, 50, 50)
rgba.png                   left half (200, 0, 0) alpha 0 -> white, right half (10, 200, 30) opaque
gray16.png, gray16.tif     16-bit grey, each row 0, 256, 32768, 65535 -> 0, 1, 128, 255
bilevel_1bit.png           mode 1 checkerboard -> 0 / 255
float32.tif                mode F, each row 0.0, 0.25, 0.5, 1.0 -> 0, 64, 128, 255
exif_rotated.jpg           stored 40x20, left half red, right half blue, EXIF Orientation 6
                           -> 20x40, top half red, bottom half blue
huge.jpg                   10000x9000 solid grey (above Pillow's 89 M-pixel warning limit); decodes
                           quickly with ``target_size`` (JPEG draft) -> 1250x1125 at target_size=224;
                           without it decodes fully (about 0.4 s and 360 MB for the decode)
anim.gif                   3 frames red, green, blue -> the first, (255, 0, 0)
png_named.jpg              PNG bytes named .jpg (content is sniffed)
x.webp, x.bmp, x.tif       random content, lossless
=========================  ===========================================================================

Hostile files a real folder contains, one generator each, to compose into folders (a split-folder layout, a CSV):

- `skinny_png_bytes` / `write_skinny_png`: a 277-byte 1x100000 PNG; cheap to decode, but resizing its shorter
  side to a backbone's input size would allocate gigabytes (`load_image` refuses it: "extreme aspect ratio");
- `write_odd_names`: a valid PNG under a non-ASCII name and one under a name whose bytes are not UTF-8;
- `make_link_loop`: a directory symlink to an ancestor (``train/zero/up -> ..``);
- `make_fifo`: a named pipe with an image's name (opening it for reading would block);
- `make_device_link`: an image-named symlink to a character device such as ``/dev/zero`` (endless bytes).

`HOSTILE_ERRORS` holds a substring of the error `load_image` reports for each kind. `write_hostile_folder`
composes them all into one split-folder layout and says what each file should become.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_EXTENSIONS: tuple[str, ...] = (".jpg", ".png", ".webp", ".bmp", ".tif", ".jpeg", ".gif", ".tiff")
LOSSLESS_EXTENSIONS: frozenset[str] = frozenset({".png", ".webp", ".bmp", ".tif", ".tiff"})

BOMB_SIZE: tuple[int, int] = (15000, 15000)
HUGE_SIZE: tuple[int, int] = (10000, 9000)
EXIF_STORED_SIZE: tuple[int, int] = (40, 20)
SIXTEEN_BIT_ROW: tuple[int, ...] = (0, 256, 32768, 65535)
SIXTEEN_BIT_EXPECTED: tuple[int, ...] = (0, 1, 128, 255)
FLOAT_ROW: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
FLOAT_EXPECTED: tuple[int, ...] = (0, 64, 128, 255)

BAD_INPUT_ERRORS: dict[str, str] = {
    "zero_byte.jpg": "empty file",
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "bomb.png": "decompression bomb",
    "unreadable.jpg": "No such file or directory",
}

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

SKINNY_SIZE: tuple[int, int] = (1, 100000)
# A name outside ASCII (NFC, as typed), and raw bytes that are not UTF-8 (Latin-1 "\xe9" and a stray "\xff").
NON_ASCII_NAME: str = "Bo\u00eblle \u00e9t\u00e9 \u753b\u50cf.png"
NON_UTF8_NAME: bytes = b"bad \xe9t\xe9\xff.png"

HOSTILE_ERRORS: dict[str, str] = {
    "skinny": "extreme aspect ratio",
    "fifo": "not a regular file",
    "device": "not a regular file",
}


def _random_rgb(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def _save(img: Image.Image, path: Path, **params: object) -> None:
    if path.suffix.lower() == ".webp":
        params.setdefault("lossless", True)
    img.save(path, **params)


def good_pixels(index: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """The pixels `write_good_images` writes as image number `index`: ``(size, size, 3)`` uint8.

    Smooth random colour fields (a random 4x4 grid, bilinearly upsampled) rather than white noise: they
    survive JPEG well and differ from one another as pictures, not only as noise.
    """
    grid = np.random.default_rng([seed, index]).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid, mode="RGB").resize((size, size), Image.Resampling.BILINEAR))


def write_good_images(folder: str | os.PathLike[str], n: int, size: int = 32, seed: int = 0) -> list[Path]:
    """Write `n` small random-content RGB images, cycling through `GOOD_EXTENSIONS`.

    Parameters
    ----------
    folder : str or os.PathLike
        Created if missing.
    n : int
        Number of images.
    size : int, default 32
        Width and height in pixels.
    seed : int, default 0
        Same seed, same pixels: image ``i`` holds ``good_pixels(i, size, seed)``.

    Returns
    -------
    list of pathlib.Path
        ``good_000.jpg``, ``good_001.png``, ... in order. PNG, BMP, TIFF and WebP (lossless) keep the pixels
        exactly; JPEG and GIF (256-colour palette) do not.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"good_{i:03d}{GOOD_EXTENSIONS[i % len(GOOD_EXTENSIONS)]}"
        _save(Image.fromarray(good_pixels(i, size, seed), mode="RGB"), path)
        paths.append(path)
    return paths


def _halves(mode: str, size: tuple[int, int], left: object, right: object) -> Image.Image:
    img = Image.new(mode, size, left)  # type: ignore[arg-type]
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))  # type: ignore[arg-type]
    return img


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def png_bomb_bytes(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width x height`` black pixels; ~1/1000 of its raw size on disk.

    Written by hand because Pillow would have to allocate the whole image to save it.
    """
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then all-zero pixels
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    parts = [compressor.compress(row * min(rows_per_block, height - y)) for y in range(0, height, rows_per_block)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def write_bad_inputs(folder: str | os.PathLike[str]) -> dict[str, bool]:
    """Write one file per tricky kind (see the module docstring) into `folder`.

    Parameters
    ----------
    folder : str or os.PathLike
        Created if missing; existing files of the same names are replaced.

    Returns
    -------
    dict of str to bool
        ``{filename: expected_ok}`` for `embed.images.load_image` with default ``max_pixels``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    out: dict[str, bool] = {}

    def put(name: str, ok: bool) -> Path:
        out[name] = ok
        return folder / name

    # --- expected failures
    put("zero_byte.jpg", False).write_bytes(b"")
    put("not_an_image.jpg", False).write_bytes(b"this is plain text, not a JPEG\n" * 4)
    for ext, fmt in ((".jpg", "JPEG"), (".png", "PNG")):
        path = put(f"truncated{ext}", False)
        _save(_random_rgb(rng, 64), path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    put("bomb.png", False).write_bytes(png_bomb_bytes(*BOMB_SIZE))
    link = put("unreadable.jpg", False)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("missing")  # relative target that does not exist: open() fails, even for root

    # --- expected successes
    Image.new("RGB", (16, 16), RED).convert("CMYK").save(put("cmyk.jpg", True), quality=95)
    Image.new("L", (8, 6), 77).save(put("gray_l.png", True))

    pal = _halves("P", (8, 6), 0, 1)
    pal.putpalette([*RED, *GREEN] + [0, 0, 0] * 254)
    pal.save(put("palette_p.png", True))
    pal = _halves("P", (8, 6), 0, 1)
    pal.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
    pal.save(put("palette_transparent.png", True), transparency=0)

    _halves("LA", (8, 6), (0, 0), (50, 255)).save(put("gray_alpha_la.png", True))
    _halves("RGBA", (8, 6), (200, 0, 0, 0), (10, 200, 30, 255)).save(put("rgba.png", True))

    gray16 = Image.fromarray(np.tile(np.array(SIXTEEN_BIT_ROW, dtype=np.uint16), (3, 1)))  # mode I;16
    gray16.save(put("gray16.png", True))
    gray16.save(put("gray16.tif", True))
    checker = (np.indices((6, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checker).convert("1").save(put("bilevel_1bit.png", True))  # fromarray(bool) mispacks bits
    Image.fromarray(np.tile(np.array(FLOAT_ROW, dtype=np.float32), (3, 1)), mode="F").save(put("float32.tif", True))

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    _halves("RGB", EXIF_STORED_SIZE, RED, BLUE).save(put("exif_rotated.jpg", True), exif=exif.tobytes(), quality=95)

    # Grey, not RGB: a third of the pixels to allocate and encode, same header size for the test.
    Image.new("L", HUGE_SIZE, 90).save(put("huge.jpg", True), quality=50)

    frames = [Image.new("RGB", (16, 16), color) for color in (RED, GREEN, BLUE)]
    frames[0].save(put("anim.gif", True), save_all=True, append_images=frames[1:], duration=100, loop=0)

    _random_rgb(rng, 24).save(put("png_named.jpg", True), format="PNG")
    for ext in (".webp", ".bmp", ".tif"):
        _save(_random_rgb(rng, 24), put(f"x{ext}", True))
    return out


def skinny_png_bytes(width: int = SKINNY_SIZE[0], height: int = SKINNY_SIZE[1]) -> bytes:
    """A valid 8-bit greyscale PNG of ``width x height`` mid-grey pixels (277 bytes at the default 1x100000).

    Decoding it costs ``width * height`` bytes; what costs gigabytes is what comes next: every backbone transform
    first resizes the shorter side to its input size, here 1 -> 256 pixels and 100000 -> 25.6 million.
    """
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_skinny_png(path: str | os.PathLike[str], width: int = SKINNY_SIZE[0], height: int = SKINNY_SIZE[1]) -> Path:
    """Write `skinny_png_bytes` to ``path`` (parents created) and return it as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(skinny_png_bytes(width, height))
    return path


def write_odd_names(folder: str | os.PathLike[str], value: int = 60) -> list[Path]:
    """Write a 4x4 grey PNG under `NON_ASCII_NAME` and one under `NON_UTF8_NAME` into `folder`.

    The second name is created from bytes; Python shows it with ``surrogateescape`` (``"bad \\udce9t..."``) and
    ``open`` of that str reaches exactly the same bytes again.

    Returns
    -------
    list of pathlib.Path
        The two files, in that order. Pixel value ``value`` in the first, ``value + 1`` in the second.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / NON_ASCII_NAME, Path(os.fsdecode(os.path.join(os.fsencode(folder), NON_UTF8_NAME)))]
    for k, path in enumerate(paths):
        Image.new("RGB", (4, 4), (value + k,) * 3).save(path, format="PNG")
    return paths


def make_link_loop(folder: str | os.PathLike[str], name: str = "up", target: str = "..") -> Path:
    """A directory symlink ``folder/name -> target`` (default: the parent, so walking links never ends)."""
    link = Path(folder) / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link


def make_fifo(path: str | os.PathLike[str]) -> Path:
    """A named pipe at ``path`` (parents created). Opening it for reading blocks until a writer comes.

    Raises
    ------
    NotImplementedError
        Where the platform has no ``os.mkfifo`` (Windows); tests should skip.
    """
    if not hasattr(os, "mkfifo"):
        raise NotImplementedError("named pipes need os.mkfifo (POSIX)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def make_device_link(path: str | os.PathLike[str], device: str = "/dev/zero") -> Path:
    """A symlink ``path -> device`` (parents created): reading it never ends (``/dev/zero``) or blocks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(device)
    return path


HOSTILE_CLASSES: tuple[str, ...] = ("one", "zero")  # sorted folder names: "one" is class 0


def write_hostile_folder(root: str | os.PathLike[str], size: int = 32) -> dict[str, tuple[str, int, str | None]]:
    """A split-folder layout (``train/<class>/``, ``unlabeled/``, ``test/<class>/``) holding every hostile kind.

    Good images (``good_pixels``) in every split; in ``train/one/`` and ``unlabeled/`` the two `write_odd_names`
    files; in ``unlabeled/`` the skinny PNG, a FIFO (``pipe.png``, where ``os.mkfifo`` exists) and a link to
    ``/dev/zero`` (``zero.jpg``, where it exists); a loop ``train/zero/up -> ..``; a phantom class link
    ``train/again -> zero``; and beside the splits a CSV ``conflicts.csv`` (header ``file_name,class``) listing
    ``unlabeled/u0.png`` twice with different labels, which `embed.sources.from_csv` must refuse.

    Returns
    -------
    dict of str to (str, int, str or None)
        Every id `embed.sources.from_folder` must list, exactly these and once each: ``(split, label, error)``
        with ``label`` an index into `HOSTILE_CLASSES` (-1 unknown) and ``error`` None for a file that decodes,
        else a substring of the error `embed.images.load_image` reports.
    """
    root = Path(root)
    want: dict[str, tuple[str, int, str | None]] = {}
    k = 0
    for split, folder, label, n in (("train", "train/one", 0, 3), ("train", "train/zero", 1, 3),
                                    ("unlabeled", "unlabeled", -1, 2), ("test", "test/one", 0, 1),
                                    ("test", "test/zero", 1, 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{folder}/{'u' if split == 'unlabeled' else 'g'}{i}.png"
            Image.fromarray(good_pixels(k, size), mode="RGB").save(root / name)
            want[name] = (split, label, None)
            k += 1
    for folder, split, label in (("train/one", "train", 0), ("unlabeled", "unlabeled", -1)):
        for path in write_odd_names(root / folder):
            want[f"{folder}/{path.name}"] = (split, label, None)
    write_skinny_png(root / "unlabeled/skinny.png")
    want["unlabeled/skinny.png"] = ("unlabeled", -1, HOSTILE_ERRORS["skinny"])
    if hasattr(os, "mkfifo"):
        make_fifo(root / "unlabeled/pipe.png")
        want["unlabeled/pipe.png"] = ("unlabeled", -1, HOSTILE_ERRORS["fifo"])
    if os.path.exists("/dev/zero"):
        make_device_link(root / "unlabeled/zero.jpg")
        want["unlabeled/zero.jpg"] = ("unlabeled", -1, HOSTILE_ERRORS["device"])
    make_link_loop(root / "train/zero", "up", "..")
    make_link_loop(root / "train", "again", "zero")
    (root / "conflicts.csv").write_text("file_name,class\nunlabeled/u0.png,one\nunlabeled/u1.png,zero\n"
                                        "unlabeled/u0.png,zero\n")
    return want
