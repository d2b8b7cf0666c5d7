"""ModelDeployment on the real test bed: children validated by the real KServe/Gateway API CRDs, rollouts driven
by the operator running as a subprocess, analysis against the test bed's real Prometheus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kube_objects import MetricsEndpoint, weights_of
from kubectl_scenario import (
    MODEL,
    action,
    deployment,
    first_version_up,
    forbid,
    get,
    isvc_versions,
    md_status,
    model_version,
    move_alias,
    operator,
    predictor,
    route_weights,
    stop_after_deleting_deployments,
    wait_route,
)
from operator_process import OperatorProcess, wait_until
from prometheus_client import Gauge

pytestmark = pytest.mark.integration
__all__ = ["operator"]  # a fixture, imported for pytest


def test_canary_walks_its_weights_waits_for_promote_survives_sigkill_and_promotes(kubectl, operator):
    model_version(kubectl, "1", ["champion"])
    model_version(kubectl, "2", [])
    predictor(kubectl, "1")
    predictor(kubectl, "2")
    steps = [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 80}]
    deployment(kubectl, {"canary": {"steps": steps}})
    first_version_up(kubectl)
    isvc = get(kubectl, "inferenceservice", f"{MODEL}-v1")
    assert isvc is not None
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert isvc["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    hpa = get(kubectl, "hpa", f"{MODEL}-v1")
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == f"{MODEL}-v1-predictor"

    seen: list[dict[str, int]] = []

    def watch_weights(want: dict[str, int]) -> bool:
        w = route_weights(kubectl)
        if not seen or seen[-1] != w:
            seen.append(w)
        return w == want

    move_alias(kubectl, "1", "2")
    wait_until(lambda: watch_weights({"1": 50, "2": 50}), what="weight 50")
    wait_until(lambda: md_status(kubectl).get("phase") == "Paused", what="paused until promoted")
    assert {"1": 80, "2": 20} in seen
    status = md_status(kubectl)
    assert (status["stableVersion"], status["canaryVersion"], status["canaryWeight"]) == ("1", "2", 50)

    operator.kill()  # mid-canary, no goodbye
    time.sleep(3)
    assert md_status(kubectl)["phase"] == "Paused", "a pause without duration waits for promote"
    operator.start()
    time.sleep(3)
    assert md_status(kubectl)["phase"] == "Paused"
    action(kubectl, "promote")
    wait_until(lambda: md_status(kubectl).get("phase") in ("Promoting", "Succeeded"), what="promoted")
    status = md_status(kubectl)
    assert status["stableVersion"] == "2" and "canaryVersion" not in status
    wait_until(lambda: route_weights(kubectl).get("2") == 100, timeout=15, what="all weight on v2")  # v1 still named
    assert isvc_versions(kubectl) <= {"1", "2"}, "no duplicate children after the restart"
    wait_until(lambda: md_status(kubectl).get("phase") == "Succeeded", timeout=60, what="old version scaled down")
    assert route_weights(kubectl) == {"2": 100}
    wait_until(lambda: isvc_versions(kubectl) == {"2"}, what="v1 removed")
    assert get(kubectl, "hpa", f"{MODEL}-v1") is None
    history = md_status(kubectl)["history"]
    assert history[-1]["version"] == "2" and history[-1]["outcome"] == "Promoted"
    expected = {"FirstVersion", "RolloutStarted", "StepCompleted", "PausedByStep", "Resumed", "ScaledDown"}

    def reasons() -> set[str]:
        events = kubectl("get", "events", "--field-selector", f"involvedObject.name={MODEL}", "-o", "json").stdout
        return {e["reason"] for e in json.loads(events)["items"]}

    wait_until(lambda: expected <= reasons(), what=f"events {expected}")  # posted after the status write

    kubectl("delete", "modeldeployment", MODEL)
    wait_until(lambda: not isvc_versions(kubectl) and get(kubectl, "httproute", MODEL) is None, what="children GC'd")


class Metrics(MetricsEndpoint):
    """A /metrics endpoint served by the test; Prometheus scrapes it."""

    def __init__(self) -> None:
        super().__init__()
        self.error_rate = Gauge("slipway_test_error_rate", "test", ["version"], registry=self.registry)


@pytest.fixture
def metrics(testbed, namespace) -> Iterator[Metrics]:
    m = Metrics()
    testbed.add_scrape_target(f"md-{namespace}", m.address, {"test_namespace": namespace})
    yield m
    m.server.shutdown()


def prom_has(testbed, query: str) -> bool:
    import httpx

    r = httpx.get(f"{testbed.prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()
    return bool(r.get("data", {}).get("result"))


def analysis_canary(query: str) -> dict[str, Any]:
    return {
        "canary": {
            "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 60}],
            "analysis": {
                "interval": "1s",
                "failureLimit": 1,
                "count": 2,
                "metrics": [{"name": "error-rate", "query": query, "max": 0.1}],
            },
        }
    }


def start_canary(kubectl, strategy: dict[str, Any]) -> None:
    model_version(kubectl, "1", ["champion"])
    model_version(kubectl, "2", [])
    predictor(kubectl, "1")
    predictor(kubectl, "2")
    deployment(kubectl, strategy)
    first_version_up(kubectl)
    move_alias(kubectl, "1", "2")


def test_analysis_breaching_its_bound_rolls_back_at_once(kubectl, testbed, namespace, metrics, operator):
    metrics.error_rate.labels("2").set(0.5)
    job = f"md-{namespace}"
    wait_until(lambda: prom_has(testbed, f'slipway_test_error_rate{{job="{job}"}}'), timeout=60, what="scraped")
    start_canary(kubectl, analysis_canary(f'max(slipway_test_error_rate{{job="{job}",version="{{{{version}}}}"}})'))
    wait_until(lambda: md_status(kubectl).get("phase") == "RolledBack", timeout=60, what="rolled back")
    status = md_status(kubectl)
    assert status["stableVersion"] == "1" and "canaryVersion" not in status
    assert status["blockedVersions"][0]["version"] == "2"
    assert status["analysis"]["failed"] == 2 and status["analysis"]["phase"] == "Failed"
    assert status["analysis"]["measurements"][0]["value"] == 0.5
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "AnalysisFailed"
    assert route_weights(kubectl) == {"1": 100}
    wait_until(lambda: isvc_versions(kubectl) == {"1"}, what="canary removed")
    time.sleep(3)
    assert md_status(kubectl)["phase"] == "RolledBack", "a blocked version is not retried"
    action(kubectl, "retry")
    wait_until(lambda: md_status(kubectl).get("canaryVersion") == "2", what="retry starts again")


def test_analysis_that_passes_promotes(kubectl, testbed, namespace, metrics, operator):
    metrics.error_rate.labels("2").set(0.01)
    job = f"md-{namespace}"
    wait_until(lambda: prom_has(testbed, f'slipway_test_error_rate{{job="{job}"}}'), timeout=60, what="scraped")
    start_canary(kubectl, analysis_canary(f'max(slipway_test_error_rate{{job="{job}",version="{{{{version}}}}"}})'))
    wait_until(lambda: md_status(kubectl).get("stableVersion") == "2", timeout=60, what="promoted")
    status = md_status(kubectl)
    assert status["phase"] in ("Promoting", "Succeeded") and status["history"][-1]["outcome"] == "Promoted"
    assert status["analysis"]["phase"] == "Successful" and status["analysis"]["successful"] == 2


def test_empty_result_is_inconclusive_and_holds(kubectl, operator):
    start_canary(kubectl, analysis_canary('max(slipway_metric_nobody_exports{version="{{version}}"})'))
    wait_until(
        lambda: (md_status(kubectl).get("analysis") or {}).get("inconclusive", 0) >= 3, timeout=60, what="inconclusive"
    )
    status = md_status(kubectl)
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 20 and status["currentStep"] == 1
    assert "no series" in status["message"]


@pytest.fixture
def operator_without_prometheus(testbed, namespace, slipway_crds, tmp_path, kubectl) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(testbed.kubeconfig, namespace, tmp_path, "http://127.0.0.1:9").start()
    yield proc
    stop_after_deleting_deployments(kubectl, proc)
    print(proc.log_tail(80))


def test_unreachable_prometheus_holds_without_promoting_or_aborting(kubectl, operator_without_prometheus):
    start_canary(kubectl, analysis_canary('max(up{version="{{version}}"})'))
    wait_until(
        lambda: (md_status(kubectl).get("analysis") or {}).get("inconclusive", 0) >= 5, timeout=60, what="inconclusive"
    )
    status = md_status(kubectl)
    assert status["phase"] == "Progressing" and status["stableVersion"] == "1" and status["canaryWeight"] == 20
    assert "unreachable" in status["message"]
    assert status["analysis"]["measurements"][0]["phase"] == "Error"


def test_bluegreen_switches_the_route_in_one_write(kubectl, operator):
    model_version(kubectl, "1", ["champion"])
    model_version(kubectl, "2", [])
    predictor(kubectl, "1", replicas=2)
    deployment(
        kubectl,
        {"blueGreen": {"autoPromotionSeconds": 2, "scaleDownDelaySeconds": 3}},
        autoscaling={"minReplicas": 2, "maxReplicas": 4},
    )
    first_version_up(kubectl)
    predictor(kubectl, "2", replicas=0)  # the preview's pods, fake (kwok), made ahead of KServe's Deployment
    move_alias(kubectl, "1", "2")
    wait_until(lambda: route_weights(kubectl) == {"1": 100, "2": 0}, what="preview listed at 0")
    time.sleep(3)
    assert md_status(kubectl)["phase"] == "Progressing", "the preview is not ready: no switch"
    assert "waiting for preview v2" in md_status(kubectl)["message"]
    predictor(kubectl, "2", replicas=2)
    history: list[tuple[int, dict[str, int]]] = []

    def record() -> bool:
        route = get(kubectl, "httproute", MODEL)
        assert route is not None
        entry = (route["metadata"]["generation"], weights_of(route, MODEL))  # one read for both
        if not history or history[-1] != entry:
            history.append(entry)
        return entry[1] == {"2": 100}

    wait_until(record, timeout=60, interval=0.1, what="switch and scale-down")
    weights = [w for _, w in history]
    assert weights[0] == {"1": 100, "2": 0}
    assert {"2": 100, "1": 0} in weights, weights
    switch = weights.index({"2": 100, "1": 0})
    assert history[switch][0] == history[switch - 1][0] + 1, "one write moves all traffic"
    assert all(set(w.values()) <= {0, 100} for w in weights), "never a split"
    wait_until(lambda: isvc_versions(kubectl) == {"2"}, what="blue removed")
    wait_until(lambda: md_status(kubectl).get("phase") == "Succeeded", what="Succeeded")  # written after the delete


def test_abort_rolls_back_to_stable_at_once(kubectl, operator):
    start_canary(kubectl, {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}]}})
    wait_until(lambda: md_status(kubectl).get("phase") == "Paused", what="paused")
    wait_route(kubectl, {"1": 70, "2": 30})
    action(kubectl, "abort")
    wait_until(lambda: md_status(kubectl).get("phase") == "RolledBack", what="rolled back")
    assert route_weights(kubectl) == {"1": 100}
    assert md_status(kubectl)["history"][-1]["outcome"] == "Aborted"


def test_waits_with_a_reason_when_the_version_has_no_storage_uri(kubectl, operator):
    model_version(kubectl, "1", ["champion"], storage=False)
    deployment(kubectl, {"canary": {}})
    wait_until(lambda: "no storageUri" in (md_status(kubectl).get("message") or ""), what="waiting message")
    assert isvc_versions(kubectl) == set()


def test_unhonourable_spec_sets_invalidspec_and_touches_nothing(kubectl, operator):
    model_version(kubectl, "1", ["champion"])
    deployment(
        kubectl,
        {"blueGreen": {}},
        router="kserve-knative",
        gateway=None,
    )
    wait_until(
        lambda: any(
            c["type"] == "InvalidSpec" and c["status"] == "True" for c in md_status(kubectl).get("conditions", [])
        ),
        what="InvalidSpec",
    )
    assert isvc_versions(kubectl) == set() and get(kubectl, "httproute", MODEL) is None


def test_knative_router_drives_canary_traffic_percent(kubectl, operator):
    model_version(kubectl, "1", ["champion"])
    model_version(kubectl, "2", [])
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 25}]}}, router="kserve-knative", gateway=None)
    wait_until(lambda: md_status(kubectl).get("phase") == "Succeeded", what="v1")
    isvc = get(kubectl, "inferenceservice", MODEL)
    assert isvc is not None and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    move_alias(kubectl, "1", "2")

    def canary_at(percent: int) -> bool:
        got = get(kubectl, "inferenceservice", MODEL) or {}
        pred = got.get("spec", {}).get("predictor", {})
        env = {e["name"]: e["value"] for e in pred.get("containers", [{}])[0].get("env", [])}
        return pred.get("canaryTrafficPercent") == percent and env.get("STORAGE_URI") == f"s3://models/{MODEL}/2"

    wait_until(lambda: canary_at(0), what="new revision pinned at 0")
    action(kubectl, "abort")
    wait_until(lambda: md_status(kubectl).get("phase") == "RolledBack", what="rolled back")
    pred = (get(kubectl, "inferenceservice", MODEL) or {})["spec"]["predictor"]
    assert "canaryTrafficPercent" not in pred
    assert pred["containers"][0]["env"][0]["value"] == f"s3://models/{MODEL}/1"


def condition(status: dict[str, Any], kind: str) -> tuple[str, str] | None:
    found = [c for c in status.get("conditions") or [] if c.get("type") == kind]
    return (found[0]["status"], found[0]["reason"]) if found else None


def test_ready_waits_for_the_stable_predictor_and_follows_its_inferenceservice(kubectl, operator):
    """Ready only once the stable version's predictor has minReplicas available pods (KServe's own Ready says True
    at one pod with an external autoscaler: docs/kserve.md). The predictor here is the test's own Deployment with
    fake pods (kwok), made ahead of KServe's, scaled from 0 to 1."""
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1", replicas=0)
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})
    first_version_up(kubectl)
    time.sleep(2)  # a few ticks: nothing makes v1's predictor ready
    assert condition(md_status(kubectl), "Ready") == ("False", "StableNotReady"), "Ready before the predictor is"
    predictor(kubectl, "1", replicas=1)
    wait_until(
        lambda: condition(md_status(kubectl), "Ready") == ("True", "StableServing"), timeout=60, what="Ready follows"
    )


