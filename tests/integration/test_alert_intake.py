"""Alert intake against the real Alertmanager and Prometheus: token, v4 payload, idempotence, fallback polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from aiohttp import web

from slipway.clients.alerts import AlertsUnavailable, firing_alerts
from slipway.receivers.alertmanager import PATH, AlertmanagerReceiver
from slipway.receivers.http import HttpServer
from slipway.reconcilers.rollout_status import state_to_status
from slipway.rollout.alerts import Alert
from slipway.rollout.state import Blocked, RolloutState

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


async def test_through_alertmanager_a_wrong_token_and_a_resolved_alert_hand_nothing_on(testbed):
    """Alertmanager itself posting: with a wrong token it gets 401; with the right one, the resolve acts on nothing."""
    got: list[Alert] = []
    answers: list[tuple[int, dict[str, object]]] = []

    async def handle(alert: Alert) -> None:
        got.append(alert)

    receiver = AlertmanagerReceiver(TOKEN, handle)

    async def recording(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = await receiver(request)
        answers.append((resp.status, body))
        return resp

    server = HttpServer()
    server.route("POST", PATH, recording)
    port = await server.start("127.0.0.1", 0)
    md = f"md-{uuid.uuid4().hex[:6]}"
    labels = {"alertname": "SlipwayModelErrors", "namespace": "ml", "modeldeployment": md, "severity": "critical"}
    started = datetime.now(UTC) - timedelta(seconds=5)
    try:
        testbed.set_alert_webhooks([f"http://127.0.0.1:{port}{PATH}"], token="not-the-token")
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as client:
            firing = [{"labels": labels, "startsAt": started.isoformat()}]
            (await client.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=firing)).raise_for_status()

            async def until(what: str, probe: Callable[[], bool], timeout: float = 20) -> None:
                deadline = time.monotonic() + timeout
                while not probe():
                    assert time.monotonic() < deadline, f"timed out waiting for {what}: {answers}"
                    await asyncio.sleep(0.05)

            def mine(status: str) -> list[int]:
                return [
                    code
                    for code, body in answers
                    if body.get("status") == status
                    and any(a["labels"].get("modeldeployment") == md for a in body["alerts"])  # type: ignore[attr-defined]
                ]

            await until("Alertmanager's post with the wrong token", lambda: bool(mine("firing")))
            assert set(mine("firing")) == {401} and not got, "a wrong token hands nothing on"

            # Alertmanager retries the failed notification; with the right token it is delivered once.
            testbed.set_alert_webhooks([f"http://127.0.0.1:{port}{PATH}"], token=TOKEN)
            await until("the delivery with the right token", lambda: 200 in mine("firing"), 30)
            assert [a.labels["modeldeployment"] for a in got] == [md]

            # Resolved: Alertmanager says so (send_resolved), the receiver answers 200 and hands nothing on.
            resolved = [{"labels": labels, "startsAt": started.isoformat(), "endsAt": datetime.now(UTC).isoformat()}]
            (await client.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=resolved)).raise_for_status()
            await until("the resolved notification", lambda: bool(mine("resolved")), 30)
            assert set(mine("resolved")) == {200} and len(got) == 1
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


def _canary_status(*blocked: str) -> dict[str, object]:
    now = datetime.now(UTC)
    state = RolloutState(
        phase="Paused",
        reason="PausedByStep",
        stable_version="1",
        canary_version="2",
        canary_weight=50,
        current_step=1,
        step_started_at=now,
        rollout_started_at=now,
        blocked=tuple(Blocked(version=v, reason="Aborted", at=now) for v in blocked),
    )
    status = {k: v for k, v in state_to_status(state).items() if v is not None}
    return status | {"observedGeneration": 1, "trackedVersion": "2"}


async def test_the_alert_path_never_acts_on_a_stale_copy(testbed, kube_api, namespace, slipway_crds):
    """Against the real API server: the watch's copy is a guess; a 409 or a "nothing to do" on it reads afresh."""
    from kubernetes import client

    from slipway.clients.kube import Kube
    from slipway.clients.watch_cache import KINDS, WatchCache
    from slipway.reconcilers.alert_intake import AlertIntake
    from slipway.reconcilers.driver import Driver

    custom = client.CustomObjectsApi(kube_api)
    group = ("ml.slipway.dev", "v1alpha1", namespace, "modeldeployments")

    def create(name: str, status: dict[str, object]) -> dict[str, object]:
        body = {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": "digits", "track": {"alias": "champion"}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                "rollback": {"alerts": {"alertNames": ["SlipwayModelDrift"]}},
            },
        }
        custom.create_namespaced_custom_object(*group, body)
        return dict(custom.patch_namespaced_custom_object_status(*group, name, {"status": status}))

    def fire(name: str) -> Alert:
        labels = {"alertname": "SlipwayModelDrift", "namespace": namespace, "modeldeployment": name}
        return Alert(name="SlipwayModelDrift", labels=labels | {"model_version": "2"}, fingerprint=name)

    cache = WatchCache(KINDS)  # filled here as kopf's watch would fill it, a copy at a time
    cache.primed = True
    driver = Driver(Kube(kube_api, cache=cache), "")
    intake = AlertIntake()
    intake.bind(driver, None)
    try:
        # The watch's copy is older than the object: the conditional status write gets 409 and
        # nothing is written from it; read afresh, the rollback keeps what the newer status has.
        stale = create("stale", _canary_status())
        custom.patch_namespaced_custom_object_status(*group, "stale", {"status": _canary_status("9")})
        driver.watch(namespace, "stale")
        cache.observe(stale)
        assert await intake.handle(fire("stale")) == "rolled_back"
        status = custom.get_namespaced_custom_object(*group, "stale")["status"]
        assert status["phase"] == "RollingBack"
        assert [b["version"] for b in status["blockedVersions"]] == ["9", "2"], "written from the fresh object"

        # The watch's copy says there is nothing under watch (before the canary started): read afresh.
        early = {"phase": "Succeeded", "stableVersion": "1", "observedGeneration": 1, "trackedVersion": "1"}
        before = create("early", early)
        custom.patch_namespaced_custom_object_status(*group, "early", {"status": _canary_status()})
        driver.watch(namespace, "early")
        cache.observe(before)
        assert await intake.handle(fire("early")) == "rolled_back"
        assert custom.get_namespaced_custom_object(*group, "early")["status"]["phase"] == "RollingBack"
        route = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", "early")
        weights = {r["name"]: r.get("weight", 1) for r in route["spec"]["rules"][0]["backendRefs"]}
        assert {k: w for k, w in weights.items() if w} == {"early-v1-predictor": 100}

        # Nothing to do on the watch's copy (already RollingBack): confirmed on a fresh read, ignored.
        current = dict(custom.get_namespaced_custom_object(*group, "early"))
        cache.observe(current)
        assert await intake.handle(fire("early")) == "ignored", "RollingBack: nothing under watch any more"
    finally:
        for name in ("stale", "early"):
            with contextlib.suppress(Exception):
                custom.delete_namespaced_custom_object(*group, name)
