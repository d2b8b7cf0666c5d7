"""Label-free accuracy: estimate a classifier's accuracy from its confidence, calibrated on validation.

Labels arrive late or never, so the runtime estimates each version's accuracy from what it does
have: the top-class probability of every prediction. The estimate is the mean confidence of a
sliding window of recent predictions, corrected by how far confidence and accuracy were apart on
the validation split saved with the training baseline (``baseline.json``'s ``validation``):

    estimate = mean(window confidence) + (validation accuracy - validation mean confidence)

That is confidence-based performance estimation with a difference-of-confidences calibration:
one offset, which stays stable on the few hundred validation rows a small model has (a per-bin
calibration map would rest on a handful of errors per bin). What it assumes, and where it fails:
that the model stays as (mis)calibrated on the live inputs as on the validation split. Under mild
shifts (noise, small rotations) it holds; under severe ones (inverted ink) a network stays
confident while it is wrong and the estimate is too high, which is what the drift score (PSI) is
for. ``bench/accuracy_estimation.py`` measures both (``bench/RESULTS.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ValidationFormatError(ValueError):
    """The baseline's ``validation`` section is not as the training package writes it."""


@dataclass(frozen=True)
class ValidationSplit:
    """The held-out rows (``n`` x width) and their integer labels, from ``baseline.json``."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def from_baseline(cls, doc: Mapping[str, Any]) -> ValidationSplit | None:
        """The ``validation`` section of a baseline document; None when it has none."""
        section = doc.get("validation")
        if section is None:
            return None
        if not isinstance(section, Mapping) or "x" not in section or "y" not in section:
            raise ValidationFormatError("validation needs x and y")
        try:
            x = np.asarray(section["x"], dtype=np.float64)
            y = np.asarray(section["y"], dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise ValidationFormatError(f"validation: {exc}") from exc
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise ValidationFormatError(f"validation: {x.shape} rows for {y.shape} labels")
        return cls(x=x, y=y)


@dataclass(frozen=True)
class AccuracyEstimator:
    """Confidence to accuracy, calibrated on the validation split (see the module docstring)."""

    validation_accuracy: float
    validation_confidence: float
    validation_samples: int

    @classmethod
    def fit(cls, confidence: np.ndarray, correct: np.ndarray) -> AccuracyEstimator:
        """Calibrate on the validation split: each row's top-class probability and whether it was right."""
        if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
            raise ValueError("need one confidence per validation row, and at least one row")
        return cls(
            validation_accuracy=float(np.mean(correct)),
            validation_confidence=float(np.mean(confidence)),
            validation_samples=len(confidence),
        )

    @property
    def offset(self) -> float:
        """Validation accuracy minus validation mean confidence (negative: overconfident)."""
        return self.validation_accuracy - self.validation_confidence

    def estimate(self, confidence: np.ndarray) -> float:
        """Estimated accuracy of the predictions that had these confidences, in [0, 1]."""
        if len(confidence) == 0:
            raise ValueError("no confidences to estimate from")
        return float(np.clip(np.mean(confidence) + self.offset, 0.0, 1.0))


class ConfidenceWindow:
    """The last ``window`` top-class probabilities (a ring buffer; ``observe`` is cheap)."""

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError("the window must hold at least one prediction")
        self.window = window
        self._buffer = np.zeros(window, dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    @property
    def samples(self) -> int:
        """Predictions currently in the window."""
        return self._filled

    def observe(self, confidence: np.ndarray) -> None:
        """Add the confidences of one model call."""
        values = np.asarray(confidence, dtype=np.float64).ravel()
        n = len(values)
        with self._lock:
            if n >= self.window:
                self._buffer[:] = values[-self.window :]
                self._next = 0
            else:
                end = self._next + n
                if end <= self.window:
                    self._buffer[self._next : end] = values
                else:
                    split = self.window - self._next
                    self._buffer[self._next :] = values[:split]
                    self._buffer[: n - split] = values[split:]
                self._next = end % self.window
            self._filled = min(self.window, self._filled + n)

    def values(self) -> np.ndarray:
        """A copy of the confidences in the window (order not kept)."""
        with self._lock:
            return self._buffer[: self._filled].copy()


class AccuracyMonitor:
    """A window of live confidences and the estimator calibrated for this model."""

    def __init__(self, estimator: AccuracyEstimator, window: int = 1000, min_samples: int = 100) -> None:
        self.estimator = estimator
        self.confidences = ConfidenceWindow(window)
        self.min_samples = max(1, min(min_samples, window))

    def observe(self, confidence: np.ndarray) -> None:
        """Record the confidences of one model call."""
        self.confidences.observe(confidence)

    def estimate(self) -> float | None:
        """The estimated accuracy of the window, or None while it holds fewer than ``min_samples``."""
        values = self.confidences.values()
        if len(values) < self.min_samples:
            return None
        return self.estimator.estimate(values)


def calibrate(
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    validation: ValidationSplit,
    batch_size: int = 256,
) -> AccuracyEstimator:
    """Predict the validation split (``predict`` answers classes and confidences) and fit the estimator."""
    classes: list[np.ndarray] = []
    confidence: list[np.ndarray] = []
    for start in range(0, len(validation.x), batch_size):
        c, p = predict(validation.x[start : start + batch_size])
        classes.append(np.asarray(c).ravel())
        confidence.append(np.asarray(p, dtype=np.float64).ravel())
    predicted = np.concatenate(classes)
    return AccuracyEstimator.fit(np.concatenate(confidence), predicted == validation.y)


class AccuracyCollector(Collector):
    """Exports the estimate when Prometheus scrapes, with the validation accuracy it is calibrated on."""

    def __init__(self, model: str, version: str, monitor: AccuracyMonitor) -> None:
        self._labels = [model, version]
        self._monitor = monitor

    def describe(self) -> Iterable[Metric]:
        """No description, so that registering computes nothing."""
        return []

    def collect(self) -> Iterable[Metric]:
        """``slipway_validation_accuracy`` always; ``slipway_estimated_accuracy`` once the window is full enough."""
        labels = ["model", "version"]
        reference = GaugeMetricFamily(
            "slipway_validation_accuracy",
            "Accuracy on the validation split saved with the training baseline (the estimate's calibration).",
            labels=labels,
        )
        reference.add_metric(self._labels, self._monitor.estimator.validation_accuracy)
        yield reference
        samples = GaugeMetricFamily(
            "slipway_estimated_accuracy_window_samples",
            "Predictions in the window the accuracy estimate is computed on.",
            labels=labels,
        )
        samples.add_metric(self._labels, self._monitor.confidences.samples)
        yield samples
        value = self._monitor.estimate()
        if value is None:
            return
        estimate = GaugeMetricFamily(
            "slipway_estimated_accuracy",
            "Label-free accuracy estimate of recent predictions, from their confidence (calibrated on validation).",
            labels=labels,
        )
        estimate.add_metric(self._labels, value)
        yield estimate


def register_accuracy(collector: AccuracyCollector, registry: CollectorRegistry = REGISTRY) -> None:
    """Add the accuracy collector to the registry KServe's ``/metrics`` serves."""
    registry.register(collector)
