"""``python -m X COMMAND --help`` answers without loading the heavy libraries (torch, scikit-learn, timm, ...): help is
read from docstrings and signatures, so it is printed in well under a second. Each CLI runs in a fresh interpreter
that asks every command of its overview for help and then lists which heavy modules were loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: modules that cost seconds to import (or pull in ones that do); help must need none of them
HEAVY = ("torch", "torchvision", "timm", "open_clip", "sklearn", "scipy", "cleanlab", "matplotlib", "pandas", "ray",
         "faiss", "transformers", "skops")
PROBE = r"""
import contextlib, io, json, runpy, sys

package, heavy = sys.argv[1], sys.argv[2].split(",")


def run(args):
    sys.argv = [package, *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_module(package, run_name="__main__", alter_sys=True)
    return out.getvalue()


overview = run(["--help"])
lines = overview.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
commands = [line.split()[0] for line in lines if line.startswith("  ")]
loaded = {}
for command in commands:
    text = run([command, "--help"])
    assert text.startswith(f"python -m {package} {command}"), text[:200]
    loaded[command] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("package", ["classify", "embed", "store", "benchmarks"])
def test_help_loads_no_heavy_library(package):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PROBE, package, ",".join(HEAVY)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(loaded) >= 1 and (package != "classify" or {"finetune", "fit", "audit", "suggest"} <= set(loaded))
    first = {command: modules for command, modules in loaded.items() if modules}
    assert not first, f"`python -m {package} COMMAND --help` imported {first} (each list holds the earlier commands')"


def test_finetune_help_defaults_are_the_recipes():
    import inspect

    from classify.cli.finetune import FURTHER_OPTIONS, finetune
    from classify.finetune import finetune as recipe

    shown = set(inspect.signature(finetune).parameters) | {"callback"}
    expected = {name: p.default for name, p in inspect.signature(recipe).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in shown}
    assert FURTHER_OPTIONS == expected
