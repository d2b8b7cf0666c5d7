"""Leader election on a Lease, on the real test bed: the elector against the API server, then two operator processes.

First the election itself (``slipway.clients.leader``), candidates in threads against the real
kube-apiserver: one leads, a standby takes over once the lease runs out after the leader went
silent (and at once after a release), racing candidates never lead together, and a leader that
cannot reach the API server stops before the lease it can no longer renew runs out.

Then two real ``python -m slipway`` processes on one Lease, as the chart runs two replicas: the
standby runs no kopf and answers Alertmanager 503; the leader is SIGKILLed during a rollout (the
rollout completes once, no duplicate child) and during an alert storm delivered by the real
Alertmanager through a stand-in for the Service in front of the replicas (every alert is acted
on, once). ``-s`` prints the measured takeover times.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from operator_fixture import TcpProxy
from operator_process import OperatorProcess
from test_reliability import (
    MD,
    NO_MLFLOW,
    ROLLBACK_ON_ALERTS,
    ChildWatch,
    Cluster,
    wait_for,
)

from slipway.clients.leader import LeaderElector, LeaseConfig

pytestmark = pytest.mark.integration

FAST = LeaseConfig(name="x", namespace="x", identity="x", lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)
"""Short timings for the elector tests (client-go's ratios: duration > deadline > 1.2 x retry)."""
PROCESS_LEASE = {
    "SLIPWAY_LEASE_DURATION_SECONDS": "4",
    "SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS": "3",
    "SLIPWAY_LEASE_RETRY_PERIOD_SECONDS": "1",
}
TOKEN = "leader-election-" + uuid.uuid4().hex


# --------------------------------------------------------------------------- the elector against the API server


@dataclass
class Candidate:
    """One elector campaigning in a thread; records when it started and stopped leading."""

    elector: LeaderElector
    started: float | None = None
    stopped: float | None = None
    thread: threading.Thread | None = None

    def campaign(self) -> Candidate:
        def on_started() -> None:
            self.started = time.monotonic()

        def on_stopped() -> None:
            self.stopped = time.monotonic()

        self.thread = threading.Thread(target=self.elector.run, args=(on_started, on_stopped), daemon=True)
        self.thread.start()
        return self

    @property
    def leading(self) -> bool:
        return self.started is not None and self.stopped is None

    def die(self) -> None:
        """Stop renewing without releasing: what a SIGKILLed leader does."""
        self.elector.stop()
        if self.thread is not None:
            self.thread.join(timeout=10)


def api_client(kubeconfig: Path, host: str | None = None, workdir: Path | None = None) -> Any:
    """A client of the test bed, or of ``host`` instead with the same credentials (a copy of the kubeconfig:
    the client's credential refresh re-reads the server from the file, so setting the host after does not hold)."""
    import yaml
    from kubernetes import config

    if host is not None:
        doc = yaml.safe_load(kubeconfig.read_text())
        for entry in doc["clusters"]:
            entry["cluster"]["server"] = host
        kubeconfig = (workdir or kubeconfig.parent) / f"kubeconfig-{uuid.uuid4().hex[:8]}"
        kubeconfig.write_text(yaml.safe_dump(doc))
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def candidates(testbed: Any, namespace: str, tmp_path: Path) -> Iterator[Callable[..., Candidate]]:
    made: list[Candidate] = []
    lease = f"lease-{uuid.uuid4().hex[:6]}"

    def make(name: str, host: str | None = None) -> Candidate:
        cfg = LeaseConfig(
            name=lease,
            namespace=namespace,
            identity=name,
            lease_duration=FAST.lease_duration,
            renew_deadline=FAST.renew_deadline,
            retry_period=FAST.retry_period,
        )
        c = Candidate(LeaderElector(api_client(testbed.kubeconfig, host, tmp_path), cfg))
        made.append(c)
        return c

    yield make
    for c in made:
        c.die()
        c.elector.api.close()


def holder(kube_api: Any, namespace: str, lease: str) -> str:
    from kubernetes import client

    spec = client.CoordinationV1Api(kube_api).read_namespaced_lease(lease, namespace).spec
    return str(spec.holder_identity or "")


def test_one_leads_and_a_standby_takes_over_once_the_silent_leaders_lease_runs_out(
    candidates: Callable[..., Candidate], kube_api: Any, namespace: str
) -> None:
    a = candidates("a").campaign()
    wait_for("a leads", lambda: a.leading, 10, 0.05)
    b = candidates("b").campaign()
    time.sleep(2 * FAST.lease_duration)  # a renews: b must not lead meanwhile
    assert a.leading and not b.leading and b.started is None
    assert holder(kube_api, namespace, a.elector.config.name) == "a" and b.elector.leader == "a"
    a.die()
    died = time.monotonic()
    wait_for("b takes over", lambda: b.leading, 3 * FAST.lease_duration, 0.05)
    assert b.started is not None
    took = b.started - died
    print(f"\nleader silent → standby leads after {took:.2f}s (lease {FAST.lease_duration:.0f}s)")
    # a's last renewal was at most one retry period before it died; b waits out the full lease after seeing it
    assert FAST.lease_duration - FAST.retry_period - 0.3 <= took <= FAST.lease_duration + FAST.retry_period + 1.0
    assert holder(kube_api, namespace, a.elector.config.name) == "b"


def test_a_released_lease_is_taken_over_at_the_next_try(
    candidates: Callable[..., Candidate], kube_api: Any, namespace: str
) -> None:
    a = candidates("a").campaign()
    wait_for("a leads", lambda: a.leading, 10, 0.05)
    b = candidates("b").campaign()
    time.sleep(FAST.retry_period * 2)
    assert a.elector.release() is True
    released = time.monotonic()
    wait_for("b takes over", lambda: b.leading, FAST.lease_duration, 0.02)
    assert b.started is not None
    took = b.started - released
    print(f"\nreleased → standby leads after {took:.2f}s")
    assert took <= FAST.retry_period * 1.2 + 0.7, "a release is not waited out like a lease"
    assert holder(kube_api, namespace, a.elector.config.name) == "b"


def test_racing_candidates_never_lead_together(
    candidates: Callable[..., Candidate], kube_api: Any, namespace: str
) -> None:
    racers = [candidates(f"c{i}") for i in range(5)]
    for c in racers:
        c.campaign()  # all at once, on a Lease that does not exist yet
    wait_for("someone leads", lambda: any(c.leading for c in racers), 10, 0.05)
    end = time.monotonic() + 2 * FAST.lease_duration
    while time.monotonic() < end:
        leaders = [i for i, c in enumerate(racers) if c.leading]
        assert len(leaders) == 1, leaders
        time.sleep(0.05)
    (winner,) = [c for c in racers if c.leading]
    assert holder(kube_api, namespace, winner.elector.config.name) == winner.elector.config.identity


def test_a_leader_cut_off_from_the_api_server_stops_before_anyone_takes_over(
    candidates: Callable[..., Candidate], testbed: Any, namespace: str
) -> None:
    """The safety half: the old leader gives up at the renew deadline, the standby leads only after the lease."""
    from urllib.parse import urlparse

    server = urlparse(api_client(testbed.kubeconfig).configuration.host)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 443))
    proxy.start()
    try:
        a = candidates("a", host=f"https://127.0.0.1:{proxy.port}").campaign()
        wait_for("a leads", lambda: a.leading, 10, 0.05)
        b = candidates("b").campaign()
        time.sleep(FAST.retry_period * 2)
        proxy.stop()  # a can no longer renew
        cut = time.monotonic()
        wait_for("a stops leading", lambda: a.stopped is not None, 3 * FAST.lease_duration, 0.05)
        wait_for("b takes over", lambda: b.leading, 3 * FAST.lease_duration, 0.05)
        assert a.stopped is not None and b.started is not None
        print(f"\ncut off: old leader stopped after {a.stopped - cut:.2f}s, new one led after {b.started - cut:.2f}s")
        assert a.stopped - cut <= FAST.renew_deadline + FAST.retry_period + 1.0
        assert a.stopped < b.started, "never two leaders: the old one stops before the new one starts"
    finally:
        proxy.stop()


