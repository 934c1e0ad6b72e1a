"""A model file received from someone else costs memory in proportion to what it holds: zip bombs, one array member
fanned out to many objects, a huge schema and a crowded directory are refused, with one line, before skops reads
anything (skops reads every array member while it lists a file's types, before the allow-list check)."""
import subprocess
import sys

import crafted_models
import numpy as np
import pytest
import skops.io

from classify import persist, pipeline
from classify.cli import main
from synthstore import A, make_store

MiB = 2**20


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "s.h5")[0]


@pytest.fixture
def skops_untouched(monkeypatch):
    """Fail the test if skops reads the file: the refusal must come first."""
    def read(*args, **kwargs):
        raise AssertionError("skops read a hostile file before it was refused")

    monkeypatch.setattr(skops.io, "get_untrusted_types", read)
    monkeypatch.setattr(skops.io, "load", read)


HOSTILE = {
    "deflate bomb": (lambda p: crafted_models.deflate_bomb(p, 64 * MiB), "unpacks to 64.0 MiB"),
    "fan-out": (lambda p: crafted_models.fan_out(p, 4 * MiB, 64), "read by 64 objects"),
    "fan-out without ids": (lambda p: crafted_models.fan_out(p, 4 * MiB, 64, with_ids=False), "read by 64 objects"),
    "deflated fan-out": (lambda p: crafted_models.fan_out(p, MiB // 2, 2048, deflated=True), "read by 2048 objects"),
    "schema bomb": (lambda p: crafted_models.schema_bomb(p, 80 * MiB), "schema.json"),
    "many members": (lambda p: crafted_models.many_members(p, persist.MAX_MEMBERS + 1), "members"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_predict_refuses_a_hostile_model_before_skops_reads_it(kind, store, tmp_path, capsys, skops_untouched):
    craft, words = HOSTILE[kind]
    model = craft(tmp_path / "hostile.skops")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(model), "--store", str(store), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert words in err and str(model) in err and "python -m classify fit" in err, err
    assert not (tmp_path / "p.csv").exists()


def test_the_fan_out_costs_no_memory_through_the_real_cli(store, tmp_path):
    """The real CLI in a process of its own, on an 8 MiB file whose one array is read by 128 objects (1 GiB if
    read): the refusal adds next to nothing to the process's peak memory (measured after the imports)."""
    model = crafted_models.fan_out(tmp_path / "fan.skops", 8 * MiB, 128)
    script = ("import resource, sys\nimport skops.io\nfrom classify.cli import main\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\ntry:\n    main(sys.argv[1:])\n"
              "except SystemExit as e:\n    code = e.code\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, code)")
    result = subprocess.run([sys.executable, "-c", script, "predict", "--model", str(model), "--store", str(store),
                             "--out", str(tmp_path / "p.csv")], capture_output=True, text=True)
    added, code = result.stdout.split()[-2:]
    assert code == "2" and "read by 128 objects" in result.stderr, result.stderr
    assert int(added) < 256, f"the refused model added {added} MiB to the peak memory"


def test_a_sparse_matrix_whose_npz_is_a_bomb_is_refused(tmp_path, skops_untouched):
    """The zip inside a sparse matrix's member is inspected too (the type check refuses scipy types today, but the
    limits do not depend on the allow-list)."""
    model = crafted_models.sparse_bomb(tmp_path / "sparse.skops", 64 * MiB)
    with pytest.raises(ValueError, match="member 1.npz holds member data.npy unpacks"):
        pipeline.load_model(model)


def test_the_suites_own_models_and_shared_arrays_load(store, tmp_path):
    """What skops itself writes passes: an array named by several objects with one ``__id__`` (read once), and a
    fitted model whose file unpacks to its own size."""
    shared = persist.load(crafted_models.shared_array(tmp_path / "shared.skops", readers=3))
    assert len(shared["estimator"]) == 3
    np.testing.assert_array_equal(shared["estimator"][0], np.arange(4.0))
    with pipeline.FeatureStore(store) as fs:
        saved = pipeline.fit(fs, [A], "labelprop").save(tmp_path / "m.skops")
    assert pipeline.load_model(saved).method == "labelprop"
