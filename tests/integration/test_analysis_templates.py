"""Analysis templates, web metrics and dry runs on the real test bed: the API server, Prometheus, the operator.

Deployments are driven as in test_modeldeployment: ModelVersions with fake storage URIs, predictor
Deployments made ahead of KServe's (kwok runs their pods), the operator as a subprocess. Prometheus
scrapes a /metrics endpoint the test serves; the web metric calls a real HTTP server the test runs.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
from kube_objects import MetricsEndpoint
from kubectl_scenario import (
    MODEL,
    action,
    first_version_up,
    get,
    isvc_versions,
    md_status,
    model_version,
    move_alias,
    predictor,
    stop_after_deleting_deployments,
)
from operator_process import OperatorProcess, wait_until
from prometheus_client import Gauge

pytestmark = pytest.mark.integration


class Quality(MetricsEndpoint):
    """A per-team, per-version number Prometheus scrapes from the test."""

    def __init__(self) -> None:
        super().__init__()
        self.gauge = Gauge("slipway_test_quality", "test", ["team", "version"], registry=self.registry)


@pytest.fixture
def quality(testbed, namespace) -> Iterator[tuple[Quality, str]]:
    m = Quality()
    job = f"at-{namespace}"
    testbed.add_scrape_target(job, m.address)
    yield m, job
    m.server.shutdown()


def prom_has(testbed, query: str) -> bool:
    r = httpx.get(f"{testbed.prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()
    return bool(r.get("data", {}).get("result"))


@pytest.fixture
def second_namespace(testbed) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    testbed.run_kubectl("create", "namespace", name)
    yield name
    testbed.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


def operator_for(testbed, namespace: str, tmp_path) -> OperatorProcess:
    return OperatorProcess(testbed.kubeconfig, namespace, tmp_path, testbed.prometheus_url).start()


def canary(analysis: dict[str, Any], *, pause_between: bool = True) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"setWeight": 20}, {"analysis": {}}]
    if pause_between:
        steps += [{"pause": {}}, {"analysis": {}}]
    return {"canary": {"steps": steps, "analysis": {"interval": "1s", "failureLimit": 0, "count": 2, **analysis}}}


def apply(kubectl, obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


def deploy(kubectl, strategy: dict[str, Any]) -> None:
    model_version(kubectl, "1", ["champion"])
    model_version(kubectl, "2", [])
    predictor(kubectl, "1")
    predictor(kubectl, "2")
    apply(
        kubectl,
        {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": MODEL},
            "spec": {
                "model": {"name": MODEL, "track": {"alias": "champion"}},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                "strategy": strategy,
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
            },
        },
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def test_a_cluster_template_with_args_serves_two_namespaces_each_with_its_own_and_a_change_waits_for_the_next_rollout(
    testbed, kubectl, namespace, second_namespace, slipway_crds, quality, tmp_path
):
    metrics, job = quality
    metrics.gauge.labels("a", "2").set(0.02)
    metrics.gauge.labels("b", "2").set(0.03)
    wait_until(lambda: prom_has(testbed, f'slipway_test_quality{{job="{job}",team="b"}}'), timeout=60, what="scraped")
    template = f"quality-{namespace}"  # cluster-scoped: one per test run
    query = 'max(slipway_test_quality{job="{{args.job}}",team="{{args.team}}",version="{{version}}"})'
    spec = {"args": [{"name": "job"}, {"name": "team"}], "metrics": [{"name": "quality", "query": query, "max": 0.05}]}
    cat = {"apiVersion": "ml.slipway.dev/v1alpha1", "kind": "ClusterAnalysisTemplate", "metadata": {"name": template}}
    apply(kubectl, {**cat, "spec": spec})
    teams = {namespace: "a", second_namespace: "b"}
    ops = {ns: operator_for(testbed, ns, tmp_path) for ns in teams}

    def in_ns(ns: str):  # kubectl in one namespace
        return lambda *args, **kw: kubectl(*args, "-n", ns, **kw)

    try:
        for ns, team in teams.items():
            args = [{"name": "job", "value": job}, {"name": "team", "value": team}]
            deploy(in_ns(ns), canary({"templates": [{"name": template, "clusterScope": True, "args": args}]}))
        for ns in teams:
            first_version_up(in_ns(ns))
            move_alias(in_ns(ns), "1", "2")
        for ns, team in teams.items():
            k = in_ns(ns)
            wait_until(lambda k=k: md_status(k).get("phase") == "Paused", timeout=90, what=f"{ns}: analysis passed")
            status = md_status(k)
            assert status["analysis"]["phase"] == "Successful"
            assert status["analysis"]["measurements"][0]["value"] == {"a": 0.02, "b": 0.03}[team]
            frozen = status["analysisTemplates"]
            assert frozen["version"] == "2" and "keeps these metrics" in frozen["message"]
            (entry,) = frozen["templates"]
            assert entry["kind"] == "ClusterAnalysisTemplate" and entry["args"] == {"job": job, "team": team}
            assert entry["field"] == "spec.strategy.canary.analysis.templates[0]"
            rendered = entry["metrics"][0]["query"]
            assert f'team="{team}"' in rendered and f'job="{job}"' in rendered and "{{version}}" in rendered
        first_version = md_status(in_ns(namespace))["analysisTemplates"]["templates"][0]["resourceVersion"]

        # Tighten the template while both rollouts are paused between their analyses: they keep what they froze.
        spec["metrics"][0]["max"] = 0.001
        apply(kubectl, {**cat, "spec": spec})
        live = get(kubectl, "clusteranalysistemplate", template)
        assert live is not None and live["metadata"]["resourceVersion"] != first_version
        for ns in teams:
            action(in_ns(ns), "promote")
        for ns in teams:
            k = in_ns(ns)
            wait_until(lambda k=k: md_status(k).get("stableVersion") == "2", timeout=90, what=f"{ns}: promoted")
            status = md_status(k)
            assert status["history"][-1]["outcome"] == "Promoted", status["history"][-1]
            assert status["analysis"]["phase"] == "Successful", "the second analysis ran on the frozen bound"
            assert "analysisTemplates" not in status, "the record goes with the rollout"

        # The next rollout reads the template anew: 0.02 > 0.001 now rolls it back.
        k = in_ns(namespace)
        model_version(k, "3", [])
        predictor(k, "3")
        metrics.gauge.labels("a", "3").set(0.02)
        wait_until(lambda: prom_has(testbed, f'slipway_test_quality{{job="{job}",version="3"}}'), 60, what="v3")
        move_alias(k, "2", "3")
        wait_until(lambda: md_status(k).get("phase") == "RolledBack", timeout=90, what="v3 rolled back")
        assert md_status(k)["history"][-1]["reason"] == "AnalysisFailed"
    finally:
        for ns, op in ops.items():
            print(ns, json.dumps(md_status(in_ns(ns)), indent=1))
            stop_after_deleting_deployments(in_ns(ns), op)
            print(op.log_tail(60))
        kubectl("delete", "clusteranalysistemplate", template, check=False)


class Evaluator:
    """A real HTTP service answering JSON, recording what it was sent."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = json.dumps({"result": {"scores": [{"name": "accuracy", "value": outer.score}]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def test_a_web_metric_with_a_secret_header_and_a_failing_dry_run_metric_promote(
    testbed, kubectl, namespace, slipway_crds, quality, tmp_path
):
    metrics, job = quality
    metrics.gauge.labels("shadow", "2").set(0.5)
    wait_until(lambda: prom_has(testbed, f'slipway_test_quality{{job="{job}",team="shadow"}}'), 60, what="scraped")
    evaluator = Evaluator(0.97)
    token = uuid.uuid4().hex
    kubectl("create", "secret", "generic", "evaluator", f"--from-literal=token=Bearer {token}")
    web = {
        "url": evaluator.url + "/score/{{args.suite}}?model={{name}}&version={{version}}",
        "method": "POST",
        "body": '{"namespace": "{{namespace}}", "suite": "{{args.suite}}"}',
        "jsonPath": "$.result.scores[?(@.name == 'accuracy')].value",
        "timeout": "5s",
        "headers": [
            {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "evaluator", "key": "token"}}},
            {"name": "Content-Type", "value": "application/json"},
        ],
    }
    apply(
        kubectl,
        {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "AnalysisTemplate",
            "metadata": {"name": "evaluation"},
            "spec": {
                "args": [{"name": "suite", "value": "smoke"}],
                "metrics": [{"name": "accuracy", "web": web, "min": 0.9}],
            },
        },
    )
    dry = {
        "name": "shadow-quality",
        "query": f'max(slipway_test_quality{{job="{job}",team="shadow",version="{{{{version}}}}"}})',
        "max": 0.1,
        "dryRun": True,
    }
    op = operator_for(testbed, namespace, tmp_path)
    try:
        deploy(
            kubectl,
            canary(
                {
                    "metrics": [dry],
                    "templates": [{"name": "evaluation", "args": [{"name": "suite", "value": "nightly"}]}],
                },
                pause_between=False,
            ),
        )
        first_version_up(kubectl)
        move_alias(kubectl, "1", "2")

        def accuracy() -> dict[str, Any]:
            ms = (md_status(kubectl).get("analysis") or {}).get("measurements") or []
            return next((m for m in ms if m["metric"] == "accuracy"), {})

        # The Secret is not opted in yet: an Error, the analysis holds, nothing is sent.
        wait_until(lambda: accuracy().get("phase") == "Error", timeout=90, what="accuracy Error")
        assert 'not labelled ml.slipway.dev/analysis="true"' in accuracy()["message"]
        wait_until(lambda: md_status(kubectl)["analysis"].get("inconclusive", 0) >= 3, what="3 inconclusive rounds")
        status = md_status(kubectl)
        assert status["phase"] == "Progressing" and status["analysis"]["successful"] == 0 and not evaluator.requests
        kubectl("label", "secret", "evaluator", "ml.slipway.dev/analysis=true")
        wait_until(lambda: md_status(kubectl).get("stableVersion") == "2", timeout=90, what="promoted")
        status = md_status(kubectl)
        assert status["history"][-1]["outcome"] == "Promoted"
        by_name = {m["metric"]: m for m in status["analysis"]["measurements"]}
        assert by_name["accuracy"]["value"] == 0.97 and by_name["accuracy"]["phase"] == "Successful"
        shadow = by_name["shadow-quality"]
        assert (shadow["phase"], shadow["value"], shadow["dryRun"]) == ("Failed", 0.5, True), shadow
        assert status["analysis"]["failed"] == 0, "a dry-run failure is not counted"

        assert evaluator.requests, "the evaluator was called"
        seen = evaluator.requests[-1]
        assert seen["headers"]["Authorization"] == f"Bearer {token}"
        assert seen["path"] == f"/score/nightly?model={MODEL}&version=2"
        assert json.loads(seen["body"]) == {"namespace": namespace, "suite": "nightly"}

        exported = op.metrics()
        labels = f'dry_run="true",metric="shadow-quality",name="{MODEL}",namespace="{namespace}",phase="Failed"'
        assert exported[f"slipway_analysis_measurements_total{{{labels}}}"] >= 2
        acted = f'dry_run="false",metric="accuracy",name="{MODEL}",namespace="{namespace}"'
        assert exported[f"slipway_analysis_measurement_value{{{acted}}}"] == 0.97
        assert token not in op.log_path.read_text(errors="replace"), "the secret never reaches the log"
    finally:
        print(json.dumps(md_status(kubectl), indent=1))
        stop_after_deleting_deployments(kubectl, op)
        print(op.log_tail(60))
        evaluator.server.shutdown()


