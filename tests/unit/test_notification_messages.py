"""Notifications: the events behind each reason, ids, targets, the Slack/Teams/JSON bodies, HMAC signing, back-off."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from slipway.api.notifications import NOTIFICATION_EVENTS, Notifications
from slipway.clients import webhooks
from slipway.reconcilers import rollout_metrics
from slipway.reconcilers.notifications import (
    event_id,
    message_for,
    notification_events,
    rollback_cause,
    targets_for,
)
from slipway.reconcilers.notifier import Notifier, backoff
from slipway.reconcilers.status import Event
from slipway.rollout.analysis import AnalysisState, Measurement
from slipway.rollout.phases import TRANSITIONS
from slipway.rollout.state import Observations, RolloutState, rollback
from slipway.settings import Settings

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
BODY = {
    "apiVersion": "ml.slipway.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1"},
    "spec": {},
}
STATUS = {
    "phase": "RollingBack",
    "stableVersion": "1",
    "canaryVersion": "2",
    "canaryWeight": 0,
    "currentStep": 1,
    "rolloutStartedAt": "2026-12-06T11:59:00.000000Z",
    "lastAlert": {"name": "SlipwayHighErrorRate"},
}
BOOKKEEPING = {"Resumed", "ScaledDown", "RolledBack"}
"""Transitions that are no news of their own: a resume, the old version's clean-up, a rollback's end."""


def message(**changes: object) -> webhooks.Message:
    event = Event("AlertFiring", "alert SlipwayHighErrorRate fired for v2: all traffic back to v1", "Warning")
    out = message_for(BODY, event, "RolledBack", STATUS, NOW)
    return out if not changes else webhooks.Message(**{**out.__dict__, **changes})  # type: ignore[arg-type]


def test_every_transition_of_the_machine_is_a_notification_event_or_bookkeeping():
    for arrow in TRANSITIONS:
        kinds = notification_events("ModelDeployment", arrow.reason)
        assert bool(kinds) != (arrow.reason in BOOKKEEPING), arrow
        assert set(kinds) <= set(NOTIFICATION_EVENTS)
        if arrow.target == "RollingBack":
            assert "RolledBack" in kinds, arrow


def test_events_are_per_kind_and_unknown_reasons_are_none():
    assert notification_events("ModelDeployment", "ProgressDeadlineExceeded") == (
        "ProgressDeadlineExceeded",
        "RolledBack",
    )
    assert notification_events("TrainingRun", "GateFailed") == ("GateFailed",)
    assert notification_events("TrainingRun", "JobFailed") == ("TrainingFailed",)
    assert notification_events("TrainingRun", "StepCompleted") == ()
    assert notification_events("ModelVersion", "AliasMoved") == ()
    assert notification_events("ModelDeployment", "RegistryUpdated") == ()
    assert notification_events("ModelDeployment", "AwaitingRegistryApproval") == ("Paused",)


def test_event_id_is_stable_per_occurrence_and_differs_between_occurrences():
    same = event_id("u-1", "StepCompleted", STATUS)
    assert same == event_id("u-1", "StepCompleted", dict(STATUS)) and len(same) == 32
    assert same != event_id("u-2", "StepCompleted", STATUS)
    assert same != event_id("u-1", "RolloutStarted", STATUS)
    assert same != event_id("u-1", "StepCompleted", {**STATUS, "currentStep": 2})
    assert same != event_id("u-1", "StepCompleted", {**STATUS, "rolloutStartedAt": "2026-12-06T12:30:00.000000Z"})
    errors = [{"type": "ReconcileError", "status": "True", "lastTransitionTime": t} for t in ("12:00", "12:05")]
    assert event_id("u-1", "ReconcileFailed", {"conditions": errors[:1]}) != event_id(
        "u-1", "ReconcileFailed", {"conditions": errors[1:]}
    )


def test_message_names_the_object_and_the_cause():
    m = message()
    assert (m.event, m.reason, m.severity, m.kind, m.namespace, m.name) == (
        "RolledBack",
        "AlertFiring",
        "Warning",
        "ModelDeployment",
        "ml",
        "digits",
    )
    assert m.details["Cause"] == "SlipwayHighErrorRate"
    assert m.details["Canary version"] == "2" and m.details["Stable version"] == "1"
    assert m.time == "2026-12-06T12:00:00Z"
    assert m.title == "RolledBack: ModelDeployment ml/digits"


def test_rollback_cause_of_a_failed_analysis_names_the_failed_metrics():
    analysis = {"measurements": [{"metric": "error-rate", "phase": "Failed"}, {"metric": "p99", "phase": "Successful"}]}
    assert rollback_cause("AnalysisFailed", {"analysis": analysis}) == "error-rate"
    assert rollback_cause("Aborted", {}) == "manual-abort"
    assert rollback_cause("ProgressDeadlineExceeded", {}) == "progress-deadline"
    assert rollback_cause("StepCompleted", {}) == ""


def test_slack_payload_has_text_and_blocks_with_the_id():
    body = webhooks.slack_payload(message())
    assert body["text"].startswith(":warning: RolledBack: ModelDeployment ml/digits: alert SlipwayHighErrorRate")
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds == ["header", "section", "section", "context"]
    assert message().id in body["blocks"][-1]["elements"][0]["text"]
    assert "*Cause:* SlipwayHighErrorRate" in body["blocks"][2]["text"]["text"]
    ok = webhooks.slack_payload(message(severity="Normal"))
    assert ok["text"].startswith(":information_source:")


def test_teams_payload_is_one_adaptive_card():
    body = webhooks.teams_payload(message())
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    title, text, facts = card["body"]
    assert title["text"] == "RolledBack: ModelDeployment ml/digits" and title["color"] == "Attention"
    assert text["text"].startswith("alert SlipwayHighErrorRate fired")
    assert {"title": "Event id", "value": message().id} in facts["facts"]


def test_json_payload_carries_every_field_and_a_schema():
    body = webhooks.json_payload(message())
    assert body["schema"] == "slipway.dev/notification/v1"
    assert body["id"] == message().id and body["event"] == "RolledBack" and body["uid"] == "u-1"
    assert body["details"]["Cause"] == "SlipwayHighErrorRate"


def test_signed_request_verifies_as_documented():
    key = b"k3y"
    body, headers = webhooks.request("webhook", message(), 1_765_000_000, key)
    assert headers["X-Slipway-Event-Id"] == message().id
    assert headers["X-Slipway-Timestamp"] == "1765000000"
    # docs/notifications.md: HMAC-SHA256 over "<timestamp>.<raw body>", hex, prefixed "sha256="
    expected = hmac.new(key, b"1765000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Slipway-Signature"] == f"sha256={expected}"
    assert webhooks.verify(key, "1765000000", body, headers["X-Slipway-Signature"])
    assert not webhooks.verify(key, "1765000001", body, headers["X-Slipway-Signature"])
    assert not webhooks.verify(b"other", "1765000000", body, headers["X-Slipway-Signature"])
    assert not webhooks.verify(key, "1765000000", body.replace(b"digits", b"digitz"), headers["X-Slipway-Signature"])
    assert json.loads(body)["id"] == message().id


def test_slack_and_teams_requests_are_not_signed():
    for kind in ("slack", "teams"):
        _, headers = webhooks.request(kind, message(), 1, None)  # type: ignore[arg-type]
        assert "X-Slipway-Signature" not in headers and headers["X-Slipway-Event-Id"] == message().id


def _section(raw: dict[str, object]) -> Notifications:
    return Notifications.model_validate(raw)


def ref(key: str) -> dict[str, str]:
    return {"name": "slipway-notifications", "key": key}


def test_targets_add_to_the_defaults_unless_opted_out_and_filter_by_event():
    defaults = _section(
        {"targets": [{"name": "ops", "type": "slack", "urlSecretRef": ref("ops")}], "events": ["RolledBack"]}
    )
    own = _section(
        {
            "targets": [
                {"name": "team", "type": "teams", "urlSecretRef": ref("team")},
                {"name": "audit", "type": "webhook", "urlSecretRef": ref("a"), "signingSecretRef": ref("k"),
                 "events": ["Promoted"]},
            ],
            "events": ["RolloutStarted", "RolledBack"],
        }
    )  # fmt: skip
    names = lambda targets: [t.name for t in targets]  # noqa: E731
    assert names(targets_for(defaults, None, ("RolledBack",))) == ["ops"]
    assert names(targets_for(defaults, None, ("Promoted",))) == []
    assert names(targets_for(defaults, own, ("RolledBack",))) == ["team", "ops"]
    assert names(targets_for(defaults, own, ("Promoted",))) == ["audit"]
    assert names(targets_for(defaults, own, ("ProgressDeadlineExceeded", "RolledBack"))) == ["team", "ops"]
    alone = own.model_copy(update={"inherit_defaults": False})
    assert names(targets_for(defaults, alone, ("RolledBack",))) == ["team"]


def test_a_webhook_needs_a_signing_key_and_only_a_webhook_takes_one():
    with pytest.raises(ValueError, match="signingSecretRef"):
        _section({"targets": [{"name": "a", "type": "webhook", "urlSecretRef": ref("u")}]})
    with pytest.raises(ValueError, match="signingSecretRef"):
        _section({"targets": [{"name": "a", "type": "slack", "urlSecretRef": ref("u"), "signingSecretRef": ref("k")}]})
    with pytest.raises(ValueError, match="duplicate"):
        _section({"targets": [{"name": "a", "type": "slack", "urlSecretRef": ref("u")}] * 2})
    with pytest.raises(ValueError):
        _section({"targets": [{"name": "a", "type": "slack", "url": "https://hooks.example/x"}]})


def test_backoff_doubles_with_jitter_up_to_the_ceiling():
    for tries, full in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0)):
        waits = [backoff(tries, 60.0) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits), (tries, min(waits), max(waits))
        assert max(waits) - min(waits) > full / 10  # jitter: not all at once


def test_every_rollback_posts_a_warning_and_counts_an_abort_by_cause():
    failed = Measurement(
        metric="error-rate", version="2", value=0.3, phase="Failed", measured_at=NOW, message="0.3 > max 0.05"
    )
    state = RolloutState(
        phase="Progressing",
        stable_version="1",
        canary_version="2",
        canary_weight=20,
        rollout_started_at=NOW,
        analysis=AnalysisState(phase="Failed", failed=2, measurements=(failed,)),
    )
    obs = Observations(NOW, "2")
    cases = {
        "AnalysisFailed": "error-rate",
        "AlertFiring": "SlipwayHighErrorRate",
        "ProgressDeadlineExceeded": "progress-deadline",
        "Aborted": "manual-abort",
        "CandidateLost": "ab-test-lost",
        "TargetReverted": "target-reverted",
    }
    for reason, cause in cases.items():
        decision = rollback(state, obs, reason, f"{reason} happened")
        assert [(n.reason, n.warning) for n in decision.events] == [(reason, True)]
        alert = "SlipwayHighErrorRate" if reason == "AlertFiring" else None
        labels = {"namespace": "ns-abort", "name": "md", "reason": reason, "cause": cause}
        before = REGISTRY.get_sample_value("slipway_rollout_aborts_total", labels) or 0.0
        rollout_metrics.record("ns-abort", "md", "canary", decision, alert)
        assert REGISTRY.get_sample_value("slipway_rollout_aborts_total", labels) == before + 1
    assert rollout_metrics.forget("ns-abort", "md") > 0
    assert REGISTRY.get_sample_value("slipway_rollout_aborts_total", labels) is None


def _notifier(queue_size: int) -> Notifier:
    defaults = {"targets": [{"name": "ops", "type": "slack", "urlSecretRef": ref("u")}]}
    settings = Settings.model_validate({"notifications": defaults, "notification_queue_size": queue_size})
    return Notifier(None, settings)  # type: ignore[arg-type]  # no worker runs: nothing reads a Secret


def test_a_full_queue_drops_and_counts_instead_of_waiting_and_an_occurrence_is_queued_once():
    notifier = _notifier(queue_size=3)
    labels = {"type": "slack", "outcome": "dropped"}
    before = REGISTRY.get_sample_value("slipway_notifications_total", labels) or 0.0
    started = Event("RolloutStarted", "rolling out v2 (stable v1)")
    for step in range(5):
        notifier.notify(BODY, [started], {**STATUS, "currentStep": step})
    assert notifier.pending == 3
    assert REGISTRY.get_sample_value("slipway_notifications_total", labels) == before + 2
    again = _notifier(queue_size=10)
    for _ in range(3):  # the same occurrence handed over again (a second pass posting the same event)
        again.notify(BODY, [started], STATUS)
    assert again.pending == 1
    again.notify(BODY, [Event("ActionIgnored", "action pause does nothing in phase Succeeded", "Warning")], STATUS)
    assert again.pending == 1, "not a notification event"


def test_an_analysis_inconclusive_past_the_bound_is_notified_once_per_step(monkeypatch: pytest.MonkeyPatch):
    notifier = _notifier(queue_size=10)
    clock = [1000.0]
    monkeypatch.setattr("slipway.reconcilers.notifier.time.monotonic", lambda: clock[0])
    body = {**BODY, "spec": {"notifications": {"inconclusiveAfter": "60s"}}}
    status = {**STATUS, "phase": "Progressing", "analysis": {"phase": "Inconclusive", "inconclusive": 3}}
    notifier.notify(body, [], status)
    clock[0] += 59
    notifier.notify(body, [], status)
    assert notifier.pending == 0
    clock[0] += 2
    notifier.notify(body, [], status)
    notifier.notify(body, [], status)
    assert notifier.pending == 1
    clock[0] += 120
    notifier.notify(body, [], {**status, "currentStep": 2})  # the next step starts its own clock
    assert notifier.pending == 1
