"""Deployments and Services of the Slipway serving runtime shaped like the ones KServe makes, for tests and benches.

A KServe predictor in Standard mode is a Deployment ``<isvc>-predictor`` whose pods are labelled
``serving.kserve.io/inferenceservice=<isvc>`` and ``component=predictor``, annotated
``internal.serving.kserve.io/storage-initializer-sourceuri=<storageUri>``, with the
``storage-initializer`` init container KServe's pod webhook injects (it fills the emptyDir
``kserve-provision-location`` mounted at ``/mnt/models``) and the ``kserve-container``; and a
Service ``<isvc>-predictor`` (port 80 → 8080). These manifests let the local kubelet, the
EndpointSlice controller, Traefik and Prometheus be exercised without KServe's controller: the
init container here copies a local model directory with ``cp`` (what KServe's initializer
does for a local path) so that it needs no storage server.

Standard library only.
"""

from __future__ import annotations

from typing import Any

SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
MODEL_DIR = "/mnt/models"
HTTP_PORT = 8080
SERVICE_PORT = 80


def predictor_objects(
    name: str,
    namespace: str,
    model_dir: str,
    version: str,
    replicas: int = 1,
    model_name: str = "model",
    deployment_label: str = "",
) -> list[dict[str, Any]]:
    """The ``<name>-predictor`` Deployment and Service serving ``model_dir`` as ``model_name`` version ``version``."""
    predictor = f"{name}-predictor"
    labels = {"serving.kserve.io/inferenceservice": name, "component": "predictor", "app": predictor}
    pod_labels = dict(labels)
    if deployment_label:
        pod_labels.update({"ml.slipway.dev/deployment": deployment_label, "ml.slipway.dev/version": version})
    pod = {
        "metadata": {
            "labels": pod_labels,
            "annotations": {
                SOURCE_URI_ANNOTATION: f"file://{model_dir}",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(HTTP_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "initContainers": [
                {
                    "name": "storage-initializer",
                    "image": "busybox",
                    "command": ["sh", "-c", f'cp -a "$0"/. {MODEL_DIR}/', model_dir],
                    "volumeMounts": [{"name": "kserve-provision-location", "mountPath": MODEL_DIR}],
                }
            ],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "slipway-serving",
                    "command": ["python", "-m", "slipway_serving"],
                    "args": [
                        "--model-uri",
                        MODEL_DIR,
                        "--model-name",
                        model_name,
                        "--model-version",
                        version,
                        "--http-port",
                        str(HTTP_PORT),
                    ],
                    "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                    "readinessProbe": {
                        "httpGet": {"path": f"/v2/models/{model_name}/ready", "port": HTTP_PORT},
                        "periodSeconds": 1,
                        "failureThreshold": 3,
                    },
                    "volumeMounts": [{"name": "kserve-provision-location", "mountPath": MODEL_DIR, "readOnly": True}],
                }
            ],
            "volumes": [{"name": "kserve-provision-location", "emptyDir": {}}],
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": predictor, "namespace": namespace, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": predictor}}, "template": pod},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": predictor, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"app": predictor},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"}],
        },
    }
    return [deployment, service]


def http_route(
    name: str,
    namespace: str,
    weights: dict[str, int],
    parent: tuple[str, str],
    header_match: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """An HTTPRoute like the operator's: a weighted rule over ``<backend>-predictor`` Services, maybe a header rule."""
    rules: list[dict[str, Any]] = [
        {"backendRefs": [{"name": f"{b}-predictor", "port": SERVICE_PORT, "weight": w} for b, w in weights.items()]}
    ]
    if header_match is not None:
        header, value, backend = header_match
        rules.append(
            {
                "matches": [
                    {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"name": header, "value": value}]}
                ],
                "backendRefs": [{"name": f"{backend}-predictor", "port": SERVICE_PORT, "weight": 1}],
            }
        )
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": parent[1], "namespace": parent[0]}],
            "hostnames": [f"{name}.{namespace}.example.com"],
            "rules": rules,
        },
    }
