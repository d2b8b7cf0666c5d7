"""Rollback end to end: first shifted request → HTTPRoute write, with real serving, Prometheus and Alertmanager.

    python bench/rollback_e2e.py [--trials 20] [--for 0s]

Uses the running test bed (or brings one up and takes it down after): KServe's controller makes
each InferenceService's predictor, whose pod the local kubelet runs as a real serving-runtime
process (``python -m slipway_serving``), discovered and scraped by the test bed's Prometheus
(scrape and rule evaluation every 1 s),
which evaluates the shipped rules (``monitoring/rules.py``; ``for`` is ``--for``, 0 s by default
so that the pipeline is measured, not the hold: the shipped 30 s, or the demo's 5 s, add
themselves on top) and sends to Alertmanager (``group_wait`` 0 s, ``group_interval`` 1 s), which
posts to the operator (``python -m slipway``, registry sync on the test bed's MLflow).

A small network trained on digits is logged to MLflow with its drift baseline and registered
twice; one ModelDeployment follows the alias ``champion`` (v1 served, then v2 as a canary held at
50 %, serving env ``SLIPWAY_DRIFT_WINDOW=200``, ``rollback.registry: none`` so the alias stays).
``hack/loadgen.py`` sends 8 requests/s of 16 held-out digits through the route's weights.

One trial: wait until the canary is paused at 50 % with v2 ready, has answered 20 in-distribution
requests (its drift window is full of them) and no alert about the deployment is active in
Alertmanager; switch the generator to shifted digits; the clock runs from the first shifted
request the generator sends to the moment a watch on the HTTPRoute sees all weight back on v1
(the route write). Then held-out traffic again, and the ``retry`` action starts the canary of the
same v2 afresh (a new serving process, an empty drift window): trials are independent.

Also reported: the operator's own alert arrival → route write (from its log), and the first
shifted request → Alertmanager's ``startsAt`` of the alert (Prometheus' part). Prints p50 and
p99 (nearest rank). Bounded: each trial takes about 30-60 s (most of it the serving process
starting), aborted at ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "operator"))

import httpx  # noqa: E402
import loadgen  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from common import (  # noqa: E402
    free_port,
    install_crds,
    mlflow_settings,
    percentile,
    spawn_operator,
    stop_process,
    testbed_up,
    wait_for,
    wait_operator_ready,
)
from kubernetes import client, config, watch  # noqa: E402

from bed import lifecycle  # noqa: E402
from bed.addons import monitoring  # noqa: E402
from bed.addons.gateway import route_gateway, route_host  # noqa: E402
from bed.state import State  # noqa: E402
from slipway.monitoring.rules import rule_groups  # noqa: E402

GROUP, VERSION = "ml.slipway.dev", "v1alpha1"
MD = "drift"
RULES = "slipway-bench-rollback-e2e"
START = time.monotonic()


def log_model(mlflow_uri: str, name: str) -> None:
    """Train a small network on digits, log it with its drift baseline, register it as versions 1 and 2."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits

    from slipway_training import baseline as bl
    from slipway_training.data import feature_names

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("slipway-bench-rollback-e2e")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimizer.step()
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        probs = model(torch.from_numpy(x[:200])).numpy()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        baseline = Path(tmp) / bl.FILENAME
        doc = bl.build_baseline(x, [bl.uniform_edges(0, 16, 8)] * 64, feature_names=feature_names())
        baseline.write_text(bl.dumps(doc))
        info = mlflow.pytorch.log_model(
            model, name="model", signature=infer_signature(x[:200], probs), input_example=x[:2]
        )
        mlflow.MlflowClient().log_model_artifact(info.model_id, str(baseline))
    for _ in range(2):
        mlflow.register_model(info.model_uri, name)


