"""Alert-driven rollback: Alertmanager notification → HTTPRoute write, against Alertmanager → a bare receiver.

    python bench/rollback_latency.py [--trials 24] [--annotation-trials 8] [--paths here,main] [--busy 0]

Uses the running test bed (or brings one up with ``hack/testbed`` and takes it down after).
For each operator in ``--paths`` it makes a fresh namespace and starts the real operator there
(``python -m slipway``, webhook token set, no MLflow, no Prometheus poller): ``here`` is this
checkout's operator; any other name is a git ref (``main``, a commit) whose ``operator/`` is
extracted to a temporary directory and run the same way — a before/after in one run. In this process, a bare
``AlertmanagerReceiver`` whose handler only records the arrival time. Alertmanager routes each
namespace's alerts to its operator and every alert to the bare receiver too (notified in
parallel). ``trials`` ModelDeployments per path (plus ``annotation-trials`` for the first path)
share one model; each gets its canary (v2) to 50 % and pauses there.

Per trial, one alert naming one deployment is posted to Alertmanager's API, and the clock
starts. It stops twice: when the bare receiver gets the notification (the baseline — what any
webhook costs), and when a watch on the namespace's HTTPRoutes sees all weight back on v1
(the rollback). The operator also logs its own alert arrival → route write time. The next
trial waits until the previous deployment is ``RolledBack``, so trials do not overlap; the paths
take turns (trial i on each path, the first path alternating), so both see the same load.

For comparison, ``annotation-trials`` deployments are rolled back the other way a handler
could be fed — an annotation (``ml.slipway.dev/action: abort``) that kopf picks up and hands to
a full reconcile pass — timed from the annotation write to the route write.

Prints p50 and p99 (nearest rank: over fewer than 100 trials p99 is the slowest) and the ratios
to the baseline; with two paths, also trial i of one against trial i of the other (they ran back
to back, so under the same load): the median of those differences with a bootstrap 95 % interval
— what tells two paths apart on a loaded machine, where p99 of a few dozen trials is one slow
trial. Bounded: about 2-6 minutes, aborted at 900 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "operator"))

import httpx  # noqa: E402
from common import (  # noqa: E402
    free_port,
    gc_pauses,
    install_crds,
    operator_metrics,
    percentile,
    spawn_operator,
    stop_process,
    testbed_up,
    wait_operator_ready,
)
from common import wait_for as common_wait_for  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402

from bed import lifecycle  # noqa: E402
from bed.addons import monitoring  # noqa: E402
from bed.state import State  # noqa: E402
from slipway.receivers.alertmanager import PATH, AlertmanagerReceiver  # noqa: E402
from slipway.receivers.http import HttpServer  # noqa: E402
from slipway.rollout.alerts import Alert  # noqa: E402

GROUP, VERSION = "ml.slipway.dev", "v1alpha1"
MODEL = "bench"
TOKEN = "bench-" + uuid.uuid4().hex
BUDGET_SECONDS = 900.0
START = time.monotonic()


class OutOfTime(RuntimeError):
    """The bench would run past its time budget."""


def remaining(cap: float) -> float:
    left = BUDGET_SECONDS - (time.monotonic() - START)
    if left <= 0:
        raise OutOfTime(f"over the {BUDGET_SECONDS:.0f}s budget")
    return min(cap, left)


def wait_for(what: str, probe, timeout: float = 60.0, interval: float = 0.05):
    """:func:`common.wait_for`, within what is left of the run's budget."""
    return common_wait_for(what, probe, remaining(timeout), interval)


# --- the bare receiver (baseline) -------------------------------------------------------------------


