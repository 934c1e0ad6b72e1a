"""Long label-propagation fits say what they do: above PROGRESS_ROWS rows each stage is logged at INFO (graph,
each class's solve, chunked reading); smaller fits stay quiet; the logging changes no result."""
from __future__ import annotations

import logging

import numpy as np

from classify.methods import labelprop
from classify.methods.labelprop import KNNLabelPropagation


class Rows:
    """The chunked-rows protocol of ``fit_chunks`` over an array."""

    def __init__(self, X, size):
        self.X, self.size, self.shape = X, size, X.shape

    def sample(self, index):
        return self.X[index]

    def chunks(self):
        for start in range(0, len(self.X), self.size):
            yield start, self.X[start:start + self.size]


def data():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(3, 8))[y_true] * 3 + rng.normal(size=(120, 8))
    y = np.full(120, -1)
    y[::10] = y_true[::10]
    return X.astype(np.float32), y


def progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "labelprop" in r.name
            and r.getMessage().startswith(("labelprop: building", "labelprop: graph", "labelprop: solved",
                                           "labelprop: read", "labelprop: fitting"))]


def test_large_fits_log_each_stage_and_results_do_not_change(monkeypatch, caplog):
    X, y = data()
    caplog.set_level(logging.INFO, logger="classify.methods.labelprop")
    quiet = KNNLabelPropagation(k=5).fit(X, y)
    assert progress_lines(caplog) == []
    caplog.clear()
    monkeypatch.setattr(labelprop, "PROGRESS_ROWS", 50)
    loud = KNNLabelPropagation(k=5).fit(X, y)
    lines = progress_lines(caplog)
    assert lines[0].startswith("labelprop: building the 5-nearest-neighbour graph of 120 rows (index flat, CPU)")
    assert lines[1].startswith("labelprop: graph of 600 edges") and "solving 3 classes" in lines[1]
    assert lines[-1].startswith("labelprop: solved 3 of 3 classes")
    np.testing.assert_array_equal(quiet.label_distributions_, loud.label_distributions_)
    caplog.clear()
    chunked = KNNLabelPropagation(k=5).fit_chunks(Rows(X, 30), y)
    lines = progress_lines(caplog)
    assert lines[0] == "labelprop: fitting the feature transform on 120 of 120 rows"
    assert "labelprop: read and transformed 120 of 120 rows" in lines
    assert chunked.label_distributions_.shape == (120, 3)
