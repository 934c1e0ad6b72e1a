"""The machinery every command line of the suite shares (``python -m embed``, ``classify``, ``store``, ``benchmarks``):
:func:`run_cli` (help drawn from numpydoc, logging flags, unknown-flag suggestions, one-line errors and exit 2),
:func:`parse_numpydoc`, :func:`command_help`, :func:`as_list`, :func:`progress_bars`. It lives in ``store`` because
every package imports ``store`` and no other package."""
from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable

import fire
from store.validation import UserError, close_matches, did_you_mean


def as_list(value) -> list[str]:
    """fire turns ``a,b`` into a tuple; accept that, a list, or a comma-separated string (commas inside
    parentheses do not split: ``selftrain(teacher=conse,rounds=2),knn`` is two items)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    items, depth, current = [], 0, ""
    for char in str(value):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


# ------------------------------------------------------------------------------------------ numpydoc and --help
@dataclass
class Param:
    """One entry of a numpydoc ``Parameters`` section."""

    name: str
    type: str
    text: str


@dataclass
class Docstring:
    """A numpydoc docstring split into its parts (see :func:`parse_numpydoc`)."""

    summary: str = ""
    description: str = ""
    params: dict[str, Param] = field(default_factory=dict)  # "Parameters" and "Other Parameters", by name
    other: list[str] = field(default_factory=list)  # names from "Other Parameters", in order
    sections: dict[str, str] = field(default_factory=dict)  # every other section's text, by title


_PARAM_SECTIONS = ("Parameters", "Other Parameters")


def parse_numpydoc(doc: str | None) -> Docstring:
    """Parse a numpydoc docstring: summary, description, parameters (one :class:`Param` per name) and sections.

    A grouped entry (``a, b : int``) gives each name its own :class:`Param` with the shared text; ``**params``
    is keyed ``**params``. Sections are found by their underline of dashes; text before the first is the
    description (its first paragraph the summary).
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    blocks: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            blocks.append((lines[i].strip(), []))
            i += 2
            continue
        blocks[-1][1].append(lines[i])
        i += 1
    result = Docstring()
    intro = "\n".join(blocks[0][1]).strip()
    paragraphs = re.split(r"\n\s*\n", intro) if intro else []
    result.summary = " ".join(paragraphs[0].split()) if paragraphs else ""
    result.description = "\n\n".join(paragraphs[1:])
    for title, body in blocks[1:]:
        if title not in _PARAM_SECTIONS:
            result.sections[title] = textwrap.dedent("\n".join(body)).strip()
            continue
        current: list[Param] = []
        for line in textwrap.dedent("\n".join(body)).splitlines():
            if line.strip() and not line[0].isspace():  # "names : type" or "names"
                names, _, kind = line.partition(" : ")
                current = [Param(name.strip(), kind.strip(), "") for name in names.split(",") if name.strip()]
                for param in current:
                    result.params[param.name] = param
                    if title == "Other Parameters":
                        result.other.append(param.name)
            elif current:
                for param in current:
                    param.text = (param.text + " " + line.strip()).strip()
    return result


def flag_name(name: str) -> str:
    """The flag users type for a parameter: ``batch_size`` -> ``--batch-size`` (``json_output`` is ``--json``)."""
    return "--json" if name == "json_output" else "--" + name.replace("_", "-")


def wrap_paragraph(text: str, indent: int, width: int = 100) -> str:
    """``text`` as one paragraph of ``width`` columns, reST literals (````x````) and roles (``:class:`x```) shown as
    `x`."""
    return textwrap.fill(plain(text), width=width, initial_indent=" " * indent, subsequent_indent=" " * indent)


def plain(text: str) -> str:
    """Docstring text for a terminal: one line, reST literals (````x````) and roles (``:class:`x```) as `x`."""
    text = re.sub(r"``([^`]+)``", r"`\1`", " ".join(text.split()))
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)