# --------------------------------------------------------------------------- two operator processes on one Lease


@dataclass
class ServiceProxy(TcpProxy):
    """Stands for the chart's Service in front of the replicas: each new connection goes to the next replica
    (round robin, like kube-proxy), skipping one that refuses connections (a killed process)."""

    backends: list[tuple[str, int]] = field(default_factory=list)
    _turn: int = 0

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = None
            for _ in range(len(self.backends)):
                self._turn = (self._turn + 1) % len(self.backends)
                try:
                    upstream = socket.create_connection(self.backends[self._turn], timeout=5)
                    break
                except OSError:
                    continue
            if upstream is None:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()


def leader_gauge(op: OperatorProcess) -> float | None:
    try:
        return op.metrics().get("slipway_leader")
    except (OSError, ValueError):
        return None


@dataclass
class Replicas:
    """Two operator processes on one Lease in the test's namespace."""

    ops: list[OperatorProcess]

    def leader(self) -> OperatorProcess | None:
        leading = [op for op in self.ops if op.alive() and leader_gauge(op) == 1]
        return leading[0] if len(leading) == 1 else None

    def standby(self) -> OperatorProcess:
        (other,) = [op for op in self.ops if op is not self.leader()]
        return other

    def wait_leader(self, timeout: float = 180) -> OperatorProcess:
        def ready() -> OperatorProcess | None:
            op = self.leader()
            return op if op is not None and "'start_driver' succeeded" in op._run_log() else None

        return wait_for("one leader, started", ready, timeout, 0.1)


