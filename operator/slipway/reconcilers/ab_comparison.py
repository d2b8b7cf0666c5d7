"""Measure an A/B test's comparison in Prometheus: per version the comparison queries and the criterion."""

from __future__ import annotations

from datetime import datetime

from slipway.api.modeldeployment import ModelDeployment
from slipway.clients.prometheus import Prometheus, PrometheusError
from slipway.rollout.abtest import test_length
from slipway.rollout.analysis import render_query
from slipway.rollout.comparison import (
    PREDICTIONS_QUERY,
    SCALAR_QUERIES,
    Comparison,
    Variant,
    VariantResult,
    shares,
    verdict,
    window_of,
)
from slipway.rollout.state import RolloutState


def _fill(template: str, md: ModelDeployment, version: str, window: str) -> str:
    query = render_query(template, namespace=md.metadata.namespace or "", name=md.metadata.name or "", version=version)
    return query.replace("{{window}}", window)


def _scalar(prom: Prometheus, query: str) -> float | None:
    try:
        return prom.query(query)
    except PrometheusError:
        return None


def measure_variant(
    prom: Prometheus, md: ModelDeployment, version: str, variant: Variant, window: str
) -> VariantResult:
    """One version's requests, error rate, latencies, prediction shares, drift, feedback, accuracy and criterion."""
    values = {field: _scalar(prom, _fill(q, md, version, window)) for field, q in SCALAR_QUERIES.items()}
    try:
        predictions = shares(prom.query_by(_fill(PREDICTIONS_QUERY, md, version, window), "class"))
    except PrometheusError:
        predictions = ()
    result = VariantResult(version=version, variant=variant, predictions=predictions, **values)
    ab = md.spec.strategy.ab_test
    if ab is not None and ab.criterion is not None:
        result = result.model_copy(update={"criterion": _scalar(prom, _fill(ab.criterion.query, md, version, window))})
    return result


def compare(prom: Prometheus, md: ModelDeployment, state: RolloutState, now: datetime) -> Comparison | None:
    """A (stable) against B (the candidate) over the test, with the criterion's verdict."""
    ab = md.spec.strategy.ab_test
    if ab is None or state.stable_version is None or state.canary_version is None:
        return None
    window = window_of(test_length(state, ab, now))
    a = measure_variant(prom, md, state.stable_version, "A", window)
    b = measure_variant(prom, md, state.canary_version, "B", window)
    winner, message = verdict(ab.criterion, a.criterion, b.criterion)
    metric = ab.criterion.metric if ab.criterion is not None else None
    return Comparison(measured_at=now, window=window, variants=(a, b), metric=metric, winner=winner, message=message)