def _flag_item(name: str, default, text: str, required: bool, boolean: bool = False) -> str:
    """One flag of a help screen: the flag line (booleans in fire's ``--x/--nox`` form), then its text, indented."""
    flag = flag_name(name)
    if boolean or isinstance(default, bool):
        head = flag if name == "json_output" else f"{flag}/--no{name.replace('_', '-')}"
        shown = None if name == "json_output" or default is None else (flag if default else
                                                                       f"--no{name.replace('_', '-')}")
    else:
        head = f"{flag} {name.upper()}"
        shown = None if default is None else str(default)
    notes = ["required"] if required else ([f"default: {shown}"] if shown is not None else [])
    return f"  {head}" + (f"  ({'; '.join(notes)})" if notes else "") + "\n" + wrap_paragraph(text, 6)


COMMON_FLAGS = (("--quiet", "Warnings and errors only: no progress messages or bars."),
                ("--log-level LEVEL", "debug, info (the default), warning or error."),
                ("--help, -h", "This help."))


def command_help(title: str, fn: Callable, extra: dict[str, tuple] | None = None) -> str:
    """The ``--help`` screen of one command: ``title`` (the command users type), usage, description, one entry per
    flag of ``fn``'s signature with its own docstring text and default, the shared flags, and the docstring's
    ``Examples`` section last.

    ``extra`` maps names of further options (accepted through ``**kwargs``) to ``(default, text)``; parameters the
    docstring lists under ``Other Parameters`` without an ``extra`` entry are shown with their text.
    """
    doc = parse_numpydoc(fn.__doc__)
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    varkw = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    required = [p.name for p in params if p.default is p.empty]
    usage = " ".join([title] + [f"{flag_name(n)} {n.upper()}" for n in required] + ["[flags]"]
                     + (["[--PARAMETER VALUE ...]"] if varkw else []))
    parts = [f"{title}: {plain(doc.summary)}", "usage: " + usage]
    if doc.description:
        parts.append("\n\n".join(wrap_paragraph(p, 0) for p in doc.description.split("\n\n")))
    items = []
    for p in params:
        entry = doc.params.get(p.name)
        items.append(_flag_item(p.name, None if p.default is p.empty else p.default, entry.text if entry else "",
                                p.default is p.empty, re.search(r"\bbool\b", str(p.annotation)) is not None))
    parts.append("flags:\n" + "\n".join(items))
    if required:
        parts.append(wrap_paragraph(f"Required values may also be given in order, without their flags "
                                    f"({title} {' '.join(n.upper() for n in required)}).", 0))
    extra = dict(extra or {})
    for name in doc.other:
        extra.setdefault(name, (None, ""))
    if extra:
        other = [_flag_item(n, default, doc.params[n].text if n in doc.params else text, False,
                            "bool" in (doc.params[n].type if n in doc.params else ""))
                 for n, (default, text) in extra.items()]
        parts.append("further options:\n" + "\n".join(other))
    if varkw and f"**{varkw}" in doc.params:
        entry = doc.params[f"**{varkw}"]
        parts.append(f"{entry.type or varkw}:\n" + wrap_paragraph(entry.text, 2))
    parts.append("flags of every command:\n" + "\n".join(f"  {f}\n{wrap_paragraph(t, 6)}" for f, t in COMMON_FLAGS))
    if "Examples" in doc.sections:
        parts.append("examples:\n" + textwrap.indent(doc.sections["Examples"], "  "))
    return "\n\n".join(parts) + "\n"


def overview(name: str, commands: dict) -> str:
    """The screen of ``python -m PACKAGE`` alone (or ``--help``): every command with its summary."""
    width = max(len(c) for c in commands) + 2
    lines = [f"usage: {name} COMMAND [flags]   ({name} COMMAND --help for a command's flags and examples)", "",
             "commands:"]
    lines += [f"  {c:{width}s}{plain(parse_numpydoc(fn.__doc__).summary)}" for c, fn in commands.items()]
    lines += ["", "flags of every command:"] + [f"  {f}\n{wrap_paragraph(t, 6)}" for f, t in COMMON_FLAGS]
    return "\n".join(lines) + "\n"


HELP_FLAGS = ("--help", "-h")