class BareReceiver:
    """Alertmanager's webhook with the same receiver class, in this process, recording arrivals by deployment."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server = HttpServer()
        self._server.route("POST", PATH, AlertmanagerReceiver(TOKEN, self._handle))
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    async def _handle(self, alert: Alert) -> None:
        key = (alert.labels["namespace"], alert.labels["modeldeployment"])
        self.arrivals[key] = alert.received or time.monotonic()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self.port = self._loop.run_until_complete(self._server.start("127.0.0.1", 0))
        ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)


# --- the route watch -----------------------------------------------------------------------------------


class RouteWatch:
    """Watches the namespace's HTTPRoutes; records when each one goes back to all traffic on v1."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.custom, self.namespace = custom, namespace
        self.restored: dict[str, float] = {}
        self.weights: dict[str, dict[str, int]] = {}
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
                timeout_seconds=int(BUDGET_SECONDS) + 30,
            ):
                seen = time.monotonic()
                route = event["object"]
                name = route["metadata"]["name"]
                refs = route["spec"]["rules"][0]["backendRefs"]
                weights = {
                    r["name"].removeprefix(f"{name}-v").removesuffix("-predictor"): r.get("weight", 1) for r in refs
                }
                if weights == {"1": 100} and self.weights.get(name) != weights:
                    self.restored[name] = seen
                self.weights[name] = weights

    def stop(self) -> None:
        self._watch.stop()


def source_of(path: str) -> Path | None:
    """None for ``here`` (this checkout's operator); else git ref ``path``'s ``operator/``, extracted to a temp dir."""
    if path == "here":
        return None
    out = Path(tempfile.mkdtemp(prefix="slipway-bench-src-"))
    archive = subprocess.run(["git", "archive", path, "operator"], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "operator"


# --- the cluster -----------------------------------------------------------------------------------------


class Bench:
    """One namespace of paused canaries and the operator watching it: this checkout's (``here``) or a git ref's."""

    def __init__(self, state: State, trials: int, annotation_trials: int, path: str = "here") -> None:
        self.state = state
        self.path = path
        self.receiver = re.sub(r"[^A-Za-z0-9_-]", "-", path)
        self.src = source_of(path)
        self.api = config.new_client_from_config(config_file=state.kubeconfig)
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.ns = f"bench-{uuid.uuid4().hex[:8]}"
        self.names = [f"md-{i:02d}" for i in range(trials + annotation_trials)]
        self.alert_names = self.names[:trials]
        self.annotation_names = self.names[trials:]
        self.operator: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkdtemp(prefix="slipway-bench-")) / "operator.log"
        self.port = free_port()

    def kubectl(self, *args: str) -> None:
        cmd = [self.state.kubectl, "--kubeconfig", self.state.kubeconfig, *args]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def setup(self) -> None:
        self.core.create_namespace({"metadata": {"name": self.ns}})
        wait_for("default ServiceAccount", lambda: self.core.list_namespaced_service_account(self.ns).items, 30, 0.2)
        self.start_operator()
        for version, aliases in (("1", ["champion"]), ("2", [])):
            self.custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                self.ns,
                "modelversions",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ModelVersion",
                    "metadata": {
                        "name": f"{MODEL}-v{version}",
                        "labels": {f"{GROUP}/model": MODEL, f"{GROUP}/version": version},
                    },
                    "spec": {"model": MODEL, "version": version},
                },
            )
            self.aliases(version, aliases)
        for name in self.names:
            self.predictor(name, "2")  # the canary must be ready before it gets weight (v1 needs no pods here)
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, "modeldeployments", self.deployment(name)
            )

    def start_canaries(self) -> None:
        wait_for("v1 serving everywhere", lambda: self.phases() == {"Succeeded"}, 120, 0.5)
        self.aliases("1", [])
        self.aliases("2", ["champion"])

    def canaries_paused(self) -> None:
        wait_for("every canary paused at 50%", lambda: self.phases() == {"Paused"}, 120, 0.5)

    def aliases(self, version: str, aliases: list[str]) -> None:
        status = {"aliases": aliases, "stage": "None", "storageUri": f"s3://models/{MODEL}/{version}"}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, "modelversions", f"{MODEL}-v{version}", {"status": status}
        )

    def predictor(self, md: str, version: str) -> None:
        labels = {"app": f"{md}-v{version}"}
        self.apps.create_namespaced_deployment(
            self.ns,
            {
                "metadata": {"name": f"{md}-v{version}-predictor"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "kserve-container", "image": "registry.invalid/serving:1"}]},
                    },
                },
            },
        )

    def deployment(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": MODEL, "track": {"alias": "champion"}},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
                "rollback": {"alerts": {"alertNames": ["SlipwayModelDrift"]}, "registry": "none"},
            },
        }

    def phases(self, names: list[str] | None = None) -> set[str]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments")["items"]
        wanted = set(names or self.names)
        got = {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}
        return {got.get(n, "") for n in wanted}

    def start_operator(self) -> None:
        env = {"SLIPWAY_ALERTMANAGER_TOKEN": TOKEN}
        self.operator = spawn_operator(self.state.kubeconfig, self.ns, self.port, self.log, env, self.src)
        wait_operator_ready(self.operator, self.port, self.log, "start_alert_intake", 60)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments")
            wait_for(
                "deployments deleted (kopf's finalizers need the operator)", lambda: not self.phases() - {""}, 30, 0.5
            )
        stop_process(self.operator, 15)
        with contextlib.suppress(Exception):
            self.core.delete_namespace(self.ns)


