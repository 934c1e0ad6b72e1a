"""Robust image decoding: one call per file, never raises for a bad file.

`load_image` reads a file's bytes once, hashes them, decodes them from memory and returns an 8-bit RGB
``PIL.Image`` with EXIF orientation applied, or a one-line ``error`` saying why the file could not be used.
It is meant to run inside DataLoader worker processes, so it keeps no open files and returns picklable values.

What Pillow already does is used as is (format sniffing, EXIF transpose, JPEG draft decoding, mode
conversions). Written by hand, each with its reason at the spot:

- only regular files are opened (a FIFO would block the open, ``/dev/zero`` would stream forever), and at most
  ``max_bytes`` are read;
- the decompression-bomb limit is ours (``max_pixels``, applied after JPEG draft reduction) instead of
  Pillow's global ``Image.MAX_IMAGE_PIXELS``, which is checked before draft and would reject large photos
  that decode cheaply at a reduced scale;
- extreme aspect ratios are refused (``max_aspect_ratio``): a 277-byte 1x100000 PNG decodes cheaply, but the
  caller's resize of its shorter side to the input size would allocate gigabytes;
- with ``target_size``, images much larger than it are box-reduced right after decoding (Pillow's ``reduce``,
  what JPEG draft does inside libjpeg), so conversions and the caller's resize work on small pixels;
- 16-bit and 32-bit greyscale are *scaled* to 8 bits (Pillow's ``convert`` clips them to 255);
- float images are scaled (Pillow's ``convert`` clips them);
- transparency is composited on white (Pillow's ``convert("RGB")`` drops alpha, leaving whatever colour
  the transparent pixels happen to store, often black).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from store.validation import Int, Is, UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: The largest square input side: one 4096 px image is already 3 x 4096 x 4096 float32 = 201 MB of input (times the
#: batch size, and again in the first feature maps), and every image, however small, is resized up to it before the
#: model sees it; 12000 px would be 1.7 GB per image, and 20000 px (400 M pixels) is more than the decoder's own
#: decompression-bomb limit. Common backbones stop at 1024 px (timm's eva02, beit); 4096 leaves room above them.
MAX_IMAGE_SIZE = 4096
#: What ``image_size`` (``--image-size``) may be: the one rule the command lines and :func:`load_backbone` check.
IMAGE_SIZE = Is(Int(8, MAX_IMAGE_SIZE).accepts,
                f"an int in [8, {MAX_IMAGE_SIZE}] (pixels per side: one {MAX_IMAGE_SIZE} px input is already "
                f"{3 * 4 * MAX_IMAGE_SIZE**2 // 10**6} MB of float32 per image, a larger side costs gigabytes)")

# Pillow decoders we let loose on untrusted bytes. Content is sniffed (a PNG named .jpg decodes fine), but
# only among these: others (EPS runs Ghostscript, and many rarely-used plugins) are not worth the risk.
# (Multi-picture JPEGs, "MPO", come in through the JPEG opener.)
DECODE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Same number as Pillow's hard limit (2 * its default MAX_IMAGE_PIXELS, 2 * 89_478_485): anything Pillow
# would open by default we open too, but the check is applied to the pixels actually decoded.
DEFAULT_MAX_PIXELS: int = 178_956_970
# Larger files are refused unread: several times the largest camera files (tens of MB); only huge
# uncompressed scans (TIFF, BMP) exceed it, and callers can raise it for those.
DEFAULT_MAX_BYTES: int = 256 * 2**20
# Longest side / shortest side. 100:1 keeps panoramas and long screenshots; resizing the shorter side of a
# 100:1 image to 256 pixels makes 6.6 M pixels (20 MB), while a 1:100000 strip would make 6.6 G pixels.
DEFAULT_MAX_ASPECT_RATIO: int = 100
# With target_size, an image is box-reduced by the largest integer factor that keeps its shorter side at
# least REDUCING_GAP * target_size: the trade-off of Pillow's own `resize(reducing_gap=2.0)`, close to
# resampling the full image, and the full-size pixels are freed before any conversion copies them.
REDUCING_GAP: int = 2
# Modes that `Image.reduce` averages correctly (LA/RGBA through premultiplied alpha); others (palette
# indices, 16-bit, CMYK, transparency keys) are converted to RGB first, then reduced.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
_READ_CHUNK = 2**20

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
# Modes whose single-colour transparency key (PNG tRNS, GIF transparent index) `convert("RGBA")` honours.
_KEYED_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})
# What Pillow's decoders raise on bad bytes. Anything else is still reported per file, but logged loudly
# because it more likely means a bug (ours or Pillow's) than a bad file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class LoadedImage:
    """The outcome of loading one image file.

    Attributes
    ----------
    image : PIL.Image.Image or None
        8-bit RGB image with EXIF orientation applied; None when the file failed.
    sha256 : str or None
        Hex SHA-256 of the file's bytes; None only when the bytes could not be read.
    error : str or None
        One-line human-readable reason for the failure, e.g. ``"truncated image: image file is truncated"``;
        None when the image loaded.
    """

    image: Image.Image | None
    sha256: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        """True when the image decoded (``error is None``)."""
        return self.error is None


class _BombError(Exception):
    """Raised internally when an image's decoded size would exceed ``max_pixels``."""