def check_known_flags(fn: Callable, args: list[str], title: str) -> None:
    """Refuse a ``--flag`` that ``fn`` does not take, with a did-you-mean; a command that takes ``**kwargs`` (method
    parameters) refuses only a near-miss of one of its own flags that is not given (``--shot 3``, ``--methd``).

    fire would run the command with the flags it knows and complain about the rest only afterwards: a mistyped flag
    of ``embed run`` would cost a whole run with the default value.
    """
    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())  # method parameters
    known = [name for name, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    typed = {flag_name(k)[2:].replace("-", "_"): k for k in known}  # json -> json_output
    given = {arg[2:].partition("=")[0].replace("-", "_") for arg in args if arg.startswith("--")}
    for arg in args:
        if arg == "--":
            return
        if not arg.startswith("--"):
            continue
        name = arg[2:].partition("=")[0].replace("-", "_")
        if name in known or name.startswith("no") and name[2:] in known:
            continue
        if takes_any:  # may be a method parameter: refuse only a near-miss of a command flag not given (--shot 3)
            close = [c for c in close_matches(name, list(typed), n=1, cutoff=0.8) if c not in given]
            if close:
                hint = flag_name(typed[close[0]])
                raise UserError(f"{title} has no flag {arg.partition('=')[0]}: did you mean {hint}? "
                                f"see `{title} --help`")
            continue
        hint = did_you_mean(name, list(typed), show=lambda c: flag_name(typed[c]))
        raise UserError(f"{title} has no flag {arg.partition('=')[0]}: {hint}see `{title} --help`")


#: the spellings of a boolean value users bring from argparse / click habits (``--flag=false``, ``--flag no``)
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def normalize_flags(fn: Callable, args: list[str]) -> list[str]:
    """Boolean flags in the spellings users bring from other tools, rewritten to fire's: ``--no-x`` / ``--no_x`` ->
    ``--nox``; ``--x=false`` and ``--x false`` (true/false, yes/no, on/off, 1/0, any case) -> ``--nox`` / ``--x``.
    A flag is boolean when the command's parameter defaults to True or False."""
    booleans = {flag_name(name)[2:].replace("-", "_"): name for name, p in inspect.signature(fn).parameters.items()
                if isinstance(p.default, bool)}
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name.startswith("no_") and name[3:] in booleans and not eq:
            out.append(f"--no{booleans[name[3:]]}")
            continue
        if name not in booleans:
            out.append(arg)
            continue
        if not eq and i < len(args) and args[i].lower() in BOOL_WORDS:  # --x false
            value, eq = args[i], "="
            i += 1
        if eq and value.lower() not in BOOL_WORDS:
            flag = flag_name(booleans[name])
            raise UserError(f"{flag} is a yes/no flag: give {flag} or --no-{flag[2:]}, not {value!r}")
        out.append(f"--{booleans[name]}" if not eq or BOOL_WORDS[value.lower()] else f"--no{booleans[name]}")
    return out


def _logging_flags(argv: list[str]) -> tuple[list[str], int | None, bool]:
    """Take ``--quiet`` and ``--log-level LEVEL`` (or ``--log-level=LEVEL``) out of ``argv``."""
    rest, level, quiet = [], None, False
    args = iter(argv)
    for arg in args:
        if arg == "--":  # fire's separator: what follows is not ours
            rest += [arg, *args]
            break
        if arg == "--quiet":
            quiet = True
            continue
        if arg.replace("_", "-").split("=")[0] == "--log-level":
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            numeric = logging.getLevelName(value.upper())
            if not isinstance(numeric, int) or value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise UserError(f"--log-level must be debug, info, warning or error, got {value!r}")
            level = numeric
            continue
        rest.append(arg)
    return rest, level, quiet


@contextlib.contextmanager
def _logging(level: int, quiet: bool):
    """The root logger at ``level`` for one command (restored after, as tests run many); ``quiet`` also turns off
    tqdm's bars (its ``TQDM_DISABLE`` setting)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    root = logging.getLogger()
    before, tqdm_before = root.level, os.environ.get("TQDM_DISABLE")
    root.setLevel(level)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        root.setLevel(before)
        if quiet:
            os.environ.pop("TQDM_DISABLE", None) if tqdm_before is None else os.environ.update(TQDM_DISABLE=tqdm_before)


def progress_bars(progress: bool) -> bool:
    """Whether a command shows its progress bars: its ``--progress`` flag, off under ``--quiet`` (which sets tqdm's
    own ``TQDM_DISABLE``; tqdm applies it only to bars created without an explicit ``disable``)."""
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true")


def _display(lines, out) -> None:
    """fire's screens written as they are: no pager (fire would start ``less`` on a terminal)."""
    out.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def _fire_output(name: str, command: str | None):
    """fire's own output for one run: screens without a pager, and its usage errors (a missing value, a flag it
    cannot consume) as one line naming the help command, like the suite's other errors."""
    def display_error(trace) -> None:
        message = trace.elements[-1].ErrorAsStr() if trace.elements else "cannot run the command"
        print(f"error: {message}; see `{name}{' ' + command if command else ''} --help`", file=sys.stderr)

    saved = fire.core.Display, getattr(fire.core, "_DisplayError", None)
    fire.core.Display = _display
    if saved[1] is not None:
        fire.core._DisplayError = display_error
    try:
        yield
    finally:
        fire.core.Display = saved[0]
        if saved[1] is not None:
            fire.core._DisplayError = saved[1]


#: OSErrors about a path or a disk the user chose (errno -> the fix): the CLIs print them as one line
PATH_ERRORS = {
    getattr(errno, "EDQUOT", errno.ENOSPC): "free some of your disk quota or write elsewhere",  # not on Windows
    errno.ENOSPC: "free some space on that disk or write elsewhere",
    errno.EFBIG: "write to another file system",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EISDIR: "pass a file path, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def path_error(err: OSError) -> str | None:
    """One line for an OSError about a user's path or disk (full, read-only, a folder for a file ...), naming the
    path and the fix; None for any other OSError (a bug keeps its traceback)."""
    path = err.filename2 or err.filename  # a rename names the file it replaces second
    if err.errno not in PATH_ERRORS or not path:
        return None
    name = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return f"{name}: {err.strerror or os.strerror(err.errno)}; {PATH_ERRORS[err.errno]}"


def run_cli(commands: dict, argv: list[str] | None = None, name: str = "python -m store",
            extras: dict[str, Callable[[], dict]] | None = None) -> None:
    """Run a fire CLI: ``--help`` screens written by :func:`command_help` (no pager), ``--quiet`` /
    ``--log-level``, user errors as one line on stderr and exit status 2: :class:`UserError`, FileNotFoundError and
    the OSErrors of :func:`path_error` (a full disk, a read-only folder, a folder given for a file).

    Parameters
    ----------
    commands : dict
        Command name -> function; each function's numpydoc docstring is its help.
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).
    name : str
        What users type before the command (``python -m classify``): the title of help screens and fire's usage.
    extras : dict, optional
        Command name -> a function returning that command's further options for its help (see
        :func:`command_help`).
    """
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]  # fire parses values from their text
    try:
        argv, level, quiet = _logging_flags(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    command = argv[0] if argv and argv[0] in commands else None
    wants_help = any(a in HELP_FLAGS for a in argv)
    if not argv or wants_help and command is None and argv[0] in HELP_FLAGS:
        sys.stdout.write(overview(name, commands))
        return
    if wants_help and command is not None:
        extra = (extras or {}).get(command)
        sys.stdout.write(command_help(f"{name} {command}", commands[command], extra() if extra else None))
        return
    # fire has no flag aliases; accept the conventional --json spelling.
    argv = ["--json_output" if a == "--json" else "--nojson_output" if a == "--nojson" else a for a in argv]
    try:
        if command is not None:
            argv = [command] + normalize_flags(commands[command], argv[1:])
            check_known_flags(commands[command], argv[1:], f"{name} {command}")
        with _fire_output(name, command), _logging(level if level is not None else logging.WARNING if quiet
                                                   else logging.INFO, quiet):
            fire.Fire(commands, command=argv, name=name)
    except (UserError, FileNotFoundError) as err:  # anything else is a bug: its traceback stays
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # a full disk, a read-only folder ...: the path and the fix; other OSErrors are bugs
        line = path_error(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
