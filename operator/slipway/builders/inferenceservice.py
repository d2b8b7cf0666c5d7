"""KServe InferenceService of one model version (Standard mode, external autoscaler, our HPA)."""

from __future__ import annotations

import copy
from typing import Any

from slipway.api.modeldeployment import ModelDeployment, Serving
from slipway.api.names import LABEL_VERSION, isvc_name

from .names import child_metadata

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
SLIPWAY_RUNTIME = "slipway"
DEFAULT_IMAGE = "ghcr.io/slipway-ml/slipway-serving:0.1.0"
HTTP_PORT = 8080
FEEDBACK_TOKEN_ENV = "SLIPWAY_FEEDBACK_TOKEN"
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
"""The restricted Pod Security Standard, pod level (the predictor needs no service-account token either)."""
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
"""The restricted Pod Security Standard, container level."""
MODEL_DIR = "/mnt/models"
"""Where KServe's storage initializer puts ``STORAGE_URI`` for a custom container."""


def ready_path(model_name: str) -> str:
    """The model's own readiness endpoint (KServe's Ready condition has lied: probe the model)."""
    return f"/v2/models/{model_name}/ready"


def scrape_annotations() -> dict[str, str]:
    """Prometheus scrape annotations for the predictor pods (KServe copies them to the pods).

    ``serving.kserve.io/enable-prometheus-scraping`` is "false" on purpose: when it is "true" (or
    unset while the cluster's ``metricsAggregator.enablePrometheusScraping`` is), KServe's pod
    mutator rewrites ``prometheus.io/port`` to 9091 — queue-proxy's port, where nothing of a
    Standard-mode predictor listens — and the model server's own metrics on 8080 go unscraped.
    """
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
        "serving.kserve.io/enable-prometheus-scraping": "false",
    }


def _probe(model_name: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": ready_path(model_name), "port": HTTP_PORT},
        "initialDelaySeconds": 2,
        "periodSeconds": 5,
        "failureThreshold": 3,
    }


def _env(serving: Serving) -> list[dict[str, str]]:
    return [{"name": e.name, "value": e.value} for e in serving.env or []]


def _feedback_env(serving: Serving) -> list[dict[str, Any]]:
    """The feedback token, from the Secret the spec names (key ``token``); none: the runtime refuses feedback."""
    if serving.feedback_token_secret is None:
        return []
    ref = {"name": serving.feedback_token_secret, "key": "token"}
    return [{"name": FEEDBACK_TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}]


def _resources(serving: Serving) -> dict[str, Any] | None:
    return serving.resources.to_dict() if serving.resources is not None else None


def slipway_container(md: ModelDeployment, version: str, storage_uri: str) -> dict[str, Any]:
    """The Slipway model server as a KServe custom container; KServe downloads STORAGE_URI to /mnt/models."""
    name = md.metadata.name or ""
    serving = md.spec.serving
    args = ["--model-uri", MODEL_DIR, "--model-name", name, "--model-version", version]
    args += ["--http-port", str(HTTP_PORT)]
    args += ["--pickle", "allow" if serving.allow_pickle else "refuse"]
    if serving.batching is not None:
        args += ["--max-batch-size", str(serving.batching.max_batch_size)]
        args += ["--max-latency-ms", str(serving.batching.max_latency_ms)]
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": serving.image or DEFAULT_IMAGE,
        "command": ["python", "-m", "slipway_serving"],
        "args": args,
        "env": [{"name": "STORAGE_URI", "value": storage_uri}, *_env(serving), *_feedback_env(serving)],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe(name),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    resources = _resources(serving)
    if resources:
        container["resources"] = resources
    return container


def runtime_model(md: ModelDeployment, storage_uri: str) -> dict[str, Any]:
    """A named KServe runtime: ``predictor.model`` with modelFormat, runtime and storageUri."""
    serving = md.spec.serving
    model: dict[str, Any] = {
        "modelFormat": {"name": serving.model_format or "mlflow"},
        "runtime": serving.runtime,
        "storageUri": storage_uri,
        "protocolVersion": serving.protocol,
        "readinessProbe": _probe(md.metadata.name or ""),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if serving.image:
        model["image"] = serving.image
    if serving.env:
        model["env"] = _env(serving)
    resources = _resources(serving)
    if resources:
        model["resources"] = resources
    return model


def predictor(md: ModelDeployment, version: str, storage_uri: str) -> dict[str, Any]:
    """The predictor spec: the Slipway container, or a named runtime's model."""
    pod: dict[str, Any] = {"securityContext": copy.deepcopy(POD_SECURITY), "automountServiceAccountToken": False}
    if md.spec.serving.runtime == SLIPWAY_RUNTIME:
        return {"containers": [slipway_container(md, version, storage_uri)], **pod}
    return {"model": runtime_model(md, storage_uri), **pod}


def build_inference_service(
    md: ModelDeployment, version: str, storage_uri: str, replicas: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The InferenceService ``<md>-v<version>`` in Standard mode; replicas come from our own HPA.

    ``replicas`` (min, max) overrides autoscaling's bounds: the version's share of a canary budget.
    """
    meta = child_metadata(md, isvc_name(md.metadata.name or "", version), version)
    meta["annotations"] = {
        "serving.kserve.io/deploymentMode": "Standard",
        "serving.kserve.io/autoscalerClass": "external",
        **scrape_annotations(),
    }
    spec = predictor(md, version, storage_uri)
    low, high = (
        replicas if replicas is not None else (md.spec.autoscaling.min_replicas, md.spec.autoscaling.max_replicas)
    )
    spec["minReplicas"] = low
    spec["maxReplicas"] = high
    spec["labels"] = {LABEL_VERSION: version}
    if md.spec.serving.service_account_name:
        spec["serviceAccountName"] = md.spec.serving.service_account_name
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": {"predictor": spec}}
