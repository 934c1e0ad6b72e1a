"""`--help` of every command of every CLI: each flag with its own description, examples last, the command's name as
users type it, no pager; `--quiet` / `--log-level`; `classify list --params`; did-you-mean for method parameters."""
from __future__ import annotations

import inspect
import logging
import os
import re

import pytest
from PIL import Image

import classify.cli
import classify.cli.commands
import embed.cli
import store.cli
import store.clitools
from store.clitools import flag_name, parse_numpydoc

CLIS = {"python -m embed": (embed.cli.main, {"run": embed.cli.run}),
        "python -m classify": (classify.cli.main, classify.cli.COMMANDS),
        "python -m store": (store.cli.main, {"info": store.cli.info, "import-shards": store.cli.import_shards,
                                             "export": store.cli.export})}
CASES = [(prefix, name) for prefix, (_, commands) in CLIS.items() for name in commands]


def flag_entries(text: str) -> dict[str, str]:
    """``{--flag: description}`` from the flag lists of a help screen (a flag line, then its indented text)."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"  (--[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = ""
        elif line.startswith("      ") and current:
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return entries


@pytest.fixture(autouse=True)
def no_pager(monkeypatch):
    """A pager would block a test: make any call of one fail loudly instead."""
    import fire.console.console_io

    def refuse(*args, **kwargs):
        raise AssertionError("a pager was started")

    monkeypatch.setattr(fire.console.console_io, "More", refuse)
    monkeypatch.setenv("PAGER", "false")


@pytest.mark.parametrize("prefix, name", CASES)
def test_every_flag_has_its_own_description_and_examples_end_the_help(prefix, name, capsys):
    main, commands = CLIS[prefix]
    main([name, "--help"])
    text = capsys.readouterr().out
    assert text.startswith(f"{prefix} {name}: "), text[:80]  # the command users type, not __main__.py
    assert "__main__" not in text
    entries = flag_entries(text)
    fn = commands[name]
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        flag = flag_name(param.name)
        assert flag in entries, f"{prefix} {name}: {flag} missing from --help"
        assert entries[flag], f"{prefix} {name}: {flag} has no description"
    descriptions = [d for f, d in entries.items() if f not in ("--quiet", "--log-level", "--help")]
    duplicated = {d for d in descriptions if descriptions.count(d) > 1}
    assert not duplicated, f"{prefix} {name}: flags share a description: {duplicated}"
    sections = text.split("\n\n")
    examples = [line.strip() for line in text.split("\nexamples:\n")[-1].splitlines() if line.strip()]
    assert sections[-1].startswith("examples:") and 2 <= len(examples) <= 3
    assert all(line.startswith(f"{prefix} {name}") for line in examples)
    for flag in ("--quiet", "--log-level", "--help"):
        assert flag in entries


def test_booleans_are_shown_in_fires_flag_noflag_form(capsys):
    classify.cli.main(["fit", "--help"])
    entries = flag_entries(capsys.readouterr().out)
    assert "--transductive" in entries and "--notransductive" not in entries
    text = "\n".join(entries)
    assert "--offline" in text
    classify.cli.main(["fit", "-h"])
    assert "--transductive/--notransductive  (default: --transductive)" in capsys.readouterr().out


def test_finetune_help_lists_its_further_options_with_the_recipes_defaults(capsys):
    from classify.finetune import finetune as recipe

    classify.cli.main(["finetune", "--help"])
    text = capsys.readouterr().out
    further = flag_entries(text.split("further options:")[1].split("\n\n")[0])
    for name, param in inspect.signature(recipe).parameters.items():
        command = inspect.signature(classify.cli.COMMANDS["finetune"]).parameters
        if param.kind is param.KEYWORD_ONLY and name not in command and name != "callback":
            assert flag_name(name) in further and further[flag_name(name)], name
    assert f"--patience PATIENCE  (default: {inspect.signature(recipe).parameters['patience'].default})" in text


@pytest.mark.parametrize("prefix", list(CLIS))
def test_the_package_alone_lists_its_commands(prefix, capsys):
    main, commands = CLIS[prefix]
    main([])
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {prefix} COMMAND")
    for name in commands:
        assert re.search(rf"^  {name} +\S", text, re.M), name
    main(["--help"])
    assert capsys.readouterr().out == text


def test_fire_usage_on_errors_names_the_command(capsys):
    with pytest.raises(SystemExit):
        classify.cli.main(["fit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "`python -m classify fit --help`" in err[0]



def test_a_mistyped_flag_is_refused_before_the_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:  # fire would embed the demo first, then complain
        embed.cli.main(["run", "--batchsize", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: python -m embed run has no flag --batchsize: did you mean --batch-size, --shard-size, "
                   "--image-size? see `python -m embed run --help`")
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        store.cli.main(["info", "x.h5", "--jsn"])
    assert "did you mean --json?" in capsys.readouterr().err


def test_parse_numpydoc_splits_grouped_parameters_and_sections():
    doc = parse_numpydoc('''Summary line
    goes on.

    More text.

    Parameters
    ----------
    a, b : int, default=1
        Shared text
        on two lines.
    c
        No type.
    **params : extras
        Anything.

    Examples
    --------
    run it
    ''')
    assert doc.summary == "Summary line goes on." and doc.description == "More text."
    assert (doc.params["a"].type, doc.params["b"].text) == ("int, default=1", "Shared text on two lines.")
    assert doc.params["c"].text == "No type." and doc.params["**params"].type == "extras"
    assert doc.sections["Examples"] == "run it"


def test_list_params_shows_each_parameter_with_default_and_meaning(capsys):
    classify.cli.main(["list", "--params", "selftrain"])
    text = capsys.readouterr().out
    entries = flag_entries(text)
    from classify.methods.selftrain import SelfTraining

    defaults = SelfTraining().get_params(deep=False)
    assert set(entries) == {flag_name(n) for n in defaults}
    assert all(entries.values())
    assert "--threshold  (float; default: 0.98)" in text
    assert "Fixed threshold" in entries["--threshold"]
    assert list(entries)[:2] == ["--teacher", "--head"]  # the signature's order



@pytest.mark.parametrize("method", sorted(classify.methods.registry.available()))
def test_every_method_parameter_has_a_meaning_of_its_own(method):
    # moe's --unlabeled printed an empty line, and --gate / --expert one shared text, before this test
    text = classify.cli.commands.method_parameters(method)
    entries = flag_entries(text)
    defaults = classify.methods.registry.get(method)().get_params(deep=False)
    assert set(entries) == {flag_name(n) for n in defaults}
    assert all(entries.values()) and "(not documented)" not in text, [f for f, t in entries.items() if not t]
    shared = [f for f in entries if list(entries.values()).count(entries[f]) > 1]
    assert not shared, f"{method}: flags with the same description: {shared}"

def test_list_params_of_an_unknown_method_suggests(capsys):
    with pytest.raises(SystemExit) as exit_info:
        classify.cli.main(["list", "--params", "selftrian"])
    assert exit_info.value.code == 2
    assert "did you mean selftrain" in capsys.readouterr().err


def test_create_suggests_close_parameter_names():
    from classify.methods.registry import create

    with pytest.raises(ValueError, match=r"no parameter 'thresold': did you mean threshold"):
        create("selftrain", thresold=0.5)
    with pytest.raises(ValueError, match=r"its parameters: k, weights"):
        create("knn", zzz=1)


def test_quiet_and_log_level(capsys, caplog):
    caplog.set_level(logging.NOTSET)
    seen = {}

    def probe() -> None:
        """Record the logging level.

        Examples
        --------
        probe
        probe --quiet
        """
        seen["level"] = logging.getLogger().level
        logging.getLogger("probe").info("an info line")

    for args, level in ((["probe"], logging.INFO), (["probe", "--quiet"], logging.WARNING),
                        (["probe", "--log-level", "debug"], logging.DEBUG), (["--log-level=error", "probe"],
                                                                              logging.ERROR)):
        store.clitools.run_cli({"probe": probe}, args, name="t")
        assert seen["level"] == level, args
    before = logging.getLogger().level
    store.clitools.run_cli({"probe": probe}, ["probe", "--quiet"], name="t")
    assert logging.getLogger().level == before  # restored for the next command in the same process
    with pytest.raises(SystemExit) as exit_info:
        store.clitools.run_cli({"probe": probe}, ["probe", "--log-level", "loud"], name="t")
    assert exit_info.value.code == 2 and "--log-level must be" in capsys.readouterr().err


def test_quiet_turns_off_the_progress_bars_of_embed_run(tmp_path, monkeypatch):
    import embed.engines.local

    (tmp_path / "train/cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train/cat/a.png")
    seen = []

    class Stop(Exception):
        pass

    def fake_embed(*args, progress, **kwargs):
        seen.append(progress)
        raise Stop

    monkeypatch.setattr(embed.cli, "check_backbones", lambda specs, offline=None: None)
    monkeypatch.setattr(embed.engines.local, "embed", fake_embed)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    for extra in ([], ["--quiet"]):
        with pytest.raises(Stop):
            embed.cli.main(["run", "--data", str(tmp_path), "--backbone", "timm:x", "--store",
                            str(tmp_path / "s.h5"), *extra])
    assert seen == [True, False]
    assert "TQDM_DISABLE" not in os.environ  # restored after the command


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["evaluate", "--help"], ["suggest", "--help"],
                                  ["audit", "--help"]])
def test_classify_help_loads_no_scikit_learn(argv):
    """--help reads docstrings and signatures only: the methods (scikit-learn, scipy, faiss) load on first use, so a
    help screen is quick (it took ~4 s when every method was imported first)."""
    import subprocess
    import sys

    code = ("import sys; from classify.cli import main; main(%r); "
            "assert 'sklearn' not in sys.modules and 'torch' not in sys.modules, 'heavy import'" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert "usage:" in done.stdout


def _benchmark_commands() -> dict:
    import benchmarks.active
    import benchmarks.audit
    import benchmarks.cli as cli

    return {"embed": cli.embed, "ray": cli.ray, "run": cli.run, "finetune": cli.finetune,
            "labelprop-scale": cli.labelprop_scale, "active": benchmarks.active.active, "audit": benchmarks.audit.audit}


@pytest.mark.parametrize("name", ["embed", "ray", "run", "finetune", "labelprop-scale", "active", "audit"])
def test_every_benchmark_command_describes_every_flag(name, capsys):
    import benchmarks.cli

    benchmarks.cli.main([name, "--help"])
    entries = flag_entries(capsys.readouterr().out)
    for param in inspect.signature(_benchmark_commands()[name]).parameters.values():
        if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            flag = flag_name(param.name)
            assert entries.get(flag), f"python -m benchmarks {name}: {flag} has no description"
