"""What the bench scripts share: the test bed, the CRDs, the operator as a subprocess, polling, percentiles, metrics."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

from kubernetes import client, config  # noqa: E402

from bed import lifecycle  # noqa: E402
from bed.state import State, testbed_dir  # noqa: E402

GROUP, VERSION = "ml.slipway.dev", "v1alpha1"
RequestKey = tuple[str, str, str, str]  # verb, group, resource, subresource
LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: with fewer than 100 values p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until probe() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def testbed_up(services: tuple[str, ...]) -> tuple[State, bool]:
    """The running test bed if it has ``services``, else a new one; and whether it is ours to take down."""
    existing = State.load(testbed_dir())
    if lifecycle.is_up(existing) and existing is not None and all(s in existing.pids for s in services):
        return existing, False
    return lifecycle.up(services), True


def crds_established(api: client.ApiClient) -> bool:
    """Whether the Slipway CRDs are Established (they may have just been applied)."""
    ext = client.ApiextensionsV1Api(api)
    for crd in ("modeldeployments", "modelversions"):
        try:
            conditions = ext.read_custom_resource_definition(f"{crd}.{GROUP}").status.conditions or []
        except client.exceptions.ApiException:
            return False
        if not any(c.type == "Established" and c.status == "True" for c in conditions):
            return False
    return True


def install_crds(state: State) -> None:
    """Server-side apply of crds/ (taking over fields another manager set), then wait until Established."""
    subprocess.run(
        [
            *(state.kubectl, "--kubeconfig", state.kubeconfig, "apply", "--server-side", "--force-conflicts"),
            *("--field-manager=slipway-crds", "-f", str(REPO / "crds")),
        ],
        capture_output=True,
        check=True,
    )
    with config.new_client_from_config(config_file=state.kubeconfig) as api:
        wait_for("the Slipway CRDs", lambda: crds_established(api), 60, 0.5)


def tiny_model_run(mlflow: Any) -> tuple[str, str]:
    """(run id, ``runs:/…/model`` source) of a run in experiment slipway-bench logging a tiny MLmodel artifact."""
    experiment = mlflow.get_experiment_by_name("slipway-bench")
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment("slipway-bench")
    run = mlflow.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "MLmodel").write_text("flavors: {python_function: {loader_module: mlflow.sklearn}}\n")
        mlflow.log_artifact(run.info.run_id, str(Path(tmp) / "MLmodel"), "model")
    mlflow.set_terminated(run.info.run_id)
    return run.info.run_id, f"runs:/{run.info.run_id}/model"


def mlflow_settings(state: State, poll_seconds: float, webhook_secret: str = "") -> dict[str, str]:
    """The operator's environment for syncing the test bed's MLflow."""
    return {
        "SLIPWAY_MLFLOW_URI": state.urls["mlflow"],
        "SLIPWAY_MLFLOW_POLL_SECONDS": f"{poll_seconds:g}",
        "SLIPWAY_MLFLOW_WEBHOOK_SECRET": webhook_secret,
        "SLIPWAY_MLFLOW_ARTIFACTS_DESTINATION": state.urls["mlflow-artifacts"],
    }


def spawn_operator(
    kubeconfig: str, namespace: str, port: int, log: Path, env: dict[str, str] | None = None, src: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m slipway -n NAMESPACE`` on 127.0.0.1:PORT, logging to LOG; the caller's SLIPWAY_*/MLFLOW_* dropped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_"))}
    paths = [str(src or REPO / "operator"), environ.get("PYTHONPATH", "")]
    environ.update(
        KUBECONFIG=kubeconfig,
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
        SLIPWAY_HTTP_HOST="127.0.0.1",
        SLIPWAY_HTTP_PORT=str(port),
        **(env or {}),
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "slipway", "-n", namespace, "--liveness", ""],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def wait_operator_ready(
    proc: subprocess.Popen[bytes], port: int, log: Path, handler: str, timeout: float = 120
) -> None:
    """Until /healthz answers and the startup handler ``handler`` succeeded (kopf logs it)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return f"'{handler}' succeeded" in log.read_text(errors="replace")
        return False

    wait_for("the operator", ready, timeout, 0.2)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 20) -> None:
    """SIGINT, then SIGKILL after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in Prometheus text format: (labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            out.append((dict(LABELS.findall(labels)), float(value)))
    return out


def apiserver_requests(api: client.ApiClient) -> Counter[RequestKey]:
    """The kube-apiserver's ``apiserver_request_total`` summed over codes, scopes, versions; resource requests only."""
    response = api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30
    )[0]
    counts: Counter[RequestKey] = Counter()
    for labels, value in samples(response.data.decode(), "apiserver_request_total"):
        if labels.get("resource"):
            key = (labels["verb"], labels.get("group", ""), labels["resource"], labels.get("subresource", ""))
            counts[key] += int(value)
    return counts


def request_name(key: RequestKey) -> str:
    """``VERB resource/subresource (group)``."""
    verb, group, resource, sub = key
    return f"{verb} {resource}{'/' + sub if sub else ''}{' (' + group + ')' if group else ''}"


def operator_metrics(port: int) -> str:
    """The operator's own ``/metrics`` text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def client_requests(text: str) -> Counter[tuple[str, str]]:
    """The operator's own count of what its Kubernetes client sent (``slipway_api_requests_total``) by (verb, kind)."""
    counts: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(text, "slipway_api_requests_total"):
        counts[(labels["verb"], labels["kind"])] += int(value)
    return counts


def workqueue(text: str, name: str = "modeldeployment") -> dict[str, float]:
    """The work queue's ``slipway_workqueue_*`` series of one queue: adds, retries, depth, work and wait sums/counts."""
    out: dict[str, float] = {}
    for metric, key in (
        ("slipway_workqueue_adds_total", "adds"),
        ("slipway_workqueue_retries_total", "retries"),
        ("slipway_workqueue_depth", "depth"),
        ("slipway_workqueue_work_duration_seconds_sum", "work_seconds"),
        ("slipway_workqueue_work_duration_seconds_count", "passes"),
        ("slipway_workqueue_queue_duration_seconds_sum", "wait_seconds"),
        ("slipway_workqueue_queue_duration_seconds_count", "waits"),
    ):
        out[key] = sum(v for labels, v in samples(text, metric) if labels.get("name") == name)
    return out


def gc_pauses(text: str) -> str:
    """The operator's garbage-collection pauses (``slipway_gc_pause_seconds``) in one line, or "" if not exported."""
    parts = []

    def of(generation: str, metric: str) -> float:
        return sum(v for labels, v in samples(text, metric) if labels.get("generation") == generation)

    for generation in ("0", "1", "2"):
        count, total = of(generation, "slipway_gc_pause_seconds_count"), of(generation, "slipway_gc_pause_seconds_sum")
        if not count:
            continue
        buckets = sorted(
            (float(labels["le"]), v)
            for labels, v in samples(text, "slipway_gc_pause_seconds_bucket")
            if labels.get("generation") == generation and labels.get("le") not in (None, "+Inf")
        )
        bound = next((le for le, v in buckets if v >= count), None)
        slowest = f"all ≤ {bound * 1000:g} ms" if bound is not None else "some > the largest bucket"
        parts.append(f"gen {generation}: {count:.0f}, mean {total / count * 1000:.1f} ms, {slowest}")
    return "; ".join(parts)
