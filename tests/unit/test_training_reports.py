"""Evaluation reports: metrics from probabilities, the per-class JSON and the confusion PNG."""

from __future__ import annotations

import math

import numpy as np

from slipway_training.reports import cross_entropy, evaluate, plot_confusion


def test_evaluate_from_probabilities():
    y = np.array([0, 0, 1, 2], dtype=np.int64)
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8]], dtype=np.float32)
    ev = evaluate(y, probs, 3)
    assert ev.accuracy == 0.75
    assert math.isclose(ev.loss, -np.mean(np.log([0.9, 0.2, 1.0, 0.8])), rel_tol=1e-6)
    assert ev.confusion == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert ev.per_class["0"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert ev.per_class["1"]["precision"] == 0.5
    assert math.isclose(ev.f1_macro, (2 / 3 + 2 / 3 + 1) / 3)
    report = ev.report()
    assert report["version"] == 1
    assert set(report) == {"version", "n", "accuracy", "loss", "f1_macro", "classes", "confusion_matrix"}
    assert ev.final_metrics() == {"accuracy": 0.75, "loss": ev.loss, "f1_macro": ev.f1_macro}


def test_cross_entropy_is_finite_for_zero_probabilities():
    assert math.isfinite(cross_entropy(np.array([1]), np.array([[1.0, 0.0]])))


def test_missing_class_has_zero_scores():
    ev = evaluate(np.array([0, 0]), np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), 3)
    assert ev.per_class["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_confusion_png(tmp_path):
    path = plot_confusion([[3, 1], [0, 4]], tmp_path / "cm.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
