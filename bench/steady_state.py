"""Steady-state API load: N ModelDeployments at rest, with the applied-children cache off and on.

    python bench/steady_state.py [--size 100] [--window 65] [--settle 35] [--timeout 900] [--baseline-rev REV]
                                 [--phases baseline,cache]

Uses the running test bed (or brings one up with ``hack/testbed`` and takes it down after).
Two phases on the same API server, each in a fresh namespace with a fresh operator process:
``baseline`` (``SLIPWAY_REAPPLY_SECONDS=0``: every pass applies every child, as before the cache)
and ``cache`` (the default); ``--baseline-rev REV`` runs the baseline's operator from the
``operator/`` tree of a git revision instead (e.g. the commit before the cache); ``--phases cache``
runs the default operator alone. In each phase:

1. the operator is started and N ModelVersion + ModelDeployment pairs are created as
   ``bench/reconcile_scale.py`` creates them; the bench waits until all N are ``Succeeded`` with
   their three children (InferenceService, HPA, HTTPRoute), then ``--settle`` seconds more;
2. over ``--window`` seconds (65 by default: every deployment gets at least two 30 s resync
   passes) it takes the difference of the kube-apiserver's own ``/metrics``
   (``apiserver_request_total`` by verb, group, resource and subresource; non-resource requests
   such as this bench's two reads of ``/metrics`` are left out), the CPU seconds of the
   kube-apiserver, etcd and the operator (``/proc/<pid>/stat``), and the operator's
   ``slipway_child_applies_total`` and ``slipway_workqueue_work_duration_seconds_count`` (the passes
   its work queue ran; an operator from before the work queue has none, and the passes are then
   counted as its reads of a ModelDeployment). The bench sends nothing else to the API server
   meanwhile;
3. the operator is stopped and a second window of the same length is measured with the same
   objects in place: what the rest of the test bed (the controller manager's HPA controller,
   kwok, KServe's controller) costs on its own. The operator's share is the difference.

The API server counts every client alike (it has no per-client label), hence step 3. Request
counts are exact; CPU seconds are noisy on a shared machine. Prints a table per phase and the
ratios cache ÷ baseline of applies per minute, all requests per minute, API server CPU and
operator CPU, and per pass: requests and reads (issue 17's target: a pass at rest makes none).
Bounded: waiting for steady state stops at ``--timeout`` seconds per phase. Cleans up its
namespaces (an operator from before issue 17, run by ``--baseline-rev``, left kopf's finalizers
on its objects: those are stripped first; the current operator puts none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    GROUP,
    REPO,
    VERSION,
    RequestKey,
    apiserver_requests,
    client_requests,
    cpu_seconds,
    free_port,
    install_crds,
    operator_metrics,
    request_name,
    samples,
    spawn_operator,
    stop_process,
    testbed_up,
    wait_for,
    wait_operator_ready,
    workqueue,
)
from kubernetes.client.exceptions import ApiException
from reconcile_scale import STORAGE_PREFIX, Api, model_deployment, model_version, steady, version_status

from bed import lifecycle
from bed.state import State

CHILD_RESOURCES = ("inferenceservices", "horizontalpodautoscalers", "httproutes")
READS = ("GET", "LIST")
PHASES: tuple[tuple[str, dict[str, str]], ...] = (("baseline", {"SLIPWAY_REAPPLY_SECONDS": "0"}), ("cache", {}))


# -- what is measured --------------------------------------------------------------------------


def child_applies(text: str) -> Counter[tuple[str, str]]:
    """The operator's ``slipway_child_applies_total`` by (kind, result), from its ``/metrics`` text."""
    counts: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(text, "slipway_child_applies_total"):
        counts[(labels["kind"], labels["result"])] += int(value)
    return counts


@dataclass
class Window:
    """Differences over one measuring window."""

    seconds: float = 0.0
    requests: Counter[RequestKey] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)
    applies: Counter[tuple[str, str]] = field(default_factory=Counter)
    passes: float | None = None
    """Passes the operator's work queue ran (None: an operator without one)."""
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    """What the operator's client says it sent, by (verb, kind) (empty: an operator without the count)."""

    def per_minute(self, key: RequestKey) -> float:
        return self.requests[key] * 60 / self.seconds if self.seconds else 0.0

    def total_per_minute(self, verbs: tuple[str, ...] = ()) -> float:
        count = sum(v for k, v in self.requests.items() if not verbs or k[0] in verbs)
        return count * 60 / self.seconds if self.seconds else 0.0


