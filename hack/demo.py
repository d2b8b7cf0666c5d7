"""The local demo: train two versions for real, serve one, canary the other, shift the traffic, watch it roll back.

Run by ``make demo`` (through hack/demo, which does the set-up first). On the embedded test bed
— a real kube-apiserver, controller-manager and scheduler, kwok nodes, MLflow, Prometheus and
Alertmanager, plus the test bed's local kubelet (runs training pods as local processes) and
local KServe (serves InferenceServices with the real Slipway runtime as local processes) — it:

1. installs Slipway's CRDs and the shipped alert rules (``for`` shortened to a few seconds for
   the demo; the shipped rules say 30 s), points Alertmanager at the operator's webhook with a
   bearer token, and starts the operator (``python -m slipway``);
2. applies two TrainingRuns: each Job's pod trains the PyTorch digits CNN for real, logs to
   MLflow and, past its accuracy gate, registers a version of ``digits-cnn``;
3. applies a ModelDeployment that follows the MLflow alias ``champion`` with a canary strategy
   and ``rollback.alerts`` on ``SlipwayModelDrift``; moves the alias to v1 with the MLflow
   client, as a data scientist would (v1 is served), then to v2 (the canary starts);
4. sends held-out digits to the test bed's Gateway (Traefik), which splits them by the HTTPRoute's
   weights (``hack/loadgen.py`` is only a client), then inputs with inverted ink: the canary's
   drift score rises, Prometheus fires ``SlipwayModelDrift``, Alertmanager calls the operator,
   the operator puts all traffic back on v1, and the gateway follows. The summary shows, per
   version, the requests the clients got answered and what that version's model servers
   counted themselves (Prometheus, which finds the pods through the API server).

It prints a timeline as things happen and a summary at the end, exits 0 when the rollback
happened, and cleans up (``--keep`` leaves everything running for a look around). It brings up
its own test bed in ``.testbed/demo`` (or ``$SLIPWAY_TESTBED_DIR``), so a test bed started with
``hack/testbed up`` is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))

import loadgen  # noqa: E402

from bed import lifecycle  # noqa: E402
from bed.addons import monitoring  # noqa: E402
from bed.addons.gateway import route_gateway, route_host  # noqa: E402
from bed.addons.s3 import s3_credentials  # noqa: E402
from bed.procs import free_port  # noqa: E402
from bed.state import State, testbed_dir  # noqa: E402
from slipway.monitoring.rules import rule_groups  # noqa: E402

MODEL = "digits-cnn"
DEPLOYMENT = "digits"
MODELS_SERVICE_ACCOUNT = "models"
ALIAS = "champion"
ALERT = "SlipwayModelDrift"
FEEDBACK_TOKEN = secrets.token_hex(16)
"""The bearer token loadgen.py sends its ground-truth feedback with (the predictors get it in their env)."""
ALERT_FOR = "5s"  # the shipped rules hold 30s before firing; the demo does not want to wait that long
DRIFT_THRESHOLD = 0.25
POLL = 0.3
INTAKE_LOGGER = "slipway.reconcilers.alert_intake"
TRAININGS = (
    ("digits-cnn-a", {"epochs": "3", "lr": "0.003", "seed": "0"}),
    ("digits-cnn-b", {"epochs": "4", "lr": "0.002", "seed": "1"}),
)
API = "ml.slipway.dev/v1alpha1"
console = Console(highlight=False, soft_wrap=True)


class DemoFailed(RuntimeError):
    """A step of the story did not happen in time; the message says which."""


class Timeline:
    """Lines stamped with seconds since the start, and named moments for the summary."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}

    def say(self, msg: str, style: str = "") -> None:
        stamp = escape(f"[{time.monotonic() - self.t0:6.1f}s]")
        console.print(f"[dim]{stamp}[/dim] " + (f"[{style}]{escape(msg)}[/{style}]" if style else escape(msg)))

    def mark(self, name: str) -> float:
        """Record a moment once; returns it."""
        return self.marks.setdefault(name, time.monotonic())

    def since(self, a: str, b: str) -> float | None:
        """Seconds from moment a to moment b, when both happened."""
        return self.marks[b] - self.marks[a] if a in self.marks and b in self.marks else None