# --- the trials -------------------------------------------------------------------------------------------


def post_alert(http: httpx.Client, am_url: str, namespace: str, md: str) -> None:
    labels = {
        "alertname": "SlipwayModelDrift",
        "namespace": namespace,
        "modeldeployment": md,
        "model_version": "2",
        "severity": "critical",
    }
    body = [{"labels": labels, "annotations": {"summary": "bench"}, "startsAt": datetime.now(UTC).isoformat()}]
    http.post(f"{am_url}/api/v2/alerts", json=body).raise_for_status()


def operator_latencies(log: Path) -> dict[str, tuple[float, float]]:
    """md → (read, status, route) milliseconds after the alert arrived, as the operator logged them."""
    pattern = re.compile(
        r"/(md-\d+): alert .* route written (\d+) ms after the alert arrived \(read at (\d+), status at (\d+)\)"
    )
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        if m := pattern.search(line):
            out[m.group(1)] = (float(m.group(3)), float(m.group(4)), float(m.group(2)))
    return out


def row(label: str, values: list[float], baseline: list[float] | None = None) -> str:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    text = f"{label:<46} {p50:8.1f} {p99:8.1f}"
    if baseline:
        text += f"   x{p50 / percentile(baseline, 0.5):5.1f}  x{p99 / percentile(baseline, 0.99):5.1f}"
    return text


def alertmanager_routes(state: State, benches: list[Bench], bare_url: str) -> None:
    """Alertmanager sends each bench namespace's alerts to its operator, and every alert to the bare receiver."""
    auth = f"        http_config:\n          authorization: {{type: Bearer, credentials: {TOKEN}}}\n"

    def hook(url: str) -> str:
        return f"      - url: {url}\n        send_resolved: false\n" + auth

    routes = "".join(f"    - matchers: ['namespace=\"{b.ns}\"']\n      receiver: {b.receiver}\n" for b in benches)
    receivers = "".join(
        f"  - name: {b.receiver}\n    webhook_configs:\n" + hook(f"http://127.0.0.1:{b.port}{PATH}") + hook(bare_url)
        for b in benches
    )
    config = (
        "route:\n  receiver: none\n  group_by: [alertname, namespace, modeldeployment]\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1m\n"
        f"  routes:\n{routes}receivers:\n  - name: none\n{receivers}"
    )
    (Path(state.dir) / "alertmanager" / "alertmanager.yml").write_text(config)
    with urllib.request.urlopen(
        urllib.request.Request(f"{state.urls['alertmanager']}/-/reload", method="POST"), timeout=10
    ):
        pass


