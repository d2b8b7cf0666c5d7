"""A/B tests and shadow traffic on the real test bed: real serving processes, a route-honouring load generator.

The operator runs as a subprocess with the registry sync on the test bed's MLflow, where the
test registers scikit-learn digit classifiers: v1 trained on 40 digits (the weaker one), v2 on
the whole training split (the better one), v3 trained on 32 pixels only, so every real request
(64 pixels) makes it fail with a 500. KServe's controller makes each version's predictor
Deployment, the local kubelet runs its pods (``python -m slipway_serving``), and Prometheus
discovers and scrapes them every second.
The HTTPRoute the operator writes attaches to the test bed's Gateway (Traefik), which splits the
requests; ``hack/loadgen.py`` is the clients: a share of them carry the A/B header or cookie, and
it feeds the true labels of held-out digits back through the gateway.

- A/B: v1 (A) against v2 (B) for a short duration, 30 % of the plain traffic plus every request
  with ``x-variant: b`` or cookie ``variant=b`` on B, criterion live accuracy from the fed-back
  labels. It ends with the comparison in status and an event, and v2 promoted (CandidateWon).
- Shadow: Traefik, the test bed's gateway, does not implement request mirroring (its
  GatewayClass does not list ``HTTPRouteRequestMirror``, and a rule with the filter answers 500):
  a shadow stage is refused with ``InvalidSpec`` naming the class, and v1 keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

import kube_objects  # noqa: E402
import loadgen  # noqa: E402
from operator_fixture import StartOperator, start_operator  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

from bed.addons.gateway import route_gateway, route_host  # noqa: E402
from bed.addons.s3 import s3_credentials  # noqa: E402

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

FEEDBACK_TOKEN = "ab-feedback-" + uuid.uuid4().hex
FEEDBACK_SECRET = "ab-feedback"
MODELS_ACCOUNT = "models"

SEL = 'namespace="{{namespace}}",modeldeployment="{{name}}",version="{{version}}"'
ACCURACY = (
    f"sum(increase(slipway_feedback_correct_total{{{SEL}}}[{{{{window}}}}]))"
    f" / sum(increase(slipway_feedback_total{{{SEL}}}[{{{{window}}}}]))"
)
ERROR_RATE = (
    f'(sum(rate(slipway_requests_total{{{SEL},code=~"5.."}}[10s])) or vector(0))'
    f" / sum(rate(slipway_requests_total{{{SEL}}}[10s]))"
)


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 120.0, interval: float = 0.5) -> Any:
    return kube_objects.wait_for(what, probe, timeout, interval)


@pytest.fixture(scope="module")
def model_uris(mlflow_uri: str) -> dict[str, str]:
    """weak (40 digits), strong (the training split) and broken (32 of the 64 pixels) classifiers, logged once."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from slipway_training.config import TrainConfig
    from slipway_training.data import load_digits

    cfg = TrainConfig()
    digits = load_digits(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    x, y = digits.train.x, digits.train.y
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("slipway-abtest")
    uris = {}
    for name, rows, cols in (("weak", 40, 64), ("strong", len(x), 64), ("broken", len(x), 32)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[:rows, :cols], y[:rows])
        signature = infer_signature(x[:2, :cols], model.predict(x[:2, :cols])) if cols == 64 else None
        with mlflow.start_run(run_name=name):
            info = mlflow.sklearn.log_model(model, name="model", signature=signature, pip_requirements=["scikit-learn"])
        uris[name] = str(info.model_uri)
    return uris


@dataclass
class Registry:
    client: Any
    name: str

    def alias(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, "champion", version)


@pytest.fixture
def registry(mlflow_uri: str, model_uris: dict[str, str]) -> Iterator[Registry]:
    import mlflow
    from mlflow import MlflowClient

    name = f"ab-{uuid.uuid4().hex[:8]}"
    for kind in ("weak", "strong", "broken"):  # versions 1, 2, 3
        mlflow.register_model(model_uris[kind], name)
    reg = Registry(MlflowClient(mlflow_uri), name)
    reg.alias("1")
    yield reg
    with contextlib.suppress(Exception):
        reg.client.delete_registered_model(name)


@pytest.fixture
def ab_operator(start_operator: StartOperator, namespace: str, testbed: Any) -> OperatorProcess:
    return start_operator(namespace, env={"SLIPWAY_PROMETHEUS_URL": testbed.prometheus_url})


def get(kubectl: Any, *args: str) -> dict[str, Any] | None:
    out = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def status(kubectl: Any, name: str) -> dict[str, Any]:
    return (get(kubectl, "modeldeployment", name) or {}).get("status") or {}


def deploy(
    kubectl: Any, testbed: Any, namespace: str, name: str, model: str, strategy: dict[str, Any], **spec: Any
) -> None:
    """The ModelDeployment, its feedback token's Secret and the ServiceAccount KServe takes S3 credentials from."""
    body = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model, "track": {"alias": "champion"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            "serving": {
                "feedbackTokenSecret": FEEDBACK_SECRET,  # the labeller's bearer token
                "allowPickle": True,  # the test's models are scikit-learn pipelines (pickled)
                "serviceAccountName": MODELS_ACCOUNT,  # KServe's storage initializer reads S3 with its Secret
            },
            "strategy": strategy,
            "gateway": route_gateway(namespace, name),  # the test bed's Traefik
            **spec,
        },
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": FEEDBACK_SECRET}}
    objects = [{**secret, "stringData": {"token": FEEDBACK_TOKEN}}, *s3_credentials(testbed.state)]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl("apply", "-f", "-", input=json.dumps(body))


def stable_serving(kubectl: Any, name: str) -> None:
    def ready() -> bool:
        s = status(kubectl, name)
        isvc = get(kubectl, "inferenceservice", f"{name}-v1") or {}
        conditions = (isvc.get("status") or {}).get("conditions") or []
        up = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return s.get("phase") == "Succeeded" and s.get("stableVersion") == "1" and up

    wait_for("v1 serving all traffic", ready, timeout=240)


def gateway_serving(gateway: loadgen.Gateway) -> None:
    """Wait until the Gateway answers for the route: KServe's Ready can come before Traefik has the endpoint.

    (Seen once: the first request after InferenceService Ready got Traefik's 503, no backend yet.)
    """

    def answers() -> bool:
        try:
            url = f"{gateway.url}/v2/models/{gateway.model}"
            return httpx.get(url, headers=gateway.headers(), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the Gateway to answer for the route", answers, timeout=60)


@contextlib.contextmanager
def load(testbed: Any, namespace: str, route: str, **kw: Any) -> Iterator[loadgen.LoadGenerator]:
    gateway = loadgen.Gateway(testbed.state.urls["gateway"], route, route_host(namespace, route))
    labeller = loadgen.Labeller(FEEDBACK_TOKEN, loadgen.PredictorEndpoints(str(testbed.kubeconfig), namespace, route))
    kw.setdefault("labeller", labeller)
    gateway_serving(gateway)
    gen = loadgen.LoadGenerator(gateway, rate=10, batch=16, duration=600, **kw).start()
    try:
        yield gen
    finally:
        gen.stop()
        for row in loadgen.summary(gen.stats):
            print("loadgen", json.dumps(row))


def cleanup(kubectl: Any, op: OperatorProcess) -> None:
    kubectl("delete", "modeldeployments", "--all", "--timeout=60s", check=False)
    print(op.log_tail(60))


@pytest.mark.timeout(600)
def test_ab_test_compares_both_versions_and_promotes_the_declared_winner(
    testbed: Any, namespace: str, kubectl: Any, registry: Registry, ab_operator: OperatorProcess
):
    md = "abdigits"
    strategy = {
        "abTest": {
            "weight": 30,
            "match": [{"header": {"name": "x-variant", "value": "b"}}, {"cookie": {"name": "variant", "value": "b"}}],
            "duration": "30s",
            "criterion": {"metric": "accuracy", "query": ACCURACY, "goal": "maximize", "minImprovement": 0.02},
            "analysis": {
                "interval": "5s",
                "failureLimit": 2,
                "metrics": [{"name": "error-rate", "query": ERROR_RATE, "max": 0.05}],
            },
        }
    }
    deploy(kubectl, testbed, namespace, md, registry.name, strategy)
    try:
        stable_serving(kubectl, md)
        segments = ((0.2, {"x-variant": "b"}), (0.1, {"Cookie": "session=42; variant=b"}))
        with load(testbed, namespace, md, segments=segments) as gen:
            registry.alias("2")

            def split_route() -> dict[str, Any] | None:
                route = get(kubectl, "httproute", md) or {}
                rules = (route.get("spec") or {}).get("rules") or []
                return route if len(rules) == 2 else None

            route = wait_for("the A/B route with header matches", split_route, timeout=240)
            weights = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
            assert weights == {f"{md}-v1-predictor": 70, f"{md}-v2-predictor": 30}
            matches = route["spec"]["rules"][1]["matches"]
            headers = [m["headers"][0] for m in matches[:: len(matches) // 2]]  # each match on each exposed path
            assert headers[0] == {"type": "Exact", "name": "x-variant", "value": "b"}
            assert headers[1]["name"] == "Cookie" and headers[1]["type"] == "RegularExpression"
            assert {m["path"]["value"] for m in matches} == {
                m["path"]["value"] for m in route["spec"]["rules"][0]["matches"]
            }
            assert not any("feedback" in m["path"]["value"] for m in matches), "feedback is not routed"
            assert [r["name"] for r in route["spec"]["rules"][1]["backendRefs"]] == [f"{md}-v2-predictor"]

            final = wait_for(
                "the A/B verdict", lambda: (s := status(kubectl, md)).get("stableVersion") == "2" and s, timeout=240
            )
        stats = gen.stats
    finally:
        print(json.dumps(status(kubectl, md), indent=1))
    assert final["phase"] in ("Promoting", "Succeeded")
    assert final["history"][-1]["reason"] == "CandidateWon" and final["history"][-1]["outcome"] == "Promoted"
    comparison = final["comparison"]
    assert comparison["winner"] == "B" and comparison["metric"] == "accuracy" and "B wins" in comparison["message"]
    a, b = comparison["variants"]
    assert (a["variant"], a["version"], b["variant"], b["version"]) == ("A", "1", "B", "2")
    for v in (a, b):
        assert v["requests"] > 0 and v["feedback"] > 0 and 0 <= v["errorRate"] <= 0.05
        assert 0 < v["p50LatencySeconds"] <= v["p99LatencySeconds"]
        assert abs(sum(v["predictions"].values()) - 1) < 0.01
        assert v["criterion"] == v["accuracy"]
    assert b["accuracy"] > a["accuracy"] * 1.02
    # what the load generator saw agrees: B answered better on the same kind of digits
    seen_a, seen_b = stats.by_version["1"], stats.by_version["2"]
    assert seen_b.matched > 0 and seen_a.feedback > 0 and seen_b.feedback > 0 and seen_b.feedback_failed == 0
    assert (seen_b.accuracy or 0) > (seen_a.accuracy or 1)

    def compared() -> bool:
        events = get(kubectl, "events", "--field-selector", "reason=ABTestCompared") or {"items": []}
        return any("A=v1" in e["message"] and "B=v2" in e["message"] for e in events["items"])

    wait_for("the ABTestCompared event", compared, 30)  # posted after the status write
    cleanup(kubectl, ab_operator)


@pytest.mark.timeout(600)
def test_a_shadow_on_a_gateway_that_cannot_mirror_is_refused_and_stable_keeps_serving(
    testbed: Any, namespace: str, kubectl: Any, registry: Registry, ab_operator: OperatorProcess
):
    """Traefik does not implement RequestMirror (it answers 500 to a rule carrying one): the shadow is refused."""
    md = "shadowdigits"
    deploy(kubectl, testbed, namespace, md, registry.name, {"canary": {"steps": [{"setWeight": 100}]}})
    try:
        stable_serving(kubectl, md)
        with load(testbed, namespace, md) as gen:
            shadow = {"blueGreen": {"shadow": {"percent": 100, "duration": "60s"}}}
            replace = [{"op": "replace", "path": "/spec/strategy", "value": shadow}]  # no resourceVersion to race
            kubectl("patch", "modeldeployment", md, "--type=json", "-p", json.dumps(replace))

            def invalid() -> dict[str, Any] | None:
                conds = {c["type"]: c for c in status(kubectl, md).get("conditions") or []}
                c = conds.get("InvalidSpec")
                return c if c is not None and c["status"] == "True" else None

            condition = wait_for("the shadow to be refused", invalid, timeout=120)
            registry.alias("3")  # a new version while refused: nothing is rolled out
            since = time.monotonic()
            wait_for("requests after the refusal", lambda: sum(gen.stats.since(since).values()) > 50, timeout=60)
        stats = gen.stats
    finally:
        print(json.dumps(status(kubectl, md), indent=1))
    assert "strategy.blueGreen.shadow needs request mirroring" in condition["message"]
    assert "GatewayClass traefik" in condition["message"], condition["message"]
    route = get(kubectl, "httproute", md)
    assert route is not None and not any(r.get("filters") for r in route["spec"]["rules"]), route["spec"]
    assert set(stats.by_version) == {"1"} and stats.by_version["1"].errors == 0, stats.by_version
    assert not stats.unanswered and stats.no_backend == 0, (stats.unanswered, stats.no_backend)
    assert "shadowdigits-v3" not in (kubectl("get", "inferenceservices", "-o", "name").stdout)
    cleanup(kubectl, ab_operator)


def consecutive_on(gen: loadgen.LoadGenerator, version: str, since: float) -> int:
    """How many requests in a row, most recent last, the Gateway had answered by ``version`` since ``since``."""
    run = 0
    for at, v, _ in list(gen.stats.sent):
        if at >= since:
            run = run + 1 if v == version else 0
    return run


@pytest.mark.timeout(600)
def test_bluegreen_switch_then_an_alert_after_promotion_moves_real_traffic_back(
    testbed: Any, namespace: str, kubectl: Any, registry: Registry, start_operator: StartOperator
):
    """Blue-green through Traefik, then the rollback after promotion: Alertmanager → operator → route → traffic."""
    md = "bgdigits"
    token = "bg-" + uuid.uuid4().hex
    op = start_operator(
        namespace, env={"SLIPWAY_PROMETHEUS_URL": testbed.prometheus_url, "SLIPWAY_ALERTMANAGER_TOKEN": token}
    )
    testbed.set_alert_webhooks([f"{op.url}/webhooks/alertmanager"], token=token)
    alert = {"alertNames": ["SlipwayModelDrift"], "matchLabels": {"severity": "critical"}}
    rollback = {"alerts": alert, "window": "10m", "registry": "none"}
    strategy = {"blueGreen": {"autoPromotionSeconds": 0, "scaleDownDelaySeconds": 1}}
    deploy(kubectl, testbed, namespace, md, registry.name, strategy, rollback=rollback)
    labels = {"alertname": "SlipwayModelDrift", "namespace": namespace, "modeldeployment": md,
              "model_version": "2", "severity": "critical"}  # fmt: skip
    try:
        stable_serving(kubectl, md)
        with load(testbed, namespace, md) as gen:
            registry.alias("2")
            switched = time.monotonic()
            wait_for("v2 promoted", lambda: status(kubectl, md).get("stableVersion") == "2", timeout=240)
            wait_for("200 requests in a row on v2", lambda: consecutive_on(gen, "2", switched) >= 200, timeout=120)
            wait_for("v1 scaled down", lambda: status(kubectl, md).get("phase") == "Succeeded", timeout=120)

            started = datetime.now(UTC).isoformat()
            fired = time.monotonic()
            with httpx.Client(timeout=5) as http:
                http.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=[{"labels": labels, "startsAt": started}])
            wait_for("RolledBack", lambda: status(kubectl, md).get("phase") == "RolledBack", timeout=120)
            wait_for("200 requests in a row on v1", lambda: consecutive_on(gen, "1", fired) >= 200, timeout=180)
        stats = gen.stats
    finally:
        print(json.dumps(status(kubectl, md), indent=1))
        ended = datetime.now(UTC).isoformat()
        with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=5) as http:
            http.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=[{"labels": labels, "endsAt": ended}])
        testbed.set_alert_webhooks([])
    final = status(kubectl, md)
    assert final["stableVersion"] == "1" and final["blockedVersions"][0]["version"] == "2"
    assert "within the 10m window" in final["history"][-1]["message"]
    assert {"1", "2"} <= set(stats.by_version), stats.by_version
    assert stats.by_version["2"].errors == 0 and stats.by_version["1"].errors == 0
    cleanup(kubectl, op)


def test_knative_router_refuses_matches_and_mirrors(kubectl: Any, slipway_crds: list[str]):
    shadow = {"blueGreen": {"shadow": {"percent": 50}}}
    ab = {"abTest": {"weight": 10, "duration": "1h"}}
    mirror = {"canary": {"steps": [{"mirror": {"percent": 10}}, {"setWeight": 50}]}}
    for strategy, message in (
        (shadow, "strategy.blueGreen.shadow needs router gateway-api"),
        (ab, "strategy.abTest needs router gateway-api"),
        (mirror, "strategy.canary.steps[].mirror needs router gateway-api"),
    ):
        body = {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "knative"},
            "spec": {"model": {"name": "m", "track": {"alias": "a"}}, "router": "kserve-knative", "strategy": strategy},
        }
        out = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
        assert out.returncode != 0 and message in out.stderr, out.stderr