@pytest.fixture
def replicas(
    testbed: Any, slipway_crds: list[str], tmp_path: Path, namespace: str, cluster: Cluster
) -> Iterator[Replicas]:
    lease = f"slipway-{namespace}"
    env = {
        **NO_MLFLOW,
        **PROCESS_LEASE,
        "SLIPWAY_LEADER_ELECTION_LEASE": lease,
        "SLIPWAY_LEADER_ELECTION_NAMESPACE": namespace,
        "SLIPWAY_ALERTMANAGER_TOKEN": TOKEN,
    }
    ops = [OperatorProcess(testbed.kubeconfig, namespace, tmp_path, env=env) for _ in range(2)]
    for op in ops:
        op.start()
    try:
        yield Replicas(ops)
    finally:
        for op in ops:
            if not op.alive():
                op.start()
        for md in {m["metadata"]["name"] for m in cluster.custom.list_namespaced_custom_object(
            "ml.slipway.dev", "v1alpha1", namespace, "modeldeployments")["items"]}:  # fmt: skip
            cluster.delete_md(namespace, md)
        with contextlib.suppress(AssertionError):
            wait_for("deployments gone", lambda: not cluster.custom.list_namespaced_custom_object(
                "ml.slipway.dev", "v1alpha1", namespace, "modeldeployments")["items"], 30, 0.5)  # fmt: skip
        for op in ops:
            op.stop()
            print(f"--- operator log {op.log_path.name} ---\n{op.log_tail(60)}")


@pytest.fixture
def cluster(testbed: Any) -> Iterator[Cluster]:
    c = Cluster(testbed.kubeconfig)
    yield c
    c.close()


def post(url: str, body: dict[str, Any], token: str = TOKEN) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def alert_payload(ns: str, md: str) -> dict[str, Any]:
    labels = {
        "alertname": "SlipwayModelErrors",
        "namespace": ns,
        "modeldeployment": md,
        "model_version": "2",
        "severity": "critical",
    }
    alert = {"status": "firing", "labels": labels, "fingerprint": uuid.uuid4().hex[:16]}
    return {"version": "4", "status": "firing", "receiver": "slipway", "alerts": [{**alert, "annotations": {}}]}


def handler_lines(op: OperatorProcess) -> list[str]:
    """Lines of kopf handler activity or rollbacks in a process's log: a standby must have none."""
    return [
        line
        for line in op.log_path.read_text(errors="replace").splitlines()
        if "Handler '" in line or "rolled back" in line or "Timer '" in line or "a pass on ModelDeployment" in line
    ]