def test_unchanged_children_are_not_applied_again_and_a_deleted_or_edited_one_is_restored_at_once(kubectl, operator):
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1")
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})
    first_version_up(kubectl)

    def applies(kind: str, result: str) -> float:
        return operator.metrics().get(f'slipway_child_applies_total{{kind="{kind}",result="{result}"}}', 0.0)

    def poked(n: int) -> None:  # an annotation change: kopf's update handler runs a pass at once
        kubectl("annotate", "--overwrite", "modeldeployment", MODEL, f"test.slipway.dev/poke={n}")

    sent = {kind: applies(kind, "applied") for kind in ("InferenceService", "HorizontalPodAutoscaler", "HTTPRoute")}
    skipped = applies("HTTPRoute", "unchanged")
    for n in range(3):
        poked(n)
    wait_until(lambda: applies("HTTPRoute", "unchanged") >= skipped + 3, what="three passes that skip the route")
    assert {kind: applies(kind, "applied") for kind in sent} == sent, "a pass with nothing new applied a child"
    assert applies("InferenceService", "unchanged") >= 3 and applies("HorizontalPodAutoscaler", "unchanged") >= 3
    # the HPA controller's status writes (HPAs have no generation) and the operator's own applies are no news
    hpa_status = lambda: ((get(kubectl, "hpa", f"{MODEL}-v1") or {}).get("status") or {}).get("conditions")  # noqa: E731
    wait_until(hpa_status, timeout=60, what="the HPA controller's status write")
    time.sleep(1)
    assert "outside the operator" not in operator.log_path.read_text()

    # Deleted by hand: the watch sees it and the next tick re-creates it (not the 30 s resync).
    kubectl("delete", "hpa", f"{MODEL}-v1")
    start = time.monotonic()
    wait_until(lambda: get(kubectl, "hpa", f"{MODEL}-v1") is not None, timeout=15, what="the HPA re-created")
    hpa_back = time.monotonic() - start

    # Edited by hand (all traffic to a version that does not exist): restored the same way.
    patch = [{"op": "replace", "path": "/spec/rules/0/backendRefs/0/name", "value": f"{MODEL}-v9-predictor"}]
    kubectl("patch", "httproute", MODEL, "--type=json", "-p", json.dumps(patch))
    start = time.monotonic()
    wait_until(lambda: route_weights(kubectl) == {"1": 100}, timeout=15, interval=0.1, what="the route restored")
    route_back = time.monotonic() - start
    print(f"\ndeleted HPA re-created in {hpa_back:.2f}s, edited route restored in {route_back:.2f}s")
    assert hpa_back < 10 and route_back < 10, "restored by the watch, not by the 30 s resync"
    assert "HTTPRoute digits changed (generation" in operator.log_path.read_text()


