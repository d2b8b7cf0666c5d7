"""Analysis decisions: PromQL templates, one measurement against min/max, a round folded into the verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from slipway.api.analysis import AnalysisMetric
from slipway.api.common import parse_duration
from slipway.api.modeldeployment import Analysis, AnalysisStep
from slipway.api.rollout import AnalysisPhase as AnalysisPhase
from slipway.api.rollout import AnalysisState as AnalysisState
from slipway.api.rollout import Measurement as Measurement
from slipway.api.rollout import MeasurementPhase as MeasurementPhase

ERROR_RATE_QUERY = (
    'sum(rate(slipway_requests_total{namespace="{{namespace}}",model="{{name}}",version="{{version}}",code=~"5.."}[1m]))'
    ' / sum(rate(slipway_requests_total{namespace="{{namespace}}",model="{{name}}",version="{{version}}"}[1m]))'
)
"""A ready-made template: share of 5xx responses of one version."""
P99_LATENCY_QUERY = (
    "histogram_quantile(0.99, sum by (le) (rate(slipway_request_duration_seconds_bucket"
    '{namespace="{{namespace}}",model="{{name}}",version="{{version}}"}[1m])))'
)
"""A ready-made template: p99 request latency of one version, in seconds."""


def render_query(template: str, *, namespace: str, name: str, version: str) -> str:
    """Fill ``{{namespace}}``, ``{{name}}`` (also ``{{deployment}}``) and ``{{version}}`` into a PromQL template."""
    out = template.replace("{{namespace}}", namespace).replace("{{version}}", version)
    return out.replace("{{name}}", name).replace("{{deployment}}", name)


@dataclass(frozen=True)
class AnalysisConfig:
    """A resolved analysis: metrics, interval, failure limit and the successful rounds needed."""

    metrics: tuple[AnalysisMetric, ...]
    interval: timedelta
    failure_limit: int
    count: int


def resolve(step: AnalysisStep | None, base: Analysis | None) -> AnalysisConfig:
    """An analysis step's settings, unset ones taken from the strategy's analysis (then the API defaults)."""
    if base is not None:
        defaults = base
    elif step is not None and step.metrics:
        defaults = Analysis(metrics=step.metrics)
    else:
        raise ValueError("an analysis needs metrics: on the step or in the strategy's analysis")
    metrics = (step.metrics if step and step.metrics else None) or defaults.metrics or ()
    interval = (step.interval if step and step.interval else None) or defaults.interval
    failure_limit = step.failure_limit if step and step.failure_limit is not None else defaults.failure_limit
    count = step.count if step and step.count is not None else defaults.count
    return AnalysisConfig(tuple(metrics), parse_duration(interval), failure_limit, count)


def judge(
    metric: AnalysisMetric, version: str, value: float | None, at: datetime, error: str | None = None
) -> Measurement:
    """Judge one value: out of [min, max] fails; no value (or NaN) is Inconclusive; a query error is Error.

    The measurement keeps the metric's dryRun: ``fold`` records it but never acts on it.
    """

    def measured(value: float | None, phase: MeasurementPhase, message: str = "") -> Measurement:
        return Measurement(
            metric=metric.name,
            version=version,
            value=value,
            phase=phase,
            measured_at=at,
            message=message,
            dry_run=metric.dry_run,
        )

    if error is not None:
        return measured(None, "Error", error)
    if value is None or math.isnan(value):
        return measured(None, "Inconclusive", "no data: the query returned nothing")
    if metric.min is not None and value < metric.min:
        return measured(value, "Failed", f"{value:g} < min {metric.min:g}")
    if metric.max is not None and value > metric.max:
        return measured(value, "Failed", f"{value:g} > max {metric.max:g}")
    return measured(value, "Successful")


def due(state: AnalysisState, config: AnalysisConfig, now: datetime) -> bool:
    """Whether a new round should be measured now: none yet, or the interval has passed."""
    last = state.last_measured_at
    return last is None or now - last >= config.interval


def until_due(state: AnalysisState, config: AnalysisConfig, now: datetime) -> float:
    """Seconds until the next round is due (0 when due)."""
    last = state.last_measured_at
    return 0.0 if last is None else max(0.0, (last + config.interval - now).total_seconds())


def fold(state: AnalysisState, round_: tuple[Measurement, ...], config: AnalysisConfig) -> AnalysisState:
    """Add one round. Any metric out of bounds: a failed round; else any without data or in error:
    inconclusive (never counts as a pass: no promotion without evidence); else a successful round.

    Dry-run measurements are kept (status shows them) but left out of the verdict. A round of
    dry-run metrics only acts on nothing: it passes, whatever they measured (dryRun never holds
    a rollout). A round with no measurement at all is inconclusive.
    """
    started = state.started_at or (round_[0].measured_at if round_ else None)
    acted = [m for m in round_ if not m.dry_run]
    phases = {m.phase for m in acted}
    if not round_:
        phases = {"Inconclusive"}
    if "Failed" in phases:
        failed = state.failed + 1
        phase: AnalysisPhase = "Failed" if failed > config.failure_limit else "Running"
        return state.model_copy(
            update={"phase": phase, "failed": failed, "started_at": started, "measurements": round_}
        )
    if phases & {"Inconclusive", "Error"}:
        inconclusive = state.inconclusive + 1
        return state.model_copy(
            update={
                "phase": "Inconclusive",
                "inconclusive": inconclusive,
                "started_at": started,
                "measurements": round_,
            }
        )
    successful = state.successful + 1
    phase = "Successful" if successful >= config.count else "Running"
    return state.model_copy(
        update={"phase": phase, "successful": successful, "started_at": started, "measurements": round_}
    )


def explain(state: AnalysisState, config: AnalysisConfig) -> str:
    """A one-line account of the analysis for status.message."""
    head = (
        f"analysis {state.phase}: {state.successful}/{config.count} successful, "
        f"{state.failed} failed (limit {config.failure_limit}), {state.inconclusive} inconclusive"
    )
    notes = [f"{m.metric}{' (dry run)' if m.dry_run else ''}: {m.message}" for m in state.measurements if m.message]
    return head + (f" ({'; '.join(notes)})" if notes else "")
