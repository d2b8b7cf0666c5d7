"""Registry sync lag: an MLflow alias move → the rollout starting, by MLflow's webhook and by polling.

    python bench/registry_sync.py [--trials 20] [--poll-seconds 2]

Uses the running test bed with MLflow (or brings one up with ``hack/testbed`` and takes it
down after). One registered model gets two versions (backed by one run's tiny MLmodel artifact)
and the alias ``champion`` on v1. Then, once per mode, in a fresh namespace:

- ``polling``: the operator polls MLflow every ``--poll-seconds`` (no webhook);
- ``webhook``: the operator polls every 600 s, and an MLflow webhook (signed, events
  ``model_version_alias.created``/``deleted``) points at its ``/webhooks/mlflow``.

A ModelDeployment follows ``champion`` (canary; no predictor runs, so a rollout waits in
``Progressing`` once started). Per trial the alias moves v1 → v2 through MLflow's API and the
clock starts; it stops when a watch on the ModelDeployment sees ``status.canaryVersion: "2"``
in phase ``Progressing`` (the rollout started: MLflow → operator → ModelVersion status →
ModelDeployment pass). The alias then moves back (the rollout is withdrawn, ``TargetReverted``)
and, after a random pause of up to one poll interval (so polling trials sample the poll phase
evenly), the next trial starts.

Baselines measured in the same run: the ``set_registered_model_alias`` call itself (the MLflow
round trip a user pays), and the poll interval. Prints p50 and p99 (nearest rank: with fewer
than 100 trials p99 is the slowest) per mode, and the ratios: webhook lag ÷ set-alias call,
polling lag ÷ poll interval, polling ÷ webhook. Bounded: about 2-3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from common import (
    GROUP,
    VERSION,
    free_port,
    install_crds,
    mlflow_settings,
    percentile,
    spawn_operator,
    stop_process,
    testbed_up,
    tiny_model_run,
    wait_for,
    wait_operator_ready,
)
from kubernetes import client, config, watch

from bed import lifecycle
from bed.state import State

ALIAS = "champion"
SECRET = "bench-" + uuid.uuid4().hex
WEBHOOK_POLL_SECONDS = 600.0


class Operator:
    """``python -m slipway`` watching one namespace, syncing the test bed's MLflow."""

    def __init__(self, state: State, namespace: str, poll_seconds: float, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = mlflow_settings(state, poll_seconds, SECRET)
        self.proc = spawn_operator(state.kubeconfig, namespace, self.port, log, env)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/mlflow"

    def wait_ready(self, timeout: float = 120) -> None:
        wait_operator_ready(self.proc, self.port, self.log, "start_registry_sync", timeout)

    def stop(self) -> None:
        stop_process(self.proc)


class StatusWatch:
    """Watches one ModelDeployment; keeps its last status and when each (phase, canaryVersion) was first seen."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, name: str) -> None:
        self.custom, self.namespace, self.name = custom, namespace, name
        self.status: dict[str, Any] = {}
        self.seen: list[tuple[float, str | None, str | None]] = []
        self._watch = watch.Watch()
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                for event in self._watch.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "modeldeployments",
                    field_selector=f"metadata.name={self.name}",
                    timeout_seconds=300,
                ):
                    at = time.monotonic()
                    status = dict(event["object"].get("status") or {})
                    with self._lock:
                        self.status = status
                        key = (status.get("phase"), status.get("canaryVersion"))
                        if not self.seen or self.seen[-1][1:] != key:
                            self.seen.append((at, *key))
            except Exception:
                if getattr(self._watch, "_stop", False):
                    return
                time.sleep(0.2)
            if getattr(self._watch, "_stop", False):
                return

    def first(self, since: float, phase: str, canary: str | None) -> float | None:
        with self._lock:
            return next((t for t, p, c in self.seen if t >= since and p == phase and c == canary), None)

    def phase(self) -> str | None:
        with self._lock:
            return self.status.get("phase")

    def stop(self) -> None:
        self._watch.stop()


def registered_model(mlflow: Any) -> tuple[str, str, str]:
    """A registered model with two versions (one run's MLmodel artifact behind both)."""
    run_id, source = tiny_model_run(mlflow)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    mlflow.create_registered_model(name)
    v1 = str(mlflow.create_model_version(name, source=source, run_id=run_id).version)
    v2 = str(mlflow.create_model_version(name, source=source, run_id=run_id).version)
    return name, v1, v2


def run_mode(
    state: State, mlflow: Any, model: str, versions: tuple[str, str], mode: str, poll: float, trials: int, logs: Path
) -> tuple[list[float], list[float]]:
    """(lags, set-alias call latencies) of ``trials`` alias moves in one mode."""
    v1, v2 = versions
    api = config.new_client_from_config(config_file=state.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"bench-sync-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    mlflow.set_registered_model_alias(model, ALIAS, v1)
    op = Operator(state, ns, poll if mode == "polling" else WEBHOOK_POLL_SECONDS, logs / f"operator-{mode}.log")
    hook = None
    lags: list[float] = []
    calls: list[float] = []
    status: StatusWatch | None = None
    try:
        op.wait_ready()
        if mode == "webhook":
            events = ["model_version_alias.created", "model_version_alias.deleted"]
            hook = mlflow.create_webhook(name=f"slipway-{ns}", url=op.webhook_url, events=events, secret=SECRET)
            time.sleep(1.5)  # the test bed's MLflow caches its webhook list for 1 s
        md = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "bench"},
            "spec": {"model": {"name": model, "track": {"alias": ALIAS}}, "gateway": {"parentRefs": [{"name": "gw"}]}},
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md)
        status = StatusWatch(custom, ns, "bench")
        wait_for("v1 serving", lambda: status is not None and status.status.get("stableVersion") == v1, 90)
        rng = random.Random(7)
        for i in range(trials):
            started = time.monotonic()
            mlflow.set_registered_model_alias(model, ALIAS, v2)
            calls.append(time.monotonic() - started)
            seen = wait_for("rollout start", lambda s=started: status.first(s, "Progressing", v2), 60, 0.01)
            lags.append(seen - started)
            back = time.monotonic()
            mlflow.set_registered_model_alias(model, ALIAS, v1)
            wait_for("rollout withdrawn", lambda b=back: status.first(b, "RolledBack", None), 60, 0.02)
            print(f"  {mode} trial {i + 1}/{trials}: {lags[-1] * 1000:.0f} ms", flush=True)
            time.sleep(rng.uniform(0, poll))
    finally:
        if status is not None:
            status.stop()
        if hook is not None:
            with contextlib.suppress(Exception):
                mlflow.delete_webhook(hook.webhook_id)
        with contextlib.suppress(Exception):
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", "bench")
            wait_for(
                "deletion",
                lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments")["items"],
                30,
            )
        op.stop()
        with contextlib.suppress(Exception):
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments")["items"]
            for item in items:
                patch = {"metadata": {"finalizers": None}}
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, ns, "modeldeployments", item["metadata"]["name"], patch
                )
        with contextlib.suppress(Exception):
            core.delete_namespace(ns)
        api.close()
    return lags, calls


