"""What to notify: the notification event behind each Kubernetes event reason, the message, its id, its targets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from slipway.api.common import parse_duration
from slipway.api.notifications import Notifications, NotificationTarget
from slipway.clients.webhooks import Message

from .rollout_metrics import abort_cause
from .status import Event, now_iso

MD_EVENTS: Mapping[str, tuple[str, ...]] = {
    "RolloutStarted": ("RolloutStarted",),
    "Superseded": ("RolloutStarted",),
    "StepCompleted": ("StepReached",),
    "PausedByStep": ("Paused",),
    "PausedByUser": ("Paused",),
    "PausedBySpec": ("Paused",),
    "WaitingForApproval": ("Paused",),
    "Approved": ("StepReached",),
    "FirstVersion": ("Promoted",),
    "StepsCompleted": ("Promoted",),
    "AutoPromoted": ("Promoted",),
    "PromotedByUser": ("Promoted",),
    "CandidateWon": ("Promoted",),
    "AnalysisFailed": ("RolledBack",),
    "CandidateLost": ("RolledBack",),
    "AlertFiring": ("RolledBack",),
    "Aborted": ("RolledBack",),
    "TargetReverted": ("RolledBack",),
    "ProgressDeadlineExceeded": ("ProgressDeadlineExceeded", "RolledBack"),
    "AnalysisInconclusive": ("AnalysisInconclusive",),
    "ReconcileFailed": ("ReconcileError",),
    "ChildNotOwned": ("ReconcileError",),
    "InvalidSpec": ("ReconcileError",),
    "Forbidden": ("ReconcileError",),
}
"""ModelDeployment event reasons (rollout/phases.py, reconcilers/modeldeployment.py) → notification events."""

TR_EVENTS: Mapping[str, tuple[str, ...]] = {
    "JobFailed": ("TrainingFailed",),
    "JobDeleted": ("TrainingFailed",),
    "MlflowError": ("TrainingFailed",),
    "InvalidSpec": ("TrainingFailed",),
    "Forbidden": ("TrainingFailed",),
    "GateFailed": ("GateFailed",),
    "ReconcileFailed": ("ReconcileError",),
    "ChildNotOwned": ("ReconcileError",),
    "JobConflict": ("ReconcileError",),
}
"""TrainingRun event reasons (reconcilers/trainingrun.py) → notification events."""

KINDS: Mapping[str, Mapping[str, tuple[str, ...]]] = {"ModelDeployment": MD_EVENTS, "TrainingRun": TR_EVENTS}
_ANCHOR = ("phase", "canaryVersion", "stableVersion", "currentStep", "stepStartedAt", "rolloutStartedAt", "promotedAt")


def notification_events(kind: str, reason: str) -> tuple[str, ...]:
    """The notification events an event of this reason on this kind is (empty: none)."""
    table = KINDS.get(kind, {})
    if reason in table:
        return table[reason]
    if kind == "ModelDeployment" and ("Approval" in reason or reason.startswith("Paused")):
        return ("Paused",)
    return ()


def event_id(uid: str, reason: str, status: Mapping[str, Any]) -> str:
    """A stable id of one occurrence: the object, the reason and where the object's status stands.

    The same occurrence (the same pass's event, to any target, tried any number of times) keeps
    its id; the next occurrence of the reason (another rollout, step, error) gets another.
    """
    anchor = {key: status.get(key) for key in _ANCHOR}
    anchor["history"] = len(status.get("history") or [])
    anchor["conditions"] = sorted(
        (str(c.get("type")), str(c.get("status")), str(c.get("lastTransitionTime")))
        for c in status.get("conditions") or []
    )
    raw = json.dumps([uid, reason, anchor], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _details(kind: str, reason: str, status: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if kind == "ModelDeployment":
        for label, key in (("Stable version", "stableVersion"), ("Canary version", "canaryVersion")):
            if status.get(key):
                out[label] = str(status[key])
        if status.get("canaryVersion") and status.get("canaryWeight") is not None:
            out["Canary weight"] = f"{status['canaryWeight']}%"
        if status.get("currentStep") is not None:
            out["Step"] = str(status["currentStep"])
        cause = rollback_cause(reason, status)
        if cause:
            out["Cause"] = cause
    else:
        for label, key in (("Phase", "phase"), ("MLflow run", "mlflowRunId"), ("Model version", "modelVersion")):
            if status.get(key):
                out[label] = str(status[key])
        failed = [g.get("metric") for g in status.get("gates") or [] if not g.get("passed")]
        if failed:
            out["Failed gates"] = ", ".join(str(g) for g in failed)
    return out


def rollback_cause(reason: str, status: Mapping[str, Any]) -> str:
    """What caused a rollback (as slipway_rollout_aborts labels it): the alert, the failed metrics, the deadline …"""
    if "RolledBack" not in MD_EVENTS.get(reason, ()):
        return ""
    alert = (status.get("lastAlert") or {}).get("name")
    measurements = (status.get("analysis") or {}).get("measurements") or []
    failed = [str(m.get("metric")) for m in measurements if m.get("phase") == "Failed"]
    return abort_cause(reason, alert, failed)


def message_for(
    body: Mapping[str, Any], event: Event, notification: str, status: Mapping[str, Any], now: datetime | None = None
) -> Message:
    """The notification of one event on ``body`` whose status is now ``status``."""
    meta = body.get("metadata") or {}
    kind = str(body.get("kind") or "")
    return Message(
        id=event_id(str(meta.get("uid") or ""), event.reason, status),
        event=notification,
        reason=event.reason,
        severity=event.type,
        kind=kind,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        message=event.message,
        time=now_iso(now or datetime.now(UTC)),
        details=_details(kind, event.reason, status),
    )


def spec_notifications(body: Mapping[str, Any]) -> Notifications | None:
    """The object's spec.notifications (None: unset or, past the schema somehow, invalid)."""
    raw = (body.get("spec") or {}).get("notifications")
    if raw is None:
        return None
    try:
        return Notifications.model_validate(raw)
    except ValidationError:
        return None


def targets_for(
    defaults: Notifications, own: Notifications | None, events: tuple[str, ...]
) -> list[NotificationTarget]:
    """The targets that get a notification of any of ``events``: the object's, then the defaults (unless opted out)."""
    sections = [own] if own is not None else []
    if own is None or own.inherit_defaults:
        sections.append(defaults)
    out: list[NotificationTarget] = []
    for section in sections:
        for target in section.targets:
            wanted = target.events if target.events is not None else section.events
            if wanted is None or any(e in wanted for e in events):
                out.append(target)
    return out


def inconclusive_bound(own: Notifications | None, default_seconds: float) -> float:
    """Seconds an analysis may stay inconclusive before AnalysisInconclusive is sent."""
    if own is not None and own.inconclusive_after is not None:
        return parse_duration(own.inconclusive_after).total_seconds()
    return default_seconds
