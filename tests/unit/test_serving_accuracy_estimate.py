"""The label-free accuracy estimate: calibration on validation, the window, the exported gauges."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from slipway_serving.performance import (
    AccuracyCollector,
    AccuracyEstimator,
    AccuracyMonitor,
    ConfidenceWindow,
    ValidationFormatError,
    ValidationSplit,
    calibrate,
    register_accuracy,
)
from slipway_training import baseline as bl


def _calibrated_model(rng: np.random.Generator, n: int, skew: float) -> tuple[np.ndarray, np.ndarray]:
    """Confidences of a model overconfident by ``skew``, and whether each prediction was right."""
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < np.clip(confidence - skew, 0, 1)
    return confidence, correct


def test_a_calibrated_model_is_estimated_at_its_mean_confidence():
    estimator = AccuracyEstimator.fit(np.array([0.9, 0.8, 1.0, 0.7]), np.array([True, True, True, False]))
    assert estimator.validation_accuracy == pytest.approx(0.75)
    assert estimator.validation_confidence == pytest.approx(0.85)
    assert estimator.offset == pytest.approx(-0.10)
    assert estimator.estimate(np.array([0.95, 0.85])) == pytest.approx(0.80)


def test_the_validation_offset_corrects_an_overconfident_model_on_new_data():
    rng = np.random.default_rng(1)
    estimator = AccuracyEstimator.fit(*_calibrated_model(rng, 5000, skew=0.15))
    live_confidence, live_correct = _calibrated_model(rng, 5000, skew=0.15)
    raw = float(np.mean(live_confidence))
    estimate = estimator.estimate(live_confidence)
    assert abs(raw - live_correct.mean()) > 0.1  # confidence alone is far off
    assert abs(estimate - live_correct.mean()) < 0.02
    # Lower confidences on shifted data lower the estimate the same way.
    shifted = live_confidence * 0.8
    assert estimator.estimate(shifted) == pytest.approx(estimate - 0.2 * raw, abs=1e-9)


def test_the_estimate_stays_a_probability():
    estimator = AccuracyEstimator.fit(np.array([0.5, 0.5]), np.array([True, True]))
    assert estimator.estimate(np.array([0.99, 1.0])) == 1.0
    pessimist = AccuracyEstimator.fit(np.array([1.0, 1.0]), np.array([False, False]))
    assert pessimist.estimate(np.array([0.3])) == 0.0


def test_fit_and_estimate_refuse_empty_or_mismatched_input():
    with pytest.raises(ValueError):
        AccuracyEstimator.fit(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        AccuracyEstimator.fit(np.array([0.9, 0.8]), np.array([True]))
    with pytest.raises(ValueError):
        AccuracyEstimator.fit(np.array([0.9]), np.array([True])).estimate(np.array([]))


def test_the_window_keeps_the_most_recent_confidences():
    window = ConfidenceWindow(4)
    window.observe(np.array([0.1, 0.2, 0.3]))
    assert window.samples == 3
    window.observe(np.array([0.4, 0.5]))  # wraps around
    assert window.samples == 4
    assert sorted(window.values().tolist()) == [0.2, 0.3, 0.4, 0.5]
    window.observe(np.arange(10) / 10)  # more than the window: only the last 4
    assert sorted(window.values().tolist()) == [0.6, 0.7, 0.8, 0.9]
    with pytest.raises(ValueError):
        ConfidenceWindow(0)


def test_the_monitor_waits_for_min_samples():
    monitor = AccuracyMonitor(AccuracyEstimator(0.9, 0.95, 100), window=10, min_samples=3)
    monitor.observe(np.array([0.95, 0.95]))
    assert monitor.estimate() is None
    monitor.observe(np.array([0.65]))
    assert monitor.estimate() == pytest.approx((0.95 + 0.95 + 0.65) / 3 - 0.05)


def test_calibrate_predicts_the_validation_split_in_batches():
    x = np.arange(10, dtype=np.float64).reshape(5, 2)
    y = np.array([0, 1, 0, 1, 1])
    calls: list[int] = []

    def predict(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(rows))
        classes = (rows[:, 0] > 3).astype(np.int64)  # rows 2.. predicted 1
        return classes, np.full(len(rows), 0.9)

    estimator = calibrate(predict, ValidationSplit(x, y), batch_size=2)
    assert calls == [2, 2, 1]
    assert estimator.validation_accuracy == pytest.approx(3 / 5)  # rows 0, 3, 4 right
    assert estimator.validation_confidence == pytest.approx(0.9)
    assert estimator.validation_samples == 5


def test_the_validation_split_written_by_training_is_read_by_serving():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 17, size=(50, 4)).astype(np.float32)
    x_val = rng.integers(0, 17, size=(7, 4)).astype(np.float32)
    y_val = np.arange(7) % 3
    doc = bl.loads(bl.dumps(bl.build_baseline(x_train, [bl.uniform_edges(0, 16, 4)] * 4, validation=(x_val, y_val))))
    split = ValidationSplit.from_baseline(doc)
    assert split is not None
    assert np.array_equal(split.x, x_val) and np.array_equal(split.y, y_val)
    assert ValidationSplit.from_baseline(bl.build_baseline(x_train, [bl.uniform_edges(0, 16, 4)] * 4)) is None


@pytest.mark.parametrize(
    "section",
    [
        {"n": 2, "x": [[1, 2]], "y": [0, 1]},  # rows and labels disagree
        {"n": 1, "x": [[1, 2, 3]], "y": [0]},  # wrong width
        {"n": 1, "x": [[1, 2]], "y": ["a"]},  # labels not ints
    ],
)
def test_training_refuses_a_malformed_validation_split(section):
    doc = bl.build_baseline(np.zeros((3, 2)), [[0, 1]] * 2)
    doc["validation"] = section
    with pytest.raises(bl.BaselineError):
        bl.validate(doc)


def test_serving_refuses_a_malformed_validation_split():
    with pytest.raises(ValidationFormatError):
        ValidationSplit.from_baseline({"validation": {"x": [[1, 2]], "y": [0, 1]}})
    with pytest.raises(ValidationFormatError):
        ValidationSplit.from_baseline({"validation": {"x": [[1, 2]]}})


def test_the_collector_exports_the_estimate_once_the_window_is_full_enough():
    registry = CollectorRegistry()
    monitor = AccuracyMonitor(AccuracyEstimator(0.96, 0.98, 180), window=100, min_samples=2)
    register_accuracy(AccuracyCollector("digits", "3", monitor), registry)
    text = generate_latest(registry).decode()
    assert 'slipway_validation_accuracy{model="digits",version="3"} 0.96' in text
    assert 'slipway_estimated_accuracy_window_samples{model="digits",version="3"} 0.0' in text
    assert "slipway_estimated_accuracy{" not in text
    monitor.observe(np.array([0.9, 0.8]))
    text = generate_latest(registry).decode()
    value = float(text.split('slipway_estimated_accuracy{model="digits",version="3"} ')[1].split()[0])
    assert value == pytest.approx(0.85 - 0.02)
