"""Alert intake, pure parts: matching to a ModelDeployment, de-duplication, payload and API parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from slipway.api.modeldeployment import AlertSelector
from slipway.clients.alerts import AlertsUnavailable, parse_alerts
from slipway.receivers.alertmanager import AlertmanagerReceiver, Seen, WebhookPayload, to_alerts
from slipway.rollout.alerts import Alert, matches, target

LABELS = {
    "alertname": "SlipwayModelDrift",
    "namespace": "ml",
    "modeldeployment": "digits",
    "severity": "critical",
    "model_version": "2",
}
SELECTOR = AlertSelector.model_validate(
    {"alertNames": ["SlipwayModelDrift", "SlipwayModelErrors"], "matchLabels": {"severity": "critical"}}
)


def alert(**labels: str) -> Alert:
    merged = {**LABELS, **labels}
    return Alert(name=merged["alertname"], labels=merged, fingerprint="f1", starts_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_matching_alert_rolls_back():
    assert matches(alert(), "ml", "digits", SELECTOR, {"2"})
    assert target(alert()) == ("ml", "digits")


@pytest.mark.parametrize(
    ("labels", "namespace", "name", "versions", "why"),
    [
        ({}, "other", "digits", {"2"}, "another namespace"),
        ({}, "ml", "other", {"2"}, "another deployment"),
        ({"alertname": "HighCPU"}, "ml", "digits", {"2"}, "name not selected"),
        ({"severity": "warning"}, "ml", "digits", {"2"}, "matchLabels differ"),
        ({"model_version": "1"}, "ml", "digits", {"2"}, "about the stable version, not the canary"),
    ],
)
def test_non_matching_alerts(labels, namespace, name, versions, why):
    assert not matches(alert(**labels), namespace, name, SELECTOR, versions), why


def test_no_selector_means_alerts_never_roll_back():
    assert not matches(alert(), "ml", "digits", None, {"2"})


def test_alert_without_version_label_matches_any_live_version():
    a = Alert(
        name="SlipwayModelErrors",
        labels={k: v for k, v in LABELS.items() if k != "model_version"} | {"alertname": "SlipwayModelErrors"},
    )
    assert matches(a, "ml", "digits", SELECTOR, {"2"})


def test_seen_acts_once_per_firing_episode_and_forgets_after_ttl():
    seen = Seen(ttl=10)
    assert seen.first_time(("f1", "t0"), now=0)
    assert not seen.first_time(("f1", "t0"), now=5)
    assert seen.first_time(("f1", "t1"), now=5), "a new episode of the same alert acts again"
    assert seen.first_time(("f1", "t0"), now=20), "forgotten after the TTL"


PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="SlipwayModelDrift"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "slipway",
    "groupLabels": {},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://am",
    "alerts": [
        {
            "status": "firing",
            "labels": LABELS,
            "annotations": {"summary": "drift"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://p",
            "fingerprint": "abc",
        },
        {
            "status": "resolved",
            "labels": LABELS,
            "annotations": {},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "2026-01-01T00:01:00Z",
            "generatorURL": "",
            "fingerprint": "def",
        },
    ],
}


def test_payload_v4_gives_only_firing_alerts():
    alerts = to_alerts(WebhookPayload.model_validate(PAYLOAD))
    assert [a.fingerprint for a in alerts] == ["abc"]
    assert alerts[0].name == "SlipwayModelDrift" and alerts[0].labels["modeldeployment"] == "digits"


def test_bearer_token_check():
    async def handle(_: Alert) -> None:
        return None

    receiver = AlertmanagerReceiver("s3cret", handle)
    assert receiver.authorised("Bearer s3cret")
    assert not receiver.authorised("Bearer wrong")
    assert not receiver.authorised(None)
    assert not receiver.authorised("Basic s3cret")
    assert not AlertmanagerReceiver("", handle).authorised("Bearer ")


def test_prometheus_alerts_api_parsing():
    body = {
        "status": "success",
        "data": {
            "alerts": [
                {
                    "labels": LABELS,
                    "annotations": {},
                    "state": "firing",
                    "activeAt": "2026-01-01T00:00:00.5Z",
                    "value": "1",
                },
                {
                    "labels": {**LABELS, "alertname": "Pending"},
                    "annotations": {},
                    "state": "pending",
                    "activeAt": "2026-01-01T00:00:00Z",
                    "value": "1",
                },
            ]
        },
    }
    alerts = parse_alerts(body)
    assert [a.name for a in alerts] == ["SlipwayModelDrift"] and alerts[0].source == "prometheus"
    with pytest.raises(AlertsUnavailable):
        parse_alerts({"status": "error", "error": "boom"})