def row(label: str, values: list[float]) -> str:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return f"  {label:<36} p50 {p50 * 1000:8.0f} ms   p99 {p99 * 1000:8.0f} ms   (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="alias moves per mode")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="the polling mode's interval")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    state, ours = testbed_up(("mlflow",))
    install_crds(state)
    mlflow = MlflowClient(state.urls["mlflow"])
    logs = Path(tempfile.mkdtemp(prefix="slipway-bench-sync-"))
    print(f"registry sync lag: {args.trials} trials per mode, poll {args.poll_seconds:g}s; operator logs in {logs}")
    model, v1, v2 = registered_model(mlflow)
    results: dict[str, tuple[list[float], list[float]]] = {}
    try:
        for mode in ("webhook", "polling"):
            results[mode] = run_mode(state, mlflow, model, (v1, v2), mode, args.poll_seconds, args.trials, logs)
    finally:
        with contextlib.suppress(Exception):
            mlflow.delete_registered_model(model)
        if ours:
            lifecycle.down()

    calls = results["webhook"][1] + results["polling"][1]
    hook, poll = results["webhook"][0], results["polling"][0]
    print("\nMLflow alias move → rollout start (status.canaryVersion set, phase Progressing)")
    print(row("baseline: set_registered_model_alias call", calls))
    print(row("webhook (poll 600 s)", hook))
    print(row(f"polling every {args.poll_seconds:g} s", poll))
    c50, c99 = percentile(calls, 0.5), percentile(calls, 0.99)
    print("ratios")
    print(
        f"  webhook lag ÷ set-alias call:   p50 {percentile(hook, 0.5) / c50:6.1f}x   "
        f"p99 {percentile(hook, 0.99) / c99:6.1f}x"
    )
    interval = args.poll_seconds
    print(
        f"  polling lag ÷ poll interval:    p50 {percentile(poll, 0.5) / interval:6.2f}x   "
        f"p99 {percentile(poll, 0.99) / interval:6.2f}x"
    )
    print(
        f"  polling lag ÷ webhook lag:      p50 {percentile(poll, 0.5) / percentile(hook, 0.5):6.1f}x   "
        f"p99 {percentile(poll, 0.99) / percentile(hook, 0.99):6.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
