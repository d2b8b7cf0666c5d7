"""Operator metrics of rollouts: phase, canary weight, rollouts, rollbacks and analysis measurements (on /metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from slipway.rollout.analysis import Measurement
from slipway.rollout.phases import Phase
from slipway.rollout.state import Decision

PHASES: tuple[Phase, ...] = ("Idle", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "RolledBack")

ROLLOUT_PHASE = Gauge(
    "slipway_rollout_phase",
    "1 for the ModelDeployment's current rollout phase, 0 for the others.",
    ["namespace", "name", "phase"],
)
CANARY_WEIGHT = Gauge("slipway_canary_weight", "Percent of traffic on the canary.", ["namespace", "name"])
ROLLOUTS = Counter("slipway_rollouts", "Rollouts started.", ["namespace", "name", "strategy"])
ROLLBACKS = Counter("slipway_rollbacks", "Rollbacks, by reason.", ["namespace", "name", "reason"])
MEASUREMENT_VALUE = Gauge(
    "slipway_analysis_measurement_value",
    'Last value an analysis metric measured (NaN: no data or an error); dry_run="true": never acted on.',
    ["namespace", "name", "metric", "dry_run"],
)
MEASUREMENTS = Counter(
    "slipway_analysis_measurements",
    "Analysis measurements, by metric and phase (Successful, Failed, Inconclusive, Error); dry-run ones labelled.",
    ["namespace", "name", "metric", "phase", "dry_run"],
)
PASS_ERRORS = Counter("slipway_reconcile_errors", "ModelDeployment passes that failed (retried with a back-off).")
ABORTS = Counter(
    "slipway_rollout_aborts",
    "Rollouts aborted or rolled back, by reason and cause: the alert's name, the failed metrics, "
    "progress-deadline, manual-abort, ab-test-lost, target-reverted.",
    ["namespace", "name", "reason", "cause"],
)
CAUSES = {
    "ProgressDeadlineExceeded": "progress-deadline",
    "Aborted": "manual-abort",
    "CandidateLost": "ab-test-lost",
    "TargetReverted": "target-reverted",
}


def strategy_of(spec: Mapping[str, Any]) -> str:
    """The ``strategy`` label of a ModelDeployment's spec (as stored): blueGreen, abTest or canary, for every path."""
    strategy = spec.get("strategy") or {}
    if strategy.get("blueGreen") is not None:
        return "blueGreen"
    return "abTest" if strategy.get("abTest") is not None else "canary"


def abort_cause(reason: str, alert: str | None = None, failed_metrics: list[str] | None = None) -> str:
    """The cause label of a rollback: the alert's name, the failed metrics (sorted, comma-joined), or the reason's."""
    if reason == "AlertFiring":
        return alert or "unknown-alert"
    if reason == "AnalysisFailed":
        return ",".join(sorted(set(failed_metrics or []))) or "analysis"
    return CAUSES.get(reason, reason)


def record(namespace: str, name: str, strategy: str, decision: Decision, alert: str | None = None) -> None:
    """Export the decision's phase and weight; count rollout starts, and rollbacks by reason and cause.

    ``alert``: the name of the alert that made the decision (the alert path's).
    """
    for phase in PHASES:
        ROLLOUT_PHASE.labels(namespace, name, phase).set(1 if decision.state.phase == phase else 0)
    CANARY_WEIGHT.labels(namespace, name).set(decision.state.canary_weight if decision.state.canary_version else 0)
    arrow = decision.transition
    if arrow is None:
        return
    if arrow.reason in ("RolloutStarted", "Superseded"):
        ROLLOUTS.labels(namespace, name, strategy).inc()
    if arrow.target == "RollingBack":
        ROLLBACKS.labels(namespace, name, arrow.reason).inc()
        analysis = decision.state.analysis
        failed = [m.metric for m in analysis.measurements if m.phase == "Failed"] if analysis is not None else []
        ABORTS.labels(namespace, name, arrow.reason, abort_cause(arrow.reason, alert, failed)).inc()


def record_measurements(namespace: str, name: str, round_: tuple[Measurement, ...]) -> None:
    """Export one analysis round: each metric's value and its phase counted, dry-run metrics labelled so."""
    for m in round_:
        dry = "true" if m.dry_run else "false"
        MEASUREMENT_VALUE.labels(namespace, name, m.metric, dry).set(m.value if m.value is not None else float("nan"))
        MEASUREMENTS.labels(namespace, name, m.metric, m.phase, dry).inc()


def forget(namespace: str, name: str) -> int:
    """Drop every series of a deleted ModelDeployment (labels namespace, name first); returns how many."""
    dropped = 0
    for metric in (ROLLOUT_PHASE, CANARY_WEIGHT, ROLLOUTS, ROLLBACKS, ABORTS, MEASUREMENT_VALUE, MEASUREMENTS):
        for labels in [v for v in list(metric._metrics) if v[:2] == (namespace, name)]:
            metric.remove(*labels)
            dropped += 1
    return dropped
