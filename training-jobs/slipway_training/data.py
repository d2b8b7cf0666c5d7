"""The digits data: scikit-learn's bundled 8x8 images as (n, 64) float32 0..16, split, digest.

The images ship inside the scikit-learn wheel (``sklearn.datasets.load_digits``): nothing is
downloaded. Models take the flattened pixels unscaled, exactly as the dataset has them, so a
server can feed the same 64 numbers; models reshape to 1x8x8 (or 8x8x1) themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DATASET_NAME = "sklearn-digits"
LOADER = "sklearn.datasets.load_digits"
ORIGIN_URL = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
N_FEATURES = 64
N_CLASSES = 10
IMAGE_SHAPE = (8, 8)
VALUE_RANGE = (0.0, 16.0)
DIGEST_LENGTH = 32  # hex chars; MLflow's dataset digest column holds 36

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """One part of the data: features (n, 64) float32 and labels (n,) int64."""

    x: Features
    y: Labels

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Digits:
    """The whole dataset, its seeded train/val/test split, and where it came from."""

    full: Split
    train: Split
    val: Split
    test: Split
    digest: str
    source: dict[str, Any]


def feature_names() -> list[str]:
    """``pixel_<row>_<col>`` for the 64 flattened pixels, row-major."""
    rows, cols = IMAGE_SHAPE
    return [f"pixel_{r}_{c}" for r in range(rows) for c in range(cols)]


def dataset_digest(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> str:
    """A stable content digest: sha256 over shapes and little-endian float32 / int64 bytes.

    Independent of the in-memory dtype, byte order and memory layout of the arrays.
    """
    xs = np.ascontiguousarray(x, dtype="<f4")
    ys = np.ascontiguousarray(y, dtype="<i8")
    h = hashlib.sha256()
    h.update(f"slipway-dataset-v1|x{xs.shape}|y{ys.shape}|".encode())
    h.update(xs.tobytes())
    h.update(ys.tobytes())
    return h.hexdigest()[:DIGEST_LENGTH]


def split(
    x: Features, y: Labels, *, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Split, Split, Split]:
    """Stratified train/val/test split; the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=val_fraction / (1.0 - test_fraction),
        random_state=seed,
        stratify=y_rest,
    )
    return Split(x_train, y_train), Split(x_val, y_val), Split(x_test, y_test)


def load_digits(*, val_fraction: float, test_fraction: float, split_seed: int) -> Digits:
    """Load the bundled digits and split them with ``split_seed``."""
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, val, test = split(x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed)
    source = {
        "loader": LOADER,
        "package": "scikit-learn",
        "package_version": sklearn.__version__,
        "origin": ORIGIN_URL,
    }
    return Digits(
        full=Split(x, y),
        train=train,
        val=val,
        test=test,
        digest=dataset_digest(x, y),
        source=source,
    )
