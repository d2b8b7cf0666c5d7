"""Helpers the rollout tests share: polling, a scraped /metrics endpoint, a ModelDeployment's status and route."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from operator_process import wait_until
from prometheus_client import CollectorRegistry, generate_latest


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll until probe() is truthy; returns its value (``wait_until`` with the description first)."""
    return wait_until(probe, timeout, what, interval)


class MetricsEndpoint:
    """A /metrics endpoint served by the test from ``self.registry``; the test bed's Prometheus scrapes it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


class ModelDeploymentReader:
    """One ModelDeployment's status and route weights, read through the Python client (fast enough to time)."""

    def __init__(self, kube_api: Any, namespace: str, md: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(kube_api)
        self.apps = client.AppsV1Api(kube_api)
        self.core = client.CoreV1Api(kube_api)
        self.ns = namespace
        self.md = md

    def _get(self, group: str, version: str, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.custom.get_namespaced_custom_object(group, version, self.ns, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, spec: dict[str, Any]) -> None:
        """Create the ModelDeployment with this spec."""
        body = {"apiVersion": "ml.slipway.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": self.md}}
        body["spec"] = spec
        self.custom.create_namespaced_custom_object("ml.slipway.dev", "v1alpha1", self.ns, "modeldeployments", body)

    def status(self) -> dict[str, Any]:
        return dict((self._get("ml.slipway.dev", "v1alpha1", "modeldeployments", self.md) or {}).get("status") or {})

    def weights(self) -> dict[str, int]:
        """The HTTPRoute's weights by version ({} before the route exists)."""
        return weights_of(self._get("gateway.networking.k8s.io", "v1", "httproutes", self.md), self.md)

    def delete(self, timeout: float = 30.0) -> None:
        """Delete the ModelDeployment and wait until it is gone (no finalizer: the operator need not run)."""
        with contextlib.suppress(Exception):
            self.custom.delete_namespaced_custom_object(
                "ml.slipway.dev", "v1alpha1", self.ns, "modeldeployments", self.md
            )
        with contextlib.suppress(AssertionError):
            wait_for(
                "the ModelDeployment deleted",
                lambda: self._get("ml.slipway.dev", "v1alpha1", "modeldeployments", self.md) is None,
                timeout,
                0.5,
            )


class PredictedModelDeployment(ModelDeploymentReader):
    """A ModelDeployment on a named runtime whose predictor Deployments the test makes; its isvcs and events."""

    def isvc_versions(self) -> set[str]:
        """The versions the operator made an InferenceService for."""
        items = self.custom.list_namespaced_custom_object(
            "serving.kserve.io",
            "v1beta1",
            self.ns,
            "inferenceservices",
            label_selector=f"ml.slipway.dev/deployment={self.md}",
        )["items"]
        return {i["metadata"]["labels"]["ml.slipway.dev/version"] for i in items}

    def events(self) -> list[dict[str, Any]]:
        """The ModelDeployment's events: reason, message, type."""
        out = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={self.md}")
        return [{"reason": e.reason, "message": e.message, "type": e.type} for e in out.items]

    def predictor(self, version: str) -> None:
        """The predictor Deployment KServe's controller would create for a named runtime; kwok runs its pod."""
        create_fake_predictor(self.apps, self.ns, self.md, version)


def create_fake_predictor(apps: Any, namespace: str, md: str, version: str) -> None:
    """The predictor Deployment KServe's controller would create for a named runtime; kwok runs its pod.

    Made ahead of KServe's (which then finds it in place) by the control-logic tests whose
    storage URIs are fake: nothing could be downloaded, so no real model server starts.
    """
    labels = {"app": f"{md}-v{version}"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{md}-v{version}-predictor"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "kserve-container", "image": "registry.invalid/mlserver:1"}]},
                },
            },
        },
    )


def weights_of(route: dict[str, Any] | None, md: str) -> dict[str, int]:
    """Version → weight of a route's first rule ({} when there is no route)."""
    if route is None:
        return {}
    refs = route["spec"]["rules"][0]["backendRefs"]
    return {r["name"].removeprefix(f"{md}-v").removesuffix("-predictor"): r.get("weight", 1) for r in refs}
