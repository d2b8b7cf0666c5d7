"""Alert intake against the real Alertmanager and Prometheus: token, v4 payload, idempotence, fallback polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import yaml

from slipway.clients.alerts import AlertsUnavailable, firing_alerts
from slipway.receivers.alertmanager import PATH, AlertmanagerReceiver
from slipway.receivers.http import HttpServer
from slipway.rollout.alerts import Alert

pytestmark = pytest.mark.integration
TOKEN = "test-token-" + uuid.uuid4().hex


async def test_alertmanager_delivers_once_with_the_token(testbed):
    got: list[tuple[float, Alert]] = []

    async def handle(alert: Alert) -> None:
        got.append((time.monotonic(), alert))

    server = HttpServer()
    server.route("POST", PATH, AlertmanagerReceiver(TOKEN, handle))
    port = await server.start("127.0.0.1", 0)
    try:
        testbed.set_alert_webhooks([f"http://127.0.0.1:{port}{PATH}"], token=TOKEN)
        await asyncio.sleep(0.5)
        md = f"md-{uuid.uuid4().hex[:6]}"
        labels = {
            "alertname": "SlipwayModelDrift",
            "namespace": "ml",
            "modeldeployment": md,
            "model_version": "2",
            "severity": "critical",
        }
        body = [{"labels": labels, "annotations": {"summary": "drift"}, "startsAt": datetime.now(UTC).isoformat()}]
        async with httpx.AsyncClient() as client:
            sent = time.monotonic()
            for _ in range(3):  # Prometheus re-sends firing alerts; Alertmanager de-duplicates, and so do we
                (await client.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=body)).raise_for_status()
            deadline = time.monotonic() + 20

            def mine() -> list[tuple[float, Alert]]:
                return [(t, a) for t, a in got if a.labels.get("modeldeployment") == md]

            while not mine() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert mine(), "Alertmanager did not deliver the alert"
            arrived, alert = mine()[0]
            print(f"alertmanager → receiver: {(arrived - sent) * 1000:.0f} ms")
            assert alert.name == "SlipwayModelDrift" and alert.labels["modeldeployment"] == md
            assert alert.fingerprint

            # A repeated delivery of the same episode is acknowledged but acts once.
            payload = {
                "version": "4",
                "status": "firing",
                "receiver": "slipway",
                "groupKey": "k",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": labels,
                        "annotations": {},
                        "startsAt": alert.starts_at.isoformat() if alert.starts_at else "",
                        "fingerprint": alert.fingerprint,
                    }
                ],
            }
            url = f"http://127.0.0.1:{port}{PATH}"
            again = await client.post(url, json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
            assert again.status_code == 200 and again.json()["new"] == 0
            await asyncio.sleep(1.5)
            assert len([a for _, a in got if a.labels["modeldeployment"] == md]) == 1

            assert (await client.post(url, json=payload)).status_code == 401
            assert (await client.post(url, json=payload, headers={"Authorization": "Bearer nope"})).status_code == 401
            bad = await client.post(url, content=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
            assert bad.status_code == 400
    finally:
        testbed.set_alert_webhooks([])
        await server.stop()


async def test_prometheus_alerts_are_the_fallback(testbed):
    md = f"md-{uuid.uuid4().hex[:6]}"
    rule = {
        "groups": [
            {
                "name": "fallback",
                "rules": [
                    {
                        "alert": "SlipwayModelErrors",
                        "for": "0s",
                        "expr": "vector(1) > 0",
                        "labels": {"namespace": "ml", "modeldeployment": md, "severity": "critical"},
                    }
                ],
            }
        ]
    }
    testbed.set_rules("fallback", yaml.safe_dump(rule))
    try:
        deadline = time.monotonic() + 30
        found: list[Alert] = []
        while time.monotonic() < deadline and not found:
            found = [a for a in await firing_alerts(testbed.prometheus_url) if a.labels.get("modeldeployment") == md]
            await asyncio.sleep(0.2)
        assert found and found[0].name == "SlipwayModelErrors" and found[0].source == "prometheus"
    finally:
        testbed.set_rules("fallback", "groups: []\n")
    with pytest.raises(AlertsUnavailable):
        await firing_alerts("http://127.0.0.1:9", timeout=1)
