"""Notifications on the real test bed: a receiver (a real HTTP server in the test) gets every event once per id.

The operator runs as a subprocess; its targets' URLs and HMAC key come from a Secret in the test's
namespace. The receiver answers 500 for a while: the operator retries (back-off capped at 1 s by
SLIPWAY_NOTIFICATION_MAX_BACKOFF_SECONDS) while the rollout goes on, and each event id is
accepted exactly once per target. The alert that rolls back goes through the test bed's real
Alertmanager. Signatures of the JSON webhook are checked here with hmac, as docs/notifications.md
tells receivers to.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from kubectl_scenario import (
    MODEL,
    action,
    deployment,
    first_version_up,
    forbid,
    md_status,
    model_version,
    move_alias,
    predictor,
    stop_after_deleting_deployments,
    wait_route,
)
from operator_fixture import StartOperator, start_operator
from operator_process import OperatorProcess, wait_until
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

KEY = b"hmac-" + uuid.uuid4().hex.encode()
TOKEN = "notify-" + uuid.uuid4().hex
ALERT = "SlipwayNotifyTestAlert"
SECRET = "slipway-notifications"
FAIL_SECONDS = 60.0
"""How long every target answers 500 while v2 rolls out: the issue's minute."""


@dataclass
class Got:
    """One request the receiver answered."""

    path: str
    id: str
    timestamp: str
    signature: str
    body: dict[str, Any]
    status: int
    at: float
    signed_ok: bool


