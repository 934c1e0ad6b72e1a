"""classify.pages: thumbnails decode as the embedding decodes images (transparency on white, its limits), quietly."""
import warnings

import numpy as np
from PIL import Image

from classify.pages import thumbnail


def test_transparent_drawings_are_shown_on_white_as_the_embedding_sees_them(tmp_path):
    drawing = np.zeros((40, 40, 4), dtype=np.uint8)  # black, fully transparent
    drawing[10:30, 10:30] = (200, 0, 0, 255)  # an opaque red square
    Image.fromarray(drawing, "RGBA").save(tmp_path / "clipart.png")
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (10, 10, 30, 30))
    palette.info["transparency"] = bytes([0] + [255] * 255)  # index 0 transparent, given as bytes
    palette.save(tmp_path / "palette.png", transparency=bytes([0] + [255] * 255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's palette-transparency warning used to print under --quiet
        names = [thumbnail(tmp_path / name, tmp_path / "out") for name in ("clipart.png", "palette.png")]
    for name in names:
        pixels = np.asarray(Image.open(tmp_path / "out" / name).convert("RGB")).astype(int)
        assert pixels[:3, :3].mean() > 240  # the transparent corner is white (was black; JPEG blurs a little)
        assert pixels[pixels.shape[0] // 2, pixels.shape[1] // 2].min() < 150  # the drawing itself stays


def test_an_image_the_embedding_refuses_gets_no_thumbnail(tmp_path):
    Image.new("L", (1, 400), 0).save(tmp_path / "strip.png")  # 1:400, past the embedding's aspect-ratio limit
    (tmp_path / "empty.png").write_bytes(b"")
    assert thumbnail(tmp_path / "strip.png", tmp_path / "out") is None
    assert thumbnail(tmp_path / "empty.png", tmp_path / "out") is None