def test_a_missing_template_or_argument_is_invalidspec_naming_the_field_and_touches_nothing(
    testbed, kubectl, namespace, slipway_crds, tmp_path
):
    op = operator_for(testbed, namespace, tmp_path)
    try:
        deploy(kubectl, canary({"templates": [{"name": "nowhere"}]}, pause_between=False))
        wait_until(
            lambda: (condition(md_status(kubectl), "InvalidSpec") or {}).get("status") == "True", what="InvalidSpec"
        )
        message = condition(md_status(kubectl), "InvalidSpec")["message"]
        assert (
            message
            == "spec.strategy.canary.analysis.templates[0]: AnalysisTemplate nowhere not found in namespace "
            + namespace
        )
        assert isvc_versions(kubectl) == set() and get(kubectl, "httproute", MODEL) is None

        apply(
            kubectl,
            {
                "apiVersion": "ml.slipway.dev/v1alpha1",
                "kind": "AnalysisTemplate",
                "metadata": {"name": "nowhere"},
                "spec": {
                    "args": [{"name": "job"}],
                    "metrics": [{"name": "q", "query": 'up{job="{{args.job}}"}', "min": 1}],
                },
            },
        )
        wait_until(
            lambda: "needs a value for job" in (condition(md_status(kubectl), "InvalidSpec") or {}).get("message", ""),
            what="missing arg",
        )
        assert (
            "spec.strategy.canary.analysis.templates[0].args" in condition(md_status(kubectl), "InvalidSpec")["message"]
        )
        assert isvc_versions(kubectl) == set()

        args = {
            "op": "add",
            "path": "/spec/strategy/canary/analysis/templates/0/args",
            "value": [{"name": "job", "value": "x"}],
        }
        kubectl("patch", "modeldeployment", MODEL, "--type=json", "-p", json.dumps([args]))
        wait_until(lambda: md_status(kubectl).get("phase") == "Succeeded", what="valid again: v1 up")
        assert condition(md_status(kubectl), "InvalidSpec")["status"] == "False"
    finally:
        stop_after_deleting_deployments(kubectl, op)
        print(op.log_tail(60))


