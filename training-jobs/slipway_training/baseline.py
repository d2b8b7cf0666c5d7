"""The drift baseline: per-feature histograms of the training inputs, in the model as baseline.json.

Where: ``baseline.json`` at the root of the logged MLflow model, next to ``MLmodel``. In MLflow 3
that is ``<logged model artifact_location>/baseline.json`` (``mlflow-artifacts:/<exp>/models/
<model_id>/artifacts/baseline.json``): the directory a registered version's storage location
points at, so a server that downloads the model gets the baseline with it.

Format (JSON, ``version`` 1; this is a contract with the serving runtime: additive changes only,
anything incompatible bumps ``version``)::

    {
      "format": "slipway.drift-baseline",      # constant
      "version": 1,                             # int; readers reject versions they don't know
      "n": 1257,                                # number of training rows counted
      "n_features": 64,                         # == len(features)
      "input": {"dtype": "float32", "shape": [-1, 64]},   # what the model's signature takes
      "dataset": {"name": "sklearn-digits", "digest": "<32 hex>"},   # optional, informative
      "validation": {"n": 180, "x": [[...64 numbers], ...], "y": [3, 7, ...]},  # optional
      "features": [                             # one per input column, ordered by index 0..63
        {
          "index": 0,                           # column of the (-1, 64) input
          "name": "pixel_0_0",                  # informative label (pixel_<row>_<col>)
          "edges": [0.0, 2.0, 4.0, ..., 16.0],  # B+1 strictly increasing floats
          "counts": [1257, 0, 0, ...]           # B non-negative ints; sum == n unless
                                                # non-finite inputs were skipped (then < n)
        },
        ...
      ]
    }

Binning rule (the one :func:`bin_counts` implements; a reader must apply the same to live
inputs before comparing): with edges ``e[0] < ... < e[B]``, value ``v`` falls in bin ``i`` when
``e[i] <= v < e[i+1]``, the last bin is closed (``e[B-1] <= v <= e[B]``), and out-of-range
values are clipped into the first or last bin (``v < e[0]`` -> bin 0, ``v > e[B]`` -> bin B-1).
Non-finite values (NaN, inf) are not counted. Edges are fixed per feature and may differ between
features; counts may be zero, so smooth before taking logs (e.g. PSI over proportions with a
small epsilon such as 1e-4, or add 0.5 to each count).

``validation`` (optional, additive in version 1) is the held-out validation split the model was
not trained on: ``n`` rows of inputs ``x`` (each flattened like ``input``) and their integer
class labels ``y``. The serving runtime predicts it once at load and calibrates its label-free
accuracy estimate on the confidences and hits it gets there (``slipway_serving.performance``).

For the digits models the edges of every feature are ``B = baseline_bins`` (default 8) equal-width
bins over the dataset's value range 0..16.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT = "slipway.drift-baseline"
VERSION = 1
FILENAME = "baseline.json"


class BaselineError(ValueError):
    """A baseline document does not follow the format above."""


def uniform_edges(low: float, high: float, bins: int) -> list[float]:
    """``bins`` equal-width bins over ``[low, high]``: ``bins + 1`` edges."""
    if bins < 1 or not high > low:
        raise ValueError(f"need bins >= 1 and high > low, got bins={bins} low={low} high={high}")
    return [float(e) for e in np.linspace(low, high, bins + 1)]


def bin_counts(edges: Sequence[float], values: npt.ArrayLike) -> list[int]:
    """Counts of ``values`` per bin, by this module's rule (clip; the last bin is closed)."""
    e = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    idx = np.clip(np.searchsorted(e, v, side="right") - 1, 0, len(e) - 2)
    return [int(c) for c in np.bincount(idx, minlength=len(e) - 1)]


