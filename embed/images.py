"""Robust image decoding: one call per file, never raises for a bad file.

`load_image` reads a file's bytes once, hashes them, decodes them from memory and returns an 8-bit RGB
``PIL.Image`` with EXIF orientation applied, or a one-line ``error`` saying why the file could not be used.
It is meant to run inside DataLoader worker processes, so it keeps no open files and returns picklable values.

What Pillow already does is used as is (format sniffing, EXIF transpose, JPEG draft decoding, mode
conversions). Written by hand, each with its reason at the spot:

- the decompression-bomb limit is ours (``max_pixels``, applied after JPEG draft reduction) instead of
  Pillow's global ``Image.MAX_IMAGE_PIXELS``, which is checked before draft and would reject large photos
  that decode cheaply at a reduced scale;
- 16-bit and 32-bit greyscale are *scaled* to 8 bits (Pillow's ``convert`` clips them to 255);
- float images are scaled (Pillow's ``convert`` clips them);
- transparency is composited on white (Pillow's ``convert("RGB")`` drops alpha, leaving whatever colour
  the transparent pixels happen to store, often black).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Pillow decoders we let loose on untrusted bytes. Content is sniffed (a PNG named .jpg decodes fine), but
# only among these: others (EPS runs Ghostscript, and many rarely-used plugins) are not worth the risk.
# (Multi-picture JPEGs, "MPO", come in through the JPEG opener.)
DECODE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Same number as Pillow's hard limit (2 * its default MAX_IMAGE_PIXELS, 2 * 89_478_485): anything Pillow
# would open by default we open too, but the check is applied to the pixels actually decoded.
DEFAULT_MAX_PIXELS: int = 178_956_970

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
) -> LoadedImage:
    """Read, hash and decode one image file into 8-bit RGB.

    Never raises for a per-file problem (unreadable, empty, not an image, truncated, corrupt, too large,
    unsupported mode): every such failure is returned as ``error``.

    Parameters
    ----------
    path : str or os.PathLike
        The image file. Its bytes are read exactly once; decoding works on an in-memory copy.
    target_size : int, optional
        The smallest side the caller will resize to. When given, JPEGs are decoded by libjpeg at a reduced
        scale (1/2, 1/4 or 1/8) that still leaves both sides >= ``target_size``; other formats decode at
        full size. The returned image is not resized further.
    max_pixels : int, default DEFAULT_MAX_PIXELS
        Largest ``width * height`` that will be decoded (after JPEG draft reduction). Larger images fail with
        a "decompression bomb" error, decided from the header before any pixel memory is allocated.

    Returns
    -------
    LoadedImage
        ``image`` (RGB, EXIF orientation applied) and ``sha256`` on success; ``error`` otherwise.

    Raises
    ------
    ValueError
        If ``target_size`` or ``max_pixels`` is not a positive integer (a caller bug, not a file problem).
    TypeError
        If ``path`` is not a str, bytes or os.PathLike.
    """
    if target_size is not None and (not isinstance(target_size, int) or target_size <= 0):
        raise ValueError(f"target_size must be a positive integer or None, got {target_size!r}")
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    path = os.fspath(path)  # TypeError for non-paths; an int would otherwise be opened as a file descriptor

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return _failed(path, None, f"cannot read file: {exc.strerror or exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return _failed(path, sha256, "empty file")

    try:
        with _our_pixel_limit():
            image = _decode(data, target_size=target_size, max_pixels=max_pixels)
    except Exception as exc:  # noqa: BLE001 - every per-file failure becomes `error`, by contract
        expected = isinstance(exc, (_BombError, *_DECODE_ERRORS))
        logger.log(logging.DEBUG if expected else logging.WARNING, "decoding %s failed", path, exc_info=True)
        return _failed(path, sha256, _describe(exc))
    return LoadedImage(image=image, sha256=sha256, error=None)


def _failed(path: str | bytes, sha256: str | None, message: str) -> LoadedImage:
    message = " ".join(message.split())  # one line, whatever the exception text held
    logger.debug("cannot load %s: %s", path, message)
    return LoadedImage(image=None, sha256=sha256, error=message)


def _describe(exc: BaseException) -> str:
    """Turn a decoding exception into a one-line message with a stable prefix."""
    if isinstance(exc, _BombError):
        return f"decompression bomb: {exc}"
    if isinstance(exc, Image.DecompressionBombError):  # not expected while our limit is active
        return f"decompression bomb: {exc}"
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


def _decode(data: bytes, *, target_size: int | None, max_pixels: int) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    if target_size is not None:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale with both sides still >= target_size; a no-op elsewhere.
        img.draft("RGB", (target_size, target_size))
    width, height = img.size  # from the header (reduced by draft); nothing decoded yet
    if width * height > max_pixels:
        raise _BombError(f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}")
    img.load()  # the first frame of animated images
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no second full-size copy of the pixels
    except Exception:  # noqa: BLE001 - a damaged EXIF block should not cost us intact pixels
        logger.warning("ignoring unreadable EXIF orientation", exc_info=True)
    return to_rgb8(img)


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