def measure(api: Api, seconds: float, pids: dict[str, int], operator_port: int | None) -> Window:
    """Sleep through a window, reading the counters before and after (no other request to the API server)."""
    requests0, cpu0 = apiserver_requests(api.api), {name: cpu_seconds(pid) for name, pid in pids.items()}
    text0 = operator_metrics(operator_port) if operator_port else ""
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    requests1, cpu1 = apiserver_requests(api.api), {name: cpu_seconds(pid) for name, pid in pids.items()}
    text1 = operator_metrics(operator_port) if operator_port else ""
    passes = None
    if "slipway_workqueue_work_duration_seconds_count" in text1:
        passes = workqueue(text1)["passes"] - workqueue(text0)["passes"]
    return Window(
        elapsed,
        requests1 - requests0,
        {name: cpu1[name] - cpu0[name] for name in pids},
        child_applies(text1) - child_applies(text0),
        passes,
        client_requests(text1) - client_requests(text0),
    )


# -- one phase ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    env: dict[str, str]
    n: int
    src: Path | None = None
    steady_seconds: float | None = None
    running: Window = field(default_factory=Window)
    stopped: Window = field(default_factory=Window)
    still_steady: int = 0
    note: str = ""

    def operator_per_minute(self, verbs: tuple[str, ...] = ()) -> float:
        return self.running.total_per_minute(verbs) - self.stopped.total_per_minute(verbs)

    def applies_per_minute(self) -> float:
        """Server-side applies of children by the operator, per minute (the API server's count)."""
        keys = {k for k in self.running.requests if k[0] == "APPLY"}
        rate = sum(self.running.per_minute(k) - self.stopped.per_minute(k) for k in keys)
        return rate

    def passes_per_minute(self) -> float:
        """Reconcile passes per minute: the work queue's count, else the reads of a ModelDeployment (one per pass)."""
        if self.running.passes is not None:
            return self.running.passes * 60 / self.running.seconds if self.running.seconds else 0.0
        key = ("GET", GROUP, "modeldeployments", "")
        return self.running.per_minute(key) - self.stopped.per_minute(key)

    def cpu_share(self, name: str) -> float:
        """CPU seconds per minute of a process caused by the operator (running minus stopped window)."""
        per_min = self.running.cpu[name] * 60 / self.running.seconds
        return per_min - (self.stopped.cpu.get(name, 0.0) * 60 / self.stopped.seconds if name != "operator" else 0.0)


def create_pairs(api: Api, ns: str, n: int) -> float:
    """N ModelVersions (with the status the registry sync would set) and ModelDeployments, as reconcile_scale."""

    def pair(i: int) -> None:
        mv = model_version(i)
        api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modelversions", mv)
        api.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, "modelversions", mv["metadata"]["name"], version_status(i, STORAGE_PREFIX)
        )
        api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", model_deployment(i))

    return api.in_parallel(pair, n)


def strip_finalizers(api: Api, ns: str) -> None:
    """Strip the finalizers an operator from before issue 17 (kopf's timers) left on our objects: it is stopped."""
    for plural in ("modeldeployments", "modelversions"):
        with contextlib.suppress(ApiException):
            items = api.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
            names = [i["metadata"]["name"] for i in items if i["metadata"].get("finalizers")]

            def strip(i: int, names: list[str] = names, plural: str = plural) -> None:
                with contextlib.suppress(ApiException):
                    patch = {"metadata": {"finalizers": None}}
                    api.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, plural, names[i], patch)

            api.in_parallel(strip, len(names))


def drop(api: Api, ns: str, timeout: float = 180) -> None:
    """Delete the namespace (after stripping finalizers an older operator left) and wait until it is gone."""
    api.drop_namespace(ns)
    strip_finalizers(api, ns)

    def gone() -> bool:
        try:
            api.core.read_namespace(ns)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    with contextlib.suppress(TimeoutError):
        wait_for(f"namespace {ns} to go", gone, timeout, 1.0)


