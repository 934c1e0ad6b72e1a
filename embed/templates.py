"""Prompt templates for CLIP zero-shot text embeddings: format strings with exactly one ``{}`` for the class name."""
from __future__ import annotations

import functools
from pathlib import Path

from store.validation import UserError

__all__ = ["default_templates", "load_templates", "check_template"]


def _dedupe(templates) -> list[str]:
    return list(dict.fromkeys(templates))


@functools.cache
def _defaults() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES  # imports open_clip: only when asked for

    return tuple(_dedupe(["a photo of a {}.", "a stylized {}."] + [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]))


def default_templates() -> list[str]:
    """'a photo of a {}.', 'a stylized {}.' and open_clip's SIMPLE_IMAGENET_TEMPLATES (lambdas there, recovered as
    format strings by calling each with ``"{}"``), in that order, without duplicates. Importing open_clip costs
    seconds, so only a run of a backbone with a text side asks for them."""
    return list(_defaults())


def check_template(template: str) -> str:
    """Return ``template`` if it contains exactly one ``{}`` and formats cleanly, else raise ``ValueError``."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise UserError(
            f"prompt template {template!r} must contain exactly one '{{}}' where the class name goes, "
            "e.g. 'a photo of a {}.'"
        )
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as err:
        raise UserError(
            f"prompt template {template!r} is not a valid format string ({err}); "
            "write literal braces as '{{' and '}}'"
        ) from None
    return template


def load_templates(path: str | Path) -> list[str]:
    """Read prompt templates from a text file, one per line.

    Blank lines and lines starting with ``#`` are skipped; surrounding whitespace is stripped; duplicates are dropped
    (first occurrence kept).

    Parameters
    ----------
    path : str or Path
        UTF-8 text file.

    Returns
    -------
    list of str
        The templates, in file order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a line does not contain exactly one ``{}`` (the message names the line) or the file has no templates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template file {path} not found; give a text file with one template per line")
    templates = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            templates.append(check_template(line))
        except ValueError as err:
            raise UserError(f"{path}:{lineno}: {err}") from None
    if not templates:
        raise UserError(f"template file {path} has no templates; write one per line, e.g. 'a photo of a {{}}.'")
    return _dedupe(templates)
