"""Deterministic names and labels of a ModelDeployment's children (so a restart never duplicates one)."""

from __future__ import annotations

import re
from typing import Any

from slipway.api.modeldeployment import ModelDeployment

GROUP = "ml.slipway.dev"
LABEL_MODEL = f"{GROUP}/model"
LABEL_VERSION = f"{GROUP}/version"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ACTION_ANNOTATION = f"{GROUP}/action"


def sanitise_model_name(name: str) -> str:
    """An MLflow model name as a DNS-1123 name and label value (the ModelVersion naming contract)."""
    return re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")[:63].rstrip("-.")


def isvc_name(md: str, version: str) -> str:
    """The InferenceService (and HPA) of one version: ``<md>-v<version>``."""
    return f"{md}-v{version}"


def predictor_name(md: str, version: str) -> str:
    """The predictor Deployment and Service KServe creates for ``<md>-v<version>`` in Standard mode."""
    return f"{isvc_name(md, version)}-predictor"


def child_labels(md: ModelDeployment, version: str | None = None) -> dict[str, str]:
    """Labels every child carries: the deployment, the model and (per-version children) the version."""
    labels = {
        LABEL_DEPLOYMENT: md.metadata.name or "",
        LABEL_MODEL: sanitise_model_name(md.spec.model.name),
        LABEL_MANAGED_BY: "slipway",
    }
    if version is not None:
        labels[LABEL_VERSION] = version
    return labels


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    """The controller owner reference pointing at the ModelDeployment (children are garbage-collected)."""
    return {
        "apiVersion": md.api_version,
        "kind": md.kind,
        "name": md.metadata.name,
        "uid": md.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(md: ModelDeployment, name: str, version: str | None = None) -> dict[str, Any]:
    """Metadata of a child: name, namespace, labels and the owner reference."""
    return {
        "name": name,
        "namespace": md.metadata.namespace,
        "labels": child_labels(md, version),
        "ownerReferences": [owner_reference(md)],
    }
