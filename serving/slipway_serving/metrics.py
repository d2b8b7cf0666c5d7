"""Prometheus metrics of the serving runtime; the alert rules and the rollout analysis use them.

Every series carries ``model`` and ``version`` (set once per process from the CLI), and every
other label has a bounded set of values. Names:

``slipway_requests_total{model,version,code}``
    Counter of inference requests (V1 ``:predict``/``:explain``, V2 ``/infer``) by HTTP status
    code, including the 4xx answered by validation and the 413 of the body limit. Error rate:
    ``sum(rate(slipway_requests_total{code=~"5.."}[5m])) / sum(rate(slipway_requests_total[5m]))``.
``slipway_request_duration_seconds{model,version}``
    Histogram of inference request latency, from the first byte handled to the last sent.
``slipway_errors_total{model,version,kind}``
    Counter of failed inference requests by reason. ``kind`` is one of ``invalid_request``,
    ``shape``, ``dtype``, ``too_large``, ``not_ready``, ``prediction``, ``load``, ``not_found``,
    ``client_error``, ``internal``.
``slipway_predictions_total{model,version,class}``
    Counter of predicted instances by class (``class`` is the class index or label; the first
    ``max_classes`` distinct values seen, every later one counted as ``other``). Classifiers
    only.
``slipway_prediction_confidence{model,version}``
    Histogram of the top-class probability per predicted instance. Classifiers only.
``slipway_batch_size{model,version}``
    Histogram of instances per model call (one request, or one dynamic batch).
``slipway_feature_drift_psi{model,version,feature}``
    Gauge: PSI of the sliding window of recent inputs against the training baseline, per
    feature (feature names from the baseline; exported when there are at most
    ``max_drift_features`` of them). Absent when the model has no baseline or the window holds
    fewer than ``--drift-min-samples`` instances.
``slipway_model_drift_score{model,version}``
    Gauge: mean of the per-feature PSI. Same absence rules. Alert: ``> 0.25`` (major shift).
``slipway_drift_window_samples{model,version}``
    Gauge: instances currently in the drift window (present whenever a baseline is loaded).
``slipway_estimated_accuracy{model,version}``
    Gauge: label-free accuracy estimate of the predictions in the window (``--drift-window``),
    from their confidence, calibrated on the validation split saved with the training baseline
    (``performance.py``). Absent without a validation split, for non-classifiers, and while the
    window holds fewer than ``--drift-min-samples`` predictions. Alert: more than 0.1 below
    ``slipway_validation_accuracy``.
``slipway_validation_accuracy{model,version}``
    Gauge: the model's accuracy on that validation split, measured at load (the estimate's
    reference).
``slipway_estimated_accuracy_window_samples{model,version}``
    Gauge: predictions currently in the estimate's window.
``slipway_feedback_total{model,version}``
    Counter of predicted instances whose true label a client reported
    (``POST /v2/models/{name}/feedback``, see ``feedback.py``).
``slipway_feedback_correct_total{model,version}``
    Counter of those whose prediction was right. Live accuracy:
    ``sum(increase(slipway_feedback_correct_total[1h])) / sum(increase(slipway_feedback_total[1h]))``.
``slipway_feedback_unmatched_total{model,version}``
    Counter of feedback reports for request ids not remembered (unknown, evicted or answered).
``slipway_model_info{model,version,flavor}``
    Gauge, always 1: which artifact flavor this process serves.

KServe's own ``request_predict_seconds`` and friends are still exported next to these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .drift import DriftReport

LABELS = ("model", "version")

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter("slipway_requests", "Inference requests by HTTP status code.", [*LABELS, "code"])
REQUEST_DURATION = Histogram(
    "slipway_request_duration_seconds",
    "Inference request latency.",
    LABELS,
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter("slipway_errors", "Failed inference requests by reason.", [*LABELS, "kind"])
PREDICTIONS = Counter("slipway_predictions", "Predicted instances by class.", [*LABELS, "class"])
CONFIDENCE = Histogram(
    "slipway_prediction_confidence",
    "Top-class probability per predicted instance.",
    LABELS,
    buckets=CONFIDENCE_BUCKETS,
)
BATCH_SIZE = Histogram("slipway_batch_size", "Instances per model call.", LABELS, buckets=BATCH_BUCKETS)
FEEDBACK = Counter("slipway_feedback", "Predicted instances whose true label was reported.", LABELS)
FEEDBACK_CORRECT = Counter("slipway_feedback_correct", "Reported instances predicted right.", LABELS)
FEEDBACK_UNMATCHED = Counter("slipway_feedback_unmatched", "Feedback reports for unknown request ids.", LABELS)
MODEL_INFO = Gauge("slipway_model_info", "The artifact flavor served.", [*LABELS, "flavor"])

#: Status code to error kind, for failures no ServingError explained (KServe's own errors).
_KIND_BY_CODE = {400: "invalid_request", 404: "not_found", 413: "too_large", 422: "invalid_request",
                 503: "not_ready"}  # fmt: skip


def kind_for_status(code: int) -> str:
    """Error kind of a failed request that carries no explicit kind."""
    if code in _KIND_BY_CODE:
        return _KIND_BY_CODE[code]
    return "internal" if code >= 500 else "client_error"


class ModelMetrics:
    """The metric children of one served model, cached so the request path does no lookups."""

    def __init__(self, model: str, version: str, max_classes: int = 100) -> None:
        self.model = model
        self.version = version
        self.max_classes = max_classes
        self._labels = (model, version)
        self.duration = REQUEST_DURATION.labels(*self._labels)
        self.confidence = CONFIDENCE.labels(*self._labels)
        self.batch_size = BATCH_SIZE.labels(*self._labels)
        self._requests: dict[int, Counter] = {}
        self._errors: dict[str, Counter] = {}
        self._classes: dict[str, Counter] = {}
        self.on_classes: Callable[[np.ndarray], None] | None = None
        """Called with each request's predicted classes (the feedback log remembers them). ``predicted``
        must run in the request's own task: the log files the classes under the request id it reads
        from a context variable (tests/integration/test_serving_feedback.py fails otherwise)."""

    def set_info(self, flavor: str) -> None:
        """Publish ``slipway_model_info`` for this model."""
        MODEL_INFO.labels(*self._labels, flavor).set(1)

    def request_done(self, code: int, seconds: float, error_kind: str | None) -> None:
        """Count one finished inference request."""
        counter = self._requests.get(code)
        if counter is None:
            counter = self._requests[code] = REQUESTS.labels(*self._labels, str(code))
        counter.inc()
        self.duration.observe(seconds)
        if code >= 400:
            kind = error_kind or kind_for_status(code)
            errors = self._errors.get(kind)
            if errors is None:
                errors = self._errors[kind] = ERRORS.labels(*self._labels, kind)
            errors.inc()

    def predicted(self, classes: np.ndarray | None, confidence: np.ndarray | None) -> None:
        """Count predicted classes and observe their confidences."""
        if classes is not None and classes.size:
            if self.on_classes is not None:
                self.on_classes(classes)
            if classes.size == 1:
                self._class_counter(classes.item()).inc()
            else:
                values, counts = np.unique(classes, return_counts=True)
                for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                    self._class_counter(value).inc(count)
        if confidence is not None:
            observe = self.confidence.observe
            for c in confidence.tolist():
                observe(c)

    def _class_counter(self, value: object) -> Counter:
        """The counter of one class label: the first ``max_classes`` labels seen, then other."""
        label = str(value)
        counter = self._classes.get(label)
        if counter is None:
            if len(self._classes) - ("other" in self._classes) >= self.max_classes:
                label = "other"
                counter = self._classes.get(label)
            if counter is None:
                counter = self._classes[label] = PREDICTIONS.labels(*self._labels, label)
        return counter


class DriftCollector(Collector):
    """Exports the drift gauges, computing the report when Prometheus scrapes."""

    def __init__(
        self,
        model: str,
        version: str,
        features: tuple[str, ...],
        report: Callable[[], DriftReport | None],
        samples: Callable[[], int],
        max_features: int = 256,
    ) -> None:
        self._labels = [model, version]
        self._features = features if len(features) <= max_features else ()
        self._report = report
        self._samples = samples

    def describe(self) -> Iterable[Metric]:
        """No description, so that registering does not compute a report."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The window size, and the PSI gauges once the window is full enough."""
        samples = GaugeMetricFamily(
            "slipway_drift_window_samples",
            "Instances in the drift window.",
            labels=list(LABELS),
        )
        samples.add_metric(self._labels, self._samples())
        yield samples
        report = self._report()
        if report is None:
            return
        score = GaugeMetricFamily(
            "slipway_model_drift_score",
            "Mean PSI of recent inputs against the training baseline.",
            labels=list(LABELS),
        )
        score.add_metric(self._labels, report.score)
        yield score
        if self._features:
            per_feature = GaugeMetricFamily(
                "slipway_feature_drift_psi",
                "PSI of recent inputs against the training baseline, per feature.",
                labels=[*LABELS, "feature"],
            )
            for name, value in zip(self._features, report.feature_psi, strict=True):
                per_feature.add_metric([*self._labels, name], value)
            yield per_feature


def register_drift(collector: DriftCollector, registry: CollectorRegistry = REGISTRY) -> None:
    """Add the drift collector to the registry KServe's ``/metrics`` serves."""
    registry.register(collector)
