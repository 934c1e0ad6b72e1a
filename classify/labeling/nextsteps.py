"""What to do after ``suggest`` or ``audit``: the exact commands that put answers into the store and measure them, for
the end of their pages. Reads the store's backbones and data folder only (no scikit-learn)."""
from __future__ import annotations

import shlex

from store import FeatureStore

#: how answers reach the store, whichever way they are given
_RECORD = ("or write them in a CSV with columns id,label and record them in the store (a wrong batch is undone with "
           "--undo); or answer in the browser, one click per image:")


def _context(store: str, given_root: str | None) -> tuple[str, str]:
    """(data folder: ``--data-root`` or the store's, backbone specs joined by commas) as the commands take them,
    quoted for a shell."""
    with FeatureStore(store) as fs:
        root = given_root or fs.root
        specs = ",".join(fs.backbones)
    return (shlex.quote(str(root)) if root else "DATA"), shlex.quote(specs or "SPEC")


def _rerun_and_evaluate(store: str, data: str, specs: str, again: str) -> list[tuple[str, list[str]]]:
    s = shlex.quote(str(store))
    return [("If you moved files, update the store: labels and splits change, no image is embedded again.",
             [f"python -m embed run --data {data} --backbone {specs} --store {s}"]),
            ("See how the accuracy moved, then go again.", [f"python -m classify evaluate --store {s}", again])]


def suggest_steps(store: str, out: str, budget: int, given_root: str | None = None) -> list[tuple[str, list[str]]]:
    """The steps after ``suggest``: label the images, update the store, evaluate, ask for the next batch.

    Returns
    -------
    list of (sentence, [command, ...])
    """
    data, specs = _context(store, given_root)
    s = shlex.quote(str(store))
    label = (f"Label them: move each file into the folder of its class, {data}/train/<class>/ (the id says where "
             f"it is now); {_RECORD}")
    again = f"python -m classify suggest --store {s} --budget {budget} --out {shlex.quote(str(out))}"
    return [(label, [f"python -m store label --store {s} --labels answers.csv",
                     f"python -m classify label --store {s}"])] + _rerun_and_evaluate(store, data, specs, again)


def audit_steps(store: str, out: str, given_root: str | None = None) -> list[tuple[str, list[str]]]:
    """The steps after ``audit``: fix the wrong labels, update the store, evaluate, audit again.

    Returns
    -------
    list of (sentence, [command, ...])
    """
    data, specs = _context(store, given_root)
    s = shlex.quote(str(store))
    fix = (f"Look at each image above. Where its label is wrong, move the file into the folder of the right class, "
           f"{data}/train/<class>/; {_RECORD}")
    again = f"python -m classify audit --store {s} --out {shlex.quote(str(out))}"
    return [(fix, [f"python -m store label --store {s} --labels answers.csv",
                   f"python -m classify label --store {s}"])] + _rerun_and_evaluate(store, data, specs, again)
