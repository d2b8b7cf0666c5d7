"""The drift baseline: histogram binning rule, document format and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slipway_training import baseline as bl


def test_uniform_edges():
    assert bl.uniform_edges(0, 16, 8) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]
    with pytest.raises(ValueError):
        bl.uniform_edges(1, 1, 4)
    with pytest.raises(ValueError):
        bl.uniform_edges(0, 1, 0)


def test_bin_counts_half_open_last_closed_and_clipped():
    edges = [0.0, 2.0, 4.0, 6.0]
    values = [-5, 0, 1.99, 2, 3, 4, 5.5, 6, 6.01, 100, np.nan, np.inf, -np.inf]
    # bin0: -5(clipped) 0 1.99 | bin1: 2 3 | bin2: 4 5.5 6(closed) 6.01(clipped) 100(clipped)
    assert bl.bin_counts(edges, values) == [3, 2, 5]


def test_bin_counts_match_numpy_histogram_in_range():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 16, size=1000)
    edges = bl.uniform_edges(0, 16, 8)
    assert bl.bin_counts(edges, values) == np.histogram(values, edges)[0].tolist()


def test_build_baseline_document():
    x = np.array([[0, 16], [1, 8], [2, 0]], dtype=np.float32)
    edges = [bl.uniform_edges(0, 16, 4)] * 2
    dataset = {"name": "d", "digest": "1"}
    doc = bl.build_baseline(x, edges, feature_names=["a", "b"], dataset=dataset)
    assert doc == {
        "format": "slipway.drift-baseline",
        "version": 1,
        "n": 3,
        "n_features": 2,
        "input": {"dtype": "float32", "shape": [-1, 2]},
        "dataset": {"name": "d", "digest": "1"},
        "features": [
            {"index": 0, "name": "a", "edges": [0.0, 4.0, 8.0, 12.0, 16.0], "counts": [3, 0, 0, 0]},
            {"index": 1, "name": "b", "edges": [0.0, 4.0, 8.0, 12.0, 16.0], "counts": [1, 0, 1, 1]},
        ],
    }
    assert bl.loads(bl.dumps(doc)) == doc
    assert json.loads(bl.dumps(doc)) == doc


def test_features_may_have_their_own_edges():
    x = np.array([[0.5, 10.0], [1.5, 20.0]])
    doc = bl.build_baseline(x, [[0, 1, 2], [0, 15, 30, 45]])
    assert [f["counts"] for f in doc["features"]] == [[1, 1], [1, 1, 0]]
    assert [f["name"] for f in doc["features"]] == ["f0", "f1"]


def test_build_baseline_rejects_mismatches():
    with pytest.raises(ValueError):
        bl.build_baseline(np.zeros((3, 2)), [[0, 1]])
    with pytest.raises(ValueError):
        bl.build_baseline(np.zeros(3), [[0, 1]])
    with pytest.raises(bl.BaselineError):
        bl.build_baseline(np.zeros((3, 1)), [[1, 0]])


def _doc():
    return bl.build_baseline(np.zeros((4, 2), dtype=np.float32), [[0, 1, 2]] * 2)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(format="other"),
        lambda d: d.update(n_features=3),
        lambda d: d.update(n=-1),
        lambda d: d["features"][1].update(index=0),
        lambda d: d["features"][0].update(counts=[1, 2, 3]),
        lambda d: d["features"][0].update(counts=[5, 0]),
        lambda d: d["features"][0].update(counts=[-1, 5]),
        lambda d: d["features"][0].update(edges=[0, 0, 1]),
        lambda d: d["features"][0].update(edges=[0, float("nan"), 1]),
    ],
)
def test_validate_rejects_broken_documents(mutate):
    doc = _doc()
    mutate(doc)
    with pytest.raises(bl.BaselineError):
        bl.validate(doc)


def test_digits_baseline_shape():
    from slipway_training.data import N_FEATURES, VALUE_RANGE, feature_names, load_digits

    digits = load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=0)
    doc = bl.build_baseline(
        digits.train.x,
        [bl.uniform_edges(*VALUE_RANGE, 8)] * N_FEATURES,
        feature_names=feature_names(),
    )
    bl.validate(doc)
    assert doc["n"] == len(digits.train) == 1257
    assert len(doc["features"]) == 64
    assert doc["features"][9]["name"] == "pixel_1_1"
    assert all(sum(f["counts"]) == doc["n"] for f in doc["features"])
    # the corner pixel is blank in every image
    assert doc["features"][0]["counts"][0] == doc["n"]
