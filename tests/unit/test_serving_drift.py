"""Drift: PSI, the baseline contract with the training package, and the sliding window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slipway_serving.drift import (
    Baseline,
    BaselineFormatError,
    DriftMonitor,
    FeatureHistogram,
    psi,
)


def _baseline(n_features: int = 3, bins: int = 8, rows: int = 5000, seed: int = 0) -> Baseline:
    rng = np.random.default_rng(seed)
    data = rng.normal(8, 2, size=(rows, n_features))
    edges = np.linspace(0, 16, bins + 1)
    features = [
        {
            "index": i,
            "name": f"f{i}",
            "edges": edges.tolist(),
            "counts": FeatureHistogram("x", edges, np.ones(bins)).window_counts(data[:, i]).tolist(),
        }
        for i in range(n_features)
    ]
    return Baseline.from_dict({"format": "slipway.drift-baseline", "version": 1, "features": features})


def test_psi_is_zero_for_identical_and_grows_with_shift():
    expected = np.array([10.0, 20.0, 40.0, 20.0, 10.0])
    assert psi(expected, expected) == pytest.approx(0.0)
    assert psi(expected, expected * 7) == pytest.approx(0.0)  # proportions, not counts
    mild = psi(expected, np.array([12.0, 22.0, 36.0, 20.0, 10.0]))
    major = psi(expected, np.array([40.0, 30.0, 20.0, 8.0, 2.0]))
    assert 0 < mild < 0.1 < 0.25 < major


def test_psi_stays_finite_with_empty_bins():
    value = psi(np.array([100.0, 0.0, 0.0]), np.array([0.0, 0.0, 100.0]))
    assert np.isfinite(value) and value > 1


def test_binning_follows_the_training_rule():
    # e[i] <= v < e[i+1], last bin closed, out-of-range clipped into the end bins.
    hist = FeatureHistogram("f", np.array([0.0, 2.0, 4.0, 6.0]), np.ones(3))
    values = np.array([-5, 0, 1.99, 2, 3, 4, 5.5, 6, 6.01, 100])
    assert hist.window_counts(values).tolist() == [3, 2, 5]


def test_binning_matches_slipway_training_bin_counts():
    bl = pytest.importorskip("slipway_training.baseline")
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(-4, 20, 2000), [0.0, 2.0, 16.0, 16.5]])
    edges = bl.uniform_edges(0, 16, 8)
    hist = FeatureHistogram("f", np.asarray(edges), np.ones(8))
    assert hist.window_counts(values).tolist() == bl.bin_counts(edges, values)


def test_reads_the_document_slipway_training_writes(tmp_path):
    bl = pytest.importorskip("slipway_training.baseline")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 17, size=(300, 4)).astype(np.float32)
    doc = bl.build_baseline(x, [bl.uniform_edges(0, 16, 8)] * 4, feature_names=list("abcd"))
    path = tmp_path / bl.FILENAME
    path.write_text(bl.dumps(doc))
    baseline = Baseline.load(path)
    assert baseline.names == ("a", "b", "c", "d")
    for i, feature in enumerate(baseline.features):
        assert feature.counts.tolist() == doc["features"][i]["counts"]
        assert feature.window_counts(x[:, i]).tolist() == doc["features"][i]["counts"]


def test_features_are_ordered_by_index():
    doc = {
        "features": [
            {"index": 1, "name": "second", "edges": [0, 1], "counts": [1]},
            {"index": 0, "name": "first", "edges": [0, 1], "counts": [1]},
        ]
    }
    assert Baseline.from_dict(doc).names == ("first", "second")


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "something-else", "features": [{"edges": [0, 1], "counts": [1]}]},
        {"format": "slipway.drift-baseline", "version": 2, "features": []},
        {"features": []},
        {"features": [{"edges": [0, 1, 2], "counts": [1]}]},
        {"features": [{"edges": [2, 1], "counts": [1]}]},
        {"features": [{"edges": [0, 1], "counts": [0]}]},
        {"features": [{"edges": [0, "x"], "counts": [1]}]},
        {"nothing": True},
    ],
)
def test_malformed_baselines_are_refused(doc):
    with pytest.raises(BaselineFormatError):
        Baseline.from_dict(doc)


def test_unreadable_file_is_a_format_error(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text("{not json")
    with pytest.raises(BaselineFormatError):
        Baseline.load(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(BaselineFormatError):
        Baseline.load(path)


def test_monitor_reports_nothing_until_min_samples():
    monitor = DriftMonitor(_baseline(), window=100, min_samples=50)
    monitor.observe(np.full((49, 3), 8.0))
    assert monitor.report() is None
    monitor.observe(np.full((1, 3), 8.0))
    report = monitor.report()
    assert report is not None and report.samples == 50


def test_monitor_low_in_distribution_high_when_shifted():
    baseline = _baseline()
    rng = np.random.default_rng(7)
    monitor = DriftMonitor(baseline, window=1000, min_samples=100)
    monitor.observe(rng.normal(8, 2, size=(1000, 3)))
    calm = monitor.report()
    assert calm is not None and calm.score < 0.05
    monitor.observe(rng.normal(12, 2, size=(1000, 3)))  # the window now holds only shifted rows
    shifted = monitor.report()
    assert shifted is not None and shifted.score > 0.25
    assert all(v > 0.25 for v in shifted.feature_psi)


def test_window_slides_and_wraps():
    monitor = DriftMonitor(_baseline(n_features=1), window=10, min_samples=1)
    for i in range(7):  # 7 x 3 rows = 21: wraps twice, partial batches across the boundary
        monitor.observe(np.full((3, 1), float(i)))
    assert monitor.samples == 10
    window = np.sort(monitor._buffer[:, 0])
    assert window.tolist() == [3, 4, 4, 4, 5, 5, 5, 6, 6, 6]


def test_a_batch_larger_than_the_window_keeps_its_last_rows():
    monitor = DriftMonitor(_baseline(n_features=1), window=4, min_samples=1)
    monitor.observe(np.arange(10, dtype=float).reshape(10, 1))
    assert sorted(monitor._buffer[:, 0].tolist()) == [6, 7, 8, 9]


def test_instances_are_flattened_and_widths_checked():
    monitor = DriftMonitor(_baseline(n_features=4), window=10, min_samples=1)
    monitor.observe(np.zeros((2, 2, 2)))
    assert monitor.samples == 2
    with pytest.raises(ValueError):
        monitor.observe(np.zeros((2, 5)))


def test_report_is_cached_until_new_inputs():
    monitor = DriftMonitor(_baseline(), window=10, min_samples=1)
    monitor.observe(np.full((5, 3), 8.0))
    first = monitor.report()
    assert monitor.report() is first
    monitor.observe(np.full((1, 3), 8.0))
    assert monitor.report() is not first
