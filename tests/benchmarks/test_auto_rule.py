"""``benchmarks.auto_rule``: the choice at each score and z follows auto's rule; saved runs tabulate together."""
import json

from benchmarks.auto_rule import choose, main


def cv(acc_gain, brier_gain, se=0.01):
    """CV numbers of a probe and one challenger whose paired gain is ``acc_gain`` in accuracy, ``brier_gain`` in
    Brier score, each with standard error ``se``."""
    zero = {s: {"mean": 0.5, "gain": 0.0, "se": 0.0} for s in ("accuracy", "brier", "loglik")}
    challenger = {"accuracy": {"mean": 0.5 + acc_gain, "gain": acc_gain, "se": se},
                  "brier": {"mean": -0.5 + brier_gain, "gain": brier_gain, "se": se},
                  "loglik": {"mean": -1.0, "gain": -0.1, "se": se}}
    return {"linear": {"mean": 0.5, "gain": 0.0, "se": 0.0, "scores": zero},
            "selftrain": {"mean": 0.5 + acc_gain, "gain": acc_gain, "se": se, "scores": challenger}}


def record(seed, acc_gain, brier_gain, pool_linear=0.7, pool_selftrain=0.8):
    return {"dataset": "toy", "shots": 10, "seed": seed, "cv": cv(acc_gain, brier_gain),
            "pool": {"linear": pool_linear, "selftrain": pool_selftrain}, "cv_seconds": 1.0}


def test_each_score_has_its_own_choice():
    tie = cv(0.0, 0.05)  # accuracy ties, the probabilities favour the challenger
    assert choose(tie, 0.5) == "linear" and choose(tie, 0.5, "accuracy") == "linear"
    assert choose(tie, 0.5, "brier") == "selftrain" and choose(tie, 0.5, "loglik") == "linear"
    assert choose(tie, 10, "brier") == "linear"  # 5 standard errors do not pass z=10
    old = {n: {k: v for k, v in r.items() if k != "scores"} for n, r in cv(0.05, 0.0).items()}
    assert choose(old, 0.5) == "selftrain"  # records of runs before the scores were kept: accuracy's gain


def test_saved_runs_tabulate_together(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps([record(100, 0.0, 0.05)]))
    second.write_text(json.dumps([record(101, 0.0, 0.05, pool_selftrain=0.9)]))
    main(["--records", f"{first},{second}", "--out", "merged", "--results", str(tmp_path)])
    text = (tmp_path / "merged.md").read_text()
    assert "seeds 100,101" in text and "| rule | toy 10-shot |" in text
    assert "| auto accuracy z=0.5 | 70.0 (0%) |" in text and "| auto brier z=0.5 | 85.0 (100%) |" in text
    assert "| auto loglik z=0.5 | 70.0 (0%) |" in text
    assert len(json.loads((tmp_path / "merged.json").read_text())) == 2
    assert text in capsys.readouterr().out
