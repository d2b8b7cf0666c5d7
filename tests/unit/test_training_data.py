"""The digits data: shapes, the seeded split, and a digest that is stable and content-sensitive."""

from __future__ import annotations

import numpy as np
import pytest

from slipway_training.data import (
    DIGEST_LENGTH,
    N_FEATURES,
    dataset_digest,
    feature_names,
    load_digits,
)

# The digest of scikit-learn's bundled digits: if this changes, every logged model's dataset
# input changes with it, so it must only change on purpose.
DIGITS_DIGEST = "e3e21cb96075bf9386318baa48c1817f"


@pytest.fixture(scope="module")
def digits():
    return load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=0)


def test_shapes_dtypes_and_range(digits):
    assert digits.full.x.shape == (1797, N_FEATURES)
    assert digits.full.x.dtype == np.float32
    assert digits.full.y.dtype == np.int64
    assert digits.full.x.min() == 0 and digits.full.x.max() == 16
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1257, 180, 360)
    assert len(feature_names()) == N_FEATURES


def _rows(*parts):
    return sorted(a.tobytes() + b.tobytes() for p in parts for a, b in zip(p.x, p.y, strict=True))


def test_split_is_stratified_and_a_partition(digits):
    for part in (digits.train, digits.val, digits.test):
        assert set(np.unique(part.y)) == set(range(10))
    assert _rows(digits.train, digits.val, digits.test) == _rows(digits.full)


def test_same_seed_same_split_other_seed_other_split(digits):
    again = load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=0)
    other = load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=1)
    assert np.array_equal(again.train.x, digits.train.x)
    assert np.array_equal(again.test.y, digits.test.y)
    assert not np.array_equal(other.test.x, digits.test.x)


def test_digest_is_pinned_and_split_independent(digits):
    assert digits.digest == DIGITS_DIGEST
    assert len(digits.digest) == DIGEST_LENGTH
    assert load_digits(val_fraction=0.2, test_fraction=0.3, split_seed=5).digest == DIGITS_DIGEST


def test_digest_ignores_dtype_and_layout(digits):
    x, y = digits.full.x, digits.full.y
    assert dataset_digest(x.astype(np.float64), y.astype(np.int32)) == digits.digest
    assert dataset_digest(np.asfortranarray(x), y) == digits.digest
    assert dataset_digest(x.astype(">f4"), y.astype(">i8")) == digits.digest


def test_digest_sees_any_change(digits):
    x, y = digits.full.x.copy(), digits.full.y.copy()
    x[100, 10] += 1
    assert dataset_digest(x, digits.full.y) != digits.digest
    y[0] = (y[0] + 1) % 10
    assert dataset_digest(digits.full.x, y) != digits.digest
    assert dataset_digest(digits.full.x[:-1], digits.full.y[:-1]) != digits.digest
    assert dataset_digest(digits.full.x.reshape(-1, 32), digits.full.y) != digits.digest


def test_source_names_the_loader(digits):
    assert digits.source["loader"] == "sklearn.datasets.load_digits"
    assert digits.source["package"] == "scikit-learn"
