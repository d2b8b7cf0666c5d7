"""Predictor pods run for real on the test bed: the local kubelet, the EndpointSlice controller, per-pod IPs and mounts.

A Deployment shaped like KServe's predictor (``hack/predictor_pods.py``: the
``storage-initializer`` init container filling the emptyDir at ``/mnt/models``, then
``python -m slipway_serving``) with two replicas, and a Service. The local kubelet runs both pods
as local processes, each on its own pod IP, each with its own ``/mnt/models``; the pods turn
Ready only when their readiness probe passes, and the real EndpointSlice controller publishes
both addresses as ready endpoints. A container killed from outside is restarted (restartCount
1) and its endpoint goes unready, then ready again; scaling down stops a pod's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import predictor_pods
import pytest
from operator_process import wait_until

pytestmark = pytest.mark.integration


def _get(kubectl: Any, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def _pods(kubectl: Any, app: str) -> list[dict[str, Any]]:
    return list(_get(kubectl, "pods", "-l", f"app={app}")["items"])


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _endpoints(kubectl: Any, service: str) -> dict[str, bool]:
    """address → ready, from the EndpointSlices of the Service."""
    out: dict[str, bool] = {}
    for eps in _get(kubectl, "endpointslices", "-l", f"kubernetes.io/service-name={service}")["items"]:
        for ep in eps.get("endpoints") or []:
            for address in ep["addresses"]:
                out[address] = bool((ep.get("conditions") or {}).get("ready"))
    return out


def _pid(pod: dict[str, Any]) -> int:
    """The model server's process (the local kubelet's container ID is ``local://<pid>``)."""
    return int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))


def _loopback_addresses() -> str:
    return subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True).stdout


def _live(ip: str) -> bool:
    try:
        return httpx.get(f"http://{ip}:8080/v2/health/live", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_two_replicas_run_on_their_own_ips_and_endpoints_follow_readiness(
    kubectl: Any, namespace: str, model_dir: Path, testbed: Any
) -> None:
    objects = predictor_pods.predictor_objects("iris", namespace, str(model_dir), "3", replicas=2)
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    app = "iris-predictor"

    pods = wait_until(
        lambda: (p := _pods(kubectl, app)) and len(p) == 2 and all(_ready(x) for x in p) and p,
        240,
        "both predictor pods Ready",
        interval=0.5,
    )
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2, ips
    assert not any(ip.startswith("127.") for ip in ips)
    for pod in pods:
        status = pod["status"]
        assert status["podIPs"] == [{"ip": status["podIP"]}]
        (init,) = status["initContainerStatuses"]
        assert init["name"] == "storage-initializer" and init["state"]["terminated"]["exitCode"] == 0
        (main,) = status["containerStatuses"]
        assert main["ready"] is True and main["restartCount"] == 0
        # the model server listens on the pod's own address, and answers as the model it was given
        resp = httpx.post(
            f"http://{status['podIP']}:8080/v2/models/model/infer",
            json={"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["model_version"] == "3"
        # each pod got its own /mnt/models, filled by its own init container
        volume = (
            testbed.dir / "pods" / f"{namespace}_{pod['metadata']['name']}" / "volumes" / "kserve-provision-location"
        )
        assert (volume / "MLmodel").is_file()
    assert not Path("/mnt/models/MLmodel").exists()

    endpoints = wait_until(
        lambda: (e := _endpoints(kubectl, app)) and len(e) == 2 and all(e.values()) and e,
        60,
        "two ready endpoints",
        interval=0.5,
    )
    assert set(endpoints) == ips

    # Kill one model server from outside: the kubelet restarts it; its endpoint is unready meanwhile.
    victim = pods[0]
    os.kill(_pid(victim), signal.SIGKILL)
    ip = victim["status"]["podIP"]
    wait_until(lambda: _endpoints(kubectl, app).get(ip) is False, 30, "the killed pod's endpoint unready", interval=0.2)
    restarted = wait_until(
        lambda: (p := _get(kubectl, "pod", victim["metadata"]["name"])) and _ready(p) and p,
        120,
        "the killed pod restarted and Ready again",
        interval=0.5,
    )
    main = restarted["status"]["containerStatuses"][0]
    assert main["restartCount"] == 1
    assert main["lastState"]["terminated"]["exitCode"] == 137
    assert restarted["status"]["podIP"] == ip
    wait_until(lambda: _endpoints(kubectl, app).get(ip) is True, 30, "its endpoint ready again", interval=0.2)

    # Scale down: one pod is stopped, its process gone, its address released.
    pids = {p["status"]["podIP"]: _pid(p) for p in _pods(kubectl, app)}
    assert all(f"{ip}/32" in _loopback_addresses() for ip in pids)
    kubectl("scale", "deployment", app, "--replicas=1")
    wait_until(lambda: len(_pods(kubectl, app)) == 1, 60, "one pod left", interval=0.5)
    wait_until(lambda: len(_endpoints(kubectl, app)) == 1, 30, "one endpoint left", interval=0.2)
    (gone_ip,) = ips - {p["status"]["podIP"] for p in _pods(kubectl, app)}
    with pytest.raises(ProcessLookupError):
        os.kill(pids[gone_ip], 0)
    assert f"{gone_ip}/32" not in _loopback_addresses()


def test_a_pod_whose_probe_fails_runs_but_is_not_ready(kubectl: Any, namespace: str, model_dir: Path) -> None:
    objects = predictor_pods.predictor_objects("broken", namespace, str(model_dir), "1")
    probe = objects[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["path"] = "/v2/models/no-such-model/ready"
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    app = "broken-predictor"
    pod = wait_until(
        lambda: (p := _pods(kubectl, app)) and p[0]["status"].get("phase") == "Running" and p[0],
        120,
        "the pod Running",
        interval=0.5,
    )
    ip = pod["status"]["podIP"]
    # the server itself is up (it answers liveness), only the probe fails
    wait_until(lambda: _live(ip), 180, "the server up", interval=0.5)
    time.sleep(3)  # three probe periods
    pod = _pods(kubectl, app)[0]
    assert not _ready(pod)
    assert pod["status"]["containerStatuses"][0]["ready"] is False
    assert _endpoints(kubectl, app) == {ip: False}
