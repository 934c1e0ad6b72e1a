"""classify.pipeline: capability checks before a fit, and evaluation's own messages for stores it cannot score."""
import numpy as np
import pytest

from classify import evaluation, pipeline
from classify.methods.base import NotApplicable
from store import OK, FeatureStore
from synthstore import A, B, make_store


def test_methods_that_need_what_the_store_lacks_are_not_applicable(tmp_path):
    path, _ = make_store(tmp_path / "s.h5")
    with FeatureStore(path) as fs:
        context_a = pipeline.store_context(fs, A)  # no text embeddings, no views
        for method in ("zeroshot", "crossmodal", "coop"):
            with pytest.raises(NotApplicable, match="needs CLIP text embeddings"):
                pipeline.build(method, {}, context_a)
        with pytest.raises(NotApplicable, match="--views 2"):
            pipeline.build("fixmatch", {}, context_a)
        assert pipeline.build("zeroshot", {}, pipeline.store_context(fs, B)).text_embeddings is not None


def test_evaluate_without_any_label_says_so(tmp_path):
    n = 12
    with FeatureStore.create(tmp_path / "u.h5", [f"unlabeled/{i}.png" for i in range(n)], ["unlabeled"] * n,
                             [-1] * n, ["cat", "dog"]) as fs:
        fs.begin_backbone({"spec": A, "weights_sha256": A, "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 4)
        fs.write_rows(A, np.arange(n), np.full(n, OK), [None] * n, [None] * n,
                      features=np.random.default_rng(0).normal(size=(n, 4)))
    with FeatureStore(tmp_path / "u.h5") as fs, pytest.raises(ValueError, match="has no labeled images to score on"):
        evaluation.evaluate(fs, [A], "knn")