def run_phase(api: Api, state: State, phase: Phase, args: argparse.Namespace, logs: Path) -> Phase:
    n = phase.n
    ns = api.namespace(f"bench-steady-{phase.name}")
    port = free_port()
    log = logs / f"operator-{phase.name}-{n}.log"
    proc = spawn_operator(state.kubeconfig, ns, port, log, phase.env, phase.src)
    try:
        wait_operator_ready(proc, port, log, "start_driver")
        started = time.monotonic()
        created = create_pairs(api, ns, n)
        print(f"  created {n} ModelVersions (+status) and ModelDeployments in {created:.1f}s", flush=True)
        deadline = started + args.timeout
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            done = steady(api, ns, n)
            if done >= n:
                phase.steady_seconds = time.monotonic() - started
                break
            time.sleep(1.0 if n <= 200 else 3.0)
        if phase.steady_seconds is None:
            phase.note = f"steady state not reached: {done}/{n} (operator exit code {proc.poll()})"
            print(f"  {phase.note}", flush=True)
            return phase
        print(
            f"  all {n} Succeeded with children after {phase.steady_seconds:.1f}s; settling {args.settle:g}s",
            flush=True,
        )
        time.sleep(args.settle)
        pids = {"kube-apiserver": state.pids["kube-apiserver"], "etcd": state.pids["etcd"], "operator": proc.pid}
        print(f"  measuring {args.window:g}s with the operator running …", flush=True)
        phase.running = measure(api, args.window, pids, port)
        if proc.poll() is not None:
            phase.note = f"operator exited ({proc.returncode}) during the window"
        if phase.name == "baseline" and any(result == "unchanged" for _, result in phase.running.applies):
            phase.note += " WARNING: the baseline skipped applies (SLIPWAY_REAPPLY_SECONDS=0 not honoured)"
        phase.still_steady = steady(api, ns, n)
        stop_process(proc)
        time.sleep(5)
        print(f"  measuring {args.window:g}s with the operator stopped …", flush=True)
        del pids["operator"]
        phase.stopped = measure(api, args.window, pids, None)
        return phase
    finally:
        stop_process(proc)
        drop(api, ns)


# -- the report --------------------------------------------------------------------------------