def build_baseline(
    x: npt.NDArray[Any],
    edges: Sequence[Sequence[float]],
    *,
    feature_names: Sequence[str] | None = None,
    dataset: dict[str, str] | None = None,
    validation: tuple[npt.NDArray[Any], npt.NDArray[Any]] | None = None,
) -> dict[str, Any]:
    """The baseline document for training inputs ``x`` (n, F) with per-feature ``edges``.

    ``validation`` is the held-out split ``(x, y)`` saved for calibrating the accuracy estimate.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, features), got shape {x.shape}")
    n, f = x.shape
    if len(edges) != f:
        raise ValueError(f"{len(edges)} edge lists for {f} features")
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(f)]
    features = []
    for i in range(f):
        _check_edges(edges[i], i)
        features.append(
            {
                "index": i,
                "name": names[i],
                "edges": [float(e) for e in edges[i]],
                "counts": bin_counts(edges[i], x[:, i]),
            }
        )
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "n": int(n),
        "n_features": int(f),
        "input": {"dtype": str(x.dtype), "shape": [-1, int(f)]},
    }
    if dataset is not None:
        doc["dataset"] = dict(dataset)
    if validation is not None:
        doc["validation"] = validation_section(*validation)
    doc["features"] = features
    return doc


def validation_section(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, Any]:
    """The ``validation`` entry: rows flattened to lists of floats, labels as ints."""
    rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    labels = np.asarray(y).ravel()
    if len(rows) != len(labels) or len(rows) == 0:
        raise ValueError(f"validation needs as many labels as rows (>= 1), got {len(rows)} and {len(labels)}")
    return {"n": len(rows), "x": [[float(v) for v in row] for row in rows], "y": [int(v) for v in labels]}


def _check_validation(section: Any, n_features: int) -> None:
    if not isinstance(section, dict):
        raise BaselineError("validation must be an object with n, x and y")
    n, x, y = section.get("n"), section.get("x"), section.get("y")
    if not isinstance(n, int) or n < 1 or not isinstance(x, list) or not isinstance(y, list):
        raise BaselineError("validation needs n >= 1 and lists x and y")
    if len(x) != n or len(y) != n:
        raise BaselineError(f"validation has n={n} but {len(x)} rows and {len(y)} labels")
    if any(not isinstance(row, list) or len(row) != n_features for row in x):
        raise BaselineError(f"validation rows must hold {n_features} values each")
    if any(not isinstance(label, int) for label in y):
        raise BaselineError("validation labels must be ints")


def _check_edges(edges: Sequence[float], i: int) -> None:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
        raise BaselineError(f"feature {i}: edges must be >= 2 finite, strictly increasing numbers")


def validate(doc: dict[str, Any]) -> dict[str, Any]:
    """Check a parsed baseline document against the format; return it unchanged."""
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise BaselineError(
            f"not a {FORMAT} v{VERSION} document: format={doc.get('format')!r} version={doc.get('version')!r}"
        )
    n, feats = doc.get("n"), doc.get("features")
    if not isinstance(n, int) or n < 0 or not isinstance(feats, list):
        raise BaselineError("n must be a non-negative int and features a list")
    if doc.get("n_features") != len(feats):
        raise BaselineError(f"n_features={doc.get('n_features')} but {len(feats)} features")
    for i, feat in enumerate(feats):
        if feat.get("index") != i:
            raise BaselineError(f"features[{i}] has index {feat.get('index')!r}")
        _check_edges(feat.get("edges", []), i)
        counts = feat.get("counts")
        if (
            not isinstance(counts, list)
            or len(counts) != len(feat["edges"]) - 1
            or any(not isinstance(c, int) or c < 0 for c in counts)
            or sum(counts) > n
        ):
            raise BaselineError(f"feature {i}: counts must be len(edges)-1 ints >= 0 summing <= n")
    if "validation" in doc:
        _check_validation(doc["validation"], len(feats))
    return doc


def dumps(doc: dict[str, Any]) -> str:
    """Serialise a baseline document (validated first)."""
    return json.dumps(validate(doc), indent=1)


def loads(text: str) -> dict[str, Any]:
    """Parse and validate a baseline document."""
    return validate(json.loads(text))
