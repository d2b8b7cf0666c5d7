"""Feature drift: PSI of a sliding window of recent inputs against the training baseline."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The document type and version written by ``slipway_training.baseline`` (the contract).
BASELINE_FORMAT = "slipway.drift-baseline"
BASELINE_VERSION = 1

#: Proportions are floored at this value before the logarithm, so empty bins stay finite.
PSI_EPSILON = 1e-4


class BaselineFormatError(ValueError):
    """The baseline artifact is not in the format the training package writes."""


@dataclass(frozen=True)
class FeatureHistogram:
    """One feature's training histogram: ``len(edges) == len(counts) + 1``, edges ascending.

    Binning follows the training package: ``e[i] <= v < e[i+1]``, the last bin closed, values
    outside the edges clipped into the first or last bin.
    """

    name: str
    edges: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.edges.ndim != 1 or self.counts.ndim != 1:
            raise BaselineFormatError(f"feature {self.name!r}: edges and counts must be lists")
        if len(self.counts) < 1 or len(self.edges) != len(self.counts) + 1:
            raise BaselineFormatError(f"feature {self.name!r}: {len(self.edges)} edges for {len(self.counts)} bins")
        if np.any(np.diff(self.edges) < 0) or not np.all(np.isfinite(self.edges)):
            raise BaselineFormatError(f"feature {self.name!r}: edges must be finite, ascending")
        if np.any(self.counts < 0) or self.counts.sum() <= 0:
            raise BaselineFormatError(f"feature {self.name!r}: counts must be >= 0, not all 0")

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value; values outside the edges fall in the first or last bin."""
        return np.searchsorted(self.edges[1:-1], values, side="right")

    def window_counts(self, values: np.ndarray) -> np.ndarray:
        """Histogram of ``values`` on this feature's bins (out-of-range values clipped in)."""
        return np.bincount(self.bin_of(values), minlength=len(self.counts))


@dataclass(frozen=True)
class Baseline:
    """Per-feature training histograms, in input order (instances are flattened row-major)."""

    features: tuple[FeatureHistogram, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, in input order."""
        return tuple(f.name for f in self.features)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        """Parse a ``slipway.drift-baseline`` v1 document (``slipway_training.baseline``).

        Features are ordered by their ``index`` when they carry one; a ``features`` mapping of
        name to ``{edges, counts}`` is accepted too. Unknown formats and versions are refused.
        """
        if data.get("format", BASELINE_FORMAT) != BASELINE_FORMAT:
            raise BaselineFormatError(f"not a {BASELINE_FORMAT} document: {data.get('format')!r}")
        if data.get("version", BASELINE_VERSION) != BASELINE_VERSION:
            raise BaselineFormatError(f"baseline version {data.get('version')!r} is not supported")
        raw = data.get("features")
        if isinstance(raw, Mapping):
            items: list[tuple[str, Any]] = [(str(k), v) for k, v in raw.items()]
        elif isinstance(raw, list):
            if all(isinstance(f, Mapping) and "index" in f for f in raw):
                raw = sorted(raw, key=lambda f: int(f["index"]))
            items = [
                (str(f.get("name", f"feature_{i}")) if isinstance(f, Mapping) else str(i), f) for i, f in enumerate(raw)
            ]
        else:
            raise BaselineFormatError('a baseline needs a "features" list')
        if not items:
            raise BaselineFormatError("the baseline has no features")
        features = []
        for name, entry in items:
            if not isinstance(entry, Mapping) or "edges" not in entry or "counts" not in entry:
                raise BaselineFormatError(f"feature {name!r}: needs edges and counts")
            try:
                edges = np.asarray(entry["edges"], dtype=np.float64)
                counts = np.asarray(entry["counts"], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise BaselineFormatError(f"feature {name!r}: {exc}") from exc
            features.append(FeatureHistogram(name=name, edges=edges, counts=counts))
        return cls(features=tuple(features))

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read a baseline JSON file."""
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BaselineFormatError(f"{path.name}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise BaselineFormatError(f"{path.name}: not a JSON object")
        return cls.from_dict(data)


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two histograms on the same bins (counts or proportions).

    ``sum((a - e) * ln(a / e))`` over bins, with proportions floored at ``epsilon``.
    Rule of thumb: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 major.
    """
    e = np.maximum(expected / expected.sum(), epsilon)
    a = np.maximum(actual / max(actual.sum(), 1e-12), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature (input order) and the model-level score: their mean."""

    feature_psi: tuple[float, ...]
    score: float
    samples: int


class DriftMonitor:
    """Keeps the last ``window`` instances in a ring buffer and scores them on demand.

    ``observe`` is a copy into the buffer (cheap, on the request path); ``report`` bins the
    whole window and computes PSI (a few milliseconds for 1,000 x 64), and is called when
    Prometheus scrapes, so the cost is paid per scrape, not per request.

    Size the window: with no drift at all, PSI over ``B`` bins still averages about
    ``(B - 1) * (1/n + 1/m)`` for a window of ``n`` and a baseline of ``m`` instances (0.07 for
    8 bins and n = 100; 0.008 at n = 1000), so small windows read as moderate drift.
    """

    def __init__(self, baseline: Baseline, window: int = 1000, min_samples: int = 100) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one instance")
        self.baseline = baseline
        self.window = window
        self.min_samples = max(1, min(min_samples, window))
        self._width = len(baseline.features)
        self._buffer = np.zeros((window, self._width), dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._seen = 0
        self._lock = threading.Lock()
        self._cached: tuple[int, DriftReport | None] = (-1, None)

    @property
    def feature_count(self) -> int:
        """Values per instance that the baseline describes."""
        return self._width

    @property
    def samples(self) -> int:
        """Instances currently in the window."""
        return self._filled

    def observe(self, batch: np.ndarray) -> None:
        """Add a batch of instances (any shape ``[n, ...]`` flattening to the baseline width)."""
        rows = batch.reshape(batch.shape[0], -1)
        if rows.shape[1] != self._width:
            raise ValueError(f"instances have {rows.shape[1]} values, the baseline {self._width}")
        n = rows.shape[0]
        with self._lock:
            if n >= self.window:
                self._buffer[:] = rows[-self.window :]
                self._next = 0
            else:
                end = self._next + n
                if end <= self.window:
                    self._buffer[self._next : end] = rows
                else:
                    split = self.window - self._next
                    self._buffer[self._next :] = rows[:split]
                    self._buffer[: n - split] = rows[split:]
                self._next = end % self.window
            self._filled = min(self.window, self._filled + n)
            self._seen += n

    def report(self) -> DriftReport | None:
        """PSI of the current window, or None while it holds fewer than ``min_samples``."""
        with self._lock:
            seen, cached = self._cached
            if seen == self._seen:
                return cached
            filled = self._filled
            window = self._buffer[:filled].copy()
            seen = self._seen
        report = None
        if filled >= self.min_samples:
            values = [psi(f.counts, f.window_counts(window[:, i])) for i, f in enumerate(self.baseline.features)]
            report = DriftReport(feature_psi=tuple(values), score=float(np.mean(values)), samples=filled)
        with self._lock:
            self._cached = (seen, report)
        return report
