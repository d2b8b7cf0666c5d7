"""Labels, metadata and owner reference of a ModelDeployment's children (names: ``slipway.api.names``)."""

from __future__ import annotations

from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import (
    ACTION_ANNOTATION,
    GROUP,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_VERSION,
    MANAGED_BY,
    isvc_name,
    predictor_name,
    sanitise_model_name,
)

__all__ = [
    "ACTION_ANNOTATION",
    "GROUP",
    "LABEL_DEPLOYMENT",
    "LABEL_MANAGED_BY",
    "LABEL_MODEL",
    "LABEL_VERSION",
    "child_labels",
    "child_metadata",
    "isvc_name",
    "owner_reference",
    "predictor_name",
    "sanitise_model_name",
]


def child_labels(md: ModelDeployment, version: str | None = None) -> dict[str, str]:
    """Labels every child carries: the deployment, the model and (per-version children) the version."""
    labels = {
        LABEL_DEPLOYMENT: md.metadata.name or "",
        LABEL_MODEL: sanitise_model_name(md.spec.model.name),
        LABEL_MANAGED_BY: MANAGED_BY,
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
