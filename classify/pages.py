"""Static HTML pages that open without a server or the suite: a page shell, tables and contact sheets (groups of
thumbnails with captions, written as small JPEG files beside the page and linked relatively).

Used by the failure report (:mod:`classify.report`); any list of images to show people (e.g. images to label next)
is a contact sheet: ``contact_sheet(groups, out)`` with one :class:`Group` per heading.
"""
from __future__ import annotations

import hashlib
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from store.atomic import atomic_write

log = logging.getLogger(__name__)

THUMB_SIDE = 128  # pixels of a thumbnail's longer side
THUMB_FOLDER = "thumbs"
MAX_SOURCE_BYTES = 64 * 2**20  # larger files are not opened for a thumbnail

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1em; margin: 1.2em 0 0.4em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
tr.weak td { background: #fff1f0; }
.heatmap { max-width: 100%; height: auto; border: 1px solid #eee; }
.sheet { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 136px; }
figure img { width: 128px; height: 128px; object-fit: contain; background: #f4f4f4; border: 1px solid #ddd;
             display: block; }
figcaption { font-size: 0.75em; color: #555; word-break: break-all; margin-top: 2px; }
p.caution { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.5em 0.8em; }
pre.command { background: #f4f4f4; padding: 0.4em 0.6em; overflow-x: auto; font-size: 0.85em; }
ol.steps li { margin-bottom: 0.6em; }
.missing { width: 128px; height: 128px; background: #fafafa; border: 1px dashed #ccc; color: #999;
           font-size: 0.75em; display: flex; align-items: center; justify-content: center; text-align: center; }
"""


@dataclass
class Group:
    """One heading of a contact sheet: ``images`` (source paths) shown with their ``captions``."""

    title: str
    images: Sequence[str | Path] = field(default_factory=list)
    captions: Sequence[str] = field(default_factory=list)
    note: str = ""


def esc(text) -> str:
    """``text`` safe inside HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def thumbnail(source: str | Path | None, out: str | Path, side: int = THUMB_SIDE) -> str | None:
    """Write a JPEG thumbnail of ``source`` into ``out/thumbs/`` and return its path relative to ``out``; None when
    the file cannot be read as an image (missing, too large, not an image) or is None (no file may be read: see
    :func:`store.paths.image_file`).

    Thumbnails are named by the sha256 of the file's bytes (and ``side``), so a file whose content changed gets a
    new thumbnail, and equal files share one; each is written whole or not at all, so a cached one is complete.
    """
    if source is None or str(source) == "":
        return None
    source = Path(source)
    try:
        if not source.is_file() or source.stat().st_size > MAX_SOURCE_BYTES:
            raise OSError("not a regular file of a readable size")
        with source.open("rb") as handle:
            content = handle.read(MAX_SOURCE_BYTES + 1)
        if len(content) > MAX_SOURCE_BYTES:
            raise OSError("not a regular file of a readable size")
    except OSError as err:
        log.warning("no thumbnail for %s: %s", source, err)
        return None
    key = hashlib.sha256(content)
    key.update(f"|{side}".encode())
    name = key.hexdigest()[:32] + ".jpg"
    target = Path(out) / THUMB_FOLDER / name
    if target.is_file():
        return f"{THUMB_FOLDER}/{name}"
    from embed.images import load_image  # the embedding's decoder: its limits, and transparency on white

    loaded = load_image(source, target_size=side)
    if not loaded.ok:
        log.warning("no thumbnail for %s: %s", source, loaded.error)
        return None
    picture = loaded.image
    picture.thumbnail((side, side))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        picture.save(tmp, "JPEG", quality=85)
    return f"{THUMB_FOLDER}/{name}"


def contact_sheet(groups: Sequence[Group], out: str | Path, level: int = 3) -> str:
    """HTML of ``groups``: per group a heading, an optional note and its thumbnails with captions (written under
    ``out/thumbs/``; images that cannot be read show their caption in an empty box)."""
    parts = []
    for group in groups:
        figures = []
        for source, caption in zip(group.images, group.captions):
            link = thumbnail(source, out)
            picture = (f'<img src="{esc(link)}" alt="{esc(caption)}" loading="lazy">' if link else
                       '<div class="missing">cannot be read</div>')
            figures.append(f"<figure>{picture}<figcaption>{esc(caption)}</figcaption></figure>")
        note = f'<p class="meta">{esc(group.note)}</p>' if group.note else ""
        parts.append(f"<h{level}>{esc(group.title)}</h{level}>{note}<div class=\"sheet\">{''.join(figures)}</div>")
    return "\n".join(parts)


def table(headers: Sequence[str], rows: Sequence[Sequence], row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; floats are shown with 3 decimals, ``row_classes`` sets each row's CSS class."""
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else esc(value)

    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def steps(title: str, items: Sequence[tuple[str, Sequence[str]]], intro: str = "") -> str:
    """An ordered list of what to do next: per step a sentence and the exact commands (each in its own box)."""
    parts = []
    for text, commands in items:
        boxes = "".join(f'<pre class="command">{esc(command)}</pre>' for command in commands)
        parts.append(f"<li>{esc(text)}{boxes}</li>")
    lead = f'<p class="meta">{esc(intro)}</p>' if intro else ""
    return f'<h2>{esc(title)}</h2>{lead}<ol class="steps">{"".join(parts)}</ol>'


def page(title: str, body: str, subtitle: str = "") -> str:
    """A whole HTML document: ``title``, an optional ``subtitle`` line and ``body`` (HTML), with the shared style."""
    sub = f'<p class="meta">{esc(subtitle)}</p>' if subtitle else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>\n"
            f"<body><h1>{esc(title)}</h1>{sub}\n{body}\n</body></html>\n")