class Receiver:
    """A notification receiver: records every request, answers 500 while told to, checks HMAC signatures."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.got: list[Got] = []
        self.fail_until = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                timestamp = self.headers.get("X-Slipway-Timestamp", "")
                signature = self.headers.get("X-Slipway-Signature", "")
                # as docs/notifications.md says: HMAC-SHA256 of "<timestamp>.<raw body>", hex, after "sha256="
                expected = (
                    "sha256=" + hmac.new(receiver.key, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
                )
                status = 500 if time.monotonic() < receiver.fail_until else 200
                got = Got(
                    self.path,
                    self.headers.get("X-Slipway-Event-Id", ""),
                    timestamp,
                    signature,
                    json.loads(raw),
                    status,
                    time.monotonic(),
                    hmac.compare_digest(expected, signature),
                )
                with receiver._lock:
                    receiver.got.append(got)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def all(self, path: str | None = None) -> list[Got]:
        with self._lock:
            return [g for g in self.got if path is None or g.path == path]

    def accepted(self, path: str) -> list[Got]:
        return [g for g in self.all(path) if g.status == 200]

    def events(self, path: str) -> list[str]:
        """The notification events accepted on a path, in arrival order (the JSON webhook's ``event`` field)."""
        return [event_of(g) for g in self.accepted(path)]


def event_of(got: Got) -> str:
    if got.path == "/webhook":
        return str(got.body["event"])
    if got.path == "/teams":
        return str(got.body["summary"].split(":")[0])
    return str(got.body["blocks"][0]["text"]["text"].split(":")[0])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(KEY)
    yield r
    r.server.shutdown()


def ref(key: str) -> dict[str, str]:
    return {"name": SECRET, "key": key}


def make_secret(kubectl, receiver: Receiver) -> None:
    data = {
        "webhook-url": receiver.url("/webhook"),
        "hmac-key": KEY.decode(),
        "teams-url": receiver.url("/teams"),
        "slack-url": receiver.url("/slack"),
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    kubectl("apply", "-f", "-", input=json.dumps(secret))


WEBHOOK = {"name": "audit", "type": "webhook", "urlSecretRef": ref("webhook-url"), "signingSecretRef": ref("hmac-key")}
TEAMS = {"name": "team", "type": "teams", "urlSecretRef": ref("teams-url")}
SLACK_DEFAULT = {"name": "ops", "type": "slack", "urlSecretRef": ref("slack-url")}


def metric(op: OperatorProcess, name: str, /, **labels: str) -> float:
    """A sample of the operator's /metrics with exactly these labels (0 if absent)."""
    text = httpx.get(f"{op.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def fire(testbed: Any, namespace: str, version: str, *, resolved: bool = False) -> None:
    """The alert, handed to the test bed's Alertmanager as Prometheus would (resolved: ends now)."""
    now = datetime.now(UTC)
    labels = {"alertname": ALERT, "namespace": namespace, "modeldeployment": MODEL, "model_version": version}
    ends = now if resolved else now + timedelta(minutes=5)
    body = [{"labels": labels, "startsAt": (now - timedelta(seconds=1)).isoformat(), "endsAt": ends.isoformat()}]
    httpx.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def test_every_rollout_event_reaches_its_targets_once_per_id_through_500s_without_holding_the_rollout(
    kubectl, namespace, testbed, slipway_crds, tmp_path, receiver
):
    make_secret(kubectl, receiver)
    env = {
        "SLIPWAY_NOTIFICATION_MAX_BACKOFF_SECONDS": "1",
        "SLIPWAY_ALERTMANAGER_TOKEN": TOKEN,
        "SLIPWAY_NOTIFICATIONS": json.dumps({"targets": [SLACK_DEFAULT], "events": ["RolledBack", "ReconcileError"]}),
    }
    op = OperatorProcess(testbed.kubeconfig, namespace, tmp_path, testbed.prometheus_url, env=env).start()
    op.wait_healthy()
    testbed.set_alert_webhooks([f"{op.url}/webhooks/alertmanager"], token=TOKEN)
    try:
        for version, aliases in (("1", ["champion"]), ("2", []), ("3", []), ("4", [])):
            model_version(kubectl, version, aliases)
        for version in ("1", "2", "3"):
            predictor(kubectl, version)
        deployment(
            kubectl,
            {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}], "scaleDownDelaySeconds": 0}},
            notifications={"targets": [WEBHOOK, TEAMS]},
            rollback={"alerts": {"alertNames": [ALERT]}},
        )
        first_version_up(kubectl)
        wait_until(lambda: "Promoted" in receiver.events("/webhook"), what="the first version's Promoted")

        # v2 rolls out while every target answers 500
        receiver.fail_until = time.monotonic() + FAIL_SECONDS
        move_alias(kubectl, "1", "2")
        wait_until(lambda: md_status(kubectl).get("phase") == "Paused", timeout=FAIL_SECONDS, what="v2 paused")
        wait_route(kubectl, {"1": 80, "2": 20}, timeout=5)
        assert time.monotonic() < receiver.fail_until, "the rollout moved on while no notification got through"
        refused = [g for g in receiver.all() if g.status == 500]
        assert refused and all(g.path != "/slack" for g in refused), "only the deployment's own targets want these"
        for path in ("/webhook", "/teams"):
            wait_until(
                lambda p=path: {"RolloutStarted", "StepReached", "Paused"} <= set(receiver.events(p)),
                timeout=FAIL_SECONDS + 20,
                what=f"v2's events on {path} after the 500s",
            )
        by_id = collections.Counter(g.id for g in receiver.all("/webhook"))
        late = [g for g in receiver.accepted("/webhook") if event_of(g) in ("RolloutStarted", "StepReached", "Paused")]
        assert all(by_id[g.id] >= 3 for g in late), "each was tried again after 500s (back-off ≤ 1 s over a minute)"
        assert all(g.at >= receiver.fail_until for g in late)

        action(kubectl, "promote")
        wait_until(lambda: md_status(kubectl).get("stableVersion") == "2", timeout=60, what="v2 promoted")
        wait_until(lambda: receiver.events("/webhook").count("Promoted") == 2, what="v2's Promoted")

        # v3 rolls out, and an alert through Alertmanager rolls it back
        move_alias(kubectl, "2", "3")
        wait_until(lambda: md_status(kubectl).get("phase") == "Paused", timeout=90, what="v3 paused")
        fire(testbed, namespace, "3")
        try:
            wait_until(lambda: md_status(kubectl).get("phase") == "RolledBack", timeout=60, what="v3 rolled back")
        finally:
            fire(testbed, namespace, "3", resolved=True)
        for path in ("/webhook", "/teams", "/slack"):
            wait_until(lambda p=path: "RolledBack" in receiver.events(p), timeout=30, what=f"RolledBack on {path}")
        (rolled_back,) = [g for g in receiver.accepted("/webhook") if g.body["event"] == "RolledBack"]
        assert rolled_back.body["reason"] == "AlertFiring" and rolled_back.body["severity"] == "Warning"
        assert rolled_back.body["details"]["Cause"] == ALERT and ALERT in rolled_back.body["message"]
        warnings = json.loads(kubectl("get", "events", "--field-selector", "reason=AlertFiring", "-o", "json").stdout)
        assert [e["type"] for e in warnings["items"]] == ["Warning"] and ALERT in warnings["items"][0]["message"]

        # v4 cannot get its HPA: a reconcile error
        forbid(kubectl, "no-hpas", "count/horizontalpodautoscalers.autoscaling")
        predictor(kubectl, "4")
        move_alias(kubectl, "3", "4")
        for path in ("/webhook", "/slack"):
            wait_until(lambda p=path: "ReconcileError" in receiver.events(p), timeout=60, what=f"error on {path}")
        kubectl("delete", "resourcequota", "no-hpas")

        time.sleep(3)  # anything sent twice would have arrived by now
        for path in ("/webhook", "/teams", "/slack"):
            accepted = collections.Counter(g.id for g in receiver.accepted(path))
            assert accepted and max(accepted.values()) == 1, (path, accepted)
        events = receiver.events("/webhook")
        print(f"\nwebhook events: {events}")
        want = {"RolloutStarted", "StepReached", "Paused", "Promoted", "RolledBack", "ReconcileError"}
        assert want <= set(events)
        assert sorted(set(receiver.events("/slack"))) == ["ReconcileError", "RolledBack"], "the defaults' filter"
        assert set(receiver.events("/teams")) == set(events), "both deployment targets get every event"
        webhook_requests = receiver.all("/webhook")
        assert all(g.signed_ok for g in webhook_requests), "every webhook request carries a valid signature"
        assert all(g.body["id"] == g.id for g in webhook_requests), "the id in the header and in the body"
        assert not any(g.signature for g in receiver.all("/teams") + receiver.all("/slack"))
        assert metric(op, "slipway_notifications_total", type="webhook", outcome="retried") >= 6
        delivered = metric(op, "slipway_notifications_total", type="webhook", outcome="delivered")
        assert delivered == len(receiver.accepted("/webhook"))
        labels = {"namespace": namespace, "name": MODEL, "reason": "AlertFiring", "cause": ALERT}
        assert metric(op, "slipway_rollout_aborts_total", **labels) == 1
    finally:
        testbed.set_alert_webhooks([])
        print(json.dumps(md_status(kubectl), indent=1))
        stop_after_deleting_deployments(kubectl, op)
        print(op.log_tail(150))