def kubectl(state: State, *args: str, input: str | None = None, check: bool = True) -> str:
    """The real kubectl against the demo's test bed."""
    proc = subprocess.run(
        [state.kubectl, "--kubeconfig", state.kubeconfig, *args], input=input, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise DemoFailed(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def monotonic_of(timestamp: str) -> float:
    """A wall-clock RFC 3339 timestamp (as Alertmanager writes them) on this process's monotonic clock."""
    try:
        text = re.sub(r"(\.\d{6})\d+", r"\1", timestamp).replace("Z", "+00:00")
        wall = datetime.fromisoformat(text).timestamp()
    except ValueError:
        return time.monotonic()
    return time.monotonic() - (time.time() - wall)


def get_json(url: str, timeout: float = 3.0) -> Any:
    """GET a JSON document (None when the server does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- what the demo applies


def training_run(name: str, params: dict[str, str]) -> dict[str, Any]:
    """A TrainingRun of the PyTorch digits CNN that registers digits-cnn (alias candidate) past its gates."""
    return {
        "apiVersion": API,
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "framework": "pytorch",
            "entrypoint": "digits_cnn",
            "params": params,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            "experiment": "digits-demo",
            "deadlineSeconds": 600,
            "register": {
                "model": MODEL,
                "gates": [{"metric": "accuracy", "min": 0.9}, {"metric": "loss", "max": 0.5}],
                "alias": "candidate",
            },
        },
    }


def model_deployment(namespace: str) -> dict[str, Any]:
    """Follow alias champion; canary 25% → 50% (held until promoted or rolled back); roll back on drift.

    Its HTTPRoute attaches to the test bed's Gateway (Traefik) with a hostname of its own.
    """
    return {
        "apiVersion": API,
        "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {
            "model": {"name": MODEL, "track": {"alias": ALIAS}},
            "gateway": route_gateway(namespace, DEPLOYMENT),
            "serving": {
                "runtime": "slipway",
                "protocol": "v2",
                # KServe's storage initializer takes the S3 credentials from this ServiceAccount's Secret
                "serviceAccountName": MODELS_SERVICE_ACCOUNT,
                # a smaller drift window than the runtime's default (1000) reacts sooner at the demo's rate
                "env": [
                    {"name": "SLIPWAY_DRIFT_WINDOW", "value": "400"},
                    # the labeller's bearer token; outside the demo, name a Secret: serving.feedbackTokenSecret
                    {"name": "SLIPWAY_FEEDBACK_TOKEN", "value": FEEDBACK_TOKEN},
                ],
            },
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 25},
                        {"pause": {"duration": "15s"}},
                        {"setWeight": 50},
                        {"pause": {"duration": "10m"}},
                        {"setWeight": 100},
                    ]
                }
            },
            "rollback": {
                "alerts": {"alertNames": [ALERT], "matchLabels": {"severity": "critical"}},
                "window": "30m",
                "registry": "revertAlias",
            },
        },
    }


# --------------------------------------------------------------------------- watching the story


@dataclass
class Seen:
    """What the observer printed last, so it prints changes only."""

    tr_phase: dict[str, str] = field(default_factory=dict)
    mv_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    md: tuple[Any, ...] = ()
    weights: dict[str, int] = field(default_factory=dict)
    isvc_ready: dict[str, bool] = field(default_factory=dict)
    drift: dict[str, tuple[float, float]] = field(default_factory=dict)
    alerts: dict[str, str] = field(default_factory=dict)
    am: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    champion: str | None = None


class Observer:
    """Polls the cluster, Prometheus and Alertmanager and puts every change on the timeline."""

    def __init__(self, tl: Timeline, state: State, namespace: str) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=state.kubeconfig)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.tl, self.ns = tl, namespace
        self.prom, self.am = state.urls["prometheus"], state.urls["alertmanager"]
        self.seen = Seen()
        self.trs: dict[str, dict[str, Any]] = {}
        self.md_status: dict[str, Any] = {}
        self.max_drift: dict[str, float] = {}
        self.fired: dict[str, float] = {}
        self.canary: str | None = None
        self.said_events: dict[str, str] = {}
        self.operator_log = Path(state.dir) / "logs" / "operator.log"
        self.log_offset = self.operator_log.stat().st_size if self.operator_log.exists() else 0

    def _list(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(group, version, self.ns, plural).get("items") or []
        return list(items)

    def poll(self) -> None:
        """One look at everything; prints what changed."""
        self._trainingruns()
        self._modelversions()
        self._drift()
        self._alerts()
        self._operator_log()
        self._deployment()
        self._route()
        self._isvcs()
        self._events()

    def _trainingruns(self) -> None:
        for tr in self._list("ml.slipway.dev", "v1alpha1", "trainingruns"):
            name, st = tr["metadata"]["name"], tr.get("status") or {}
            self.trs[name] = st
            phase = st.get("phase")
            if not phase or self.seen.tr_phase.get(name) == phase:
                continue
            self.seen.tr_phase[name] = phase
            if phase == "Running":
                self.tl.say(f"TrainingRun {name}: Job {st.get('jobName')} running — digits_cnn trains in its pod")
            elif phase == "Succeeded":
                m = st.get("metrics") or {}
                self.tl.say(
                    f"TrainingRun {name}: trained — test accuracy {m.get('accuracy', float('nan')):.4f}, "
                    f"loss {m.get('loss', float('nan')):.4f}; {st.get('message')}",
                    "green",
                )
            elif phase in ("Failed", "Rejected"):
                self.tl.say(f"TrainingRun {name}: {phase} — {st.get('message')}", "red")
            else:
                self.tl.say(f"TrainingRun {name}: {phase} — {st.get('message') or ''}")

    def _modelversions(self) -> None:
        champion = None
        for mv in self._list("ml.slipway.dev", "v1alpha1", "modelversions"):
            name, st = mv["metadata"]["name"], mv.get("status") or {}
            aliases = tuple(sorted(st.get("aliases") or []))
            if name not in self.seen.mv_aliases:
                self.tl.say(f"ModelVersion {name} mirrored from the MLflow registry (aliases: {', '.join(aliases)})")
            self.seen.mv_aliases[name] = aliases
            if ALIAS in aliases:
                champion = name
        if champion != self.seen.champion and champion is not None:
            self.tl.say(f"registry mirror: alias {ALIAS} is on ModelVersion {champion}")
        self.seen.champion = champion

    def _deployment(self) -> None:
        try:
            md = self.custom.get_namespaced_custom_object(
                "ml.slipway.dev", "v1alpha1", self.ns, "modeldeployments", DEPLOYMENT
            )
        except Exception:
            return
        st = self.md_status = md.get("status") or {}
        key = (st.get("phase"), st.get("stableVersion"), st.get("canaryVersion"), st.get("canaryWeight"))
        if key != self.seen.md and st.get("phase"):
            self.seen.md = key
            canary = (
                f", canary v{st['canaryVersion']} at {st.get('canaryWeight', 0)}%" if st.get("canaryVersion") else ""
            )
            self.tl.say(
                f"ModelDeployment {DEPLOYMENT}: {st.get('phase')} — stable v{st.get('stableVersion') or '-'}{canary}"
                f"{'; ' + st['message'] if st.get('message') else ''}",
                "cyan",
            )

    def _route(self) -> None:
        try:
            route = self.custom.get_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", self.ns, "httproutes", DEPLOYMENT
            )
        except Exception:
            return
        refs = (route["spec"].get("rules") or [{}])[0].get("backendRefs") or []
        weights = {
            str(r["name"]).removeprefix(f"{DEPLOYMENT}-v").removesuffix("-predictor"): int(r.get("weight", 1))
            for r in refs
        }
        if weights != self.seen.weights:
            self.seen.weights = weights
            split = " · ".join(f"v{v} {w}%" for v, w in sorted(weights.items(), key=lambda kv: int(kv[0])))
            self.tl.say(f"HTTPRoute {DEPLOYMENT}: {split}", "bold")
            if self.canary is not None and weights.get(self.canary, 0) > 0:
                self.tl.mark(f"weight-{weights[self.canary]}")
            if self.canary is not None and "canary-live" in self.tl.marks and weights.get(self.canary, 0) == 0:
                self.tl.mark("route-rolled-back")

    def _isvcs(self) -> None:
        isvcs = self._list("serving.kserve.io", "v1beta1", "inferenceservices")
        for isvc in isvcs:
            name, st = isvc["metadata"]["name"], isvc.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
            if name not in self.seen.isvc_ready:
                self.tl.say(f"InferenceService {name} created (local KServe starts the model server)")
            if ready and not self.seen.isvc_ready.get(name):
                self.tl.say(f"InferenceService {name} ready: model server at {st.get('url')}, predictor available")
            self.seen.isvc_ready[name] = ready
        for gone in set(self.seen.isvc_ready) - {i["metadata"]["name"] for i in isvcs}:
            self.tl.say(f"InferenceService {gone} deleted")
            del self.seen.isvc_ready[gone]

    def _events(self) -> None:
        try:
            items = self.core.list_namespaced_event(
                self.ns, field_selector=f"involvedObject.kind=ModelDeployment,involvedObject.name={DEPLOYMENT}"
            ).items
        except Exception:
            return
        for e in sorted(items, key=lambda e: str(e.metadata.creation_timestamp)):
            key = f"{e.metadata.uid}/{e.count}"
            if key in self.seen.events:
                continue
            self.seen.events.add(key)
            if e.reason in ("AlertFiring", "RolledBack", "RegistryUpdated") or e.type == "Warning":
                self.tl.say(f"operator event {e.reason}: {e.message}", "yellow")
                self.said_events[str(e.reason)] = str(e.message)

    def _operator_log(self) -> None:
        """The operator's own words about alerts (its alert intake logs which source delivered each one)."""
        try:
            with self.operator_log.open(errors="replace") as f:
                f.seek(self.log_offset)
                lines = f.readlines()
                self.log_offset = f.tell()
        except OSError:
            return
        for line in lines:
            if INTAKE_LOGGER in line:
                self.tl.say("operator: " + line.split(INTAKE_LOGGER + ":", 1)[-1].strip(), "yellow")

    def _drift(self) -> None:
        body = get_json(f"{self.prom}/api/v1/query?query=slipway_model_drift_score%7Bnamespace%3D%22{self.ns}%22%7D")
        for r in ((body or {}).get("data") or {}).get("result") or []:
            version, value = r["metric"].get("version", "?"), float(r["value"][1])
            self.max_drift[version] = max(value, self.max_drift.get(version, 0.0))
            last_value, last_at = self.seen.drift.get(version, (-1.0, 0.0))
            crossed = (last_value > DRIFT_THRESHOLD) != (value > DRIFT_THRESHOLD)
            now = time.monotonic()
            if last_value < 0 or crossed or (abs(value - last_value) >= 0.15 and now - last_at >= 3):
                self.seen.drift[version] = (value, now)
                flag = f"  > {DRIFT_THRESHOLD} (SlipwayModelDrift threshold)" if value > DRIFT_THRESHOLD else ""
                self.tl.say(
                    f"drift score (mean PSI vs training baseline) of v{version}: {value:.2f}{flag}",
                    "magenta" if flag else "",
                )

    def _alerts(self) -> None:
        body = get_json(f"{self.prom}/api/v1/alerts")
        for a in ((body or {}).get("data") or {}).get("alerts") or []:
            labels = a.get("labels") or {}
            if labels.get("namespace") != self.ns or labels.get("alertname") != ALERT:
                continue
            version, state = labels.get("model_version", "?"), a.get("state", "")
            if self.seen.alerts.get(version) != state:
                self.seen.alerts[version] = state
                role = "canary" if version == self.canary else "stable"
                self.tl.say(f"Prometheus: {ALERT} {state} for v{version} ({role})", "red" if state == "firing" else "")
        am = get_json(f"{self.am}/api/v2/alerts?active=true&filter=namespace%3D%22{self.ns}%22") or []
        for a in am:
            labels = a.get("labels") or {}
            version = labels.get("model_version", "?")
            if labels.get("alertname") == ALERT and version not in self.seen.am:
                self.seen.am.add(version)
                self.fired.setdefault(version, monotonic_of(str(a.get("startsAt") or "")))
                self.tl.say(f"Alertmanager: {ALERT} for v{version} routed to receiver slipway (the operator's webhook)")

    def wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        """Poll (printing changes) until done() or the timeout; DemoFailed then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if done():
                return
            time.sleep(POLL)
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- the pieces


def start_operator(state: State, namespace: str, port: int, token: str) -> subprocess.Popen[bytes]:
    """`python -m slipway` against the test bed, watching the demo namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_"))}
    env.update(
        KUBECONFIG=state.kubeconfig,
        SLIPWAY_MLFLOW_URI=state.urls["mlflow"],
        SLIPWAY_MLFLOW_ARTIFACTS_DESTINATION=state.urls["mlflow-artifacts"],
        SLIPWAY_MLFLOW_POLL_SECONDS="2",
        SLIPWAY_PROMETHEUS_URL=state.urls["prometheus"],
        SLIPWAY_ALERTMANAGER_TOKEN=token,
        SLIPWAY_HTTP_HOST="127.0.0.1",
        SLIPWAY_HTTP_PORT=str(port),
    )
    log = open(Path(state.dir) / "logs" / "operator.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "slipway", "-n", namespace, "--liveness", ""],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # Ctrl-C reaches the demo only, which stops the operator after cleaning up
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailed(f"the operator exited ({proc.returncode}); see {log.name}")
        if _ok(f"http://127.0.0.1:{port}/healthz"):
            return proc
        time.sleep(0.3)
    raise DemoFailed("the operator did not start within 90s")


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGINT (kopf's graceful stop), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def apply(state: State, obj: dict[str, Any], namespace: str) -> None:
    kubectl(state, "apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


@dataclass
class Story:
    """Handles and facts the demo collects for the summary."""

    state: State
    namespace: str
    tl: Timeline
    obs: Observer
    mlflow: Any
    load: loadgen.LoadGenerator | None = None
    alias_after: str | None = None
    after_rollback: dict[str, int] = field(default_factory=dict)
    reused_testbed: bool = False


def move_alias(story: Story, version: str) -> None:
    """What a data scientist does in MLflow: point the alias at a version."""
    story.mlflow.set_registered_model_alias(MODEL, ALIAS, version)
    story.tl.say(
        f"MLflow: alias {ALIAS} of {MODEL} → version {version} (MlflowClient.set_registered_model_alias)", "bold green"
    )


def trained(story: Story, name: str) -> str:
    """Wait for a TrainingRun to register its version; returns the version."""

    def done() -> bool:
        st = story.obs.trs.get(name) or {}
        if st.get("phase") in ("Failed", "Rejected"):
            raise DemoFailed(f"TrainingRun {name} {st['phase']}: {st.get('message')}")
        return st.get("phase") == "Succeeded" and bool(st.get("modelVersion"))

    story.obs.wait(f"TrainingRun {name} to train and register", done, 420)
    version = str(story.obs.trs[name]["modelVersion"])
    story.tl.mark(f"trained-{name}")
    return version


def run_story(story: Story) -> bool:
    """Steps 2 to 5 of the module doc; True when the operator rolled back."""
    tl, obs, ns = story.tl, story.obs, story.namespace
    first, second = TRAININGS
    apply(story.state, model_deployment(ns), ns)
    tl.say(
        f"applied ModelDeployment {DEPLOYMENT}: follows {MODEL}@{ALIAS}; canary 25% → 50% (held) → 100%; "
        f"rolls back on {ALERT} (severity critical); registry write-back revertAlias"
    )
    apply(story.state, training_run(*first), ns)
    tl.say(f"applied TrainingRun {first[0]} (PyTorch digits CNN, {first[1]['epochs']} epochs, gate accuracy ≥ 0.9)")
    v1 = trained(story, first[0])
    apply(story.state, training_run(*second), ns)
    tl.say(
        f"applied TrainingRun {second[0]} ({second[1]['epochs']} epochs, lr {second[1]['lr']}): "
        f"it trains while v{v1} ships"
    )
    tl.mark("alias-v1")
    move_alias(story, v1)
    obs.wait(
        f"v{v1} to be served",
        lambda: obs.md_status.get("stableVersion") == v1 and obs.seen.isvc_ready.get(f"{DEPLOYMENT}-v{v1}", False),
        300,
    )
    tl.mark("served-v1")
    gateway = loadgen.Gateway(story.state.urls["gateway"], DEPLOYMENT, route_host(ns, DEPLOYMENT))
    labeller = loadgen.Labeller(FEEDBACK_TOKEN, loadgen.PredictorEndpoints(story.state.kubeconfig, ns, DEPLOYMENT))
    story.load = loadgen.LoadGenerator(gateway, rate=8, batch=16, duration=600, labeller=labeller).start()
    tl.say(f"load generator: 8 requests/s x 16 held-out digits to the Gateway ({gateway.url}, Host {gateway.host})")
    v2 = trained(story, second[0])
    obs.canary = v2
    tl.mark("alias-v2")
    move_alias(story, v2)
    obs.wait(f"the canary v{v2} to start", lambda: obs.md_status.get("canaryVersion") == v2, 120)
    tl.mark("canary-started")
    obs.wait(f"the canary v{v2} to take traffic", lambda: "weight-25" in tl.marks or "weight-50" in tl.marks, 240)
    tl.mark("canary-live")
    obs.wait(f"the canary v{v2} to reach 50%", lambda: "weight-50" in tl.marks, 120)
    settle = time.monotonic() + 5
    obs.wait("a few seconds of in-distribution traffic at 50%", lambda: time.monotonic() > settle, 30)
    story.load.mode = "shifted"
    tl.mark("shift")
    tl.say("traffic shifts: the same digits with inverted ink and noise (16 - x + N(0, 1))", "bold magenta")
    try:
        obs.wait(
            "the operator to roll back",
            lambda: "route-rolled-back" in tl.marks and obs.md_status.get("phase") == "RolledBack",
            150,
        )
    except DemoFailed as exc:
        tl.say(f"{exc}: no rollback — see {Path(story.state.dir) / 'logs' / 'operator.log'}", "bold red")
        return False
    tl.mark("rolled-back")
    story.load.mode = "held-out"
    since = tl.marks["route-rolled-back"] + 1.0  # the gateway applies a route change within a fraction of that
    calm = time.monotonic() + 6
    obs.wait("traffic after the rollback", lambda: time.monotonic() > calm, 30)
    story.after_rollback = story.load.stats.since(since)
    tl.say("after the rollback: " + ", ".join(f"v{v} {n} requests" for v, n in sorted(story.after_rollback.items())))
    with contextlib.suppress(Exception):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            story.alias_after = str(story.mlflow.get_model_version_by_alias(MODEL, ALIAS).version)
            if story.alias_after == v1:
                break
            time.sleep(1)
        tl.say(
            f"MLflow: alias {ALIAS} now → version {story.alias_after}"
            + (" (reverted by the operator: revertAlias)" if story.alias_after == v1 else "")
        )
    return True


def served_by_version(story: Story) -> dict[str, float]:
    """Per version, the requests its model servers answered, as they count them (Prometheus, scraped from the pods)."""
    query = (
        f'sum by (version) (slipway_requests_total{{namespace="{story.namespace}",'
        f'modeldeployment="{DEPLOYMENT}",code="200"}})'
    )
    url = f"{story.state.urls['prometheus']}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result = json.loads(resp.read())["data"]["result"]
    except (OSError, ValueError, KeyError):
        return {}
    return {str(r["metric"].get("version", "")): float(r["value"][1]) for r in result}


def summary(story: Story, ok: bool) -> None:
    """The table at the end."""
    tl, obs = story.tl, story.obs
    table = Table(title="Slipway demo — summary", show_lines=False)
    table.add_column("what")
    table.add_column("result")

    def secs(a: str, b: str) -> str:
        d = tl.since(a, b)
        return f"{d:.1f}s" if d is not None else "—"

    table.add_row(
        "test bed up (control plane, kwok, MLflow, Prometheus, Alertmanager)",
        "reused (already up)" if story.reused_testbed else secs("start", "testbed"),
    )
    for name, _ in TRAININGS:
        st = obs.trs.get(name) or {}
        m = st.get("metrics") or {}
        acc = f"accuracy {m['accuracy']:.4f}, loss {m.get('loss', float('nan')):.4f}" if "accuracy" in m else "—"
        table.add_row(f"TrainingRun {name}", f"{st.get('phase', '—')}: {acc} → {MODEL} v{st.get('modelVersion', '?')}")
    table.add_row("alias → v1 to v1 serving 100%", secs("alias-v1", "served-v1"))
    table.add_row("alias → v2 to canary started", secs("alias-v2", "canary-started"))
    table.add_row(
        "canary weights reached",
        ", ".join(k.removeprefix("weight-") + "%" for k in tl.marks if k.startswith("weight-")) or "—",
    )
    table.add_row(
        "max drift score (mean PSI)", ", ".join(f"v{v} {d:.2f}" for v, d in sorted(obs.max_drift.items())) or "—"
    )
    fired = obs.fired.get(obs.canary) if obs.canary else None
    shifted = tl.marks.get("shift")
    table.add_row(
        f"traffic shift to {ALERT} firing for the canary (Alertmanager startsAt; for: {ALERT_FOR})",
        f"{fired - shifted:.1f}s" if fired and shifted else "—",
    )
    roll = tl.marks.get("route-rolled-back")
    table.add_row(
        "rollback latency: alert fired → HTTPRoute back on stable (Prometheus → Alertmanager → webhook → "
        "operator; an upper bound: the route is polled every 0.3s)",
        f"{roll - fired:.2f}s" if fired and roll else "—",
    )
    if "AlertFiring" in obs.said_events:
        table.add_row("the operator's account (AlertFiring event)", obs.said_events["AlertFiring"])
    table.add_row(
        "ModelDeployment phase", f"{obs.md_status.get('phase')} (stable v{obs.md_status.get('stableVersion')})"
    )
    blocked = ", ".join(f"v{b['version']} ({b['reason']})" for b in obs.md_status.get("blockedVersions") or [])
    table.add_row("blocked versions", blocked or "—")
    table.add_row(
        "requests after the rollback", ", ".join(f"v{v}: {n}" for v, n in sorted(story.after_rollback.items())) or "—"
    )
    table.add_row(f"MLflow alias {ALIAS} after", f"v{story.alias_after}" if story.alias_after else "—")
    served = served_by_version(story)
    if story.load is not None:
        for v, vs in sorted(story.load.stats.by_version.items()):
            acc = f", live accuracy on held-out digits {vs.accuracy:.3f}" if vs.accuracy is not None else ""
            own = f"; its model servers counted {served[v]:.0f}" if v in served else ""
            table.add_row(f"live traffic answered by v{v}", f"{vs.requests} requests{own}{acc}")
        if story.load.stats.unanswered:
            table.add_row("not answered by a model", json.dumps(story.load.stats.unanswered))
    table.add_row("outcome", "[green]rolled back on drift[/green]" if ok else "[red]no rollback[/red]")
    table.add_row("total", f"{time.monotonic() - tl.t0:.0f}s")
    console.print(table)


def cleanup(story: Story | None, state: State | None, operator: subprocess.Popen[bytes] | None) -> None:
    """Delete what the demo applied while the operator still runs (its finalizers), then stop everything."""
    if story is not None and story.load is not None:
        story.load.stop()
    if state is not None and operator is not None and operator.poll() is None and story is not None:
        for kind in ("modeldeployments", "trainingruns"):
            kubectl(state, "delete", kind, "--all", "-n", story.namespace, "--timeout=60s", check=False)
    stop(operator)
    if state is not None:
        lifecycle.down()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--keep", action="store_true", help="leave the test bed, the operator and the model servers running"
    )
    parser.add_argument("--namespace", default="slipway-demo")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM cleans up like Ctrl-C does
    os.environ.setdefault("SLIPWAY_TESTBED_DIR", str(REPO / ".testbed" / "demo"))
    tl = Timeline()
    tl.mark("start")
    state: State | None = None
    operator: subprocess.Popen[bytes] | None = None
    story: Story | None = None
    ok = False
    try:
        tl.say(
            f"bringing up the test bed in {testbed_dir()}: etcd, kube-apiserver, controller-manager, scheduler, "
            "kwok, local kubelet, KServe's controller-manager, versitygw (S3), MLflow, Prometheus, Alertmanager"
        )
        reused = lifecycle.is_up(State.load(testbed_dir()))
        state = lifecycle.up(("mlflow", "prometheus"))
        missing = {"local-kubelet", "kserve-manager", "s3"} - set(state.pids)
        if missing:
            raise DemoFailed(f"this test bed has no {', '.join(sorted(missing))}: `hack/testbed down` it first")
        tl.mark("testbed")
        tl.say(f"test bed up — KUBECONFIG={state.kubeconfig}, MLflow {state.urls['mlflow']}")
        kubectl(state, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        kubectl(state, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        tl.say("Slipway CRDs installed: trainingruns, modelversions, modeldeployments (ml.slipway.dev)")
        monitoring.set_rules(
            state, "slipway", yaml.safe_dump(rule_groups(interval="1s", for_=ALERT_FOR), sort_keys=False)
        )
        tl.say(
            f"Prometheus: shipped alert rules loaded (SlipwayModelDrift: mean PSI > {DRIFT_THRESHOLD}, "
            f"SlipwayModelErrors), evaluated every 1s, for {ALERT_FOR} (shipped: 30s — shortened for the demo)"
        )
        port, token = free_port(), secrets.token_hex(16)
        monitoring.set_alert_webhooks(state, [f"http://127.0.0.1:{port}/webhooks/alertmanager"], token)
        tl.say(f"Alertmanager → http://127.0.0.1:{port}/webhooks/alertmanager with a bearer token")
        kubectl(state, "create", "namespace", args.namespace, check=False)
        credentials = s3_credentials(state, MODELS_SERVICE_ACCOUNT)
        kubectl(
            state,
            "apply",
            "-n",
            args.namespace,
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": credentials}),
        )
        operator = start_operator(state, args.namespace, port, token)
        tl.say(
            f"operator running (pid {operator.pid}), watching namespace {args.namespace}; "
            f"log {Path(state.dir) / 'logs' / 'operator.log'}"
        )
        from mlflow import MlflowClient

        mlflow = MlflowClient(tracking_uri=state.urls["mlflow"], registry_uri=state.urls["mlflow"])
        story = Story(state, args.namespace, tl, Observer(tl, state, args.namespace), mlflow, reused_testbed=reused)
        ok = run_story(story)
    except DemoFailed as exc:
        tl.say(f"demo failed: {exc}", "bold red")
    except KeyboardInterrupt:
        tl.say("interrupted", "bold red")
        args.keep = False
    finally:
        if story is not None:
            summary(story, ok)
        if args.keep and state is not None:
            if story is not None and story.load is not None:
                story.load.stop()
            tl.say(
                f"left running. KUBECONFIG={state.kubeconfig}; operator pid {operator.pid if operator else '-'}; "
                f"stop it all with: kill {operator.pid if operator else ''}; "
                f"SLIPWAY_TESTBED_DIR={state.dir} hack/testbed down"
            )
        else:
            tl.say("cleaning up: ModelDeployment and TrainingRuns deleted, operator stopped, test bed down")
            cleanup(story, state, operator)
            tl.say("cleaned up")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