class _AspectError(Exception):
    """Raised internally when an image's sides differ by more than ``max_aspect_ratio``."""


# Pillow checks every image opened against the module global Image.MAX_IMAGE_PIXELS (warning above it,
# DecompressionBombError above twice it), *before* JPEG draft reduction. We enforce our own `max_pixels`
# after draft instead, so Pillow's check is switched off while one of our loads runs and restored when the
# last concurrent load ends. Pillow offers no per-call limit, so this is the narrowest scope available; the
# lock and counter keep it correct when loads run in several threads of one process. For the same reason
# ImageFile.LOAD_TRUNCATED_IMAGES is forced off (someone else may have switched it on): truncated files must
# fail here, not come back half grey.
_PIL_GLOBALS_LOCK = threading.Lock()
_pil_globals_users = 0
_pil_globals_saved: tuple[int | None, bool] = (None, False)


@contextlib.contextmanager
def _our_pixel_limit() -> Iterator[None]:
    global _pil_globals_users, _pil_globals_saved
    with _PIL_GLOBALS_LOCK:
        if _pil_globals_users == 0:
            _pil_globals_saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _pil_globals_users += 1
    try:
        yield
    finally:
        with _PIL_GLOBALS_LOCK:
            _pil_globals_users -= 1
            if _pil_globals_users == 0:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _pil_globals_saved