def test_a_child_the_api_server_refuses_is_a_condition_and_an_event_then_retried(kubectl, operator):
    """A namespace quota forbids HPAs: the pass fails on the HPA, says why, backs off, and recovers on its own."""
    forbid(kubectl, "no-hpas", "count/horizontalpodautoscalers.autoscaling")
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1")
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})

    def reconcile_error() -> dict[str, Any] | None:
        return {c["type"]: c for c in md_status(kubectl).get("conditions") or []}.get("ReconcileError")

    error = wait_until(lambda: (c := reconcile_error()) and c["status"] == "True" and c, what="ReconcileError True")
    print(f"\nReconcileError: {error['message']}")
    assert error["reason"] == "ReconcileFailed"
    assert error["message"].startswith("403: ") and "exceeded quota: no-hpas" in error["message"], error["message"]
    assert get(kubectl, "hpa", f"{MODEL}-v1") is None and get(kubectl, "httproute", MODEL) is None

    def failures() -> list[dict[str, Any]]:
        events = kubectl("get", "events", "--field-selector", f"involvedObject.name={MODEL}", "-o", "json").stdout
        return [e for e in json.loads(events)["items"] if e["reason"] == "ReconcileFailed"]

    wait_until(failures, what="a ReconcileFailed event")  # posted after the status write
    time.sleep(4)  # the retries after 1 s and 2 s fail the same way
    assert operator.log_path.read_text().count("pass on ModelDeployment") >= 3
    assert [(e["type"], e.get("count", 1)) for e in failures()] == [("Warning", 1)], "one event, not one per retry"

    kubectl("delete", "resourcequota", "no-hpas")
    # The next retry (back-off up to 32 s by now) writes the HPA and the route, then clears the error.
    wait_until(lambda: (reconcile_error() or {}).get("status") == "False", timeout=60, what="ReconcileError cleared")
    error = reconcile_error()
    assert error is not None and (error["status"], error["reason"], error["message"]) == ("False", "Reconciled", "")
    assert md_status(kubectl).get("phase") == "Succeeded"
    assert get(kubectl, "hpa", f"{MODEL}-v1") is not None and route_weights(kubectl) == {"1": 100}