def test_the_api_server_refuses_undeclared_placeholders_and_literal_credentials(kubectl, slipway_crds):
    def refused(obj: dict[str, Any]) -> str:
        out = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
        assert out.returncode != 0, obj
        return out.stderr

    base = {"apiVersion": "ml.slipway.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "t"}}
    err = refused({**base, "spec": {"metrics": [{"name": "q", "query": 'up{job="{{args.job}}"}', "max": 1}]}})
    assert "spec.metrics" in err and "must be declared in args" in err
    web = {"url": "http://e/x", "jsonPath": "$.v", "headers": [{"name": "X-Api-Key", "value": "s3cr3t"}]}
    err = refused({**base, "spec": {"metrics": [{"name": "w", "web": web, "min": 0}]}})
    assert "spec.metrics[0].web.headers[0].value" in err and "never a literal value" in err
    twice = {"name": "t", "args": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}
    md = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {
            "model": {"name": "m", "track": {"alias": "x"}},
            "strategy": {"canary": {"analysis": {"templates": [twice]}}},
        },
    }
    assert "Duplicate value" in refused(md)
    md["spec"]["strategy"]["canary"]["analysis"] = {"metrics": [{"name": "q", "query": "{{args.a}}", "max": 1}]}
    assert "inline metrics take no" in refused(md)