def test_inconclusive_analysis_abort_and_a_candidate_never_ready_are_notified_with_their_causes(
    kubectl, namespace, testbed, slipway_crds, tmp_path, receiver
):
    make_secret(kubectl, receiver)
    env = {"SLIPWAY_NOTIFICATION_MAX_BACKOFF_SECONDS": "1"}
    op = OperatorProcess(testbed.kubeconfig, namespace, tmp_path, testbed.prometheus_url, env=env).start()
    try:
        for version, aliases in (("1", ["champion"]), ("2", []), ("3", [])):
            model_version(kubectl, version, aliases)
        for version in ("1", "2"):  # v3 never gets a predictor
            predictor(kubectl, version)
        analysis = {
            "interval": "1s",
            "count": 2,
            "metrics": [
                {"name": "error-rate", "query": 'max(slipway_metric_nobody_exports{version="{{version}}"})', "max": 0.1}
            ],
        }
        steps = [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 60}]
        events = ["AnalysisInconclusive", "RolledBack", "ProgressDeadlineExceeded"]
        deployment(
            kubectl,
            {"canary": {"steps": steps, "analysis": analysis, "progressDeadline": "3s"}},
            notifications={"targets": [WEBHOOK], "events": events, "inconclusiveAfter": "2s"},
        )
        first_version_up(kubectl)
        move_alias(kubectl, "1", "2")
        wait_until(lambda: "AnalysisInconclusive" in receiver.events("/webhook"), timeout=60, what="inconclusive")
        time.sleep(3)  # more inconclusive rounds: no second notification for the same step
        assert receiver.events("/webhook") == ["AnalysisInconclusive"]
        assert md_status(kubectl)["phase"] == "Progressing"

        action(kubectl, "abort")
        wait_until(lambda: "RolledBack" in receiver.events("/webhook"), timeout=30, what="the abort")
        move_alias(kubectl, "2", "3")
        wait_until(
            lambda: "ProgressDeadlineExceeded" in receiver.events("/webhook"), timeout=60, what="the progress deadline"
        )
        time.sleep(2)
        bodies = [g.body for g in receiver.accepted("/webhook")]
        assert [(b["event"], b["reason"], b["details"].get("Cause")) for b in bodies] == [
            ("AnalysisInconclusive", "AnalysisInconclusive", None),
            ("RolledBack", "Aborted", "manual-abort"),
            ("ProgressDeadlineExceeded", "ProgressDeadlineExceeded", "progress-deadline"),
        ]
        assert all(g.signed_ok for g in receiver.all("/webhook"))
        for reason, cause in (("Aborted", "manual-abort"), ("ProgressDeadlineExceeded", "progress-deadline")):
            labels = {"namespace": namespace, "name": MODEL, "reason": reason, "cause": cause}
            assert metric(op, "slipway_rollout_aborts_total", **labels) == 1
            found = kubectl("get", "events", "--field-selector", f"reason={reason}", "-o", "json").stdout
            assert [e["type"] for e in json.loads(found)["items"]] == ["Warning"]
    finally:
        print(json.dumps(md_status(kubectl), indent=1))
        stop_after_deleting_deployments(kubectl, op)
        print(op.log_tail(100))


