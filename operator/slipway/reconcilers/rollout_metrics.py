"""Operator metrics of rollouts: phase, canary weight, rollouts and rollbacks counted (served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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


def forget(namespace: str, name: str) -> int:
    """Drop every series of a deleted ModelDeployment (labels namespace, name first); returns how many."""
    dropped = 0
    for metric in (ROLLOUT_PHASE, CANARY_WEIGHT, ROLLOUTS, ROLLBACKS, ABORTS):
        for labels in [v for v in list(metric._metrics) if v[:2] == (namespace, name)]:
            metric.remove(*labels)
            dropped += 1
    return dropped