def test_routes_with_matches_and_mirrors_are_accepted_by_the_gateway_api_crd(kubectl: Any, namespace: str):
    from slipway.api.modeldeployment import ModelDeployment
    from slipway.builders.httproute import build_http_route

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "routes", "namespace": namespace, "uid": "0b1c2d3e-0000-4000-8000-000000000001"},
            "spec": {
                "model": {"name": "m", "track": {"alias": "a"}},
                "strategy": {
                    "abTest": {
                        "weight": 10,
                        "duration": "1h",
                        "match": [
                            {"header": {"name": "x-variant", "value": "b"}},
                            {"header": {"name": "x-beta", "value": "^(yes|1)$", "type": "RegularExpression"}},
                            {"cookie": {"name": "variant", "value": "b.2+x"}},
                        ],
                    }
                },
                "gateway": {"parentRefs": [{"name": "ml-gateway"}], "hostnames": ["m.example.com"]},
            },
        }
    )
    test = md.spec.strategy.ab_test
    assert test is not None and test.match is not None
    for route in (
        build_http_route(md, {"1": 90, "2": 10}, None, ("2", test.match)),
        build_http_route(md, {"1": 100, "2": 0}, ("2", 100)),
        build_http_route(md, {"1": 90, "2": 10}, ("2", 30), ("2", test.match)),
    ):
        route["metadata"].pop("ownerReferences")
        out = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(route), check=False)
        assert out.returncode == 0, out.stderr
