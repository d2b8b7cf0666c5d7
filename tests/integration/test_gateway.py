"""Requests through the test bed's real Gateway (Traefik): HTTPRoute weights and header matches move real traffic.

Two predictors shaped like KServe's (``hack/predictor_pods.py``), versions 1 and 2 of one model,
run by the local kubelet; an HTTPRoute like the operator's attaches to the test bed's Gateway
``slipway-system/slipway-gateway``. Every request goes to the Gateway's listener with the
route's Host, like a client's; the version that answered is read from the answer and checked
against each model server's own ``/metrics``. Also: Prometheus finds the predictor pods through
``kubernetes_sd_configs`` and labels them as the alert rules expect.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import predictor_pods
import pytest
from operator_process import wait_until

from bed.addons.gateway import GATEWAY_NAME, GATEWAY_NAMESPACE, wait_for_route

pytestmark = pytest.mark.integration

PARENT = (GATEWAY_NAMESPACE, GATEWAY_NAME)
BODY = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def _apply(kubectl: Any, items: list[dict[str, Any]]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _ready_endpoints(kubectl: Any, service: str) -> int:
    out = json.loads(
        kubectl("get", "endpointslices", "-l", f"kubernetes.io/service-name={service}", "-o", "json").stdout
    )
    return sum(1 for s in out["items"] for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))


def _versions(url: str, host: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, headers={"Host": host, **(headers or {})}, timeout=30) as client:
        for _ in range(n):
            resp = client.post("/v2/models/model/infer", json=BODY)
            assert resp.status_code == 200, resp.text
            seen[str(resp.json()["model_version"])] += 1
    return seen


def _served(kubectl: Any, app: str) -> float:
    """The 200s a predictor's model server counted itself (``slipway_requests_total``), summed over its pods."""
    pods = json.loads(kubectl("get", "pods", "-l", f"app={app}", "-o", "json").stdout)["items"]
    total = 0.0
    for pod in pods:
        text = httpx.get(f"http://{pod['status']['podIP']}:8080/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("slipway_requests_total{") and 'code="200"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def two_versions(kubectl: Any, namespace: str, model_dir: Path) -> str:
    for name, version in (("digits-v1", "1"), ("digits-v2", "2")):
        _apply(kubectl, predictor_pods.predictor_objects(name, namespace, str(model_dir), version))
    for app in ("digits-v1-predictor", "digits-v2-predictor"):
        wait_until(lambda a=app: _ready_endpoints(kubectl, a) == 1, 300, f"{app} ready endpoint", interval=0.5)
    return namespace


def _accepted(kubectl: Any, route: str) -> bool:
    out = json.loads(kubectl("get", "httproute", route, "-o", "json").stdout)
    parents = (out.get("status") or {}).get("parents") or []
    return any(
        c["type"] == "Accepted"
        and c["status"] == "True"
        and c.get("observedGeneration") == out["metadata"]["generation"]
        for p in parents
        for c in p.get("conditions") or []
    )


def test_weights_and_header_match_through_the_gateway(kubectl: Any, two_versions: str, testbed: Any) -> None:
    ns = two_versions
    url = testbed.state.urls["gateway"]
    route = predictor_pods.http_route(
        "digits", ns, {"digits-v1": 75, "digits-v2": 25}, PARENT, ("x-variant", "b", "digits-v2")
    )
    host = route["spec"]["hostnames"][0]
    _apply(kubectl, [route])
    wait_until(lambda: _accepted(kubectl, "digits"), 30, "the route Accepted by Traefik", interval=0.2)
    wait_for_route(url, host, "/v2/models/model/ready")

    before = {v: _served(kubectl, f"digits-v{v}-predictor") for v in ("1", "2")}
    n = 400
    seen = _versions(url, host, n)
    # 75/25 over 400 requests: the standard deviation is ~8.7 requests; allow about 4 of them
    assert abs(seen["1"] - 300) <= 35 and seen["1"] + seen["2"] == n, seen
    # each model server counted exactly the requests it answered
    after = {v: _served(kubectl, f"digits-v{v}-predictor") for v in ("1", "2")}
    assert {v: after[v] - before[v] for v in after} == {"1": seen["1"], "2": seen["2"]}

    # the A/B rule: a request with the header always reaches version 2
    assert _versions(url, host, 100, {"x-variant": "b"}) == Counter({"2": 100})

    # a rollback is one route write: every request reaches version 1 soon after
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 100
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = 0
    written = time.monotonic()
    _apply(kubectl, [route])
    wait_until(lambda: _versions(url, host, 20) == Counter({"1": 20}), 30, "all traffic on version 1", interval=0.05)
    assert time.monotonic() - written < 10
    assert _versions(url, host, 200) == Counter({"1": 200})


def test_a_route_without_our_gateway_gets_no_traffic(kubectl: Any, two_versions: str, testbed: Any) -> None:
    """The negative: a route attached to a Gateway nobody implements is not served by the test bed's gateway."""
    ns = two_versions
    route = predictor_pods.http_route("elsewhere", ns, {"digits-v1": 1}, (ns, "no-such-gateway"))
    _apply(kubectl, [route])
    time.sleep(2)
    resp = httpx.post(
        testbed.state.urls["gateway"] + "/v2/models/model/infer",
        json=BODY,
        headers={"Host": route["spec"]["hostnames"][0]},
        timeout=10,
    )
    assert resp.status_code == 404


def test_prometheus_finds_the_predictor_pods(kubectl: Any, namespace: str, model_dir: Path, testbed: Any) -> None:
    objects = predictor_pods.predictor_objects("scraped", namespace, str(model_dir), "7", deployment_label="scraped-md")
    _apply(kubectl, objects)
    wait_until(lambda: _ready_endpoints(kubectl, "scraped-predictor") == 1, 300, "the pod ready", interval=0.5)
    pod = json.loads(kubectl("get", "pods", "-l", "app=scraped-predictor", "-o", "json").stdout)["items"][0]
    ip = pod["status"]["podIP"]

    def up() -> list[dict[str, Any]]:
        query = f'up{{job="kubernetes-pods",namespace="{namespace}",modeldeployment="scraped-md"}} == 1'
        resp = httpx.get(f"{testbed.prometheus_url}/api/v1/query", params={"query": query}, timeout=10)
        return list(resp.json()["data"]["result"])

    (series,) = wait_until(up, 60, "Prometheus scraping the pod", interval=1)
    assert series["metric"]["instance"] == f"{ip}:8080"
    assert series["metric"]["pod"] == pod["metadata"]["name"]
    assert re.fullmatch(r"[0-9.]+", ip)