def report(p: Phase) -> None:
    print(f"\nphase {p.name} ({' '.join(f'{k}={v}' for k, v in p.env.items()) or 'default settings'}), N = {p.n}")
    if p.steady_seconds is None:
        print(f"  NOT measured: {p.note}")
        return
    r, s = p.running, p.stopped
    print(
        f"  steady state after {p.steady_seconds:.1f}s; windows {r.seconds:.1f}s (operator running), "
        f"{s.seconds:.1f}s (stopped); {p.still_steady}/{p.n} still steady after the window {p.note}"
    )
    print(f"  {'requests per minute (verb resource)':58} {'running':>9} {'stopped':>9} {'operator':>9}")
    keys = sorted(set(r.requests) | set(s.requests), key=lambda k: -(r.per_minute(k) - s.per_minute(k)))
    for key in keys:
        share = r.per_minute(key) - s.per_minute(key)
        if r.requests[key] or s.requests[key]:
            print(f"  {request_name(key):58} {r.per_minute(key):9.1f} {s.per_minute(key):9.1f} {share:9.1f}")
    print(
        f"  {'all resource requests':58} {r.total_per_minute():9.1f} {s.total_per_minute():9.1f} "
        f"{p.operator_per_minute():9.1f}"
    )
    print(f"  {'CPU seconds per minute':58} {'running':>9} {'stopped':>9} {'operator':>9}")
    for name in r.cpu:
        run_rate = r.cpu[name] * 60 / r.seconds
        stop_rate = s.cpu[name] * 60 / s.seconds if name in s.cpu else 0.0
        print(f"  {name:58} {run_rate:9.2f} {stop_rate:9.2f} {p.cpu_share(name):9.2f}")
    applied = {k: v for k, v in sorted(r.applies.items()) if v}
    print(
        "  slipway_child_applies_total over the window: "
        + (", ".join(f"{kind} {result} {v}" for (kind, result), v in applied.items()) or "none")
    )
    sent = {k: v for k, v in sorted(r.sent.items()) if v}
    print(
        "  slipway_api_requests_total over the window (the operator's own count, kopf's watches aside): "
        + (", ".join(f"{verb} {kind} {v}" for (verb, kind), v in sent.items()) or "none")
    )
    passes = p.passes_per_minute()
    source = "the work queue's count" if r.passes is not None else "GET modeldeployments"
    if passes > 0:
        reads, writes = p.operator_per_minute(READS), p.operator_per_minute() - p.operator_per_minute(READS)
        print(
            f"  per pass ({passes:.1f} passes/min, {source}): {p.operator_per_minute() / passes:.2f} requests, "
            f"{reads / passes:.2f} reads (GET, LIST), {writes / passes:.2f} other"
        )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def report_ratios(base: Phase, cache: Phase) -> None:
    if base.steady_seconds is None or cache.steady_seconds is None:
        return
    print(f"\nratios cache ÷ baseline, N = {base.n} (operator's share: running window minus stopped window)")
    rows = [
        ("APPLY requests/min", base.applies_per_minute(), cache.applies_per_minute()),
        ("all resource requests/min", base.operator_per_minute(), cache.operator_per_minute()),
        ("kube-apiserver CPU s/min", base.cpu_share("kube-apiserver"), cache.cpu_share("kube-apiserver")),
        (
            "kube-apiserver CPU s/min (raw, running window)",
            base.running.cpu["kube-apiserver"] * 60 / base.running.seconds,
            cache.running.cpu["kube-apiserver"] * 60 / cache.running.seconds,
        ),
        ("etcd CPU s/min", base.cpu_share("etcd"), cache.cpu_share("etcd")),
        ("operator CPU s/min", base.cpu_share("operator"), cache.cpu_share("operator")),
        ("passes/min", base.passes_per_minute(), cache.passes_per_minute()),
    ]
    # Passes of deployments created together come in bursts every 30 s: a window catches two or three.
    if base.passes_per_minute() > 0 and cache.passes_per_minute() > 0:
        bp, cp = base.passes_per_minute(), cache.passes_per_minute()
        rows += [
            ("requests per pass", base.operator_per_minute() / bp, cache.operator_per_minute() / cp),
            ("reads per pass (GET, LIST)", base.operator_per_minute(READS) / bp, cache.operator_per_minute(READS) / cp),
            (
                "kube-apiserver CPU ms per pass",
                base.cpu_share("kube-apiserver") / bp * 1e3,
                cache.cpu_share("kube-apiserver") / cp * 1e3,
            ),
            ("operator CPU ms per pass", base.cpu_share("operator") / bp * 1e3, cache.cpu_share("operator") / cp * 1e3),
        ]
    print(f"  {'':48} {'baseline':>9} {'cache':>9} {'ratio':>7}")
    for name, b, c in rows:
        print(f"  {name:48} {b:9.2f} {c:9.2f} {ratio(c, b):>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100, help="number of ModelDeployments")
    parser.add_argument("--window", type=float, default=65, help="seconds of each measuring window")
    parser.add_argument("--settle", type=float, default=35, help="seconds to wait after steady state, before measuring")
    parser.add_argument("--concurrency", type=int, default=4, help="threads creating objects")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for steady state per phase")
    parser.add_argument("--baseline-rev", default="", help="run the baseline's operator from this git revision")
    parser.add_argument("--phases", default="baseline,cache", help="which phases to run (baseline, cache)")
    args = parser.parse_args(argv)
    wanted = {p for p in args.phases.split(",") if p}

    state, ours = testbed_up(())
    install_crds(state)
    api = Api(state.kubeconfig, args.concurrency)
    logs = Path(tempfile.mkdtemp(prefix="slipway-bench-steady-"))
    print(f"steady-state API load: N = {args.size}, window {args.window:g}s; operator logs in {logs}")
    baseline_src = None
    if args.baseline_rev:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline_rev, "operator"], capture_output=True
        )
        archive.check_returncode()
        subprocess.run(["tar", "-x", "-C", str(logs)], input=archive.stdout, check=True)
        baseline_src = logs / "operator"
        print(f"baseline operator: operator/ of {args.baseline_rev}", flush=True)
    phases = []
    try:
        for name, env in (phase for phase in PHASES if phase[0] in wanted):
            print(f"\nphase {name} …", flush=True)
            started = time.monotonic()
            src = baseline_src if name == "baseline" else None
            phases.append(run_phase(api, state, Phase(name, env, args.size, src), args, logs))
            print(f"  (phase {name} took {time.monotonic() - started:.0f}s in all)", flush=True)
    finally:
        api.api.close()
        if ours:
            lifecycle.down()
    for p in phases:
        report(p)
    if len(phases) == 2:
        report_ratios(*phases)
    summary = [
        {
            "phase": p.name,
            "n": p.n,
            "steady_seconds": p.steady_seconds,
            "window_seconds": [p.running.seconds, p.stopped.seconds],
            "operator_requests_per_minute": p.operator_per_minute(),
            "operator_applies_per_minute": p.applies_per_minute(),
            "operator_reads_per_minute": p.operator_per_minute(READS),
            "passes_per_minute": p.passes_per_minute(),
            "cpu_seconds_per_minute": {k: p.cpu_share(k) for k in p.running.cpu},
            "child_applies": {f"{k}/{r}": v for (k, r), v in p.running.applies.items()},
        }
        for p in phases
    ]
    print(json.dumps(summary))
    return 0 if all(p.steady_seconds is not None for p in phases) else 2


if __name__ == "__main__":
    sys.exit(main())
