"""``python -m classify``: the front ends of the classify commands. Each module parses flags, calls the library and
prints; the work happens in the library modules (:mod:`classify.pipeline`, :mod:`classify.evaluation`, ...).

- :mod:`classify.cli.commands`: fit, predict, evaluate, report, list
- :mod:`classify.cli.labels`: suggest, audit
- :mod:`classify.cli.finetune`: finetune
- :mod:`classify.cli.label`: label (the browser app)
"""
from __future__ import annotations

from classify.cli.commands import evaluate, fit, list_methods, predict, report
from classify.cli.finetune import finetune, finetune_options
from classify.cli.label import label
from classify.cli.labels import audit, suggest
from store.clitools import run_cli

COMMANDS = {"fit": fit, "predict": predict, "evaluate": evaluate, "report": report, "list": list_methods,
            "finetune": finetune, "suggest": suggest, "audit": audit, "label": label}


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m classify`` with ``argv`` (default: the process's arguments)."""
    run_cli(COMMANDS, argv, name="python -m classify", extras={"finetune": finetune_options})