class RouteWatch:
    """Records when the route goes back to all traffic on v1."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.custom, self.namespace = custom, namespace
        self.restored: list[float] = []
        self.weights: dict[str, int] = {}
        self._watch = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for event in self._watch.stream(
                self.custom.list_namespaced_custom_object,
                "gateway.networking.k8s.io",
                "v1",
                self.namespace,
                "httproutes",
                timeout_seconds=7200,
            ):
                seen = time.monotonic()
                refs = event["object"]["spec"]["rules"][0]["backendRefs"]
                weights = {
                    r["name"].removeprefix(f"{MD}-v").removesuffix("-predictor"): r.get("weight", 1) for r in refs
                }
                if weights == {"1": 100} and self.weights != weights:
                    self.restored.append(seen)
                self.weights = weights

    def stop(self) -> None:
        self._watch.stop()


class Bench:
    """The operator, one ModelDeployment, the load generator."""

    def __init__(self, state: State, alert_for: str) -> None:
        self.state = state
        self.api = config.new_client_from_config(config_file=state.kubeconfig)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.ns = f"bench-e2e-{uuid.uuid4().hex[:6]}"
        self.model = f"bench-e2e-{uuid.uuid4().hex[:6]}"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="slipway-bench-e2e-")) / "operator.log"
        self.alert_for = alert_for
        self.operator: subprocess.Popen[bytes] | None = None
        self.load: loadgen.LoadGenerator | None = None
        self.routes: RouteWatch | None = None

    def kubectl(self, *args: str) -> None:
        cmd = [self.state.kubectl, "--kubeconfig", self.state.kubeconfig, *args]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def status(self) -> dict[str, Any]:
        try:
            md = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments", MD)
        except client.exceptions.ApiException:
            return {}
        return dict(md.get("status") or {})

    def ready(self, version: str) -> bool:
        try:
            isvc = self.custom.get_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", self.ns, "inferenceservices", f"{MD}-v{version}"
            )
        except client.exceptions.ApiException:
            return False
        conditions = (isvc.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def active_alerts(self) -> list[dict[str, Any]]:
        url = f"{self.state.urls['alertmanager']}/api/v2/alerts"
        return list(httpx.get(url, params={"filter": f'namespace="{self.ns}"'}, timeout=5).json())

    def setup(self) -> None:
        install_crds(self.state)
        self.core.create_namespace({"metadata": {"name": self.ns}})
        wait_for("default ServiceAccount", lambda: self.core.list_namespaced_service_account(self.ns).items, 30, 0.2)
        groups = rule_groups(interval="1s", for_=self.alert_for)
        monitoring.set_rules(self.state, RULES, yaml.safe_dump(groups, sort_keys=False))
        log_model(self.state.urls["mlflow"], self.model)
        from mlflow import MlflowClient

        self.mlflow = MlflowClient(self.state.urls["mlflow"])
        self.mlflow.set_registered_model_alias(self.model, "champion", "1")
        self.start_operator()
        monitoring.set_alert_webhooks(self.state, [f"http://127.0.0.1:{self.port}/webhooks/alertmanager"], self.token)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments", self.deployment())
        wait_for("v1 served", lambda: self.status().get("phase") == "Succeeded" and self.ready("1"), 300, 0.5)
        gateway = loadgen.Gateway(self.state.urls["gateway"], MD, route_host(self.ns, MD))
        self.load = loadgen.LoadGenerator(gateway, rate=8, batch=16, duration=1800).start()
        self.routes = RouteWatch(self.custom, self.ns)
        self.mlflow.set_registered_model_alias(self.model, "champion", "2")

    def deployment(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": MD},
            "spec": {
                "model": {"name": self.model, "track": {"alias": "champion"}},
                "serving": {
                    "runtime": "slipway",
                    "protocol": "v2",
                    "env": [{"name": "SLIPWAY_DRIFT_WINDOW", "value": "200"}],
                },
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                "gateway": route_gateway(self.ns, MD),  # the test bed's Traefik
                "rollback": {
                    "alerts": {"alertNames": ["SlipwayModelDrift"], "matchLabels": {"severity": "critical"}},
                    "registry": "none",
                },
            },
        }

    def start_operator(self) -> None:
        env = {
            **mlflow_settings(self.state, 1),
            "SLIPWAY_ALERTMANAGER_TOKEN": self.token,
        }
        self.operator = spawn_operator(self.state.kubeconfig, self.ns, self.port, self.log, env)
        wait_operator_ready(self.operator, self.port, self.log, "start_alert_intake", 90)

    def ok_to(self, version: str) -> int:
        assert self.load is not None
        with self.load.lock:
            return self.load.stats.version(version).ok

    def trial(self, timeout: float) -> tuple[float, float | None, float | None]:
        """One shift; returns (first shifted request → route write, → alert startsAt, operator's arrival → route) ."""
        assert self.load is not None and self.routes is not None
        wait_for(
            "the canary paused at 50 %",
            lambda: self.status().get("phase") == "Paused" and self.ready("2"),
            timeout,
            0.2,
        )
        wait_for(
            "v2 in the route", lambda: self.routes is not None and self.routes.weights == {"1": 50, "2": 50}, 30, 0.1
        )
        served = self.ok_to("2")
        wait_for("20 in-distribution requests answered by v2", lambda: self.ok_to("2") >= served + 20, 60, 0.1)
        wait_for("no alert active for the deployment", lambda: not self.active_alerts(), 90, 0.5)
        rolled = len(self.routes.restored)
        with self.load.lock:
            sent_before = len(self.load.stats.sent)
        self.load.mode = "shifted"
        routes = self.routes
        wait_for("all traffic back on v1", lambda: len(routes.restored) > rolled, 120, 0.02)
        self.load.mode = "held-out"
        with self.load.lock:
            shifted = [at for at, _, mode in self.load.stats.sent[sent_before:] if mode == "shifted"]
        first = shifted[0]
        route = routes.restored[-1]
        alerts = self.active_alerts()
        starts = [monotonic_of(a["startsAt"]) for a in alerts if a["labels"].get("model_version") == "2"]
        wait_for("RolledBack", lambda: self.status().get("phase") == "RolledBack", 60, 0.2)
        operator_ms = operator_latencies(self.log)
        patch = {"metadata": {"annotations": {f"{GROUP}/action": "retry"}}}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments", MD, patch)
        return (
            (route - first) * 1000,
            (max(starts) - first) * 1000 if starts else None,
            operator_ms[-1] if operator_ms else None,
        )

    def teardown(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.routes is not None:
            self.routes.stop()
        with contextlib.suppress(Exception):
            monitoring.set_alert_webhooks(self.state, [])
            monitoring.set_rules(self.state, RULES, "groups: []\n")
        with contextlib.suppress(Exception):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments", MD)
            wait_for("the deployment deleted", lambda: not self.status(), 60, 0.5)
        stop_process(self.operator, 15)
        with contextlib.suppress(Exception):
            self.core.delete_namespace(self.ns)
        with contextlib.suppress(Exception):
            self.mlflow.delete_registered_model(self.model)


def monotonic_of(timestamp: str) -> float:
    """An RFC 3339 wall-clock time on this process's monotonic clock."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", timestamp).replace("Z", "+00:00")
    return time.monotonic() - (time.time() - datetime.fromisoformat(text).timestamp())


def operator_latencies(log: Path) -> list[float]:
    """Every alert arrival → route write the operator logged, in order (milliseconds)."""
    pattern = re.compile(r"route written (\d+) ms after the alert arrived")
    return [float(m.group(1)) for line in log.read_text(errors="replace").splitlines() if (m := pattern.search(line))]


def row(label: str, values: list[float]) -> str:
    return f"{label:<58} {percentile(values, 0.5):8.0f} {percentile(values, 0.99):8.0f}   ({len(values)} trials)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="shifted-traffic trials (>= 20)")
    parser.add_argument("--for", dest="alert_for", default="0s", help="the rules' `for` (shipped: 30s; demo: 5s)")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds before giving up")
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)

    state, ours = testbed_up(("mlflow", "prometheus"))
    bench = Bench(state, args.alert_for)
    total: list[float] = []
    to_alert: list[float] = []
    operator: list[float] = []
    try:
        print(f"setting up in {bench.ns} (operator log {bench.log}) …", file=sys.stderr)
        bench.setup()
        print(f"setup took {time.monotonic() - START:.0f}s; {args.trials} trials …", file=sys.stderr)
        for i in range(args.trials):
            left = args.budget - (time.monotonic() - START)
            if left < 60:
                print(f"out of time after {i} trials", file=sys.stderr)
                break
            t, a, o = bench.trial(min(300.0, left))
            total.append(t)
            if a is not None:
                to_alert.append(a)
            if o is not None:
                operator.append(o)
            print(
                f"  trial {i + 1}: {t:.0f} ms (alert startsAt {a or float('nan'):.0f} ms, operator {o} ms)",
                file=sys.stderr,
            )
    finally:
        bench.teardown()
        if ours:
            lifecycle.down()
    if not total:
        return 1
    load = os.getloadavg()
    print(f"\nrollback end to end, rules `for: {args.alert_for}`, scrape and evaluation every 1 s, ms")
    took = time.monotonic() - START
    print(f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; total {took:.0f}s)")
    print(f"{'':<58} {'p50':>8} {'p99':>8}")
    print(row("first shifted request → HTTPRoute write (watch)", total))
    if to_alert:
        print(row("first shifted request → alert startsAt (Prometheus)", to_alert))
        after = [t - a for t, a in zip(total, to_alert, strict=False)] if len(to_alert) == len(total) else []
        if after:
            print(row("alert startsAt → HTTPRoute write (Alertmanager, operator)", after))
    if operator:
        print(row("operator: alert arrival → route write", operator))
    if args.verbose:
        print(f"total: {[round(v) for v in total]}")
        print(f"alert: {[round(v) for v in to_alert]}")
        print(f"operator: {[round(v) for v in operator]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