def load_image(
    path: str | bytes | os.PathLike[str],
    *,
    target_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> LoadedImage:
    """Read, hash and decode one image file into 8-bit RGB.

    Never raises for a per-file problem (unreadable, not a regular file, too large, empty, not an image,
    truncated, corrupt, too many pixels, extreme aspect ratio, unsupported mode): every such failure is
    returned as ``error``.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The image file; a str holding ``surrogateescape`` characters (how Python shows names that are not
        UTF-8) reaches the same bytes again. Symlinks are followed; anything but a regular file (FIFO,
        device, socket, directory) fails without being opened. Its bytes are read exactly once; decoding
        works on an in-memory copy.
    target_size : int, optional
        The smallest side the caller will resize to. When given, JPEGs are decoded by libjpeg at a reduced
        scale (1/2, 1/4 or 1/8) that still leaves both sides >= ``target_size``, and images whose shorter side
        is at least ``2 * REDUCING_GAP * target_size`` are box-reduced by an integer factor that keeps it
        >= ``REDUCING_GAP * target_size``. The returned image is not resized further.
    max_pixels : int, default DEFAULT_MAX_PIXELS
        Largest ``width * height`` that will be decoded (after JPEG draft reduction). Larger images fail with
        a "decompression bomb" error, decided from the header before any pixel memory is allocated.
    max_bytes : int, default DEFAULT_MAX_BYTES
        Largest file that will be read; larger ones fail with "file too large", unread when their size says
        so, else as soon as the read passes the limit.
    max_aspect_ratio : float, default DEFAULT_MAX_ASPECT_RATIO
        Largest ``longer side / shorter side``, decided from the header. Resizing the shorter side of an
        extreme strip to a backbone's input size would cost gigabytes; such images fail with
        "extreme aspect ratio".

    Returns
    -------
    LoadedImage
        ``image`` (RGB, EXIF orientation applied) and ``sha256`` on success; ``error`` otherwise.

    Raises
    ------
    ValueError
        If ``target_size``, ``max_pixels`` or ``max_bytes`` is not a positive integer, or ``max_aspect_ratio``
        is below 1 (a caller bug, not a file problem).
    TypeError
        If ``path`` is not a str, bytes or os.PathLike.
    """
    if target_size is not None and (not isinstance(target_size, int) or target_size <= 0):
        raise UserError(f"target_size must be a positive integer or None, got {target_size!r}")
    for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(max_aspect_ratio, (int, float)) or not max_aspect_ratio >= 1:
        raise UserError(f"max_aspect_ratio must be a number >= 1, got {max_aspect_ratio!r}")
    path = os.fspath(path)  # TypeError for non-paths; an int would otherwise be opened as a file descriptor

    try:
        data = _read_regular_file(path, max_bytes)
    except _NotReadable as exc:
        return _failed(path, None, str(exc))
    except OSError as exc:
        return _failed(path, None, f"cannot read file: {exc.strerror or exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return _failed(path, sha256, "empty file")

    try:
        with _our_pixel_limit():
            image = _decode(data, target_size=target_size, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    except Exception as exc:  # noqa: BLE001 - every per-file failure becomes `error`, by contract
        expected = isinstance(exc, (_BombError, _AspectError, *_DECODE_ERRORS))
        log.log(logging.DEBUG if expected else logging.WARNING, "decoding %s failed", path, exc_info=True)
        return _failed(path, sha256, _describe(exc))
    return LoadedImage(image=image, sha256=sha256, error=None)


class _NotReadable(Exception):
    """A file refused before (or while) reading it; the text is the whole one-line error."""


_FILE_KINDS = (
    (stat.S_ISDIR, None),  # reported with the OS's own words, "Is a directory"
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _check_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    for test, kind in _FILE_KINDS:
        if test(mode):
            if kind is None:
                raise _NotReadable(f"cannot read file: {os.strerror(errno.EISDIR)}")
            raise _NotReadable(f"cannot read file: not a regular file ({kind})")
    raise _NotReadable("cannot read file: not a regular file")


def _read_regular_file(path: str | bytes, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises `_NotReadable` or OSError otherwise."""
    # stat (following symlinks) before opening: opening a FIFO for reading blocks until a writer comes, and
    # opening a device can have effects of its own, so anything but a regular file is never opened.
    info = os.stat(path)
    _check_regular(info.st_mode)
    if info.st_size > max_bytes:
        raise _NotReadable(f"file too large: {info.st_size} bytes, more than max_bytes={max_bytes}")
    # The name may have been swapped for a FIFO since the stat: a non-blocking open cannot hang on one, and
    # fstat of what was actually opened decides.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        _check_regular(info.st_mode)
        # One read sized by fstat (one allocation of the right size), then chunks while more keeps coming (a
        # file that grew, or /proc files that report size 0): never more than max_bytes + 1 bytes in memory.
        chunks = [f.read(min(info.st_size, max_bytes) + 1)]
        total = len(chunks[0])
        while chunks[-1] and total <= max_bytes:
            chunks.append(f.read(min(_READ_CHUNK, max_bytes + 1 - total)))
            total += len(chunks[-1])
    if total > max_bytes:
        raise _NotReadable(f"file too large: more than max_bytes={max_bytes} bytes read")
    return chunks[0] if total == len(chunks[0]) else b"".join(chunks)  # no copy in the usual case


def _failed(path: str | bytes, sha256: str | None, message: str) -> LoadedImage:
    message = " ".join(message.split())  # one line, whatever the exception text held
    log.debug("cannot load %s: %s", path, message)
    return LoadedImage(image=None, sha256=sha256, error=message)


def _describe(exc: BaseException) -> str:
    """Turn a decoding exception into a one-line message with a stable prefix."""
    if isinstance(exc, _BombError):
        return f"decompression bomb: {exc}"
    if isinstance(exc, Image.DecompressionBombError):  # not expected while our limit is active
        return f"decompression bomb: {exc}"
    if isinstance(exc, _AspectError):
        return f"extreme aspect ratio: {exc}"
    if isinstance(exc, UnidentifiedImageError):
        # Pillow's text names the BytesIO object and its address; say something useful instead.
        return f"not an image: content is not a recognised {'/'.join(DECODE_FORMATS)} image"
    if isinstance(exc, MemoryError):
        return f"out of memory while decoding: {exc}"
    text = str(exc) or type(exc).__name__
    if "truncat" in text.lower() or isinstance(exc, EOFError):
        return f"truncated image: {text}"
    if not isinstance(exc, (OSError, SyntaxError, ValueError)):
        text = f"{type(exc).__name__}: {text}"  # e.g. a bare KeyError's text is just the key
    return f"corrupt image: {text}"


def _decode(data: bytes, *, target_size: int | None, max_pixels: int, max_aspect_ratio: float) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    if target_size is not None:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale with both sides still >= target_size; a no-op elsewhere.
        img.draft("RGB", (target_size, target_size))
    width, height = img.size  # from the header (reduced by draft); nothing decoded yet
    if width * height > max_pixels:
        raise _BombError(f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}")
    if max(width, height) > max_aspect_ratio * max(min(width, height), 1):
        ratio = f"{max(width, height) / max(min(width, height), 1):.1f}".removesuffix(".0")
        ratio = f"1:{ratio}" if height > width else f"{ratio}:1"
        raise _AspectError(f"{width}x{height} is {ratio}, more than max_aspect_ratio={max_aspect_ratio:g}; "
                           "crop or pad the image")
    img.load()  # the first frame of animated images
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no second full-size copy of the pixels
    except Exception:  # noqa: BLE001 - a damaged EXIF block should not cost us intact pixels
        log.warning("ignoring unreadable EXIF orientation", exc_info=True)
    factor = min(img.size) // (REDUCING_GAP * target_size) if target_size is not None else 1
    if factor < 2:
        return to_rgb8(img)
    if img.mode in _REDUCIBLE_MODES and "transparency" not in img.info:
        return to_rgb8(img.reduce(factor))  # before the conversions, which would copy the full-size pixels
    return to_rgb8(img).reduce(factor)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Parameters
    ----------
    img : PIL.Image.Image
        Any mode. Alpha (``LA``, ``PA``, ``RGBA``, premultiplied ``La``/``RGBa``) and single-colour
        transparency keys (``P``, ``L``, ``RGB`` with ``info["transparency"]``) are composited on white.
        16-bit greyscale (``I;16*``) is scaled, ``v -> round(v / 257)``, so 65535 -> 255. ``I`` (32-bit int)
        is scaled the same way when its values lie in 0..65535 (how Pillow stores 16-bit sources), else
        min-max stretched. ``F`` (float) values in [0, 1] are multiplied by 255, values in [0, 255] kept,
        anything else min-max stretched; NaN becomes 0. Everything else goes through ``convert("RGB")``.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``; ``img`` itself when it already is.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(np.asarray(img), mode), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in _KEYED_TRANSPARENCY_MODES and "transparency" in img.info):
        if mode == "La":  # Pillow has no La -> RGBA conversion, only La -> LA
            img = img.convert("LA")
        with warnings.catch_warnings():  # Pillow advises converting palette transparency to RGBA: this is that
            warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
            rgba = img.convert("RGBA")
        # alpha_composite is exact at the ends: alpha 0 gives pure white, alpha 255 the pixel itself.
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE + (255,)), rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale one-channel integer or float pixels to uint8 (Pillow's `convert` would clip instead)."""
    if mode in _SIXTEEN_BIT_MODES:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257), exact on 0..65535
    if mode == "I":
        if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 65535):
            return ((arr.astype(np.int64) + 128) // 257).astype(np.uint8)
        return _stretch(arr.astype(np.float64))
    values = arr.astype(np.float64)  # mode "F"
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = finite.min(), finite.max()
    if lo >= 0 and hi <= 1:
        scaled = values * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = values
    else:
        return _stretch(values)
    return np.rint(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).clip(0, 255)).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max stretch finite values to 0..255; NaN and -inf become 0, +inf 255."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = finite.min(), finite.max()
    span = hi - lo if hi > lo else 1.0
    scaled = (values - lo) * (255.0 / span)
    return np.rint(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).clip(0, 255)).astype(np.uint8)