@dataclass
class Samples:
    """One path's trials, milliseconds."""

    base: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    read: list[float] = field(default_factory=list)
    status: list[float] = field(default_factory=list)
    route: list[float] = field(default_factory=list)
    gc: str = ""
    """The operator's garbage-collection pauses over the run (operators that export them)."""


def paired(first: list[float], second: list[float], rounds: int = 2000) -> str:
    """Trial i of one path against trial i of the other (they ran back to back): the median difference with a
    bootstrap 95 % interval, and how often the first was faster. Robust where p99 of a few dozen trials is not."""
    diffs = [a - b for a, b in zip(first, second, strict=False)]
    if len(diffs) < 5:
        return "too few pairs"
    rng = random.Random(17)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(rounds))
    low, high = medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]
    faster = sum(d < 0 for d in diffs)
    return (
        f"median difference {statistics.median(diffs):+.1f} ms (95 % interval {low:+.1f} to {high:+.1f}); "
        f"faster in {faster} of {len(diffs)} pairs"
    )


def trial(
    bench: Bench, md: str, http: httpx.Client, am: str, routes: RouteWatch, bare: BareReceiver, out: Samples
) -> None:
    started = time.monotonic()
    post_alert(http, am, bench.ns, md)
    wait_for(f"{md} rolled back", lambda: routes.restored.get(md, 0) > started, 10, 0.002)
    wait_for(f"{md} at the bare receiver", lambda: bare.arrivals.get((bench.ns, md), 0) > started, 10, 0.002)
    out.total.append((routes.restored[md] - started) * 1000)
    out.base.append((bare.arrivals[(bench.ns, md)] - started) * 1000)
    wait_for(f"{md} RolledBack", lambda: bench.phases([md]) == {"RolledBack"}, 60, 0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24, help="alert trials per path (>= 20)")
    parser.add_argument("--annotation-trials", type=int, default=8, help="annotation → kopf trials, for comparison")
    parser.add_argument(
        "--paths",
        default="here",
        help="operators to compare, trials alternating: here (this checkout) or a git ref (e.g. here,main)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    parser.add_argument(
        "--busy", type=int, default=0, help="processes spinning on the CPU during the trials (a loaded machine)"
    )
    parser.add_argument(
        "--settle-load",
        type=float,
        default=0.0,
        help="before the trials, wait (up to 180 s) until the 1-minute load average is at most this (0: no wait)",
    )
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]

    state, ours = testbed_up(("mlflow", "prometheus"))
    benches = [Bench(state, args.trials, args.annotation_trials if i == 0 else 0, p) for i, p in enumerate(paths)]
    bare = BareReceiver()
    am = state.urls["alertmanager"]
    samples = {b.path: Samples() for b in benches}
    annotation: list[float] = []
    http = httpx.Client(timeout=5)  # made before the clock starts: a new client costs tens of ms
    spin: list[subprocess.Popen[bytes]] = []
    trial_load = (0.0, 0.0, 0.0)
    try:
        print(
            f"setting up {sum(len(b.names) for b in benches)} ModelDeployments ({', '.join(paths)}) …", file=sys.stderr
        )
        install_crds(state)
        for b in benches:
            b.setup()
        for b in benches:
            b.start_canaries()
        for b in benches:
            b.canaries_paused()
        watches = {b.path: RouteWatch(b.custom, b.ns) for b in benches}
        for b in benches:
            wait_for("the route watch", lambda b=b: len(watches[b.path].weights) == len(b.names), 30)
        alertmanager_routes(state, benches, bare.url)
        time.sleep(1.0)  # Alertmanager reloads its configuration
        print(f"setup took {time.monotonic() - START:.0f}s; {args.trials} alert trials per path …", file=sys.stderr)
        settle_until = time.monotonic() + 180
        while args.settle_load and os.getloadavg()[0] > args.settle_load and time.monotonic() < settle_until:
            time.sleep(2)  # the set-up's load (the test bed starting, KServe reconciling) passes
        print(f"load average {os.getloadavg()[0]:.1f} as the trials start", file=sys.stderr)
        spin += [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        if spin:
            time.sleep(20)  # the load average follows
            print(f"{len(spin)} busy processes; load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        for i in range(args.trials):
            for b in benches if i % 2 == 0 else benches[::-1]:  # alternate which path goes first
                trial(b, b.alert_names[i], http, am, watches[b.path], bare, samples[b.path])
        trial_load = os.getloadavg()
        for p in spin:
            p.kill()
        for b in benches:
            logged = operator_latencies(b.log)
            out = samples[b.path]
            out.read = [logged[md][0] for md in b.alert_names if md in logged]
            out.status = [logged[md][1] for md in b.alert_names if md in logged]
            out.route = [logged[md][2] for md in b.alert_names if md in logged]
            with contextlib.suppress(Exception):
                out.gc = gc_pauses(operator_metrics(b.port))
        monitoring.set_alert_webhooks(state, [])
        first = benches[0]
        print(f"{len(first.annotation_names)} annotation trials …", file=sys.stderr)
        routes = watches[first.path]
        for md in first.annotation_names:
            started = time.monotonic()
            patch = {"metadata": {"annotations": {f"{GROUP}/action": "abort"}}}
            first.custom.patch_namespaced_custom_object(GROUP, VERSION, first.ns, "modeldeployments", md, patch)
            wait_for(f"{md} aborted", lambda md=md, t=started: routes.restored.get(md, 0) > t, 10, 0.002)
            annotation.append((routes.restored[md] - started) * 1000)
            wait_for(f"{md} RolledBack", lambda md=md: first.phases([md]) == {"RolledBack"}, 15, 0.1)
        for w in watches.values():
            w.stop()
    finally:
        for p in spin:
            p.kill()
        with contextlib.suppress(Exception):
            monitoring.set_alert_webhooks(state, [])
        for b in benches:
            b.teardown()
        bare.stop()
        http.close()
        if ours:
            lifecycle.down()

    load = os.getloadavg()
    print(f"\nrollback latency, {args.trials} alert trials per path ({len(annotation)} annotation trials), ms")
    print(f"(load average {trial_load[0]:.1f} / {trial_load[1]:.1f} at the end of the alert trials", end="")
    print(f"{f', with {args.busy} busy processes' if args.busy else ''}; {load[0]:.1f} at the end)")
    print(f"{'':<46} {'p50':>8} {'p99':>8}   ratio to baseline (p50, p99)")
    for path, out in samples.items():
        if not out.total:
            continue
        print(f"-- alert path: {path}")
        print(row("Alertmanager → bare receiver (baseline)", out.base))
        print(row("Alertmanager → HTTPRoute write (seen by watch)", out.total, out.base))
        if out.route:
            print(row("  operator: alert arrival → object read", out.read))
            print(row("  operator: alert arrival → status write", out.status))
            print(row("  operator: alert arrival → route write", out.route))
        if out.gc:
            print(f"  operator's garbage-collection pauses over the run: {out.gc}")
    if len(paths) == 2 and samples[paths[0]].total and samples[paths[1]].total:
        one, two = samples[paths[0]], samples[paths[1]]
        print(f"-- {paths[0]} minus {paths[1]}, trial by trial (each pair ran back to back)")
        print(f"  Alertmanager → HTTPRoute write (seen by watch): {paired(one.total, two.total)}")
        if one.route and two.route and len(one.route) == len(one.total) and len(two.route) == len(two.total):
            print(f"  operator: alert arrival → route write:          {paired(one.route, two.route)}")
    if annotation:
        print(row("annotation → kopf → full pass → route write", annotation))
    print(f"(p99 over fewer than 100 trials is the slowest trial; total {time.monotonic() - START:.0f}s)")
    if args.verbose:
        for path, out in samples.items():
            for label in ("base", "total", "read", "status", "route"):
                print(f"{path} {label}: {[round(v) for v in getattr(out, label)]}")
        print(f"annotation: {[round(v) for v in annotation]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