def test_the_standby_runs_no_kopf_and_answers_alertmanager_503(
    replicas: Replicas, cluster: Cluster, namespace: str
) -> None:
    ns = namespace
    leader = replicas.wait_leader()
    standby = replicas.standby()
    cluster.model_version(ns, "1", ["champion"])
    cluster.predictor(ns, "1")
    cluster.deploy(ns, {"canary": {"steps": [{"setWeight": 50}]}}, rollback=ROLLBACK_ON_ALERTS)
    wait_for("v1 Succeeded", lambda: cluster.status(ns).get("phase") == "Succeeded", 90)

    def healthy() -> bool:  # it may still be starting (seen once: connection refused); a 503 keeps failing
        try:
            with urllib.request.urlopen(f"{standby.url}/healthz", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for("the standby healthy (its probes must not restart it)", healthy, 30, 0.5)

    def refused() -> tuple[int, dict[str, str], Any] | None:
        answer = post(f"{standby.url}/webhooks/alertmanager", alert_payload(ns, MD))
        return answer if answer[0] != 503 or answer[2].get("leader") else None  # until it has read the Lease

    status, headers, body = wait_for("the standby to name the leader", refused, 30, 0.5)
    assert status == 503, (status, body)
    assert headers.get("Connection", "").lower() == "close", "a retry must open a new connection (the Service)"
    assert headers.get("Retry-After") and body["leader"].startswith(socket.gethostname())
    mlflow_status, _, _ = post(f"{standby.url}/webhooks/mlflow", {"entity": "model_version"})
    assert mlflow_status == 503
    assert leader_gauge(standby) == 0 and leader_gauge(leader) == 1
    assert handler_lines(standby) == [], "the standby ran handlers"
    assert cluster.status(ns)["phase"] == "Succeeded", "the standby's 503 changed nothing"


def test_leader_killed_during_a_rollout_the_standby_completes_it_once(
    replicas: Replicas, cluster: Cluster, namespace: str
) -> None:
    ns = namespace
    leader = replicas.wait_leader()
    standby = replicas.standby()
    cluster.model_version(ns, "1", ["champion"])
    cluster.model_version(ns, "2", [])
    cluster.predictor(ns, "1")
    cluster.predictor(ns, "2")
    steps = [{"setWeight": 20}, {"pause": {"duration": "3s"}}, {"setWeight": 60}, {"pause": {"duration": "2s"}}]
    cluster.deploy(ns, {"canary": {"steps": steps, "scaleDownDelaySeconds": 3}})
    wait_for("v1 Succeeded", lambda: cluster.status(ns).get("phase") == "Succeeded", 90)
    wait_for("predictor v2 available", lambda: cluster.predictor_available(ns, "2"), 60)
    watch = ChildWatch(cluster, ns)
    cluster.move_alias(ns, "1", "2")
    wait_for("canary at 20%", lambda: cluster.route_weights(ns).get("2") == 20, 30, 0.1)
    assert handler_lines(standby) == []
    leader.kill()
    killed = time.monotonic()
    new = wait_for("the standby leads", lambda: leader_gauge(standby) == 1, 30, 0.1)
    took = time.monotonic() - killed
    print(f"\nleader SIGKILLed at 20% → standby leads after {took:.2f}s (lease 4s, retry 1s)")
    assert new and took <= 4 + 1 * 1.2 + 2.0

    promoting_at: float | None = None

    def done() -> bool:
        nonlocal promoting_at
        watch.sample()
        s = cluster.status(ns)
        if promoting_at is None and s.get("phase") == "Promoting":
            promoting_at = time.monotonic()
        isvcs = [i["metadata"]["name"] for i in cluster.children(ns)["InferenceService"]]
        return s.get("phase") == "Succeeded" and s.get("stableVersion") == "2" and isvcs == [f"{MD}-v2"]

    wait_for("the rollout to finish and v1 to go", done, 90, 0.2)
    assert promoting_at is not None
    gone_after = time.monotonic() - promoting_at
    print(f"v1 removed {gone_after:.1f}s after promotion (canary scaleDownDelaySeconds 3; the former fixed delay: 30)")
    assert gone_after < 15, "the canary's scaleDownDelaySeconds, not a fixed 30 s"
    status = cluster.status(ns)
    history = [(h["version"], h["outcome"]) for h in status.get("history") or []]
    assert history.count(("2", "Promoted")) == 1 and len([h for h in history if h[0] == "2"]) == 1, history
    assert cluster.route_weights(ns) == {"2": 100}
    assert all(n <= 1 for n in watch.max_per_version.values()), watch.max_per_version
    assert not watch.strays, watch.strays

    def events(reason: str) -> int:
        items = cluster.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={MD}").items
        return sum(e.count or 1 for e in items if e.reason == reason)

    wait_for("the ScaledDown event", lambda: events("ScaledDown") >= 1, 10, 0.2)
    time.sleep(1.0)
    assert events("StepsCompleted") == 1 and events("ScaledDown") == 1, "the rollout completed more than once"


def test_leader_killed_during_an_alert_storm_every_alert_is_acted_on_once(
    testbed: Any, replicas: Replicas, cluster: Cluster, namespace: str
) -> None:
    """The real Alertmanager delivers through the Service to both replicas; the leader dies mid-storm."""
    ns, count = namespace, 6
    mds = [f"m{i}" for i in range(count)]
    leader = replicas.wait_leader()
    standby = replicas.standby()
    cluster.model_version(ns, "1", ["champion"])
    cluster.model_version(ns, "2", [])
    for md in mds:
        cluster.predictor(ns, "1", md)
        cluster.predictor(ns, "2", md)
        cluster.deploy(ns, {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}]}}, md, rollback=ROLLBACK_ON_ALERTS)
    for md in mds:
        wait_for(f"{md} v1", lambda md=md: cluster.status(ns, md).get("phase") == "Succeeded", 120)
        wait_for(f"{md} v2 ready", lambda md=md: cluster.predictor_available(ns, "2", md), 60)
    cluster.move_alias(ns, "1", "2")
    for md in mds:
        wait_for(f"{md} paused at 30%", lambda md=md: cluster.status(ns, md).get("phase") == "Paused", 60)
    service = ServiceProxy(("127.0.0.1", 0), backends=[("127.0.0.1", op.port) for op in replicas.ops])
    service.start()
    testbed.set_alert_webhooks([f"{service.url}/webhooks/alertmanager"], token=TOKEN)
    try:
        starts = datetime.now(UTC)
        for i, md in enumerate(mds):
            labels = alert_payload(ns, md)["alerts"][0]["labels"]
            alert = {"labels": labels, "annotations": {}, "startsAt": starts.isoformat(),
                     "endsAt": (starts + timedelta(minutes=10)).isoformat()}  # fmt: skip
            req = urllib.request.Request(
                f"{testbed.alertmanager_url}/api/v2/alerts",
                data=json.dumps([alert]).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
            if i == 1:
                leader.kill()  # mid-storm: two alerts sent, four to come
                killed = time.monotonic()
            time.sleep(0.2)

        def all_rolled_back() -> bool:
            return all(cluster.status(ns, md).get("phase") == "RolledBack" for md in mds)

        wait_for("every deployment rolled back", all_rolled_back, 90, 0.2)
        print(f"\nall {count} rolled back {time.monotonic() - killed:.1f}s after the leader was SIGKILLed mid-storm")
        for md in mds:
            status = cluster.status(ns, md)
            history = [(h["version"], h["outcome"], h.get("reason")) for h in status.get("history") or []]
            assert history == [("2", "RolledBack", "AlertFiring")], (md, history)
            assert [b["version"] for b in status.get("blockedVersions") or []] == ["2"], md
            assert cluster.route_weights(ns, md) == {"1": 100}, md
        standby_log = standby._run_log()
        refused = standby_log.count("answered 503")
        print(f"the standby answered {refused} deliveries 503 before it led")
        taken = standby_log.index("leads (Lease")
        assert all("rolled back" not in line for line in standby_log[:taken].splitlines()), "acted while standby"
        by_new = sum(f"{ns}/m" in line and "rolled back" in line for line in standby_log[taken:].splitlines())
        print(f"rolled back by the new leader: {by_new}, by the old one before it died: {count - by_new}")
    finally:
        testbed.set_alert_webhooks([])
        service.stop()