def test_a_failed_training_run_is_notified_once_to_its_target_and_the_defaults(
    start_operator: StartOperator, namespace, kubectl, receiver
):
    make_secret(kubectl, receiver)
    defaults = {"targets": [WEBHOOK]}
    op = start_operator(
        namespace,
        env={"SLIPWAY_NOTIFICATION_MAX_BACKOFF_SECONDS": "1", "SLIPWAY_NOTIFICATIONS": json.dumps(defaults)},
    )
    receiver.fail_until = time.monotonic() + 5
    run = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "broken"},
        "spec": {
            "framework": "custom",
            "command": ["python", "-c", "import sys; sys.exit(42)"],
            "experiment": f"slipway-notify-{uuid.uuid4().hex[:8]}",
            "notifications": {"targets": [TEAMS]},
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(run))
    try:
        for path in ("/webhook", "/teams"):
            wait_until(lambda p=path: "TrainingFailed" in receiver.events(p), timeout=180, what=f"failure on {path}")
        time.sleep(3)
        (failed,) = receiver.accepted("/webhook")
        assert failed.signed_ok and failed.body["kind"] == "TrainingRun" and failed.body["name"] == "broken"
        assert failed.body["reason"] == "JobFailed" and failed.body["details"]["Phase"] == "Failed"
        assert "exit code 42" in failed.body["message"]
        assert [event_of(g) for g in receiver.accepted("/teams")] == ["TrainingFailed"]
        assert receiver.accepted("/teams")[0].id == failed.id, "one occurrence, one id for every target"
    finally:
        kubectl("delete", "trainingruns", "--all", "--timeout=60s", check=False)
        print(op.log_tail(80))
